"""Optional drivers: imported only when their engine is used, with the pip command when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from engage.errors import WarehouseError


def require(module: str, extra: str) -> ModuleType:
    """Imports `module`, a driver of the `engage[extra]` install option."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise WarehouseError(
            f"the {extra} warehouse needs the {module} package: pip install 'engage[{extra}]'"
        ) from err
