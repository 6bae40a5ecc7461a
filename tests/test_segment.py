"""The `segment` destination against a real HTTP server on loopback (tests/collector.py).

End to end, a sync sends its calls to the collector; at unit level, `SegmentConnector.deliver` gets a
delivery whose payloads a test chooses (engage's own `Call` payloads), to place a bad or oversize call
exactly and read `delivery.rejections`. Backoff is kept to milliseconds through the options.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engage.bench_delivery import run_delivery_bench
from engage.config import DestinationConfig, EventNames, Space, load_project
from engage.connector import Payload
from engage.errors import ConfigError
from engage.messages import Call, MessageContext
from engage.warehouse.duckdb import DuckDBWarehouse
from engage_connectors.segment import (
    MAX_BATCH_BYTES,
    MAX_CALL_BYTES,
    SegmentConnector,
    SegmentError,
    retry_after_seconds,
)
from tests.collector import Collector, Fault
from tests.conftest import Workspace
from tests.given import GivenDelivery, given_delivery

WRITE_KEY = "wk_live_3f9a7c1e5b2d4068"
FAST = {"backoff_base": 0.005, "backoff_cap": 0.02, "timeout": 5}
CONTEXT = MessageContext("default", datetime(2025, 6, 1), datetime(2025, 6, 1, 0, 5), EventNames())

DEFINITIONS = """\
kind: audience
name: Buyers
condition: {performed: Order Completed}
---
kind: trait
name: Order Count
type: count
event: Order Completed
"""


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(write_key=WRITE_KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def write_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRITE_KEY)


def configure(workspace: Workspace, endpoint: str, **options: Any) -> None:
    """A project whose space sends to the memory destination `mem` and to `segment` at `endpoint`."""
    segment = {
        "type": "segment",
        "write_key": "${SEGMENT_WRITE_KEY}",
        "endpoint": endpoint,
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
              segment: {json.dumps(segment)}
        """
    )


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Space:
    """A space for connectors built by unit-level tests (they read nothing from it)."""
    root = tmp_path_factory.mktemp("unit")
    (root / "config").mkdir()
    config = "spaces: {default: {warehouse: {type: duckdb, path: w.duckdb}, sources: [website]}}\n"
    (root / "config" / "engage.yaml").write_text(config)
    return load_project(root).space("default")


def connector(space: Space, endpoint: str, **options: Any) -> SegmentConnector:
    settings = {"type": "segment", "write_key": WRITE_KEY, "endpoint": endpoint, **FAST, **options}
    return SegmentConnector("segment", DestinationConfig.model_validate(settings), space)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuckDBWarehouse]:
    """The warehouse a `GivenDelivery` names; nothing reads it."""
    opened = DuckDBWarehouse(tmp_path_factory.mktemp("warehouse") / "unit.duckdb")
    yield opened
    opened.close()


def delivery(warehouse: DuckDBWarehouse, payloads: list[Payload]) -> GivenDelivery:
    return given_delivery(warehouse, "segment", CONTEXT, payloads)


def identify(number: int, note: str = "") -> Payload:
    """A trait's identify call for profile `number`, with message id `msg-<number>`."""
    traits: dict[str, Any] = {"order_count": number}
    if note:
        traits["note"] = note
    call = Call(
        definition_key="order_count",
        kind="trait",
        computation_id="tra_0123456789abcdef01234567",
        transition="computed",
        profile_id=f"u{number}",
        user_id=f"u{number}",
        anonymous_id=f"a{number}",
        identify_id=f"msg-{number}",
        track_id=f"trk-{number}",
        traits=traits,
    )
    return call.identify(CONTEXT)


def identifies(count: int, note: str = "") -> list[Payload]:
    return [identify(n, note) for n in range(count)]


def encoded_size(payload: Payload) -> int:
    return len(json.dumps(payload, separators=(",", ":")).encode())


def sized(number: int, size: int) -> Payload:
    """An identify whose compact JSON is exactly `size` bytes."""
    padding = size - encoded_size(identify(number, "x"))
    payload = identify(number, "x" * (padding + 1))
    assert encoded_size(payload) == size
    return payload


def ids(payloads: list[Payload]) -> list[str]:
    return [p["messageId"] for p in payloads]


