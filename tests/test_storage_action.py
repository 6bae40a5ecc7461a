"""`type: storage_action` (SPEC §5, Storage Actions) on a real DuckDB file: the table's layout, mapped
columns, the payload column, the three activations, several audiences and destinations in one table,
append-only writes, replays, resyncs, and the settings refused before anything runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from engage import diff
from engage.config import load_project
from engage.connector import Delivery
from engage.console import NoopConsole
from engage.messages import MessageContext, WarehouseRows
from engage.state import StateStore
from engage.sync import materialize_current, prepare
from tests.conftest import Workspace, at

# Line 8 is the first destination after `mem`.
HEADER = """\
spaces:
  default:
    warehouse: {type: duckdb, path: .engage/warehouse.duckdb}
    sources: [website]
    definitions: audiences
    destinations:
      mem: {type: memory, send: [track]}
"""
BUYERS = """
    kind: audience
    name: Buyers
    include_anonymous: true
    condition: {performed: Order Completed, within: 30d}
"""
READERS = """
    kind: audience
    name: Readers
    condition: {performed: Page Viewed, within: 30d}
"""
REVENUE = """
    kind: trait
    name: Revenue
    type: sum
    event: Order Completed
    property: revenue
"""
FIRST, SECOND, THIRD = "2024-03-02T00:00:00", "2024-05-02T00:00:00", "2024-05-10T00:00:00"
STORAGE = "{type: storage_action, table: audience_activity"


def _configure(workspace: Workspace, *destinations: str) -> None:
    workspace.write_config(HEADER + "".join(f"      {d}\n" for d in destinations))


def _rows(workspace: Workspace, table: str = "audience_activity") -> list[dict[str, Any]]:
    """The table's rows in the order of their transitions."""
    with workspace.connect() as con:
        result = con.execute(
            f'SELECT * FROM "default"."{table}"'
            " ORDER BY timestamp, audience_key, user_id, anonymous_id, event, id"
        )
        names = [d[0] for d in result.description or []]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def _transitions(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["audience_key"], r["user_id"], r["membership"], r["timestamp"].isoformat()) for r in rows]


def _buy(
    workspace: Workspace, when: str, user_id: str | None = None, anonymous_id: str | None = None
) -> None:
    workspace.track("Order Completed", when, user_id=user_id, anonymous_id=anonymous_id, revenue=5.0)


def _schemas(workspace: Workspace) -> set[str]:
    return {s for (s,) in workspace.query("SELECT schema_name FROM information_schema.schemata")}


# -- the table ----------------------------------------------------------------------------------------------
def test_the_table_has_the_fixed_columns_then_the_mapped_ones_then_the_payload(workspace: Workspace) -> None:
    mapping = "{member: user_id, joined: timestamp, now_in: membership}"
    _configure(workspace, f"bi: {STORAGE}, schema: default, mapping: {mapping}}}")
    workspace.define(BUYERS)
    _buy(workspace, "2024-03-01T00:00:00", user_id="u1")
    workspace.sync(FIRST)
    layout = workspace.query(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'default' AND table_name = 'audience_activity' ORDER BY ordinal_position"
    )
    assert layout == [
        ("id", "VARCHAR"),
        ("event", "VARCHAR"),
        ("audience_key", "VARCHAR"),
        ("user_id", "VARCHAR"),
        ("anonymous_id", "VARCHAR"),
        ("membership", "BOOLEAN"),
        ("timestamp", "TIMESTAMP"),
        ("received_at", "TIMESTAMP"),
        ("uuid_ts", "TIMESTAMP"),
        ("member", "VARCHAR"),
        ("joined", "TIMESTAMP"),
        ("now_in", "BOOLEAN"),
        ("payload", "VARCHAR"),
    ]
    (row,) = _rows(workspace)
    assert row["received_at"] == row["uuid_ts"] and row["received_at"] > datetime(2025, 1, 1)


