"""Profiles Sync's id_graph built in the warehouse (SPEC §6): the seed's case study, and merge chains that
land without their recursive entries, out of order, twice, or with a backfilled creation row."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engage.errors import DataError
from engage.identity_graph import build_id_graph
from engage.warehouse.duckdb import DuckDBWarehouse

# (id, segment_id, canonical_segment_id, timestamp, seq, uuid_ts)
Row = tuple[str, str, str, str | None, int | None, str]


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    connection = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def _land(warehouse: DuckDBWarehouse, rows: Sequence[Row]) -> None:
    con = warehouse.connection
    con.execute("CREATE SCHEMA IF NOT EXISTS profiles")
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
        warehouse,
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
    assert (counts.segment_ids, counts.merged) == (2, 1)


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
    _land(warehouse, rows)
    counts = build_id_graph(warehouse, "profiles", "profiles_out")
    assert _canonicals(warehouse) == ALL_IN_P1
    assert (counts.segment_ids, counts.merged) == (4, 3)
    assert counts.passes <= 3, "pointer jumping: log2 of the depth, plus the pass that sees no change"


def test_a_later_merge_of_the_canonical_moves_every_id_merged_into_it(warehouse: DuckDBWarehouse) -> None:
    """p1 itself merges into p0 after the chain: every id follows, without recursive entries."""
    _land(warehouse, [*CHAIN, ("m1", "p1", "p0", "2024-04-01 00:00:00", 20, "2024-04-01 01:00:00")])
    build_id_graph(warehouse, "profiles", "profiles_out")
    assert _canonicals(warehouse) == {"p1": "p0", "p2": "p0", "p3": "p0", "p4": "p0"}


def test_merges_that_form_a_loop_are_reported(warehouse: DuckDBWarehouse) -> None:
    _land(
        warehouse,
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
