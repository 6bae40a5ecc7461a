"""`type: duckdb`: writes `engage_<space>` (identifies, users, tracks, one table per track event) into a
DuckDB database. When that database is the space's warehouse, every write is `INSERT … SELECT` inside
the run's transaction: no call passes through Python."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from engage.connector import Connector, Delivery
from engage.errors import ConfigError
from engage.warehouse.base import Warehouse

from .warehouse import TableWriter


class DuckDBOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = None  # default: the space's warehouse file


class DuckDBConnector(Connector):
    name = "duckdb"
    Options = DuckDBOptions

    def _location(self) -> str | None:
        assert isinstance(self.options, DuckDBOptions)
        if self.options.path is None:
            return None
        return f"duckdb:{self.space.resolve(self.options.path).resolve()}"

    def in_warehouse(self, warehouse: Warehouse) -> bool:
        location = self._location()
        return warehouse.location.startswith("duckdb:") and location in (None, warehouse.location)

    def check(self, warehouse: Warehouse) -> None:
        if not self.in_warehouse(warehouse):
            raise ConfigError(
                "a duckdb destination is the space's own warehouse file; to write into another database use"
                " `type: warehouse` with a `warehouse:` block, e.g. {type: duckdb, path: other.duckdb}",
                self.space.locate("destinations", self.destination, "path"),
            )

    def prepare(self, delivery: Delivery) -> None:
        TableWriter(delivery).prepare()

    def deliver(self, delivery: Delivery) -> int:
        writer = TableWriter(delivery)
        return writer.write(writer.plan())
