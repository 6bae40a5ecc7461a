"""`type: segment`: sends every call to a Segment-compatible HTTP tracking API.

Segment itself, a RudderStack data plane or a self-hosted collector: calls are packed into `POST
<endpoint>/v1/batch` bodies (`{"batch": [...], "sentAt": ...}`) of at most 500 KB of JSON and
`max_batch_calls` calls, gzipped, authenticated by HTTP Basic auth with the write key as the user name and
an empty password. Both APIs take 32 KB per call at most: a larger call is rejected before it is sent.

What a response means:
- 2xx: every call of the batch is accepted.
- 408, 429, 5xx, a timeout or a lost connection: the same body is sent again after an exponential backoff
  with jitter (at least what `Retry-After` asks for), until `max_retries` or `retry_budget` runs out; then
  the delivery fails, and the framework sends the same calls (same message ids) next time.
- 401, 403, 404 and any other status outside 2xx/4xx: the credentials or the endpoint are wrong, so the
  delivery fails at once and rejects nothing.
- Any other 4xx: some call of the batch is bad. The batch is split in halves, each sent on its own, down to
  single calls; a call refused alone is rejected with the response's text.

Batches are built from the streamed payloads while up to `threads` earlier batches are on the wire.
"""

from __future__ import annotations

import base64
import gzip
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from engage import __version__
from engage.connector import Connector, Delivery, Payload
from engage.errors import ConnectorError

log = logging.getLogger("engage.connectors.segment")

MAX_CALL_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1000
GZIP_LEVEL = 1  # level 1 compresses these bodies about 8× at a fraction of the default level's CPU
READ_BATCH = 2000  # changes per read from the warehouse
ERROR_TEXT_LIMIT = 500  # characters of a response body kept in a rejection or an error
RETRY_STATUSES = frozenset({408, 429})
_SENT_AT = "0000-00-00T00:00:00.000Z"
ENVELOPE_BYTES = len(f'{{"batch":[],"sentAt":"{_SENT_AT}"}}')


class SegmentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    write_key: SecretStr = Field(description="the source's write key; put it in ${AN_ENV_VAR}")
    endpoint: str = Field(
        default="https://api.segment.io", description="the API's base URL; batches go to <endpoint>/v1/batch"
    )
    timeout: float = Field(default=30.0, gt=0, description="seconds to connect, send or wait for an answer")
    max_retries: int = Field(default=8, ge=0, description="retries of one batch before the delivery fails")
    retry_budget: float = Field(default=600.0, gt=0, description="seconds one batch may spend retrying")
    backoff_base: float = Field(default=0.5, ge=0, description="seconds before the first retry")
    backoff_cap: float = Field(default=60.0, ge=0, description="longest wait between two retries")
    gzip: bool = True
    max_batch_bytes: int = Field(
        default=MAX_BATCH_BYTES, ge=MAX_CALL_BYTES + ENVELOPE_BYTES, le=MAX_BATCH_BYTES
    )
    max_batch_calls: int = Field(default=2000, gt=0)
    threads: int = Field(default=2, ge=1, le=16, description="batches on the wire at once")

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class SegmentError(ConnectorError):
    """The destination failed: wrong credentials or endpoint, or retries exhausted."""


class _Retryable(Exception):
    """An attempt worth repeating: throttled, a server error, a timeout or a lost connection."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class _Outcome:
    """What sending some calls came to; outcomes of a delivery add up."""

    accepted: int = 0
    requests: int = 0
    retries: int = 0
    rejected: list[tuple[bytes, str]] = field(default_factory=list)

    def __add__(self, other: _Outcome) -> _Outcome:
        return _Outcome(
            self.accepted + other.accepted,
            self.requests + other.requests,
            self.retries + other.retries,
            self.rejected + other.rejected,
        )


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


class _Backoff(wait_base):
    """Exponential backoff, capped, each wait drawn between its half and its whole (so batches retrying
    together spread out), and never shorter than the server's `Retry-After`."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        exponential = min(self.cap, self.base * 2 ** (retry_state.attempt_number - 1))
        wait = random.uniform(exponential / 2, exponential)
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, _Retryable) and error.retry_after is not None:
            wait = max(wait, error.retry_after)
        return wait