FIELDS = (
    "message_id", "event", "audience_key", "computation_id", "profile_id", "user_id", "anonymous_id",
    "membership", "timestamp",
)  # fmt: skip


def test_a_mapping_lifts_each_field_of_the_payload_to_its_column(workspace: Workspace) -> None:
    mapping = ", ".join(f"f_{field}: {field}" for field in FIELDS)
    _configure(workspace, f"bi: {STORAGE}, mapping: {{{mapping}}}}}")
    workspace.define(BUYERS)
    _buy(workspace, "2024-03-01T00:00:00", user_id="u1")
    _buy(workspace, "2024-03-01T00:00:00", anonymous_id="a1")
    workspace.sync(FIRST)
    rows = _rows(workspace)
    assert len(rows) == 2
    for row in rows:
        payload = json.loads(row["payload"])
        assert row["f_message_id"] == row["id"] == payload["messageId"]
        assert row["f_event"] == row["event"] == "Audience Membership Changed"
        assert row["f_audience_key"] == row["audience_key"] == "buyers"
        assert row["f_computation_id"] == payload["context"]["personas"]["computation_id"]
        assert row["f_computation_id"].startswith("aud_")
        assert row["f_profile_id"] == (row["user_id"] or row["anonymous_id"])
        assert (row["f_user_id"], row["f_anonymous_id"]) == (row["user_id"], row["anonymous_id"])
        assert row["f_membership"] is row["membership"] is True
        assert row["f_timestamp"] == row["timestamp"] == at(FIRST)
    assert {(r["user_id"], r["anonymous_id"], r["f_profile_id"]) for r in rows} == {
        ("u1", None, "u1"),
        (None, "a1", "a1"),
    }


def test_a_mapping_added_later_adds_its_column(workspace: Workspace) -> None:
    _configure(workspace, f"bi: {STORAGE}}}")
    workspace.define(BUYERS)
    _buy(workspace, "2024-03-01T00:00:00", user_id="u1")
    workspace.sync(FIRST)
    _configure(workspace, f"bi: {STORAGE}, mapping: {{member: user_id}}}}")
    workspace.sync(SECOND)
    assert [(r["membership"], r["member"]) for r in _rows(workspace)] == [(True, None), (False, "u1")]


# -- the payload --------------------------------------------------------------------------------------------
def test_the_payload_column_is_the_transitions_track_call_as_json(workspace: Workspace) -> None:
    _configure(workspace, f"bi: {STORAGE}, activation: Audience Entered}}")
    workspace.define(BUYERS)
    _buy(workspace, "2024-03-01T00:00:00", user_id="u1")
    workspace.sync(FIRST)
    (row,) = _rows(workspace)
    payload = json.loads(row["payload"])
    sent_at = payload.pop("sentAt")
    assert payload == {
        "type": "track",
        "event": "Audience Entered",
        "messageId": row["id"],
        "userId": "u1",
        "timestamp": "2024-03-02T00:00:00.000Z",
        "context": {
            "library": {"name": "engage", "version": "0.1.0"},
            "personas": {
                "computation_class": "audience",
                "computation_id": diff.computation_id("default", "buyers", "audience"),
                "computation_key": "buyers",
                "namespace": "spa_default",
                "space_id": "default",
            },
        },
        "properties": {"audience_key": "buyers", "buyers": True},
    }
    assert datetime.fromisoformat(sent_at) > datetime(2025, 1, 1, tzinfo=UTC)


ODD_IDS = ['u"1\\', "tab\there", "line\nbreak\r", "ctrl\x01\x1f", "é🙂"]


