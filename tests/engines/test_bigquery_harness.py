"""The BigQuery harness works end to end: emulator up, a dataset, rows loaded, a real query answered."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

pytest.importorskip("google.cloud.bigquery", reason="google-cloud-bigquery is not installed")

from google.cloud import bigquery

from tests.engines.bigquery import (
    BigQueryEndpoint,
    client,
    load_rows,
    query,
    running_emulator,
)

pytestmark = pytest.mark.bigquery

SCHEMA = [
    bigquery.SchemaField("id", "STRING"),
    bigquery.SchemaField("user_id", "STRING"),
    bigquery.SchemaField("event", "STRING"),
    bigquery.SchemaField("timestamp", "TIMESTAMP"),
    bigquery.SchemaField("revenue", "FLOAT64"),
]

# Timestamps in the forms a loader meets: naive text, aware datetime, naive datetime (read as UTC), Z text.
VALUES = [
    ("e1", "u1", "Signed Up", "2024-01-01 09:00:00", None),
    ("e2", "u1", "Order Completed", datetime(2024, 1, 3, 12, 30, tzinfo=UTC), 20.5),
    ("e3", "u1", "Order Completed", datetime(2024, 1, 5, 8, 0), 9.5),
    ("e4", "u2", "Order Completed", "2023-12-31T23:59:59Z", 100.0),
]
ROWS = [dict(zip([field.name for field in SCHEMA], values, strict=True)) for values in VALUES]


@pytest.fixture(scope="module")
def emulator() -> Iterator[BigQueryEndpoint]:
    with running_emulator() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def bq(emulator: BigQueryEndpoint) -> bigquery.Client:
    return client(emulator)


def test_loads_rows_and_answers_a_query(bq: bigquery.Client) -> None:
    table = load_rows(bq, "harness", "tracks", SCHEMA, ROWS)
    assert table.num_rows == 4
    assert {field.name: field.field_type for field in table.schema}["timestamp"] == "TIMESTAMP"

    rows = query(
        bq,
        """
        SELECT user_id, COUNTIF(event = 'Order Completed') AS orders, SUM(revenue) AS revenue,
               MAX(`timestamp`) AS last_seen
        FROM harness.tracks
        WHERE `timestamp` >= @since
        GROUP BY user_id
        ORDER BY user_id
        """,
        [bigquery.ScalarQueryParameter("since", "TIMESTAMP", datetime(2024, 1, 1, tzinfo=UTC))],
    )

    assert rows == [("u1", 2, 30.0, datetime(2024, 1, 5, 8, 0, tzinfo=UTC))]
