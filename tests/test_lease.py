"""The space lock: one run of a space at a time, through a lease row in the warehouse. A busy space stops
the second run with one clear line (exit 1) and nothing written; an expired lease, or one whose holder
died on this machine, is taken over."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta

from engage.sync import utc_now
from tests.conftest import Workspace

BUYERS = """\
kind: audience
name: Buyers
condition: {performed: Order Completed}
"""


def _held_by(workspace: Workspace, pid: int, expires: datetime) -> str:
    """Writes a lease as another run would have: holder `host|pid|run`."""
    holder = f"{socket.gethostname()}|{pid}|other-run"
    with workspace.connect() as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS engage_default")
        con.execute(
            "CREATE TABLE engage_default._engage_lease"
            " (space VARCHAR, holder VARCHAR, acquired_at TIMESTAMP, expires_at TIMESTAMP)"
        )
        con.execute(
            "INSERT INTO engage_default._engage_lease VALUES ('default', ?, ?, ?)",
            [holder, expires - timedelta(minutes=5), expires],
        )
    return holder


def _ready(workspace: Workspace) -> None:
    workspace.define(BUYERS)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1")


def test_a_space_held_by_a_live_run_is_busy_and_nothing_is_written(workspace: Workspace) -> None:
    _ready(workspace)
    expires = utc_now() + timedelta(hours=1)
    holder = _held_by(workspace, os.getpid(), expires)
    result = workspace.cli("sync", "--space", "default", "--as-of", "2024-03-02T00:00:00")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: space default is busy: run other-run of process"), lines
    assert f"{os.getpid()} on {socket.gethostname()}" in lines[0] and f"{expires:%Y-%m-%d %H:%M}" in lines[0]
    assert workspace.sent() == []
    tables = {t for (t,) in workspace.query("SELECT table_name FROM information_schema.tables")}
    assert "_engage_state" not in tables and "_engage_runs" not in tables
    assert workspace.query("SELECT holder FROM engage_default._engage_lease") == [(holder,)]


def test_an_expired_lease_is_taken_over(workspace: Workspace) -> None:
    _ready(workspace)
    _held_by(workspace, os.getpid(), utc_now() - timedelta(seconds=1))
    assert workspace.sync("2024-03-02T00:00:00").entered == 1
    assert workspace.query("SELECT holder, expires_at FROM engage_default._engage_lease") == [(None, None)]


def test_a_lease_whose_holder_died_on_this_machine_is_taken_over_at_once(workspace: Workspace) -> None:
    _ready(workspace)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    _held_by(workspace, int(gone.stdout), utc_now() + timedelta(hours=1))
    assert workspace.sync("2024-03-02T00:00:00").entered == 1


def test_a_run_releases_the_lease_also_when_it_fails(workspace: Workspace) -> None:
    workspace.define(
        """\
        kind: sql_trait
        name: Bad
        sql: SELECT 'u1' AS user_id, 1 AS bad UNION ALL SELECT 'u1', 2
        """,
        name="bad.yml",
    )
    _ready(workspace)
    result = workspace.cli("sync", "--space", "default", "--as-of", "2024-03-02T00:00:00")
    assert result.exit_code == 1 and "duplicate" in result.output, result.output
    assert workspace.query("SELECT holder FROM engage_default._engage_lease") == [(None,)]
    assert workspace.query("SELECT status FROM engage_default._engage_runs") == [("failed",)]
