"""Runs, diffs, state and the engage_<space> outputs (SPEC §3–5), on a real DuckDB file."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engage.connector import Delivery
from engage.errors import RunError
from engage.state import StateStore
from engage_connectors.memory import MemoryConnector
from tests.conftest import Workspace

BUYERS = """
    kind: audience
    name: Buyers
    condition:
      performed: Order Completed
      within: 30d
"""
REVENUE = """
    kind: trait
    name: Revenue
    type: sum
    event: Order Completed
    property: revenue
"""


def calls(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == kind]


def test_first_run_sends_every_member_and_every_non_null_value(workspace: Workspace) -> None:
    workspace.define(BUYERS + "---" + REVENUE)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=10.0)
    workspace.track("Order Completed", "2024-03-02T00:00:00", user_id="u1", revenue=5.5)
    workspace.track("Order Completed", "2024-01-01T00:00:00", user_id="u2", revenue=1.0)
    workspace.page("2024-03-01T00:00:00", anonymous_id="a1", name="Home")
    summary = workspace.sync("2024-03-10T00:00:00")
    counts = {d.key: (d.entered, d.exited, d.changed, d.size) for d in summary.definitions}
    assert counts == {"buyers": (1, 0, 0, 1), "revenue": (0, 0, 2, 2)}
    identifies = calls(workspace.sent(), "identify")
    assert sorted((m["userId"], json.dumps(m["traits"])) for m in identifies) == [
        ("u1", json.dumps({"buyers": True})),
        ("u1", json.dumps({"revenue": 15.5})),
        ("u2", json.dumps({"revenue": 1.0})),
    ]
    tracks = calls(workspace.sent(), "track")
    assert sorted((m["event"], m["userId"], m["properties"].get("buyers")) for m in tracks) == [
        ("Audience Entered", "u1", True),
        ("Trait Computed", "u1", None),
        ("Trait Computed", "u2", None),
    ]


def test_later_runs_send_only_changes_and_a_rerun_sends_nothing(workspace: Workspace) -> None:
    workspace.define(BUYERS + "---" + REVENUE)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=10.0)
    workspace.track("Order Completed", "2024-03-05T00:00:00", user_id="u2", revenue=3.0)
    workspace.sync("2024-03-10T00:00:00")
    before = len(workspace.sent())
    # u1 ages out of the 30-day window; u2 buys again.
    workspace.track("Order Completed", "2024-04-02T00:00:00", user_id="u2", revenue=4.0)
    summary = workspace.sync("2024-04-05T00:00:00")
    new = workspace.sent()[before:]
    assert {d.key: (d.entered, d.exited, d.changed) for d in summary.definitions} == {
        "buyers": (0, 1, 0),
        "revenue": (0, 0, 1),
    }
    assert sorted((m["type"], m["userId"], json.dumps(m.get("traits") or m["properties"])) for m in new) == [
        ("identify", "u1", json.dumps({"buyers": False})),
        ("identify", "u2", json.dumps({"revenue": 7.0})),
        ("track", "u1", json.dumps({"audience_key": "buyers", "buyers": False})),
        ("track", "u2", json.dumps({"trait_key": "revenue", "revenue": 7.0})),
    ]
    assert [m["event"] for m in calls(new, "track")] == ["Audience Exited", "Trait Computed"]
    rerun = workspace.sync("2024-04-05T00:00:00")
    assert (rerun.entered, rerun.exited, rerun.changed) == (0, 0, 0)
    assert len(workspace.sent()) == before + len(new)


def test_a_trait_value_that_becomes_null_is_sent_once_as_null(workspace: Workspace) -> None:
    workspace.define("""
        kind: trait
        name: Recent Average
        type: avg
        event: Order Completed
        property: revenue
        within: 7d
    """)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=8.0)
    workspace.sync("2024-03-02T00:00:00")
    workspace.sync("2024-03-20T00:00:00")
    workspace.sync("2024-03-21T00:00:00")
    values = [m["traits"]["recent_average"] for m in calls(workspace.sent(), "identify")]
    assert values == [8.0, None]


def test_float_sums_within_relative_tolerance_are_not_changes(workspace: Workspace) -> None:
    workspace.define(REVENUE)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=0.1, row_id="o1")
    workspace.track("Order Completed", "2024-03-01T00:00:01", user_id="u1", revenue=0.2, row_id="o2")
    workspace.sync("2024-03-10T00:00:00")
    assert calls(workspace.sent(), "identify")[0]["traits"]["revenue"] == 0.30000000000000004
    with workspace.connect() as con:
        con.execute("UPDATE website.order_completed SET revenue = CASE id WHEN 'o1' THEN 0.3 ELSE 0 END")
    summary = workspace.sync("2024-03-11T00:00:00", full_refresh=True)
    assert summary.unchanged_since is None
    assert summary.changed == 0


def test_rename_reformat_and_description_do_not_resend(workspace: Workspace) -> None:
    workspace.define("""
        kind: audience
        name: Buyers
        key: buyers
        condition: {performed: Order Completed, within: 7d}
    """)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=1.0)
    workspace.sync("2024-03-02T00:00:00")
    workspace.define("""
        # reformatted, renamed, described, and the window written in hours
        kind: audience
        name: People Who Bought Recently
        key: buyers
        description: anyone with an order this week
        condition:
          performed: Order Completed
          within: 168h
    """)
    summary = workspace.sync("2024-03-02T00:00:00")
    assert (summary.entered, summary.exited, summary.changed) == (0, 0, 0)


def test_a_logic_change_resends_everything(workspace: Workspace) -> None:
    workspace.define("""
        kind: audience
        name: Buyers
        condition: {performed: Order Completed, within: 7d}
    """)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=1.0)
    workspace.track("Order Completed", "2024-02-01T00:00:00", user_id="u2", revenue=1.0)
    workspace.sync("2024-03-02T00:00:00")
    workspace.define("""
        kind: audience
        name: Buyers
        condition: {performed: Order Completed, within: 60d}
    """)
    summary = workspace.sync("2024-03-02T00:00:00")
    assert [(d.key, d.entered, d.exited) for d in summary.definitions] == [("buyers", 2, 0)]
    entered = [m["userId"] for m in calls(workspace.sent(), "identify")]
    assert entered == ["u1", "u1", "u2"]
    stored = workspace.query("SELECT DISTINCT fingerprint FROM engage_default._engage_state")
    assert len(stored) == 1


def test_a_removed_definition_sends_no_exits_and_keeps_its_state(workspace: Workspace) -> None:
    path = workspace.define(BUYERS, name="buyers.yml")
    workspace.define(REVENUE, name="revenue.yml")
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=1.0)
    workspace.sync("2024-03-02T00:00:00")
    path.unlink()
    summary = workspace.sync("2024-06-01T00:00:00")
    assert [d.key for d in summary.definitions] == ["revenue"]
    assert summary.exited == 0
    kept = workspace.query(
        "SELECT profile_id FROM engage_default._engage_state WHERE definition_key = 'buyers'"
    )
    assert kept == [("u1",)]


def test_outputs_land_in_engage_schema_with_segment_columns(workspace: Workspace) -> None:
    workspace.define(BUYERS + "---" + REVENUE)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.5)
    workspace.track("Order Completed", "2024-03-01T00:00:00", anonymous_id="a1", revenue=1.0)
    workspace.sync("2024-03-02T00:00:00")
    identifies = workspace.query(
        "SELECT user_id, anonymous_id, buyers, revenue, context_personas_computation_key,"
        " context_personas_computation_class, timestamp FROM engage_default.identifies ORDER BY 1, 5"
    )
    assert [row[:6] for row in identifies] == [
        ("u1", None, True, None, "buyers", "audience"),
        ("u1", None, None, 2.5, "revenue", "trait"),
        (None, "a1", None, 1.0, "revenue", "trait"),
    ]
    assert {str(row[6]) for row in identifies} == {"2024-03-02 00:00:00"}
    assert workspace.query("SELECT id, buyers, revenue FROM engage_default.users") == [("u1", True, 2.5)]
    entered = workspace.query(
        "SELECT user_id, audience_key, buyers, event, event_text FROM engage_default.audience_entered"
    )
    assert entered == [("u1", "buyers", True, "audience_entered", "Audience Entered")]
    computed = workspace.query(
        "SELECT user_id, anonymous_id, trait_key, revenue FROM engage_default.trait_computed ORDER BY 1"
    )
    assert computed == [("u1", None, "revenue", 2.5), (None, "a1", "revenue", 1.0)]
    events = workspace.query("SELECT event, count(*) FROM engage_default.tracks GROUP BY 1 ORDER BY 1")
    assert events == [("audience_entered", 1), ("trait_computed", 2)]
    ids = workspace.query(
        "SELECT id FROM engage_default.identifies UNION ALL SELECT id FROM engage_default.tracks"
    )
    sent_ids = sorted(m["messageId"] for m in workspace.sent())
    assert sorted(i for (i,) in ids) == sent_ids


def test_users_upsert_keeps_the_latest_value_of_every_key(workspace: Workspace) -> None:
    workspace.define(BUYERS + "---" + REVENUE)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    workspace.sync("2024-03-02T00:00:00")
    workspace.track("Order Completed", "2024-03-03T00:00:00", user_id="u1", revenue=3.0)
    workspace.sync("2024-03-04T00:00:00")
    assert workspace.query("SELECT id, buyers, revenue FROM engage_default.users") == [("u1", True, 5.0)]
    workspace.sync("2024-05-01T00:00:00")  # the audience window passes: buyers → false, revenue stays
    assert workspace.query("SELECT id, buyers, revenue FROM engage_default.users") == [("u1", False, 5.0)]
    exited = workspace.query("SELECT user_id, buyers FROM engage_default.audience_exited")
    assert exited == [("u1", False)]


def test_a_new_definition_adds_its_column(workspace: Workspace) -> None:
    workspace.define(BUYERS, name="buyers.yml")
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    workspace.sync("2024-03-02T00:00:00")
    columns = {r[0] for r in workspace.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'engage_default'"
        " AND table_name = 'identifies'")}  # fmt: skip
    assert "buyers" in columns and "revenue" not in columns
    workspace.define(REVENUE, name="revenue.yml")
    workspace.sync("2024-03-02T00:00:00")
    types = dict(workspace.query(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'engage_default'"
        " AND table_name = 'identifies'"))  # fmt: skip
    assert types["revenue"] == "DOUBLE" and types["buyers"] == "BOOLEAN"
    rows = workspace.query("SELECT buyers, revenue FROM engage_default.identifies ORDER BY received_at")
    assert rows == [(True, None), (None, 2.0)]


def test_a_key_becomes_a_column_only_when_its_first_non_null_value_arrives(workspace: Workspace) -> None:
    workspace.define("""
        kind: trait
        name: Best Coupon
        type: last
        event: Order Completed
        property: coupon
    """)
    workspace.track(
        "Order Completed", "2024-03-01T00:00:00", user_id="u1", types={"coupon": "VARCHAR"}, coupon=None
    )
    workspace.sync("2024-03-02T00:00:00")
    columns = {r[0] for r in workspace.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'engage_default'")}  # fmt: skip
    assert "best_coupon" not in columns


def test_long_strings_are_truncated_to_512_characters_in_tables_not_in_calls(workspace: Workspace) -> None:
    workspace.define("""
        kind: trait
        name: Note
        type: last
        event: Order Completed
        property: note
    """)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", note="x" * 600)
    workspace.sync("2024-03-02T00:00:00")
    assert workspace.query("SELECT length(note) FROM engage_default.identifies") == [(512,)]
    assert len(calls(workspace.sent(), "identify")[0]["traits"]["note"]) == 600


def test_dry_run_reports_counts_and_writes_nothing(workspace: Workspace) -> None:
    workspace.define(BUYERS)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    summary = workspace.sync("2024-03-02T00:00:00", dry_run=True)
    assert summary.entered == 1 and summary.dry_run
    assert workspace.sent() == []
    schemas = workspace.query(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'engage%'"
    )
    assert schemas == []
    assert workspace.sync("2024-03-02T00:00:00").entered == 1


def test_a_run_that_fails_before_its_state_advanced_sends_nothing_and_the_next_one_finishes_it(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace.define(BUYERS)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    original = StateStore.advance

    def fail(*args: object, **kwargs: object) -> None:
        raise RunError("simulated crash before the state advanced")

    monkeypatch.setattr(StateStore, "advance", fail)
    with pytest.raises(RunError):
        workspace.sync("2024-03-02T00:00:00")
    assert workspace.sent() == [], "no call leaves before the state has advanced"
    # The in-warehouse rows rolled back with the state; the changes wait in the outbox; the failure is in
    # the run log.
    tables = workspace.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'engage_default'"
    )
    for (table,) in tables:
        if table not in ("_engage_runs", "_engage_lease", "_engage_outbox"):
            assert workspace.query(f"SELECT count(*) FROM engage_default.{table}") == [(0,)], table
    assert workspace.query("SELECT holder FROM engage_default._engage_lease") == [(None,)], "released"
    assert workspace.query("SELECT definition_key, call FROM engage_default._engage_outbox") == [
        ("buyers", "entered")
    ]
    assert workspace.query("SELECT status FROM engage_default._engage_runs") == [("failed",)]
    monkeypatch.setattr(StateStore, "advance", original)
    workspace.sync("2024-03-02T00:00:00")
    assert [m["type"] for m in workspace.sent()] == ["identify", "track"]
    assert workspace.query("SELECT count(*) FROM engage_default.identifies")[0][0] == 1
    assert workspace.query("SELECT count(*) FROM engage_default._engage_outbox") == [(0,)]


def test_message_ids_are_deterministic_so_a_destination_that_failed_midway_replays_the_same_calls(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace.define(BUYERS)
    for user in ("u1", "u2", "u3"):
        workspace.track("Order Completed", "2024-03-01T00:00:00", user_id=user, revenue=2.0)
    original = MemoryConnector.deliver

    def fail_midway(self: MemoryConnector, delivery: Delivery) -> int:
        for batch in delivery.payloads(1):  # one change per batch: takes the first, then fails
            MemoryConnector.sent.setdefault(self.destination, []).extend(batch)
            raise ConnectionError("simulated outage")
        return 0

    monkeypatch.setattr(MemoryConnector, "deliver", fail_midway)
    summary = workspace.sync("2024-03-02T00:00:00")
    assert summary.failed == {"mem": "destination mem: ConnectionError: simulated outage"}
    assert summary.entered == 3, "the state advanced"
    first_attempt = [m["messageId"] for m in workspace.sent()]
    assert len(first_attempt) == 2
    monkeypatch.setattr(MemoryConnector, "deliver", original)
    workspace.sync("2024-03-02T00:00:00")  # nothing new: the destination catches up on the run it missed
    replay = [m["messageId"] for m in workspace.sent()][len(first_attempt) :]
    assert len(replay) == 6 and replay[:2] == first_attempt
    assert workspace.query("SELECT count(*) FROM engage_default.identifies")[0][0] == 3
    assert workspace.query("SELECT count(*) FROM engage_default._engage_outbox") == [(0,)]


def test_message_ids_differ_between_runs_for_a_new_transition(workspace: Workspace) -> None:
    workspace.define(BUYERS)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    workspace.sync("2024-03-02T00:00:00")
    workspace.sync("2024-05-02T00:00:00")
    workspace.track("Order Completed", "2024-05-03T00:00:00", user_id="u1", revenue=2.0)
    workspace.sync("2024-05-04T00:00:00")
    ids = [m["messageId"] for m in workspace.sent()]
    assert len(ids) == 6 and len(set(ids)) == 6


def test_call_context_and_configured_event_names(workspace: Workspace) -> None:
    workspace.write_config("""
        spaces:
          default:
            warehouse: {type: duckdb, path: .engage/warehouse.duckdb}
            sources: [website]
            definitions: audiences
            destinations:
              warehouse:
                type: duckdb
                send: [track]
                events: {audience_entered: Joined Segment, audience_exited: Left Segment}
              mem: {type: memory, send: [identify]}
    """)
    workspace.define(BUYERS)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    workspace.sync("2024-03-02T00:00:00")
    (message,) = workspace.sent()
    assert message["type"] == "identify" and message["timestamp"] == "2024-03-02T00:00:00.000Z"
    personas = message["context"]["personas"]
    assert personas["computation_class"] == "audience" and personas["computation_key"] == "buyers"
    assert personas["space_id"] == "default" and personas["namespace"] == "spa_default"
    assert personas["computation_id"].startswith("aud_")
    rows = workspace.query("SELECT event, event_text, audience_key FROM engage_default.joined_segment")
    assert rows == [("joined_segment", "Joined Segment", "buyers")]
    tables = {r[0] for r in workspace.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'engage_default'")}  # fmt: skip
    assert "identifies" not in tables and "users" not in tables


def test_definitions_route_to_their_listed_destinations_only(workspace: Workspace) -> None:
    workspace.define(
        BUYERS.replace("name: Buyers", "name: Buyers\n    destinations: [warehouse]") + "---" + REVENUE
    )
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    workspace.sync("2024-03-02T00:00:00")
    assert {m["context"]["personas"]["computation_key"] for m in workspace.sent()} == {"revenue"}
    assert workspace.query("SELECT count(*) FROM engage_default.audience_entered") == [(1,)]


def test_jsonl_destination_writes_segment_payloads(workspace: Workspace) -> None:
    workspace.write_config("""
        spaces:
          default:
            warehouse: {type: duckdb, path: .engage/warehouse.duckdb}
            sources: [website]
            definitions: audiences
            destinations:
              file: {type: jsonl, path: out/calls.jsonl, batch_size: 1}
    """)
    workspace.define(BUYERS + "---" + REVENUE)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u2", revenue=3.0)
    workspace.sync("2024-03-02T00:00:00")
    lines = (workspace.root / "out" / "calls.jsonl").read_text().splitlines()
    payloads = [json.loads(line) for line in lines]
    assert len(payloads) == 8
    assert {p["type"] for p in payloads} == {"identify", "track"}
    assert all(p["messageId"] and p["userId"] in ("u1", "u2") for p in payloads)


def test_cli_sync_json_and_status(workspace: Workspace) -> None:
    workspace.define(BUYERS)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    result = workspace.cli("sync", "--space", "default", "--as-of", "2024-03-02T00:00:00", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["entered"] == 1 and summary["status"] == "succeeded"
    assert summary["definitions"][0]["key"] == "buyers"
    status = workspace.cli("status", "--space", "default", "--json")
    runs = json.loads(status.output)["runs"]
    assert [(r["status"], r["entered"], r["generation"]) for r in runs] == [("succeeded", 1, 1)]
    assert runs[0]["summary"]["buyers"]["entered"] == 1


def test_cli_dry_run_prints_counts(workspace: Workspace) -> None:
    workspace.define(BUYERS)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    result = workspace.cli("sync", "--space", "default", "--as-of", "2024-03-02T00:00:00", "--dry-run")
    assert result.exit_code == 0
    assert "dry run" in result.output and "buyers" in result.output
    assert workspace.sent() == []


def test_a_failing_sql_trait_is_a_run_error_that_leaves_state_untouched(workspace: Workspace) -> None:
    workspace.define(BUYERS, name="buyers.yml")
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    workspace.sync("2024-03-02T00:00:00")
    workspace.define("""
        kind: sql_trait
        name: Dupes
        sql: SELECT user_id, 1 AS one FROM website.order_completed UNION ALL SELECT user_id, 2 FROM website.order_completed
    """, name="dupes.yml")  # fmt: skip
    result = workspace.cli("sync", "--space", "default", "--as-of", "2024-06-02T00:00:00")
    assert result.exit_code == 1
    assert "audiences/dupes.yml:4" in result.output and "duplicate user_id" in result.output
    assert workspace.query("SELECT count(*) FROM engage_default._engage_state") == [(1,)]
    assert workspace.query("SELECT count(*) FROM engage_default.audience_exited") == [(0,)]


def test_rows_without_any_identifier_belong_to_no_profile(workspace: Workspace) -> None:
    workspace.define(BUYERS.replace("within: 30d", "at_most: 5") + "\n    include_anonymous: true\n")
    workspace.track("Order Completed", "2024-03-01T00:00:00", revenue=1.0)
    workspace.track("Order Completed", "2024-03-01T00:00:00", anonymous_id="a1", revenue=1.0)
    assert workspace.sync("2024-03-02T00:00:00").entered == 1
    assert workspace.sync("2024-03-02T00:00:00").entered == 0
    assert {m["anonymousId"] for m in workspace.sent()} == {"a1"}


FAST = BUYERS + "---" + REVENUE


def test_a_run_that_cannot_change_anything_stops_after_its_checks(workspace: Workspace) -> None:
    workspace.define(FAST)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    first = workspace.sync("2024-03-10T00:00:00")
    again = workspace.sync("2024-03-10T00:00:00")
    assert again.unchanged_since == first.run_id
    assert {d.key: d.size for d in again.definitions} == {"buyers": 1, "revenue": 1}
    # Later, but no event crossed `as_of` or `as_of - 30d` in between: still nothing to do.
    later = workspace.sync("2024-03-20T00:00:00")
    assert later.unchanged_since == first.run_id
    statuses = workspace.query("SELECT status FROM engage_default._engage_runs ORDER BY started_at")
    assert statuses == [("succeeded",), ("unchanged",), ("unchanged",)]


def test_crossing_a_window_boundary_recomputes(workspace: Workspace) -> None:
    workspace.define(FAST)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    workspace.sync("2024-03-10T00:00:00")
    workspace.sync("2024-03-30T23:59:59")  # the order is 29.99 days old: still a buyer
    crossed = workspace.sync("2024-03-31T00:00:01")
    assert crossed.unchanged_since is None and crossed.exited == 1


def test_new_rows_a_new_definition_or_full_refresh_recompute(workspace: Workspace) -> None:
    workspace.define(FAST, name="fast.yml")
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    workspace.sync("2024-03-10T00:00:00")
    workspace.page("2024-01-01T00:00:00", anonymous_id="a1", name="Home")  # old, but a new row
    assert workspace.sync("2024-03-10T00:00:00").unchanged_since is None
    workspace.define("kind: trait\nname: Pages\ntype: count\nevent: Page Viewed\n", name="pages.yml")
    added = workspace.sync("2024-03-10T00:00:00")
    assert added.unchanged_since is None and added.changed == 1
    assert workspace.sync("2024-03-10T00:00:00", full_refresh=True).unchanged_since is None
    assert workspace.sync("2024-03-10T00:00:00").unchanged_since is not None


def test_spaces_with_sql_traits_always_recompute(workspace: Workspace) -> None:
    workspace.define("""
        kind: sql_trait
        name: Orders
        sql: SELECT user_id, COUNT(*) AS orders FROM website.order_completed GROUP BY user_id
    """)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    workspace.sync("2024-03-10T00:00:00")
    assert workspace.sync("2024-03-10T00:00:00").unchanged_since is None


def test_a_missing_warehouse_file_is_reported_and_not_created(workspace: Workspace) -> None:
    workspace.define(BUYERS)
    database = workspace.root / ".engage" / "warehouse.duckdb"
    database.unlink()
    result = workspace.cli("sync", "--space", "default")
    assert result.exit_code == 2
    assert (
        "config/engage.yaml:3: spaces.default.warehouse.path" in result.output
        and "engage demo" in result.output
    )
    assert not database.exists()


def test_cli_reports_an_unchanged_run_and_full_refresh_recomputes(workspace: Workspace) -> None:
    workspace.define(FAST)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    args = ("sync", "--space", "default", "--as-of", "2024-03-10T00:00:00")
    assert json.loads(workspace.cli(*args, "--json").output)["status"] == "succeeded"
    unchanged = workspace.cli(*args)
    assert unchanged.exit_code == 0 and "nothing can have changed since run" in unchanged.output
    assert json.loads(workspace.cli(*args, "--json").output)["status"] == "unchanged"
    refreshed = json.loads(workspace.cli(*args, "--full-refresh", "--json").output)
    assert refreshed["status"] == "succeeded" and refreshed["changed"] == 0


def test_sync_and_status_tell_when_results_next_change_with_no_new_data(workspace: Workspace) -> None:
    workspace.define(
        """\
        kind: audience
        name: Weekly Visitors
        condition: {performed: Product Viewed, within: 7d}
        """
    )
    workspace.track("Product Viewed", "2024-05-01T10:00:00", user_id="u1")
    workspace.track("Product Viewed", "2024-05-03T00:00:00", user_id="u2")
    workspace.track("Product Viewed", "2024-05-20T00:00:00", user_id="u3")  # loaded early, visible later
    first = workspace.sync("2024-05-04T00:00:00")
    assert (first.entered, first.next_change) == (2, "2024-05-08T10:00:00")
    status = workspace.cli("status", "--space", "default")
    assert "next change with no new data: 2024-05-08T10:00:00 UTC" in status.output, status.output
    just_before = workspace.sync("2024-05-08T09:59:59")
    assert just_before.unchanged_since == first.run_id, "nothing crosses before the next change"
    at_change = workspace.sync("2024-05-08T10:00:00")
    assert (at_change.exited, at_change.next_change) == (1, "2024-05-10T00:00:00")
    last = workspace.sync("2024-05-10T00:00:00")
    assert (last.exited, last.next_change) == (1, "2024-05-20T00:00:00"), "the future-dated view is next"


def test_the_run_log_records_each_stage_s_duration(workspace: Workspace) -> None:
    workspace.define(BUYERS)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=2.0)
    workspace.sync("2024-03-02T00:00:00")
    result = workspace.cli("status", "--space", "default", "--json")
    (run,) = json.loads(result.output)["runs"]
    stages = run["stages"]
    expected = {"compile", "check for new data", "compute audiences and traits", "diff against state"}
    assert expected <= set(stages), stages
    assert all(isinstance(s, float) and s >= 0 for s in stages.values()), stages
    text = workspace.cli("status", "--space", "default").output
    assert "stages of the latest run: compile " in text.replace("\n", " "), text
