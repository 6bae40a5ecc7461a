"""Spark SQL (Databricks' dialect) through a PySpark session.

Without Delta, Spark has neither transactions nor row updates. So:
- a run's intermediate tables are parquet tables in a scratch schema (`scratch.py`): Spark's temporary
  views are recomputed at every read, and the diff must not be re-read after the state has advanced;
- a table that changes (the state, `users`) gets its new contents written over it (`overwrite`);
- statements commit one by one, and a run relies on what every engine has: writes that skip ids already
  written, and a state advanced last.

The adapter runs on its own session (`newSession`) of the process's Spark context, with UTC as the session
time zone, which engage's naive-UTC timestamps need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from engage.catalog import Catalog, Table, portable_type
from engage.errors import TransientWarehouseError, WarehouseError
from engage.warehouse.base import NEXT_ROWS, Setting, Warehouse, first_line
from engage.warehouse.capabilities import DATABRICKS
from engage.warehouse.drivers import require
from engage.warehouse.scratch import ScratchTables

if TYPE_CHECKING:
    from engage.config import SparkWarehouseConfig

log = logging.getLogger("engage.warehouse")
PARQUET = exp.Properties(expressions=[exp.FileFormatProperty(this=exp.Var(this="PARQUET"))])


def _to_spark(value: Any) -> Any:
    """PySpark reads a naive datetime in the process's local time zone: engage's are UTC."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class SparkWarehouse(Warehouse):
    capabilities = DATABRICKS

    def __init__(
        self, config: SparkWarehouseConfig, setting: Setting, resolve: Callable[[str], Path]
    ) -> None:
        self.config = config
        self._setting = setting
        sql = require("pyspark.sql", "spark")
        self._errors = require("pyspark.errors", "spark")
        self._types = require("pyspark.sql.types", "spark")
        self._scratch = ScratchTables(config.scratch_schema)
        self._scratch_ready = False
        # No progress bars on engage's terminal: it reports its own stages.
        settings = {"spark.sql.session.timeZone": "UTC", "spark.ui.showConsoleProgress": "false"}
        if config.warehouse_dir:
            settings["spark.sql.warehouse.dir"] = str(resolve(config.warehouse_dir))
        if config.metastore:
            metastore = resolve(config.metastore)
            settings["spark.sql.catalogImplementation"] = "hive"
            settings["spark.hadoop.javax.jdo.option.ConnectionURL"] = (
                f"jdbc:derby:;databaseName={metastore};create=true"
            )
            # Derby writes its log into its home, by default the working directory.
            settings["spark.driver.extraJavaOptions"] = f"-Dderby.system.home={metastore.parent}"
        settings.update(config.conf)
        # A session already running in this process (an application embedding engage) is shared, not
        # stopped on close; its context-wide settings stay as they are.
        self._owns_context = sql.SparkSession.getActiveSession() is None
        builder = sql.SparkSession.builder.master(config.master).appName("engage")
        for key, value in settings.items():
            builder = builder.config(key, value)
        try:
            self.session = builder.getOrCreate().newSession()
            self.session.conf.set("spark.sql.session.timeZone", "UTC")
            if self._owns_context:
                self.session.sparkContext.setLogLevel("ERROR")
        except Exception as err:
            raise WarehouseError(f"cannot start Spark: {first_line(err)}", setting("master")) from err

    @property
    def location(self) -> str:
        return f"spark:{self.config.master}:{self.session.conf.get('spark.sql.warehouse.dir')}"

    def render(self, statement: exp.Expr) -> str:
        return super().render(self._scratch.rewrite(statement))

    def _translate(self, err: Exception, sql: str) -> WarehouseError:
        if not isinstance(err, self._errors.PySparkException):  # the JVM or its gateway went away
            return TransientWarehouseError(f"spark: {first_line(err)}", self._setting("master"))
        return WarehouseError(f"spark: {first_line(err)}\n  in: {sql[:300]}")

    def _frame(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        """A DataFrame of `sql`: commands (DDL, INSERT) have run when this returns, queries have not."""
        started = time.monotonic()
        try:
            frame = self.session.sql(sql, args=[_to_spark(v) for v in parameters] or None)
        except Exception as err:
            raise self._translate(err, sql) from err
        log.debug("%.3fs %s", time.monotonic() - started, sql)
        return frame

    def _rows(self, frame: Any, sql: str) -> Iterator[tuple[Any, ...]]:
        """A frame's rows, TIMESTAMP values as naive UTC (PySpark gives them in the local time zone)."""
        local = [
            i for i, f in enumerate(frame.schema.fields) if isinstance(f.dataType, self._types.TimestampType)
        ]
        try:
            for row in frame.toLocalIterator():
                values = list(row)
                for i in local:
                    if values[i] is not None:
                        values[i] = values[i].astimezone(UTC).replace(tzinfo=None)
                yield tuple(values)
        except Exception as err:
            raise self._translate(err, sql) from err

    def execute(self, statement: exp.Expr, parameters: Sequence[Any] = ()) -> None:
        self._frame(self.render(statement), parameters)

    def insert(self, statement: exp.Insert) -> int:
        """Spark reports no row count: the rows are counted first (the insert reads the same data)."""
        query = statement.expression
        assert isinstance(query, exp.Query)
        counted = self.fetchall(exp.select(exp.Count(this=exp.Star())).from_(query.subquery("i")))
        self.execute(statement)
        return int(counted[0][0])

    def fetchall(self, query: exp.Expr) -> list[tuple[Any, ...]]:
        sql = self.render(query)
        return list(self._rows(self._frame(sql), sql))

    def fetch_batches(self, query: exp.Expr, size: int) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        sql = self.render(query)
        frame = self._frame(sql)
        batch: list[tuple[Any, ...]] = []
        for row in self._rows(frame, sql):
            batch.append(row)
            if len(batch) == size:
                yield frame.columns, batch
                batch = []
        if batch:
            yield frame.columns, batch

    def executemany(self, statement: exp.Expr, rows: Sequence[Sequence[Any]]) -> None:
        sql = self.render(statement)
        for row in rows:
            self._frame(sql, row)

    def load(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> None:
        """Into a scratch table of this connection, as one DataFrame write per batch."""
        if not rows:
            return
        target = self.render(self._scratch.table(table))
        try:
            schema = self.session.table(target).schema
            data = [tuple(_to_spark(v) for v in row) for row in rows]
            self.session.createDataFrame(data, schema=schema).write.insertInto(target)
        except Exception as err:
            raise self._translate(err, f"load into {target}") from err

    def _columns(self, schema: Any) -> dict[str, str]:
        return {f.name: portable_type(f.dataType.simpleString()) for f in schema.fields}

    def query_columns(self, query: exp.Query) -> dict[str, str]:
        """From the analyzed plan: nothing runs."""
        return self._columns(self._frame(self.render(query)).schema)

    def describe(self, schemas: Sequence[str]) -> Catalog:
        tables: dict[tuple[str, str], Table] = {}
        for schema in schemas:
            try:
                if not self.session.catalog.databaseExists(schema):
                    continue
                listed = self.session.catalog.listTables(schema)
            except Exception as err:
                raise self._translate(err, f"list tables of {schema}") from err
            for item in sorted((t for t in listed if not t.isTemporary), key=lambda t: t.name):
                columns = self.table_columns(schema, item.name)
                tables[(schema, item.name)] = Table(schema, item.name, columns)
        return Catalog(tuple(schemas), tables)

    def table_columns(self, schema: str, table: str) -> dict[str, str]:
        name = self.render(exp.table_(table, db=schema))
        try:
            if not self.session.catalog.tableExists(name):
                return {}
            return self._columns(self.session.table(name).schema)
        except Exception as err:
            raise self._translate(err, f"describe {name}") from err

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """No transactions without Delta: statements commit one by one."""
        yield

    def ensure_table(self, schema: str, table: str, columns: Sequence[tuple[str, exp.DataType]]) -> None:
        definition = exp.Schema(
            this=exp.table_(table, db=schema),
            expressions=[exp.ColumnDef(this=exp.to_identifier(name), kind=kind) for name, kind in columns],
        )
        self.execute(exp.Create(this=definition, kind="TABLE", exists=True, properties=PARQUET.copy()))

    def create_temp_table(self, name: str, query: exp.Query) -> None:
        if not self._scratch_ready:
            self.ensure_schema(self.config.scratch_schema)
            self._scratch_ready = True
        target = self._scratch.add(name)
        self.execute(exp.Drop(tables=[target.copy()], kind="TABLE", exists=True))
        self.execute(exp.Create(this=target, kind="TABLE", expression=query, properties=PARQUET.copy()))

    def overwrite(self, table: exp.Table, query: exp.Query) -> None:
        """INSERT OVERWRITE, from a copy of the new rows: Spark refuses to overwrite a table it reads."""
        self.create_temp_table(NEXT_ROWS, query)
        columns = query.named_selects
        rows = exp.select(*columns).from_(NEXT_ROWS)
        self.execute(exp.insert(rows, table, columns=columns, overwrite=True))

    def close(self) -> None:
        self._scratch.drop(self.execute)
        if self._owns_context:
            self.session.stop()
