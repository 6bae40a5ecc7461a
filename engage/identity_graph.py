"""Profiles Sync's `id_graph`, materialized in the warehouse from `id_graph_updates` (SPEC §6).

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

from engage.compile.portable import ordered
from engage.errors import DataError
from engage.warehouse.base import Warehouse

UPDATES, ID_GRAPH = "id_graph_updates", "id_graph"
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
    warehouse.create_temp_table(
        _WALK, exp.select("segment_id", exp.alias_("points_at", "target")).from_(_LATEST)
    )
    passes = 0
    while True:
        if passes == MAX_PASSES:
            raise DataError(f"{source_schema}.{UPDATES}: merges form a loop (no end after {passes} passes)")
        passes += 1
        warehouse.create_temp_table(_NEXT, _jump(_WALK))
        changed = warehouse.fetchall(
            exp.select(exp.Count(this=exp.Star()))
            .from_(exp.table_(_NEXT, alias="n"))
            .join(
                exp.table_(_WALK, alias="o"),
                on=exp.column("segment_id", "n").eq(exp.column("segment_id", "o")),
            )
            .where(exp.column("target", "n").neq(exp.column("target", "o")))
        )[0][0]
        warehouse.create_temp_table(_WALK, exp.select("segment_id", "target").from_(_NEXT))
        if not changed:
            break
    # A chain ends at an id that has not merged away; where the walk stopped elsewhere, merges form a loop
    # (pointer jumping settles on some member of it).
    looped = warehouse.fetchall(
        exp.select("w.segment_id")
        .from_(exp.table_(_WALK, alias="w"))
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
        .join(
            exp.table_(_WALK, alias="w"), on=exp.column("segment_id", "w").eq(exp.column("segment_id", "l"))
        )
    )
    table = exp.table_(ID_GRAPH, db=output_schema)
    warehouse.ensure_schema(output_schema)
    warehouse.ensure_table(output_schema, ID_GRAPH, [(c, exp.DataType.build(t)) for c, t in ID_GRAPH_COLUMNS])
    with warehouse.transaction():
        warehouse.overwrite(table, graph)
    total, merged = warehouse.fetchall(
        exp.select(
            exp.Count(this=exp.Star()),
            exp.func(
                "SUM",
                exp.case().when(exp.column("segment_id").neq(exp.column("canonical_segment_id")), 1).else_(0),
            ),
        ).from_(table.copy())
    )[0]
    return GraphCounts(int(total), int(merged or 0), passes)
