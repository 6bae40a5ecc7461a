"""A local stand-in for Treasure Data's REST API, used by the `treasure_data` connector's tests.

Treasure Data is a hosted service that cannot run here, so this is a stand-in: a real HTTP server
(`http.server.ThreadingHTTPServer` on 127.0.0.1, a free port, in a background thread) that implements only
the endpoints td-client calls for the connector, with Treasure Data's paths, methods, `Authorization: TD1
<apikey>` header and the answer shapes td-client parses:

- `GET  /v3/table/list/<db>`: the database's tables (404 when the database does not exist);
- `POST /v3/database/create/<db>` and `POST /v3/table/create/<db>/<table>/log` (409 when it exists, 400
  for a name outside TD's rule: 3 to 255 of `a-z`, `0-9`, `_`);
- `PUT  /v3/table/import_with_id/<db>/<table>/<unique_id>/msgpack.gz`: a gzip of concatenated msgpack
  maps, one per row, stored in the table; an import whose unique id the table has already taken is
  accepted and dropped, as TD does.

It keeps every row it stored per database and table, and every request with its answer. It misbehaves on
demand: a `Fault` answers the requests it matches with a chosen status, optionally after storing the
import (an answer lost on the way back).
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import msgpack  # type: ignore[import-untyped]

TD_NAME = re.compile(r"[a-z0-9_]{3,255}")
CREATED_AT = "2025-01-01T00:00:00Z"
ROUTES: list[tuple[str, str, re.Pattern[str]]] = [
    ("GET", "list_tables", re.compile(r"/v3/table/list/(?P<db>[^/]+)")),
    ("POST", "create_database", re.compile(r"/v3/database/create/(?P<db>[^/]+)")),
    ("POST", "create_table", re.compile(r"/v3/table/create/(?P<db>[^/]+)/(?P<table>[^/]+)/log")),
    (
        "PUT",
        "import",
        re.compile(
            r"/v3/table/import_with_id/(?P<db>[^/]+)/(?P<table>[^/]+)/(?P<unique_id>[^/]+)/msgpack\.gz"
        ),
    ),
]


@dataclass
class Fault:
    """Answers `status` to requests of `endpoint` (`list_tables`, `create_database`, `create_table`,
    `import`; None: any) and, for imports, only those holding one of `message_ids` (None: any). It fires
    `times` times (None: always). With `after_storing`, an import is stored before the faulty answer. With
    `hang`, the stand-in waits that many seconds and closes the connection without answering."""

    status: int = 500
    endpoint: str | None = "import"
    message_ids: frozenset[str] | None = None
    times: int | None = 1
    after_storing: bool = False
    hang: float | None = None

    def matches(self, endpoint: str, rows: list[dict[str, Any]]) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.endpoint is not None and endpoint != self.endpoint:
            return False
        return self.message_ids is None or any(row.get("id") in self.message_ids for row in rows)


@dataclass
class Request:
    """One request as the stand-in saw it, and the status it answered (None: it hung up)."""

    method: str
    path: str
    endpoint: str | None
    authorization: str | None
    status: int | None
    rows: int = 0  # rows in an import's body


@dataclass
class Table:
    rows: list[dict[str, Any]] = field(default_factory=list)
    import_ids: set[str] = field(default_factory=set)

    @property
    def columns(self) -> set[str]:
        return {name for row in self.rows for name in row}


@dataclass
class _State:
    apikey: str
    databases: dict[str, dict[str, Table]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Answer:
    status: int
    body: dict[str, Any]
    hang: float | None = None  # no answer: wait this long, then close the connection


def _error(status: int, message: str) -> _Answer:
    return _Answer(status, {"error": message, "text": message, "severity": "error"})


def decode_rows(body: bytes) -> list[dict[str, Any]] | None:
    """The rows of a `msgpack.gz` import body; None when it is not gzip of msgpack maps."""
    unpacker = msgpack.Unpacker(raw=False)
    try:
        unpacker.feed(gzip.decompress(body))
        return [dict(row) for row in unpacker]
    except (OSError, ValueError, TypeError):
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # td-client (urllib3) keeps connections alive
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `StandIn.requests` instead."""

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        endpoint, params = self._route()
        state = self.server.state
        rows = decode_rows(body) if endpoint == "import" else []
        with state.lock:
            answer = self._answer(state, endpoint, params, rows)
            status = None if answer.hang is not None else answer.status
            authorization = self.headers.get("Authorization")
            state.requests.append(
                Request(self.command, self.path, endpoint, authorization, status, len(rows or []))
            )
        if answer.hang is not None:
            time.sleep(answer.hang)
            self.close_connection = True
        else:
            self._send(answer)

    def _route(self) -> tuple[str | None, dict[str, str]]:
        for method, endpoint, pattern in ROUTES:
            match = pattern.fullmatch(self.path.split("?")[0])
            if match and method == self.command:
                return endpoint, {k: unquote(v) for k, v in match.groupdict().items()}
        return None, {}

    def _answer(
        self, state: _State, endpoint: str | None, params: dict[str, str], rows: list[dict[str, Any]] | None
    ) -> _Answer:
        if self.headers.get("Authorization") != f"TD1 {state.apikey}":
            return _error(401, "Authentication failed")
        if endpoint is None:
            return _error(404, f"no stand-in for {self.command} {self.path}")
        if rows is None:
            return _error(400, "the body is not a msgpack.gz stream of rows")
        fault = next((f for f in state.faults if f.matches(endpoint, rows)), None)
        if fault is not None and fault.times is not None:
            fault.times -= 1
        if fault is None:
            return _ENDPOINTS[endpoint](state, params, rows)
        if fault.after_storing:
            _ENDPOINTS[endpoint](state, params, rows)
        injected = _error(fault.status, f"injected {fault.status}")
        injected.hang = fault.hang
        return injected

    def _send(self, answer: _Answer) -> None:
        payload = json.dumps(answer.body).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _list_tables(state: _State, params: dict[str, str], rows: list[dict[str, Any]]) -> _Answer:
    tables = state.databases.get(params["db"])
    if tables is None:
        return _error(404, f"Database '{params['db']}' does not exist")
    listed = [
        {
            "id": number,
            "name": name,
            "type": "log",
            "count": len(table.rows),
            "estimated_storage_size": 0,
            "created_at": CREATED_AT,
            "updated_at": CREATED_AT,
            "counter_updated_at": CREATED_AT,
            "last_log_timestamp": CREATED_AT,
            "delete_protected": False,
            "expire_days": None,
        }
        for number, (name, table) in enumerate(sorted(tables.items()), start=1)
    ]
    return _Answer(200, {"database": params["db"], "tables": listed})


