"""Identity resolution on every engine (SPEC §6): the `signup` example space over a generated Profiles Sync
schema gives DuckDB's identity tables, members, values, messages and `engage_<space>` tables everywhere."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from engage.demo_profiles import generate_profiles_sync
from engage.warehouse.capabilities import DUCKDB
from engage.warehouse.duckdb import DuckDBWarehouse
from tests.engines.conftest import DATA_END, DuckDBEngine, Engine, Outcome, _read_outputs, run_project
from tests.engines.dataset import SourceTable, read_sources
from tests.engines.test_differential import ENGINES, _same_rows, assert_same

IDENTITY = "{type: profiles_sync, schema: profiles, output_schema: profiles_out}"
IDENTITY_TABLES = ("id_graph", "external_id_mapping", "profile_traits")


@pytest.fixture(scope="session")
def profiles_sync_tables(tmp_path_factory: pytest.TempPathFactory) -> list[SourceTable]:
    path = tmp_path_factory.mktemp("profiles-sync") / "landed.duckdb"
    with duckdb.connect(str(path)) as connection:
        generate_profiles_sync(connection, people=80, events=700, end=DATA_END, days=30)
    return read_sources(path, ["profiles"])


def _identity_run(root: Path, engine: Engine, tables: list[SourceTable]) -> tuple[Outcome, dict[str, list]]:
    outcome = run_project(root, engine, tables, definitions="signup", sources=["profiles"], identity=IDENTITY)
    identity = _read_outputs(root, "profiles_out")
    return outcome, {name: identity[name] for name in IDENTITY_TABLES}


@pytest.fixture(scope="session")
def duckdb_identity(
    tmp_path_factory: pytest.TempPathFactory, profiles_sync_tables: list[SourceTable]
) -> tuple[Outcome, dict[str, list]]:
    root = tmp_path_factory.mktemp("duckdb-identity")
    return _identity_run(root, DuckDBEngine(root / "warehouse.duckdb"), profiles_sync_tables)


def test_the_identity_dataset_merges_and_completes_the_funnel(
    duckdb_identity: tuple[Outcome, dict[str, list]],
) -> None:
    """Guards the net: merged ids, and a pre-signup funnel with members."""
    outcome, identity = duckdb_identity
    merged = [r for r in identity["id_graph"] if r["segment_id"] != r["canonical_segment_id"]]
    assert merged and any(r["merged_to"] for r in identity["profile_traits"])
    first, _ = outcome.summaries
    assert first["browsed_before_signing_up"][3] > 0, first


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_each_engine_resolves_identity_as_duckdb(
    tmp_path: Path,
    profiles_sync_tables: list[SourceTable],
    duckdb_identity: tuple[Outcome, dict[str, list]],
    engine: Engine,
) -> None:
    expected, expected_identity = duckdb_identity
    outcome, identity = _identity_run(tmp_path / "project", engine, profiles_sync_tables)
    for name in IDENTITY_TABLES:
        _same_rows(expected_identity[name], identity[name], f"{engine.name}: {name}")
    assert_same(expected, outcome, engine.name)


def test_fallbacks_for_engines_without_arrays_resolve_identity_as_duckdb(
    tmp_path: Path,
    profiles_sync_tables: list[SourceTable],
    duckdb_identity: tuple[Outcome, dict[str, list]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redshift's path (a ranked query per trait instead of ARG_MAX) and Spark's (tables overwritten, no
    DELETE), run here on DuckDB."""
    fallbacks = replace(
        DUCKDB, pick="window", sorted_set="listagg", try_cast=False, qualify=False, row_updates=False
    )
    monkeypatch.setattr(DuckDBWarehouse, "capabilities", fallbacks)
    root = tmp_path / "project"
    expected, expected_identity = duckdb_identity
    outcome, identity = _identity_run(root, DuckDBEngine(root / "warehouse.duckdb"), profiles_sync_tables)
    for name in IDENTITY_TABLES:
        _same_rows(expected_identity[name], identity[name], f"fallbacks: {name}")
    assert_same(expected, outcome, "duckdb with fallbacks")
