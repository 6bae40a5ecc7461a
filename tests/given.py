"""A `Delivery` whose payloads a test gives, for testing a connector without a run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from engage.connector import Delivery, Payload
from engage.messages import MessageContext, WarehouseRows
from engage.warehouse.base import Warehouse


@dataclass(frozen=True)
class GivenDelivery(Delivery):
    """A delivery whose payloads a test gives instead of reading them from a changes table; `reject()`
    and everything else are engage's own."""

    given: tuple[Payload, ...] = ()

    def payloads(self, batch_size: int = 1000) -> Iterator[list[Payload]]:
        for start in range(0, len(self.given), batch_size):
            yield list(self.given[start : start + batch_size])


def given_delivery(
    warehouse: Warehouse, destination: str, context: MessageContext, payloads: list[Payload]
) -> GivenDelivery:
    """`payloads` as one run's delivery to `destination`; `warehouse` is named but never read."""
    return GivenDelivery(
        destination=destination,
        schema="engage_default",
        send=frozenset({"identify", "track"}),
        definitions=[],
        context=context,
        warehouse=warehouse,
        changes="__engage_changes",
        rows=WarehouseRows("__engage_changes", [], context, context.sent_at),
        given=tuple(payloads),
    )
