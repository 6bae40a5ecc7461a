"""`engage compile --dialect D` prints SQL that runs on D as printed, and computes DuckDB's values.

The project is the sample data on DuckDB with the example definitions (every condition kind and trait type
of SPEC §2). Each engine lands the same tables, runs the printed statements (SQL traits first, under the
names the query reads), and every profile's members and trait values must equal DuckDB's.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from engage.cli import main
from tests.engines.conftest import AS_OFS, REPO, SOURCES, BigQueryEngine, DuckDBEngine, SparkEngine, normal
from tests.engines.dataset import SourceTable

AS_OF = AS_OFS[-1].isoformat()
Statements = list[tuple[str, str]]  # (title, SQL) as `engage compile` prints them
Values = dict[str, dict[str, Any]]  # profile → column → value


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory, demo_tables: list[SourceTable]) -> Path:
    root = tmp_path_factory.mktemp("compile-project")
    (root / "config").mkdir()
    shutil.copytree(REPO / "audiences" / "default", root / "audiences")
    engine = DuckDBEngine(root / "warehouse.duckdb")
    (root / "config" / "engage.yaml").write_text(
        "spaces:\n  default:\n"
        f"    warehouse: {engine.warehouse_yaml()}\n"
        f"    sources: [{', '.join(SOURCES)}]\n"
        "    definitions: audiences\n"
    )
    engine.land(demo_tables)
    return root


def compile_for(root: Path, dialect: str) -> Statements:
    result = CliRunner().invoke(
        main,
        ["--project", str(root), "compile", "--space", "default", "--dialect", dialect, "--as-of", AS_OF],
    )
    assert result.exit_code == 0, result.output
    parts = re.split(r"^-- (.*)$", result.output, flags=re.MULTILINE)[1:]
    return [(title, sql.strip().rstrip(";")) for title, sql in zip(parts[::2], parts[1::2], strict=True)]


def sql_trait_table(title: str) -> str:
    return title.rsplit("→ ", 1)[1].strip()


def by_profile(names: list[str], rows: list[tuple[Any, ...]]) -> Values:
    lowered = [n.lower() for n in names]
    values: Values = {}
    for row in rows:
        record = dict(zip(lowered, row, strict=True))
        profile = record.pop("__profile")
        values[profile] = {k: _value(v) for k, v in record.items()}
    return values


def _value(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("["):  # a unique list's JSON text, spelled per engine
        return json.loads(value)
    if hasattr(value, "is_finite") and not isinstance(value, float):  # Decimal
        return normal(float(value))
    return normal(value)


@pytest.fixture(scope="session")
def expected(project: Path) -> Values:
    statements = compile_for(project, "duckdb")
    with duckdb.connect(str(project / "warehouse.duckdb"), read_only=True) as connection:
        for title, sql in statements[:-1]:
            connection.execute(f'CREATE TEMPORARY TABLE "{sql_trait_table(title)}" AS {sql}')
        result = connection.execute(statements[-1][1])
        names = [d[0] for d in result.description or []]
        values = by_profile(names, result.fetchall())
    assert len(values) > 100 and any(v.get("vip") for v in values.values())
    return values


def assert_same(expected: Values, actual: Values, engine: str) -> None:
    assert sorted(actual) == sorted(expected), f"{engine}: different profiles"
    for profile, want in expected.items():
        assert actual[profile] == want, f"{engine}: profile {profile} differs"


# -- Spark -------------------------------------------------------------------------------------------------
@pytest.mark.spark
def test_databricks_sql_runs_on_spark_and_equals_duckdb(
    project: Path, expected: Values, spark: Any, demo_tables: list[SourceTable]
) -> None:
    SparkEngine(spark).land(demo_tables)
    statements = compile_for(project, "databricks")
    for title, sql in statements[:-1]:
        spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW `{sql_trait_table(title)}` AS {sql}")
    frame = spark.sql(statements[-1][1])
    rows = [tuple(_spark_value(v) for v in row) for row in frame.collect()]
    assert_same(expected, by_profile(frame.columns, rows), "spark")


def _spark_value(value: Any) -> Any:
    from datetime import UTC, datetime

    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


# -- BigQuery ----------------------------------------------------------------------------------------------
@pytest.mark.bigquery
def test_bigquery_sql_runs_on_the_emulator_and_equals_duckdb(
    project: Path, expected: Values, bigquery_endpoint: Any, demo_tables: list[SourceTable]
) -> None:
    from datetime import UTC, datetime

    from tests.engines.bigquery import client

    BigQueryEngine(bigquery_endpoint).land(demo_tables)
    bigquery_client = client(bigquery_endpoint)
    statements = compile_for(project, "bigquery")
    script = [f"CREATE TEMP TABLE `{sql_trait_table(title)}` AS {sql};" for title, sql in statements[:-1]]
    result = bigquery_client.query("\n".join([*script, statements[-1][1]])).result()
    names = [field.name for field in result.schema]
    rows = [
        tuple(
            v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, datetime) and v.tzinfo else v
            for v in row.values()
        )
        for row in result
    ]
    assert_same(expected, by_profile(names, rows), "bigquery")
