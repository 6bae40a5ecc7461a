"""Per-destination delivery: each destination's own cursor, catch-up after an outage, the full state for a
new destination or a newly routed definition, rejected calls, selective sync, resync, rate limit, and
secrets kept out of every output."""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from engage.connector import Connector, Delivery, Pace
from tests.conftest import Workspace
from tests.test_sync import BUYERS, REVENUE

SECRET = "sk_live_do_not_print_4f9a"


class FlakyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr | None = None
    reject_user: str | None = None


class FlakyConnector(Connector):
    """A destination outside the warehouse that a test takes down and brings back. It keeps what it took,
    as `memory` does, refuses the calls of `reject_user` for good, and while `down` fails with an error
    that names its key (which engage must never show)."""

    name = "flaky_test"
    Options = FlakyOptions
    down: ClassVar[bool] = False
    received: ClassVar[list[dict[str, Any]]] = []

    def deliver(self, delivery: Delivery) -> int:
        assert isinstance(self.options, FlakyOptions)
        if self.down:
            key = self.options.api_key.get_secret_value() if self.options.api_key else ""
            raise ConnectionError(f"cannot reach the API with key {key}")
        taken = 0
        for batch in delivery.payloads(100):
            for payload in batch:
                if payload.get("userId") == self.options.reject_user:
                    delivery.reject(payload, "HTTP 400: invalid user")
                    continue
                self.received.append(payload)
                taken += 1
        return taken


@pytest.fixture(autouse=True)
def _flaky_is_up() -> Any:
    FlakyConnector.down = False
    FlakyConnector.received = []
    yield
    FlakyConnector.down = False
    FlakyConnector.received = []


def config(destinations: str) -> str:
    return f"""
        spaces:
          default:
            warehouse: {{type: duckdb, path: .engage/warehouse.duckdb}}
            sources: [website]
            definitions: audiences
            destinations:
        {destinations}
        """


BASE = """
              warehouse: {type: duckdb, send: [identify, track]}
              mem: {type: memory, send: [identify, track]}"""
FLAKY = """
              flaky: {type: flaky_test, api_key: "${FLAKY_KEY}"}"""


def order(workspace: Workspace, user: str, day: str, revenue: float) -> None:
    workspace.track("Order Completed", f"2024-03-{day}T00:00:00", user_id=user, revenue=revenue)


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["messageId"] for m in messages]


def state_calls(workspace: Workspace, as_of: str) -> set[tuple[str, str, Any]]:
    """(user, trait, value) of every identify a first sync at `as_of` sends: members true, values."""
    current = workspace.current(as_of)
    found = {(user, "buyers", True) for user, member in current["buyers"].items() if member}
    found |= {(user, "revenue", value) for user, value in current["revenue"].items() if value is not None}
    return found


def identifies(messages: list[dict[str, Any]]) -> set[tuple[str, str, Any]]:
    return {
        (m["userId"], key, value)
        for m in messages
        if m["type"] == "identify"
        for key, value in m["traits"].items()
    }


