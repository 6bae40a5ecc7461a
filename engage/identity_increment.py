"""An incremental run of the Profiles Sync materialization (SPEC §6; the tables and the full rebuild are in
`identity_graph.py`). It reads the rows landed since the watermark and computes new rows for only the keys
they affect, ending in exactly the tables a full rebuild gives:

- id_graph. An id with new rows takes the newest of them and of the latest row kept for it (the order is
  total, so that is the newest of all its rows). Only a chain through such a *changed* id can end elsewhere
  now, and every id on it had the old canonical of that id: the ids to resolve are the changed ids and
  every id whose canonical is the old canonical of one. Their chains are followed by pointer jumping among
  themselves, an id outside resolving to its stored canonical (which cannot change). The ids whose row
  changes (a new latest row, or another canonical) are *moved*: their rows are rewritten.
- external_id_mapping: the rows of the external ids with a new latest observation, and of those whose
  latest observation's segment_id moved to another canonical.
- profile_traits: the rows of the moved ids, of their canonicals before and after, of the segment_ids with
  new trait rows and of their canonicals; a live one's traits from the trait rows of its members only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from sqlglot import exp

from engage.compile.expressions import timestamp, union_all
from engage.identity_graph import (
    EXTERNAL_COLUMNS,
    EXTERNAL_IDS,
    EXTERNAL_UPDATES,
    ID_GRAPH,
    ID_GRAPH_COLUMNS,
    ID_ORDER,
    LATEST_COLUMNS,
    LATEST_IDS,
    LOOKBACK,
    OBSERVATION_COLUMNS,
    OBSERVATION_ORDER,
    OBSERVATIONS,
    PROFILE_TRAITS,
    TRAIT_UPDATES,
    UPDATES,
    WATERMARKS,
    Canonicals,
    Replacement,
    Scratch,
    columns_of,
    external_rows,
    follow_merges,
    id_rows,
    marks,
    newest,
    observation_rows,
    profile_traits_columns,
    trait_rows,
    trait_values,
)
from engage.warehouse.base import Warehouse

# Rows landed since the watermarks: id_graph_updates', external_id_mapping_updates', and the segment_ids of
# profile_traits_updates'.
_SEEN, _OBSERVATIONS = "__engage_idinc_seen", "__engage_idinc_observations"
_TRAITED = "__engage_idinc_traited"
# The ids with a new latest row (with it), the ids whose canonical may change, and the ids whose id_graph
# row changes (with the row, and their canonical before and after).
_CHANGED, _AFFECTED, _MOVED = "__engage_idinc_changed", "__engage_idinc_affected", "__engage_idinc_moved"
# The keys of the rows rewritten: external ids, and segment_ids of profile_traits (with, for those that are
# live profiles, their members and canonical).
_HASHES, _PROFILES, _MEMBERS = "__engage_idinc_hashes", "__engage_idinc_profiles", "__engage_idinc_members"


def stage_increment(
    warehouse: Warehouse,
    source_schema: str,
    output_schema: str,
    traits: list[tuple[str, exp.DataType]],
) -> list[Replacement]:
    """The new rows of an incremental run, in scratch tables, with the watermarks (`Scratch.MARKS`). Raises
    DataError, before anything is written, when the new merges form a loop."""
    _stage_landed(warehouse, source_schema, output_schema)
    _stage_graph(warehouse, source_schema, output_schema)
    canonicals = Canonicals(exp.table_(ID_GRAPH, db=output_schema), moved=_MOVED)
    _stage_external(warehouse, output_schema, canonicals)
    _stage_traits(warehouse, source_schema, output_schema, traits, canonicals)
    return [
        Replacement(ID_GRAPH, columns_of(ID_GRAPH_COLUMNS), _MOVED, ("segment_id", _MOVED)),
        Replacement(LATEST_IDS, columns_of(LATEST_COLUMNS), _CHANGED, ("segment_id", _CHANGED)),
        Replacement(
            OBSERVATIONS,
            columns_of(OBSERVATION_COLUMNS),
            Scratch.OBSERVED,
            ("external_id_hash", Scratch.OBSERVED),
        ),
        Replacement(
            EXTERNAL_IDS, columns_of(EXTERNAL_COLUMNS), Scratch.EXTERNAL, ("external_id_hash", _HASHES)
        ),
        Replacement(
            PROFILE_TRAITS,
            [c for c, _ in profile_traits_columns(traits)],
            Scratch.TRAITS,
            ("canonical_segment_id", _PROFILES),
        ),
    ]


def _stage_landed(warehouse: Warehouse, source_schema: str, output_schema: str) -> None:
    """Snapshots the rows landed since the watermarks, and the next watermarks from them."""
    traited = (
        exp.select(exp.column("segment_id", "u"), exp.column("uuid_ts", "u"))
        .from_(exp.table_(TRAIT_UPDATES, db=source_schema, alias="u"))
        .where(exp.column("segment_id", "u").is_(exp.null()).not_())
    )
    landed = {
        UPDATES: (_SEEN, id_rows(source_schema)),
        EXTERNAL_UPDATES: (_OBSERVATIONS, observation_rows(source_schema)),
        TRAIT_UPDATES: (_TRAITED, traited),
    }
    for table, (scratch, rows) in landed.items():
        warehouse.create_temp_table(
            scratch, _since_watermark(warehouse, output_schema, source_schema, table, rows)
        )
    kept = exp.table_(WATERMARKS, db=output_schema)
    watermarks = []
    for table, (scratch, _) in landed.items():
        before = (
            exp.select("uuid_ts", exp.alias_(exp.Literal.number(0), "read"))
            .from_(kept.copy())
            .where(_watermark_of(source_schema, table))
        )
        read = exp.select("uuid_ts", exp.alias_(exp.Literal.number(1), "read")).from_(scratch)
        watermarks.append(marks(source_schema, table, union_all([before, read])))
    warehouse.create_temp_table(Scratch.MARKS, union_all(watermarks))


def _watermark_of(source_schema: str, table: str) -> exp.Expr:
    return exp.and_(
        exp.column("source_schema").eq(exp.Literal.string(source_schema)),
        exp.column("source_table").eq(exp.Literal.string(table)),
    )


def _since_watermark(
    warehouse: Warehouse, output_schema: str, source_schema: str, table: str, rows: exp.Select
) -> exp.Select:
    """`rows` (of `table`, aliased u) that landed after its watermark less LOOKBACK (all of them when the
    table was empty at the last run). The bound is a literal, read first: the engine can then skip the
    blocks of older rows by their min/max statistics instead of reading the whole table."""
    since = warehouse.fetchall(
        exp.select(exp.func("MAX", exp.column("uuid_ts")))
        .from_(exp.table_(WATERMARKS, db=output_schema))
        .where(_watermark_of(source_schema, table))
    )[0][0]
    if since is None:
        return rows
    if since.tzinfo is not None:  # BigQuery's TIMESTAMP
        since = since.astimezone(UTC).replace(tzinfo=None)
    bound = timestamp(since - LOOKBACK, warehouse.capabilities)
    return rows.where(exp.GT(this=exp.column("uuid_ts", "u"), expression=bound))


def _changed(landed: str, kept: exp.Table, key: str, order: Sequence[str], columns: list[str]) -> exp.Select:
    """The newest row of each `key` of the `landed` rows, over those rows and the one `kept` for it, where
    that is not the row kept (a row landed again is new: its uuid_ts is). The `order` columns tell rows
    apart; on a tie the kept row wins, so reading a row again within the lookback changes nothing."""
    flag = "__engage_kept"
    fresh = exp.select(*columns, exp.alias_(exp.Literal.number(0), flag)).from_(landed)
    again = (
        exp.select(*columns, exp.alias_(exp.Literal.number(1), flag))
        .from_(kept.copy())
        .where(exp.column(key).isin(query=exp.select(key).from_(landed)))
    )
    latest = newest(union_all([fresh, again]), key, [*order, flag])
    return (
        exp.select(*(exp.column(c, "n") for c in columns))
        .from_(latest.subquery("n"))
        .where(exp.column(flag, "n").eq(0))
    )


def _stage_graph(warehouse: Warehouse, source_schema: str, output_schema: str) -> None:
    """`_CHANGED`, then the ids to resolve with their latest rows (`Scratch.LATEST`), their chains followed
    (`Scratch.GRAPH`), and `_MOVED`."""
    stored = exp.table_(ID_GRAPH, db=output_schema)
    kept = exp.table_(LATEST_IDS, db=output_schema)
    columns = columns_of(LATEST_COLUMNS)
    warehouse.create_temp_table(_CHANGED, _changed(_SEEN, kept, "segment_id", ID_ORDER, columns))
    their_canonicals = (
        exp.select(
            exp.func("COALESCE", exp.column("canonical_segment_id", "o"), exp.column("segment_id", "c"))
        )
        .from_(exp.table_(_CHANGED, alias="c"))
        .join(
            exp.table_(ID_GRAPH, db=output_schema, alias="o"),
            on=exp.column("segment_id", "o").eq(exp.column("segment_id", "c")),
            join_type="left",
        )
    )
    affected = exp.union(
        exp.select("segment_id").from_(_CHANGED),
        exp.select("segment_id")
        .from_(stored.copy())
        .where(exp.column("canonical_segment_id").isin(query=their_canonicals)),
        distinct=True,
    )
    warehouse.create_temp_table(_AFFECTED, affected)
    unchanged = exp.and_(
        exp.column("segment_id").isin(query=exp.select("segment_id").from_(_AFFECTED)),
        exp.not_(exp.column("segment_id").isin(query=exp.select("segment_id").from_(_CHANGED))),
    )
    latest = union_all(
        [exp.select(*columns).from_(_CHANGED), exp.select(*columns).from_(kept.copy()).where(unchanged)]
    )
    warehouse.create_temp_table(Scratch.LATEST, latest)
    follow_merges(warehouse, source_schema, _start(output_schema))
    warehouse.create_temp_table(_MOVED, _moved(output_schema))


def _start(output_schema: str) -> exp.Select:
    """Where the walk starts: each id at the id it points at when that is resolved too, else at the stored
    canonical of that id (an id outside the resolved ones keeps its canonical)."""
    points_at = exp.column("points_at", "l")
    outside = exp.func("COALESCE", exp.column("canonical_segment_id", "g"), points_at.copy())
    target = exp.case().when(exp.column("segment_id", "a").is_(exp.null()), outside).else_(points_at.copy())
    return (
        exp.select(exp.column("segment_id", "l"), exp.alias_(target, "target"))
        .from_(exp.table_(Scratch.LATEST, alias="l"))
        .join(
            exp.table_(Scratch.LATEST, alias="a"),
            on=exp.column("segment_id", "a").eq(points_at.copy()),
            join_type="left",
        )
        .join(
            exp.table_(ID_GRAPH, db=output_schema, alias="g"),
            on=exp.column("segment_id", "g").eq(points_at.copy()),
            join_type="left",
        )
    )


def _moved(output_schema: str) -> exp.Select:
    """The resolved ids whose id_graph row changes, with the row and the canonical before and after (an id
    without a row was its own canonical)."""
    segment = exp.column("segment_id", "n")
    before = exp.func("COALESCE", exp.column("canonical_segment_id", "o"), segment.copy())
    after = exp.func("COALESCE", exp.column("canonical_segment_id", "n"), segment.copy())
    return (
        exp.select(
            *(exp.column(c, "n") for c in columns_of(ID_GRAPH_COLUMNS)),
            exp.alias_(before, "canonical_before"),
            exp.alias_(after, "canonical_after"),
        )
        .from_(exp.table_(Scratch.GRAPH, alias="n"))
        .join(
            exp.table_(ID_GRAPH, db=output_schema, alias="o"),
            on=exp.column("segment_id", "o").eq(segment.copy()),
            join_type="left",
        )
        .join(
            exp.table_(_CHANGED, alias="c"),
            on=exp.column("segment_id", "c").eq(segment.copy()),
            join_type="left",
        )
        .where(exp.or_(exp.column("segment_id", "c").is_(exp.null()).not_(), before.copy().neq(after.copy())))
    )


def _moved_away() -> exp.Expr:
    return exp.column("canonical_before").neq(exp.column("canonical_after"))


def _stage_external(warehouse: Warehouse, output_schema: str, canonicals: Canonicals) -> None:
    """The external ids' new latest observations (`Scratch.OBSERVED`), the external ids to rewrite
    (`_HASHES`) and their rows (`Scratch.EXTERNAL`)."""
    kept = exp.table_(OBSERVATIONS, db=output_schema)
    columns = columns_of(OBSERVATION_COLUMNS)
    observed = _changed(_OBSERVATIONS, kept, "external_id_hash", OBSERVATION_ORDER, columns)
    warehouse.create_temp_table(Scratch.OBSERVED, observed)
    on_moved = (
        exp.select(exp.column("external_id_hash", "l"))
        .from_(exp.table_(OBSERVATIONS, db=output_schema, alias="l"))
        .join(
            exp.table_(_MOVED, alias="m"), on=exp.column("segment_id", "m").eq(exp.column("segment_id", "l"))
        )
        .where(_moved_away())
    )
    warehouse.create_temp_table(
        _HASHES, exp.union(exp.select("external_id_hash").from_(Scratch.OBSERVED), on_moved, distinct=True)
    )
    rewritten = exp.and_(
        exp.column("external_id_hash").isin(query=exp.select("external_id_hash").from_(_HASHES)),
        exp.not_(
            exp.column("external_id_hash").isin(query=exp.select("external_id_hash").from_(Scratch.OBSERVED))
        ),
    )
    observations = union_all(
        [
            exp.select(*columns).from_(Scratch.OBSERVED),
            exp.select(*columns).from_(kept.copy()).where(rewritten),
        ]
    )
    warehouse.create_temp_table(Scratch.EXTERNAL, external_rows(observations, canonicals))


def _stage_traits(
    warehouse: Warehouse,
    source_schema: str,
    output_schema: str,
    traits: list[tuple[str, exp.DataType]],
    canonicals: Canonicals,
) -> None:
    """The segment_ids whose profile_traits row is rewritten (`_PROFILES`), the members of those that are
    canonicals (`_MEMBERS`), and the rows (`Scratch.TRAITS`), a live profile's traits from its members'
    trait rows only."""
    warehouse.create_temp_table(_PROFILES, _rewritten(canonicals))
    warehouse.create_temp_table(_MEMBERS, _members(output_schema, canonicals))
    updates = (
        exp.select()
        .from_(exp.table_(TRAIT_UPDATES, db=source_schema, alias="u"))
        .join(
            exp.table_(_MEMBERS, alias="s"),
            on=exp.column("segment_id", "s").eq(exp.column("segment_id", "u")),
        )
    )
    values = trait_values(warehouse, traits, updates, exp.column("canonical_segment_id", "s"))
    # Rows never leave the updates tables: a segment_id has a row now if it had one, or is in id_graph, or
    # has new trait rows.
    existing = union_all(
        [
            exp.select("segment_id").from_(_MOVED),
            exp.select("segment_id").from_(exp.table_(ID_GRAPH, db=output_schema)),
            exp.select("segment_id").from_(_TRAITED),
            exp.select("canonical_segment_id").from_(exp.table_(PROFILE_TRAITS, db=output_schema)),
        ]
    )
    ids = (
        exp.select(exp.alias_("canonical_segment_id", "segment_id"))
        .from_(_PROFILES)
        .where(exp.column("canonical_segment_id").isin(query=existing))
    )
    warehouse.create_temp_table(Scratch.TRAITS, trait_rows(traits, ids, canonicals, values))


def _rewritten(canonicals: Canonicals) -> exp.Query:
    """The segment_ids whose profile_traits row may change: the moved ids and their canonicals before and
    after, the segment_ids with new trait rows and their canonicals."""
    traited = exp.column("segment_id", "t")
    their_canonicals = canonicals.join(
        exp.select(canonicals.of(traited)).from_(exp.table_(_TRAITED, alias="t")), traited
    )
    return exp.union(
        exp.select(exp.alias_("segment_id", "canonical_segment_id")).from_(_MOVED),
        exp.select("canonical_before").from_(_MOVED).where(_moved_away()),
        exp.select("canonical_after").from_(_MOVED).where(_moved_away()),
        exp.select("segment_id").from_(_TRAITED),
        their_canonicals,
        distinct=True,
    )


def _members(output_schema: str, canonicals: Canonicals) -> exp.Select:
    """The ids whose canonical is in `_PROFILES`, with it. Such an id moved, or kept its stored canonical,
    or is that canonical."""

    def rewritten(segment: exp.Expr) -> exp.Expr:
        return segment.isin(query=exp.select("canonical_segment_id").from_(_PROFILES))

    candidates = exp.union(
        exp.select("segment_id").from_(_MOVED),
        exp.select("segment_id")
        .from_(exp.table_(ID_GRAPH, db=output_schema))
        .where(rewritten(exp.column("canonical_segment_id"))),
        exp.select(exp.alias_("canonical_segment_id", "segment_id")).from_(_PROFILES),
        distinct=True,
    )
    member = exp.column("segment_id", "i")
    members = exp.select(member, exp.alias_(canonicals.of(member), "canonical_segment_id")).from_(
        candidates.subquery("i")
    )
    return canonicals.join(members, member).where(rewritten(canonicals.of(member)))
