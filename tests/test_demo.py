"""The demo generator writes a realistic, deterministic Segment Connections warehouse (engage/demo.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pytest

from engage.demo import DemoSummary, append_events, generate_demo

END = datetime(2024, 6, 1, 12, 0, 0)
DAYS = 30
PROFILES = 300
EVENTS = 4_000

TRACK_COLUMNS = [
    ("id", "VARCHAR"),
    ("user_id", "VARCHAR"),
    ("anonymous_id", "VARCHAR"),
    ("event", "VARCHAR"),
    ("event_text", "VARCHAR"),
    ("timestamp", "TIMESTAMP"),
    ("original_timestamp", "TIMESTAMP"),
    ("sent_at", "TIMESTAMP"),
    ("received_at", "TIMESTAMP"),
    ("uuid_ts", "TIMESTAMP"),
    ("context_library_name", "VARCHAR"),
    ("context_library_version", "VARCHAR"),
    ("context_ip", "VARCHAR"),
    ("context_user_agent", "VARCHAR"),
]
WEB_TRACK_COLUMNS = [*TRACK_COLUMNS, ("context_page_path", "VARCHAR"), ("context_page_url", "VARCHAR")]
PROPERTIES = {
    "product_viewed": [
        ("product_id", "VARCHAR"),
        ("name", "VARCHAR"),
        ("category", "VARCHAR"),
        ("price", "DOUBLE"),
    ],
    "product_added": [
        ("product_id", "VARCHAR"),
        ("category", "VARCHAR"),
        ("price", "DOUBLE"),
        ("quantity", "BIGINT"),
    ],
    "order_completed": [
        ("order_id", "VARCHAR"),
        ("revenue", "DOUBLE"),
        ("currency", "VARCHAR"),
        ("coupon", "VARCHAR"),
        ("products", "VARCHAR"),
        ("shipping_method", "VARCHAR"),
        ("shipping_cost", "DOUBLE"),
    ],
    "signed_up": [("method", "VARCHAR")],
}
CALL_COLUMNS = [c for c in TRACK_COLUMNS if c[0] not in ("event", "event_text")]
TRAITS = [
    ("email", "VARCHAR"),
    ("plan", "VARCHAR"),
    ("first_name", "VARCHAR"),
    ("country", "VARCHAR"),
    ("age", "BIGINT"),
]
EXPECTED_TABLES = {
    "website": {
        "tracks": WEB_TRACK_COLUMNS,
        **{event: WEB_TRACK_COLUMNS + props for event, props in PROPERTIES.items()},
        "pages": [
            *CALL_COLUMNS,
            ("context_page_path", "VARCHAR"),
            ("context_page_url", "VARCHAR"),
            ("name", "VARCHAR"),
            ("path", "VARCHAR"),
            ("url", "VARCHAR"),
            ("title", "VARCHAR"),
            ("referrer", "VARCHAR"),
        ],
        "identifies": [*CALL_COLUMNS[:8], ("context_library_name", "VARCHAR"), *TRAITS],
        "users": [("id", "VARCHAR"), ("received_at", "TIMESTAMP"), ("uuid_ts", "TIMESTAMP"), *TRAITS],
    },
    "ios": {
        "tracks": TRACK_COLUMNS,
        **{e: TRACK_COLUMNS + PROPERTIES[e] for e in ("product_viewed", "order_completed", "signed_up")},
        "screens": [*CALL_COLUMNS, ("name", "VARCHAR")],
        "identifies": [*CALL_COLUMNS[:8], ("context_library_name", "VARCHAR"), *TRAITS],
        "users": [("id", "VARCHAR"), ("received_at", "TIMESTAMP"), ("uuid_ts", "TIMESTAMP"), *TRAITS],
    },
}
EVENT_TABLES = {"website": list(PROPERTIES), "ios": ["product_viewed", "order_completed", "signed_up"]}
VIEW_TABLE = {"website": "pages", "ios": "screens"}
# Every table that holds calls, i.e. where a profile can be seen.
CALL_TABLES = [f"{s}.{t}" for s in ("website", "ios") for t in ("tracks", VIEW_TABLE[s], "identifies")]


def _generate(seed: int = 42) -> tuple[duckdb.DuckDBPyConnection, DemoSummary]:
    con = duckdb.connect()
    return con, generate_demo(con, profiles=PROFILES, events=EVENTS, end=END, days=DAYS, seed=seed)


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[duckdb.DuckDBPyConnection, DemoSummary]]:
    con, summary = _generate()
    yield con, summary
    con.close()


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    return con.execute(sql).fetchall()[0][0]


def _fingerprint(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """A hash of every row of `table`, in id order."""
    return str(_one(con, f"SELECT md5(string_agg(t::VARCHAR, '|' ORDER BY id)) FROM {table} AS t"))


def _calls(columns: str = "user_id, anonymous_id") -> str:
    return " UNION ALL ".join(f"SELECT {columns} FROM {table}" for table in CALL_TABLES)


def test_tables_have_segment_columns_and_types(demo: tuple[duckdb.DuckDBPyConnection, DemoSummary]) -> None:
    con, _ = demo
    for schema, tables in EXPECTED_TABLES.items():
        rows = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? ORDER BY table_name, ordinal_position",
            [schema],
        ).fetchall()
        actual: dict[str, list[tuple[str, str]]] = {}
        for table, column, data_type in rows:
            actual.setdefault(table, []).append((column, data_type))
        assert actual == tables, schema


def test_summary_matches_the_tables(demo: tuple[duckdb.DuckDBPyConnection, DemoSummary]) -> None:
    con, summary = demo
    tables = con.execute(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables "
        "WHERE table_schema IN ('website', 'ios')"
    ).fetchall()
    assert {f"{s}.{t}" for s, ts in EXPECTED_TABLES.items() for t in ts} == {t for (t,) in tables}
    assert summary.tables == {t: _one(con, f"SELECT count(*) FROM {t}") for (t,) in tables}
    assert summary.events == EVENTS == summary.tables["website.tracks"] + summary.tables["ios.tracks"]
    assert summary.profiles == _one(
        con, f"SELECT count(DISTINCT coalesce(user_id, anonymous_id)) FROM ({_calls()})"
    )
    assert summary.identified == _one(con, f"SELECT count(DISTINCT user_id) FROM ({_calls()})")
    # About 75% of profiles are identified.
    assert 0.65 * PROFILES < summary.identified < 0.85 * PROFILES


def test_every_track_is_in_exactly_one_event_table(
    demo: tuple[duckdb.DuckDBPyConnection, DemoSummary],
) -> None:
    con, _ = demo
    for schema, events in EVENT_TABLES.items():
        columns = ", ".join(c for c, _ in EXPECTED_TABLES[schema]["tracks"])
        per_event = " UNION ALL ".join(f"SELECT {columns} FROM {schema}.{e}" for e in events)
        # Same rows (all tracks columns), same ids, each event table holding only its own event.
        assert (
            _one(
                con,
                f"SELECT count(*) FROM (SELECT {columns} FROM {schema}.tracks EXCEPT ALL FROM ({per_event}))",
            )
            == 0
        )
        assert _one(con, f"SELECT count(*) FROM ({per_event})") == _one(
            con, f"SELECT count(*) FROM {schema}.tracks"
        )
        for event in events:
            assert con.execute(f"SELECT DISTINCT event FROM {schema}.{event}").fetchall() == [(event,)]
        # `event` is the snake_case slug of `event_text`.
        slugs = con.execute(f"SELECT DISTINCT event, event_text FROM {schema}.tracks").fetchall()
        assert all(event == text.lower().replace(" ", "_") for event, text in slugs)
        assert {event for event, _ in slugs} == set(events)


def test_ids_are_unique_uuids(demo: tuple[duckdb.DuckDBPyConnection, DemoSummary]) -> None:
    con, _ = demo
    ids = _calls("id")
    assert _one(con, f"SELECT count(*) = count(DISTINCT id) FROM ({ids})")
    assert _one(con, f"SELECT bool_and(TRY_CAST(id AS UUID) IS NOT NULL) FROM ({ids})")
    orders = "SELECT order_id FROM website.order_completed UNION ALL SELECT order_id FROM ios.order_completed"
    assert _one(con, f"SELECT count(*) = count(DISTINCT order_id) FROM ({orders})")


def test_anonymous_only_profiles_never_get_a_user_id(
    demo: tuple[duckdb.DuckDBPyConnection, DemoSummary],
) -> None:
    con, _ = demo
    pairs = _calls()
    user_ids = [
        u
        for (u,) in con.execute(
            f"SELECT DISTINCT user_id FROM ({pairs}) WHERE user_id IS NOT NULL"
        ).fetchall()
    ]
    assert all(re.fullmatch(r"user_\d{6}", u) for u in user_ids)
    # A device (anonymous_id) belongs to at most one user.
    assert (
        _one(
            con,
            f"SELECT max(n) FROM (SELECT count(DISTINCT user_id) AS n FROM ({pairs}) GROUP BY anonymous_id)",
        )
        == 1
    )
    # Every profile shows up, as its user or, never identified, as its single device: so a profile that got a
    # user_id without being an identified one would break this count.
    devices_never_linked = _one(
        con,
        f"SELECT count(*) FROM (SELECT anonymous_id FROM ({pairs}) GROUP BY 1 HAVING count(user_id) = 0)",
    )
    assert devices_never_linked + len(user_ids) == PROFILES
    assert _one(con, f"SELECT bool_and(anonymous_id LIKE 'anon\\_%' ESCAPE '\\') FROM ({pairs})")
    # Identified users' early calls carry only their anonymous_id.
    early = f"""
        SELECT count(DISTINCT anonymous_id) FROM ({pairs})
        WHERE user_id IS NULL AND anonymous_id IN (SELECT anonymous_id FROM ({pairs}) WHERE user_id IS NOT NULL)"""
    assert _one(con, early) > 0.5 * len(user_ids)
    # A handful of users use both sources.
    both = _one(con, "SELECT count(*) FROM website.users JOIN ios.users USING (id)")
    assert 0 < both < 0.1 * len(user_ids)


def test_timestamps_lie_in_the_window_and_lean_recent(
    demo: tuple[duckdb.DuckDBPyConnection, DemoSummary],
) -> None:
    con, _ = demo
    start = END - timedelta(days=DAYS)
    for table in CALL_TABLES:
        low, high = con.execute(f"SELECT min(timestamp), max(timestamp) FROM {table}").fetchall()[0]
        assert start <= low and high <= END, table
        lag = _one(con, f"SELECT min(received_at - timestamp) FROM {table}")
        assert isinstance(lag, timedelta) and lag > timedelta(0)
    halves = con.execute(
        f"SELECT count(*) FILTER (WHERE timestamp < ?), count(*) FILTER (WHERE timestamp >= ?) FROM ({_calls('timestamp')})",
        [start + timedelta(days=DAYS / 2)] * 2,
    ).fetchall()[0]
    assert halves[1] > 1.3 * halves[0]


def test_property_distributions(demo: tuple[duckdb.DuckDBPyConnection, DemoSummary]) -> None:
    con, _ = demo
    orders = "SELECT * FROM website.order_completed UNION ALL BY NAME SELECT * FROM ios.order_completed"
    no_coupon, typical, top, currencies = con.execute(
        f"""SELECT avg((coupon IS NULL)::INT), avg((revenue BETWEEN 20 AND 150)::INT), max(revenue),
            list(DISTINCT currency ORDER BY currency) FROM ({orders})"""
    ).fetchall()[0]
    assert 0.64 < no_coupon < 0.76
    assert typical > 0.85 and top <= 2000
    assert currencies == ["EUR", "USD"]
    products = [p for (p,) in con.execute(f"SELECT products FROM ({orders})").fetchall()]
    assert all(re.fullmatch(r'\["sku-\d+"(,"sku-\d+")*\]', p) for p in products)
    shipping = con.execute(f"SELECT DISTINCT shipping_method FROM ({orders}) ORDER BY 1").fetchall()
    assert shipping == [("express",), ("standard",)]
    categories = con.execute(
        "SELECT count(DISTINCT category), count(DISTINCT product_id) FROM website.product_viewed"
    )
    assert categories.fetchall()[0][0] == 6
    # A product's name, category and price never change.
    assert (
        _one(
            con,
            "SELECT max(n) FROM (SELECT count(DISTINCT (name, category, price)) AS n FROM ios.product_viewed GROUP BY product_id)",
        )
        == 1
    )
    pages = con.execute("SELECT DISTINCT name FROM website.pages ORDER BY 1").fetchall()
    assert pages == [("Blog",), ("Checkout",), ("Home",), ("Pricing",), ("Product",)]
    screens = con.execute("SELECT DISTINCT name FROM ios.screens ORDER BY 1").fetchall()
    assert screens == [("Cart",), ("Home",), ("Product",), ("Settings",)]
    # Track mix: mostly product views, then add-to-cart and orders; each identified user signs up once.
    mix = dict(con.execute("SELECT event, count(*) FROM website.tracks GROUP BY 1").fetchall())
    assert mix["product_viewed"] > mix["product_added"] > mix["order_completed"]
    signed_up = _one(
        con,
        "SELECT count(*) = count(DISTINCT user_id) FROM (SELECT user_id FROM website.signed_up UNION ALL SELECT user_id FROM ios.signed_up)",
    )
    assert signed_up


def test_users_hold_the_latest_non_null_traits(demo: tuple[duckdb.DuckDBPyConnection, DemoSummary]) -> None:
    con, _ = demo
    for schema in ("website", "ios"):
        identified = _one(con, f"SELECT count(DISTINCT user_id) FROM {schema}.identifies")
        assert _one(con, f"SELECT count(*) = count(DISTINCT id) FROM {schema}.users")
        assert _one(con, f"SELECT count(*) FROM {schema}.users") == identified
        for trait, _ in TRAITS:
            latest = f"""
                SELECT user_id AS id, {trait} FROM {schema}.identifies
                WHERE user_id IS NOT NULL AND {trait} IS NOT NULL
                QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY timestamp DESC, received_at DESC, id DESC) = 1"""
            differ = f"""SELECT count(*) FROM {schema}.users u LEFT JOIN ({latest}) l USING (id)
                WHERE u.{trait} IS DISTINCT FROM l.{trait}"""
            assert _one(con, differ) == 0, (schema, trait)
    # Several identifies per user over time, and plans change for some users.
    per_user = _one(
        con,
        "SELECT avg(n) FROM (SELECT count(*) AS n FROM website.identifies WHERE user_id IS NOT NULL GROUP BY user_id)",
    )
    assert isinstance(per_user, float) and per_user > 2
    changed = _one(
        con,
        "SELECT count(*) FROM (SELECT user_id FROM website.identifies GROUP BY 1 HAVING count(DISTINCT plan) > 1)",
    )
    assert isinstance(changed, int) and changed > 0
    assert _one(con, "SELECT count(*) FROM website.identifies WHERE user_id IS NOT NULL AND plan IS NULL")
    plans = con.execute(
        "SELECT DISTINCT plan FROM website.identifies WHERE plan IS NOT NULL ORDER BY 1"
    ).fetchall()
    assert plans == [("enterprise",), ("free",), ("pro",)]


def test_same_seed_gives_identical_data_and_another_seed_differs(
    demo: tuple[duckdb.DuckDBPyConnection, DemoSummary],
) -> None:
    con, summary = demo
    tables = ("website.tracks", "website.order_completed", "ios.screens", "ios.identifies", "website.users")
    again, summary_again = _generate()
    assert summary_again == summary
    for table in tables:
        assert _fingerprint(again, table) == _fingerprint(con, table), table
    # Rows are even stored in the same order.
    order = "SELECT id FROM website.tracks"
    assert again.execute(order).fetchall() == con.execute(order).fetchall()
    # Generating again with another seed replaces every table, with different data.
    other = generate_demo(again, profiles=PROFILES, events=EVENTS, end=END, days=DAYS, seed=7)
    assert set(other.tables) == set(summary.tables) and other.events == summary.events
    for table in tables:
        assert _fingerprint(again, table) != _fingerprint(con, table), table


def test_append_events_adds_fresh_rows_inside_the_window() -> None:
    con, summary = _generate()
    before = {t: set(con.execute(f"SELECT id FROM {t}").fetchall()) for t in summary.tables}
    start, end = END + timedelta(hours=1), END + timedelta(days=2)
    assert append_events(con, events=900, start=start, end=end, seed=5, profiles=PROFILES) == 900
    added: dict[str, int] = {}
    for table, ids in before.items():
        time = "timestamp" if not table.endswith(".users") else "received_at"
        new = [t for i, t in con.execute(f"SELECT id, {time} FROM {table}").fetchall() if (i,) not in ids]
        added[table] = len(new)
        assert all(start <= t <= end for t in new), table
    assert added["website.tracks"] + added["ios.tracks"] == 900
    assert sum(added[f"{s}.{e}"] for s, events in EVENT_TABLES.items() for e in events) == 900
    assert added["website.signed_up"] == added["ios.signed_up"] == 0
    assert added["website.pages"] + added["ios.screens"] == 300
    assert added["website.identifies"] == added["ios.identifies"] == added["website.users"] == 0
    # The appended calls belong to the existing people: no new devices or users, devices keep their user.
    pairs = _calls()
    assert _one(con, f"SELECT count(DISTINCT user_id) FROM ({pairs})") == summary.identified
    assert (
        _one(
            con,
            f"SELECT max(n) FROM (SELECT count(DISTINCT user_id) AS n FROM ({pairs}) GROUP BY anonymous_id)",
        )
        == 1
    )
    timed = _calls("anonymous_id, timestamp")
    devices = f"SELECT count(DISTINCT anonymous_id) FROM ({timed})"
    assert _one(con, devices) == _one(con, f"{devices} WHERE timestamp <= '{END}'")
    # Ids never collide: not with a second append, and an identical call is refused.
    assert append_events(con, events=900, start=start, end=end, seed=6, profiles=PROFILES) == 900
    assert _one(con, "SELECT count(*) = count(DISTINCT id) FROM website.tracks")
    with pytest.raises(ValueError, match="already appended"):
        append_events(con, events=900, start=start, end=end, seed=5, profiles=PROFILES)


def test_defaults_and_invalid_arguments() -> None:
    con = duckdb.connect()
    summary = generate_demo(con, profiles=50, events=500, sources=("web",))
    assert set(summary.tables) == {f"web.{t}" for t in EXPECTED_TABLES["website"]}
    now = datetime.now(UTC).replace(tzinfo=None)
    newest = _one(con, "SELECT max(timestamp) FROM web.tracks")
    assert isinstance(newest, datetime) and now - timedelta(days=90) <= newest <= now
    with pytest.raises(ValueError, match="identified profiles"):
        generate_demo(con, profiles=1_000, events=10)
    with pytest.raises(ValueError, match="identifier"):
        generate_demo(con, sources=("web; DROP TABLE x",))
    with pytest.raises(ValueError):
        append_events(con, events=10, start=END, end=END - timedelta(days=1), seed=1)
