"""Profiles Sync's id_graph built in the warehouse (SPEC §6): the seed's case study, and merge chains that
land without their recursive entries, out of order, twice, or with a backfilled creation row; each of these
landed in two batches, materialized incrementally, ends in the tables a full refresh gives."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlglot import exp

from engage.errors import DataError
from engage.identity_graph import (
    PROFILE_TRAITS,
    IdentityCounts,
    build_external_ids,
    build_id_graph,
    build_profile_traits,
    materialize,
)
from engage.warehouse.duckdb import DuckDBWarehouse

# (id, segment_id, canonical_segment_id, timestamp, seq, uuid_ts)
Row = tuple[str, str, str, str | None, int | None, str]
# (id, segment_id, external_id_type, external_id_value, timestamp, seq, uuid_ts)
Observation = tuple[str, str, str, str, str, int | None, str]
# (id, segment_id, email, plan, seq, uuid_ts)
TraitRow = tuple[str, str, str | None, str | None, int | None, str]


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    connection = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def _land(con: duckdb.DuckDBPyConnection, rows: Sequence[Row], *, append: bool = False) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS profiles")
    if not append:
        con.execute(
            "CREATE OR REPLACE TABLE profiles.id_graph_updates (id VARCHAR, segment_id VARCHAR,"
            " canonical_segment_id VARCHAR, triggering_event_type VARCHAR, triggering_event_id VARCHAR,"
            " timestamp TIMESTAMP, seq BIGINT, received_at TIMESTAMP, uuid_ts TIMESTAMP)"
        )
    for id_, segment, canonical, moment, seq, landed in rows:
        con.execute(
            "INSERT INTO profiles.id_graph_updates VALUES (?, ?, ?, 'page', ?, ?, ?, ?, ?)",
            [id_, segment, canonical, f"event_{id_}", moment, seq, landed, landed],
        )


def _graph(warehouse: DuckDBWarehouse) -> list[tuple[Any, ...]]:
    return warehouse.connection.execute(
        "SELECT segment_id, canonical_segment_id, timestamp, seq FROM profiles_out.id_graph ORDER BY 1"
    ).fetchall()


def _canonicals(warehouse: DuckDBWarehouse) -> dict[str, str]:
    return {segment: canonical for segment, canonical, *_ in _graph(warehouse)}


def test_the_seed_case_study_merges_profile_2_into_profile_1(warehouse: DuckDBWarehouse) -> None:
    _land(
        warehouse.connection,
        [
            ("r1", "profile_1", "profile_1", "2022-05-02 14:01:00", 1, "2022-05-02 15:00:00"),
            ("r2", "profile_2", "profile_2", "2022-06-22 10:47:15", 2, "2022-06-22 11:00:00"),
            ("r3", "profile_2", "profile_1", "2022-06-22 10:48:00", 3, "2022-06-22 11:00:00"),
        ],
    )
    counts = build_id_graph(warehouse, "profiles", "profiles_out")
    assert _graph(warehouse) == [
        ("profile_1", "profile_1", datetime(2022, 5, 2, 14, 1), 1),
        ("profile_2", "profile_1", datetime(2022, 6, 22, 10, 48), 3),
    ]
    assert (counts.segment_ids, counts.merged, counts.depth) == (2, 1, 1)


# A chain of depth 4 with only the direct merges (p4 → p3 → p2 → p1), each id also created by a row of
# its own; landed in the order given.
CHAIN: list[Row] = [
    ("c1", "p1", "p1", "2024-01-01 00:00:00", 1, "2024-01-01 01:00:00"),
    ("c2", "p2", "p2", "2024-01-02 00:00:00", 2, "2024-01-02 01:00:00"),
    ("c3", "p3", "p3", "2024-01-03 00:00:00", 3, "2024-01-03 01:00:00"),
    ("c4", "p4", "p4", "2024-01-04 00:00:00", 4, "2024-01-04 01:00:00"),
    ("m2", "p2", "p1", "2024-02-02 00:00:00", 12, "2024-02-02 01:00:00"),
    ("m3", "p3", "p2", "2024-02-03 00:00:00", 13, "2024-02-03 01:00:00"),
    ("m4", "p4", "p3", "2024-02-04 00:00:00", 14, "2024-02-04 01:00:00"),
]
ALL_IN_P1 = {"p1": "p1", "p2": "p1", "p3": "p1", "p4": "p1"}


@pytest.mark.parametrize(
    "rows",
    [
        CHAIN,
        list(reversed(CHAIN)),  # merges land in reverse order
        [(i, s, c, t, q, "2024-03-09 00:00:00") for i, s, c, t, q, _ in CHAIN[::-1]],  # a merge lands late
        CHAIN + CHAIN[4:],  # the same rows land twice
        # a backfilled creation row of p2, with null seq and timestamp, landing after its merge
        [*CHAIN, ("b2", "p2", "p2", None, None, "2024-03-01 00:00:00")],
    ],
    ids=["chain_without_recursive_entries", "reverse_order", "late_landing", "duplicates", "backfill"],
)
def test_merge_chains_end_at_the_same_canonical_however_they_land(
    warehouse: DuckDBWarehouse, rows: list[Row]
) -> None:
    _land(warehouse.connection, rows)
    counts = build_id_graph(warehouse, "profiles", "profiles_out")
    assert _canonicals(warehouse) == ALL_IN_P1
    assert (counts.segment_ids, counts.merged, counts.depth) == (4, 3, 3)
    assert counts.passes <= 3, "pointer jumping: log2 of the depth, plus the pass that sees no change"


def test_a_later_merge_of_the_canonical_moves_every_id_merged_into_it(warehouse: DuckDBWarehouse) -> None:
    """p1 itself merges into p0 after the chain: every id follows, without recursive entries."""
    _land(
        warehouse.connection, [*CHAIN, ("m1", "p1", "p0", "2024-04-01 00:00:00", 20, "2024-04-01 01:00:00")]
    )
    build_id_graph(warehouse, "profiles", "profiles_out")
    assert _canonicals(warehouse) == {"p1": "p0", "p2": "p0", "p3": "p0", "p4": "p0"}


def test_merges_that_form_a_loop_are_reported(warehouse: DuckDBWarehouse) -> None:
    _land(
        warehouse.connection,
        [
            ("x", "a", "b", "2024-01-01 00:00:00", 1, "2024-01-01 01:00:00"),
            ("y", "b", "a", "2024-01-02 00:00:00", 2, "2024-01-02 01:00:00"),
        ],
    )
    with pytest.raises(DataError, match="loop"):
        build_id_graph(warehouse, "profiles", "profiles_out")
    assert warehouse.connection.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'profiles_out'"
    ).fetchone() == (0,), "nothing written"


def _land_identities(
    con: duckdb.DuckDBPyConnection,
    external: Sequence[Observation],
    traits: Sequence[TraitRow],
    *,
    append: bool = False,
) -> None:
    """Observations of external ids, and trait rows at their uuid_ts."""
    if not append:
        con.execute(
            "CREATE OR REPLACE TABLE profiles.external_id_mapping_updates (id VARCHAR, segment_id VARCHAR,"
            " external_id_type VARCHAR, external_id_value VARCHAR, external_id_hash VARCHAR, timestamp TIMESTAMP,"
            " seq BIGINT, received_at TIMESTAMP, uuid_ts TIMESTAMP)"
        )
        con.execute(
            "CREATE OR REPLACE TABLE profiles.profile_traits_updates (id VARCHAR, segment_id VARCHAR,"
            " email VARCHAR, plan VARCHAR, timestamp TIMESTAMP, seq BIGINT, received_at TIMESTAMP, uuid_ts TIMESTAMP)"
        )
    for id_, segment, kind, value, moment, seq, landed in external:
        con.execute(
            "INSERT INTO profiles.external_id_mapping_updates VALUES (?, ?, ?, ?, md5(? || ':' || ?), ?, ?, ?, ?)",
            [id_, segment, kind, value, kind, value, moment, seq, landed, landed],
        )
    for id_, segment, email, plan, seq, landed in traits:
        con.execute(
            "INSERT INTO profiles.profile_traits_updates VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [id_, segment, email, plan, landed, seq, landed, landed],
        )


SEED_GRAPH: list[Row] = [
    ("r1", "profile_1", "profile_1", "2022-05-02 14:01:00", 1, "2022-05-02 15:00:00"),
    ("r2", "profile_2", "profile_2", "2022-06-22 10:47:15", 2, "2022-06-22 11:00:00"),
    ("r3", "profile_2", "profile_1", "2022-06-22 10:48:00", 3, "2022-06-22 11:00:00"),
]
SEED_EXTERNAL: list[Observation] = [
    (
        "e1",
        "profile_1",
        "anonymous_id",
        "5285bc35-05ef-4d21",
        "2022-05-02 14:01:00",
        1,
        "2022-05-02 15:00:00",
    ),
    ("e2", "profile_1", "email", "jane@example.com", "2022-05-02 14:01:47", 2, "2022-05-02 15:00:00"),
    (
        "e3",
        "profile_2",
        "anonymous_id",
        "b50e18a5-1b8d-451c",
        "2022-06-22 10:48:00",
        3,
        "2022-06-22 11:00:00",
    ),
]


def _build_all(warehouse: DuckDBWarehouse) -> None:
    build_id_graph(warehouse, "profiles", "profiles_out")
    build_external_ids(warehouse, "profiles", "profiles_out")
    build_profile_traits(warehouse, "profiles", "profiles_out")


def test_the_seed_case_study_maps_both_anonymous_ids_and_the_email_to_profile_1(
    warehouse: DuckDBWarehouse,
) -> None:
    _land(warehouse.connection, SEED_GRAPH)
    _land_identities(
        warehouse.connection,
        SEED_EXTERNAL,
        [
            ("t1", "profile_1", "jane@example.com", None, 1, "2022-05-02 15:00:00"),
            ("t2", "profile_2", None, "pro", 3, "2022-06-22 11:00:00"),
        ],
    )
    _build_all(warehouse)
    mapping = warehouse.connection.execute(
        "SELECT external_id_type, external_id_value, canonical_segment_id FROM profiles_out.external_id_mapping"
        " ORDER BY 1, 2"
    ).fetchall()
    assert mapping == [
        ("anonymous_id", "5285bc35-05ef-4d21", "profile_1"),
        ("anonymous_id", "b50e18a5-1b8d-451c", "profile_1"),
        ("email", "jane@example.com", "profile_1"),
    ]
    traits = warehouse.connection.execute(
        "SELECT canonical_segment_id, email, plan, merged_to FROM profiles_out.profile_traits ORDER BY 1"
    ).fetchall()
    assert traits == [
        ("profile_1", "jane@example.com", "pro", None),  # the plan came on profile_2, merged in
        ("profile_2", None, None, "profile_1"),
    ]


def test_an_external_id_seen_again_on_another_profile_maps_to_its_latest_observation(
    warehouse: DuckDBWarehouse,
) -> None:
    _land(
        warehouse.connection,
        [*SEED_GRAPH, ("r4", "profile_3", "profile_3", "2022-07-01 00:00:00", 4, "2022-07-01 01:00:00")],
    )
    again = ("e4", "profile_3", "email", "jane@example.com", "2022-07-01 00:00:00", 4, "2022-07-01 01:00:00")
    _land_identities(warehouse.connection, [again, *SEED_EXTERNAL], [])  # landed first, observed last
    _build_all(warehouse)
    assert warehouse.connection.execute(
        "SELECT canonical_segment_id FROM profiles_out.external_id_mapping WHERE external_id_type = 'email'"
    ).fetchall() == [("profile_3",)]


def test_a_trait_keeps_its_latest_non_null_value_over_every_merged_id(warehouse: DuckDBWarehouse) -> None:
    """Null seq sorts first: a backfilled row without seq never overrides a sequenced one."""
    _land(warehouse.connection, CHAIN)
    _land_identities(
        warehouse.connection,
        [],
        [
            ("a", "p4", None, "free", 5, "2024-01-05 00:00:00"),
            ("b", "p2", None, "pro", 6, "2024-01-06 00:00:00"),
            ("c", "p3", "x@example.com", None, 7, "2024-01-07 00:00:00"),
            ("d", "p1", None, "enterprise", None, "2024-03-01 00:00:00"),  # backfilled, landed last
            ("e", "p4", None, None, 8, "2024-01-08 00:00:00"),  # nulls never erase a value
        ],
    )
    _build_all(warehouse)
    rows = warehouse.connection.execute(
        "SELECT canonical_segment_id, email, plan, merged_to FROM profiles_out.profile_traits ORDER BY 1"
    ).fetchall()
    assert rows == [
        ("p1", "x@example.com", "pro", None),
        ("p2", None, None, "p1"),
        ("p3", None, None, "p1"),
        ("p4", None, None, "p1"),
    ]


# -- incremental runs --------------------------------------------------------------------------------------
# The second batch lands a day after the first. An incremental run reads again the rows landed within the
# lookback before the watermark (here, the whole first batch, landed at the watermark): without it, it
# starts from what the first run kept.
FIRST_LANDING = datetime(2024, 6, 1)
LOOKBACKS = {"first_batch_read_again": timedelta(hours=1), "no_lookback": timedelta(0)}
OUTPUTS = (
    "id_graph",
    "external_id_mapping",
    "profile_traits",
    "_engage_id_latest",
    "_engage_external_latest",
)


@dataclass(frozen=True)
class Batch:
    """Rows landing together; each row's uuid_ts becomes the batch's landing time."""

    graph: Sequence[Row] = ()
    external: Sequence[Observation] = ()
    traits: Sequence[TraitRow] = ()

    def land(self, con: duckdb.DuckDBPyConnection, at: datetime) -> None:
        landed = str(at)
        _land(con, [(*r[:-1], landed) for r in self.graph], append=True)
        _land_identities(
            con,
            [(*r[:-1], landed) for r in self.external],
            [(*r[:-1], landed) for r in self.traits],
            append=True,
        )


@dataclass(frozen=True)
class Case:
    first: Batch
    second: Batch
    canonicals: dict[str, str]
    traits: list[tuple[str, str | None, str | None, str | None]]  # (segment_id, email, plan, merged_to)
    mapping: list[tuple[str, str, str]] = field(default_factory=list)  # (type, value, canonical)


CHAIN_TRAITS: list[TraitRow] = [
    ("a", "p4", None, "free", 5, ""),
    ("b", "p2", None, "pro", 6, ""),
    ("c", "p3", "x@example.com", None, 7, ""),
    ("d", "p1", None, "enterprise", None, ""),  # backfilled: never overrides a sequenced value
    ("e", "p4", None, None, 8, ""),  # nulls never erase a value
]
CHAIN_EXTERNAL: list[Observation] = [
    ("x4", "p4", "anonymous_id", "anon-4", "2024-01-04 00:00:00", 4, ""),
    ("x3", "p3", "email", "x@example.com", "2024-01-03 00:00:00", 3, ""),
    ("x2", "p2", "anonymous_id", "anon-2", "2024-01-02 00:00:00", 2, ""),
]
CHAIN_MAPPING = [
    ("anonymous_id", "anon-2", "p1"),
    ("anonymous_id", "anon-4", "p1"),
    ("email", "x@example.com", "p1"),
]
IN_P1 = [
    ("p1", "x@example.com", "pro", None),
    ("p2", None, None, "p1"),
    ("p3", None, None, "p1"),
    ("p4", None, None, "p1"),
]
M1 = ("m1", "p1", "p0", "2024-04-01 00:00:00", 20, "")


def _chain_case(first: Sequence[Row], second: Sequence[Row]) -> Case:
    """The chain's merges in two batches, its trait rows and observations split between them."""
    return Case(
        Batch(first, CHAIN_EXTERNAL[:2], CHAIN_TRAITS[:3]),
        Batch(second, CHAIN_EXTERNAL[2:], CHAIN_TRAITS[3:]),
        ALL_IN_P1,
        IN_P1,
        CHAIN_MAPPING,
    )


