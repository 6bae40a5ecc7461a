"""Storage actions on every engine (SPEC §5): the example definitions synced twice into two storage-action
tables of the space's schema give DuckDB's tables everywhere: the same layout, the same rows, and payload
columns whose JSON parses to the same objects. One user id and one anonymous id of the sample data hold
characters JSON escapes, so that each engine's escaping is compared too."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pytest

from engage.config import load_project
from engage.sync import run_space
from engage.warehouse import open_warehouse
from engage.warehouse.capabilities import DUCKDB
from engage.warehouse.duckdb import DuckDBWarehouse
from tests.engines.conftest import (
    AS_OFS,
    REPO,
    SOURCES,
    DuckDBEngine,
    Engine,
    _read_outputs,
    write_config,
)
from tests.engines.dataset import SourceTable, read_sources
from tests.engines.test_differential import ENGINES, _same_rows

SCHEMA = "default"  # the space's name
DESTINATIONS = {
    "bi": "{type: storage_action, table: audience_activity, mapping: {member: user_id, profile: profile_id,"
    " joined: timestamp, in_audience: membership}}",
    "entries": "{type: storage_action, table: audience_entries, activation: Audience Entered}",
    "exits": "{type: storage_action, table: audience_entries, activation: Audience Exited}",
}
TABLES = ("audience_activity", "audience_entries")
AUDIENCE_FILES = ("browsing.yml", "purchasers.yml")  # the example audiences that need no trait
# The sample data's most active user and anonymous visitor, renamed.
ODD_IDS = {"user_000139": 'odd "user" \\ \t\n\x01 é', "anon_434a010f001b56d1": 'odd "anon"\r\x1f'}
Layouts = dict[str, list[tuple[str, str]]]
Tables = dict[str, list[dict[str, Any]]]


def _layouts(root: Path) -> Layouts:
    """Each table's (column, portable type), in order."""
    warehouse = open_warehouse(load_project(root).space("default"), read_only=True)
    try:
        return {table: list(warehouse.table_columns(SCHEMA, table).items()) for table in TABLES}
    finally:
        warehouse.close()


def _parsed(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its payload parsed, without the time it was sent (the time of the run, not the data)."""
    payload = json.loads(row["payload"])
    payload.pop("sentAt")
    return {**row, "payload": payload}


def _storage_run(root: Path, engine: Engine, tables: list[SourceTable]) -> tuple[Layouts, Tables]:
    """Syncs the example definitions on `engine` at each of `AS_OFS` into the storage-action tables."""
    (root / "audiences").mkdir(parents=True)
    for name in AUDIENCE_FILES:  # audiences only: traits are not storage-action material, and slow to emulate
        shutil.copy(REPO / "audiences" / "default" / name, root / "audiences" / name)
    write_config(root, engine, DESTINATIONS)
    engine.land(tables)
    for as_of in AS_OFS:
        run_space(load_project(root), "default", as_of=as_of)
    outputs = _read_outputs(root, SCHEMA)
    return _layouts(root), {table: [_parsed(r) for r in outputs[table]] for table in TABLES}


@pytest.fixture(scope="module")
def storage_tables(
    tmp_path_factory: pytest.TempPathFactory, demo_tables: list[SourceTable]
) -> list[SourceTable]:
    """The sample dataset with the ids of `ODD_IDS` renamed wherever they are."""
    (origin,) = {t.origin for t in demo_tables}
    path = tmp_path_factory.mktemp("odd-ids") / "sources.duckdb"
    shutil.copy(origin, path)
    with duckdb.connect(str(path)) as connection:
        for table in demo_tables:
            name = f'"{table.schema}"."{table.name}"'
            columns = {c for c, _ in table.columns} & {"user_id", "anonymous_id"}
            columns |= {"id"} if table.name == "users" else set()
            for column in sorted(columns):
                for old, new in ODD_IDS.items():
                    connection.execute(f'UPDATE {name} SET "{column}" = ? WHERE "{column}" = ?', [new, old])
    return read_sources(path, SOURCES)


@pytest.fixture(scope="module")
def duckdb_storage(
    tmp_path_factory: pytest.TempPathFactory, storage_tables: list[SourceTable]
) -> tuple[Layouts, Tables]:
    root = tmp_path_factory.mktemp("duckdb-storage")
    return _storage_run(root, DuckDBEngine(root / "warehouse.duckdb"), storage_tables)


def _assert_same(expected: tuple[Layouts, Tables], actual: tuple[Layouts, Tables], engine: str) -> None:
    assert actual[0] == expected[0], f"{engine}: layouts differ"
    for table in TABLES:
        _same_rows(expected[1][table], actual[1][table], f"{engine}: {table}")


def test_the_storage_tables_hold_every_activation(duckdb_storage: tuple[Layouts, Tables]) -> None:
    """Guards the net: entries and exits of several audiences, anonymous members, every mapped column."""
    layouts, tables = duckdb_storage
    assert [c for c, _ in layouts["audience_activity"]][-5:] == [
        "member",
        "profile",
        "joined",
        "in_audience",
        "payload",
    ]
    activity = tables["audience_activity"]
    assert {r["membership"] for r in activity} == {True, False}
    assert len({r["audience_key"] for r in activity}) > 3
    assert any(r["anonymous_id"] and "userId" not in r["payload"] for r in activity)
    odd_user, odd_anonymous = ODD_IDS.values()
    assert any(r["payload"].get("userId") == r["user_id"] == odd_user for r in activity)
    assert any(r["payload"].get("anonymousId") == r["anonymous_id"] == odd_anonymous for r in activity)
    assert all(
        r["in_audience"] == r["membership"] == r["payload"]["properties"][r["audience_key"]] for r in activity
    )
    entries = tables["audience_entries"]
    assert {(r["event"], r["membership"]) for r in entries} == {
        ("Audience Entered", True),
        ("Audience Exited", False),
    }
    assert len(entries) == len(activity)


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_each_engine_writes_the_storage_tables_as_duckdb(
    tmp_path: Path,
    storage_tables: list[SourceTable],
    duckdb_storage: tuple[Layouts, Tables],
    engine: Engine,
) -> None:
    _assert_same(duckdb_storage, _storage_run(tmp_path / "project", engine, storage_tables), engine.name)


def test_fallbacks_for_redshift_and_spark_write_the_storage_tables_as_duckdb(
    tmp_path: Path,
    storage_tables: list[SourceTable],
    duckdb_storage: tuple[Layouts, Tables],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redshift's code paths (no arrays, no QUALIFY, no TRY_CAST) and Spark's (no row updates), on DuckDB."""
    fallbacks = replace(
        DUCKDB, pick="window", sorted_set="listagg", try_cast=False, qualify=False, row_updates=False
    )
    monkeypatch.setattr(DuckDBWarehouse, "capabilities", fallbacks)
    root = tmp_path / "project"
    actual = _storage_run(root, DuckDBEngine(root / "warehouse.duckdb"), storage_tables)
    _assert_same(duckdb_storage, actual, "duckdb with fallbacks")
