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

What the run costs is the passes over the big tables (the kept latest rows and observations,
profile_traits_updates, and those it rewrites), whatever the number of rows landed: each is read as few
times as it can be, for the few keys the run needs (a semi-join, which an engine builds on the small side),
and then only small scratch tables are joined. Every kept row and stored canonical of an id that the run
reads comes from one slice of `_engage_id_latest`, read first (`_stage_slice`); id_graph is only written.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlglot import exp

from engage.compile.expressions import timestamp, union_all
from engage.identity_graph import (
    EXTERNAL_COLUMNS,
    EXTERNAL_IDS,
    EXTERNAL_UPDATES,
    ID_GRAPH,
    ID_GRAPH_COLUMNS,
    ID_ORDER,
    KEPT_ID_COLUMNS,
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
# The kept latest rows, with their canonical, of the ids the run reads (`_stage_slice`).
_SLICE, _SLICED = "__engage_idinc_slice", "__engage_idinc_sliced"
# The ids with a new latest row (with it), and the ids whose id_graph row changes (with the row, and their
# canonical before and after).
_CHANGED, _MOVED = "__engage_idinc_changed", "__engage_idinc_moved"
# The external_id_mapping rows of the external ids observed again or on a profile an id moved away from,
# and the kept observations of those external ids.
_MAPPED, _KEPT_OBSERVED = "__engage_idinc_mapped", "__engage_idinc_kept_observed"
# The segment_ids of the profile_traits rows rewritten, the ids whose canonical is one (with it), and
# those of them that have a row.
_PROFILES, _MEMBERS = "__engage_idinc_profiles", "__engage_idinc_members"
_TRAITS_KEPT = "__engage_idinc_traits_kept"
# The engine's row id of a row read from a table the run rewrites (`Replacement.row_ids`).
_ROW = "__engage_row"


def stage_increment(
    warehouse: Warehouse,
    source_schema: str,
    output_schema: str,
    traits: list[tuple[str, exp.DataType]],
    watermarks: dict[str, datetime | None],
) -> list[Replacement]:
    """The new rows of an incremental run, in scratch tables, with the next `watermarks` (`Scratch.MARKS`;
    the last run's per updates table, None where it was empty). Raises DataError, before anything is
    written, when the new merges form a loop."""
    _stage_landed(warehouse, source_schema, output_schema, watermarks)
    _stage_slice(warehouse, output_schema)
    _stage_graph(warehouse, source_schema)
    canonicals = Canonicals(exp.table_(_SLICE), moved=_MOVED)
    _stage_external(warehouse, output_schema, canonicals)
    _stage_traits(warehouse, source_schema, output_schema, traits, canonicals)
    return [
        Replacement(ID_GRAPH, columns_of(ID_GRAPH_COLUMNS), _MOVED, ("segment_id", _MOVED)),
        Replacement(
            LATEST_IDS,
            columns_of(KEPT_ID_COLUMNS),
            _MOVED,
            ("segment_id", _MOVED),
            _row_ids(warehouse, _MOVED),
        ),
        Replacement(
            OBSERVATIONS,
            columns_of(OBSERVATION_COLUMNS),
            Scratch.OBSERVED,
            ("external_id_hash", Scratch.OBSERVED),
            _row_ids(warehouse, _KEPT_OBSERVED, ("external_id_hash", Scratch.OBSERVED)),
        ),
        Replacement(
            EXTERNAL_IDS,
            columns_of(EXTERNAL_COLUMNS),
            Scratch.EXTERNAL,
            ("external_id_hash", Scratch.EXTERNAL),
            _row_ids(warehouse, _MAPPED, ("external_id_hash", Scratch.EXTERNAL)),
        ),
        Replacement(
            PROFILE_TRAITS,
            [c for c, _ in profile_traits_columns(traits)],
            Scratch.TRAITS,
            ("canonical_segment_id", _PROFILES),
            _row_ids(warehouse, _TRAITS_KEPT),
        ),
    ]


def _stage_landed(
    warehouse: Warehouse, source_schema: str, output_schema: str, watermarks: dict[str, datetime | None]
) -> None:
    """Snapshots the rows landed since the `watermarks`, and the next watermarks from them."""
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
        warehouse.create_temp_table(scratch, _since(warehouse, watermarks[table], rows))
    kept = exp.table_(WATERMARKS, db=output_schema)
    next_marks = []
    for table, (scratch, _) in landed.items():
        before = (
            exp.select("uuid_ts", exp.alias_(exp.Literal.number(0), "read"))
            .from_(kept.copy())
            .where(_watermark_of(source_schema, table))
        )
        read = exp.select("uuid_ts", exp.alias_(exp.Literal.number(1), "read")).from_(scratch)
        next_marks.append(marks(source_schema, table, union_all([before, read])))
    warehouse.create_temp_table(Scratch.MARKS, union_all(next_marks))


def _watermark_of(source_schema: str, table: str) -> exp.Expr:
    return exp.and_(
        exp.column("source_schema").eq(exp.Literal.string(source_schema)),
        exp.column("source_table").eq(exp.Literal.string(table)),
    )


def _row_id(warehouse: Warehouse) -> list[exp.Expr]:
    """The engine's row id of the rows a query reads, as `_ROW` (nothing on an engine without)."""
    row_id = warehouse.capabilities.row_id
    return [] if row_id is None else [exp.alias_(exp.column(row_id), _ROW)]


def _row_ids(warehouse: Warehouse, scratch: str, keys: tuple[str, str] | None = None) -> exp.Query | None:
    """The row ids kept in `scratch` (of those whose key is among `keys`: the key column, and a scratch
    table with a column of that name), or None on an engine without row ids."""
    if warehouse.capabilities.row_id is None:
        return None
    rows = exp.select(_ROW).from_(scratch)
    if keys is None:
        return rows
    key, table = keys
    return rows.where(exp.column(key).isin(query=exp.select(key).from_(table)))


def _since(warehouse: Warehouse, since: datetime | None, rows: exp.Select) -> exp.Select:
    """`rows` (of an updates table, aliased u) that landed after its watermark `since` less LOOKBACK (all of
    them when the table was empty at the last run). The bound is a literal: the engine can then skip the
    blocks of older rows by their min/max statistics instead of reading the whole table."""
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
    fresh = exp.select(*map(exp.column, columns), exp.alias_(exp.Literal.number(0), flag)).from_(
        exp.table_(landed)
    )
    again = (
        exp.select(*map(exp.column, columns), exp.alias_(exp.Literal.number(1), flag))
        .from_(kept.copy())
        .where(exp.column(key).isin(query=exp.select(exp.column(key)).from_(exp.table_(landed))))
    )
    latest = newest(union_all([fresh, again]), key, [*order, flag])
    return (
        exp.select(*(exp.column(c, "n") for c in columns))
        .from_(latest.subquery("n"))
        .where(exp.column(flag, "n").eq(0))
    )


def _stage_slice(warehouse: Warehouse, output_schema: str) -> None:
    """`_SLICE`: the kept rows (`_engage_id_latest`: an id's latest row and canonical) of every id whose
    canonical is that of an id with landed rows (of the three tables), of an id a landed merge points at, or
    one of those ids. Two reads of the kept rows (the canonicals of those ids, then the rows on them),
    instead of one wherever a kept row or a canonical is read.

    Every stored canonical the run reads is of an id whose row is in the slice when it has one (an id
    without is its own canonical, as in id_graph): the ids resolved again (changed, or on the chain of one,
    sharing its canonical) and where their merges point, the segment_ids of the observations and trait rows
    landed, and every id whose canonical is a profile whose traits are rewritten. Each of these is, or has
    as stored canonical, one of the canonicals the slice is taken by."""
    looked_up = union_all(
        [
            exp.select("segment_id").from_(_SEEN),
            exp.select(exp.alias_("points_at", "segment_id")).from_(_SEEN),
            exp.select("segment_id").from_(_OBSERVATIONS),
            exp.select("segment_id").from_(_TRAITED),
        ]
    )
    kept = exp.table_(LATEST_IDS, db=output_schema)
    # The ids themselves too: one without a row can be the end of others' chains.
    canonicals = union_all(
        [
            exp.select("canonical_segment_id")
            .from_(kept.copy())
            .where(exp.column("segment_id").isin(query=looked_up.copy())),
            looked_up,
        ]
    )
    # The canonicals in a table of their own: the engine then knows how few they are and looks them up
    # by a hash of them, instead of planning the read of the kept rows around an unknown subquery.
    warehouse.create_temp_table(
        _SLICED, exp.select(exp.column("canonical_segment_id")).from_(canonicals.subquery("c")).distinct()
    )
    rows = (
        exp.select(*columns_of(KEPT_ID_COLUMNS), *_row_id(warehouse))
        .from_(kept)
        .where(
            exp.column("canonical_segment_id").isin(query=exp.select("canonical_segment_id").from_(_SLICED))
        )
    )
    warehouse.create_temp_table(_SLICE, rows)


def _stage_graph(warehouse: Warehouse, source_schema: str) -> None:
    """`_CHANGED`, then the ids to resolve with their latest rows (`Scratch.LATEST`), their chains followed
    (`Scratch.GRAPH`), and `_MOVED`. The kept rows are the slice's, which holds those of the ids with
    landed rows and of every id to resolve."""
    columns = columns_of(LATEST_COLUMNS)
    warehouse.create_temp_table(
        _CHANGED, _changed(_SEEN, exp.table_(_SLICE), "segment_id", ID_ORDER, columns)
    )
    their_canonicals = (
        exp.select(
            exp.func("COALESCE", exp.column("canonical_segment_id", "s"), exp.column("segment_id", "c"))
        )
        .from_(exp.table_(_CHANGED, alias="c"))
        .join(
            exp.table_(_SLICE, alias="s"),
            on=exp.column("segment_id", "s").eq(exp.column("segment_id", "c")),
            join_type="left",
        )
    )
    unchanged = exp.and_(
        exp.column("canonical_segment_id").isin(query=their_canonicals),
        exp.not_(exp.column("segment_id").isin(query=exp.select("segment_id").from_(_CHANGED))),
    )
    latest = union_all(
        [
            exp.select(*map(exp.column, columns)).from_(exp.table_(_CHANGED)),
            exp.select(*map(exp.column, columns)).from_(exp.table_(_SLICE)).where(unchanged),
        ]
    )
    warehouse.create_temp_table(Scratch.LATEST, latest)
    follow_merges(warehouse, source_schema, _start())
    warehouse.create_temp_table(_MOVED, _moved(warehouse))


def _start() -> exp.Select:
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
            exp.table_(_SLICE, alias="g"),
            on=exp.column("segment_id", "g").eq(points_at.copy()),
            join_type="left",
        )
    )


