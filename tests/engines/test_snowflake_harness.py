"""The Snowflake harness works end to end: fakesnow up, a database, rows landed with write_pandas through
the real connector, real queries answered."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

pytest.importorskip("fakesnow", reason="fakesnow is not installed")
pytest.importorskip("snowflake.connector", reason="snowflake-connector-python is not installed")

import pandas as pd
import snowflake.connector
import sqlglot
from snowflake.connector import SnowflakeConnection
from snowflake.connector.pandas_tools import write_pandas

from tests.engines.snowflake import (
    connect,
    fakesnow_server,
    fresh_database,
    load_rows,
    query,
)

pytestmark = [
    pytest.mark.snowflake,
    # DuckDB (inside fakesnow) warns on every Arrow result it builds; it is not about engage.
    pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning"),
    # snowflake-connector-python 4.x's write_pandas under pandas 2.x
    pytest.mark.filterwarnings("ignore:is_datetime64tz_dtype is deprecated:DeprecationWarning"),
]

TRACKS = [
    ("id", "varchar"),
    ("user_id", "varchar"),
    ("event", "varchar"),
    ("timestamp", "timestamp"),
    ("received_at", "TIMESTAMP_NTZ"),
    ("revenue", "double"),
    ("quantity", "bigint"),
    ("first_time", "boolean"),
]

# Timestamps in the forms a loader meets: naive datetime, aware datetime (stored as UTC), ISO text, NULL.
ROWS: list[tuple[Any, ...]] = [
    ("e1", "u1", "Signed Up", datetime(2024, 1, 1, 9), datetime(2024, 1, 1, 9, 0, 1), None, None, True),
    (
        "e2",
        "u1",
        "Order Completed",
        datetime(2024, 1, 3, 14, 30, tzinfo=UTC),
        "2024-01-03 14:30:05.123456",
        20.5,
        2,
        False,
    ),
    ("e3", "u1", "Order Completed", datetime(2024, 1, 5, 8), None, 9.5, 1, None),
    ("e4", "u2", "Order Completed", "2023-12-31T23:59:59", datetime(2024, 1, 1), 100.0, 3, True),
]


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    with fakesnow_server() as settings:
        yield settings


@pytest.fixture
def settings(server: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with fresh_database(server, schema="ENGAGE") as fresh:
        yield fresh


@pytest.fixture
def conn(settings: dict[str, Any]) -> Iterator[SnowflakeConnection]:
    with connect(settings) as connection:
        yield connection


def test_lands_rows_and_answers_a_rendered_query(conn: SnowflakeConnection) -> None:
    assert load_rows(conn, "raw", "tracks", TRACKS, ROWS) == 4

    # The query as engage renders it: written for DuckDB, transpiled with every identifier quoted.
    duckdb_sql = """
        SELECT user_id, COUNT_IF(event = 'Order Completed') AS orders, SUM(revenue) AS revenue,
               MAX(timestamp) AS last_seen, MAX(received_at) AS last_received
        FROM raw.tracks GROUP BY user_id ORDER BY user_id
    """
    sql = sqlglot.transpile(duckdb_sql, read="duckdb", write="snowflake", identify=True)[0]
    assert query(conn, sql) == [
        ("u1", 2, 30.0, datetime(2024, 1, 5, 8), datetime(2024, 1, 3, 14, 30, 5, 123456)),
        ("u2", 1, 100.0, datetime(2023, 12, 31, 23, 59, 59), datetime(2024, 1, 1)),
    ]


def test_types_and_nulls_round_trip(conn: SnowflakeConnection) -> None:
    load_rows(conn, "raw", "tracks", TRACKS, ROWS)
    rows = query(conn, 'SELECT * FROM "raw"."tracks" ORDER BY "id"')
    assert rows[0] == (
        "e1",
        "u1",
        "Signed Up",
        datetime(2024, 1, 1, 9),
        datetime(2024, 1, 1, 9, 0, 1),
        None,
        None,
        True,
    )
    # NULL timestamps stay NULL (fakesnow alone returns 1970-01-01), NULL booleans stay NULL
    assert rows[2][4] is None and rows[2][7] is None
    columns = query(
        conn,
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'raw' AND table_name = 'tracks' ORDER BY ordinal_position",
    )
    assert columns == [
        ("id", "TEXT"),
        ("user_id", "TEXT"),
        ("event", "TEXT"),
        ("timestamp", "TIMESTAMP_NTZ"),
        ("received_at", "TIMESTAMP_NTZ"),
        ("revenue", "FLOAT"),
        ("quantity", "NUMBER"),
        ("first_time", "BOOLEAN"),
    ]
    with conn.cursor() as cursor:
        frame = cursor.execute(
            'SELECT "timestamp", "revenue" FROM "raw"."tracks" ORDER BY "id"'
        ).fetch_pandas_all()
    assert str(frame["timestamp"].dtype) == "datetime64[ns]"
    assert frame["revenue"].isna().tolist() == [True, False, False, False]


def test_load_appends_keeps_the_current_schema_and_accepts_mappings(conn: SnowflakeConnection) -> None:
    load_rows(conn, "raw", "tracks", TRACKS, ROWS[:2])
    mapping = dict(zip([name for name, _ in TRACKS], ROWS[2], strict=True))
    assert load_rows(conn, "raw", "tracks", dict(TRACKS), [mapping]) == 1
    assert load_rows(conn, "raw", "tracks", TRACKS, []) == 0
    assert query(conn, 'SELECT COUNT(*) FROM "raw"."tracks"') == [(3,)]
    assert query(conn, "SELECT CURRENT_SCHEMA()") == [("ENGAGE",)]


def test_data_is_shared_across_connections_but_not_databases(
    server: dict[str, Any], settings: dict[str, Any], conn: SnowflakeConnection
) -> None:
    load_rows(conn, "raw", "tracks", TRACKS, ROWS)
    # autocommit=False on one connection must not leak into the next through session_parameters
    with connect(settings, autocommit=False) as other:
        assert query(other, 'SELECT COUNT(*) FROM "raw"."tracks"') == [(4,)]
    with connect(settings) as third:
        third.cursor().execute('INSERT INTO "raw"."tracks" ("id") VALUES (\'e5\')')
    assert query(conn, 'SELECT COUNT(*) FROM "raw"."tracks"') == [(5,)]
    with fresh_database(server) as elsewhere, connect(elsewhere) as isolated:
        with pytest.raises(snowflake.connector.ProgrammingError):
            query(isolated, 'SELECT * FROM "raw"."tracks"')


def test_connector_write_pandas_lands_in_quoted_lower_case_names(conn: SnowflakeConnection) -> None:
    # The bulk path engage uses: the connector's write_pandas into a table it created (quoted identifiers).
    load_rows(conn, "raw", "members", [("user_id", "varchar"), ("score", "double")], [])
    frame = pd.DataFrame({"user_id": ["u1", "u2"], "score": [1.5, None]})
    success, _, loaded, _ = write_pandas(conn, frame, "members", schema="raw", quote_identifiers=True)
    assert (success, loaded) == (True, 2)
    with conn.cursor() as cursor:
        cursor.execute('USE SCHEMA "raw"')
        assert write_pandas(conn, frame.head(1), "members", quote_identifiers=True)[2] == 1
    assert query(conn, 'SELECT "user_id", "score" FROM "raw"."members" ORDER BY 1, 2') == [
        ("u1", 1.5),
        ("u1", 1.5),
        ("u2", None),
    ]


def test_errors_are_the_connectors(conn: SnowflakeConnection) -> None:
    with pytest.raises(snowflake.connector.ProgrammingError) as missing:
        query(conn, 'SELECT * FROM "raw"."nope"')
    assert missing.value.errno == 2003 and missing.value.sqlstate == "42S02"
    with pytest.raises(snowflake.connector.ProgrammingError) as syntax:
        query(conn, "SELEC 1")
    assert syntax.value.errno == 1003 and syntax.value.sqlstate == "42000"