AGAIN: Observation = ("e4", "profile_3", "email", "jane@example.com", "2022-07-01 00:00:00", 4, "")
R4: Row = ("r4", "profile_3", "profile_3", "2022-07-01 00:00:00", 4, "")
SEED_TRAITS: list[TraitRow] = [
    ("t1", "profile_1", "jane@example.com", None, 1, ""),
    ("t2", "profile_2", None, "pro", 3, ""),
]
JANE_ON_PROFILE_3 = Case(
    Batch([*SEED_GRAPH, R4], SEED_EXTERNAL),
    Batch(external=[AGAIN]),
    {"profile_1": "profile_1", "profile_2": "profile_1", "profile_3": "profile_3"},
    [
        ("profile_1", None, None, None),
        ("profile_2", None, None, "profile_1"),
        ("profile_3", None, None, None),
    ],
    [
        ("anonymous_id", "5285bc35-05ef-4d21", "profile_1"),
        ("anonymous_id", "b50e18a5-1b8d-451c", "profile_1"),
        ("email", "jane@example.com", "profile_3"),
    ],
)
CASES = {
    "chain_without_recursive_entries": _chain_case(CHAIN[:5], CHAIN[5:]),
    "reverse_order": _chain_case(CHAIN[:3:-1], CHAIN[3::-1]),  # the merges land first, the creations after
    "late_landing": _chain_case([*CHAIN[:5], CHAIN[6]], [CHAIN[5]]),  # p3 → p2, of February, lands in June
    "duplicates": _chain_case(CHAIN, CHAIN[4:]),  # the second batch lands the merges again
    "backfill": _chain_case(CHAIN, [("b2", "p2", "p2", None, None, "")]),  # p2's creation, without seq
    # p1 merges away: every id merged into it in the first batch follows, with its traits and external ids
    "canonical_merges_away": Case(
        Batch([("c0", "p0", "p0", "2024-01-01 00:00:00", 1, ""), *CHAIN], CHAIN_EXTERNAL, CHAIN_TRAITS),
        Batch([M1]),
        {"p0": "p0", "p1": "p0", "p2": "p0", "p3": "p0", "p4": "p0"},
        [("p0", "x@example.com", "pro", None), *((p, None, None, "p0") for p in ("p1", "p2", "p3", "p4"))],
        [(kind, value, "p0") for kind, value, _ in CHAIN_MAPPING],
    ),
    # a later merge of p2 into p0: p1 stays live, without p2's plan
    "merge_redirected_to_another_profile": Case(
        Batch(
            [*(("c" + p[1], p, p, "2024-01-01 00:00:00", 1, "") for p in ("p0", "p1", "p2")), CHAIN[4]],
            CHAIN_EXTERNAL[2:],
            [("b", "p2", None, "pro", 6, ""), ("f", "p1", "one@example.com", None, 3, "")],
        ),
        Batch([("n2", "p2", "p0", "2024-03-01 00:00:00", 15, "")]),
        {"p0": "p0", "p1": "p1", "p2": "p0"},
        [("p0", None, "pro", None), ("p1", "one@example.com", None, None), ("p2", None, None, "p0")],
        [("anonymous_id", "anon-2", "p0")],
    ),
    # p1 has no row of its own, only p2's merge into it; its first trait row, later, joins p2's plan
    "profile_known_only_as_a_merge_target_gains_traits": Case(
        Batch([CHAIN[1], CHAIN[4]], CHAIN_EXTERNAL[2:], [("b", "p2", None, "pro", 6, "")]),
        Batch(traits=[("f", "p1", "one@example.com", None, 7, "")]),
        {"p2": "p1"},
        [("p1", "one@example.com", "pro", None), ("p2", None, None, "p1")],
        [("anonymous_id", "anon-2", "p1")],
    ),
    "external_id_seen_again_on_another_profile": JANE_ON_PROFILE_3,
    # observed on profile_3 last, but landed first
    "external_id_landing_before_older_observations": Case(
        Batch([*SEED_GRAPH, R4], [AGAIN]),
        Batch(external=SEED_EXTERNAL),
        JANE_ON_PROFILE_3.canonicals,
        JANE_ON_PROFILE_3.traits,
        JANE_ON_PROFILE_3.mapping,
    ),
    # profile_2 merges into profile_1 in the second batch: its plan and anonymous id follow
    "seed_case_study": Case(
        Batch(SEED_GRAPH[:2], SEED_EXTERNAL, SEED_TRAITS),
        Batch(SEED_GRAPH[2:]),
        {"profile_1": "profile_1", "profile_2": "profile_1"},
        [("profile_1", "jane@example.com", "pro", None), ("profile_2", None, None, "profile_1")],
        [
            ("anonymous_id", "5285bc35-05ef-4d21", "profile_1"),
            ("anonymous_id", "b50e18a5-1b8d-451c", "profile_1"),
            ("email", "jane@example.com", "profile_1"),
        ],
    ),
}