@pytest.fixture
def space(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("FLAKY_KEY", SECRET)
    workspace.define(BUYERS + "---" + REVENUE)
    return workspace


def test_a_destination_added_after_two_syncs_starts_with_the_full_state(space: Workspace) -> None:
    a_destination_added_after_two_syncs_starts_with_the_full_state(space)


def a_destination_added_after_two_syncs_starts_with_the_full_state(space: Workspace) -> None:
    """Also run on PostgreSQL (tests/engines/test_delivery_postgres.py)."""
    space.write_config(config(BASE))
    order(space, "u1", "01", 2.0)
    order(space, "u2", "01", 3.0)
    space.sync("2024-03-02T00:00:00")
    order(space, "u3", "03", 4.0)
    space.sync("2024-03-04T00:00:00")
    before = len(space.sent())
    space.write_config(config(BASE + FLAKY))
    order(space, "u1", "10", 1.0)
    summary = space.sync("2024-04-01T00:00:00")  # u2 exits (30 days), u1 stays, u1's revenue changes
    assert (summary.entered, summary.exited, summary.changed) == (0, 1, 1)

    third = space.sent()[before:]
    assert identifies(third) == {("u2", "buyers", False), ("u1", "revenue", 3.0)}, "mem: only the changes"
    late = FlakyConnector.received
    assert identifies(late) == state_calls(space, "2024-04-01T00:00:00"), "flaky: the whole state"
    assert ("u2", "buyers", True) not in identifies(late) and len(late) == 2 * len(identifies(late))
    # A member's call keeps the id of the call that made it a member (run 1 for u1), so a state sent again
    # after a failure deduplicates downstream.
    first_u1_buyers = [
        m for m in space.sent()[:before] if m["userId"] == "u1" and "buyers" in m.get("traits", {})
    ]
    late_u1_buyers = [m for m in late if m["userId"] == "u1" and "buyers" in m.get("traits", {})]
    assert ids(late_u1_buyers) == ids(first_u1_buyers)
    assert late_u1_buyers[0]["timestamp"] == "2024-04-01T00:00:00.000Z"
    assert space.sync("2024-04-01T00:00:00").unchanged_since and FlakyConnector.received == late


def test_a_destination_down_for_three_runs_receives_every_missed_call_in_order_once(space: Workspace) -> None:
    a_destination_down_for_three_runs_receives_every_missed_call_in_order_once(space)


def a_destination_down_for_three_runs_receives_every_missed_call_in_order_once(space: Workspace) -> None:
    """Also run on PostgreSQL (tests/engines/test_delivery_postgres.py)."""
    space.write_config(config(BASE + FLAKY))
    order(space, "u1", "01", 2.0)
    space.sync("2024-03-02T00:00:00")
    assert len(FlakyConnector.received) == 4
    FlakyConnector.down = True
    mem_before = len(space.sent())
    for day, user in (("03", "u2"), ("05", "u3"), ("07", "u4")):
        order(space, user, day, 1.0)
        summary = space.sync(f"2024-03-{day}T12:00:00")
        assert summary.entered == 1 and summary.destinations["mem"] == 4
        assert list(summary.failed) == ["flaky"] and SECRET not in summary.failed["flaky"]
    missed = space.sent()[mem_before:]
    assert len(missed) == 12 and len(FlakyConnector.received) == 4
    status = json.loads(space.cli("status", "--space", "default", "--json").output)["destinations"]
    flaky = next(d for d in status if d["destination"] == "flaky")
    assert (flaky["generation"], flaky["lag"], flaky["last_status"]) == (1, 3, "failed")
    assert space.query("SELECT count(*) FROM engage_default._engage_state") == [(8,)], "the state advanced"

    FlakyConnector.down = False
    summary = space.sync("2024-03-07T12:00:00")  # no new data: nothing computed, the missed runs delivered
    assert summary.unchanged_since is not None and summary.destinations["flaky"] == 12
    assert ids(FlakyConnector.received[4:]) == ids(missed), "every missed call, in run order"
    assert FlakyConnector.received[4:] == [
        {**m, "sentAt": r["sentAt"]} for m, r in zip(missed, FlakyConnector.received[4:], strict=True)
    ]
    assert max(Counter(ids(FlakyConnector.received)).values()) == 1, "each once"
    space.sync("2024-03-07T12:00:00")
    assert len(FlakyConnector.received) == 16
    assert space.sent()[mem_before:] == missed, "the others were never held back nor resent"
    status = json.loads(space.cli("status", "--space", "default", "--json").output)["destinations"]
    assert {d["destination"]: d["lag"] for d in status} == {"warehouse": 0, "mem": 0, "flaky": 0}
    assert space.query("SELECT count(*) FROM engage_default._engage_outbox") == [(0,)], "taken by all"


def test_the_outbox_keeps_a_run_until_the_last_destination_has_taken_it(space: Workspace) -> None:
    space.write_config(config(BASE + FLAKY))
    order(space, "u1", "01", 2.0)
    space.sync("2024-03-02T00:00:00")
    FlakyConnector.down = True
    order(space, "u2", "03", 1.0)
    space.sync("2024-03-04T00:00:00")
    assert space.query("SELECT DISTINCT generation FROM engage_default._engage_outbox") == [(2,)]
    FlakyConnector.down = False
    space.sync("2024-03-04T00:00:00")
    assert space.query("SELECT count(*) FROM engage_default._engage_outbox") == [(0,)]


def test_a_call_refused_for_good_is_recorded_and_holds_back_nothing(space: Workspace) -> None:
    space.write_config(config(BASE + FLAKY.replace("}", ", reject_user: u2}")))
    order(space, "u1", "01", 2.0)
    order(space, "u2", "01", 3.0)
    summary = space.sync("2024-03-02T00:00:00")
    assert summary.rejected == {"flaky": 4} and not summary.failed
    assert {m["userId"] for m in FlakyConnector.received} == {"u1"}
    rejected = space.query(
        "SELECT destination, type, definition_key, user_id, error FROM engage_default._engage_rejected ORDER BY 2, 3"
    )
    assert rejected == [
        ("flaky", kind, key, "u2", "HTTP 400: invalid user")
        for kind in ("identify", "track")
        for key in ("buyers", "revenue")
    ]
    order(space, "u3", "03", 1.0)
    space.sync("2024-03-04T00:00:00")
    assert {m["userId"] for m in FlakyConnector.received} == {"u1", "u3"}, "the cursor moved past them"
    status = json.loads(space.cli("status", "--space", "default", "--json").output)["destinations"]
    assert next(d for d in status if d["destination"] == "flaky")["rejected"] == 4
    text = space.cli("status", "--space", "default").output
    assert "destinations" in text and "flaky" in text


SELECTIVE = """
              warehouse:
                type: duckdb
                selective_sync: {tables: {exclude: [users, audience_entered]}}
              mem: {type: memory, selective_sync: {definitions: {include: ["buy*"]}}}
              flaky:
                type: flaky_test
                selective_sync: {definitions: {exclude: [buyers]}, tables: {exclude: [tracks]}}
              exits: {type: jsonl, path: exits.jsonl, selective_sync: {tables: {include: [audience_exited]}}}"""


def test_selective_sync_includes_and_excludes_definitions_and_tables(space: Workspace) -> None:
    selective_sync_includes_and_excludes_definitions_and_tables(space)


def selective_sync_includes_and_excludes_definitions_and_tables(space: Workspace) -> None:
    """Also run on PostgreSQL (tests/engines/test_delivery_postgres.py)."""
    space.write_config(config(SELECTIVE))
    order(space, "u1", "01", 2.0)
    space.sync("2024-03-02T00:00:00")
    space.sync("2024-04-01T00:00:00")  # u1 exits
    assert {m["context"]["personas"]["computation_key"] for m in space.sent()} == {"buyers"}
    assert [m["type"] for m in space.sent()] == ["identify", "track", "identify", "track"]
    assert {(m["type"], m["context"]["personas"]["computation_key"]) for m in FlakyConnector.received} == {
        ("identify", "revenue")
    }
    exits = [json.loads(line) for line in (space.root / "exits.jsonl").read_text().splitlines()]
    assert [(m["type"], m["event"]) for m in exits] == [("track", "Audience Exited")]
    tables = {
        t
        for (t,) in space.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'engage_default'"
            " AND table_name NOT LIKE '\\_engage%' ESCAPE '\\'"
        )
    }
    assert tables == {"identifies", "tracks", "audience_exited", "trait_computed"}


