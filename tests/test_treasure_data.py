"""The `treasure_data` destination against a local stand-in for Treasure Data's API (tests/td_standin.py).

End to end, a sync imports its calls through td-client into the stand-in, which decodes the `msgpack.gz`
bodies and keeps the rows per database and table. At unit level, `TreasureDataConnector.deliver` gets a
delivery whose payloads a test chooses (engage's own `Call` payloads), to place a refused row exactly.
Backoff is zero through the options, so retries cost no time.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engage.config import EventNames, load_project
from engage.connector import Payload
from engage.errors import ConfigError
from engage.messages import Call, MessageContext
from engage.warehouse.duckdb import DuckDBWarehouse
from engage_connectors.treasure_data import TreasureDataConnector, TreasureDataError, to_row
from tests.conftest import Workspace
from tests.given import GivenDelivery, given_delivery
from tests.td_standin import Fault, StandIn

APIKEY = "1234/td-secret-0f9e8d7c6b5a"
DATABASE = "engage_td"
STANDARD = {  # every row's columns besides the context's (`event` and `event_text` on track rows only)
    "time", "id", "user_id", "anonymous_id", "timestamp", "original_timestamp", "sent_at", "received_at",
    "event", "event_text",
}  # fmt: skip
FAST = {"backoff_base": 0, "max_retries": 3, "timeout": 5}
AS_OF = "2024-03-10T00:00:00"
CONTEXT = MessageContext("default", datetime(2024, 3, 10), datetime(2024, 3, 10, 0, 5), EventNames())

DEFINITIONS = """\
kind: audience
name: Buyers
condition: {performed: Order Completed, within: 30d}
---
kind: trait
name: Revenue
key: LifetimeRevenue
type: sum
event: Order Completed
property: revenue
---
kind: trait
name: Products
type: unique_list
event: Order Completed
property: sku
"""


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(APIKEY) as server:
        yield server


@pytest.fixture(autouse=True)
def apikey_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TD_API_KEY", APIKEY)


def configure(workspace: Workspace, endpoint: str, **options: Any) -> None:
    """A project that sends to the memory destination `mem` and to `td` (Treasure Data) at `endpoint`."""
    td = {
        "type": "treasure_data",
        "apikey": "${TD_API_KEY}",
        "endpoint": endpoint,
        "database": DATABASE,
        "send": ["identify"],
        **FAST,
        **options,
    }
    workspace.write_config(
        f"""\
        spaces:
          default:
            warehouse: {{type: duckdb, path: .engage/warehouse.duckdb}}
            sources: [website]
            definitions: audiences
            destinations:
              mem: {{type: memory, send: [identify, track]}}
              td: {json.dumps(td)}
        """
    )


def connector(workspace: Workspace, endpoint: str, **options: Any) -> TreasureDataConnector:
    """The `td` destination's connector, built from the project's config as a sync builds it."""
    configure(workspace, endpoint, **options)
    space = load_project(workspace.root).space("default")
    return TreasureDataConnector("td", space.config.destinations["td"], space)


def land_orders(workspace: Workspace) -> None:
    workspace.define(DEFINITIONS)
    workspace.track("Order Completed", "2024-03-01T00:00:00", user_id="u1", revenue=10.0, sku="A-1")
    workspace.track("Order Completed", "2024-03-02T00:00:00", user_id="u1", revenue=5.5, sku="B-2")
    workspace.track("Order Completed", "2024-01-01T00:00:00", user_id="u2", revenue=1.0, sku="A-1")
    workspace.track("Order Completed", "2024-03-05T00:00:00", anonymous_id="a1", revenue=2.0, sku="C-3")


def sent(workspace: Workspace, kind: str) -> list[Payload]:
    return [m for m in workspace.sent() if m["type"] == kind]


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ids = Counter(row["id"] for row in rows)
    assert all(count == 1 for count in ids.values()), ids  # every call lands exactly once
    return {row["id"]: row for row in rows}


def described(rows: Iterable[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Each row as (user_id, anonymous_id, its traits or properties as JSON), sorted; "" for no id."""
    return sorted((r.get("user_id", ""), r.get("anonymous_id", ""), json.dumps(values(r))) for r in rows)


