"""Profiles Sync's tables, materialized in the warehouse from what Segment lands (SPEC §6): `id_graph`,
`external_id_mapping` and `profile_traits`.

An id's canonical is the end of its merge chain: the id's latest row (by `seq`, a null first, then
`timestamp`, `uuid_ts`, `id`) names the next id, whose latest row names the next, until an id that has not
merged away. Segment's recursive entries may be missing, land out of order or twice; following the chain in
the warehouse makes them irrelevant. The chain is followed by pointer jumping, a loop of set-based
statements: each pass maps every id to its current target's target, so a chain of depth d takes about
log2(d) passes, and no id is walked in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from engage.compile.portable import ordered, pick
from engage.errors import DataError
from engage.messages import sql_type
from engage.warehouse.base import Warehouse

UPDATES, ID_GRAPH = "id_graph_updates", "id_graph"
EXTERNAL_UPDATES, EXTERNAL_IDS = "external_id_mapping_updates", "external_id_mapping"
TRAIT_UPDATES, PROFILE_TRAITS = "profile_traits_updates", "profile_traits"
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
_LATEST, _WALK, _NEXT = "__engage_id_latest", "__engage_id_walk", "__engage_id_walk_next"
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
    depth: int
    external_ids: int


def _latest_rows(source_schema: str) -> exp.Query:
    """Each segment_id's latest row of `id_graph_updates`, with the id it points at."""
    order = ordered([exp.column(c) for c in ("seq", "timestamp", "uuid_ts", "id")], newest=True)
    rank = exp.Window(
        this=exp.RowNumber(), partition_by=[exp.column("segment_id")], order=exp.Order(expressions=order)
    )
    points_at = exp.alias_(exp.column("canonical_segment_id"), "points_at")
    ranked = exp.select(
        "segment_id", points_at, "timestamp", "seq", "uuid_ts", exp.alias_(rank, "rank")
    ).from_(exp.table_(UPDATES, db=source_schema))
    return (
        exp.select("segment_id", "points_at", "timestamp", "seq", "uuid_ts")
        .from_(ranked.subquery("ranked"))
        .where(exp.and_(exp.column("rank").eq(1), exp.column("segment_id").is_(exp.null()).not_()))
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


def build_id_graph(warehouse: Warehouse, source_schema: str, output_schema: str) -> GraphCounts:
    """Rebuilds `output_schema.id_graph` from the whole of `source_schema.id_graph_updates`."""
    warehouse.create_temp_table(_LATEST, _latest_rows(source_schema))
    walk, other = _WALK, _NEXT  # each pass writes the other table from this one: no copy per pass
    warehouse.create_temp_table(
        walk, exp.select("segment_id", exp.alias_("points_at", "target")).from_(_LATEST)
    )
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
        .join(exp.table_(_LATEST, alias="l"), on=exp.column("segment_id", "l").eq(exp.column("target", "w")))
        .where(exp.column("points_at", "l").neq(exp.column("target", "w")))
        .order_by("w.segment_id")
        .limit(3)
    )
    if looped:
        ids = ", ".join(str(r[0]) for r in looped)
        raise DataError(f"{source_schema}.{UPDATES}: merges form a loop; its ids include {ids}")
    graph = (
        exp.select(
            exp.column("segment_id", "l"),
            exp.alias_(exp.column("target", "w"), "canonical_segment_id"),
            exp.column("timestamp", "l"),
            exp.column("seq", "l"),
            exp.column("uuid_ts", "l"),
        )
        .from_(exp.table_(_LATEST, alias="l"))
        .join(exp.table_(walk, alias="w"), on=exp.column("segment_id", "w").eq(exp.column("segment_id", "l")))
    )
    columns = [(c, exp.DataType.build(t)) for c, t in ID_GRAPH_COLUMNS]
    _rebuild(warehouse, output_schema, ID_GRAPH, columns, graph)
    table = exp.table_(ID_GRAPH, db=output_schema)
    total, merged = warehouse.fetchall(
        exp.select(
            exp.Count(this=exp.Star()),
            exp.func(
                "SUM",
                exp.case().when(exp.column("segment_id").neq(exp.column("canonical_segment_id")), 1).else_(0),
            ),
        ).from_(table.copy())
    )[0]
    return GraphCounts(int(total), int(merged or 0), passes, _depth(warehouse))