def test_the_payload_is_the_call_other_destinations_get_whatever_the_ids_hold(workspace: Workspace) -> None:
    """Ids with quotes, backslashes and control characters come back intact; an anonymous member has no
    `userId`, a user no `anonymousId`. Only the message id (per destination) and sentAt differ."""
    _configure(workspace, f"bi: {STORAGE}, activation: Audience Entered}}")
    workspace.define(BUYERS)
    for user_id in ODD_IDS:
        _buy(workspace, "2024-03-01T00:00:00", user_id=user_id)
    _buy(workspace, "2024-03-01T00:00:00", anonymous_id='anon"\n1')
    workspace.sync(FIRST)
    sent = {(m.get("userId"), m.get("anonymousId")): m for m in workspace.sent()}
    rows = _rows(workspace)
    assert {r["user_id"] for r in rows} == {*ODD_IDS, None}
    for row in rows:
        payload = json.loads(row["payload"])
        track = sent[(row["user_id"], row["anonymous_id"])]
        assert payload["messageId"] == row["id"] != track["messageId"]
        assert {**payload, "messageId": None, "sentAt": None} == {**track, "messageId": None, "sentAt": None}


# -- activations, audiences, destinations -------------------------------------------------------------------
def test_each_activation_writes_its_transitions(workspace: Workspace) -> None:
    _configure(
        workspace,
        "entries: {type: storage_action, table: entries, activation: Audience Entered}",
        "exits: {type: storage_action, table: exits, activation: Audience Exited}",
        "changes: {type: storage_action, table: changes, activation: Audience Membership Changed}",
    )
    workspace.define(BUYERS)
    _buy(workspace, "2024-03-01T00:00:00", user_id="u1")
    _buy(workspace, "2024-03-01T00:00:00", user_id="u2")
    workspace.sync(FIRST)
    _buy(workspace, "2024-04-20T00:00:00", user_id="u2")
    workspace.sync(SECOND)  # u1 exits, u2 stays
    entered = [("buyers", "u1", True, FIRST), ("buyers", "u2", True, FIRST)]
    exited = [("buyers", "u1", False, SECOND)]
    assert _transitions(_rows(workspace, "entries")) == entered
    assert _transitions(_rows(workspace, "exits")) == exited
    assert _transitions(_rows(workspace, "changes")) == entered + exited
    events = {
        (r["membership"], r["event"]) for t in ("entries", "exits", "changes") for r in _rows(workspace, t)
    }
    assert events == {
        (True, "Audience Entered"),
        (False, "Audience Exited"),
        (True, "Audience Membership Changed"),
        (False, "Audience Membership Changed"),
    }
    for row in _rows(workspace, "changes"):
        assert json.loads(row["payload"])["properties"] == {
            "audience_key": "buyers",
            "buyers": row["membership"],
        }


def test_several_audiences_go_into_one_table_and_traits_do_not(workspace: Workspace) -> None:
    _configure(workspace, f"bi: {STORAGE}}}")
    only_mem = "\n    destinations: [mem]\n"
    elsewhere = READERS.replace("name: Readers", "name: Elsewhere") + only_mem
    workspace.define("---".join([BUYERS, READERS, REVENUE, elsewhere]))
    _buy(workspace, "2024-03-01T00:00:00", user_id="u1")
    workspace.page("2024-03-01T00:00:00", user_id="u2", name="Home")
    workspace.sync(FIRST)
    assert _transitions(_rows(workspace)) == [("buyers", "u1", True, FIRST), ("readers", "u2", True, FIRST)]
    assert {m["properties"].get("audience_key") for m in workspace.sent()} >= {"elsewhere"}


def test_two_destinations_write_one_table_each_its_own_rows(workspace: Workspace) -> None:
    _configure(
        workspace,
        "joins: {type: storage_action, table: shared, activation: Audience Entered, mapping: {member: user_id}}",
        "moves: {type: storage_action, table: shared, mapping: {moved_at: timestamp}}",
    )
    workspace.define(BUYERS)
    _buy(workspace, "2024-03-01T00:00:00", user_id="u1")
    workspace.sync(FIRST)
    workspace.sync(SECOND)
    rows = _rows(workspace, "shared")
    assert [(r["event"], r["membership"], r["member"], r["moved_at"]) for r in rows] == [
        ("Audience Entered", True, "u1", None),
        ("Audience Membership Changed", True, None, at(FIRST)),
        ("Audience Membership Changed", False, None, at(SECOND)),
    ]
    assert len({r["id"] for r in rows}) == 3


