"""Profiles Sync's id_graph built in the warehouse (SPEC §6): the seed's case study, and merge chains that
land without their recursive entries, out of order, twice, or with a backfilled creation row."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from engage.errors import DataError
from engage.identity_graph import build_external_ids, build_id_graph, build_profile_traits
from engage.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import CONFIG, Workspace

# (id, segment_id, canonical_segment_id, timestamp, seq, uuid_ts)
Row = tuple[str, str, str, str | None, int | None, str]


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    connection = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def _land(con: duckdb.DuckDBPyConnection, rows: Sequence[Row]) -> None:
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
    external: Sequence[tuple[str, str, str, str, str, int | None, str]],
    traits: Sequence[tuple[str, str, str | None, str | None, int | None, str]],
) -> None:
    """external: (id, segment_id, type, value, timestamp, seq, uuid_ts);
    traits: (id, segment_id, email, plan, seq, uuid_ts), each at its uuid_ts."""
    con.execute(
        "CREATE OR REPLACE TABLE profiles.external_id_mapping_updates (id VARCHAR, segment_id VARCHAR,"
        " external_id_type VARCHAR, external_id_value VARCHAR, external_id_hash VARCHAR, timestamp TIMESTAMP,"
        " seq BIGINT, received_at TIMESTAMP, uuid_ts TIMESTAMP)"
    )
    for id_, segment, kind, value, moment, seq, landed in external:
        con.execute(
            "INSERT INTO profiles.external_id_mapping_updates VALUES (?, ?, ?, ?, md5(? || ':' || ?), ?, ?, ?, ?)",
            [id_, segment, kind, value, kind, value, moment, seq, landed, landed],
        )
    con.execute(
        "CREATE OR REPLACE TABLE profiles.profile_traits_updates (id VARCHAR, segment_id VARCHAR,"
        " email VARCHAR, plan VARCHAR, timestamp TIMESTAMP, seq BIGINT, received_at TIMESTAMP, uuid_ts TIMESTAMP)"
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
SEED_EXTERNAL = [
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


# -- engage identity ---------------------------------------------------------------------------------------
IDENTITY = "    identity: {type: profiles_sync, schema: profiles, output_schema: profiles_out}\n"


def _seed_project(workspace: Workspace) -> None:
    workspace.write_config(CONFIG.format(sources="website") + IDENTITY)
    with workspace.connect() as con:
        _land(con, SEED_GRAPH)
        _land_identities(con, SEED_EXTERNAL, [("t1", "profile_1", "jane@example.com", None, 1, "2022-05-02")])


def test_engage_identity_materializes_the_tables_and_prints_counts(workspace: Workspace) -> None:
    _seed_project(workspace)
    result = workspace.cli("identity", "--space", "default", "--json")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert counts == {"profiles": 1, "segment_ids": 2, "merged": 1, "depth": 1, "external_ids": 3}
    text = workspace.cli("identity", "--space", "default").output
    assert "1 profiles from 2 segment ids (1 merged, longest merge chain 1), 3 external ids" in text, text
    assert workspace.query("SELECT count(*) FROM profiles_out.id_graph") == [(2,)]


def test_sync_refuses_an_identity_it_cannot_compute_yet_naming_the_setting(workspace: Workspace) -> None:
    _seed_project(workspace)
    result = workspace.cli("sync", "--space", "default")
    assert result.exit_code == 2, result.output
    assert re.search(
        r"config/engage.yaml:\d+: spaces\.default\.identity\.type: identity type profiles_sync", result.output
    )


def test_engage_identity_without_profiles_sync_config_or_tables_says_what_is_missing(
    workspace: Workspace,
) -> None:
    workspace.flush()
    result = workspace.cli("identity", "--space", "default")
    assert result.exit_code == 2 and "needs `identity: {type: profiles_sync" in result.output, result.output
    workspace.write_config(CONFIG.format(sources="website") + IDENTITY)
    result = workspace.cli("identity", "--space", "default")
    assert result.exit_code == 1, result.output
    assert "Profiles Sync tables missing from profiles: id_graph_updates" in result.output, result.output
