"""The project's main correctness net: one dataset, one set of definitions, every engine, equal results.

Each engine lands the same sample data and syncs the example definitions (every condition kind and trait
type of SPEC §2) at two as-of times. Members and trait values (the state), every emitted message, and every
`engage_<space>` table must equal DuckDB's, floats to nine significant digits.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from engage.warehouse.capabilities import DUCKDB
from engage.warehouse.duckdb import DuckDBWarehouse
from tests.engines.conftest import DuckDBEngine, Engine, Outcome, run_project
from tests.engines.dataset import SourceTable


def assert_same(expected: Outcome, actual: Outcome, engine: str) -> None:
    assert actual.summaries == expected.summaries, f"{engine}: per-definition counts differ"
    _same_rows(expected.tables.get("_engage_state", []), actual.tables.get("_engage_state", []), "state")
    assert len(actual.messages) == len(expected.messages), f"{engine}: message counts differ"
    for want, got in zip(expected.messages, actual.messages, strict=True):
        assert got == want, f"{engine}: message {want['messageId']} differs"
    assert sorted(actual.tables) == sorted(expected.tables), f"{engine}: different output tables"
    for name, rows in expected.tables.items():
        _same_rows(rows, actual.tables[name], f"{engine}: {name}")


def _same_rows(expected: list[dict[str, Any]], actual: list[dict[str, Any]], what: str) -> None:
    assert len(actual) == len(expected), f"{what}: {len(actual)} rows, expected {len(expected)}"
    for want, got in zip(expected, actual, strict=True):
        where = want.get("definition_key") or want.get("id")
        assert got == want, f"{what}: row of {where} differs"


def test_the_dataset_exercises_every_transition(duckdb_outcome: Outcome) -> None:
    """Guards the net itself: a comparison of empty results would prove nothing."""
    first, second = duckdb_outcome.summaries
    assert all(size > 0 for *_, size in first.values()), first
    assert sum(exited for _, exited, _, _ in second.values()) > 0
    assert sum(changed for _, _, changed, _ in second.values()) > 0
    assert sum(entered for entered, _, _, _ in second.values()) > 0
    events = {m.get("event") for m in duckdb_outcome.messages}
    assert {"Audience Entered", "Audience Exited", "Trait Computed"} <= events


# The engines that run here besides DuckDB; each test below runs once per engine.
ENGINES = [
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("snowflake", marks=pytest.mark.snowflake),
    pytest.param("bigquery", marks=pytest.mark.bigquery),
    pytest.param("spark", marks=pytest.mark.spark),
]


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_each_engine_equals_duckdb(
    tmp_path: Path, demo_tables: list[SourceTable], duckdb_outcome: Outcome, engine: Engine
) -> None:
    outcome = run_project(tmp_path / "project", engine, demo_tables)
    assert_same(duckdb_outcome, outcome, engine.name)


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_computing_in_duckdb_and_writing_into_another_engine_equals_duckdb(
    tmp_path: Path, demo_tables: list[SourceTable], duckdb_outcome: Outcome, engine: Engine
) -> None:
    """Cross-warehouse: only the changes stream from DuckDB into the other engine's `engage_default`
    tables (by write_pandas into Snowflake, load jobs into BigQuery, executemany into PostgreSQL)."""
    root = tmp_path / "project"
    outcome = run_project(root, DuckDBEngine(root / "warehouse.duckdb"), demo_tables, engine)
    assert_same(duckdb_outcome, outcome, f"duckdb → {engine.name}")


def test_fallbacks_for_engines_without_arrays_equal_duckdb(
    tmp_path: Path, demo_tables: list[SourceTable], duckdb_outcome: Outcome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redshift's code paths (a ranked query per latest/first value, LISTAGG-built JSON lists, a numeric
    text test instead of TRY_CAST, no QUALIFY) and Spark's (tables overwritten instead of rows deleted and
    updated) run here on DuckDB, and must give DuckDB's own results."""
    fallbacks = replace(
        DUCKDB, pick="window", sorted_set="listagg", try_cast=False, qualify=False, row_updates=False
    )
    monkeypatch.setattr(DuckDBWarehouse, "capabilities", fallbacks)
    root = tmp_path / "project"
    outcome = run_project(root, DuckDBEngine(root / "warehouse.duckdb"), demo_tables)
    assert_same(duckdb_outcome, outcome, "duckdb with fallbacks")
