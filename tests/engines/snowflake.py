"""Test harness for Snowflake: the real `snowflake-connector-python` against an in-process `fakesnow` server.

`fakesnow_server` starts fakesnow's HTTP server (the one the real connector logs in to and sends queries
to) on a free 127.0.0.1 port and yields the connect kwargs for it. `fresh_database` gives each test its own
database on that server. `connect` opens a connection from such settings,
`load_rows` lands rows in a table with the connector's own `write_pandas` (PUT to a stage, then COPY INTO),
and `query` runs SQL and returns plain tuples.

The settings are what engage passes to `snowflake.connector.connect` unchanged: account, user, password,
host, port, protocol="http", database, schema, plus `session_parameters` and `network_timeout`.

Things to know about the fake, all kept here because they are about fakesnow, not about Snowflake:

- Every server started in one process shares one in-memory DuckDB (`fakesnow.server.shared_fs`, made at
  import). Data persists across connections and across server restarts in the process, so isolation comes
  from a unique database per test (`fresh_database`). fakesnow cannot `DROP DATABASE`; on exit the
  database's schemas are dropped instead.
- `fakesnow.server()` can only be called once per process: importing the `fakesnow.server` module
  replaces the `server` function on the package. So the uvicorn server is started here directly.
- The connector writes server-sent parameters (AUTOCOMMIT among them) back into the `session_parameters`
  dict it is given, so one dict shared by several `connect` calls leaks `autocommit=False` from one
  connection to the next. `connect` passes a copy.
- `network_timeout` must be set: without it the connector retries an HTTP 500 (fakesnow's answer to an
  error it does not map, e.g. a cast failing while rows are fetched) for minutes.
- Four fakes of fakesnow 0.12.1 are patched while a server runs (see `_compat_patches`), so the
  connector's own `write_pandas` works end to end (parquet PUT to a temporary stage, COPY INTO):
  * NULL TIMESTAMP_NTZ/LTZ/TZ values come back from the server as 1970-01-01 (the Arrow struct it sends
    has no validity bitmap): the struct is rebuilt with the nulls kept;
  * the connector (3.x and 4.x) names the COPY INTO source stage as a string literal
    (`FROM '@"STAGE"'`), which fakesnow rejects ("invalid URL prefix"): that form is read as the stage;
  * `IDENTIFIER('"raw"."t"')` (how write_pandas names a stage or table given `schema=`) is read as one
    identifier `raw"."t`: it is split into its parts;
  * a stage named without a schema is looked up in the upper-cased current schema, so a PUT fails when
    the current schema is a quoted lower-case one: the current database and schema are used as they are.
- `write_pandas` still cannot `auto_create_table` (its `TABLE(INFER_SCHEMA(...))` does not parse) nor
  `overwrite` (`TRUNCATE TABLE IDENTIFIER(?)` does not parse), so `load_rows` creates the table itself.
- DuckDB resolves identifiers case-insensitively, so a quoted lower-case name finds an upper-case table
  (real Snowflake would not), and `"a"` / `"A"` cannot both exist.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.metadata
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import snowflake.connector
import uvicorn
from snowflake.connector import SnowflakeConnection
from snowflake.connector.pandas_tools import write_pandas
from sqlglot import exp

from tests.engines.dataset import SourceTable
from tests.engines.net import free_port

# engage's portable column types (engage.catalog) as Snowflake types; any other name is used as is.
_TYPES = {
    "varchar": "VARCHAR",
    "bigint": "NUMBER(38, 0)",
    "double": "DOUBLE",
    "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMP_NTZ",
}
# The Snowflake type names a column is held as in the DataFrame handed to write_pandas.
_TIMESTAMPS = ("TIMESTAMP", "DATETIME")
_FLOATS = ("DOUBLE", "FLOAT", "REAL")
_INTEGERS = ("NUMBER", "INT", "BIGINT", "SMALLINT", "TINYINT", "BYTEINT", "DECIMAL", "NUMERIC")
_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "fakesnow.server")
_START_TIMEOUT = 10.0


def fakesnow_version() -> str:
    """The installed fakesnow version, for skip and failure messages."""
    return importlib.metadata.version("fakesnow")


@contextlib.contextmanager
def fakesnow_server(host: str = "127.0.0.1", network_timeout: int = 5) -> Iterator[dict[str, Any]]:
    """Run fakesnow's HTTP server in a background thread and yield connect kwargs without a database.

    The server answers on `host` at a free port until the block exits. `network_timeout` (seconds) bounds
    the connector's retries of a failed request, so a fakesnow 500 fails the test instead of hanging it.
    """
    app = importlib.import_module("fakesnow.server").app
    port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="fakesnow server", daemon=True)
    with _compat_patches(), _quiet_loggers():
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while thread.is_alive() and not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            server.should_exit = True
            thread.join(_START_TIMEOUT)
            raise RuntimeError(f"fakesnow {fakesnow_version()} server did not start on {host}:{port}")
        try:
            yield {
                "account": "fakesnow",
                "user": "fake",
                "password": "snow",
                "host": host,
                "port": port,
                "protocol": "http",
                # no telemetry posts to the (unreachable) Snowflake endpoints
                "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
                "network_timeout": network_timeout,
            }
        finally:
            server.should_exit = True
            thread.join(_START_TIMEOUT)


@contextlib.contextmanager
def fresh_database(
    server: Mapping[str, Any], schema: str = "PUBLIC", database: str | None = None
) -> Iterator[dict[str, Any]]:
    """Yield settings for a new database (unique unless `database` is given) with `schema` in it.

    fakesnow creates the database and schema named at login, so the first connection makes them. On exit
    the database's schemas are dropped (fakesnow has no DROP DATABASE).
    """
    name = database or f"ENGAGE_TEST_{uuid.uuid4().hex[:12].upper()}"
    settings = {**copy.deepcopy(dict(server)), "database": name, "schema": schema}
    with connect(settings):
        pass
    try:
        yield settings
    finally:
        with connect(settings) as connection:
            schemas = query(
                connection,
                "SELECT schema_name FROM information_schema.schemata"
                f" WHERE catalog_name = {exp.Literal.string(name).sql(dialect='snowflake')}",
            )
            for (found,) in schemas:
                if found.upper() != "INFORMATION_SCHEMA":
                    connection.cursor().execute(f"DROP SCHEMA IF EXISTS {quote(name, found)} CASCADE")


def connect(settings: Mapping[str, Any], **overrides: Any) -> SnowflakeConnection:
    """A real connector connection from `settings`, with `overrides` on top.

    Passes a deep copy: the connector writes into the `session_parameters` dict it is given.
    """
    kwargs = copy.deepcopy({**settings, **overrides})
    return snowflake.connector.connect(**kwargs)


def query(
    connection: SnowflakeConnection, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run `sql` (with `params` in the connection's paramstyle) and return the rows as tuples."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [tuple(row) for row in cursor.fetchall()]


def quote(*parts: str) -> str:
    """`parts` as a dotted name of double-quoted (case-sensitive) Snowflake identifiers."""
    return ".".join(exp.to_identifier(part, quoted=True).sql(dialect="snowflake") for part in parts)


def load_rows(
    connection: SnowflakeConnection,
    schema: str,
    table: str,
    columns: Sequence[tuple[str, str]] | Mapping[str, str],
    rows: Iterable[Sequence[Any] | Mapping[str, Any]],
) -> int:
    """Create `"schema"."table"` (and the schema) if missing and append `rows` with `write_pandas`.

    `columns` are (name, type) pairs, the type either one of engage's portable types or a Snowflake type
    name. Identifiers are quoted as given, so lower-case names stay lower-case, as engage renders them.
    Rows are sequences in column order or mappings by column name. Timestamps may be datetimes or ISO
    text; aware ones are converted to UTC and stored naive (TIMESTAMP_NTZ). Returns the rows loaded.

    The write goes through the connector's own `write_pandas` (a parquet PUT to a temporary stage, then
    COPY INTO). The connection's current schema is the same afterwards.
    """
    pairs = list(columns.items()) if isinstance(columns, Mapping) else list(columns)
    typed = [(name, _TYPES.get(kind.lower(), kind)) for name, kind in pairs]
    with connection.cursor() as cursor:
        previous = cursor.execute("SELECT CURRENT_SCHEMA()").fetchone()
        # CREATE SCHEMA makes the new schema current (in Snowflake too); the finally below restores it.
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
        try:
            definition = ", ".join(f"{quote(name)} {kind}" for name, kind in typed)
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {quote(schema, table)} ({definition})")
            frame = _frame(typed, rows)
            if frame.empty:
                return 0
            success, _, loaded, output = write_pandas(
                connection, frame, table, schema=schema, quote_identifiers=True
            )
            if not success:
                raise RuntimeError(f"write_pandas into {quote(schema, table)} failed: {output}")
            return int(loaded)
        finally:
            if previous and previous[0]:
                cursor.execute(f"USE SCHEMA {quote(previous[0])}")


def load_sources(connection: SnowflakeConnection, tables: Sequence[SourceTable]) -> None:
    """Land every `SourceTable` (the engine-neutral dataset of tests/engines) with `load_rows`."""
    for source in tables:
        load_rows(connection, source.schema, source.name, source.columns, source.rows)


def _frame(
    columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any] | Mapping[str, Any]]
) -> pd.DataFrame:
    """`rows` as a DataFrame whose dtypes write_pandas stages as the columns' Snowflake types."""
    names = [name for name, _ in columns]
    values: list[list[Any]] = [[] for _ in columns]
    for row in rows:
        ordered = [row.get(name) for name in names] if isinstance(row, Mapping) else list(row)
        if len(ordered) != len(names):
            raise ValueError(f"row {row!r} has {len(ordered)} values for columns {names}")
        for index, value in enumerate(ordered):
            values[index].append(value)
    return pd.DataFrame(
        {name: _series(kind, column) for (name, kind), column in zip(columns, values, strict=True)},
        columns=names,
    )