class _StopWhenSet(stop_base):
    """Stops retrying once the delivery is abandoned (another batch failed it)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.event.is_set()


def _batch_body(calls: list[bytes]) -> bytes:
    sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return b'{"batch":[' + b",".join(calls) + b'],"sentAt":"' + sent_at.encode() + b'"}'


class _Sender:
    """Sends batches of encoded calls on one HTTP client; safe to use from several threads."""

    def __init__(self, client: httpx.Client, options: SegmentOptions, destination: str) -> None:
        self.client = client
        self.options = options
        self.destination = destination
        self.url = f"{options.endpoint}/v1/batch"
        self.abandoned = threading.Event()
        self.failure: SegmentError | None = None  # the first, which abandoned the others
        self._lock = threading.Lock()

    def send(self, calls: list[bytes]) -> _Outcome:
        """Every call of `calls` accepted or rejected; raises when the destination failed."""
        status, text, attempts = self._post_with_retries(calls)
        outcome = _Outcome(requests=attempts, retries=attempts - 1)
        if status < 300:
            return outcome + _Outcome(accepted=len(calls))
        if len(calls) == 1:
            return outcome + _Outcome(rejected=[(calls[0], f"HTTP {status}: {text}")])
        half = len(calls) // 2
        return outcome + self.send(calls[:half]) + self.send(calls[half:])

    def _post_with_retries(self, calls: list[bytes]) -> tuple[int, str, int]:
        """The final status and text of one batch (2xx or a 4xx that refuses its calls), and attempts."""
        options = self.options
        retrying = Retrying(
            stop=stop_after_attempt(options.max_retries + 1)
            | stop_before_delay(options.retry_budget)
            | _StopWhenSet(self.abandoned),
            wait=_Backoff(options.backoff_base, options.backoff_cap),
            retry=retry_if_exception_type(_Retryable),
            sleep=self._sleep,
            before_sleep=self._announce,
            reraise=True,
        )
        try:
            status, text = retrying(self._post, calls)
        except _Retryable as err:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise self._failed(f"{err.reason}, {attempts} attempts") from None
        return status, text, retrying.statistics.get("attempt_number", 1)

    def _sleep(self, seconds: float) -> None:
        self.abandoned.wait(seconds)  # wakes at once when another batch failed the delivery

    def _announce(self, retry_state: RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.debug("destination %s: %s; retrying in %.2fs", self.destination, error, wait)

    def _post(self, calls: list[bytes]) -> tuple[int, str]:
        body = _batch_body(calls)
        headers = {"Content-Type": "application/json"}
        if self.options.gzip:
            body = gzip.compress(body, GZIP_LEVEL, mtime=0)
            headers["Content-Encoding"] = "gzip"
        try:
            response = self.client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as err:
            raise _Retryable(f"timed out ({type(err).__name__})") from err
        except httpx.TransportError as err:
            raise _Retryable(f"connection failed ({type(err).__name__})") from err
        status = response.status_code
        if 200 <= status < 300:
            return status, ""
        text = self._text(response)
        if status in RETRY_STATUSES or status >= 500:
            raise _Retryable(f"HTTP {status}", retry_after_seconds(response.headers.get("Retry-After")))
        if status in (401, 403, 404) or not 400 <= status < 500:
            raise self._failed(f"HTTP {status} from {self.url}: {text}")
        return status, text

    def _text(self, response: httpx.Response) -> str:
        text = " ".join(response.text.split())[:ERROR_TEXT_LIMIT]
        return text.replace(self.options.write_key.get_secret_value(), "***")

    def _failed(self, reason: str) -> SegmentError:
        error = SegmentError(f"destination {self.destination}: {reason}")
        with self._lock:
            self.failure = self.failure or error
        self.abandoned.set()
        return error


class SegmentConnector(Connector):
    name = "segment"
    Options = SegmentOptions

    @property
    def settings(self) -> SegmentOptions:
        assert isinstance(self.options, SegmentOptions)
        return self.options

    def __repr__(self) -> str:
        return f"SegmentConnector(destination={self.destination!r}, endpoint={self.settings.endpoint!r})"

    def deliver(self, delivery: Delivery) -> int:
        started = time.monotonic()
        rejected_before = len(delivery.rejections)
        total = _Outcome()
        batches = 0

        def take(outcome: _Outcome) -> None:
            nonlocal total, batches
            total += outcome
            batches += 1
            for call, error in outcome.rejected:
                delivery.reject(orjson.loads(call), error)

        with self._client() as client:
            self._send_all(_Sender(client, self.settings, self.destination), self._batches(delivery), take)
        log.info(
            "destination %s: %d calls accepted in %d batches (%d requests, %d retries), %d rejected, %.2fs",
            self.destination, total.accepted, batches, total.requests, total.retries,
            len(delivery.rejections) - rejected_before, time.monotonic() - started,
        )  # fmt: skip
        return total.accepted

    def _client(self) -> httpx.Client:
        secret = self.settings.write_key.get_secret_value()
        token = base64.b64encode(f"{secret}:".encode()).decode()
        # A request's headers and body are two writes: without TCP_NODELAY the body may wait for the
        # server's delayed ACK of the headers (up to 40 ms a request).
        transport = httpx.HTTPTransport(
            limits=httpx.Limits(max_connections=self.settings.threads),
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        return httpx.Client(
            headers={"Authorization": f"Basic {token}", "User-Agent": f"engage/{__version__}"},
            timeout=self.settings.timeout,
            transport=transport,
        )

    def _batches(self, delivery: Delivery) -> Iterator[list[bytes]]:
        """The delivery's calls, encoded and packed under the batch limits; oversize calls are rejected."""
        room = self.settings.max_batch_bytes - ENVELOPE_BYTES
        most = self.settings.max_batch_calls
        batch: list[bytes] = []
        size = -1  # of the calls joined by commas: one comma fewer than calls
        for payloads in delivery.payloads(READ_BATCH):
            for payload in payloads:
                try:  # orjson: compact, and several times faster than the json module at this volume
                    call = orjson.dumps(payload)
                except orjson.JSONEncodeError as err:  # an integer beyond 64 bits
                    delivery.reject(payload, f"call cannot be encoded as JSON: {err}")
                    continue
                length = len(call)
                if length > MAX_CALL_BYTES:
                    _reject_oversize(delivery, payload, length)
                    continue
                if batch and (size + 1 + length > room or len(batch) >= most):
                    yield batch
                    batch, size = [], -1
                size += 1 + length
                batch.append(call)
        if batch:
            yield batch

    def _send_all(
        self, sender: _Sender, batches: Iterator[list[bytes]], take: Callable[[_Outcome], None]
    ) -> None:
        """Sends `batches` with up to `threads` of them on the wire while the next is built, and hands
        their outcomes to `take` in order. The first failure abandons the rest (their retries stop) and is
        raised."""
        threads = self.settings.threads
        pool = ThreadPoolExecutor(threads, thread_name_prefix=f"segment-{self.destination}")
        in_flight: deque[Future[_Outcome]] = deque()
        try:
            for batch in batches:
                in_flight.append(pool.submit(sender.send, batch))
                if len(in_flight) > threads:
                    take(in_flight.popleft().result())
            while in_flight:
                take(in_flight.popleft().result())
        except SegmentError as err:
            raise (sender.failure or err) from None
        finally:
            sender.abandoned.set()  # done or failed: nothing may keep retrying
            pool.shutdown(wait=True, cancel_futures=True)


def _reject_oversize(delivery: Delivery, payload: Payload, size: int) -> None:
    delivery.reject(payload, f"call is {size} bytes, over the 32 KB limit")
