"""`type: treasure_data`: imports every call as a row of Treasure Data tables, in Segment's layout.

Treasure Data is a user-property destination (Segment's "Treasure Data" page): an identify per profile
that enters (`<audience_key>: true`), exits (`false`) or whose trait changes, and on a first sync one per
member. The framework picks the calls; this connector writes them, through td-client, into the configured
`database` (created when missing), in the tables Segment's page lists for identify and track calls:

- `identifies`: one row per identify call;
- one table per track event, named by the snake_case of its name (`audience_entered`, `audience_exited`,
  `trait_computed`, or a custom name's): one row per track call. Segment's Treasure Data layout has no
  `tracks` or `users` table, so neither is written.

Every row has these columns (Segment's warehouse conventions; TD has no timestamp type, so times are
ISO-8601 text):

- `time`: TD's own partition column, the call's `timestamp` in integer UNIX seconds;
- `id` (the deterministic messageId), `user_id` and `anonymous_id` (when the profile has one);
- `timestamp` and `original_timestamp` (both the run's as-of), `sent_at`, `received_at` (when this
  delivery built the row);
- the call's context, flattened: `context_library_name`, `context_library_version`,
  `context_personas_computation_class`, `…_computation_id`, `…_computation_key`, `…_namespace`,
  `…_space_id`;
- track rows also `event` (the table's name) and `event_text` (the event as configured).

Then the identify's traits, or the track's properties (`audience_key` / `trait_key` and the key's value),
each as a top-level column named by its snake_case: nested objects are flattened with `_`
(`address.street` → `address_street`), arrays are stored as JSON text, and a null value leaves its
column out (TD reads an absent column as null). A trait or property whose column collides with one of
the columns above, or with an earlier one of the same row, is dropped. Strings are not truncated: the
512-character limit of Segment's warehouses is a Redshift column size, and TD columns have none.

Imports. Each batch of calls becomes, per table, one `msgpack.gz` import (`import_data` through
`/v3/table/import_with_id`) whose unique id is a hash of the database, table and message ids. TD has no
upsert, but it drops an import whose id it has seen: a batch resent after a lost answer, or after a failed
delivery that the framework hands over again (same calls, same batches), is stored once.

What an answer means:
- 5xx, 408, 429, a timeout or a lost connection: the same request again after an exponential backoff with
  jitter, up to `max_retries` times; then the delivery fails (the framework sends the same calls later).
- 401, 403, 404: the key, its permissions or the database are wrong; the delivery fails at once, as it
  does on any 4xx to listing the tables or creating the database or a table (409, already made, is fine).
- Any other 4xx to an import: some row is bad. The import is split in halves, down to single rows; a row
  refused alone is rejected with TD's answer. A row that cannot be encoded, or whose event has no valid
  TD table name (3 to 255 of `a-z`, `0-9`, `_`), is rejected without asking TD.

The API key is a `SecretStr`; td-client's own debug log (which prints request headers) is redacted while
a delivery runs, and no error or log line of this module carries the key.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import msgpack  # type: ignore[import-untyped]
import urllib3
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from tdclient.api import API
from tdclient.types import DataFormat, StreamBody
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from engage import __version__
from engage.connector import Connector, Delivery, Payload
from engage.errors import ConnectorError
from engage.messages import iso
from engage.naming import snakecase

if TYPE_CHECKING:
    from engage.config import DestinationConfig, Space

log = logging.getLogger("engage.connectors.treasure_data")

IDENTIFIES = "identifies"
FORMAT: DataFormat = "msgpack.gz"
TD_NAME = re.compile(r"[a-z0-9_]{3,255}")
RETRY_STATUSES = frozenset({408, 429})
FATAL_STATUSES = frozenset({401, 403, 404})
ALREADY_EXISTS = 409
ERROR_TEXT_LIMIT = 500  # characters of TD's answer kept in a rejection or an error
RESERVED_COLUMNS = frozenset(  # a trait or property of these names is dropped, on every table
    {"time", "id", "user_id", "anonymous_id", "timestamp", "original_timestamp", "sent_at", "received_at"}
    | {"event", "event_text"}
)
T = TypeVar("T")


class TreasureDataOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    apikey: SecretStr = Field(description="a TD API key with write access; put it in ${AN_ENV_VAR}")
    endpoint: str = Field(
        default="https://api.treasuredata.com",
        description="the TD API's base URL (scheme, host and port only), e.g. https://api.eu01.treasuredata.com",
    )
    database: str = Field(description="the TD database the tables go to; created when missing")
    batch_size: int = Field(default=5000, gt=0, description="changes per batch; one import per table each")
    timeout: float = Field(default=60.0, gt=0, description="seconds to connect, send or wait for an answer")
    max_retries: int = Field(default=6, ge=0, description="retries of one request before the delivery fails")
    backoff_base: float = Field(default=1.0, ge=0, description="seconds the backoff starts from")
    backoff_cap: float = Field(default=60.0, ge=0, description="longest wait between two retries")

    @field_validator("endpoint")
    @classmethod
    def _base_url(cls, value: str) -> str:
        """td-client joins request paths onto the URL's path by hand, so only a bare origin works."""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError("must be a scheme, host and port only, without a path")
        return f"{parts.scheme}://{parts.netloc}/"

    @field_validator("database")
    @classmethod
    def _td_name(cls, value: str) -> str:
        if not TD_NAME.fullmatch(value):
            raise ValueError("must be 3 to 255 characters of a-z, 0-9 and _ (Treasure Data's rule)")
        return value


