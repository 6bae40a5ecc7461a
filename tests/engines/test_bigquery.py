"""BigQuery through the real client against bqemulator: failures are one line naming the setting, with
the state untouched. (The emulator takes any credentials, so a wrong key cannot be shown here.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engines.conftest import (
    BigQueryEngine,
    assert_sync_fails_naming,
    break_config,
    config_restored,
    run_project,
)
from tests.engines.dataset import SourceTable
from tests.engines.net import free_port

pytestmark = pytest.mark.bigquery


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, demo_tables: list[SourceTable]
) -> Iterator[tuple[Path, Any]]:
    """One synced project for the module (a sync on the emulator takes long); tests restore its config."""
    from tests.engines.bigquery import DEFAULT_CACHE_DIR, running_emulator

    root = tmp_path_factory.mktemp("bigquery") / "project"
    with running_emulator(DEFAULT_CACHE_DIR) as endpoint:
        run_project(root, BigQueryEngine(endpoint), demo_tables)
        yield root, endpoint


def _state(endpoint: Any) -> list[tuple[Any, ...]]:
    from tests.engines.bigquery import client, query

    bq = client(endpoint)
    return query(bq, "SELECT run_id, status, generation FROM engage_default._engage_runs ORDER BY 1") + query(
        bq,
        "SELECT definition_key, trait_key, profile_id, value_text FROM engage_default._engage_state ORDER BY 1, 2, 3",
    )


@pytest.mark.parametrize(
    ("old", "new", "field", "says"),
    [
        pytest.param(", auth: none", "", "credentials_file", "no credentials", id="missing_credentials"),
        pytest.param("127.0.0.1:{port}", "127.0.0.1:{closed}", "endpoint", "cannot reach", id="unreachable_host"),
        pytest.param("sources: [website, ios]", "sources: [website, nowhere]", "sources", "not found", id="missing_schema"),
    ],
)  # fmt: skip
def test_failures_are_one_line_naming_the_setting(
    project: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch, old: str, new: str, field: str, says: str
) -> None:
    root, endpoint = project
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(root))  # no application default credentials from the machine
    before = _state(endpoint)
    with config_restored(root) as config:
        break_config(config, old, new, {"port": endpoint.port, "closed": free_port()})
        assert_sync_fails_naming(root, field, [says])
    assert _state(endpoint) == before
