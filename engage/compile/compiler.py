"""Compiles a space's definitions into one query of current values per profile (pure: no I/O).

The query's columns are `__profile`, `__user_id`, `__anonymous_id` and one column per trait key: an
audience's membership, a computed trait's value, an SQL trait's columns. SQL traits run first as their
own statements (their results are checked before anything reads them); funnels and most_frequent traits
are CTEs of their own; everything else is an aggregate of the shared pass (`scan.py`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlglot import exp

from engage.catalog import BOOLEAN, Catalog, Table
from engage.compile.conditions import condition
from engage.compile.expressions import (
    ANONYMOUS_ID,
    EVENT,
    PROFILE,
    RECEIVED_AT,
    ROW_ID,
    TS,
    USER_ID,
    compare,
    false_if_null,
    sql_type,
    timestamp,
    union_all,
)
from engage.compile.portable import first_per_profile, ordered, pick
from engage.compile.scan import AGGREGATES_CTE, ROW, SharedScan, event_table_rows
from engage.compile.traits import trait_value
from engage.definitions.loader import LoadedDefinition, sql_trait_columns, sql_trait_identifier
from engage.definitions.models import (
    AudienceDefinition,
    PropertyFilter,
    SqlTraitDefinition,
    TraitDefinition,
    Window,
)
from engage.identity import ProfileResolver
from engage.warehouse.capabilities import CANONICAL, Capabilities, for_engine

Kind = Literal["audience", "trait", "sql_trait"]
# Columns every row of an own-pass query carries already.
_SHARED = {PROFILE, "user_id", TS, EVENT, RECEIVED_AT, ROW_ID}
# Fingerprints compile each definition alone at this as-of, so they do not change with the run's time.
FINGERPRINT_AS_OF = datetime(2000, 1, 1)


@dataclass(frozen=True)
class Output:
    """One column of the current-values query: a trait key of a definition, and how to read it."""

    definition_key: str
    trait_key: str
    kind: Kind
    value_type: str  # boolean | bigint | double | varchar | timestamp | json | other
    present: str | None = None  # SQL traits: the column telling whether the profile is in the result


@dataclass(frozen=True)
class SqlTraitQuery:
    """An SQL trait's own statement, materialized into `table` before the main query reads it."""

    definition: LoadedDefinition
    table: str
    query: exp.Query

    @property
    def identifier(self) -> str:
        assert self.definition.query is not None
        return sql_trait_identifier(self.definition.query)

    @property
    def columns(self) -> list[str]:
        assert self.definition.query is not None
        return sql_trait_columns(self.definition.query)


@dataclass(frozen=True)
class CompiledDefinition:
    loaded: LoadedDefinition
    outputs: list[Output]
    fingerprint: str

    @property
    def key(self) -> str:
        return self.loaded.key

    @property
    def kind(self) -> Kind:
        kind = self.loaded.kind
        assert kind in ("audience", "trait", "sql_trait")
        return kind  # type: ignore[return-value]


@dataclass(frozen=True)
class CompiledSpace:
    """Everything a run executes, in order: SQL-trait statements, then the current-values query."""

    definitions: list[CompiledDefinition]
    sql_traits: list[SqlTraitQuery]
    query: exp.Select
    as_of: datetime
    tables: list[str]  # the source tables (by name, in every source) the queries read
    windows: list[timedelta]  # every `within` used: results change when an event crosses as_of - N
    caps: Capabilities  # the engine it was compiled for

    @property
    def outputs(self) -> list[Output]:
        return [o for d in self.definitions for o in d.outputs]

    def statements(self, pretty: bool = True) -> list[tuple[str, str]]:
        """(title, SQL) pairs in the engine's dialect, as `engage compile` prints them."""

        def render(statement: exp.Expr) -> str:
            engine_ready = for_engine(self.caps, statement)
            return engine_ready.sql(dialect=self.caps.dialect, pretty=pretty, identify=True)

        rendered = [(f"SQL trait {s.definition.key} → {s.table}", render(s.query)) for s in self.sql_traits]
        rendered.append(("current values", render(self.query)))
        return rendered