def _create_database(state: _State, params: dict[str, str], rows: list[dict[str, Any]]) -> _Answer:
    name = params["db"]
    if not TD_NAME.fullmatch(name):
        return _error(400, f"Name must be 3 to 255 of a-z, 0-9 and _: '{name}'")
    if name in state.databases:
        return _error(409, f"Database '{name}' already exists")
    state.databases[name] = {}
    return _Answer(200, {"database": name})


def _create_table(state: _State, params: dict[str, str], rows: list[dict[str, Any]]) -> _Answer:
    tables = state.databases.get(params["db"])
    name = params["table"]
    if tables is None:
        return _error(404, f"Database '{params['db']}' does not exist")
    if not TD_NAME.fullmatch(name):
        return _error(400, f"Name must be 3 to 255 of a-z, 0-9 and _: '{name}'")
    if name in tables:
        return _error(409, f"Table '{name}' already exists")
    tables[name] = Table()
    return _Answer(200, {"database": params["db"], "table": name, "type": "log"})


def _import(state: _State, params: dict[str, str], rows: list[dict[str, Any]]) -> _Answer:
    table = state.databases.get(params["db"], {}).get(params["table"])
    if table is None:
        return _error(404, f"Table '{params['db']}.{params['table']}' does not exist")
    if params["unique_id"] not in table.import_ids:
        table.import_ids.add(params["unique_id"])
        table.rows.extend(rows)
    return _Answer(200, {"database": params["db"], "table": params["table"], "elapsed_time": 0.01})


_ENDPOINTS = {
    "list_tables": _list_tables,
    "create_database": _create_database,
    "create_table": _create_table,
    "import": _import,
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _State) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class StandIn:
    """The stand-in server; use it as a context manager (it listens between `__enter__` and `__exit__`)."""

    def __init__(self, apikey: str) -> None:
        self._state = _State(apikey)
        self._server = _Server(self._state)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )  # a short poll: `shutdown()` waits for the loop to notice

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> StandIn:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def fail(self, fault: Fault) -> None:
        with self._state.lock:
            self._state.faults.append(fault)

    @property
    def requests(self) -> list[Request]:
        with self._state.lock:
            return list(self._state.requests)

    def databases(self) -> set[str]:
        with self._state.lock:
            return set(self._state.databases)

    def tables(self, database: str) -> dict[str, Table]:
        """The database's tables, as copies."""
        with self._state.lock:
            return {
                name: Table([dict(row) for row in table.rows], set(table.import_ids))
                for name, table in self._state.databases.get(database, {}).items()
            }

    def rows(self, database: str, table: str) -> list[dict[str, Any]]:
        return self.tables(database).get(table, Table()).rows
