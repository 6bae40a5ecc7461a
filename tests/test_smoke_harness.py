from __future__ import annotations

from tests.conftest import Workspace


def test_first_sync_sends_members_and_a_rerun_sends_nothing(workspace: Workspace) -> None:
    workspace.define("""
        kind: audience
        name: Buyers
        condition: {performed: Order Completed}
    """)
    workspace.track("Order Completed", "2024-01-10T00:00:00", user_id="u1", revenue=10.0)
    workspace.track("Order Completed", "2024-01-11T00:00:00", anonymous_id="a1", revenue=10.0)
    first = workspace.sync("2024-02-01T00:00:00")
    assert [(d.key, d.entered) for d in first.definitions] == [("buyers", 1)]
    assert {m["userId"] for m in workspace.sent()} == {"u1"}
    again = workspace.sync("2024-02-01T00:00:00")
    assert again.entered == again.exited == again.changed == 0
    assert len(workspace.sent()) == 2
