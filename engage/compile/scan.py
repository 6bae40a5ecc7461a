"""The shared pass: every source table a space reads is scanned once, whatever number of definitions read it.

Definitions register the columns and the conditional aggregates they need. At build time the tables are
grouped into families: a table alone, or the tables one definition reads together (a trait over two
events). Each family is one `UNION ALL` of its tables across sources (filtered to `timestamp <= as-of`)
and one `GROUP BY __profile` holding only that family's aggregates, so ten definitions on
`order_completed` cost one read of it, and every hash aggregate stays as narrow as its family.

The space's profiles (SPEC §1: a visible row in tracks, identifies, pages or screens, or in any table read)
come from the families' own results: tables nobody reads but that make profiles (tracks, usually) are
families with no aggregates. `profile_aggregates` then joins every family's columns onto the profiles.
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
    union_all,
)
from engage.compile.portable import text_order
from engage.identity import ProfileResolver
from engage.warehouse.capabilities import Capabilities

# The tables whose rows make someone a profile of the space, scanned even when no definition reads them.
PROFILE_TABLES = ("tracks", "identifies", "pages", "screens")
PROFILES_CTE, AGGREGATES_CTE, ROW = "profiles", "profile_aggregates", "e"


class SharedScan:
    """Collects the columns and aggregates definitions need, then builds one pass per table family."""

    def __init__(
        self, catalog: Catalog, resolver: ProfileResolver, as_of: datetime, caps: Capabilities
    ) -> None:
        self.caps = caps
        self.catalog = catalog
        self.resolver = resolver
        self.as_of = as_of
        self._columns: dict[str, set[str]] = {name: set() for name in PROFILE_TABLES}
        self._ordered: set[str] = set()
        self._aggregates: dict[str, tuple[str, exp.Expr, frozenset[str]]] = {}

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
        """A column of the scanned row, for use inside an aggregate."""
        return exp.column(name, ROW)

    def type_of(self, column: str) -> str:
        tables = [
            t
            for name, cols in self._columns.items()
            if column in cols
            for t in self.catalog.tables_named(name)
        ]
        return self.catalog.column_type(tables, column)

    def aggregate(self, expression: exp.Expr) -> exp.Column:
        """Adds an aggregate (identical ones are shared) and returns its column in `profile_aggregates`.

        The tables it reads are the ones its `event_is` tests name; they end up in one family."""
        sql = expression.sql(dialect="duckdb")
        if sql not in self._aggregates:
            tables = frozenset(_tested_tables(expression))
            assert tables, f"an aggregate must test which table a row is from: {sql}"
            self._aggregates[sql] = (f"a{len(self._aggregates)}", expression, tables)
        return exp.column(self._aggregates[sql][0], AGGREGATES_CTE)

    @staticmethod
    def event_is(*tables: str) -> exp.Expr:
        column = exp.column(EVENT, ROW)
        if len(tables) == 1:
            return column.eq(exp.Literal.string(tables[0]))
        return exp.In(this=column, expressions=[exp.Literal.string(t) for t in tables])

    def order_key(self) -> list[exp.Expr]:
        """The order of rows for 'latest'/'first': timestamp, then received_at, then id (SPEC §1)."""
        return [self.column(TS), self.column(RECEIVED_AT), text_order(self.caps, self.column(ROW_ID))]

    # -- building --------------------------------------------------------------------------------------
    def families(self) -> list[list[str]]:
        """Tables that some aggregate reads together, joined transitively; every other table alone."""
        parent = {name: name for name in self._columns}

        def root(name: str) -> str:
            while parent[name] != name:
                name = parent[name]
            return name

        for _, _, tables in self._aggregates.values():
            first, *rest = sorted(tables)
            for other in rest:
                parent[root(other)] = root(first)
        grouped: dict[str, list[str]] = {}
        for name in sorted(self._columns):
            if self.catalog.tables_named(name):
                grouped.setdefault(root(name), []).append(name)
        return sorted(grouped.values())

    def source_rows(
        self, table: Table, columns: list[tuple[str, str]], ordered: bool, tagged: bool = True
    ) -> exp.Select:
        """One source table's visible rows, with the shared columns in a fixed order."""
        alias = "t"
        profile, joins = self.resolver.profile(alias, table)
        select = exp.select(
            exp.alias_(profile, PROFILE),
            exp.alias_(exp.column("user_id", alias), "user_id"),
            exp.alias_(exp.column("timestamp", alias), TS),
        )
        if tagged:
            select = select.select(exp.alias_(exp.Literal.string(table.name), EVENT), copy=False)
        if ordered:
            select = select.select(
                exp.alias_(exp.column("received_at", alias), RECEIVED_AT),
                exp.alias_(exp.column("id", alias), ROW_ID),
                copy=False,
            )
        for name, portable in columns:
            if name in table.columns:
                value: exp.Expr = exp.column(name, alias)
                if table.columns[name] != portable:
                    value = exp.cast(value, sql_type(portable))
            else:
                value = exp.cast(exp.null(), sql_type(portable))
            select = select.select(exp.alias_(value, name), copy=False)
        visible = exp.and_(
            exp.column("timestamp", alias) <= timestamp(self.as_of, self.caps),
            # A row with no identifier belongs to no profile.
            profile.copy().is_(exp.null()).not_(),
        )
        select = select.from_(exp.table_(table.name, db=table.source, alias=alias), copy=False)
        for joined, on in joins:
            select = select.join(joined, on=on, join_type="left", copy=False)
        return select.where(visible, copy=False)

    def _family_rows(self, family: list[str]) -> exp.Query:
        columns = sorted({c for name in family for c in self._columns[name]})
        typed = [(c, self.type_of(c)) for c in columns]
        ordered = any(name in self._ordered for name in family)
        branches = [
            self.source_rows(table, typed, ordered, tagged=len(family) > 1)
            for name in family
            for table in self.catalog.tables_named(name)
        ]
        return union_all(branches)

    def _aggregates_of(self, family: list[str]) -> list[tuple[str, exp.Expr]]:
        """(alias, aggregate) of every aggregate whose tables are all in `family`."""
        members = set(family)
        return [
            (alias, expression)
            for alias, expression, tables in self._aggregates.values()
            if tables <= members
        ]

    def _family_query(self, family: list[str]) -> exp.Select:
        select = exp.select(
            exp.column(PROFILE, ROW), exp.alias_(exp.func("MAX", exp.column("user_id", ROW)), USER_ID)
        )
        for alias, expression in self._aggregates_of(family):
            if len(family) == 1:  # every row is from this table: the tag tests are TRUE
                expression = _without_table_tests(expression)
            select = select.select(exp.alias_(expression, alias), copy=False)
        rows = self._family_rows(family).subquery(ROW)
        return select.from_(rows, copy=False).group_by(exp.column(PROFILE, ROW), copy=False)

    def ctes(self) -> list[tuple[str, exp.Query]]:
        """The family passes, the space's profiles, and `profile_aggregates` joining them."""
        families = [(f"scan_{family[0]}", family) for family in self.families()]
        ctes: list[tuple[str, exp.Query]] = [(name, self._family_query(family)) for name, family in families]
        every = union_all([exp.select(PROFILE, USER_ID).from_(name) for name, _ in families])
        ctes.append((PROFILES_CTE, self.resolver.profiles(every)))
        joined = exp.select(*(exp.column(c, "p") for c in (PROFILE, USER_ID, ANONYMOUS_ID))).from_(
            exp.table_(PROFILES_CTE, alias="p")
        )
        for name, family in families:
            aliases = [alias for alias, _ in self._aggregates_of(family)]
            if not aliases:
                continue
            joined = joined.select(*(exp.column(a, name) for a in aliases), copy=False).join(
                exp.table_(name),
                on=exp.column(PROFILE, name).eq(exp.column(PROFILE, "p")),
                join_type="left",
                copy=False,
            )
        ctes.append((AGGREGATES_CTE, joined))
        return ctes


