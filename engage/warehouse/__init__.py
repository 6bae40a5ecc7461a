"""Warehouse adapters, one module per engine; `open_warehouse` picks one from the space's config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engage.warehouse.base import Warehouse
from engage.warehouse.capabilities import Capabilities

if TYPE_CHECKING:
    from engage.config import Space

__all__ = ["Capabilities", "Warehouse", "open_warehouse"]


def open_warehouse(space: Space, *, read_only: bool = False) -> Warehouse:
    """Connects to the space's warehouse. Drivers are imported only when their engine is used."""
    config = space.config.warehouse
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

        return PostgresWarehouse(config, space.locate)
    if config.type == "snowflake":
        from engage.warehouse.snowflake import SnowflakeWarehouse

        return SnowflakeWarehouse(config, space.locate)
    if config.type == "bigquery":
        from engage.warehouse.bigquery import BigQueryWarehouse

        return BigQueryWarehouse(config, space.locate)
    raise AssertionError(f"unhandled warehouse type {config.type}")