@pytest.mark.parametrize(
    ("selection", "field"),
    [
        (
            "{definitions: {include: [buyers, nope]}}",
            "selective_sync.definitions.include[1]: unknown definition",
        ),
        ("{tables: {exclude: [pages]}}", "selective_sync: Value error, unknown table 'pages'"),
    ],
)
def test_selective_sync_naming_what_does_not_exist_is_refused(
    space: Workspace, selection: str, field: str
) -> None:
    space.write_config(config(f"\n              mem: {{type: memory, selective_sync: {selection}}}"))
    order(space, "u1", "01", 2.0)
    result = space.cli("sync", "--space", "default")
    assert result.exit_code == 2, result.output
    assert "config/engage.yaml:" in result.output and field in result.output
    assert space.query(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'engage_default'"
    ) == [(0,)]


def test_a_definition_newly_routed_to_a_destination_receives_its_full_state(space: Workspace) -> None:
    only_buyers = "\n              mem: {type: memory, selective_sync: {definitions: {exclude: [revenue]}}}"
    space.write_config(config(only_buyers))
    order(space, "u1", "01", 2.0)
    order(space, "u2", "01", 3.0)
    space.sync("2024-03-02T00:00:00")
    order(space, "u1", "03", 1.0)
    space.sync("2024-03-04T00:00:00")
    assert {m["context"]["personas"]["computation_key"] for m in space.sent()} == {"buyers"}
    before = len(space.sent())
    space.write_config(config("\n              mem: {type: memory}"))
    order(space, "u3", "05", 5.0)
    space.sync("2024-03-06T00:00:00")
    new = space.sent()[before:]
    assert identifies(new) == {
        ("u3", "buyers", True),  # buyers: only the change
        ("u1", "revenue", 3.0), ("u2", "revenue", 3.0), ("u3", "revenue", 5.0),  # revenue: everything
    }  # fmt: skip


