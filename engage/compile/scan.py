"""The shared pass: every source table a space reads, scanned once, grouped once by profile.

All tables go into one `UNION ALL` (each branch tagged with its table name in `__event`, filtered to
`timestamp <= as-of`), and one `GROUP BY __profile` computes every definition's conditional aggregates.
So ten definitions on `order_completed` cost one read of it, not ten. The same union also yields the
space's profiles: everyone with a visible row in tracks, identifies, pages or screens (SPEC §1).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlglot import exp

from engage.catalog import Catalog, Table
from engage.compile.expressions import (
    ANONYMOUS_ID,
    EVENT,
    PROFILE,
    RECEIVED_AT,
    ROW_ID,
    TS,
    USER_ID,
    sql_type,
    timestamp,
)
from engage.identity import ProfileResolver

# The tables whose rows make someone a profile of the space, scanned even when no definition reads them.
PROFILE_TABLES = ("tracks", "identifies", "pages", "screens")
EVENTS_CTE, AGGREGATES_CTE, ROW = "events", "profile_aggregates", "e"


class SharedScan:
    """Collects the columns and aggregates definitions need, then builds the union and the GROUP BY."""

    def __init__(self, catalog: Catalog, resolver: ProfileResolver, as_of: datetime) -> None:
        self.catalog = catalog
        self.resolver = resolver
        self.as_of = as_of
        self._columns: dict[str, set[str]] = {name: set() for name in PROFILE_TABLES}
        self._ordered: set[str] = set()
        self._aggregates: dict[str, tuple[str, exp.Expr]] = {}

    @property
    def tables(self) -> list[str]:
        return sorted(self._columns)

    # -- what definitions ask for -------------------------------------------------------------------
    def read(self, table: str, columns: Iterable[str] = (), ordered: bool = False) -> None:
        """Declares that the pass must carry `columns` of `table` (and its tie-break keys if `ordered`)."""
        self._columns.setdefault(table, set()).update(columns)
        if ordered:
            self._ordered.add(table)

    def column(self, name: str) -> exp.Column:
        """A column of the union row, for use inside an aggregate."""
        return exp.column(name, ROW)

    def type_of(self, column: str) -> str:
        return self.catalog.column_type(self._tables_with(column), column)

    def aggregate(self, expression: exp.Expr) -> exp.Column:
        """Adds an aggregate to the pass (identical ones are shared) and returns its output column."""
        sql = expression.sql(dialect="duckdb")
        if sql not in self._aggregates:
            self._aggregates[sql] = (f"a{len(self._aggregates)}", expression)
        return exp.column(self._aggregates[sql][0], AGGREGATES_CTE)

    @staticmethod
    def event_is(*tables: str) -> exp.Expr:
        column = exp.column(EVENT, ROW)
        if len(tables) == 1:
            return column.eq(exp.Literal.string(tables[0]))
        return exp.In(this=column, expressions=[exp.Literal.string(t) for t in tables])

    def order_key(self) -> exp.Tuple:
        """The order of rows for 'latest'/'first': timestamp, then received_at, then id (SPEC §1)."""
        return exp.Tuple(expressions=[self.column(TS), self.column(RECEIVED_AT), self.column(ROW_ID)])

    # -- building --------------------------------------------------------------------------------------
    def _tables_with(self, column: str) -> list[Table]:
        return [
            t
            for name, cols in self._columns.items()
            if column in cols
            for t in self.catalog.tables_named(name)
        ]

    def source_rows(self, table: Table, columns: list[tuple[str, str]], ordered: bool) -> exp.Select:
        """One branch: a source table's visible rows, with the shared columns in a fixed order."""
        alias = "t"
        select = exp.select(
            exp.alias_(exp.Literal.string(table.name), EVENT),
            exp.alias_(self.resolver.profile(alias), PROFILE),
            exp.alias_(exp.column("user_id", alias), "user_id"),
            exp.alias_(exp.column("anonymous_id", alias), "anonymous_id"),
            exp.alias_(exp.column("timestamp", alias), TS),
        )
        if self._ordered:
            for name, source_column in ((RECEIVED_AT, "received_at"), (ROW_ID, "id")):
                value: exp.Expr = exp.column(source_column, alias) if ordered else exp.null()
                select = select.select(
                    exp.alias_(exp.cast(value, "VARCHAR" if name == ROW_ID else "TIMESTAMP"), name)
                )
        for name, portable in columns:
            if name in table.columns:
                value = exp.column(name, alias)
                if table.columns[name] != portable:
                    value = exp.cast(value, sql_type(portable))
            else:
                value = exp.cast(exp.null(), sql_type(portable))
            select = select.select(exp.alias_(value, name), copy=False)
        visible = exp.and_(
            exp.column("timestamp", alias) <= timestamp(self.as_of),
            # A row with no identifier belongs to no profile.
            self.resolver.profile(alias).is_(exp.null()).not_(),
        )
        return select.from_(exp.table_(table.name, db=table.source, alias=alias), copy=False).where(
            visible, copy=False
        )

    def events(self) -> exp.Query:
        all_columns = sorted({c for cols in self._columns.values() for c in cols})
        typed = [(c, self.type_of(c)) for c in all_columns]
        branches = [
            self.source_rows(table, typed, table_name in self._ordered)
            for table_name in sorted(self._columns)
            for table in self.catalog.tables_named(table_name)
        ]
        if not branches:
            raise AssertionError("a space with no source tables cannot be compiled")
        query: exp.Query = branches[0]
        for branch in branches[1:]:
            query = exp.union(query, branch, distinct=False, copy=False)
        return query

    def aggregates(self) -> exp.Select:
        row = ROW
        latest_anonymous = exp.func(
            "ARG_MAX",
            exp.column("anonymous_id", row),
            exp.case().when(
                exp.column("anonymous_id", row).is_(exp.null()).not_(),
                exp.Tuple(expressions=[exp.column(TS, row), exp.column("anonymous_id", row)]),
            ),
        )
        select = exp.select(
            exp.column(PROFILE, row),
            exp.alias_(exp.func("MAX", exp.column("user_id", row)), USER_ID),
            exp.alias_(latest_anonymous, ANONYMOUS_ID),
        )
        for alias, expression in self._aggregates.values():
            select = select.select(exp.alias_(expression, alias), copy=False)
        return select.from_(exp.table_(EVENTS_CTE, alias=row)).group_by(exp.column(PROFILE, row))

    def ctes(self) -> list[tuple[str, exp.Query]]:
        return [(EVENTS_CTE, self.events()), (AGGREGATES_CTE, self.aggregates())]


def event_table_rows(
    catalog: Catalog,
    resolver: ProfileResolver,
    as_of: datetime,
    table_name: str,
    columns: list[str],
) -> exp.Query:
    """The visible rows of one event table across sources, for queries with their own pass (funnels,
    most_frequent). Columns are the same shape as the shared union's."""
    tables = catalog.tables_named(table_name)
    typed = [(c, catalog.column_type(tables, c)) for c in columns]
    scan = SharedScan(catalog, resolver, as_of)
    branches = [scan.source_rows(t, typed, ordered=False) for t in tables]
    query: exp.Query = branches[0]
    for branch in branches[1:]:
        query = exp.union(query, branch, distinct=False, copy=False)
    return query