# -- append-only, replays, resyncs --------------------------------------------------------------------------
def test_every_sync_appends_and_nothing_is_updated(workspace: Workspace) -> None:
    _configure(workspace, f"bi: {STORAGE}}}")
    workspace.define(BUYERS)
    _buy(workspace, "2024-03-01T00:00:00", user_id="u1")
    workspace.sync(FIRST)
    first = _rows(workspace)
    workspace.sync(SECOND)  # u1 exits
    second = _rows(workspace)
    _buy(workspace, "2024-05-09T00:00:00", user_id="u1")
    workspace.sync(THIRD)  # u1 enters again
    third = _rows(workspace)
    assert second[: len(first)] == first and third[: len(second)] == second
    assert _transitions(third) == [
        ("buyers", "u1", True, FIRST),
        ("buyers", "u1", False, SECOND),
        ("buyers", "u1", True, THIRD),
    ]
    assert len({r["id"] for r in third}) == 3
    workspace.sync(THIRD, full_refresh=True)  # recomputes; nothing changed, nothing written
    assert _rows(workspace) == third


def _hand_over_next_run(workspace: Workspace, destination: str, as_of: str) -> int:
    """Hands `destination` the delivery the next run at `as_of` will make (same changes, same message ids)
    without advancing anything, as a run that dies after writing on an engine without transactions
    leaves it; returns how many rows it wrote."""
    workspace.flush()
    with prepare(load_project(workspace.root), "default") as prepared:
        warehouse = prepared.warehouse
        compiled = prepared.compile(at(as_of))
        materialize_current(warehouse, compiled, NoopConsole())
        warehouse.create_temp_table(diff.CURRENT_LONG, diff.current_long(compiled.definitions))
        state = StateStore(warehouse, "engage_default")
        changes = diff.changes("default", compiled.definitions, state.previous(), state.next_generation())
        warehouse.create_temp_table(diff.CHANGES, changes)
        (connector,) = [c for c in prepared.connectors if c.destination == destination]
        now = datetime.now(UTC).replace(tzinfo=None)
        context = MessageContext("default", at(as_of), now, connector.config.events)
        delivery = Delivery(
            destination=destination,
            schema="default",
            send=frozenset(),
            definitions=compiled.definitions,
            context=context,
            warehouse=warehouse,
            changes=diff.CHANGES,
            rows=WarehouseRows(diff.CHANGES, compiled.definitions, context, now),
        )
        connector.prepare(delivery)
        with warehouse.transaction():
            return connector.deliver(delivery)


def test_a_replayed_run_writes_nothing_twice(workspace: Workspace) -> None:
    """A run whose rows were written before it died is run again with the same message ids: the rows are
    there, none is written twice."""
    _configure(workspace, f"bi: {STORAGE}}}")
    workspace.define(BUYERS)
    _buy(workspace, "2024-03-01T00:00:00", user_id="u1")
    workspace.sync(FIRST)
    _buy(workspace, "2024-04-20T00:00:00", user_id="u2")
    assert _hand_over_next_run(workspace, "bi", SECOND) == 2  # u1 exits, u2 enters; the run dies
    written = _rows(workspace)
    assert _hand_over_next_run(workspace, "bi", SECOND) == 0
    workspace.sync(SECOND)  # the run again, for real
    assert _rows(workspace) == written
    assert _transitions(written) == [
        ("buyers", "u1", True, FIRST),
        ("buyers", "u1", False, SECOND),
        ("buyers", "u2", True, SECOND),
    ]