# -- end to end ---------------------------------------------------------------------------------------


def land_orders(workspace: Workspace, users: int) -> None:
    workspace.define(DEFINITIONS)
    for n in range(users):
        workspace.track("Order Completed", "2025-05-01T10:00:00", user_id=f"user-{n}", revenue=10.0 + n)


def test_a_sync_sends_every_call_once_gzipped_with_the_write_key(
    workspace: Workspace, collector: Collector
) -> None:
    configure(workspace, collector.url)
    land_orders(workspace, 5)
    workspace.sync("2025-06-01T00:00:00")

    sent = workspace.sent()
    assert len(sent) == 20  # 5 users × (audience, trait) × (identify, track)
    assert sorted(collector.accepted_message_ids()) == sorted(ids(sent))
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    for request in collector.received:
        assert request.path == "/v1/batch"
        assert request.headers["Authorization"] == f"Basic {token}"
        assert request.headers["Content-Encoding"] == "gzip"
        assert request.headers["Content-Type"] == "application/json"
        assert request.raw_size < request.size  # the body on the wire is the gzip of the JSON
        assert request.body["sentAt"].endswith("Z")
    received = {call["messageId"]: call for call in collector.accepted_calls()}
    for payload in sent:  # the payloads as engage made them; sentAt is each delivery's own
        assert {**received[payload["messageId"]], "sentAt": ""} == {**payload, "sentAt": ""}


def test_a_sync_rides_out_server_errors_throttling_and_a_timeout(
    workspace: Workspace, collector: Collector
) -> None:
    configure(workspace, collector.url, max_batch_calls=4, threads=1, timeout=1)
    land_orders(workspace, 4)
    collector.fail(Fault(status=500, requests=frozenset({1})))
    collector.fail(Fault(status=429, retry_after="0", requests=frozenset({2})))
    collector.fail(Fault(hang=3.0, requests=frozenset({3})))
    collector.fail(Fault(status=503, requests=frozenset({5})))
    workspace.sync("2025-06-01T00:00:00")

    accepted = collector.accepted_message_ids()
    assert len(accepted) == len(set(accepted))
    assert sorted(accepted) == sorted(ids(workspace.sent()))
    assert [r.status for r in collector.received[:5]] == [500, 429, None, 200, 503]


def test_gzip_can_be_turned_off(space: Space, collector: Collector, warehouse: DuckDBWarehouse) -> None:
    target = connector(space, collector.url, gzip=False)
    target.deliver(delivery(warehouse, identifies(3)))

    (request,) = collector.received
    assert "Content-Encoding" not in request.headers
    assert request.raw_size == request.size
    assert ids(request.calls) == ["msg-0", "msg-1", "msg-2"]


# -- batching -----------------------------------------------------------------------------------------


def test_batches_stay_under_500_kb_and_keep_every_call_in_order(
    space: Space, collector: Collector, warehouse: DuckDBWarehouse
) -> None:
    payloads = identifies(400, note="n" * 3000)  # about 1.3 MB of calls
    accepted = connector(space, collector.url).deliver(delivery(warehouse, payloads))

    assert accepted == 400
    sizes = sorted(r.size for r in collector.received)
    assert len(sizes) == 3
    assert all(size <= MAX_BATCH_BYTES for size in sizes)
    assert sizes[1] > MAX_BATCH_BYTES - 3500  # packed full, not merely split by count
    for request in collector.received:  # batches may arrive in any order, each holds a run of calls
        numbers = [int(i.removeprefix("msg-")) for i in request.message_ids]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert sorted(collector.accepted_message_ids()) == sorted(ids(payloads))


def test_batches_hold_at_most_max_batch_calls(
    space: Space, collector: Collector, warehouse: DuckDBWarehouse
) -> None:
    connector(space, collector.url, max_batch_calls=7).deliver(delivery(warehouse, identifies(30)))

    assert sorted(len(r.calls) for r in collector.received) == [2, 7, 7, 7, 7]


