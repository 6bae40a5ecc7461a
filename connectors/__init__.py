"""engage's storage connectors, one module per connector; the module name is the connector's `type`."""

from __future__ import annotations