def test_a_resync_appends_the_whole_current_audience(workspace: Workspace) -> None:
    """`engage sync --resync bi`: every current member enters again, in new rows; nothing else changes."""
    _configure(workspace, f"bi: {STORAGE}}}")
    workspace.define(BUYERS)
    for user_id in ("u1", "u2", "u3"):
        _buy(workspace, "2024-03-01T00:00:00", user_id=user_id)
    workspace.sync(FIRST)
    for user_id in ("u2", "u4"):
        _buy(workspace, "2024-04-20T00:00:00", user_id=user_id)
    workspace.sync(SECOND)  # u1 and u3 exit, u4 enters
    before = _rows(workspace)
    result = workspace.cli("sync", "--space", "default", "--as-of", SECOND, "--resync", "bi")
    assert result.exit_code == 0, result.output
    after = _rows(workspace)
    kept = {r["id"] for r in before}
    assert [r for r in after if r["id"] in kept] == before
    resent = [r for r in after if r["id"] not in kept]
    assert _transitions(resent) == [("buyers", "u2", True, SECOND), ("buyers", "u4", True, SECOND)]


# -- settings refused before anything runs ------------------------------------------------------------------
REFUSED = [
    pytest.param(f"{STORAGE.replace('audience_activity', 'other_schema.audience_activity')}}}", "table",
                 "names another schema", id="cross_schema_table"),
    pytest.param(f"{STORAGE.replace('audience_activity', 'engage_default._engage_state')}}}", "table",
                 "names another schema", id="engage_schema_table"),
    pytest.param("{type: storage_action, table: '\"Activity\"'}", "table", "not a bare table name",
                 id="quoted_table"),
    pytest.param(f"{STORAGE}, schema: analytics}}", "schema", "only into the space's schema 'default'",
                 id="foreign_schema"),
    pytest.param(f"{STORAGE}, mapping: {{joined: joined_at}}}}", "mapping.joined", "unknown field 'joined_at'",
                 id="unknown_mapping_field"),
    pytest.param(f"{STORAGE}, mapping: {{user_id: profile_id}}}}", "mapping.user_id",
                 "one of the table's own columns", id="mapped_column_collides"),
    pytest.param(f"{STORAGE}, activation: Audience Joined}}", "activation", "Audience Membership Changed",
                 id="unknown_activation"),
    pytest.param("{type: storage_action}", "table", "Field required", id="no_table"),
    pytest.param(f"{STORAGE}, send: [track]}}", "send", "does not apply", id="classic_setting"),
]  # fmt: skip


@pytest.mark.parametrize(("destination", "field", "says"), REFUSED)
def test_a_refused_setting_exits_2_naming_it_and_writes_nothing(
    workspace: Workspace, destination: str, field: str, says: str
) -> None:
    _configure(workspace, f"bi: {destination}")
    workspace.define(BUYERS)
    _buy(workspace, "2024-03-01T00:00:00", user_id="u1")
    result = workspace.cli("sync", "--space", "default")
    assert result.exit_code == 2, result.output
    assert f"config/engage.yaml:8: spaces.default.destinations.bi.{field}: " in result.output
    assert says in result.output
    assert "Traceback" not in result.output
    assert not _schemas(workspace) & {"default", "other_schema", "analytics", "engage_default"}
    assert workspace.sent() == []


def test_an_existing_table_with_other_column_types_is_refused(workspace: Workspace) -> None:
    _configure(workspace, f"bi: {STORAGE}, mapping: {{joined: timestamp}}}}")
    workspace.define(BUYERS)
    _buy(workspace, "2024-03-01T00:00:00", user_id="u1")
    workspace.sync(FIRST)
    _configure(workspace, f"bi: {STORAGE}, mapping: {{joined: user_id}}}}")
    result = workspace.cli("sync", "--space", "default", "--as-of", SECOND)
    assert result.exit_code == 2, result.output
    assert "config/engage.yaml:8: spaces.default.destinations.bi.mapping.joined: " in result.output
    assert "default.audience_activity.joined is timestamp; this destination writes varchar" in result.output
    assert len(_rows(workspace)) == 1
