"""The embedded default engine: a DuckDB database file."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
from sqlglot import exp

from engage.catalog import Catalog, Table, portable_type
from engage.errors import TransientWarehouseError, WarehouseError
from engage.warehouse.base import Warehouse, first_line
from engage.warehouse.capabilities import DUCKDB

log = logging.getLogger("engage.warehouse")


def _translate(err: duckdb.Error, sql: str) -> WarehouseError:
    """Driver errors become engage's, once, here: lock conflicts may pass on retry; the rest will not."""
    message = first_line(err)
    if isinstance(err, duckdb.TransactionException | duckdb.IOException) and "lock" in str(err).lower():
        return TransientWarehouseError(f"duckdb: {message}")
    return WarehouseError(f"duckdb: {message}\n  in: {sql[:300]}")


class DuckDBWarehouse(Warehouse):
    capabilities = DUCKDB

    def __init__(
        self,
        path: Path,
        *,
        read_only: bool = False,
        threads: int | None = None,
        memory_limit: str | None = None,
    ) -> None:
        self.path = path
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        # No statement engage runs depends on row order, and keeping it costs memory on large inserts.
        config: dict[str, Any] = {"preserve_insertion_order": False}
        if threads is not None:
            config["threads"] = threads
        if memory_limit is not None:
            config["memory_limit"] = memory_limit
        try:
            self.connection = duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.Error as err:
            raise _translate(err, f"open {path}") from err

    @property
    def location(self) -> str:
        return f"duckdb:{self.path.resolve()}"

    def _run(self, sql: str, parameters: Sequence[Any] = ()) -> duckdb.DuckDBPyConnection:
        started = time.monotonic()
        try:
            result = self.connection.execute(sql, list(parameters) if parameters else None)
        except duckdb.Error as err:
            raise _translate(err, sql) from err
        log.debug("%.3fs %s", time.monotonic() - started, sql)
        return result

    def execute(self, statement: exp.Expr, parameters: Sequence[Any] = ()) -> None:
        self._run(self.render(statement), parameters)

    def insert(self, statement: exp.Insert) -> int:
        counted = self._run(self.render(statement)).fetchone()
        return int(counted[0]) if counted else 0

    def fetchall(self, query: exp.Expr) -> list[tuple[Any, ...]]:
        return self._run(self.render(query)).fetchall()

    def fetch_batches(self, query: exp.Expr, size: int) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        # The connection itself, not a cursor: a DuckDB cursor is another connection and would not
        # see this run's temporary tables. Callers must not run statements while iterating.
        sql = self.render(query)
        result = self._run(sql)
        names = [d[0] for d in result.description or []]
        try:
            while rows := result.fetchmany(size):
                yield names, rows
        except duckdb.Error as err:
            raise _translate(err, sql) from err

    def executemany(self, statement: exp.Expr, rows: Sequence[Sequence[Any]]) -> None:
        sql = self.render(statement)
        try:
            self.connection.executemany(sql, [list(r) for r in rows])
        except duckdb.Error as err:
            raise _translate(err, sql) from err

    def describe(self, schemas: Sequence[str]) -> Catalog:
        if not schemas:
            return Catalog((), {})
        placeholders = ", ".join("?" for _ in schemas)
        # duckdb_columns() rather than information_schema.columns, a view over it that costs a first
        # statement of a connection ~30 ms more to bind.
        rows = self._run(
            "SELECT schema_name, table_name, column_name, data_type FROM duckdb_columns()"
            f" WHERE database_name = current_database() AND schema_name IN ({placeholders})"
            " ORDER BY schema_name, table_name, column_index",
            list(schemas),
        ).fetchall()
        tables: dict[tuple[str, str], Table] = {}
        for schema, table, column, data_type in rows:
            tables.setdefault((schema, table), Table(schema, table)).columns[column] = portable_type(
                data_type
            )
        return Catalog(tuple(schemas), tables)

    def query_columns(self, query: exp.Query) -> dict[str, str]:
        rows = self._run("DESCRIBE " + self.render(query)).fetchall()
        return {name: portable_type(kind) for name, kind, *_ in rows}

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._run("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.connection.rollback()
            raise
        self._run("COMMIT")

    def close(self) -> None:
        self.connection.close()
