"""engage: warehouse-native audiences and computed traits, synced as Segment-spec calls.

The public API is what this module exports: running a space from Python, and what a connector author
needs. Everything else is internal and may change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from engage.config import Project, Space, load_project
from engage.connector import Connector, Delivery, load_connector
from engage.errors import (
    ConfigError,
    ConnectorError,
    DataError,
    DefinitionError,
    EngageError,
    InputError,
    RunError,
    WarehouseError,
)
from engage.messages import Call, MessageContext
from engage.sync import RunSummary, run_space

__all__ = [
    "Call",
    "ConfigError",
    "Connector",
    "ConnectorError",
    "DataError",
    "DefinitionError",
    "Delivery",
    "EngageError",
    "InputError",
    "MessageContext",
    "Project",
    "RunError",
    "RunSummary",
    "Space",
    "WarehouseError",
    "__version__",
    "load_connector",
    "load_project",
    "run_space",
]
