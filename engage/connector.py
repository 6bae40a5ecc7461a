"""The storage connector contract, and how a destination's `type` finds its connector.

A connector receives a `Delivery`: the run's changes for the definitions routed to it. It either streams
`Call` payloads (`delivery.calls()`), or, when it writes into the compute warehouse itself, runs
`INSERT … SELECT` statements shaped by `delivery.rows` so that no row passes through Python. In-warehouse
connectors run inside the transaction that also advances the state; the others run just before it.

Adding a connector is one module in `connectors/` (import name `engage_connectors`) defining one
`Connector` subclass whose `name` is the module name, or a module of another package registered under the
entry-point group `engage.connectors`.
"""

from __future__ import annotations

import difflib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, ClassVar

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


@dataclass(frozen=True)
class Delivery:
    """One destination's share of a run."""

    destination: str
    schema: str
    send: frozenset[str]  # identify, track
    definitions: list[CompiledDefinition]
    context: MessageContext
    warehouse: Warehouse
    changes: str
    rows: WarehouseRows

    def calls(self, batch_size: int = 1000) -> Iterator[list[Call]]:
        from engage.failpoints import reached
        from engage.messages import read_calls

        batches = read_calls(self.warehouse, self.changes, self.definitions, batch_size)
        for number, batch in enumerate(batches):
            if number:  # the destination has taken the previous batch
                reached("delivering")
            yield batch


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