def _depth(warehouse: Warehouse) -> int:
    """The longest merge chain: single steps from every merged id while some chain still moves."""
    hops, moving = "__engage_id_hops", "__engage_id_hops_next"  # alternated: no copy per step
    merged = exp.column("points_at").neq(exp.column("segment_id"))
    warehouse.create_temp_table(
        hops, exp.select("segment_id", exp.alias_("points_at", "at")).from_(_LATEST).where(merged)
    )
    depth = 0
    while warehouse.fetchall(exp.select(exp.Count(this=exp.Star())).from_(hops))[0][0]:
        depth += 1
        step = (
            exp.select(exp.column("segment_id", "h"), exp.alias_(exp.column("points_at", "l"), "at"))
            .from_(exp.table_(hops, alias="h"))
            .join(exp.table_(_LATEST, alias="l"), on=exp.column("segment_id", "l").eq(exp.column("at", "h")))
            .where(exp.column("points_at", "l").neq(exp.column("segment_id", "l")))
        )
        warehouse.create_temp_table(moving, step)
        hops, moving = moving, hops
    return depth


def materialize(warehouse: Warehouse, source_schema: str, output_schema: str) -> IdentityCounts:
    """Rebuilds the three Profiles Sync tables in `output_schema` from what Segment landed in
    `source_schema`."""
    missing = [
        t for t in (UPDATES, EXTERNAL_UPDATES, TRAIT_UPDATES) if not warehouse.table_columns(source_schema, t)
    ]
    if missing:
        raise DataError(f"Profiles Sync tables missing from {source_schema}: {', '.join(missing)}")
    graph = build_id_graph(warehouse, source_schema, output_schema)
    external = build_external_ids(warehouse, source_schema, output_schema)
    build_profile_traits(warehouse, source_schema, output_schema)
    live = warehouse.fetchall(
        exp.select(exp.Count(this=exp.Star()))
        .from_(exp.table_(PROFILE_TRAITS, db=output_schema))
        .where(exp.column("merged_to").is_(exp.null()))
    )[0][0]
    return IdentityCounts(int(live), graph.segment_ids, graph.merged, graph.depth, external)


def _canonical_of(segment: exp.Expr, graph: exp.Table) -> tuple[exp.Expr, exp.Expr]:
    """The canonical of `segment` through the id_graph aliased `g` (an id it lacks is its own), and the
    join condition."""
    canonical = exp.func("COALESCE", exp.column("canonical_segment_id", "g"), segment.copy())
    return canonical, exp.column("segment_id", "g").eq(segment.copy())


def _latest_first(columns: list[str], table: str) -> list[exp.Ordered]:
    return ordered([exp.column(c, table) for c in columns], newest=True)


def build_external_ids(warehouse: Warehouse, source_schema: str, output_schema: str) -> int:
    """Rebuilds `external_id_mapping`: one row per `external_id_hash`, from its latest observation (by
    `timestamp`, then `seq`, `uuid_ts`, `id`), on the canonical of that observation's segment_id. Needs
    `id_graph` built first."""
    graph = exp.table_(ID_GRAPH, db=output_schema, alias="g")
    canonical, joined = _canonical_of(exp.column("segment_id", "u"), graph)
    order = _latest_first(["timestamp", "seq", "uuid_ts", "id"], "u")
    rank = exp.Window(
        this=exp.RowNumber(),
        partition_by=[exp.column("external_id_hash", "u")],
        order=exp.Order(expressions=order),
    )
    ranked = (
        exp.select(
            exp.alias_(canonical, "canonical_segment_id"),
            *(exp.column(c, "u") for c, _ in EXTERNAL_COLUMNS[1:]),
            exp.alias_(rank, "rank"),
        )
        .from_(exp.table_(EXTERNAL_UPDATES, db=source_schema, alias="u"))
        .join(graph, on=joined, join_type="left")
        .where(exp.column("external_id_hash", "u").is_(exp.null()).not_())
    )
    rows = (
        exp.select(*(c for c, _ in EXTERNAL_COLUMNS))
        .from_(ranked.subquery("ranked"))
        .where(exp.column("rank").eq(1))
    )
    return _rebuild(
        warehouse,
        output_schema,
        EXTERNAL_IDS,
        [(c, exp.DataType.build(t)) for c, t in EXTERNAL_COLUMNS],
        rows,
    )