def test_a_call_over_32_kb_is_rejected_with_its_key_and_the_others_go(
    space: Space, collector: Collector, warehouse: DuckDBWarehouse
) -> None:
    payloads = [identify(0), sized(1, MAX_CALL_BYTES + 1), sized(2, MAX_CALL_BYTES), identify(3)]
    target = delivery(warehouse, payloads)
    accepted = connector(space, collector.url).deliver(target)

    assert accepted == 3
    assert collector.accepted_message_ids() == ["msg-0", "msg-2", "msg-3"]
    (rejection,) = target.rejections
    assert rejection.message_id == "msg-1"
    assert rejection.definition_key == "order_count"
    assert rejection.user_id == "u1"
    assert rejection.error == f"call is {MAX_CALL_BYTES + 1} bytes, over the 32 KB limit"


# -- failures -----------------------------------------------------------------------------------------


def test_retry_after_is_honoured(space: Space, collector: Collector, warehouse: DuckDBWarehouse) -> None:
    collector.fail(Fault(status=429, retry_after="1", requests=frozenset({1})))
    connector(space, collector.url).deliver(delivery(warehouse, identifies(3)))

    first, second = collector.received
    assert (first.status, second.status) == (429, 200)
    assert second.arrived - first.arrived >= 1.0  # the backoff alone is capped at 0.02s
    assert collector.accepted_message_ids() == ["msg-0", "msg-1", "msg-2"]


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime.fromisoformat("2025-06-01T12:00:00+00:00")
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Sun, 01 Jun 2025 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Sun, 01 Jun 2025 11:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_exhausted_retries_fail_the_destination_and_name_the_status(
    space: Space, collector: Collector, warehouse: DuckDBWarehouse
) -> None:
    collector.fail(Fault(status=503))
    target = delivery(warehouse, identifies(3))
    with pytest.raises(SegmentError, match=r"destination segment: HTTP 503, 3 attempts"):
        connector(space, collector.url, max_retries=2).deliver(target)

    assert len(collector.received) == 3
    assert all(r.message_ids == ["msg-0", "msg-1", "msg-2"] for r in collector.received)  # the same calls
    assert target.rejections == []


def test_a_bad_call_is_isolated_by_bisection_and_only_it_is_rejected(
    space: Space, collector: Collector, warehouse: DuckDBWarehouse
) -> None:
    payloads = identifies(40)
    collector.fail(Fault(status=400, body='{"message": "invalid userId"}', message_ids=frozenset({"msg-17"})))
    target = delivery(warehouse, payloads)
    accepted = connector(space, collector.url).deliver(target)

    assert accepted == 39
    assert sorted(collector.accepted_message_ids()) == sorted(set(ids(payloads)) - {"msg-17"})
    (rejection,) = target.rejections
    assert rejection.message_id == "msg-17"
    assert rejection.error == 'HTTP 400: {"message": "invalid userId"}'
    assert len(collector.received) <= 1 + 2 * 6  # halving 40 calls down to one: two requests per level


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refused_credentials_or_endpoint_fail_without_rejecting(
    space: Space, collector: Collector, warehouse: DuckDBWarehouse, status: int
) -> None:
    collector.fail(Fault(status=status, body="no such source"))
    target = delivery(warehouse, identifies(5))
    with pytest.raises(SegmentError, match=f"destination segment: HTTP {status}"):
        connector(space, collector.url).deliver(target)

    assert target.rejections == []
    assert len(collector.received) == 1  # not retried
    assert collector.accepted_message_ids() == []


def test_the_first_failure_stops_the_batches_still_retrying(
    space: Space, collector: Collector, warehouse: DuckDBWarehouse
) -> None:
    collector.fail(Fault(status=503, message_ids=frozenset({"msg-0"})))
    collector.fail(Fault(status=401, message_ids=frozenset({"msg-20"})))
    slow = {"backoff_base": 0.2, "backoff_cap": 0.2, "max_retries": 100}
    target = connector(space, collector.url, max_batch_calls=20, **slow)
    with pytest.raises(SegmentError, match="HTTP 401"):  # the cause, though the other batch came first
        target.deliver(delivery(warehouse, identifies(40)))

    retried = [r for r in collector.received if r.status == 503]
    assert 1 <= len(retried) < 10  # abandoned when the 401 came, not after its 100 retries