def _empty_updates(con: duckdb.DuckDBPyConnection) -> None:
    _land(con, [])
    _land_identities(con, [], [])


def _tables(warehouse: DuckDBWarehouse, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        t: warehouse.connection.execute(f"SELECT * FROM {schema}.{t} ORDER BY ALL").fetchall()
        for t in OUTPUTS
    }


def _summary(counts: IdentityCounts) -> tuple[int, int, int, int, int]:
    return (counts.profiles, counts.segment_ids, counts.merged, counts.depth, counts.external_ids)


def _assert_as_full_refresh(warehouse: DuckDBWarehouse, counts: IdentityCounts) -> None:
    """The output tables (and what engage keeps for the next run) equal a full refresh's, as do the counts."""
    full = materialize(warehouse, "profiles", "profiles_full", full_refresh=True)
    assert full.full
    assert _tables(warehouse, "profiles_out") == _tables(warehouse, "profiles_full")
    assert _summary(counts) == _summary(full)


def _traits(warehouse: DuckDBWarehouse) -> list[tuple[Any, ...]]:
    return warehouse.connection.execute(
        "SELECT canonical_segment_id, email, plan, merged_to FROM profiles_out.profile_traits ORDER BY 1"
    ).fetchall()


def _mapping(warehouse: DuckDBWarehouse) -> list[tuple[Any, ...]]:
    return warehouse.connection.execute(
        "SELECT external_id_type, external_id_value, canonical_segment_id FROM profiles_out.external_id_mapping"
        " ORDER BY 1, 2"
    ).fetchall()


