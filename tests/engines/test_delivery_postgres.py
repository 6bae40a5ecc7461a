"""Per-destination delivery on PostgreSQL for real: the scenarios of tests/test_delivery.py, with the state,
the outbox, the cursors and the in-warehouse destination in a PostgreSQL database."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engage_connectors.memory import MemoryConnector
from tests import test_delivery
from tests.conftest import Workspace
from tests.engines.conftest import PostgresEngine
from tests.engines.dataset import read_sources
from tests.engines.postgres import PostgresServer

pytestmark = pytest.mark.postgres

EMBEDDED = "warehouse: {type: duckdb, path: .engage/warehouse.duckdb}"


class PostgresWorkspace(Workspace):
    """A `Workspace` whose space computes on PostgreSQL: rows still land in the DuckDB file first (the
    fixture's way of writing them), and are copied to the database before engage reads them."""

    def __init__(self, root: Path, engine: PostgresEngine) -> None:
        self.engine = engine
        self.mirrored = False
        super().__init__(root)

    def write_config(self, text: str) -> None:
        text = textwrap.dedent(text).replace(EMBEDDED, f"warehouse: {self.engine.warehouse_yaml()}")
        super().write_config(text.replace("type: duckdb", "type: warehouse"))

    def flush(self) -> None:
        landed = bool(self._pending) or not self.mirrored
        super().flush()
        if landed:  # the sources afresh; untouched otherwise, so that a run can find nothing changed
            with self.engine.server.connect(self.engine.database) as connection:
                connection.execute("DROP SCHEMA IF EXISTS website CASCADE")
            self.engine.land(read_sources(self.root / ".engage" / "warehouse.duckdb", ["website"]))
            self.mirrored = True

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with self.engine.server.connect(self.engine.database) as connection:
            return [tuple(row) for row in connection.execute(sql).fetchall()]


@pytest.fixture
def space(
    tmp_path: Path, postgres_database: tuple[PostgresServer, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Workspace]:
    monkeypatch.setenv("FLAKY_KEY", test_delivery.SECRET)
    MemoryConnector.sent.clear()
    monkeypatch.setattr(test_delivery.FlakyConnector, "down", False)
    monkeypatch.setattr(test_delivery.FlakyConnector, "received", [])
    workspace = PostgresWorkspace(tmp_path / "project", PostgresEngine(*postgres_database))
    workspace.define(test_delivery.BUYERS + "---" + test_delivery.REVENUE)
    yield workspace
    MemoryConnector.sent.clear()


@pytest.mark.parametrize(
    "scenario",
    [
        test_delivery.a_destination_added_after_two_syncs_starts_with_the_full_state,
        test_delivery.a_destination_down_for_three_runs_receives_every_missed_call_in_order_once,
        test_delivery.selective_sync_includes_and_excludes_definitions_and_tables,
    ],
    ids=["added_after_two_syncs", "down_for_three_runs", "selective_sync"],
)
def test_delivery_on_postgres(space: Workspace, scenario: Callable[[Workspace], None]) -> None:
    scenario(space)
