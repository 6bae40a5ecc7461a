"""Transient failures retry the whole run with exponential backoff and jitter, within the space's bound;
terminal ones fail at once. The lock is a real one: another process holding the DuckDB file."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from engage.config import RetryConfig
from engage.errors import TransientWarehouseError, WarehouseError
from engage.retry import with_retries
from tests.conftest import CONFIG, Workspace

# Holds the warehouse file open (DuckDB locks it against other processes) for argv[2] seconds.
HOLD = """\
import sys, time, duckdb
connection = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.close()
"""


@contextmanager
def locked(workspace: Workspace, seconds: float) -> Iterator[None]:
    workspace.flush()
    path = workspace.root / ".engage" / "warehouse.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()


def _with_retry(workspace: Workspace, attempts: int, initial: float, longest: float) -> None:
    retry = f"    retry: {{attempts: {attempts}, initial_delay: {initial}, max_delay: {longest}}}\n"
    workspace.write_config(CONFIG.format(sources="website") + retry)
    workspace.define(
        """\
        kind: audience
        name: Signed Up
        condition: {performed: Signed Up}
        """
    )
    workspace.track("Signed Up", "2026-05-01T10:00:00", user_id="u1")


def test_a_run_blocked_by_another_process_is_retried_until_it_succeeds(
    workspace: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    _with_retry(workspace, attempts=8, initial=0.2, longest=1.0)
    with caplog.at_level(logging.WARNING, logger="engage.retry"), locked(workspace, seconds=1.0):
        summary = workspace.sync("2026-05-02T00:00:00")
    assert summary.entered == 1
    retries = [r.getMessage() for r in caplog.records if r.name == "engage.retry"]
    assert retries and all("lock" in m for m in retries), retries
    assert retries[0].startswith("space default: attempt 1 of 8 failed")
    assert [m["type"] for m in workspace.sent()] == ["identify", "track"]


def test_a_lock_that_outlasts_the_bound_fails_after_the_last_attempt(workspace: Workspace) -> None:
    _with_retry(workspace, attempts=3, initial=0.05, longest=0.1)
    with locked(workspace, seconds=60):
        result = workspace.cli("sync", "--space", "default", "--as-of", "2026-05-02T00:00:00")
    assert result.exit_code == 1, result.output
    assert "lock" in result.output
    assert workspace.sent() == []
    assert workspace.sync("2026-05-02T00:00:00").entered == 1, "the next run starts where the failed one did"


def test_waits_double_with_jitter_up_to_the_longest_and_stop_at_the_bound() -> None:
    policy = RetryConfig(attempts=6, initial_delay=1.0, max_delay=5.0)
    waits: list[float] = []
    tries = 0

    def failing() -> None:
        nonlocal tries
        tries += 1
        raise TransientWarehouseError("connection reset")

    with pytest.raises(TransientWarehouseError):
        with_retries(failing, policy, "test", sleep=waits.append)
    assert tries == 6 and len(waits) == 5
    for number, wait in enumerate(waits):
        assert min(2.0**number, 5.0) <= wait <= 5.0, waits
    assert waits[-1] == 5.0


def test_a_terminal_error_is_not_retried() -> None:
    tries: list[int] = []

    def refused() -> None:
        tries.append(1)
        raise WarehouseError("permission denied for schema website")

    with pytest.raises(WarehouseError, match="permission denied"):
        with_retries(refused, RetryConfig(attempts=5), "test", sleep=lambda _: pytest.fail("slept"))
    assert len(tries) == 1