def _tested_tables(expression: exp.Expr) -> set[str]:
    """The table names an aggregate's `__event = …` / `__event IN (…)` tests name."""
    found: set[str] = set()
    for node in expression.find_all(exp.EQ, exp.In):
        if isinstance(node.this, exp.Column) and node.this.name == EVENT:
            literals = [node.expression] if isinstance(node, exp.EQ) else node.expressions
            found.update(str(lit.this) for lit in literals)
    return found


def _without_table_tests(expression: exp.Expr) -> exp.Expr:
    def is_test(node: exp.Expr) -> bool:
        return (
            isinstance(node, exp.EQ | exp.In)
            and isinstance(node.this, exp.Column)
            and node.this.name == EVENT
        )

    def simplify(node: exp.Expr) -> exp.Expr:
        if is_test(node):
            return exp.true()
        if isinstance(node, exp.And):
            left, right = node.left, node.right
            if is_test(left) or left == exp.true():
                return simplify(right)
            if is_test(right) or right == exp.true():
                return simplify(left)
        return node

    return expression.copy().transform(simplify, copy=False)


def event_table_rows(
    catalog: Catalog,
    resolver: ProfileResolver,
    as_of: datetime,
    caps: Capabilities,
    table_name: str,
    columns: list[str],
    ordered: bool = False,
) -> exp.Query:
    """The visible rows of one event table across sources, for queries with their own pass (funnels,
    most_frequent, window picks). Columns are the same shape as a family pass's."""
    tables = catalog.tables_named(table_name)
    typed = [(c, catalog.column_type(tables, c)) for c in columns]
    scan = SharedScan(catalog, resolver, as_of, caps)
    return union_all([scan.source_rows(t, typed, ordered=ordered) for t in tables])
