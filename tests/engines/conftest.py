"""Engines for the differential tests: each lands the same dataset and runs engage on it for real.

An `Engine` knows its config block and how to land source tables; `run_project` writes a project that
syncs the repository's example definitions (every condition kind and trait type of SPEC §2) on it, and
`Outcome` holds what the runs produced, normalized so engines can be compared value by value.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pytest
from click.testing import CliRunner
from sqlglot import exp

from engage.cli import main
from engage.config import load_project
from engage.definitions.loader import load_definitions
from engage.demo import generate_demo
from engage.sync import run_space
from engage.warehouse import open_warehouse
from engage_connectors.memory import MemoryConnector
from tests.engines.dataset import SourceTable, read_sources
from tests.engines.postgres import PostgresServer, load_sources, running_postgres

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("website", "ios")
DATA_END = datetime(2026, 6, 1)
# Two runs: the first at an earlier as-of (members enter), the second later (windows slide: exits,
# changed values, new members), so every transition kind is compared.
AS_OFS = (datetime(2026, 5, 20, 12), DATA_END)
# Columns whose values are the time of loading, not a function of the data.
LOAD_TIME_COLUMNS = {"received_at", "uuid_ts", "sent_at"}
SNOWFLAKE_PASSWORD = "sf-secret-never-shown"  # fakesnow takes any; this one must never be printed


class Engine(Protocol):
    name: str

    def warehouse_yaml(self) -> str:
        """The `warehouse:` block of the space, as a YAML flow mapping."""
        ...

    def land(self, tables: Sequence[SourceTable]) -> None: ...


@dataclass
class DuckDBEngine:
    path: Path
    name: str = "duckdb"

    def warehouse_yaml(self) -> str:
        return f"{{type: duckdb, path: {self.path}}}"

    def land(self, tables: Sequence[SourceTable]) -> None:
        """Copies the tables from their DuckDB file in SQL (row-by-row inserts would take seconds)."""
        with duckdb.connect(str(self.path)) as connection:
            for number, origin in enumerate(sorted({t.origin for t in tables})):
                connection.execute(f"ATTACH '{origin}' AS origin_{number} (READ_ONLY)")
                for table in (t for t in tables if t.origin == origin):
                    name = f'"{table.schema}"."{table.name}"'
                    connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{table.schema}"')
                    connection.execute(f"CREATE TABLE {name} AS SELECT * FROM origin_{number}.{name}")
                connection.execute(f"DETACH origin_{number}")


@dataclass
class PostgresEngine:
    server: PostgresServer
    database: str
    name: str = "postgres"

    def warehouse_yaml(self) -> str:
        s = self.server
        return (
            f"{{type: postgres, host: {s.host}, port: {s.port}, database: {self.database},"
            f" user: {s.user}, password: '${{ENGAGE_TEST_PG_PASSWORD}}'}}"
        )

    def land(self, tables: Sequence[SourceTable]) -> None:
        load_sources(self.server, self.database, tables)


@dataclass
class SnowflakeEngine:
    """The real snowflake-connector-python against fakesnow's server (tests/engines/snowflake.py)."""

    settings: dict[str, Any]
    name: str = "snowflake"

    def warehouse_yaml(self) -> str:
        s = self.settings
        return (
            f"{{type: snowflake, account: {s['account']}, user: {s['user']}, password: '${{ENGAGE_TEST_SF_PASSWORD}}',"
            f" database: {s['database']}, host: {s['host']}, port: {s['port']}, protocol: {s['protocol']},"
            f" network_timeout: {s['network_timeout']}}}"
        )

    def land(self, tables: Sequence[SourceTable]) -> None:
        from tests.engines.snowflake import connect, load_sources

        with connect(self.settings) as connection:
            load_sources(connection, tables)


