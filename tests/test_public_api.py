"""The public API is one list: a name added to or dropped from `engage.__all__` is a decision."""

from __future__ import annotations

import engage

PUBLIC = {
    "Call", "ConfigError", "Connector", "ConnectorError", "DataError", "DefinitionError", "Delivery",
    "EngageError", "InputError", "MessageContext", "Project", "RunError", "RunSummary", "Space",
    "WarehouseError", "__version__", "load_connector", "load_project", "run_space",
}  # fmt: skip


def test_all_is_exactly_the_public_api() -> None:
    assert set(engage.__all__) == PUBLIC
    assert all(hasattr(engage, name) for name in engage.__all__)
