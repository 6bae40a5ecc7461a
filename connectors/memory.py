"""`type: memory`: keeps every call in a list in this process.

The reference implementation of the Python-side contract, and the double the tests use to read what a
run sent; it is not a mock of any engine (it stores exactly the payloads other connectors write)."""

from __future__ import annotations

from typing import Any, ClassVar

from engage.connector import Connector, Delivery


class MemoryConnector(Connector):
    name = "memory"
    sent: ClassVar[dict[str, list[dict[str, Any]]]] = {}

    def deliver(self, delivery: Delivery) -> int:
        messages = self.sent.setdefault(self.destination, [])
        before = len(messages)
        for batch in delivery.payloads(500):
            messages.extend(batch)
        return len(messages) - before