@dataclass
class BigQueryEngine:
    """The real google-cloud-bigquery client against bqemulator (tests/engines/bigquery.py)."""

    endpoint: Any  # tests.engines.bigquery.BigQueryEndpoint
    name: str = "bigquery"

    def warehouse_yaml(self) -> str:
        e = self.endpoint
        return (
            f"{{type: bigquery, project: {e.project}, endpoint: '{e.api_endpoint}', auth: none, timeout: 15}}"
        )

    def land(self, tables: Sequence[SourceTable]) -> None:
        from google.cloud import bigquery

        from tests.engines.bigquery import client, load_rows

        types = {"varchar": "STRING", "bigint": "INT64", "double": "FLOAT64", "boolean": "BOOL"}
        bq = client(self.endpoint)
        for table in tables:
            schema = [bigquery.SchemaField(c, types.get(k, "TIMESTAMP")) for c, k in table.columns]
            names = [c for c, _ in table.columns]
            load_rows(
                bq, table.schema, table.name, schema, [dict(zip(names, r, strict=True)) for r in table.rows]
            )


@dataclass
class SparkEngine:
    """engage's Spark adapter on the test session (tests/engines/spark.py), which it joins: its catalog
    lives in memory, for this process."""

    session: Any  # pyspark.sql.SparkSession
    name: str = "spark"

    def warehouse_yaml(self) -> str:
        return "{type: spark, master: 'local[2]'}"

    def __post_init__(self) -> None:
        """Starts from an empty catalog: the session, and so its catalog, is shared by the tests."""
        from tests.engines.spark import quote

        for database in self.session.catalog.listDatabases():
            if database.name != "default":
                self.session.sql(f"DROP SCHEMA {quote(database.name)} CASCADE")

    def land(self, tables: Sequence[SourceTable]) -> None:
        from tests.engines.spark import create_table

        types = {"varchar": "STRING", "bigint": "BIGINT", "double": "DOUBLE", "boolean": "BOOLEAN"}
        for table in tables:
            columns = {name: types.get(kind, "TIMESTAMP") for name, kind in table.columns}
            create_table(self.session, table.schema, table.name, columns, table.rows)


def normal(value: Any) -> Any:
    """A value as engines agree on it: floats to 9 significant digits, times as ISO text (UTC)."""
    if isinstance(value, float):
        return float(f"{value:.9g}") if math.isfinite(value) else value
    if isinstance(value, datetime) and value.tzinfo is not None:  # BigQuery's TIMESTAMP
        return value.astimezone(UTC).replace(tzinfo=None).isoformat()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normal(v) for v in value]
    return value


@dataclass
class Outcome:
    """What a space's runs produced on one engine."""

    messages: list[dict[str, Any]] = field(default_factory=list)  # every call, sentAt removed
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # engage_<space> rows
    summaries: list[dict[str, Any]] = field(default_factory=list)