def _moved(warehouse: Warehouse) -> exp.Select:
    """The resolved ids whose id_graph row changes (a new latest row, or another canonical), with their
    latest row, the canonical before and after (an id without a row was its own canonical) and the row id
    of the kept row."""
    segment = exp.column("segment_id", "n")
    before = exp.func("COALESCE", exp.column("canonical_segment_id", "o"), segment.copy())
    after = exp.func("COALESCE", exp.column("canonical_segment_id", "n"), segment.copy())
    return (
        exp.select(
            *(exp.column(c, "n") for c in columns_of(KEPT_ID_COLUMNS)),
            exp.alias_(before, "canonical_before"),
            exp.alias_(after, "canonical_after"),
            *([exp.column(_ROW, "o")] if warehouse.capabilities.row_id else []),
        )
        .from_(exp.table_(Scratch.GRAPH, alias="n"))
        .join(
            exp.table_(_SLICE, alias="o"),
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
    """The external ids' new latest observations (`Scratch.OBSERVED`), and the rows rewritten
    (`Scratch.EXTERNAL`, whose external ids are the keys replaced): those of the new observations, and of
    the kept ones whose segment_id moved to another canonical.

    The external ids to read are found in external_id_mapping's key columns (`_MAPPED`): those observed
    again, and those on the profile a moved id left (an external id observed last on that id is one of
    them, as external_id_mapping agreed with id_graph). A new external id has no row to read. Then the
    kept observations of those are read whole, once."""
    kept = exp.table_(OBSERVATIONS, db=output_schema)
    columns = columns_of(OBSERVATION_COLUMNS)
    moved_away = exp.select("segment_id").from_(_MOVED).where(_moved_away())
    left = exp.select("canonical_before").from_(_MOVED).where(_moved_away())
    mapped = (
        exp.select(*_row_id(warehouse), "external_id_hash")
        .from_(exp.table_(EXTERNAL_IDS, db=output_schema))
        .where(
            exp.or_(
                exp.column("external_id_hash").isin(
                    query=exp.select("external_id_hash").from_(_OBSERVATIONS)
                ),
                exp.column("canonical_segment_id").isin(query=left),
            )
        )
    )
    warehouse.create_temp_table(_MAPPED, mapped)
    warehouse.create_temp_table(
        _KEPT_OBSERVED,
        exp.select(*map(exp.column, columns), *_row_id(warehouse))
        .from_(kept)
        .where(exp.column("external_id_hash").isin(query=exp.select("external_id_hash").from_(_MAPPED))),
    )
    observed = _changed(
        _OBSERVATIONS, exp.table_(_KEPT_OBSERVED), "external_id_hash", OBSERVATION_ORDER, columns
    )
    warehouse.create_temp_table(Scratch.OBSERVED, observed)
    still_latest = exp.and_(
        exp.column("segment_id").isin(query=moved_away),
        exp.not_(
            exp.column("external_id_hash").isin(query=exp.select("external_id_hash").from_(Scratch.OBSERVED))
        ),
    )
    observations = union_all(
        [
            exp.select(*map(exp.column, columns)).from_(exp.table_(Scratch.OBSERVED)),
            exp.select(*map(exp.column, columns)).from_(exp.table_(_KEPT_OBSERVED)).where(still_latest),
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
    """The segment_ids whose profile_traits row is rewritten (`_PROFILES`), and the rows (`Scratch.TRAITS`),
    a live profile's traits from the trait rows of its members only."""
    warehouse.create_temp_table(_PROFILES, _rewritten(canonicals))
    warehouse.create_temp_table(_MEMBERS, _members(canonicals))  # in a table of its own (`_stage_slice`)
    updates = (
        exp.select()
        .from_(exp.table_(TRAIT_UPDATES, db=source_schema, alias="u"))
        .join(
            exp.table_(_MEMBERS, alias="s"),
            on=exp.column("segment_id", "s").eq(exp.column("segment_id", "u")),
        )
    )
    values = trait_values(warehouse, traits, updates, exp.column("canonical_segment_id", "s"))
    # Rows never leave the updates tables: a segment_id has a row now if it had one (profile_traits holds
    # every id of id_graph), is new in id_graph (then it moved), or has new trait rows. Of profile_traits,
    # only the rewritten ids are looked up, so that the lookup is built on them.
    rewritten = exp.select("canonical_segment_id").from_(_PROFILES)
    warehouse.create_temp_table(
        _TRAITS_KEPT,
        exp.select(*_row_id(warehouse), "canonical_segment_id")
        .from_(exp.table_(PROFILE_TRAITS, db=output_schema))
        .where(exp.column("canonical_segment_id").isin(query=rewritten)),
    )
    existing = union_all(
        [
            exp.select("segment_id").from_(_MOVED),
            exp.select("segment_id").from_(_TRAITED),
            exp.select("canonical_segment_id").from_(_TRAITS_KEPT),
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


def _members(canonicals: Canonicals) -> exp.Select:
    """The ids whose canonical is in `_PROFILES`, with it. Such an id moved, or kept its stored canonical
    (the slice holds every id whose stored canonical is rewritten), or is that canonical."""

    def rewritten(segment: exp.Expr) -> exp.Expr:
        return segment.isin(query=exp.select("canonical_segment_id").from_(_PROFILES))

    candidates = exp.union(
        exp.select("segment_id").from_(_MOVED),
        exp.select("segment_id").from_(_SLICE).where(rewritten(exp.column("canonical_segment_id"))),
        exp.select(exp.alias_("canonical_segment_id", "segment_id")).from_(_PROFILES),
        distinct=True,
    )
    member = exp.column("segment_id", "i")
    members = exp.select(member, exp.alias_(canonicals.of(member), "canonical_segment_id")).from_(
        candidates.subquery("i")
    )
    return canonicals.join(members, member).where(rewritten(canonicals.of(member)))