@pytest.mark.parametrize("lookback", LOOKBACKS.values(), ids=LOOKBACKS.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_an_incremental_run_ends_in_the_tables_a_full_refresh_gives(
    warehouse: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch, case: Case, lookback: timedelta
) -> None:
    monkeypatch.setattr("engage.identity_increment.LOOKBACK", lookback)
    con = warehouse.connection
    _empty_updates(con)
    case.first.land(con, FIRST_LANDING)
    assert materialize(warehouse, "profiles", "profiles_out").full
    case.second.land(con, FIRST_LANDING + timedelta(days=1))
    counts = materialize(warehouse, "profiles", "profiles_out")
    assert not counts.full
    second = len(case.second.graph) + len(case.second.external) + len(case.second.traits)
    first = len(case.first.graph) + len(case.first.external) + len(case.first.traits)
    assert counts.new_rows == second + (first if lookback else 0)
    _assert_as_full_refresh(warehouse, counts)
    assert _canonicals(warehouse) == case.canonicals
    assert _traits(warehouse) == case.traits
    assert _mapping(warehouse) == case.mapping


def test_an_incremental_run_without_new_rows_changes_nothing(warehouse: DuckDBWarehouse) -> None:
    con = warehouse.connection
    _empty_updates(con)
    CASES["canonical_merges_away"].first.land(con, FIRST_LANDING)
    CASES["canonical_merges_away"].second.land(con, FIRST_LANDING + timedelta(days=1))
    materialize(warehouse, "profiles", "profiles_out")
    before = _tables(warehouse, "profiles_out")
    watermarks = con.execute("SELECT * FROM profiles_out._engage_identity ORDER BY ALL").fetchall()
    counts = materialize(warehouse, "profiles", "profiles_out")
    # Read again: what landed within the lookback of each table's watermark, the second batch's merge and
    # the first's observations and trait rows.
    assert (counts.full, counts.new_rows) == (False, 1 + 3 + 5)
    assert _tables(warehouse, "profiles_out") == before
    assert con.execute("SELECT * FROM profiles_out._engage_identity ORDER BY ALL").fetchall() == watermarks
    assert _summary(counts) == (1, 5, 4, 4, 3)


def test_a_load_committing_late_within_the_lookback_is_read(warehouse: DuckDBWarehouse) -> None:
    """A slow load's rows carry a uuid_ts older than the last run's watermark."""
    con = warehouse.connection
    _empty_updates(con)
    Batch(CHAIN[:5]).land(con, FIRST_LANDING)
    materialize(warehouse, "profiles", "profiles_out")
    Batch(CHAIN[5:]).land(con, FIRST_LANDING - timedelta(minutes=10))
    counts = materialize(warehouse, "profiles", "profiles_out")
    assert _canonicals(warehouse) == ALL_IN_P1
    _assert_as_full_refresh(warehouse, counts)


def test_a_loop_landing_in_a_later_batch_is_reported_and_changes_nothing(warehouse: DuckDBWarehouse) -> None:
    con = warehouse.connection
    _empty_updates(con)
    Batch([("x", "a", "b", "2024-01-01 00:00:00", 1, "")]).land(con, FIRST_LANDING)
    materialize(warehouse, "profiles", "profiles_out")
    before = _tables(warehouse, "profiles_out")
    Batch([("y", "b", "a", "2024-01-02 00:00:00", 2, "")]).land(con, FIRST_LANDING + timedelta(days=1))
    for _ in range(2):  # the watermark did not advance: the next run reads the loop again
        with pytest.raises(DataError, match="loop"):
            materialize(warehouse, "profiles", "profiles_out")
        assert _tables(warehouse, "profiles_out") == before


def test_a_run_failing_while_it_writes_leaves_the_previous_tables_and_watermark(
    warehouse: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    con = warehouse.connection
    _empty_updates(con)
    case = CASES["canonical_merges_away"]
    case.first.land(con, FIRST_LANDING)
    materialize(warehouse, "profiles", "profiles_out")
    before = _tables(warehouse, "profiles_out")
    watermarks = con.execute("SELECT * FROM profiles_out._engage_identity").fetchall()
    case.second.land(con, FIRST_LANDING + timedelta(days=1))
    execute = warehouse.execute

    def failing(statement: exp.Expr, parameters: Sequence[Any] = ()) -> None:
        if isinstance(statement, exp.Insert) and statement.this.find(exp.Table).name == PROFILE_TRAITS:
            raise RuntimeError("connection lost")
        execute(statement, parameters)

    monkeypatch.setattr(warehouse, "execute", failing)
    with pytest.raises(RuntimeError, match="connection lost"):
        materialize(warehouse, "profiles", "profiles_out")
    assert _tables(warehouse, "profiles_out") == before
    assert con.execute("SELECT * FROM profiles_out._engage_identity").fetchall() == watermarks
    monkeypatch.undo()
    counts = materialize(warehouse, "profiles", "profiles_out")
    assert not counts.full
    assert _canonicals(warehouse) == case.canonicals
    _assert_as_full_refresh(warehouse, counts)


def test_a_new_trait_column_rebuilds_in_full(warehouse: DuckDBWarehouse) -> None:
    con = warehouse.connection
    _empty_updates(con)
    CASES["seed_case_study"].first.land(con, FIRST_LANDING)
    materialize(warehouse, "profiles", "profiles_out")
    con.execute("ALTER TABLE profiles.profile_traits_updates ADD COLUMN company VARCHAR")
    CASES["seed_case_study"].second.land(con, FIRST_LANDING + timedelta(days=1))
    counts = materialize(warehouse, "profiles", "profiles_out")
    assert counts.full
    assert _traits(warehouse) == CASES["seed_case_study"].traits
    _assert_as_full_refresh(warehouse, counts)