def test_resync_sends_a_destination_the_current_state_again_with_new_ids(space: Workspace) -> None:
    space.write_config(config(BASE))
    order(space, "u1", "01", 2.0)
    space.sync("2024-03-02T00:00:00")
    first = space.sent()
    rows = space.query("SELECT count(*) FROM engage_default.identifies")
    result = space.cli(
        "sync", "--space", "default", "--as-of", "2024-03-02T00:00:00", "--resync", "mem", "--json"
    )
    assert result.exit_code == 0, result.output
    again = space.sent()[len(first) :]
    assert identifies(again) == identifies(first) == {("u1", "buyers", True), ("u1", "revenue", 2.0)}
    assert not set(ids(again)) & set(ids(first)), "new calls: downstream must not drop them as replays"
    assert space.query("SELECT count(*) FROM engage_default.identifies") == rows, "only the named one"
    wrong = space.cli("sync", "--space", "default", "--resync", "nope")
    assert wrong.exit_code == 2 and "has no destination 'nope'" in wrong.output


def test_a_failed_destination_exits_1_and_its_key_never_shows(
    space: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    space.write_config(config(BASE + FLAKY))
    order(space, "u1", "01", 2.0)
    FlakyConnector.down = True
    with caplog.at_level(logging.DEBUG):
        as_json = space.cli("sync", "--space", "default", "--as-of", "2024-03-02T00:00:00", "--json")
        text = space.cli("sync", "--space", "default", "--as-of", "2024-03-02T00:00:00")
        status = space.cli("status", "--space", "default", "--json")
        status_text = space.cli("status", "--space", "default")
    assert as_json.exit_code == 1 and text.exit_code == 1
    assert json.loads(as_json.output)["failed"] == {
        "flaky": "destination flaky: ConnectionError: cannot reach the API with key ***"
    }
    assert "flaky failed" in text.output
    errors = space.query("SELECT error FROM engage_default._engage_deliveries WHERE status = 'failed'")
    assert errors and all("***" in e for (e,) in errors)
    for output in (as_json.output, text.output, status.output, status_text.output, caplog.text, str(errors)):
        assert SECRET not in output
    assert "api_key='***'" in repr(space_config(space)), "nor in a repr of the config"


def space_config(space: Workspace) -> Any:
    from engage.config import load_project

    return load_project(space.root).space("default").config.destinations["flaky"]


def test_the_rate_limit_spaces_batches_to_the_configured_calls_per_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        clock[0] += seconds

    monkeypatch.setattr("engage.connector.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("engage.connector.time.sleep", sleep)
    pace = Pace(rate=50)
    for _ in range(3):
        pace.before(100)  # 100 calls at 50/s: each next batch may leave 2 s after the previous one
    assert slept == [2.0, 2.0]
    unlimited = Pace()
    unlimited.before(10_000)
    unlimited.before(10_000)
    assert slept == [2.0, 2.0]