class TreasureDataError(ConnectorError):
    """The destination failed: wrong key, permissions or database, or retries exhausted."""


class _Transient(Exception):
    """An attempt worth repeating: throttled, a server error, a timeout or a lost connection."""


class _Refused(Exception):
    """TD answered a 4xx (other than 408 and 429) to one request."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


class _Client(API):
    """td-client's API, whose answers engage classifies itself.

    td-client retries some requests on its own with fixed sleeps of 5 s and more, and reports a failed
    upload without its status. Here every 5xx, 408, 429 and transport error becomes `_Transient` before
    td-client sees it (its retry loops only catch `OSError` and urllib3's errors), and every other
    non-2xx answer, which td-client hands to `raise_error`, becomes `_Refused` with its status."""

    def __init__(self, options: TreasureDataOptions) -> None:
        super().__init__(
            apikey=options.apikey.get_secret_value(),
            endpoint=options.endpoint,
            user_agent=f"engage/{__version__}",
            timeout=options.timeout,
            retries=False,  # urllib3's own retries would hide the failure from the backoff
        )
        self._secret = options.apikey.get_secret_value()

    def __repr__(self) -> str:
        return f"_Client(endpoint={self.endpoint!r})"

    def send_request(
        self,
        method: str,
        url: str,
        fields: dict[str, Any] | None = None,
        body: StreamBody = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> urllib3.BaseHTTPResponse:
        what = f"{method} {urlsplit(url).path}"
        try:
            response = super().send_request(method, url, fields, body, headers, **kwargs)
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise _Transient(f"{what}: {type(err).__name__}") from None
        if response.status in RETRY_STATUSES or response.status >= 500:
            response.drain_conn()
            response.release_conn()
            raise _Transient(f"{what}: HTTP {response.status}")
        return response

    def raise_error(self, msg: str, res: urllib3.BaseHTTPResponse, body: bytes | str) -> NoReturn:
        text = body if isinstance(body, str) else body.decode("utf-8", "replace")
        text = " ".join(text.split())[:ERROR_TEXT_LIMIT].replace(self._secret, "***")
        raise _Refused(res.status, f"{msg}: {text}")


@dataclass
class Row:
    """One call as the row of one table; the payload is kept to reject the call."""

    table: str
    payload: Payload
    columns: dict[str, Any]


@dataclass
class _Tally:
    """What a delivery came to, for its log line."""

    rows: dict[str, int] = field(default_factory=dict)
    imports: int = 0
    retries: int = 0

    @property
    def imported(self) -> int:
        return sum(self.rows.values())


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    """(column, value) pairs of a JSON value: objects flattened with `_` and snake_cased, arrays as JSON
    text, nulls and keys without a letter or digit left out."""
    if isinstance(value, dict):
        for key, inner in value.items():
            name = snakecase(str(key))
            if name:
                yield from _flatten(f"{prefix}_{name}" if prefix else name, inner)
    elif isinstance(value, list):
        yield prefix, json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    elif value is not None:
        yield prefix, value


def _unix_seconds(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp())


def to_row(payload: Payload, received_at: str) -> Row:
    """The row an identify or track call becomes (the layout in the module's docstring)."""
    columns: dict[str, Any] = {
        "time": _unix_seconds(payload["timestamp"]),
        "id": payload["messageId"],
        "user_id": payload.get("userId"),
        "anonymous_id": payload.get("anonymousId"),
        "timestamp": payload["timestamp"],
        "original_timestamp": payload["timestamp"],
        "sent_at": payload.get("sentAt"),
        "received_at": received_at,
    }
    if payload["type"] == "track":
        table = snakecase(payload["event"])
        columns.update(event=table, event_text=payload["event"])
        values = payload.get("properties", {})
    else:
        table = IDENTIFIES
        values = payload.get("traits", {})
    columns = {k: v for k, v in columns.items() if v is not None}
    columns.update(_flatten("context", payload.get("context", {})))
    for name, value in _flatten("", values):
        if name not in RESERVED_COLUMNS and name not in columns:
            columns[name] = value
    return Row(table, payload, columns)


def import_id(database: str, table: str, rows: list[Row]) -> str:
    """The import's unique id: the same calls into the same table always get the same id."""
    digest = hashlib.sha256(f"{database}\0{table}".encode())
    for row in rows:
        digest.update(b"\0" + str(row.payload["messageId"]).encode())
    return digest.hexdigest()[:32]


def _pack(row: Row) -> bytes | None:
    """The row as msgpack, or None when msgpack cannot hold a value (an integer over 64 bits)."""
    try:
        packed: bytes = msgpack.packb(row.columns, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        return None
    return packed


class _RedactKey(logging.Filter):
    """Replaces the key in td-client's own log records (its debug lines print the request headers)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "***"), None
        return True


@contextmanager
def _td_client_logs_redacted(secret: str) -> Iterator[None]:
    td_log = logging.getLogger("tdclient.api")
    redact = _RedactKey(secret)
    td_log.addFilter(redact)
    try:
        yield
    finally:
        td_log.removeFilter(redact)


class _Writer:
    """Imports one delivery's rows: ensures the database and tables, retries, splits refused imports."""

    def __init__(
        self, client: _Client, options: TreasureDataOptions, destination: str, delivery: Delivery
    ) -> None:
        self.client = client
        self.options = options
        self.destination = destination
        self.delivery = delivery
        self.tally = _Tally()
        self._tables: set[str] | None = None  # the database's tables, read at the first import

    def write(self, table: str, rows: list[Row]) -> None:
        if not TD_NAME.fullmatch(table):
            for row in rows:
                self.delivery.reject(row.payload, f"'{table}' is not a valid Treasure Data table name")
            return
        self._ensure(table)
        packed: list[tuple[Row, bytes]] = []
        for row in rows:
            encoded = _pack(row)
            if encoded is None:
                self.delivery.reject(row.payload, "a value does not fit in msgpack (integer over 64 bits)")
            else:
                packed.append((row, encoded))
        if packed:
            self._import(table, packed)

    def _ensure(self, table: str) -> None:
        """Creates the database and `table` when missing; a concurrent creation (409) is fine."""
        if self._tables is None:
            self._tables = self._existing_tables()
        if table not in self._tables:
            self._create(f"create table {table}", lambda: self.client.create_log_table(self.database, table))
            self._tables.add(table)

    @property
    def database(self) -> str:
        return self.options.database

    def _existing_tables(self) -> set[str]:
        try:
            return set(self._call(f"list tables of {self.database}", self._list_tables))
        except _Refused as err:
            if err.status != 404:
                raise self._failed(f"list tables of {self.database}: {err}") from None
        self._create(f"create database {self.database}", lambda: self.client.create_database(self.database))
        return set()

    def _list_tables(self) -> list[str]:
        return list(self.client.list_tables(self.database))

    def _create(self, what: str, create: Callable[[], bool]) -> None:
        try:
            self._call(what, create)
        except _Refused as err:
            if err.status != ALREADY_EXISTS:
                raise self._failed(f"{what}: {err}") from None

    def _import(self, table: str, rows: list[tuple[Row, bytes]]) -> None:
        """Imports `rows`; a refused import is halved down to single rows, which are rejected."""
        body = gzip.compress(b"".join(encoded for _, encoded in rows), mtime=0)
        unique_id = import_id(self.database, table, [row for row, _ in rows])
        what = f"import into {self.database}.{table}"
        try:
            self._call(
                what,
                lambda: self.client.import_data(self.database, table, FORMAT, body, len(body), unique_id),
            )
        except _Refused as err:
            if err.status in FATAL_STATUSES:
                raise self._failed(f"{what}: {err}") from None
            if len(rows) == 1:
                self.delivery.reject(rows[0][0].payload, str(err))
                return
            half = len(rows) // 2
            self._import(table, rows[:half])
            self._import(table, rows[half:])
            return
        self.tally.imports += 1
        self.tally.rows[table] = self.tally.rows.get(table, 0) + len(rows)

    def _call(self, what: str, request: Callable[[], T]) -> T:
        """`request()`, repeated with backoff while it fails transiently; `_Refused` passes through."""
        retrying = Retrying(
            stop=stop_after_attempt(self.options.max_retries + 1),
            wait=wait_random_exponential(multiplier=self.options.backoff_base, max=self.options.backoff_cap),
            retry=retry_if_exception_type(_Transient),
            before_sleep=self._announce,
            reraise=True,
        )
        try:
            return retrying(request)
        except _Transient as err:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise self._failed(f"{what}: {err}, {attempts} attempts") from None

    def _announce(self, retry_state: RetryCallState) -> None:
        self.tally.retries += 1
        error = retry_state.outcome.exception() if retry_state.outcome else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.debug("destination %s: %s; retrying in %.2fs", self.destination, error, wait)

    def _failed(self, reason: str) -> TreasureDataError:
        return TreasureDataError(f"destination {self.destination}: {reason}")


class TreasureDataConnector(Connector):
    name = "treasure_data"
    Options = TreasureDataOptions

    def __init__(self, destination: str, config: DestinationConfig, space: Space) -> None:
        super().__init__(destination, config, space)
        assert isinstance(self.options, TreasureDataOptions)
        self.settings: TreasureDataOptions = self.options

    def __repr__(self) -> str:
        return (
            f"TreasureDataConnector(destination={self.destination!r}, endpoint={self.settings.endpoint!r},"
            f" database={self.settings.database!r})"
        )

    def deliver(self, delivery: Delivery) -> int:
        started = time.monotonic()
        received_at = iso(datetime.now(UTC).replace(tzinfo=None))
        with (
            _td_client_logs_redacted(self.settings.apikey.get_secret_value()),
            closing(_Client(self.settings)) as client,
        ):
            writer = _Writer(client, self.settings, self.destination, delivery)
            try:
                for payloads in delivery.payloads(self.settings.batch_size):
                    for table, rows in _by_table(to_row(p, received_at) for p in payloads).items():
                        writer.write(table, rows)
            finally:  # a failed delivery is logged too: what it imported before failing
                self._log(writer.tally, len(delivery.rejections), time.monotonic() - started)
        return writer.tally.imported

    def _log(self, tally: _Tally, rejected: int, seconds: float) -> None:
        log.info(
            "destination %s: %d rows imported into %s (%s) in %d imports, %d retries, %d rejected, %.2fs",
            self.destination, tally.imported, self.settings.database,
            ", ".join(f"{t}={n}" for t, n in sorted(tally.rows.items())) or "no tables",
            tally.imports, tally.retries, rejected, seconds,
        )  # fmt: skip


def _by_table(rows: Iterator[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row.table, []).append(row)
    return grouped
