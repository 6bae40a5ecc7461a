"""The storage connector contract, and how a destination's `type` finds its connector.

A connector receives a `Delivery`: one run's changes for the definitions routed to it. It either streams
Segment-spec payloads (`delivery.payloads()`: the identify and track calls its `send:` and selective sync
take), or, when it writes into the compute warehouse itself, runs `INSERT … SELECT` statements shaped by
`delivery.rows` so that no row passes through Python. In-warehouse connectors run inside the transaction
that also advances the state. A call the destination refuses for good goes to `delivery.reject()` and holds
back nothing; any exception means the destination failed this time and gets the same calls again later.

Adding a connector is one module in `connectors/` (import name `engage_connectors`) defining one
`Connector` subclass whose `name` is the module name, or a module of another package registered under the
entry-point group `engage.connectors`.
"""

from __future__ import annotations

import difflib
import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from engage.errors import ConfigError, InputError

if TYPE_CHECKING:
    from engage.compile.compiler import CompiledDefinition
    from engage.config import DestinationConfig, Space
    from engage.messages import Call, MessageContext, WarehouseRows
    from engage.warehouse.base import Warehouse

ENTRY_POINT_GROUP = "engage.connectors"
_REGISTRY: dict[str, type[Connector]] = {}


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


Payload = dict[str, Any]  # one Segment-spec identify or track call


@dataclass(frozen=True)
class TableSelection:
    """Selective sync's tables (SPEC §5): `identifies`, `users`, `tracks` and per-event tables
    (`audience_entered`, …). Nothing listed in `include` means every table; `exclude` always wins. For a
    destination that takes calls rather than tables, an identify is its `identifies` row, and a track is
    sent when `tracks` or its event's table is included and neither is excluded."""

    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    def takes(self, table: str) -> bool:
        return table not in self.exclude and (not self.include or table in self.include)

    def takes_track(self, event_table: str) -> bool:
        if {"tracks", event_table} & self.exclude:
            return False
        return not self.include or bool({"tracks", event_table} & self.include)


@dataclass
class Pace:
    """A delivery's rate limit (`rate_limit:` calls per second, over the whole delivery) and its progress
    callback (changes taken so far), both applied as `Delivery.payloads()` hands out batches."""

    rate: float | None = None
    progress: Callable[[int], None] | None = None
    _sent: int = 0
    _started: float | None = None

    def before(self, payloads: int) -> None:
        """Waits until sending `payloads` more keeps the delivery at or under its rate."""
        now = time.monotonic()
        if self._started is None:
            self._started = now
        if self.rate is not None:
            due = self._started + self._sent / self.rate
            if due > now:
                time.sleep(due - now)
        self._sent += payloads

    def took(self, changes: int) -> None:
        if self.progress is not None:
            self.progress(changes)


@dataclass(frozen=True)
class Rejection:
    """A call a destination refused for good (a 4xx other than 429, an oversize call): recorded, not
    retried, and no obstacle to the calls after it."""

    message_id: str
    type: str
    definition_key: str
    user_id: str | None
    anonymous_id: str | None
    error: str


@dataclass(frozen=True)
class Delivery:
    """One destination's share of one run."""

    destination: str
    schema: str
    send: frozenset[str]  # identify, track
    definitions: list[CompiledDefinition]
    context: MessageContext
    warehouse: Warehouse
    changes: str
    rows: WarehouseRows
    tables: TableSelection = TableSelection()
    pace: Pace = field(default_factory=Pace)
    rejections: list[Rejection] = field(default_factory=list)

    def calls(self, batch_size: int = 1000) -> Iterator[list[Call]]:
        from engage.failpoints import reached
        from engage.messages import read_calls

        batches = read_calls(self.warehouse, self.changes, self.definitions, batch_size)
        for number, batch in enumerate(batches):
            if number:  # the destination has taken the previous batch
                reached("delivering")
            yield batch

    def payloads(self, batch_size: int = 1000) -> Iterator[list[Payload]]:
        """The run's identify and track calls this destination takes (`send:` and selective sync), in
        batches of about `batch_size` changes, streamed from the warehouse."""
        from engage.naming import snakecase

        identify = "identify" in self.send and self.tables.takes("identifies")
        track = "track" in self.send
        for batch in self.calls(batch_size):
            payloads: list[Payload] = []
            for call in batch:
                if identify:
                    payloads.append(call.identify(self.context))
                if track and self.tables.takes_track(snakecase(call.event_name(self.context.events))):
                    payloads.append(call.track(self.context))
            if payloads:
                self.pace.before(len(payloads))
                yield payloads
            self.pace.took(len(batch))

    def reject(self, payload: Payload, error: str) -> None:
        """Records a call the destination refused for good, with its error; delivery goes on."""
        personas = payload.get("context", {}).get("personas", {})
        self.rejections.append(
            Rejection(
                message_id=str(payload.get("messageId")),
                type=str(payload.get("type")),
                definition_key=str(personas.get("computation_key")),
                user_id=payload.get("userId"),
                anonymous_id=payload.get("anonymousId"),
                error=error,
            )
        )


class Connector(ABC):
    """A destination's writer. Subclasses set `name` and `Options` and implement `deliver`."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    def __init__(self, destination: str, config: DestinationConfig, space: Space) -> None:
        self.destination = destination
        self.config = config
        self.space = space
        try:
            self.options = self.Options.model_validate(config.options)
        except ValidationError as err:
            item = err.errors(include_input=False, include_url=False)[0]
            raise ConfigError(
                item["msg"], space.locate("destinations", destination, *(str(p) for p in item["loc"]))
            ) from err

    def in_warehouse(self, warehouse: Warehouse) -> bool:
        """True when this connector writes with SQL inside `warehouse` (and so joins its transaction)."""
        return False

    def prepare(self, delivery: Delivery) -> None:  # noqa: B027 - optional hook
        """In-warehouse connectors: the DDL their writes need, run just before the run's transaction
        (some engines commit an open transaction at any DDL)."""

    def check(self, warehouse: Warehouse) -> None:  # noqa: B027 - optional hook
        """Refuses a configuration that cannot work, before any SQL runs (raise `ConfigError`)."""

    @abstractmethod
    def deliver(self, delivery: Delivery) -> int:
        """Writes the delivery's calls; returns how many calls (or rows) it wrote."""


def load_connector(type_name: str) -> type[Connector]:
    """The registry first, then `engage_connectors.<type>`, then the `engage.connectors` entry points."""
    if type_name in _REGISTRY:
        return _REGISTRY[type_name]
    try:
        importlib.import_module(f"engage_connectors.{type_name}")
    except ModuleNotFoundError as err:
        if err.name != f"engage_connectors.{type_name}":
            raise
    if type_name in _REGISTRY:
        return _REGISTRY[type_name]
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == type_name:
            loaded = entry.load()
            if not (isinstance(loaded, type) and issubclass(loaded, Connector)):
                raise InputError(f"entry point {entry.value} is not an engage Connector")
            return loaded
    known = sorted({*(e.name for e in entry_points(group=ENTRY_POINT_GROUP)), *_REGISTRY})
    close = difflib.get_close_matches(type_name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(known)})"
    raise InputError(f"unknown connector '{type_name}'{hint}")