def build_profile_traits(warehouse: Warehouse, source_schema: str, output_schema: str) -> int:
    """Rebuilds `profile_traits`: one row per segment_id. A live profile holds each trait's latest non-null
    value (by `seq`, then `timestamp`, `uuid_ts`, `id`) over every id merged into it, and `merged_to` null;
    a merged-away id holds null traits and `merged_to` its canonical. Needs `id_graph` built first."""
    columns = warehouse.table_columns(source_schema, TRAIT_UPDATES)
    traits = [(c, sql_type(t)) for c, t in columns.items() if c not in TRAIT_METADATA]
    graph = exp.table_(ID_GRAPH, db=output_schema, alias="g")
    updates = exp.table_(TRAIT_UPDATES, db=source_schema, alias="u")
    canonical, joined = _canonical_of(exp.column("segment_id", "u"), graph)
    order = [
        _smallest_if_null(exp.column(c, "u"), t) for c, t in (("seq", "bigint"), ("timestamp", "timestamp"))
    ]
    order += [
        _smallest_if_null(exp.column(c, "u"), t) for c, t in (("uuid_ts", "timestamp"), ("id", "varchar"))
    ]
    caps = warehouse.capabilities
    latest = (
        exp.select(
            exp.alias_(canonical, "canonical_segment_id"),
            *(
                exp.alias_(
                    pick(caps, exp.column(c, "u"), order, exp.column(c, "u").is_(exp.null()).not_(), True, t),
                    c,
                )
                for c, t in traits
            ),
        )
        .from_(updates)
        .join(graph, on=joined, join_type="left")
        .group_by(canonical.copy())
    )
    ids = exp.union(
        exp.select(exp.column("segment_id")).from_(exp.table_(ID_GRAPH, db=output_schema)),
        exp.select(exp.column("segment_id")).from_(exp.table_(TRAIT_UPDATES, db=source_schema)),
        distinct=True,
    )
    every_id = exp.column("segment_id", "i")
    its_canonical, to_graph = _canonical_of(every_id, graph)
    live = its_canonical.copy().eq(every_id.copy())
    rows = (
        exp.select(
            exp.alias_(every_id.copy(), "canonical_segment_id"),
            *(exp.alias_(exp.case().when(live.copy(), exp.column(c, "t")), c) for c, _ in traits),
            exp.alias_(exp.case().when(exp.not_(live.copy()), its_canonical.copy()), "merged_to"),
        )
        .from_(ids.subquery("i"))
        .join(graph.copy(), on=to_graph, join_type="left")
        .join(
            latest.subquery("t"),
            on=exp.column("canonical_segment_id", "t").eq(every_id.copy()),
            join_type="left",
        )
        .where(every_id.copy().is_(exp.null()).not_())
    )
    table = [("canonical_segment_id", exp.DataType.build("VARCHAR")), *traits]
    table.append(("merged_to", exp.DataType.build("VARCHAR")))
    return _rebuild(warehouse, output_schema, PROFILE_TRAITS, table, rows)


def _smallest_if_null(column: exp.Expr, kind: str) -> exp.Expr:
    """An ordering key where a null sorts first (SPEC §6), as a value every engine compares the same way."""
    smallest = {
        "bigint": exp.Literal.number(-(2**63)),
        "timestamp": exp.cast(exp.Literal.string("0001-01-01 00:00:00"), "TIMESTAMP"),
        "varchar": exp.Literal.string(""),
    }[kind]
    return exp.func("COALESCE", column, smallest)


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
