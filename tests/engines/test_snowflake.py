"""Snowflake through the real connector against fakesnow: a second sync sends nothing, the compiled SQL
runs, and failures are one line naming the setting with the state untouched.

fakesnow accepts any password, so a wrong password cannot be shown here (PostgreSQL's tests show it);
an unreachable host, missing credentials and a missing schema can.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engines.conftest import (
    AS_OFS,
    SNOWFLAKE_PASSWORD,
    SnowflakeEngine,
    assert_sync_fails_naming,
    break_config,
    cli,
    config_restored,
    run_project,
)
from tests.engines.dataset import SourceTable
from tests.engines.net import free_port
from tests.engines.snowflake import connect, fresh_database, query

pytestmark = pytest.mark.snowflake


def _state(settings: dict[str, Any]) -> list[tuple[Any, ...]]:
    with connect(settings) as connection:
        return [
            *query(connection, 'SELECT * FROM "ENGAGE_DEFAULT"."_ENGAGE_STATE" ORDER BY 1, 2, 4'),
            *query(connection, 'SELECT run_id, status FROM "ENGAGE_DEFAULT"."_ENGAGE_RUNS" ORDER BY 1'),
        ]


@pytest.fixture(scope="module")
def synced(
    tmp_path_factory: pytest.TempPathFactory, demo_tables: list[SourceTable], snowflake_server: dict[str, Any]
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """One synced project for the module (a sync on fakesnow takes seconds); tests restore its config."""
    root = tmp_path_factory.mktemp("snowflake") / "project"
    with pytest.MonkeyPatch.context() as patch, fresh_database(snowflake_server) as settings:
        patch.setenv("ENGAGE_TEST_SF_PASSWORD", SNOWFLAKE_PASSWORD)
        settings = {**settings, "password": SNOWFLAKE_PASSWORD}
        run_project(root, SnowflakeEngine(settings), demo_tables)
        yield root, settings


def test_a_sync_with_no_new_data_sends_nothing(synced: tuple[Path, dict[str, Any]]) -> None:
    root, settings = synced
    state = [r for r in _state(settings) if len(r) > 2]
    code, output = cli(root, "sync", "--space", "default", "--as-of", AS_OFS[-1].isoformat(), "--json")
    assert code == 0, output
    assert '"entered": 0' in output and '"exited": 0' in output and '"changed": 0' in output
    assert [r for r in _state(settings) if len(r) > 2] == state


@pytest.mark.parametrize(
    ("broken", "field", "says"),
    [
        pytest.param((" password: '${ENGAGE_TEST_SF_PASSWORD}',", ""), "password", "no password configured", id="missing_credentials"),
        pytest.param(("port: {port}", "port: {closed}"), "host", "cannot reach", id="unreachable_host"),
        pytest.param(("sources: [website, ios]", "sources: [website, nowhere]"), "sources", "not found", id="missing_schema"),
    ],
)  # fmt: skip
def test_failures_are_one_line_naming_the_setting(
    synced: tuple[Path, dict[str, Any]], broken: tuple[str, str], field: str, says: str
) -> None:
    root, settings = synced
    before = _state(settings)
    with config_restored(root) as config:
        break_config(config, *broken, {"port": settings["port"], "closed": free_port()})
        assert_sync_fails_naming(root, field, [says], secrets=[settings["password"]])
    assert _state(settings) == before
