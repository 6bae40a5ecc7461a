"""Scratch tables for engines whose temporary tables are not materialized per connection.

BigQuery has no session temporary tables outside scripts, and Spark's temporary views are recomputed on
every read (a diff read after the state advanced would see the new state). There, a run's intermediate
results are ordinary tables in a scratch schema, named per connection, dropped when it closes; statements
keep using the bare names, which `rewrite` points at those tables.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

from sqlglot import exp

from engage.errors import WarehouseError

log = logging.getLogger("engage.warehouse")


class ScratchTables:
    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._token = uuid.uuid4().hex[:8]
        self._tables: dict[str, str] = {}  # bare name → table name in the scratch schema

    def __bool__(self) -> bool:
        return bool(self._tables)

    def __iter__(self) -> Iterator[exp.Table]:
        return (self.table(name) for name in self._tables)

    def add(self, name: str) -> exp.Table:
        """The scratch table that the bare `name` stands for from now on."""
        self._tables[name] = f"{name.strip('_')}_{self._token}"
        return self.table(name)

    def table(self, name: str) -> exp.Table:
        return exp.table_(self._tables[name], db=self.schema)

    def rewrite(self, statement: exp.Expr) -> exp.Expr:
        """Bare scratch names become the scratch schema's tables, keeping the bare name as alias so that
        column qualifiers still resolve."""

        def rewrite(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Table) and not node.db and node.name in self._tables:
                return exp.table_(self._tables[node.name], db=self.schema, alias=node.alias or node.name)
            return node

        return statement.transform(rewrite)

    def drop(self, execute: Callable[[exp.Expr], None]) -> None:
        """Drops every scratch table of the connection (`execute` runs a statement on it); one that cannot
        be dropped is reported, not raised: the run's outcome does not depend on it."""
        for table in self:
            try:
                execute(exp.Drop(tables=[table], kind="TABLE", exists=True))
            except WarehouseError:
                log.warning("could not drop scratch table %s.%s", table.db, table.name)