def _series(kind: str, values: list[Any]) -> pd.Series:
    name = kind.upper()
    if name == "DATE":
        return pd.Series(values, dtype=object)
    if name.startswith(_TIMESTAMPS):
        # utc=True reads naive values as UTC and converts aware ones; the result is stored naive (NTZ)
        return pd.to_datetime(pd.Series(values, dtype=object), utc=True).dt.tz_localize(None)
    if name.startswith(_FLOATS):
        return pd.Series(values, dtype="float64")
    if name.startswith(_INTEGERS):
        return pd.Series(values, dtype="Int64")
    if name.startswith("BOOL"):
        return pd.Series(values, dtype="boolean")
    return pd.Series([_text(value) for value in values], dtype=object)


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


@contextlib.contextmanager
def _compat_patches() -> Iterator[None]:
    """Patch the four fakesnow 0.12.1 fakes described in the module docstring, and undo them on exit.

    Each patch wraps the fakesnow function and is applied only if that function exists; the server runs
    in this process, so patching its modules is enough.
    """
    import fakesnow.arrow
    import fakesnow.copy_into
    import fakesnow.transforms
    import fakesnow.transforms.stage

    wrappers: list[tuple[Any, str, Callable[[Any], Any]]] = [
        (fakesnow.arrow, "timestamp_to_sf_struct", _keep_nulls),
        (fakesnow.copy_into, "_from_source", _stage_literal),
        (fakesnow.transforms, "identifier", _split_quoted_identifier),
        (fakesnow.transforms.stage, "parts_from_var", _exact_current_names),
    ]
    with contextlib.ExitStack() as stack:
        for module, name, wrap in wrappers:
            original = getattr(module, name, None)
            if original is not None:
                stack.enter_context(_patched(module, name, wrap(original)))
        yield