def values(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its standard and context columns: the traits or properties it carries."""
    return {k: v for k, v in row.items() if k not in STANDARD and not k.startswith("context_")}


# -- end to end ---------------------------------------------------------------------------------------


def test_a_first_sync_creates_the_database_and_imports_every_member_and_trait_as_identifies_rows(
    workspace: Workspace, standin: StandIn
) -> None:
    configure(workspace, standin.endpoint)
    land_orders(workspace)
    summary = workspace.sync(AS_OF)

    assert summary.failed == {}
    identifies = sent(workspace, "identify")
    assert summary.destinations["td"] == len(identifies) == 7
    assert standin.databases() == {DATABASE}
    assert set(standin.tables(DATABASE)) == {"identifies"}  # send: [identify]
    rows = by_id(standin.rows(DATABASE, "identifies"))
    assert set(rows) == {call["messageId"] for call in identifies}
    assert described(rows.values()) == [  # u2's order is outside the 30 days; a1 is anonymous
        ("", "a1", json.dumps({"lifetime_revenue": 2.0})),
        ("", "a1", json.dumps({"products": '["C-3"]'})),
        ("u1", "", json.dumps({"buyers": True})),
        ("u1", "", json.dumps({"lifetime_revenue": 15.5})),
        ("u1", "", json.dumps({"products": '["A-1","B-2"]'})),
        ("u2", "", json.dumps({"lifetime_revenue": 1.0})),
        ("u2", "", json.dumps({"products": '["A-1"]'})),
    ]
    call = next(c for c in identifies if c.get("userId") == "u1" and "buyers" in c["traits"])
    personas = call["context"]["personas"]
    assert rows[call["messageId"]] == {
        "time": int(datetime.fromisoformat("2024-03-10T00:00:00+00:00").timestamp()),
        "id": call["messageId"],
        "user_id": "u1",
        "timestamp": "2024-03-10T00:00:00.000Z",
        "original_timestamp": "2024-03-10T00:00:00.000Z",
        "sent_at": rows[call["messageId"]]["sent_at"],  # each destination's delivery has its own
        "received_at": rows[call["messageId"]]["received_at"],
        "context_library_name": "engage",
        "context_library_version": call["context"]["library"]["version"],
        "context_personas_computation_class": "audience",
        "context_personas_computation_id": personas["computation_id"],
        "context_personas_computation_key": "buyers",
        "context_personas_namespace": "spa_default",
        "context_personas_space_id": "default",
        "buyers": True,
    }
    assert all(datetime.fromisoformat(rows[call["messageId"]][c]) for c in ("sent_at", "received_at"))

    # td-client's requests: the database and table made on the way, one import, the key in a TD1 header
    requests = standin.requests
    assert [(r.method, r.path, r.status) for r in requests[:3]] == [
        ("GET", f"/v3/table/list/{DATABASE}", 404),
        ("POST", f"/v3/database/create/{DATABASE}", 200),
        ("POST", f"/v3/table/create/{DATABASE}/identifies/log", 200),
    ]
    imports = requests[3:]
    assert [r.endpoint for r in imports] == ["import"]  # one batch of 7 calls, one table
    assert imports[0].path.startswith(f"/v3/table/import_with_id/{DATABASE}/identifies/")
    assert imports[0].path.endswith("/msgpack.gz")
    assert imports[0].rows == 7
    assert {r.authorization for r in requests} == {f"TD1 {APIKEY}"}


def test_a_later_sync_imports_only_the_changes_and_an_exit_is_false(
    workspace: Workspace, standin: StandIn
) -> None:
    configure(workspace, standin.endpoint)
    land_orders(workspace)
    workspace.sync(AS_OF)
    first = by_id(standin.rows(DATABASE, "identifies"))
    # u1 ages out of the 30-day window; u2 buys again.
    workspace.track("Order Completed", "2024-04-02T00:00:00", user_id="u2", revenue=4.0, sku="A-1")
    workspace.sync("2024-04-05T00:00:00")

    rows = by_id(standin.rows(DATABASE, "identifies"))
    new = [row for key, row in rows.items() if key not in first]
    assert described(new) == [
        ("u1", "", json.dumps({"buyers": False})),
        ("u2", "", json.dumps({"buyers": True})),
        ("u2", "", json.dumps({"lifetime_revenue": 5.0})),
    ]
    assert {r["timestamp"] for r in new} == {"2024-04-05T00:00:00.000Z"}
    assert [r.method for r in standin.requests].count("GET") == 2  # one look at the tables per delivery
    assert [r.endpoint for r in standin.requests].count("create_table") == 1


def test_track_calls_go_to_one_table_per_event_with_their_properties_as_columns(
    workspace: Workspace, standin: StandIn
) -> None:
    configure(
        workspace,
        standin.endpoint,
        send=["identify", "track"],
        events={"audience_entered": "Joined Segment"},
    )
    land_orders(workspace)
    workspace.sync(AS_OF)

    tables = standin.tables(DATABASE)
    assert set(tables) == {"identifies", "joined_segment", "trait_computed"}
    tracks = sent(workspace, "track")  # `mem` names the events as by default
    entered = by_id(tables["joined_segment"].rows)
    assert set(entered) == {c["messageId"] for c in tracks if c["event"] == "Audience Entered"}
    assert {(r["event"], r["event_text"], json.dumps(values(r))) for r in entered.values()} == {
        ("joined_segment", "Joined Segment", json.dumps({"audience_key": "buyers", "buyers": True}))
    }
    computed = by_id(tables["trait_computed"].rows)
    assert set(computed) == {c["messageId"] for c in tracks if c["event"] == "Trait Computed"}
    assert sorted(r["trait_key"] for r in computed.values()) == ["LifetimeRevenue"] * 3 + ["products"] * 3
    columns = tables["trait_computed"].columns
    assert {"trait_key", "lifetime_revenue", "products", "event", "event_text"} <= columns
    assert {"event", "event_text"}.isdisjoint(tables["identifies"].columns)


def test_transient_errors_are_retried_and_every_row_lands_once(
    workspace: Workspace, standin: StandIn
) -> None:
    configure(workspace, standin.endpoint, batch_size=2)
    land_orders(workspace)
    standin.fail(Fault(status=500, endpoint="list_tables"))
    standin.fail(Fault(status=429, endpoint="create_table"))
    standin.fail(Fault(status=500, times=2))  # the first import, twice
    standin.fail(Fault(status=503, after_storing=True))  # stored, but the answer is lost
    summary = workspace.sync(AS_OF)

    assert summary.failed == {}
    rows = by_id(standin.rows(DATABASE, "identifies"))
    assert set(rows) == {c["messageId"] for c in sent(workspace, "identify")}
    statuses = [(r.endpoint, r.status) for r in standin.requests]
    assert statuses[:8] == [
        ("list_tables", 500),
        ("list_tables", 404),
        ("create_database", 200),
        ("create_table", 429),
        ("create_table", 200),
        ("import", 500),
        ("import", 500),
        ("import", 503),
    ]
    imports = [r for r in standin.requests if r.endpoint == "import"]
    assert len(imports) == 4 + 3  # 4 batches of up to 2 changes, plus 3 retries
    assert imports[3].path == imports[2].path  # the retried import keeps its unique id: TD drops it


def test_an_import_whose_answer_times_out_is_sent_again_and_stored_once(
    workspace: Workspace, standin: StandIn, warehouse: DuckDBWarehouse
) -> None:
    standin.fail(Fault(hang=2.0, after_storing=True))  # stored, then no answer within the timeout
    target = connector(workspace, standin.endpoint, timeout=0.3)
    imported = target.deliver(delivery(warehouse, [identify(n) for n in range(3)]))

    assert imported == 3
    assert sorted(by_id(standin.rows(DATABASE, "identifies"))) == ["msg-0", "msg-1", "msg-2"]
    imports = [r for r in standin.requests if r.endpoint == "import"]
    assert [r.status for r in imports] == [None, 200]
    assert imports[0].path == imports[1].path


def test_a_destination_that_failed_gets_the_same_calls_and_stores_them_once(
    workspace: Workspace, standin: StandIn
) -> None:
    configure(workspace, standin.endpoint)
    land_orders(workspace)
    workspace.sync(AS_OF)
    workspace.track("Order Completed", "2024-04-02T00:00:00", user_id="u2", revenue=4.0, sku="A-1")
    standin.fail(Fault(status=503, after_storing=True, times=4))  # every attempt of the run's import
    failed = workspace.sync("2024-04-05T00:00:00")
    assert "td" in failed.failed
    assert "HTTP 503" in failed.failed["td"] and "4 attempts" in failed.failed["td"]
    stored = len(standin.rows(DATABASE, "identifies"))

    caught_up = workspace.sync("2024-04-06T00:00:00")  # the failed run's calls again, same message ids

    assert caught_up.failed == {}
    rows = by_id(standin.rows(DATABASE, "identifies"))
    assert len(rows) == stored  # the first attempt had stored them; the resent import was dropped
    assert set(rows) == {c["messageId"] for c in sent(workspace, "identify")}
    paths = [r.path for r in standin.requests if r.endpoint == "import"]
    assert paths[-1] == paths[-2]


def test_a_bad_key_fails_the_delivery_with_the_status_and_without_the_key(
    workspace: Workspace, standin: StandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "1234/td-wrong-a1b2c3d4e5f6"
    monkeypatch.setenv("TD_API_KEY", wrong)
    configure(workspace, standin.endpoint)
    land_orders(workspace)
    caplog.set_level(logging.DEBUG)
    summary = workspace.sync(AS_OF)

    error = summary.failed["td"]
    assert "destination td" in error and "HTTP 401" in error
    assert wrong not in error and wrong not in caplog.text
    assert [r.status for r in standin.requests] == [401]  # no retry of a refused key
    assert standin.databases() == set()


def test_deliver_raises_on_a_bad_key_without_showing_it(
    workspace: Workspace, standin: StandIn, warehouse: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "1234/td-wrong-a1b2c3d4e5f6"
    monkeypatch.setenv("TD_API_KEY", wrong)
    target = connector(workspace, standin.endpoint)

    with pytest.raises(TreasureDataError) as raised:
        target.deliver(delivery(warehouse, [identify(1)]))

    assert "destination td" in str(raised.value) and "HTTP 401" in str(raised.value)
    assert wrong not in str(raised.value) and wrong not in repr(raised.value)
    assert raised.value.__cause__ is None


def test_the_key_never_shows_in_logs_or_repr(
    workspace: Workspace, standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    target = connector(workspace, standin.endpoint)
    land_orders(workspace)
    standin.fail(Fault(status=500))
    workspace.sync(AS_OF)

    assert "authorization" in caplog.text  # td-client's debug lines print the headers …
    assert APIKEY not in caplog.text  # … with the key redacted
    lines = [
        r for r in caplog.records if r.name == "engage.connectors.treasure_data" and r.levelname == "INFO"
    ]
    assert [r.getMessage().split(" in ")[0] for r in lines] == [
        f"destination td: 7 rows imported into {DATABASE} (identifies=7)"
    ]
    assert "1 retries" in lines[0].getMessage()
    for shown in (repr(target), repr(target.options), str(target.options)):
        assert APIKEY not in shown


# -- rows, refusals and options -------------------------------------------------------------------------


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    opened = DuckDBWarehouse(tmp_path / "unit.duckdb")
    yield opened
    opened.close()


def delivery(warehouse: DuckDBWarehouse, payloads: list[Payload]) -> GivenDelivery:
    return given_delivery(warehouse, "td", CONTEXT, payloads)


def profile_call(number: int, traits: dict[str, Any]) -> Call:
    return Call(
        definition_key="profile",
        kind="sql_trait",
        computation_id="tra_0123456789abcdef01234567",
        transition="computed",
        profile_id=f"u{number}",
        user_id=f"u{number}",
        anonymous_id=None,
        identify_id=f"msg-{number}",
        track_id=f"trk-{number}",
        traits=traits,
    )


def identify(number: int, traits: dict[str, Any] | None = None) -> Payload:
    return profile_call(number, traits or {"plan": "pro"}).identify(CONTEXT)


def test_rows_td_refuses_are_rejected_and_the_others_land(
    workspace: Workspace, standin: StandIn, warehouse: DuckDBWarehouse
) -> None:
    standin.fail(Fault(status=400, message_ids=frozenset({"msg-3"}), times=None))
    target = delivery(warehouse, [identify(n) for n in range(6)])
    imported = connector(workspace, standin.endpoint).deliver(target)

    assert imported == 5
    assert sorted(by_id(standin.rows(DATABASE, "identifies"))) == [
        "msg-0",
        "msg-1",
        "msg-2",
        "msg-4",
        "msg-5",
    ]
    (rejection,) = target.rejections
    assert (rejection.message_id, rejection.user_id, rejection.definition_key) == ("msg-3", "u3", "profile")
    assert rejection.error.startswith("HTTP 400: Import failed:")


def test_calls_td_cannot_take_are_rejected_without_a_request(
    workspace: Workspace, standin: StandIn, warehouse: DuckDBWarehouse
) -> None:
    events = EventNames(trait_computed="TC")  # snake_case "tc": shorter than TD's 3-character minimum
    track = profile_call(1, {"plan": "pro"}).track(
        MessageContext("default", CONTEXT.as_of, CONTEXT.sent_at, events)
    )
    too_big = identify(2, {"visits": 2**64})
    target = delivery(warehouse, [identify(0), track, too_big])
    imported = connector(workspace, standin.endpoint).deliver(target)

    assert imported == 1
    assert set(standin.tables(DATABASE)) == {"identifies"}
    assert sorted(by_id(standin.rows(DATABASE, "identifies"))) == ["msg-0"]
    assert sorted((r.message_id, r.error) for r in target.rejections) == [
        ("msg-2", "a value does not fit in msgpack (integer over 64 bits)"),
        ("trk-1", "'tc' is not a valid Treasure Data table name"),
    ]


def test_traits_are_flattened_snake_cased_and_never_overwrite_a_standard_column() -> None:
    traits = {
        "Address": {"streetName": "6th Street", "geo": {"lat": 1.5}, "unit": None},
        "favoriteColors": ["red", "blue"],
        "user_id": "spoofed",
        "event": "spoofed",
        "time": 0,
        "context": {"library": {"name": "spoofed"}},
        "missing": None,
    }
    row = to_row(identify(7, traits), "2024-03-10T00:05:00.000Z")

    assert row.table == "identifies"
    assert values(row.columns) == {
        "address_street_name": "6th Street",
        "address_geo_lat": 1.5,
        "favorite_colors": '["red","blue"]',
    }
    assert (row.columns["user_id"], row.columns["time"]) == ("u7", 1710028800)
    assert row.columns["context_library_name"] == "engage"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("endpoint", "api.treasuredata.com", "must be an http:// or https:// URL"),
        ("endpoint", "https://api.treasuredata.com/v3", "without a path"),
        ("database", "Engage-DB", "3 to 255 characters of a-z, 0-9 and _"),
        ("databse", DATABASE, "Extra inputs are not permitted"),
    ],
)
def test_options_refuse_what_td_client_cannot_use(
    workspace: Workspace, option: str, value: str, message: str
) -> None:
    options = {"endpoint": "http://127.0.0.1:9", option: value}
    with pytest.raises(ConfigError, match=message) as raised:
        connector(workspace, options.pop("endpoint"), **options)
    assert APIKEY not in str(raised.value)
