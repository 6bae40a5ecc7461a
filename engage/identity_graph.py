"""Profiles Sync's tables, materialized in the warehouse from what Segment lands (SPEC §6): `id_graph`,
`external_id_mapping` and `profile_traits`.

An id's canonical is the end of its merge chain: the id's latest row (by `seq`, a null first, then
`timestamp`, `uuid_ts`, `id`) names the next id, whose latest row names the next, until an id that has not
merged away. Segment's recursive entries may be missing, land out of order or twice; following the chain in
the warehouse makes them irrelevant. The chain is followed by pointer jumping, a loop of set-based
statements: each pass maps every id to its current target's target, so a chain of depth d takes about
log2(d) passes, and no id is walked in Python.

The first run, and `full_refresh`, rebuild the tables from every landed row. Later runs read the rows
landed since the last one and rewrite only the rows those affect (`identity_increment.py`), ending in the
same tables. engage keeps what that needs next to the tables, in `output_schema`:
- `_engage_identity`: per updates table, the newest `uuid_ts` materialized (the watermark);
- `_engage_id_latest`: each segment_id's latest `id_graph_updates` row, with its canonical (its id_graph
  row, which an incremental run then never needs to read);
- `_engage_external_latest`: each `external_id_hash`'s latest observation.
A run computes every new row into scratch tables first, then writes them all in one transaction, the
watermark last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlglot import exp

from engage.catalog import Catalog
from engage.compile.expressions import union_all
from engage.compile.portable import ordered, pick
from engage.errors import DataError
from engage.messages import sql_type
from engage.warehouse.base import Warehouse
from engage.warehouse.capabilities import Capabilities

UPDATES, ID_GRAPH = "id_graph_updates", "id_graph"
EXTERNAL_UPDATES, EXTERNAL_IDS = "external_id_mapping_updates", "external_id_mapping"
TRAIT_UPDATES, PROFILE_TRAITS = "profile_traits_updates", "profile_traits"
SOURCES = (UPDATES, EXTERNAL_UPDATES, TRAIT_UPDATES)
# Columns of profile_traits_updates that are not traits.
TRAIT_METADATA = {"id", "segment_id", "timestamp", "seq", "received_at", "uuid_ts", "event_source_id"}
EXTERNAL_COLUMNS = [
    ("canonical_segment_id", "VARCHAR"),
    ("external_id_type", "VARCHAR"),
    ("external_id_value", "VARCHAR"),
    ("external_id_hash", "VARCHAR"),
    ("timestamp", "TIMESTAMP"),
    ("uuid_ts", "TIMESTAMP"),
]
ID_GRAPH_COLUMNS = [
    ("segment_id", "VARCHAR"),
    ("canonical_segment_id", "VARCHAR"),
    ("timestamp", "TIMESTAMP"),
    ("seq", "BIGINT"),
    ("uuid_ts", "TIMESTAMP"),
]
# engage's bookkeeping in output_schema (see the module docstring).
WATERMARKS, LATEST_IDS, OBSERVATIONS = "_engage_identity", "_engage_id_latest", "_engage_external_latest"
LATEST_COLUMNS = [
    ("segment_id", "VARCHAR"),
    ("points_at", "VARCHAR"),
    ("timestamp", "TIMESTAMP"),
    ("seq", "BIGINT"),
    ("uuid_ts", "TIMESTAMP"),
    ("id", "VARCHAR"),
]
# `_engage_id_latest`: an id's latest row and its canonical, as `Scratch.GRAPH` holds them.
KEPT_ID_COLUMNS = [*LATEST_COLUMNS, ("canonical_segment_id", "VARCHAR")]
OBSERVATION_COLUMNS = [
    ("external_id_hash", "VARCHAR"),
    ("segment_id", "VARCHAR"),
    ("external_id_type", "VARCHAR"),
    ("external_id_value", "VARCHAR"),
    ("timestamp", "TIMESTAMP"),
    ("seq", "BIGINT"),
    ("uuid_ts", "TIMESTAMP"),
    ("id", "VARCHAR"),
]
# Which row is an id's latest, and which observation is an external id's (a null sorts first). Both orders
# are total, so the latest of a set of rows is the latest of the latest rows of its parts.
ID_ORDER = ("seq", "timestamp", "uuid_ts", "id")
OBSERVATION_ORDER = ("timestamp", "seq", "uuid_ts", "id")
# An incremental run reads the rows landed after the watermark less this: reading a row again changes
# nothing, and loads whose uuid_ts interleave (a slow load committing after a faster, later one) are caught.
LOOKBACK = timedelta(hours=1)
_WALK, _NEXT = "__engage_id_walk", "__engage_id_walk_next"


class Scratch:
    """A run's scratch tables: the latest rows of the ids it resolves, then its new rows, before they are
    written (id_graph's, external_id_mapping's, profile_traits', the external ids' latest observations'),
    and the watermarks, with how many rows were read."""

    LATEST = "__engage_id_latest"
    GRAPH, EXTERNAL, TRAITS = "__engage_id_graph", "__engage_id_external", "__engage_id_traits"
    OBSERVED, MARKS = "__engage_id_observed", "__engage_id_marks"


# Pointer jumping doubles the followed length each pass: 40 passes follow chains longer than any merge
# history could be.
MAX_PASSES = 40


@dataclass(frozen=True)
class GraphCounts:
    segment_ids: int
    merged: int  # ids whose canonical is another id
    passes: int  # pointer-jumping passes until nothing changed
    depth: int  # the longest merge chain, in merges


@dataclass(frozen=True)
class IdentityCounts:
    profiles: int  # live (canonical) profiles
    segment_ids: int
    merged: int
    depth: int | None  # the longest merge chain, in merges (None: not counted)
    external_ids: int
    full: bool = True  # rebuilt from every landed row (else incrementally)
    new_rows: int = 0  # rows of the updates tables read (incrementally: since the watermark, less LOOKBACK)


@dataclass(frozen=True)
class Replacement:
    """A table's new rows, in the scratch table `rows`: they replace its rows whose key is among `keys`
    (the key column, and a scratch table with a column of that name), or all its rows. On an engine with
    row ids, `row_ids` (a query of them) names the rows replaced instead of `keys`: the run read them, and
    writes nothing to the table between that read and the delete, so the ids still name them."""

    table: str
    columns: list[str]
    rows: str
    keys: tuple[str, str] | None = None
    row_ids: exp.Query | None = None


@dataclass(frozen=True)
class Canonicals:
    """Where a query finds any segment_id's canonical: in `graph` (id_graph, or an incremental run's slice
    of `_engage_id_latest` holding every id it looks up that has a row; an id it lacks is its own), unless
    the id is in `moved` (an incremental run's ids whose id_graph row changes), which gives its new
    canonical. `join` adds the joins (aliased g and m) that `of` reads."""

    graph: exp.Table
    moved: str | None = None

    def join(self, query: exp.Select, segment: exp.Column) -> exp.Select:
        graph = exp.table_(self.graph.name, db=self.graph.db or None, alias="g")
        query = query.join(graph, on=exp.column("segment_id", "g").eq(segment.copy()), join_type="left")
        if self.moved is None:
            return query
        moved = exp.table_(self.moved, alias="m")
        return query.join(moved, on=exp.column("segment_id", "m").eq(segment.copy()), join_type="left")

    def of(self, segment: exp.Column) -> exp.Expr:
        stored = exp.func("COALESCE", exp.column("canonical_segment_id", "g"), segment.copy())
        if self.moved is None:
            return stored
        moved = exp.func("COALESCE", exp.column("canonical_segment_id", "m"), segment.copy())
        return exp.case().when(exp.column("segment_id", "m").is_(exp.null()), stored).else_(moved)


def columns_of(table: list[tuple[str, str]]) -> list[str]:
    return [c for c, _ in table]


def typed(table: list[tuple[str, str]], caps: Capabilities) -> list[tuple[str, exp.DataType]]:
    """The columns' types, a TIMESTAMP being the type of the landed tables' moments on this engine."""
    return [(c, exp.DataType.build(caps.timestamp_type if t == "TIMESTAMP" else t)) for c, t in table]


def newest(rows: exp.Query, key: str, order: Sequence[str]) -> exp.Select:
    """Each `key`'s newest row of `rows` by the `order` columns (a null sorts first)."""
    columns = rows.named_selects
    rank = exp.Window(
        this=exp.RowNumber(),
        partition_by=[exp.column(key)],
        order=exp.Order(expressions=ordered([exp.column(c) for c in order], newest=True)),
    )
    ranked = exp.select(*map(exp.column, columns), exp.alias_(rank, "rank")).from_(
        rows.subquery("candidates")
    )
    return (
        exp.select(*map(exp.column, columns)).from_(ranked.subquery("ranked")).where(exp.column("rank").eq(1))
    )


def id_rows(source_schema: str) -> exp.Select:
    """The rows of `id_graph_updates` (aliased u), each with the id it points at."""
    names = {"points_at": "canonical_segment_id"}
    return (
        exp.select(*(exp.alias_(exp.column(names.get(c, c), "u"), c) for c in columns_of(LATEST_COLUMNS)))
        .from_(exp.table_(UPDATES, db=source_schema, alias="u"))
        .where(exp.column("segment_id", "u").is_(exp.null()).not_())
    )


def observation_rows(source_schema: str) -> exp.Select:
    """The observations of external ids: the rows of `external_id_mapping_updates` (aliased u)."""
    return (
        exp.select(*(exp.column(c, "u") for c in columns_of(OBSERVATION_COLUMNS)))
        .from_(exp.table_(EXTERNAL_UPDATES, db=source_schema, alias="u"))
        .where(exp.column("external_id_hash", "u").is_(exp.null()).not_())
    )


def _jump(walk: str) -> exp.Query:
    """One pass: every id's target becomes its target's target (an id without a row points at itself)."""
    target = exp.func("COALESCE", exp.column("target", "t"), exp.column("target", "w"))
    its_target = exp.column("segment_id", "t").eq(exp.column("target", "w"))
    return (
        exp.select(exp.column("segment_id", "w"), exp.alias_(target, "target"))
        .from_(exp.table_(walk, alias="w"))
        .join(exp.table_(walk, alias="t"), on=its_target, join_type="left")
    )


def follow_merges(warehouse: Warehouse, source_schema: str, start: exp.Query) -> int:
    """Follows the merge chains of the ids of `Scratch.LATEST` (their latest rows) from `start`
    (segment_id, target) to their ends, and writes their latest rows with their canonical (their id_graph
    rows, and their `_engage_id_latest` rows) to `Scratch.GRAPH`; returns the passes it took. Raises
    DataError, before anything is written, when merges form a loop."""
    walk, other = _WALK, _NEXT  # each pass writes the other table from this one: no copy per pass
    warehouse.create_temp_table(walk, start)
    passes = 0
    while True:
        if passes == MAX_PASSES:
            raise DataError(f"{source_schema}.{UPDATES}: merges form a loop (no end after {passes} passes)")
        passes += 1
        warehouse.create_temp_table(other, _jump(walk))
        changed = warehouse.fetchall(
            exp.select(exp.Count(this=exp.Star()))
            .from_(exp.table_(other, alias="n"))
            .join(
                exp.table_(walk, alias="o"),
                on=exp.column("segment_id", "n").eq(exp.column("segment_id", "o")),
            )
            .where(exp.column("target", "n").neq(exp.column("target", "o")))
        )[0][0]
        walk, other = other, walk
        if not changed:
            break
    # A chain ends at an id that has not merged away; where the walk stopped elsewhere, merges form a loop
    # (pointer jumping settles on some member of it).
    looped = warehouse.fetchall(
        exp.select("w.segment_id")
        .from_(exp.table_(walk, alias="w"))
        .join(
            exp.table_(Scratch.LATEST, alias="l"),
            on=exp.column("segment_id", "l").eq(exp.column("target", "w")),
        )
        .where(exp.column("points_at", "l").neq(exp.column("target", "w")))
        .order_by("w.segment_id")
        .limit(3)
    )
    if looped:
        ids = ", ".join(str(r[0]) for r in looped)
        raise DataError(f"{source_schema}.{UPDATES}: merges form a loop; its ids include {ids}")
    graph = (
        exp.select(
            *(exp.column(c, "l") for c in columns_of(LATEST_COLUMNS)),
            exp.alias_(exp.column("target", "w"), "canonical_segment_id"),
        )
        .from_(exp.table_(Scratch.LATEST, alias="l"))
        .join(exp.table_(walk, alias="w"), on=exp.column("segment_id", "w").eq(exp.column("segment_id", "l")))
    )
    warehouse.create_temp_table(Scratch.GRAPH, graph)
    return passes


def _stage_graph(warehouse: Warehouse, source_schema: str) -> int:
    """Every id's latest row in `Scratch.LATEST` and its id_graph row in `Scratch.GRAPH`, from every
    landed row."""
    warehouse.create_temp_table(Scratch.LATEST, newest(id_rows(source_schema), "segment_id", ID_ORDER))
    start = exp.select("segment_id", exp.alias_("points_at", "target")).from_(Scratch.LATEST)
    return follow_merges(warehouse, source_schema, start)


def build_id_graph(warehouse: Warehouse, source_schema: str, output_schema: str) -> GraphCounts:
    """Rebuilds `output_schema.id_graph` alone from the whole of `source_schema.id_graph_updates`
    (`materialize` rebuilds the three tables together)."""
    passes = _stage_graph(warehouse, source_schema)
    rows = exp.select(*columns_of(ID_GRAPH_COLUMNS)).from_(Scratch.GRAPH)
    _rebuild(warehouse, output_schema, ID_GRAPH, typed(ID_GRAPH_COLUMNS, warehouse.capabilities), rows)
    total, merged = warehouse.fetchall(_graph_counts(exp.table_(ID_GRAPH, db=output_schema)))[0]
    return GraphCounts(int(total), int(merged or 0), passes, _depth(warehouse, exp.table_(Scratch.LATEST)))


def _graph_counts(graph: exp.Table) -> exp.Select:
    """How many ids `graph` holds, and how many of them merged away."""
    merged = exp.column("segment_id").neq(exp.column("canonical_segment_id"))
    return exp.select(
        exp.alias_(exp.Count(this=exp.Star()), "segment_ids"),
        exp.alias_(exp.func("SUM", exp.case().when(merged, 1).else_(0)), "merged"),
    ).from_(graph)


def _depth(warehouse: Warehouse, latest: exp.Table) -> int:
    """The longest merge chain among the ids whose latest rows `latest` holds: single steps from every
    merged id while some chain still moves."""
    hops, moving = "__engage_id_hops", "__engage_id_hops_next"  # alternated: no copy per step
    merged = exp.column("points_at").neq(exp.column("segment_id"))
    warehouse.create_temp_table(
        hops, exp.select("segment_id", exp.alias_("points_at", "at")).from_(latest.copy()).where(merged)
    )
    depth = 0
    while warehouse.fetchall(exp.select(exp.Count(this=exp.Star())).from_(hops))[0][0]:
        depth += 1
        step = (
            exp.select(exp.column("segment_id", "h"), exp.alias_(exp.column("points_at", "l"), "at"))
            .from_(exp.table_(hops, alias="h"))
            .join(
                exp.table_(latest.name, db=latest.db or None, alias="l"),
                on=exp.column("segment_id", "l").eq(exp.column("at", "h")),
            )
            .where(exp.column("points_at", "l").neq(exp.column("segment_id", "l")))
        )
        warehouse.create_temp_table(moving, step)
        hops, moving = moving, hops
    return depth


def external_rows(observations: exp.Query, canonicals: Canonicals) -> exp.Select:
    """`external_id_mapping` rows from external ids' latest `observations`: each on the canonical of the
    observation's segment_id."""
    segment = exp.column("segment_id", "o")
    rows = exp.select(
        exp.alias_(canonicals.of(segment), "canonical_segment_id"),
        *(exp.column(c, "o") for c in columns_of(EXTERNAL_COLUMNS)[1:]),
    ).from_(observations.subquery("o"))
    return canonicals.join(rows, segment)


def build_external_ids(warehouse: Warehouse, source_schema: str, output_schema: str) -> int:
    """Rebuilds `external_id_mapping` alone: one row per `external_id_hash`, from its latest observation
    (by `timestamp`, then `seq`, `uuid_ts`, `id`), on the canonical of that observation's segment_id. Needs
    `id_graph` built first."""
    observations = newest(observation_rows(source_schema), "external_id_hash", OBSERVATION_ORDER)
    rows = external_rows(observations, Canonicals(exp.table_(ID_GRAPH, db=output_schema)))
    return _rebuild(
        warehouse, output_schema, EXTERNAL_IDS, typed(EXTERNAL_COLUMNS, warehouse.capabilities), rows
    )


def trait_columns(warehouse: Warehouse, source_schema: str) -> list[tuple[str, exp.DataType]]:
    """The trait columns of `profile_traits_updates`, with their types."""
    return _traits_of(warehouse.table_columns(source_schema, TRAIT_UPDATES))


def _traits_of(columns: dict[str, str]) -> list[tuple[str, exp.DataType]]:
    """The trait columns among the columns (name → portable type) of `profile_traits_updates`."""
    return [(c, sql_type(t)) for c, t in columns.items() if c not in TRAIT_METADATA]


def profile_traits_columns(traits: list[tuple[str, exp.DataType]]) -> list[tuple[str, exp.DataType]]:
    varchar = exp.DataType.build("VARCHAR")
    return [("canonical_segment_id", varchar), *traits, ("merged_to", varchar.copy())]


def trait_values(
    warehouse: Warehouse,
    traits: list[tuple[str, exp.DataType]],
    updates: exp.Select,
    canonical: exp.Expr,
) -> exp.Select:
    """Each trait's latest non-null value (by `seq`, then `timestamp`, `uuid_ts`, `id`) per `canonical`,
    over `updates`: `profile_traits_updates` aliased u, with the joins `canonical` reads."""
    caps = warehouse.capabilities
    order = [smallest_if_null(exp.column(c, "u"), caps) for c in ID_ORDER]
    if caps.pick == "window":
        return _ranked_trait_values(traits, updates, canonical, order)
    latest = [
        exp.alias_(
            pick(caps, exp.column(c, "u"), order, exp.column(c, "u").is_(exp.null()).not_(), True, t), c
        )
        for c, t in traits
    ]
    return updates.select(exp.alias_(canonical, "canonical_segment_id"), *latest).group_by(canonical.copy())


def _ranked_trait_values(
    traits: list[tuple[str, exp.DataType]], updates: exp.Select, canonical: exp.Expr, order: list[exp.Expr]
) -> exp.Select:
    """`trait_values` for engines with neither ARG_MAX nor ordered arrays (Redshift): one ROW_NUMBER per
    trait, non-null values first, then newest; the rank-1 value of each, in one pass and one GROUP BY."""
    ranks = []
    for column, _ in traits:
        value = exp.column(column, "u")
        known = exp.case().when(value.is_(exp.null()), exp.Literal.number(0)).else_(exp.Literal.number(1))
        keys = [
            exp.Ordered(this=k, desc=True, nulls_first=False) for k in [known, *(o.copy() for o in order)]
        ]
        rank = exp.Window(
            this=exp.RowNumber(), partition_by=[canonical.copy()], order=exp.Order(expressions=keys)
        )
        ranks += [exp.alias_(value.copy(), column), exp.alias_(rank, f"__rank_{column}")]
    ranked = updates.select(exp.alias_(canonical, "canonical_segment_id"), *ranks)
    firsts = [
        exp.alias_(
            exp.func(
                "BOOL_OR" if kind.is_type(exp.DataType.Type.BOOLEAN) else "MAX",
                exp.case().when(exp.column(f"__rank_{c}").eq(1), exp.column(c)),
            ),
            c,
        )
        for c, kind in traits
    ]
    return (
        exp.select("canonical_segment_id", *firsts)
        .from_(ranked.subquery("ranked"))
        .group_by("canonical_segment_id")
    )


def trait_rows(
    traits: list[tuple[str, exp.DataType]], ids: exp.Query, canonicals: Canonicals, values: exp.Query
) -> exp.Select:
    """`profile_traits` rows of the segment_ids `ids`: a live profile's its trait `values`, a merged-away
    id's null traits and `merged_to` its canonical."""
    every_id = exp.column("segment_id", "i")
    its_canonical = canonicals.of(every_id)
    live = its_canonical.copy().eq(every_id.copy())
    rows = exp.select(
        exp.alias_(every_id.copy(), "canonical_segment_id"),
        *(exp.alias_(exp.case().when(live.copy(), exp.column(c, "t")), c) for c, _ in traits),
        exp.alias_(exp.case().when(exp.not_(live.copy()), its_canonical.copy()), "merged_to"),
    ).from_(ids.subquery("i"))
    return (
        canonicals.join(rows, every_id)
        .join(
            values.subquery("t"),
            on=exp.column("canonical_segment_id", "t").eq(every_id.copy()),
            join_type="left",
        )
        .where(every_id.copy().is_(exp.null()).not_())
    )


def _all_trait_rows(
    warehouse: Warehouse,
    source_schema: str,
    traits: list[tuple[str, exp.DataType]],
    graph: exp.Table,
) -> exp.Select:
    """Every `profile_traits` row, with canonicals from `graph`: one per segment_id of the graph or of
    `profile_traits_updates`."""
    canonicals = Canonicals(graph)
    updates = exp.select().from_(exp.table_(TRAIT_UPDATES, db=source_schema, alias="u"))
    segment = exp.column("segment_id", "u")
    values = trait_values(warehouse, traits, canonicals.join(updates, segment), canonicals.of(segment))
    ids = exp.union(
        exp.select("segment_id").from_(graph.copy()),
        exp.select("segment_id").from_(exp.table_(TRAIT_UPDATES, db=source_schema)),
        distinct=True,
    )
    return trait_rows(traits, ids, canonicals, values)


def build_profile_traits(warehouse: Warehouse, source_schema: str, output_schema: str) -> int:
    """Rebuilds `profile_traits` alone: one row per segment_id. A live profile holds each trait's latest
    non-null value (by `seq`, then `timestamp`, `uuid_ts`, `id`) over every id merged into it, and
    `merged_to` null; a merged-away id holds null traits and `merged_to` its canonical. Needs `id_graph`
    built first."""
    traits = trait_columns(warehouse, source_schema)
    rows = _all_trait_rows(warehouse, source_schema, traits, exp.table_(ID_GRAPH, db=output_schema))
    return _rebuild(warehouse, output_schema, PROFILE_TRAITS, profile_traits_columns(traits), rows)


def smallest_if_null(column: exp.Column, caps: Capabilities) -> exp.Expr:
    """An ordering column (of ID_ORDER) where a null sorts first (SPEC §6), as a value every engine compares
    the same way."""
    moment = exp.cast(exp.Literal.string("0001-01-01 00:00:00"), exp.DataType.build(caps.timestamp_type))
    smallest = {"seq": exp.Literal.number(-(2**63)), "timestamp": moment, "uuid_ts": moment.copy()}
    return exp.func("COALESCE", column, smallest.get(column.name, exp.Literal.string("")))


def _rebuild(
    warehouse: Warehouse, schema: str, name: str, columns: list[tuple[str, exp.DataType]], rows: exp.Query
) -> int:
    """Replaces the table's rows with `rows` (created first when missing); returns how many there are."""
    warehouse.ensure_schema(schema)
    existing = warehouse.table_columns(schema, name)
    if existing and list(existing) != [c for c, _ in columns]:  # a trait column came or went
        warehouse.execute(exp.Drop(tables=[exp.table_(name, db=schema)], kind="TABLE", exists=True))
    warehouse.ensure_table(schema, name, columns)
    table = exp.table_(name, db=schema)
    with warehouse.transaction():
        warehouse.overwrite(table, rows)
    return int(warehouse.fetchall(exp.select(exp.Count(this=exp.Star())).from_(table.copy()))[0][0])


# -- materialize: the three tables together, in full or incrementally ---------------------------------------
def materialize(
    warehouse: Warehouse,
    source_schema: str,
    output_schema: str,
    *,
    full_refresh: bool = False,
    depth: bool = True,
) -> IdentityCounts:
    """Brings the three Profiles Sync tables in `output_schema` up to date with what Segment landed in
    `source_schema`: incrementally when an earlier run left its watermark and its tables as this run would
    make them (a new trait column rebuilds), else, or with `full_refresh`, from every landed row. The
    longest merge chain is counted only with `depth` (one pass per link over every merged id: a sync that
    only logs it does without)."""
    catalog = warehouse.describe([source_schema, output_schema])  # one read of both schemas' columns
    landed = {t: catalog.columns(source_schema, t) for t in SOURCES}
    missing = [t for t, columns in landed.items() if not columns]
    if missing:
        raise DataError(f"Profiles Sync tables missing from {source_schema}: {', '.join(missing)}")
    traits = _traits_of(landed[TRAIT_UPDATES])
    tables = _tables(warehouse, traits)
    watermarks = (
        None if full_refresh else _watermarks(warehouse, catalog, source_schema, output_schema, tables)
    )
    if watermarks is None:
        replacements = _stage_full(warehouse, source_schema, traits)
        _prepare(warehouse, output_schema, tables)
    else:
        from engage.identity_increment import stage_increment

        replacements = stage_increment(warehouse, source_schema, output_schema, traits, watermarks)
    _write(warehouse, output_schema, replacements)
    return _counts(warehouse, output_schema, watermarks is None, depth)


def _tables(
    warehouse: Warehouse, traits: list[tuple[str, exp.DataType]]
) -> dict[str, list[tuple[str, exp.DataType]]]:
    """The tables a run leaves in output_schema, with their columns."""
    caps = warehouse.capabilities
    watermarks = [("source_schema", "VARCHAR"), ("source_table", "VARCHAR"), ("uuid_ts", "TIMESTAMP")]
    return {
        WATERMARKS: typed(watermarks, caps),
        ID_GRAPH: typed(ID_GRAPH_COLUMNS, caps),
        EXTERNAL_IDS: typed(EXTERNAL_COLUMNS, caps),
        PROFILE_TRAITS: profile_traits_columns(traits),
        LATEST_IDS: typed(KEPT_ID_COLUMNS, caps),
        OBSERVATIONS: typed(OBSERVATION_COLUMNS, caps),
    }


def _watermarks(
    warehouse: Warehouse,
    catalog: Catalog,
    source_schema: str,
    output_schema: str,
    tables: dict[str, list[tuple[str, exp.DataType]]],
) -> dict[str, datetime | None] | None:
    """The watermark of each updates table of `source_schema` (None: it was empty), when an earlier run
    left every table as this one would make it (in `catalog`) and a watermark for each of them; else None."""
    for name, columns in tables.items():
        if list(catalog.columns(output_schema, name)) != [c for c, _ in columns]:  # missing, or other columns
            return None
    rows = warehouse.fetchall(
        exp.select("source_table", exp.func("MAX", exp.column("uuid_ts")))
        .from_(exp.table_(WATERMARKS, db=output_schema))
        .where(
            exp.and_(
                exp.column("source_schema").eq(exp.Literal.string(source_schema)),
                exp.column("source_table").isin(*(exp.Literal.string(t) for t in SOURCES)),
            )
        )
        .group_by("source_table")
    )
    found_marks: dict[str, datetime | None] = {str(table): since for table, since in rows}
    return found_marks if len(found_marks) == len(SOURCES) else None


def marks(source_schema: str, table: str, rows: exp.Query) -> exp.Select:
    """The watermark of one updates table, from `rows` (uuid_ts, read): the newest uuid_ts, and how many
    rows were read."""
    return exp.select(
        exp.alias_(exp.Literal.string(source_schema), "source_schema"),
        exp.alias_(exp.Literal.string(table), "source_table"),
        exp.alias_(exp.func("MAX", exp.column("uuid_ts")), "uuid_ts"),
        exp.alias_(exp.func("COALESCE", exp.func("SUM", exp.column("read")), 0), "read"),
    ).from_(rows.subquery("landed"))


def _stage_full(
    warehouse: Warehouse, source_schema: str, traits: list[tuple[str, exp.DataType]]
) -> list[Replacement]:
    """Every table's rows from every landed row, in scratch tables. The watermarks come first: a row landing
    while the run reads is then read again by the next run, never skipped."""
    read = exp.alias_(exp.Literal.number(1), "read")
    landed = [
        marks(source_schema, t, exp.select("uuid_ts", read.copy()).from_(exp.table_(t, db=source_schema)))
        for t in SOURCES
    ]
    warehouse.create_temp_table(Scratch.MARKS, union_all(landed))
    _stage_graph(warehouse, source_schema)
    observations = newest(observation_rows(source_schema), "external_id_hash", OBSERVATION_ORDER)
    warehouse.create_temp_table(Scratch.OBSERVED, observations)
    graph = exp.table_(Scratch.GRAPH)
    observed = exp.select("*").from_(Scratch.OBSERVED)
    warehouse.create_temp_table(Scratch.EXTERNAL, external_rows(observed, Canonicals(graph)))
    warehouse.create_temp_table(Scratch.TRAITS, _all_trait_rows(warehouse, source_schema, traits, graph))
    return [
        Replacement(ID_GRAPH, columns_of(ID_GRAPH_COLUMNS), Scratch.GRAPH),
        Replacement(LATEST_IDS, columns_of(KEPT_ID_COLUMNS), Scratch.GRAPH),
        Replacement(OBSERVATIONS, columns_of(OBSERVATION_COLUMNS), Scratch.OBSERVED),
        Replacement(EXTERNAL_IDS, columns_of(EXTERNAL_COLUMNS), Scratch.EXTERNAL),
        Replacement(PROFILE_TRAITS, [c for c, _ in profile_traits_columns(traits)], Scratch.TRAITS),
    ]


def _prepare(warehouse: Warehouse, schema: str, tables: dict[str, list[tuple[str, exp.DataType]]]) -> None:
    """Creates the tables a full run writes. One whose columns differ (a trait column came or went, an
    older engage) is dropped and created again, after the watermarks: should the run fail from here on, the
    next one rebuilds."""
    warehouse.ensure_schema(schema)
    catalog = warehouse.describe([schema])
    stale = [
        name
        for name, columns in tables.items()
        if (found := catalog.columns(schema, name)) and list(found) != [c for c, _ in columns]
    ]
    if stale:  # the watermarks first
        for name in dict.fromkeys([WATERMARKS, *stale]):
            warehouse.execute(exp.Drop(tables=[exp.table_(name, db=schema)], kind="TABLE", exists=True))
    for name, columns in tables.items():
        warehouse.ensure_table(schema, name, columns)


def _write(warehouse: Warehouse, schema: str, replacements: list[Replacement]) -> None:
    """Writes a run's new rows in one transaction, the watermarks last. Engines without transactions commit
    statement by statement: the watermarks, deleted first, are then missing until the run ends, and a run
    that failed midway is followed by a full one."""
    watermarks = exp.table_(WATERMARKS, db=schema)
    with warehouse.transaction():
        warehouse.delete_rows(watermarks, [exp.true()])
        for replacement in replacements:
            table = exp.table_(replacement.table, db=schema)
            which: exp.Expr = exp.true()
            row_id = warehouse.capabilities.row_id
            if replacement.row_ids is not None and row_id is not None:
                which = exp.column(row_id).isin(query=replacement.row_ids)
            elif replacement.keys is not None:
                key, keys = replacement.keys
                which = exp.column(key).isin(query=exp.select(exp.column(key)).from_(exp.table_(keys)))
            warehouse.delete_rows(table, [which])
            rows = exp.select(*map(exp.column, replacement.columns)).from_(exp.table_(replacement.rows))
            warehouse.execute(exp.insert(rows, table.copy(), columns=replacement.columns))
        columns = ["source_schema", "source_table", "uuid_ts"]
        latest = exp.select(*map(exp.column, columns)).from_(exp.table_(Scratch.MARKS))
        warehouse.execute(exp.insert(latest, watermarks.copy(), columns=columns))


def _counts(warehouse: Warehouse, schema: str, full: bool, depth: bool) -> IdentityCounts:
    """What the tables hold, and how many rows the run read (`Scratch.MARKS`), in one query of row counts
    and nulls, which engines answer from their metadata or one narrow column rather than by comparing every
    id with its canonical: profile_traits has a row per id of id_graph, and a merged id is one with
    `merged_to` set. The depth (when asked) over every id's latest row."""

    def rows(table: exp.Table, *counted: exp.Expr) -> exp.Select:
        return exp.select(*counted).from_(table)

    count = exp.Count(this=exp.Star())
    ((segment_ids, traits, merged, external_ids, read),) = warehouse.fetchall(
        exp.select("g.segment_ids", "p.traits", "p.merged", "e.external_ids", "r.read")
        .from_(rows(exp.table_(ID_GRAPH, db=schema), exp.alias_(count.copy(), "segment_ids")).subquery("g"))
        .join(
            rows(
                exp.table_(PROFILE_TRAITS, db=schema),
                exp.alias_(count.copy(), "traits"),
                exp.alias_(exp.Count(this=exp.column("merged_to")), "merged"),
            ).subquery("p"),
            join_type="cross",
        )
        .join(
            rows(exp.table_(EXTERNAL_IDS, db=schema), exp.alias_(count.copy(), "external_ids")).subquery("e"),
            join_type="cross",
        )
        .join(
            rows(exp.table_(Scratch.MARKS), exp.alias_(exp.func("SUM", exp.column("read")), "read")).subquery(
                "r"
            ),
            join_type="cross",
        )
    )
    return IdentityCounts(
        profiles=int(traits) - int(merged),
        segment_ids=int(segment_ids),
        merged=int(merged),
        depth=_depth(warehouse, exp.table_(LATEST_IDS, db=schema)) if depth else None,
        external_ids=int(external_ids),
        full=full,
        new_rows=int(read or 0),
    )