def _keep_nulls(original: Callable[[Any], pa.Array]) -> Callable[[Any], pa.Array]:
    def timestamp_to_sf_struct(ts: pa.Array | pa.ChunkedArray) -> pa.Array:
        if isinstance(ts, pa.ChunkedArray):
            ts = ts.combine_chunks()
        struct = original(ts)
        if ts.null_count == 0:
            return struct
        return pa.StructArray.from_arrays(struct.flatten(), fields=list(struct.type), mask=ts.is_null())

    return timestamp_to_sf_struct


def _stage_literal(original: Callable[[exp.Copy], str]) -> Callable[[exp.Copy], str]:
    def _from_source(expr: exp.Copy) -> str:
        source = expr.args["files"][0].this
        if isinstance(source, exp.Select) and (from_ := source.args.get("from_")) is not None:
            table = from_.this
            if isinstance(table, exp.Table) and isinstance(table.this, exp.Literal) and table.this.is_string:
                if table.this.this.startswith("@"):
                    return str(table.this.this)
        return original(expr)

    return _from_source


def _split_quoted_identifier(original: Callable[..., exp.Expr]) -> Callable[..., exp.Expr]:
    def identifier(expression: exp.Expr, params: Any) -> exp.Expr:
        result = original(expression, params)
        if (
            isinstance(result, exp.Table)
            and not result.args.get("db")
            and isinstance(result.this, exp.Identifier)
            and result.this.quoted
            and '"."' in result.this.this
        ):
            return exp.to_table(f'"{result.this.this}"', dialect="snowflake")
        return result

    return identifier


def _exact_current_names(
    original: Callable[..., tuple[str, str, str]],
) -> Callable[..., tuple[str, str, str]]:
    def parts_from_var(
        var: str, current_database: str | None, current_schema: str | None
    ) -> tuple[str, str, str]:
        database, schema, name = original(var, current_database, current_schema)
        parts = len(var.split("."))
        if parts <= 2 and current_database:
            database = current_database
        if parts == 1 and current_schema:
            schema = current_schema
        return database, schema, name

    return parts_from_var


@contextlib.contextmanager
def _patched(module: Any, name: str, replacement: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    """Keep uvicorn's and fakesnow's per-request INFO lines out of test output."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