class Compiler:
    """Builds the query for a set of definitions; references to other definitions are inlined."""

    def __init__(
        self,
        catalog: Catalog,
        resolver: ProfileResolver,
        as_of: datetime,
        definitions: dict[str, LoadedDefinition],
        sql_trait_types: dict[str, dict[str, str]],
        caps: Capabilities,
    ) -> None:
        self.caps = caps
        self.catalog = catalog
        self.resolver = resolver
        self.as_of = as_of
        self.definitions = definitions
        self.sql_trait_types = sql_trait_types
        self.scan = SharedScan(catalog, resolver, as_of, caps)
        self._ctes: list[tuple[str, exp.Query]] = []
        self._joins: list[tuple[str, exp.Expr]] = []
        self._audiences: dict[str, exp.Expr] = {}
        self._traits: dict[str, tuple[exp.Expr, str]] = {}
        self._sql_traits: dict[str, SqlTraitQuery] = {}
        self._own_queries: set[str] = set()
        self.windows: set[timedelta] = set()

    # -- services for conditions.py and traits.py --------------------------------------------------
    def add_cte(self, prefix: str, query: exp.Query) -> str:
        name = f"{prefix}_{len(self._ctes)}"
        self._ctes.append((name, query))
        return name

    def join_profiles(self, cte: str, on: exp.Expr | None = None) -> None:
        """LEFT JOINs a per-profile result to the shared pass (on `__profile` unless told otherwise)."""
        condition_ = (
            on if on is not None else exp.column(PROFILE, cte).eq(exp.column(PROFILE, AGGREGATES_CTE))
        )
        self._joins.append((cte, condition_))

    def event_rows(self, table: str, columns: list[str], ordered: bool = False) -> exp.Query:
        """The visible rows of one event table, for a query with its own pass (funnels, most_frequent)."""
        self._own_queries.add(table)
        return event_table_rows(self.catalog, self.resolver, self.as_of, self.caps, table, columns, ordered)

    def latest(
        self, tables: Sequence[str], value: str, keep: exp.Expr, newest: bool, value_type: str
    ) -> exp.Expr:
        """Column `value` of each profile's newest (else oldest) row of `tables` where `keep` holds: an
        aggregate of the shared pass, or, on engines with neither ARG_MAX nor ordered arrays, a ranked
        query of its own. `keep` reads the row as `scan.column` does."""
        scan = self.scan
        if self.caps.pick != "window":
            latest = pick(self.caps, scan.column(value), scan.order_key(), keep, newest, sql_type(value_type))
            return scan.aggregate(latest)
        needed = sorted({value, *(c.name for c in keep.find_all(exp.Column) if c.table == ROW)} - _SHARED)
        rows = union_all([self.event_rows(t, needed, ordered=True) for t in tables])
        top = first_per_profile(
            self.caps,
            exp.column(PROFILE, ROW),
            scan.column(value),
            rows.subquery(ROW),
            ordered(scan.order_key(), newest),
            keep,
        )
        name = self.add_cte("latest", top)
        self.join_profiles(name)
        return exp.column("value", name)

    @property
    def tables(self) -> list[str]:
        return sorted(self._own_queries | set(self.scan.tables))

    def property_column(self, events: Sequence[str], prop: str) -> str:
        column = self.catalog.property_column(self._event_tables(events), prop)
        assert column is not None, f"unresolved property {prop} (references.py checks this first)"
        return column

    def _event_tables(self, events: Sequence[str]) -> list[Table]:
        return [t for e in events for t in self.catalog.event_tables(e)]

    def window(self, node: Window, ts: exp.Expr) -> exp.Expr:
        """`within: N` keeps `as_of - N < ts` (the upper bound `ts <= as_of` holds for every row read);
        `between: [from, to]` is inclusive."""
        if node.within is not None:
            self.windows.add(node.within)
            return ts > timestamp(self.as_of - node.within, self.caps)
        if node.between is not None:
            low, high = (timestamp(moment, self.caps) for moment in node.between)
            return exp.Between(this=ts, low=low, high=high)
        return exp.true()

    def filters(
        self,
        where: Sequence[PropertyFilter],
        resolved: Mapping[str, str | None],
        column: Callable[[str], exp.Expr],
        type_of: Callable[[str], str],
    ) -> list[exp.Expr]:
        predicates = []
        for item in where:
            name = resolved[item.property]
            assert name is not None
            predicates.append(compare(self.caps, column(name), type_of(name), item.op, item.value))
        return predicates

    def audience_member(self, key: str) -> exp.Expr:
        """Whether a profile is a member of audience `key` in this run (compiled once, then reused)."""
        if key not in self._audiences:
            definition = self.definitions[key].definition
            assert isinstance(definition, AudienceDefinition)
            member = false_if_null(condition(self, definition.condition))
            if not definition.include_anonymous:
                member = exp.and_(
                    exp.column(USER_ID, AGGREGATES_CTE).is_(exp.null()).not_(), exp.paren(member)
                )
            self._audiences[key] = exp.paren(member)
        return self._audiences[key]

    def trait_reference(self, key: str) -> tuple[exp.Expr, str]:
        """A trait's value in this run: a computed trait, an SQL trait column, else a custom trait."""
        if key not in self._traits:
            self._traits[key] = self._resolve_trait(key)
        return self._traits[key]

    def _resolve_trait(self, key: str) -> tuple[exp.Expr, str]:
        loaded = self.definitions.get(key)
        if loaded is not None and isinstance(loaded.definition, TraitDefinition):
            return trait_value(self, loaded.definition)
        for candidate in self.definitions.values():
            if candidate.kind == "sql_trait" and key in candidate.trait_keys:
                sql = self.sql_trait(candidate)
                return exp.column(key, sql.table), self.sql_trait_types.get(candidate.key, {}).get(
                    key, "varchar"
                )
        return self.custom_trait(key)

    def custom_trait(self, key: str) -> tuple[exp.Expr, str]:
        """The newest non-null value in identifies (ties: later received_at, then larger id)."""
        scan = self.scan
        scan.read("identifies", [key], ordered=True)
        value = scan.column(key)
        known = exp.and_(scan.event_is("identifies"), value.is_(exp.null()).not_())
        value_type = scan.type_of(key)
        return self.latest(["identifies"], key, known, True, value_type), value_type

    def sql_trait(self, loaded: LoadedDefinition) -> SqlTraitQuery:
        if loaded.key not in self._sql_traits:
            definition = loaded.definition
            assert isinstance(definition, SqlTraitDefinition) and loaded.query is not None
            table = f"__engage_sql_trait_{len(self._sql_traits)}"
            item = SqlTraitQuery(loaded, table, loaded.query)
            self._sql_traits[loaded.key] = item
            identifier = exp.column(item.identifier, table)
            if item.identifier == "user_id":
                on = identifier.eq(exp.column(USER_ID, AGGREGATES_CTE))
            elif item.identifier == "anonymous_id":
                on = identifier.eq(exp.column(self.resolver.anonymous_key, AGGREGATES_CTE))
            else:
                on = identifier.eq(self.custom_trait("email")[0])
            self.join_profiles(table, on)
        return self._sql_traits[loaded.key]

    # -- the query -------------------------------------------------------------------------------------
    def outputs_for(self, loaded: LoadedDefinition) -> list[tuple[Output | None, str, exp.Expr]]:
        """(output, column alias, expression) per column; an SQL trait adds its presence column."""
        definition = loaded.definition
        if isinstance(definition, AudienceDefinition):
            output = Output(loaded.key, loaded.key, "audience", BOOLEAN)
            return [(output, loaded.key, self.audience_member(loaded.key))]
        if isinstance(definition, TraitDefinition):
            value, value_type = self.trait_reference(loaded.key)
            return [(Output(loaded.key, loaded.key, "trait", value_type), loaded.key, value)]
        item = self.sql_trait(loaded)
        present = f"__present_{loaded.key}"
        types = self.sql_trait_types.get(loaded.key, {})
        columns: list[tuple[Output | None, str, exp.Expr]] = [
            (
                Output(loaded.key, c, "sql_trait", types.get(c, "varchar"), present),
                c,
                exp.column(c, item.table),
            )
            for c in item.columns
        ]
        columns.append((None, present, exp.column(item.identifier, item.table).is_(exp.null()).not_()))
        return columns

    @property
    def sql_trait_queries(self) -> list[SqlTraitQuery]:
        return list(self._sql_traits.values())

    def build(
        self, selected: Sequence[LoadedDefinition], positional: bool = False
    ) -> tuple[exp.Select, list[list[Output]]]:
        """The current-values query for `selected`. `positional` names the value columns v0, v1, … instead
        of by trait key, for fingerprints that must not change with a key."""
        per_definition = [self.outputs_for(loaded) for loaded in selected]
        columns: list[exp.Expr] = [
            exp.column(PROFILE, AGGREGATES_CTE),
            exp.column(USER_ID, AGGREGATES_CTE),
            exp.column(ANONYMOUS_ID, AGGREGATES_CTE),
        ]
        for outputs in per_definition:
            for output, alias, expression in outputs:
                if positional and output is not None and output.kind != "sql_trait":
                    alias = f"v{len(columns)}"
                columns.append(exp.alias_(expression, alias))
        query = exp.select(*columns).from_(AGGREGATES_CTE)
        for name, on in self._joins:
            query = query.join(exp.table_(name), on=on, join_type="left", copy=False)
        for name, cte in [*self.scan.ctes(), *self._ctes]:
            query = query.with_(name, as_=cte, copy=False)
        return query, [[o for o, _, _ in outputs if o is not None] for outputs in per_definition]


