"""PostgreSQL for real: the compiled SQL runs, syncs are idempotent, and connection failures are one
clear line naming the setting (never the secret), exit 1, with the state untouched."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engage.config import PostgresWarehouseConfig
from engage.errors import Location, SpaceBusyError
from engage.identity_graph import materialize
from engage.lease import Holder, Lease
from engage.sync import utc_now
from engage.warehouse.postgres import PostgresWarehouse
from tests.engines.conftest import (
    AS_OFS,
    PostgresEngine,
    assert_sync_fails_naming,
    break_config,
    cli,
    config_restored,
    run_project,
)
from tests.engines.dataset import SourceTable
from tests.engines.net import free_port
from tests.engines.postgres import PostgresServer

pytestmark = pytest.mark.postgres


def _state(server: PostgresServer, database: str) -> list[tuple[object, ...]]:
    with server.connect(database) as connection:
        state = connection.execute(
            "SELECT definition_key, trait_key, profile_id, value_text, generation"
            " FROM engage_default._engage_state ORDER BY 1, 2, 3"
        ).fetchall()
        runs = connection.execute(
            "SELECT run_id, status FROM engage_default._engage_runs ORDER BY 1"
        ).fetchall()
    return [*state, *runs]


@pytest.fixture
def synced(
    tmp_path: Path, demo_tables: list[SourceTable], postgres_database: tuple[PostgresServer, str]
) -> tuple[Path, PostgresServer, str]:
    """A project on a PostgreSQL database with the sample data, synced twice."""
    server, database = postgres_database
    run_project(tmp_path / "project", PostgresEngine(server, database), demo_tables)
    return tmp_path / "project", server, database


def test_a_sync_with_no_new_data_sends_nothing(synced: tuple[Path, PostgresServer, str]) -> None:
    root, server, database = synced
    before = _state(server, database)
    code, output = cli(root, "sync", "--space", "default", "--as-of", AS_OFS[-1].isoformat(), "--json")
    assert code == 0, output
    assert '"entered": 0' in output and '"exited": 0' in output and '"changed": 0' in output
    after = _state(server, database)
    assert [r for r in after if len(r) == 5] == [r for r in before if len(r) == 5]


def test_compiled_postgres_sql_runs_on_postgres(synced: tuple[Path, PostgresServer, str]) -> None:
    """`engage compile --dialect postgres` prints statements a user can run as they are."""
    root, server, database = synced
    code, output = cli(root, "compile", "--space", "default", "--dialect", "postgres")
    assert code == 0, output
    statements = re.split(r"^-- (.*)$", output, flags=re.MULTILINE)[1:]
    titled = list(zip(statements[::2], statements[1::2], strict=True))
    assert titled[-1][0] == "current values" and len(titled) >= 2
    with server.connect(database) as connection:
        for title, sql in titled[:-1]:  # SQL traits materialize first, under the names the query reads
            table = title.rsplit("→ ", 1)[1].strip()
            connection.execute(f'CREATE TEMPORARY TABLE "{table}" AS {sql.strip().rstrip(";")}')
        rows = connection.execute(titled[-1][1].strip().rstrip(";")).fetchall()
    assert len(rows) > 100  # one row per profile of the sample data


SECRET = "wrong-password-never-shown"


@pytest.mark.parametrize(
    ("broken", "field", "says"),
    [
        pytest.param((", password: '${ENGAGE_TEST_PG_PASSWORD}'", ""), "password", ("none is configured",), id="missing_credentials"),
        pytest.param(("port: {port}", "port: {closed}"), "host", ("cannot reach",), id="unreachable_host"),
        pytest.param(("${ENGAGE_TEST_PG_PASSWORD}", SECRET), "password", ("authentication failed",), id="wrong_password"),
        pytest.param(("database: {database}", "database: no_such_db"), "database", ("no_such_db", "does not exist"), id="missing_database"),
        pytest.param(("sources: [website, ios]", "sources: [website, nowhere]"), "sources", ("nowhere", "not found"), id="missing_schema"),
    ],
)  # fmt: skip
def test_connection_failures_are_one_line_naming_the_setting(
    synced: tuple[Path, PostgresServer, str], broken: tuple[str, str], field: str, says: Sequence[str]
) -> None:
    root, server, database = synced
    before = _state(server, database)
    with config_restored(root) as config:
        values = {"port": server.port, "closed": free_port(), "database": database}
        break_config(config, *broken, values)
        assert_sync_fails_naming(root, field, says, secrets=[SECRET, server.password])
    assert _state(server, database) == before


def test_of_runs_racing_for_a_space_exactly_one_takes_its_lease(
    postgres_database: tuple[PostgresServer, str],
) -> None:
    """Four connections try to take the lease at the same instant, ten times over (the first time on a
    database without the lease table): each time exactly one wins, and the others are told who holds it."""
    server, database = postgres_database
    config = PostgresWarehouseConfig(
        type="postgres", host=server.host, port=server.port, database=database, user=server.user,
        password=server.password,
    )  # fmt: skip
    warehouses = [
        PostgresWarehouse(config, lambda field: Location(Path("engage.yaml"), 1, field)) for _ in range(4)
    ]
    try:
        for round_ in range(10):
            winners, refusals = _race(warehouses, round_)
            assert len(winners) == 1, (round_, winners, refusals)
            assert len(refusals) == 3 and all(winners[0].run_id in r for r in refusals), refusals
            Lease(warehouses[0], "engage_default", "default", timedelta(hours=1)).release(winners[0])
    finally:
        for warehouse in warehouses:
            warehouse.close()


def _race(warehouses: Sequence[PostgresWarehouse], round_: int) -> tuple[list[Holder], list[str]]:
    """Each connection tries to take the lease at the same instant: who won, and what the others heard."""
    start = threading.Barrier(len(warehouses))
    winners: list[Holder] = []
    refusals: list[str] = []

    def contend(number: int, warehouse: PostgresWarehouse) -> None:
        lease = Lease(warehouse, "engage_default", "default", timedelta(hours=1))
        holder = Holder("elsewhere", 1000 + number, f"run-{round_}-{number}")
        start.wait()
        try:
            lease.acquire(holder, utc_now())
            winners.append(holder)
        except SpaceBusyError as err:
            refusals.append(str(err))

    threads = [threading.Thread(target=contend, args=item) for item in enumerate(warehouses)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return winners, refusals


# Profiles Sync rows: (id, segment_id, canonical_segment_id, timestamp, seq), (id, segment_id, type, value,
# timestamp, seq), (id, segment_id, plan, timestamp, seq); each lands at `landed`, else at its timestamp.
PS_GRAPH = [
    ("r1", "profile_1", "profile_1", "2022-05-02 14:01:00", 1),
    ("r2", "profile_2", "profile_2", "2022-06-22 10:47:15", 2),
    ("r3", "profile_2", "profile_1", "2022-06-22 10:48:00", 3),
    ("r4", "profile_3", "profile_2", "2022-07-01 00:00:00", None),
]
PS_EXTERNAL = [
    ("e1", "profile_1", "anonymous_id", "5285bc35-05ef-4d21", "2022-05-02 14:01:00", 1),
    ("e2", "profile_1", "email", "jane@example.com", "2022-05-02 14:01:47", 2),
    ("e3", "profile_2", "anonymous_id", "b50e18a5-1b8d-451c", "2022-06-22 10:48:00", 3),
]
PS_TRAITS = [("t1", "profile_3", "pro", "2022-07-02", 9), ("t2", "profile_1", "free", "2022-05-03", 4)]


def _land_profiles_sync(
    connection: Any,
    graph: Sequence[tuple[Any, ...]],
    external: Sequence[tuple[Any, ...]],
    traits: Sequence[tuple[Any, ...]],
    landed: str | None = None,
) -> None:
    connection.execute("CREATE SCHEMA IF NOT EXISTS profiles")
    connection.execute(
        "CREATE TABLE IF NOT EXISTS profiles.id_graph_updates (id TEXT, segment_id TEXT,"
        " canonical_segment_id TEXT, timestamp TIMESTAMP, seq BIGINT, uuid_ts TIMESTAMP)"
    )
    connection.execute(
        "CREATE TABLE IF NOT EXISTS profiles.external_id_mapping_updates (id TEXT, segment_id TEXT,"
        " external_id_type TEXT, external_id_value TEXT, external_id_hash TEXT, timestamp TIMESTAMP, seq BIGINT,"
        " uuid_ts TIMESTAMP)"
    )
    connection.execute(
        "CREATE TABLE IF NOT EXISTS profiles.profile_traits_updates (id TEXT, segment_id TEXT, plan TEXT,"
        " timestamp TIMESTAMP, seq BIGINT, uuid_ts TIMESTAMP)"
    )
    for row in graph:
        connection.execute(
            "INSERT INTO profiles.id_graph_updates VALUES (%s, %s, %s, %s, %s, %s)", [*row, landed or row[3]]
        )
    for id_, segment, kind, value, moment, seq in external:
        connection.execute(
            "INSERT INTO profiles.external_id_mapping_updates VALUES (%s, %s, %s, %s, md5(%s), %s, %s, %s)",
            [id_, segment, kind, value, f"{kind}:{value}", moment, seq, landed or moment],
        )
    for row in traits:
        connection.execute(
            "INSERT INTO profiles.profile_traits_updates VALUES (%s, %s, %s, %s, %s, %s)",
            [*row, landed or row[3]],
        )


def _open_postgres(server: PostgresServer, database: str) -> PostgresWarehouse:
    config = PostgresWarehouseConfig(
        type="postgres", host=server.host, port=server.port, database=database, user=server.user,
        password=server.password,
    )  # fmt: skip
    return PostgresWarehouse(config, lambda field: Location(Path("engage.yaml"), 1, field))


def test_profiles_sync_identity_tables_build_on_postgres_as_on_duckdb(
    postgres_database: tuple[PostgresServer, str],
) -> None:
    """The seed's case study, plus p3 merging into p2 after p2 merged into p1 (no recursive entry)."""
    server, database = postgres_database
    with server.connect(database) as connection:
        _land_profiles_sync(connection, PS_GRAPH, PS_EXTERNAL, PS_TRAITS)
    warehouse = _open_postgres(server, database)
    try:
        counts = materialize(warehouse, "profiles", "profiles_out")
    finally:
        warehouse.close()
    assert (counts.profiles, counts.segment_ids, counts.merged, counts.depth, counts.external_ids) == (
        1,
        3,
        2,
        2,
        3,
    )
    with server.connect(database) as connection:
        mapping = connection.execute(
            "SELECT external_id_value, canonical_segment_id FROM profiles_out.external_id_mapping ORDER BY 1"
        ).fetchall()
        traits = connection.execute(
            "SELECT canonical_segment_id, plan, merged_to FROM profiles_out.profile_traits ORDER BY 1"
        ).fetchall()
    assert mapping == [
        ("5285bc35-05ef-4d21", "profile_1"), ("b50e18a5-1b8d-451c", "profile_1"), ("jane@example.com", "profile_1")
    ]  # fmt: skip
    assert traits == [
        ("profile_1", "pro", None),
        ("profile_2", None, "profile_1"),
        ("profile_3", None, "profile_1"),
    ]


