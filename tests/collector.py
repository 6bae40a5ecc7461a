"""A real HTTP server used as the destination under test: a Segment-compatible tracking API on loopback.

`Collector` runs `http.server.ThreadingHTTPServer` on 127.0.0.1 (a free port) in a background thread. The
`segment` connector talks to it over real sockets, exactly as it would to Segment or a RudderStack data
plane: keep-alive HTTP/1.1, gzip bodies, Basic auth. It records every request (path, headers, raw body
size, the decompressed JSON, when it arrived and what it answered), checks the write key when given one,
and misbehaves on demand: a `Fault` answers some requests (by request number, or by the messageIds a
batch holds) with a chosen status, body and `Retry-After`, or hangs past the client's timeout and drops
the connection.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass
class Fault:
    """How to answer the requests it matches: all of `requests` (1-based request numbers; None: any) and
    `message_ids` (a batch holding any of them; None: any) must hold. It fires at most `times` times (None:
    always). With `hang`, the server waits that many seconds and closes the connection without an answer."""

    status: int = 500
    body: str = ""
    retry_after: str | None = None
    hang: float | None = None
    requests: frozenset[int] | None = None
    message_ids: frozenset[str] | None = None
    times: int | None = None

    def matches(self, number: int, message_ids: list[str]) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.requests is not None and number not in self.requests:
            return False
        return self.message_ids is None or not self.message_ids.isdisjoint(message_ids)


@dataclass
class Received:
    """One request as the server saw it, and its answer (`status` None: dropped without one)."""

    number: int
    arrived: float  # time.monotonic()
    path: str
    headers: dict[str, str]
    raw_size: int  # as sent (gzipped or not)
    size: int  # of the JSON, decompressed
    body: Any
    status: int | None = None

    @property
    def calls(self) -> list[dict[str, Any]]:
        batch = self.body.get("batch", []) if isinstance(self.body, dict) else []
        return list(batch)

    @property
    def message_ids(self) -> list[str]:
        return [str(call.get("messageId")) for call in self.calls]


@dataclass
class _State:
    write_key: str | None
    faults: list[Fault] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the connector's client expects
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms wait for an ACK
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `Collector.received` instead."""

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        data = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
        body = json.loads(data) if data else None
        state = self.server.state
        with state.lock:
            record = Received(
                number=len(state.received) + 1,
                arrived=time.monotonic(),
                path=self.path,
                headers=dict(self.headers.items()),
                raw_size=len(raw),
                size=len(data),
                body=body,
            )
            state.received.append(record)
            fault = self._fault(state, record)
        if fault is not None and fault.hang is not None:
            state.stopping.wait(fault.hang)
            self.close_connection = True
            return
        if fault is not None:
            self._answer(record, fault.status, fault.body, fault.retry_after)
        elif not self._authorized(state.write_key):
            self._answer(record, 401, '{"success":false,"message":"invalid write key"}')
        else:
            self._answer(record, 200, '{"success":true}')

    @staticmethod
    def _fault(state: _State, record: Received) -> Fault | None:
        for fault in state.faults:
            if fault.matches(record.number, record.message_ids):
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    def _authorized(self, write_key: str | None) -> bool:
        if write_key is None:
            return True
        expected = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        return self.headers.get("Authorization") == expected

    def _answer(self, record: Received, status: int, body: str, retry_after: str | None = None) -> None:
        record.status = status
        encoded = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(encoded)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        self.wfile.write(encoded)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _State) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class Collector:
    """The server, started on entering and stopped on leaving a `with` block."""

    def __init__(self, write_key: str | None = None) -> None:
        self._state = _State(write_key)
        self._server = _Server(self._state)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._state.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def fail(self, fault: Fault) -> None:
        """Adds a fault; the first one that matches a request answers it."""
        with self._state.lock:
            self._state.faults.append(fault)

    @property
    def received(self) -> list[Received]:
        with self._state.lock:
            return list(self._state.received)

    def accepted(self) -> list[Received]:
        return [r for r in self.received if r.status == 200]

    def accepted_calls(self) -> list[dict[str, Any]]:
        return [call for request in self.accepted() for call in request.calls]

    def accepted_message_ids(self) -> list[str]:
        """The messageIds of every batch the server answered 200, duplicates kept."""
        return [call["messageId"] for call in self.accepted_calls()]
