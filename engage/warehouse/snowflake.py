"""Snowflake, through snowflake-connector-python.

Snowflake stores unquoted names upper-case (Segment's tables and columns are `TRACKS`, `USER_ID`), while
engage names things in lower case. Every statement is normalized before it is rendered, so an unquoted
name reaches Snowflake upper-case, and the catalog reads stored upper-case names back in lower case.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from engage.catalog import BIGINT, BOOLEAN, DOUBLE, TIMESTAMP, Catalog, Table, portable_type
from engage.errors import TransientWarehouseError, WarehouseError
from engage.warehouse.base import Setting, Warehouse, empty_result, first_line
from engage.warehouse.capabilities import SNOWFLAKE
from engage.warehouse.drivers import require

if TYPE_CHECKING:
    from engage.config import SnowflakeWarehouseConfig

log = logging.getLogger("engage.warehouse")

# Connector error numbers worth a retry: network, and the service being busy or restarting.
_TRANSIENT_ERRNOS = {250001, 250003, 251005, 251006, 390114, 390144, 604, 608}


def _logical(name: str) -> str:
    """A stored name as engage spells it: upper-case (case-insensitive) names in lower case."""
    return name.lower() if name == name.upper() else name


class SnowflakeWarehouse(Warehouse):
    capabilities = SNOWFLAKE

    def __init__(self, config: SnowflakeWarehouseConfig, setting: Setting) -> None:
        self.config = config
        self._setting = setting
        self._connector = require("snowflake.connector", "snowflake")
        self._connection = self._connect()

    def _connect(self) -> Any:
        config = self.config
        if config.password is None:
            raise WarehouseError("no password configured", self._setting("password"))
        settings: dict[str, Any] = {
            "account": config.account,
            "user": config.user,
            "password": config.password.get_secret_value(),
            "database": config.database,
            "schema": config.schema_,
            "warehouse": config.warehouse,
            "role": config.role,
            "login_timeout": config.login_timeout,
            "network_timeout": config.network_timeout,
            "paramstyle": "qmark",
            "application": "engage",
            # A new dict per connection: the connector writes into the one it is given.
            "session_parameters": {"TIMEZONE": "UTC", "QUOTED_IDENTIFIERS_IGNORE_CASE": False},
        }
        if config.host:
            settings.update(host=config.host, protocol=config.protocol)
        if config.port:
            settings["port"] = config.port
        try:
            return self._connector.connect(**{k: v for k, v in settings.items() if v is not None})
        except self._connector.Error as err:
            raise self._connection_error(err) from None

    def _connection_error(self, err: Any) -> WarehouseError:
        message = getattr(err, "raw_msg", None) or first_line(err)
        errno = getattr(err, "errno", None)
        if errno in (390100, 390101, 390144) or "password" in message.lower():
            return WarehouseError(
                f"authentication failed for user {self.config.user!r}", self._setting("password")
            )
        if "database" in message.lower() and "does not exist" in message.lower():
            return WarehouseError(
                f"database {self.config.database!r} does not exist", self._setting("database")
            )
        where = self.config.host or f"{self.config.account}.snowflakecomputing.com"
        return TransientWarehouseError(
            f"cannot reach {where}: {message}", self._setting("host" if self.config.host else "account")
        )

    @property
    def location(self) -> str:
        return f"snowflake:{self.config.account}/{self.config.database}"

    # -- statements ---------------------------------------------------------------------------------
    def _translate(self, err: Any, sql: str) -> WarehouseError:
        message = f"snowflake: {getattr(err, 'raw_msg', None) or first_line(err)}"
        if getattr(err, "errno", None) in _TRANSIENT_ERRNOS:
            return TransientWarehouseError(message)
        return WarehouseError(f"{message}\n  in: {sql[:300]}")

    @contextmanager
    def _cursor(self, sql: str, parameters: Sequence[Any] = ()) -> Iterator[Any]:
        started = time.monotonic()
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql, list(parameters) if parameters else None)
            log.debug("%.3fs %s", time.monotonic() - started, sql)
            yield cursor
        except self._connector.Error as err:
            raise self._translate(err, sql) from err
        finally:
            cursor.close()

    def execute(self, statement: exp.Expr, parameters: Sequence[Any] = ()) -> None:
        with self._cursor(self.render(statement), parameters):
            pass

    def insert(self, statement: exp.Insert) -> int:
        with self._cursor(self.render(statement)) as cursor:
            return max(cursor.rowcount or 0, 0)

    def fetchall(self, query: exp.Expr) -> list[tuple[Any, ...]]:
        with self._cursor(self.render(query)) as cursor:
            return [tuple(row) for row in cursor.fetchall()]

    def fetch_batches(self, query: exp.Expr, size: int) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        sql = self.render(query)
        with self._cursor(sql) as cursor:
            names = [_logical(d.name) for d in cursor.description or []]
            try:
                while rows := cursor.fetchmany(size):
                    yield names, [tuple(r) for r in rows]
            except self._connector.Error as err:
                raise self._translate(err, sql) from err

    def executemany(self, statement: exp.Expr, rows: Sequence[Sequence[Any]]) -> None:
        sql = self.render(statement)
        cursor = self._connection.cursor()
        try:
            cursor.executemany(sql, [list(r) for r in rows])
        except self._connector.Error as err:
            raise self._translate(err, sql) from err
        finally:
            cursor.close()

    def load(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> None:
        """Through the connector's write_pandas (a parquet file staged and copied in), not row by row."""
        import pandas as pd
        from snowflake.connector.pandas_tools import write_pandas

        if not rows:
            return
        names = [name.upper() for name, _ in columns]  # as `render` stores unquoted names
        series = {}
        for index, (name, kind) in enumerate(columns):
            values = [row[index] for row in rows]
            if kind == TIMESTAMP:
                series[name.upper()] = pd.to_datetime(
                    pd.Series(values, dtype=object), utc=True
                ).dt.tz_localize(None)
            else:
                dtype = {DOUBLE: "float64", BIGINT: "Int64", BOOLEAN: "boolean"}.get(kind, object)
                series[name.upper()] = pd.Series(values, dtype=dtype)
        frame = pd.DataFrame(series, columns=names)
        try:
            done, _, _, output = write_pandas(self._connection, frame, table.upper(), quote_identifiers=True)
        except self._connector.Error as err:
            raise self._translate(err, f"write_pandas into {table}") from err
        if not done:
            raise WarehouseError(f"snowflake: write_pandas into {table} failed: {output}")

    def describe(self, schemas: Sequence[str]) -> Catalog:
        if not schemas:
            return Catalog((), {})
        wanted = {s.upper(): s for s in schemas}
        query = (
            exp.select("table_schema", "table_name", "column_name", "data_type", "numeric_scale")
            .from_(exp.table_("columns", db="information_schema"))
            .where(
                exp.In(
                    this=exp.Upper(this=exp.column("table_schema")),
                    expressions=[exp.Literal.string(s) for s in wanted],
                )
            )
            .order_by("table_schema", "table_name", "ordinal_position")
        )
        tables: dict[tuple[str, str], Table] = {}
        for schema, table, column, data_type, scale in self.fetchall(query):
            source = wanted[schema.upper()]
            found = tables.setdefault((source, _logical(table)), Table(source, _logical(table)))
            found.columns[_logical(column)] = self._portable(data_type, scale)
        return Catalog(tuple(schemas), tables)

    @staticmethod
    def _portable(data_type: str, scale: int | None) -> str:
        """A type name from information_schema or a result's description (FIXED), as engage's type."""
        if data_type.upper() in ("NUMBER", "FIXED", "DECIMAL", "NUMERIC"):
            return BIGINT if not scale else DOUBLE
        return portable_type(data_type)

    def query_columns(self, query: exp.Query) -> dict[str, str]:
        from snowflake.connector.constants import FIELD_ID_TO_NAME

        probe = empty_result(query)
        with self._cursor(self.render(probe)) as cursor:
            described = cursor.description or []
        return {
            _logical(column.name): self._portable(FIELD_ID_TO_NAME[column.type_code], column.scale)
            for column in described
        }

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._cursor("BEGIN"):
            pass
        try:
            yield
        except BaseException:
            self._connection.rollback()
            raise
        with self._cursor("COMMIT"):
            pass

    def close(self) -> None:
        self._connection.close()
