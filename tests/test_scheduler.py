"""`engage scheduler` as a real process: it runs a space on its schedule without overlap, logs every run,
reloads on SIGHUP, exits 0 soon after SIGTERM, and refuses a bad config with exit 2 and file:line."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import CONFIG, Workspace

REPO = Path(__file__).resolve().parents[1]


def _scheduled(workspace: Workspace, schedule: str) -> None:
    workspace.write_config(CONFIG.format(sources="website") + f"    schedule: {schedule}\n")
    workspace.define(
        """\
        kind: audience
        name: Signed Up
        condition: {performed: Signed Up}
        """
    )
    workspace.track("Signed Up", "2026-05-01T10:00:00", user_id="u1")
    workspace.flush()


def _start(workspace: Workspace, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "engage.cli", "--project", str(workspace.root), "scheduler", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(process: subprocess.Popen[str]) -> tuple[float, str]:
    """SIGTERM; how long it took to exit, and what it logged."""
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    return time.monotonic() - sent, stderr


def _runs(workspace: Workspace) -> list[tuple[str, str, object, object]]:
    return workspace.query(
        "SELECT run_id, status, started_at, finished_at FROM engage_default._engage_runs ORDER BY started_at"
    )


def test_a_2s_interval_runs_at_least_4_times_in_10s_without_overlap_and_stops_on_sigterm(
    workspace: Workspace,
) -> None:
    _scheduled(workspace, "{every: 2s}")
    process = _start(workspace)
    time.sleep(10)
    seconds, stderr = _stop(process)
    assert process.returncode == 0, stderr
    assert seconds < 5, f"took {seconds:.1f}s to stop"
    runs = _runs(workspace)
    assert len(runs) >= 4, (runs, stderr)
    assert [r[1] for r in runs] == ["succeeded"] + ["unchanged"] * (len(runs) - 1), runs
    for earlier, later in itertools.pairwise(runs):
        assert later[2] >= earlier[3], f"run {later[0]} started before {earlier[0]} finished"
    logged = re.findall(r"run space=default run_id=(\w+) status=(\w+)", stderr)
    assert [run_id for run_id, _ in logged] == [r[0] for r in runs], stderr
    assert "received SIGTERM" in stderr


def test_sighup_reloads_the_schedule_and_definitions(workspace: Workspace) -> None:
    _scheduled(workspace, "{every: 1h}")
    process = _start(workspace)
    try:
        deadline = time.monotonic() + 20
        while len(_runs_when_free(workspace)) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        workspace.write_config(CONFIG.format(sources="website") + "    schedule: {every: 1s}\n")
        process.send_signal(signal.SIGHUP)
        time.sleep(3)
    finally:
        _, stderr = _stop(process)
    assert "reloaded" in stderr, stderr
    assert len(_runs(workspace)) >= 2, stderr


def _runs_when_free(workspace: Workspace) -> list[tuple[str, str, object, object]]:
    """The run log, or nothing while a run holds the warehouse file."""
    try:
        return _runs(workspace)
    except Exception:  # the scheduler's run holds DuckDB's file lock
        return []


def test_once_runs_each_scheduled_space_once_and_exits(workspace: Workspace) -> None:
    _scheduled(workspace, "'*/5 * * * *'")
    result = workspace.cli("scheduler", "--once")
    assert result.exit_code == 0, result.output
    assert [r[1] for r in _runs(workspace)] == ["succeeded"]
    assert [m["traits"] for m in workspace.sent() if m["type"] == "identify"] == [{"signed_up": True}]


@pytest.mark.parametrize(
    ("schedule", "args", "field"),
    [
        ("'61 * * * *'", (), "spaces.default.schedule"),
        ("{every: 0s}", (), "spaces.default.schedule.every"),
        ("{every: -2m}", (), "spaces.default.schedule.every"),
        ("{every: 1m}", ("--space", "nope"), "spaces"),
    ],
    ids=["invalid_cron", "zero_interval", "negative_interval", "unknown_space"],
)
def test_bad_schedule_config_exits_2_naming_file_and_line(
    workspace: Workspace, schedule: str, args: tuple[str, ...], field: str
) -> None:
    _scheduled(workspace, schedule)
    result = workspace.cli("scheduler", *args)
    assert result.exit_code == 2, result.output
    assert re.search(rf"config/engage.yaml:\d+: {re.escape(field)}: ", result.output), result.output
    assert not (workspace.root / ".engage" / "warehouse.duckdb").exists() or _runs_when_free(workspace) == []


def test_a_project_without_any_schedule_is_refused(workspace: Workspace) -> None:
    workspace.flush()
    result = workspace.cli("scheduler")
    assert result.exit_code == 2, result.output
    assert "no space has a schedule" in result.output


def test_a_space_is_woken_when_a_member_ages_out_with_no_new_data(workspace: Workspace) -> None:
    """Hourly schedule, a 1h window, and a signup 1h − 8s ago: the member leaves 8 s after the start,
    and the scheduler runs the space then, not an hour later."""
    workspace.write_config(CONFIG.format(sources="website") + "    schedule: {every: 1h}\n")
    workspace.define(
        """\
        kind: audience
        name: Fresh Signups
        condition: {performed: Signed Up, within: 1h}
        """
    )
    signed_up = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1) + timedelta(seconds=8)
    workspace.track("Signed Up", signed_up.isoformat(), user_id="u1")
    workspace.flush()
    process = _start(workspace)
    try:
        deadline = time.monotonic() + 30
        while len(_runs_when_free(workspace)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        _, stderr = _stop(process)
    runs = workspace.query("SELECT entered, exited FROM engage_default._engage_runs ORDER BY started_at")
    assert runs[:2] == [(1, 0), (0, 1)], (runs, stderr)
    assert f"next_change={(signed_up + timedelta(hours=1)).isoformat()}" in stderr, stderr
    assert "woken at" in stderr
