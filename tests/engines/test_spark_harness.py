"""The Spark harness works end to end: a local session, a Segment-shaped table landed, queries answered."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

pytest.importorskip("pyspark", reason="pyspark is not installed")
if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
    pytest.skip("Spark needs a Java runtime", allow_module_level=True)

from pyspark.sql import SparkSession

from tests.engines.spark import create_table, query, spark_session

pytestmark = pytest.mark.spark

TRACKS = {
    "id": "STRING",
    "user_id": "STRING",
    "event": "STRING",
    "timestamp": "TIMESTAMP",
    "received_at": "TIMESTAMP",
    "revenue": "DOUBLE",
}

# Naive datetimes are UTC; an aware one keeps its instant. u1's two orders tie on `timestamp`, so
# `received_at` decides the latest; u2's only order carries no revenue.
ROWS = [
    {"id": "e1", "user_id": "u1", "event": "Signed Up", "timestamp": datetime(2024, 1, 1, 9)},
    {
        "id": "e2",
        "user_id": "u1",
        "event": "Order Completed",
        "timestamp": datetime(2024, 1, 3, 12, 30),
        "received_at": datetime(2024, 1, 3, 12, 31),
        "revenue": 20.5,
    },
    ("e3", "u1", "Order Completed", datetime(2024, 1, 3, 12, 30), datetime(2024, 1, 3, 12, 32), 9.5),
    ("e4", "u2", "Order Completed", datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC), None, None),
]


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    session = spark_session(tmp_path_factory.mktemp("spark"))
    yield session
    session.stop()


def test_lands_segment_table_and_answers_queries(spark: SparkSession) -> None:
    table = create_table(spark, "website", "tracks", TRACKS, ROWS)
    assert table == "`website`.`tracks`"

    described = query(spark, f"DESCRIBE TABLE {table}")
    assert [(name, kind) for name, kind, _ in described] == [
        ("id", "string"),
        ("user_id", "string"),
        ("event", "string"),
        ("timestamp", "timestamp"),
        ("received_at", "timestamp"),
        ("revenue", "double"),
    ]

    latest = query(
        spark,
        f"""
        SELECT `user_id`,
               MAX_BY(`id`, CASE WHEN `event` = :event THEN STRUCT(`timestamp`, `received_at`, `id`) END),
               SUM(`revenue`) FILTER (WHERE `event` = :event),
               MAX(`timestamp`)
        FROM {table}
        GROUP BY `user_id`
        ORDER BY `user_id`
        """,
        args={"event": "Order Completed"},
    )
    assert latest == [
        ("u1", "e3", 30.0, datetime(2024, 1, 3, 12, 30)),
        ("u2", "e4", None, datetime(2023, 12, 31, 23, 59, 59)),
    ]


def test_replaces_or_appends(spark: SparkSession) -> None:
    columns = {"k": "STRING", "n": "BIGINT", "at": "TIMESTAMP_NTZ"}
    create_table(spark, "scratch", "t", columns, [("a", 1, datetime(2024, 1, 1))])
    create_table(spark, "scratch", "t", columns, [{"k": "b", "n": 2}], replace=False)
    assert query(spark, "SELECT * FROM `scratch`.`t` ORDER BY `k`") == [
        ("a", 1, datetime(2024, 1, 1)),
        ("b", 2, None),
    ]
    create_table(spark, "scratch", "t", columns, [])
    assert query(spark, "SELECT COUNT(*) FROM `scratch`.`t`") == [(0,)]
