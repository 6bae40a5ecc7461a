"""Test harness for a local Spark session standing in for Databricks.

`spark_session` starts a small `local[2]` session whose warehouse, metastore, scratch space and logs all
live under a throwaway directory, so nothing lands in the working directory. `create_table` lands rows
(Segment-shaped: string ids, TIMESTAMP columns, doubles) as a table in a database, and `query` runs SQL
and returns plain tuples with timestamps as naive UTC datetimes, whatever the machine's time zone.

Spark keeps one SparkContext per process: build the session once (a session-scoped fixture) and give each
test its own database rather than a new session.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Log4j 2 configuration that keeps the JVM quiet: errors only, on stderr. The gateway's logger sets the level
# PySpark applies at start-up (WARN unless configured, announced with a "Setting default log level" line);
# the Hive metastore logs an expected AlreadyExistsException, with stack trace, on CREATE SCHEMA IF NOT EXISTS;
# a failing task (e.g. an ANSI cast error) is logged with its stack trace before PySpark raises the same error.
_LOG4J2 = """\
rootLogger.level = error
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = error
logger.metastore.name = org.apache.hadoop.hive.metastore.RetryingHMSHandler
logger.metastore.level = off
logger.executor.name = org.apache.spark.executor.Executor
logger.executor.level = off
logger.tasks.name = org.apache.spark.scheduler.TaskSetManager
logger.tasks.level = off
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
"""


def quote(*parts: str) -> str:
    """Return a backtick-quoted, dot-joined Spark identifier, e.g. quote("db", "t") -> `db`.`t`."""
    return ".".join("`" + part.replace("`", "``") + "`" for part in parts)


def spark_session(tmp_dir: Path, *, hive: bool = False, driver_memory: str = "512m") -> SparkSession:
    """Start (or return the running) local Spark session rooted in `tmp_dir`.

    The session runs `local[2]` with 2 shuffle partitions, no UI, no whole-stage code generation or
    adaptive execution (both cost more than they save on tiny data), UTC as session time zone, and ANSI
    mode as Spark's default (on, like Databricks SQL). Tables are parquet files under `tmp_dir/warehouse`.
    With `hive=False` (default, faster) the catalog lives in memory; with `hive=True` it is a Derby
    metastore under `tmp_dir/metastore_db`. JVM-level settings (memory, Derby home, logging) take effect
    only for the first session of the process.
    """
    from pyspark.sql import SparkSession

    tmp_dir = Path(tmp_dir).resolve()
    for name in ("warehouse", "local", "checkpoints", "derby"):
        (tmp_dir / name).mkdir(parents=True, exist_ok=True)
    log4j = tmp_dir / "log4j2.properties"
    log4j.write_text(_LOG4J2)
    # C1-only JIT and the serial collector start faster and use fewer threads; tests run short jobs.
    java_options = (
        f"-Dderby.system.home={tmp_dir / 'derby'} -Dlog4j2.configurationFile=file:{log4j}"
        " -XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
    )

    settings: dict[str, str] = {
        "spark.driver.memory": driver_memory,
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.extraJavaOptions": java_options,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.warehouse.dir": str(tmp_dir / "warehouse"),
        "spark.local.dir": str(tmp_dir / "local"),
        "spark.checkpoint.dir": str(tmp_dir / "checkpoints"),
        "spark.sql.sources.default": "parquet",
        # Tiny inputs: compiling whole-stage code and re-planning at run time cost more than they save.
        # (spark.sql.codegen.factoryMode=NO_CODEGEN is not used: it breaks spark.catalog.listTables.)
        "spark.sql.codegen.wholeStage": "false",
        "spark.sql.adaptive.enabled": "false",
        "spark.sql.catalogImplementation": "hive" if hive else "in-memory",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.executor.heartbeatInterval": "20s",
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
    }
    if hive:
        metastore = tmp_dir / "metastore_db"
        settings["spark.hadoop.javax.jdo.option.ConnectionURL"] = (
            f"jdbc:derby:;databaseName={metastore};create=true"
        )
        settings["spark.hadoop.hive.metastore.warehouse.dir"] = str(tmp_dir / "warehouse")

    builder = SparkSession.builder.master("local[2]").appName("engage-tests")
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    _quiet_python_loggers()
    return session


def create_table(
    spark: SparkSession,
    database: str,
    table: str,
    columns: Mapping[str, str],
    rows: Iterable[Mapping[str, Any] | Sequence[Any]] = (),
    *,
    replace: bool = True,
) -> str:
    """Land `rows` as parquet table `database`.`table` and return its quoted name.

    `columns` maps each column name to a Spark SQL type (`STRING`, `TIMESTAMP`, `DOUBLE`, ...). A row is a
    mapping by column name (missing keys become NULL) or a sequence in column order. Naive datetimes are
    taken as UTC. The database is created if missing; an existing table is dropped and created anew unless
    `replace=False`, in which case the rows are appended. Tables are created by DDL, so every Spark type
    (TIMESTAMP_NTZ, VARCHAR(n), DECIMAL(p,s), ARRAY<...>) lands as written.
    """
    names = list(columns)
    data = [tuple(_to_spark(value) for value in _as_sequence(row, names)) for row in rows]
    target = quote(database, table)
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {quote(database)}")
    if replace:
        spark.sql(f"DROP TABLE IF EXISTS {target}")
    ddl = ", ".join(f"{quote(name)} {kind}" for name, kind in columns.items())
    spark.sql(f"CREATE TABLE IF NOT EXISTS {target} ({ddl}) USING parquet")
    if data:
        # The table's schema, as Spark reads it back (CHAR/VARCHAR become STRING), types the rows.
        frame = spark.createDataFrame(data, schema=spark.table(target).schema)
        frame.write.insertInto(target)
    return target


def query(
    spark: SparkSession, sql: str, args: Mapping[str, Any] | Sequence[Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run `sql` (with optional named `:p` or positional `?` parameters) and return rows as tuples.

    Top-level TIMESTAMP columns come back as naive UTC datetimes (PySpark itself returns them in the
    process's local time zone; timestamps nested in arrays or structs are left so); TIMESTAMP_NTZ values
    are returned as stored.
    """
    from pyspark.sql.types import TimestampType

    if args is None:
        frame = spark.sql(sql)
    else:
        frame = spark.sql(sql, args=dict(args) if isinstance(args, Mapping) else list(args))
    local = [i for i, field in enumerate(frame.schema.fields) if isinstance(field.dataType, TimestampType)]
    result: list[tuple[Any, ...]] = []
    for row in frame.collect():
        values = list(row)
        for i in local:
            if values[i] is not None:
                values[i] = values[i].astimezone(UTC).replace(tzinfo=None)
        result.append(tuple(values))
    return result


def _quiet_python_loggers() -> None:
    # PySpark logs every captured SQL error, with the JVM stack trace, as JSON on stderr before raising it.
    from pyspark.logger import PySparkLogger

    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL + 1)


def _as_sequence(row: Mapping[str, Any] | Sequence[Any], names: list[str]) -> Sequence[Any]:
    if isinstance(row, Mapping):
        unknown = set(row) - set(names)
        if unknown:
            raise KeyError(f"columns not in the table: {sorted(unknown)}")
        return [row.get(name) for name in names]
    if len(row) != len(names):
        raise ValueError(f"row has {len(row)} values for {len(names)} columns: {row!r}")
    return row


def _to_spark(value: Any) -> Any:
    # PySpark reads a naive datetime in the process's local time zone; pin it to UTC instead.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