def test_profiles_sync_identity_tables_built_incrementally_on_postgres_equal_a_full_refresh(
    postgres_database: tuple[PostgresServer, str],
) -> None:
    """Two batches: the second brings p2's merge into p1 again, p3's merge into p2 late (of July, landed in
    August), p3's plan and jane's email seen again on p3. Every row of p2 and p3 then follows p1."""
    server, database = postgres_database
    again = ("e4", "profile_3", "email", "jane@example.com", "2022-07-01 00:00:00", 5)
    outputs = (
        "id_graph",
        "external_id_mapping",
        "profile_traits",
        "_engage_id_latest",
        "_engage_external_latest",
    )
    with server.connect(database) as connection:
        _land_profiles_sync(connection, PS_GRAPH[:3], PS_EXTERNAL, PS_TRAITS[1:])
    warehouse = _open_postgres(server, database)
    try:
        assert materialize(warehouse, "profiles", "profiles_out").full
        with server.connect(database) as connection:
            _land_profiles_sync(connection, PS_GRAPH[2:], [again], PS_TRAITS[:1], landed="2022-08-01")
        counts = materialize(warehouse, "profiles", "profiles_out")
        full = materialize(warehouse, "profiles", "profiles_full", full_refresh=True)
    finally:
        warehouse.close()
    # The second batch, and the rows landed within the lookback of each table's watermark, read again.
    assert (counts.full, counts.new_rows, full.full) == (False, 4 + 4, True)
    assert (counts.profiles, counts.segment_ids, counts.merged, counts.depth, counts.external_ids) == (
        full.profiles, full.segment_ids, full.merged, full.depth, full.external_ids
    )  # fmt: skip
    with server.connect(database) as connection:
        for table in outputs:
            incremental, rebuilt = (
                connection.execute(f"SELECT * FROM {schema}.{table} ORDER BY 1, 2, 3").fetchall()
                for schema in ("profiles_out", "profiles_full")
            )
            assert incremental == rebuilt, table
        canonicals = connection.execute(
            "SELECT segment_id, canonical_segment_id, uuid_ts FROM profiles_out.id_graph ORDER BY 1"
        ).fetchall()
        mapping = connection.execute(
            "SELECT external_id_value, canonical_segment_id FROM profiles_out.external_id_mapping ORDER BY 1"
        ).fetchall()
        traits = connection.execute(
            "SELECT canonical_segment_id, plan, merged_to FROM profiles_out.profile_traits ORDER BY 1"
        ).fetchall()
    august = datetime(2022, 8, 1)
    assert canonicals == [
        ("profile_1", "profile_1", datetime(2022, 5, 2, 14, 1)),
        ("profile_2", "profile_1", august),  # its merge, landed again
        ("profile_3", "profile_1", august),
    ]
    assert mapping == [
        ("5285bc35-05ef-4d21", "profile_1"), ("b50e18a5-1b8d-451c", "profile_1"), ("jane@example.com", "profile_1")
    ]  # fmt: skip
    assert traits == [
        ("profile_1", "pro", None),
        ("profile_2", None, "profile_1"),
        ("profile_3", None, "profile_1"),
    ]
