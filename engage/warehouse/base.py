"""The warehouse adapter contract: everything engage asks of an engine, and nothing engine-specific.

Engines differ in capability flags, never in `if dialect == …` branches in the core: the compiler reads
`Capabilities` and the adapter renders every sqlglot expression in its own dialect.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from engage.catalog import Catalog
from engage.errors import Location
from engage.warehouse.capabilities import Capabilities, for_engine

# Where a warehouse setting is in the user's config (`config/engage.yaml:7: ….warehouse.password`), for
# errors that name the setting to fix.
Setting = Callable[[str], Location]
# The scratch table that holds a table's next contents while `overwrite` writes them over it.
NEXT_ROWS = "__engage_next_rows"


def empty_result(query: exp.Query) -> exp.Select:
    """`query` returning no row: its column names and types, at no cost."""
    return exp.select("*").from_(query.subquery("q")).limit(0)


def first_line(err: BaseException) -> str:
    """A driver error's first line: what a user reads (the rest is the driver's stack of context)."""
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Warehouse(ABC):
    """One connection to one engine. Statements are sqlglot expressions, rendered here and only here."""

    capabilities: Capabilities

    @property
    @abstractmethod
    def location(self) -> str:
        """What identifies the database (a resolved file path, a host and database): a destination at the
        same location is written in place, with SQL."""

    @property
    def dialect(self) -> str:
        return self.capabilities.dialect

    def render(self, statement: exp.Expr) -> str:
        statement = for_engine(self.capabilities, statement)
        if self.capabilities.identifiers == "upper":
            statement = normalize_identifiers(statement.copy(), dialect=self.dialect)
        return statement.sql(dialect=self.dialect, identify=True)

    @abstractmethod
    def execute(self, statement: exp.Expr, parameters: Sequence[Any] = ()) -> None:
        """Runs one statement that returns nothing the caller needs."""

    @abstractmethod
    def insert(self, statement: exp.Insert) -> int:
        """Runs an INSERT and returns how many rows it wrote."""

    @abstractmethod
    def fetchall(self, query: exp.Expr) -> list[tuple[Any, ...]]:
        """Runs a query whose result is small (counts, key names, metadata)."""

    @abstractmethod
    def fetch_batches(self, query: exp.Expr, size: int) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        """Streams a query's rows in batches of at most `size`, with the column names."""

    @abstractmethod
    def executemany(self, statement: exp.Expr, rows: Sequence[Sequence[Any]]) -> None:
        """Runs a parameterized statement once per row (driver placeholders in `statement`)."""

    def load(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> None:
        """Appends rows from Python to a table of this connection (`columns`: name, portable type). The
        engine's bulk path where it has one (Snowflake: write_pandas); else a parameterized executemany."""
        insert = exp.insert(
            exp.Values(expressions=[exp.Tuple(expressions=[exp.Placeholder() for _ in columns])]),
            exp.table_(table),
            columns=[name for name, _ in columns],
        )
        self.executemany(insert, rows)

    @abstractmethod
    def query_columns(self, query: exp.Query) -> dict[str, str]:
        """Column name → portable type of a query's result, without running it."""

    @abstractmethod
    def describe(self, schemas: Sequence[str]) -> Catalog:
        """The tables and columns of `schemas` (missing schemas are simply absent)."""

    def table_columns(self, schema: str, table: str) -> dict[str, str]:
        """Column name → portable type for one table; empty when the table does not exist."""
        return self.describe([schema]).columns(schema, table)

    @abstractmethod
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commits the statements run inside it together, or none of them."""

    @abstractmethod
    def close(self) -> None: ...

    # -- DDL every engine shares; adapters override where their syntax differs -------------------------
    def ensure_schema(self, schema: str) -> None:
        self.execute(exp.Create(this=exp.Table(this=exp.to_identifier(schema)), kind="SCHEMA", exists=True))

    def ensure_table(self, schema: str, table: str, columns: Sequence[tuple[str, exp.DataType]]) -> None:
        definition = exp.Schema(
            this=exp.table_(table, db=schema),
            expressions=[exp.ColumnDef(this=exp.to_identifier(name), kind=kind) for name, kind in columns],
        )
        self.execute(exp.Create(this=definition, kind="TABLE", exists=True))

    def add_column(self, schema: str, table: str, column: str, kind: exp.DataType) -> None:
        self.execute(
            exp.Alter(
                this=exp.table_(table, db=schema),
                kind="TABLE",
                actions=[exp.ColumnDef(this=exp.to_identifier(column), kind=kind)],
            )
        )

    def delete_rows(self, table: exp.Table, conditions: Sequence[exp.Expr]) -> None:
        """Deletes the rows of `table` matching any of `conditions` (which may refer to the table by its
        name): a DELETE per condition, or, without row updates, the other rows written over the table."""
        if self.capabilities.row_updates:
            for condition in conditions:
                self.execute(exp.delete(table.copy(), where=condition))
            return
        columns = list(self.table_columns(table.db, table.name))
        kept = exp.and_(*(exp.not_(c) for c in conditions))
        self.overwrite(table, exp.select(*columns).from_(table.copy()).where(kept))

    def update_rows(self, table: exp.Table, values: dict[str, exp.Expr], condition: exp.Expr) -> None:
        """Sets `values` on the rows of `table` matching `condition`, in one statement: an UPDATE, or, without
        row updates, the whole table written over itself."""
        if self.capabilities.row_updates:
            assignments = [exp.EQ(this=exp.column(c), expression=v) for c, v in values.items()]
            self.execute(
                exp.Update(this=table.copy(), expressions=assignments, where=exp.Where(this=condition))
            )
            return
        columns = list(self.table_columns(table.db, table.name))
        updated = [
            exp.alias_(exp.case().when(condition.copy(), values[c]).else_(exp.column(c)), c)
            if c in values
            else exp.column(c)
            for c in columns
        ]
        self.overwrite(table, exp.select(*updated).from_(table.copy()))

    def overwrite(self, table: exp.Table, query: exp.Query) -> None:
        """Replaces the rows of `table` with those of `query`, which may read `table` itself: for engines
        without row updates. Here, for any engine with DELETE (tests run the fallback on DuckDB): the new
        rows are materialized first, then the table is emptied and refilled, in the caller's transaction."""
        self.create_temp_table(NEXT_ROWS, query)
        columns = query.named_selects
        self.execute(exp.delete(table))
        self.execute(exp.insert(exp.select(*columns).from_(NEXT_ROWS), table, columns=columns))

    def create_temp_table(self, name: str, query: exp.Query) -> None:
        """Materializes `query` for this connection only: nothing is written to the warehouse's files."""
        self.execute(
            exp.Create(
                this=exp.table_(name),
                kind="TABLE",
                expression=query,
                replace=True,
                properties=exp.Properties(expressions=[exp.TemporaryProperty()]),
            )
        )