def test_a_wrong_write_key_is_a_401(space: Space, warehouse: DuckDBWarehouse) -> None:
    with Collector(write_key="another-key") as server:
        with pytest.raises(SegmentError, match="HTTP 401"):
            connector(space, server.url).deliver(delivery(warehouse, identifies(2)))


def test_every_call_is_accounted_for_exactly_once(
    space: Space, collector: Collector, warehouse: DuckDBWarehouse, caplog: pytest.LogCaptureFixture
) -> None:
    payloads = identifies(200)
    payloads[50] = sized(50, MAX_CALL_BYTES + 100)
    collector.fail(Fault(status=500, requests=frozenset({2})))
    collector.fail(Fault(status=429, retry_after="0", requests=frozenset({4})))
    collector.fail(Fault(hang=3.0, requests=frozenset({6})))
    collector.fail(Fault(status=400, body="bad", message_ids=frozenset({"msg-3", "msg-121"})))
    target = delivery(warehouse, payloads)
    with caplog.at_level(logging.INFO, logger="engage.connectors.segment"):
        accepted = connector(space, collector.url, max_batch_calls=20, timeout=1).deliver(target)

    delivered = collector.accepted_message_ids()
    rejected = [r.message_id for r in target.rejections]
    assert len(delivered) == len(set(delivered)) == accepted == 197
    assert sorted(rejected) == ["msg-121", "msg-3", "msg-50"]
    assert set(delivered).isdisjoint(rejected)
    assert set(delivered) | set(rejected) == set(ids(payloads))
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "destination segment: 197 calls accepted" in line and "3 rejected" in line


# -- the write key stays secret -----------------------------------------------------------------------


def test_the_write_key_never_shows_in_logs_errors_or_repr(
    space: Space, collector: Collector, warehouse: DuckDBWarehouse, caplog: pytest.LogCaptureFixture
) -> None:
    collector.fail(Fault(status=500))
    target = connector(space, collector.url, max_retries=1)
    # the logger named, not the root: an in-process CLI test before this one may have set "engage" to INFO
    with (
        caplog.at_level(logging.DEBUG, logger="engage.connectors.segment"),
        pytest.raises(SegmentError) as failed,
    ):
        target.deliver(delivery(warehouse, identifies(1)))

    assert "retrying" in caplog.text  # the retry was logged
    for text in (caplog.text, str(failed.value), repr(failed.value), repr(target), repr(target.options)):
        assert WRITE_KEY not in text


def test_a_response_that_echoes_the_write_key_is_redacted(
    space: Space, collector: Collector, warehouse: DuckDBWarehouse
) -> None:
    collector.fail(Fault(status=400, body=f"bad call for key {WRITE_KEY}", requests=frozenset({1})))
    collector.fail(Fault(status=401, body=f"unknown key {WRITE_KEY}"))
    target = connector(space, collector.url)
    rejecting = delivery(warehouse, identifies(1))
    target.deliver(rejecting)
    with pytest.raises(SegmentError) as failed:
        target.deliver(delivery(warehouse, identifies(1)))

    assert rejecting.rejections[0].error == "HTTP 400: bad call for key ***"
    assert str(failed.value).endswith("HTTP 401 from " + collector.url + "/v1/batch: unknown key ***")


def test_the_delivery_benchmark_counts_every_call_at_the_server(tmp_path: Path) -> None:
    report = run_delivery_bench(changes=300, workdir=tmp_path / "bench")

    assert (report.calls, report.server_calls, report.rejected) == (600, 600, 0)  # identify + track each


def test_options_need_a_write_key_and_an_http_endpoint(workspace: Workspace) -> None:
    configure(workspace, "http://127.0.0.1:9")
    path = workspace.root / "config" / "engage.yaml"
    path.write_text(path.read_text().replace('"write_key": "${SEGMENT_WRITE_KEY}", ', ""))
    space = load_project(workspace.root).space("default")
    with pytest.raises(ConfigError, match="write_key"):
        SegmentConnector("segment", space.config.destinations["segment"], space)
    configure(workspace, "api.segment.io")
    space = load_project(workspace.root).space("default")
    with pytest.raises(ConfigError, match="http:// or https://"):
        SegmentConnector("segment", space.config.destinations["segment"], space)