def _read_outputs(project_root: Path, schema: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The rows of every table in the space's output schema (or `schema`), normalized."""
    project = load_project(project_root)
    space = project.space("default")
    schema = schema or space.output_schema
    warehouse = open_warehouse(space, read_only=True)
    try:
        catalog = warehouse.describe([schema])
        sql_traits: set[str] = set()
        if (schema, "_engage_state") in catalog.tables:  # the state is where it computed
            loaded = load_definitions(space.definitions_dir, project.root, space.config.warehouse.type, [])
            sql_traits = {d.key for d in loaded if d.kind == "sql_trait"}
        tables: dict[str, list[dict[str, Any]]] = {}
        for (_, name), table in sorted(catalog.tables.items()):
            if name in ("_engage_runs", "_engage_lease", "_engage_deliveries"):
                continue  # run ids, times, holders and delivery attempts differ by nature
            columns = sorted(c for c in table.columns if c not in LOAD_TIME_COLUMNS | {"updated_at"})
            query = exp.select(*columns).from_(exp.table_(name, db=schema))
            rows = [
                {c.lower(): normal(v) for c, v in zip(names, row, strict=True)}
                for names, batch in warehouse.fetch_batches(query, 10_000)
                for row in batch
            ]
            key = ("definition_key", "trait_key", "profile_id") if name == "_engage_state" else ("id",)
            key = tuple(columns) if not any(k in columns for k in key) else key
            for row in rows:
                if row.get("value_num") is not None:  # a number's text is the engine's spelling of it
                    row["value_text"] = normal(float(row["value_text"]))
                if row.get("definition_key") in sql_traits:  # hashes SQL written in the engine's dialect
                    row.pop("fingerprint", None)
            tables[name] = sorted(rows, key=lambda r: tuple(str(r.get(k)) for k in key))
        return tables
    finally:
        warehouse.close()


MEMORY = "{type: memory, send: [identify, track]}"


def write_config(
    root: Path,
    engine: Engine,
    destinations: Mapping[str, str],
    sources: Sequence[str] = SOURCES,
    identity: str | None = None,
) -> None:
    """A project config syncing the space `default` of `engine` to `destinations` (name → YAML block)."""
    (root / "config").mkdir(parents=True)
    (root / "config" / "engage.yaml").write_text(
        "spaces:\n"
        "  default:\n"
        f"    warehouse: {engine.warehouse_yaml()}\n"
        f"    sources: [{', '.join(sources)}]\n"
        + (f"    identity: {identity}\n" if identity else "")
        + "    definitions: audiences\n"
        "    destinations:\n" + "".join(f"      {name}: {block}\n" for name, block in destinations.items())
    )


def run_project(
    root: Path,
    engine: Engine,
    tables: Sequence[SourceTable],
    target: Engine | None = None,
    *,
    definitions: str = "default",
    sources: Sequence[str] = SOURCES,
    identity: str | None = None,
) -> Outcome:
    """Lands `tables` on `engine`, writes a project syncing the example definitions there (those of
    `audiences/<definitions>`), runs it at each of `AS_OFS`, and returns the normalized outputs. With a
    `target`, the `engage_<space>` tables are written into that other warehouse (the state stays with the
    compute)."""
    shutil.copytree(REPO / "audiences" / definitions, root / "audiences")
    elsewhere = f", warehouse: {target.warehouse_yaml()}" if target else ""
    destinations = {"warehouse": f"{{type: warehouse, send: [identify, track]{elsewhere}}}", "mem": MEMORY}
    write_config(root, engine, destinations, sources, identity)
    engine.land(tables)
    MemoryConnector.sent.clear()
    outcome = Outcome()
    for as_of in AS_OFS:
        summary = run_space(load_project(root), "default", as_of=as_of)
        outcome.summaries.append(
            {d.key: (d.entered, d.exited, d.changed, d.size) for d in summary.definitions}
        )
    for message in MemoryConnector.sent.pop("mem", []):
        message = dict(message)
        message.pop("sentAt")
        outcome.messages.append(normal(message))
    outcome.messages.sort(key=lambda m: (m["messageId"], m["type"]))
    outcome.tables = _read_outputs(root)
    if target is not None:
        reader = root / "target"
        write_config(reader, target, {"warehouse": "{type: memory}", "mem": MEMORY})
        written = _read_outputs(reader)
        bookkeeping = {n: rows for n, rows in outcome.tables.items() if n.startswith("_engage_")}
        assert not any(n.startswith("_engage_") for n in written), "the state stays where it is computed"
        outcome.tables = {**written, **bookkeeping}
    return outcome


def sample_sources(folder: Path, profiles: int, events: int) -> list[SourceTable]:
    """Sample data over the 60 days before `DATA_END`, in a DuckDB file under `folder`."""
    path = folder / "demo.duckdb"
    with duckdb.connect(str(path)) as connection:
        generate_demo(connection, profiles=profiles, events=events, end=DATA_END, days=60, sources=SOURCES)
    return read_sources(path, SOURCES)


@pytest.fixture(scope="session")
def demo_tables(tmp_path_factory: pytest.TempPathFactory) -> list[SourceTable]:
    """The sample dataset, small: every example definition has members and values in it."""
    return sample_sources(tmp_path_factory.mktemp("demo"), profiles=250, events=2_500)


@pytest.fixture(scope="session")
def duckdb_outcome(tmp_path_factory: pytest.TempPathFactory, demo_tables: list[SourceTable]) -> Outcome:
    root = tmp_path_factory.mktemp("duckdb-project")
    return run_project(root, DuckDBEngine(root / "warehouse.duckdb"), demo_tables)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_database(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[PostgresServer, str]]:
    """A fresh database on the session's server; its password reaches engage through the environment."""
    monkeypatch.setenv("ENGAGE_TEST_PG_PASSWORD", postgres_server.password)
    name = postgres_server.create_database()
    yield postgres_server, name
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def snowflake_server() -> Iterator[dict[str, Any]]:
    from tests.engines.snowflake import fakesnow_server

    with fakesnow_server(network_timeout=30) as server:
        yield server


@pytest.fixture
def snowflake_database(
    snowflake_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    from tests.engines.snowflake import fresh_database

    monkeypatch.setenv("ENGAGE_TEST_SF_PASSWORD", SNOWFLAKE_PASSWORD)
    with fresh_database(snowflake_server) as settings:
        yield {**settings, "password": SNOWFLAKE_PASSWORD}


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One local Spark session for the test run (a process has one Spark context)."""
    from tests.engines.spark import spark_session

    session = spark_session(tmp_path_factory.mktemp("spark"))
    yield session
    session.stop()


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> Engine:
    """The engine named by an indirect parameter (postgres, snowflake, bigquery, spark), on a fresh
    database."""
    if request.param == "spark":
        return SparkEngine(request.getfixturevalue("spark"))
    if request.param == "postgres":
        server, database = request.getfixturevalue("postgres_database")
        return PostgresEngine(server, database)
    if request.param == "snowflake":
        return SnowflakeEngine(request.getfixturevalue("snowflake_database"))
    assert request.param == "bigquery", request.param
    return BigQueryEngine(request.getfixturevalue("bigquery_endpoint"))


@pytest.fixture
def bigquery_endpoint() -> Iterator[Any]:
    """An emulator of its own (datasets cannot be dropped between tests on a shared one)."""
    from tests.engines.bigquery import DEFAULT_CACHE_DIR, running_emulator

    with running_emulator(DEFAULT_CACHE_DIR) as endpoint:
        yield endpoint


# -- what the per-engine failure tests share ----------------------------------------------------------------
def cli(root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--project", str(root), *args], catch_exceptions=False)
    return result.exit_code, result.output


@contextmanager
def config_restored(root: Path) -> Iterator[Path]:
    """The project's config file, put back as it was afterwards (tests break one setting each)."""
    config = root / "config" / "engage.yaml"
    text = config.read_text()
    try:
        yield config
    finally:
        config.write_text(text)


def break_config(config: Path, old: str, new: str, values: Mapping[str, object]) -> None:
    """Replaces `old` with `new` in the config, `{name}` in either filled from `values`."""
    for name, value in values.items():
        old, new = old.replace(f"{{{name}}}", str(value)), new.replace(f"{{{name}}}", str(value))
    text = config.read_text()
    assert old in text, text
    config.write_text(text.replace(old, new, 1))


def assert_sync_fails_naming(
    root: Path, field: str, says: Sequence[str], secrets: Sequence[str] = ()
) -> None:
    """`engage sync` exits 1 with one line, `config/engage.yaml:N: spaces.default.[warehouse.]<field>: …`,
    saying each of `says`, and no secret anywhere."""
    code, output = cli(root, "sync", "--space", "default")
    assert code == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert re.match(rf"error: config/engage.yaml:\d+: spaces\.default\.(warehouse\.)?{field}: ", lines[0]), (
        output
    )
    assert all(text in lines[0] for text in says), output
    assert not any(secret in output for secret in secrets), output