def compile_space(
    definitions: Sequence[LoadedDefinition],
    catalog: Catalog,
    resolver: ProfileResolver,
    as_of: datetime,
    sql_trait_types: dict[str, dict[str, str]] | None = None,
    caps: Capabilities = CANONICAL,
) -> CompiledSpace:
    """Compiles every definition of a space into one current-values query for the engine of `caps`,
    with fingerprints (which do not depend on the engine)."""
    by_key = {d.key: d for d in definitions}
    ordered = sorted(definitions, key=lambda d: d.key)
    types = sql_trait_types or {}
    compiler = Compiler(catalog, resolver, as_of, by_key, types, caps)
    query, outputs = compiler.build(ordered)
    compiled = [
        CompiledDefinition(loaded, outs, fingerprint(loaded, by_key, catalog, resolver, types))
        for loaded, outs in zip(ordered, outputs, strict=True)
    ]
    return CompiledSpace(
        compiled,
        compiler.sql_trait_queries,
        query,
        as_of,
        compiler.tables,
        sorted(compiler.windows),
        caps,
    )


def fingerprint(
    loaded: LoadedDefinition,
    definitions: dict[str, LoadedDefinition],
    catalog: Catalog,
    resolver: ProfileResolver,
    sql_trait_types: dict[str, dict[str, str]],
) -> str:
    """A hash of the definition's logic: its own query, compiled alone at a fixed as-of against its
    sources merged into one. Names, keys, descriptions and YAML layout do not reach it; a change of
    condition, window, filter, type or SQL does."""
    merged: dict[tuple[str, str], Table] = {}
    for (_, name), table in sorted(catalog.tables.items()):
        columns = dict(merged[("source", name)].columns) if ("source", name) in merged else {}
        columns.update(table.columns)
        merged[("source", name)] = Table("source", name, columns)
    logical = Catalog(("source",), merged)
    compiler = Compiler(logical, resolver, FINGERPRINT_AS_OF, definitions, sql_trait_types, CANONICAL)
    query, outputs = compiler.build([loaded], positional=True)
    parts = [
        query.sql(dialect="duckdb"),
        *(s.query.sql(dialect="duckdb") for s in compiler.sql_trait_queries),
    ]
    parts.extend(f"{o.kind}:{o.value_type}" for o in outputs[0])
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
