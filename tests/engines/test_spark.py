"""Spark from the command line, as a user runs it: each `engage` process starts its own local Spark, whose
tables and engage's state outlive it in a Derby metastore, and a bad setting is one line naming it.

Every process here is a real subprocess (a process has one Spark context, and the test session's catalog
lives in memory)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engines.conftest import AS_OFS, REPO
from tests.engines.dataset import SourceTable

pytestmark = pytest.mark.spark

AUDIENCES = """\
kind: audience
name: Recent Buyers
condition:
  performed: Order Completed
  within: 30d
---
kind: trait
name: Orders
type: count
event: Order Completed
"""
# Lands the website source of a DuckDB file into a Spark catalog kept in a Derby metastore, and syncs the
# project there in the same process (engage joins the running session): one Spark start less.
LAND_AND_SYNC = """\
import json, sys
from datetime import datetime
from pathlib import Path
from engage.config import load_project
from engage.sync import run_space
from tests.engines.conftest import SparkEngine
from tests.engines.dataset import read_sources
from tests.engines.spark import spark_session

duckdb_file, spark_dir, root, as_of = sys.argv[1:]
session = spark_session(Path(spark_dir), hive=True)
SparkEngine(session).land(read_sources(Path(duckdb_file), ["website"]))
summary = run_space(load_project(Path(root)), "default", as_of=datetime.fromisoformat(as_of))
print(json.dumps(summary.to_json()))
session.stop()
"""


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def _engage(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, "-m", "engage.cli", "--project", str(root), *args, cwd=root)


def _project(root: Path, warehouse: str) -> Path:
    (root / "audiences").mkdir(parents=True)
    (root / "audiences" / "buyers.yml").write_text(AUDIENCES)
    (root / "config").mkdir()
    (root / "config" / "engage.yaml").write_text(
        "spaces:\n"
        "  default:\n"
        f"    warehouse: {warehouse}\n"
        "    sources: [website]\n"
        "    definitions: audiences\n"
        "    destinations:\n"
        "      warehouse: {type: warehouse, send: [identify, track]}\n"
    )
    return root


def test_state_outlives_the_process_in_a_metastore(tmp_path: Path, demo_tables: list[SourceTable]) -> None:
    spark_dir = tmp_path / "spark"
    root = _project(
        tmp_path / "project",
        f"{{type: spark, master: 'local[1]', warehouse_dir: {spark_dir / 'warehouse'},"
        f" metastore: {spark_dir / 'metastore_db'}}}",
    )
    as_of = AS_OFS[-1].isoformat()
    first = _run(
        sys.executable, "-c", LAND_AND_SYNC, str(demo_tables[0].origin), str(spark_dir), str(root), as_of
    )
    assert first.returncode == 0, first.stderr
    sent = json.loads(first.stdout.splitlines()[-1])
    assert sent["status"] == "succeeded" and sent["entered"] > 0 and sent["changed"] > 0, sent

    # A process of its own, starting its own Spark: it finds the state the first one left.
    again = _engage(root, "sync", "--space", "default", "--as-of", as_of, "--full-refresh", "--json")
    assert again.returncode == 0, again.stderr
    repeat = json.loads(again.stdout)
    assert repeat["generation"] == sent["generation"] + 1, repeat
    assert (repeat["entered"], repeat["exited"], repeat["changed"]) == (0, 0, 0), repeat
    sizes = {d["key"]: d["size"] for d in sent["definitions"]}
    assert {d["key"]: d["size"] for d in repeat["definitions"]} == sizes, repeat
    assert not list(root.glob("derby.log")) and not (root / "metastore_db").exists(), "files in the project"


def test_a_master_spark_cannot_start_is_one_line_naming_it(tmp_path: Path) -> None:
    root = _project(tmp_path / "project", "{type: spark, master: 'nowhere://cluster'}")
    failed = _engage(root, "sync", "--space", "default")
    assert failed.returncode == 1, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, failed.stderr
    assert re.match(r"error: config/engage.yaml:\d+: spaces\.default\.warehouse\.master: ", errors[0]), errors
    assert "cannot start Spark" in errors[0], errors
