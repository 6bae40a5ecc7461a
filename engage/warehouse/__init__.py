"""Warehouse adapters, one module per engine; `connect` picks one from a warehouse config."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlglot.dialects.dialect import Dialect

from engage.warehouse.base import Warehouse
from engage.warehouse.capabilities import Capabilities

if TYPE_CHECKING:
    from engage.config import Space, WarehouseConfig
    from engage.errors import Location

__all__ = ["Capabilities", "Warehouse", "connect", "open_warehouse"]


def open_warehouse(space: Space, *, read_only: bool = False) -> Warehouse:
    """Connects to the space's own warehouse."""
    return connect(space.config.warehouse, space, space.locate, read_only=read_only)


def connect(
    config: WarehouseConfig, space: Space, locate: Callable[..., Location], *, read_only: bool = False
) -> Warehouse:
    """Connects to a warehouse; `locate("warehouse", field)` names a setting in errors. Drivers are imported
    only when their engine is used, and so is sqlglot's dialect for it, with the driver: loading it is part
    of opening the connection, not of the first statement."""
    warehouse = _open(config, space, locate, read_only=read_only)
    Dialect.get_or_raise(warehouse.dialect)
    return warehouse


def _open(
    config: WarehouseConfig, space: Space, locate: Callable[..., Location], *, read_only: bool
) -> Warehouse:

    def setting(field: str) -> Location:
        return locate("warehouse", field)

    if config.type == "duckdb":
        from engage.warehouse.duckdb import DuckDBWarehouse

        return DuckDBWarehouse(
            space.resolve(config.path),
            read_only=read_only,
            threads=config.threads,
            memory_limit=config.memory_limit,
        )
    if config.type in ("postgres", "redshift"):
        from engage.warehouse.postgres import PostgresWarehouse

        return PostgresWarehouse(config, setting)
    if config.type == "snowflake":
        from engage.warehouse.snowflake import SnowflakeWarehouse

        return SnowflakeWarehouse(config, setting)
    if config.type == "bigquery":
        from engage.warehouse.bigquery import BigQueryWarehouse

        return BigQueryWarehouse(config, setting)
    if config.type == "spark":
        from engage.warehouse.spark import SparkWarehouse

        return SparkWarehouse(config, setting, space.resolve)
    raise AssertionError(f"unhandled warehouse type {config.type}")
