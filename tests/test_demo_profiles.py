"""The Profiles Sync sample-data generator lands what Segment lands, messy cases included (engage/demo_profiles.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pytest

from engage.demo_profiles import ProfilesSyncSummary, append_profiles_sync, generate_profiles_sync

END = datetime(2024, 6, 1, 12, 0, 0)
DAYS = 30
PEOPLE = 600
EVENTS = 8_000
LANDED = END + timedelta(hours=1)

EVENT = [
    ("id", "VARCHAR"),
    ("segment_id", "VARCHAR"),
    ("event_source_id", "VARCHAR"),
    ("user_id", "VARCHAR"),
    ("anonymous_id", "VARCHAR"),
]
TIMES = [(c, "TIMESTAMP") for c in ("timestamp", "original_timestamp", "sent_at", "received_at", "uuid_ts")]
LANDING = [
    ("timestamp", "TIMESTAMP"),
    ("seq", "BIGINT"),
    ("received_at", "TIMESTAMP"),
    ("uuid_ts", "TIMESTAMP"),
]
TRACKS = [*EVENT, ("event", "VARCHAR"), ("event_text", "VARCHAR"), *TIMES]
COLUMNS = {
    "id_graph_updates": [
        ("id", "VARCHAR"),
        ("segment_id", "VARCHAR"),
        ("canonical_segment_id", "VARCHAR"),
        ("triggering_event_type", "VARCHAR"),
        ("triggering_event_id", "VARCHAR"),
        *LANDING,
    ],
    "external_id_mapping_updates": [
        ("id", "VARCHAR"),
        ("segment_id", "VARCHAR"),
        ("external_id_type", "VARCHAR"),
        ("external_id_value", "VARCHAR"),
        ("external_id_hash", "VARCHAR"),
        *LANDING,
    ],
    "profile_traits_updates": [
        ("id", "VARCHAR"),
        ("segment_id", "VARCHAR"),
        ("email", "VARCHAR"),
        ("plan", "VARCHAR"),
        ("first_name", "VARCHAR"),
        *LANDING,
    ],
    "pages": [*EVENT, ("name", "VARCHAR"), ("path", "VARCHAR"), *TIMES],
    "tracks": TRACKS,
    "identifies": [*EVENT, ("email", "VARCHAR"), ("plan", "VARCHAR"), ("first_name", "VARCHAR"), *TIMES],
    "signed_up": [*TRACKS, ("method", "VARCHAR")],
    "order_completed": [*TRACKS, ("revenue", "DOUBLE"), ("currency", "VARCHAR")],
}
UPDATES = ("id_graph_updates", "external_id_mapping_updates", "profile_traits_updates")

# Each segment id's latest row (SPEC §6: by seq, a null first, then timestamp, uuid_ts, id).
LATEST = """
    SELECT segment_id, canonical_segment_id AS points_at FROM (
        SELECT *, row_number() OVER (
            PARTITION BY segment_id ORDER BY seq DESC NULLS LAST, timestamp DESC NULLS LAST, uuid_ts DESC, id DESC
        ) AS rank
        FROM {schema}.id_graph_updates
    ) WHERE rank = 1"""
# Every merged id's chain, followed one latest row at a time; a loop would run to the guard.
CHAINS = f"""
    WITH RECURSIVE latest AS ({LATEST}), walk(start, node, depth) AS (
        SELECT segment_id, points_at, 1 FROM latest WHERE points_at <> segment_id
        UNION ALL
        SELECT walk.start, latest.points_at, walk.depth + 1
        FROM walk JOIN latest ON latest.segment_id = walk.node
        WHERE latest.points_at <> latest.segment_id AND walk.depth <= 100
    )
    SELECT start, max(depth) AS depth, arg_max(node, depth) AS canonical FROM walk GROUP BY start"""


def generate(con: duckdb.DuckDBPyConnection, **kwargs: Any) -> ProfilesSyncSummary:
    arguments: dict[str, Any] = {"people": PEOPLE, "events": EVENTS, "end": END, "days": DAYS, **kwargs}
    return generate_profiles_sync(con, **arguments)


@pytest.fixture(scope="module")
def warehouse() -> Iterator[tuple[duckdb.DuckDBPyConnection, ProfilesSyncSummary]]:
    con = duckdb.connect()
    summary = generate(con)
    yield con, summary
    con.close()


def scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    return con.execute(sql).fetchall()[0][0]


def chains(con: duckdb.DuckDBPyConnection, schema: str = "profiles") -> dict[str, tuple[int, str]]:
    """Merged id -> (depth of its chain, the live id it ends at)."""
    return {start: (depth, end) for start, depth, end in con.execute(CHAINS.format(schema=schema)).fetchall()}


def live_ids(con: duckdb.DuckDBPyConnection, schema: str = "profiles") -> set[str]:
    rows = con.execute(
        f"SELECT segment_id FROM ({LATEST.format(schema=schema)}) WHERE points_at = segment_id"
    )
    return {r[0] for r in rows.fetchall()}


def contents(con: duckdb.DuckDBPyConnection, schema: str = "profiles") -> dict[str, list[tuple[object, ...]]]:
    return {t: con.execute(f"SELECT * FROM {schema}.{t} ORDER BY ALL").fetchall() for t in COLUMNS}


def test_same_arguments_give_identical_tables_and_another_seed_does_not() -> None:
    first, second, other = duckdb.connect(), duckdb.connect(), duckdb.connect()
    for con in (first, second):
        generate(con)
        append_profiles_sync(con, share=0.05, landed=LANDED)
    generate(other, seed=7)
    tables = contents(first)
    assert tables == contents(second)
    assert all(tables[t] for t in COLUMNS)
    assert contents(other)["pages"] != tables["pages"]


def test_tables_have_profiles_sync_columns_and_types(
    warehouse: tuple[duckdb.DuckDBPyConnection, ProfilesSyncSummary],
) -> None:
    con, summary = warehouse
    for table, columns in COLUMNS.items():
        got = con.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'profiles' AND table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
        assert got == columns, table
    assert summary.tables == {
        f"profiles.{t}": scalar(con, f"SELECT count(*) FROM profiles.{t}") for t in COLUMNS
    }
    assert summary.people == PEOPLE
    assert summary.events == summary.tables["profiles.pages"] + summary.tables["profiles.tracks"] == EVENTS
    assert summary.segment_ids == scalar(
        con, "SELECT count(DISTINCT segment_id) FROM profiles.id_graph_updates"
    )


def test_nothing_lands_after_end_and_timestamps_lie_in_the_window(
    warehouse: tuple[duckdb.DuckDBPyConnection, ProfilesSyncSummary],
) -> None:
    con, _ = warehouse
    for table in COLUMNS:
        first, last_ts, last_landed, early = con.execute(
            f"SELECT min(timestamp), max(timestamp), max(uuid_ts), count(*) FILTER (WHERE uuid_ts < received_at) FROM profiles.{table}"
        ).fetchall()[0]
        assert END - timedelta(days=DAYS) <= first and last_ts <= END and last_landed <= END, table
        assert early == 0, table


@pytest.mark.parametrize(("merged_share", "max_depth"), [(0.3, 4), (0.2, 1), (0.45, 7)])
def test_merge_chains_end_within_max_depth_and_merge_about_the_share(
    merged_share: float, max_depth: int
) -> None:
    con = duckdb.connect()
    summary = generate(con, merged_share=merged_share, max_depth=max_depth, schema="ps")
    walked = chains(con, "ps")
    live = live_ids(con, "ps")
    depths = [depth for depth, _ in walked.values()]
    assert max(depths) == max_depth == summary.max_depth  # reached, never exceeded (no loop runs on)
    assert all(end in live for _, end in walked.values())
    assert len(walked) == summary.merged and len(walked) + len(live) == summary.segment_ids
    assert summary.merged / summary.segment_ids == pytest.approx(merged_share, abs=0.05)
    # Every id a row points at has rows of its own.
    assert (
        scalar(
            con,
            f"SELECT count(*) FROM ps.id_graph_updates WHERE canonical_segment_id NOT IN (SELECT segment_id FROM ({LATEST.format(schema='ps')}))",
        )
        == 0
    )


def test_no_merges_without_a_merged_share() -> None:
    con = duckdb.connect()
    summary = generate(con, merged_share=0.0)
    assert summary.merged == 0 and summary.max_depth == 0 and summary.segment_ids == PEOPLE
    assert (
        scalar(con, "SELECT count(*) FROM profiles.id_graph_updates WHERE segment_id <> canonical_segment_id")
        == 0
    )


def test_messy_cases_are_present(warehouse: tuple[duckdb.DuckDBPyConnection, ProfilesSyncSummary]) -> None:
    con, _ = warehouse
    graph = "profiles.id_graph_updates"
    late = f"SELECT count(*) FROM {graph} WHERE segment_id <> canonical_segment_id AND uuid_ts >= timestamp + INTERVAL 1 HOUR"
    assert scalar(con, late)
    backfilled = f"SELECT count(*) FROM {graph} WHERE segment_id = canonical_segment_id AND seq IS NULL AND timestamp IS NULL"
    assert scalar(con, backfilled)
    assert (
        scalar(
            con,
            "SELECT count(*) FROM profiles.id_graph_updates WHERE seq IS NULL AND segment_id <> canonical_segment_id",
        )
        == 0
    )
    for table in UPDATES:
        # Rows landed twice: the same row but for a later uuid_ts.
        assert scalar(
            con,
            f"SELECT count(*) FROM (SELECT id FROM profiles.{table} GROUP BY id HAVING count(DISTINCT uuid_ts) > 1)",
        ), table
        distinct = f"SELECT count(*) FROM (SELECT DISTINCT * EXCLUDE (uuid_ts) FROM profiles.{table})"
        assert scalar(con, distinct) == scalar(con, f"SELECT count(DISTINCT id) FROM profiles.{table}"), table
    # A chain lacking its recursive entries (an id whose latest row names an id that merged on) ...
    assert any(depth >= 2 for depth, _ in chains(con).values())
    # ... and recursive entries where Segment wrote them: an id merged into two different ids over time.
    assert scalar(
        con,
        f"SELECT count(*) FROM (SELECT segment_id FROM {graph} WHERE segment_id <> canonical_segment_id GROUP BY segment_id HAVING count(DISTINCT canonical_segment_id) > 1)",
    )
    # Every row names the event that triggered it.
    events = "SELECT id FROM profiles.pages UNION ALL SELECT id FROM profiles.tracks UNION ALL SELECT id FROM profiles.identifies"
    assert scalar(con, f"SELECT count(*) FROM {graph} WHERE triggering_event_id NOT IN ({events})") == 0
    # An external id observed again on another profile: a user_id on each device the person logs in on.
    assert scalar(
        con,
        "SELECT count(*) FROM (SELECT external_id_value FROM profiles.external_id_mapping_updates WHERE external_id_type = 'user_id' GROUP BY 1 HAVING count(DISTINCT segment_id) > 1)",
    )
    # About 5% of event rows have no segment_id.
    for table in ("pages", "tracks", "identifies"):
        share = scalar(con, f"SELECT avg((segment_id IS NULL)::INTEGER) FROM profiles.{table}")
        assert share == pytest.approx(0.05, abs=0.025), table


def test_seq_grows_with_time_across_the_three_tables(
    warehouse: tuple[duckdb.DuckDBPyConnection, ProfilesSyncSummary],
) -> None:
    con, _ = warehouse
    rows = " UNION ALL ".join(
        f"SELECT DISTINCT id, seq, timestamp FROM profiles.{t} WHERE seq IS NOT NULL" for t in UPDATES
    )
    total, distinct, backwards = con.execute(
        f"""SELECT count(*), count(DISTINCT seq), count(*) FILTER (WHERE timestamp < previous)
        FROM (SELECT *, lag(timestamp) OVER (ORDER BY seq) AS previous FROM ({rows}))"""
    ).fetchall()[0]
    assert total == distinct and backwards == 0
    assert scalar(con, f"SELECT min(seq) FROM ({rows})") == 1


def test_the_updates_tables_hold_their_rows_in_landing_order(
    warehouse: tuple[duckdb.DuckDBPyConnection, ProfilesSyncSummary],
) -> None:
    """As Segment's loads append them: a read of the rows landed since a moment can skip older blocks."""
    con, _ = warehouse
    for table in UPDATES:
        backwards = scalar(
            con,
            f"""SELECT count(*) FILTER (WHERE uuid_ts < previous)
            FROM (SELECT uuid_ts, lag(uuid_ts) OVER (ORDER BY rowid) AS previous FROM profiles.{table})""",
        )
        assert backwards == 0, table


def test_identifiers_are_observed_where_they_belong(
    warehouse: tuple[duckdb.DuckDBPyConnection, ProfilesSyncSummary],
) -> None:
    con, _ = warehouse
    external = "profiles.external_id_mapping_updates"
    assert (
        scalar(
            con,
            f"SELECT count(*) FROM {external} WHERE external_id_hash <> md5(external_id_type || ':' || external_id_value)",
        )
        == 0
    )
    assert {r[0] for r in con.execute(f"SELECT DISTINCT external_id_type FROM {external}").fetchall()} == {
        "anonymous_id",
        "user_id",
        "email",
    }
    # Every segment id has an anonymous id of its own.
    assert scalar(
        con, f"SELECT count(DISTINCT segment_id) FROM {external} WHERE external_id_type = 'anonymous_id'"
    ) == scalar(con, "SELECT count(DISTINCT segment_id) FROM profiles.id_graph_updates")
    # A user's user_id and email are observed on the segment id they signed up on.
    unobserved = f"""SELECT count(*) FROM profiles.signed_up s WHERE s.segment_id IS NOT NULL AND (
        NOT EXISTS (SELECT 1 FROM {external} x WHERE x.segment_id = s.segment_id AND x.external_id_type = 'user_id' AND x.external_id_value = s.user_id)
        OR NOT EXISTS (SELECT 1 FROM {external} x WHERE x.segment_id = s.segment_id AND x.external_id_type = 'email'))"""
    assert scalar(con, unobserved) == 0
    # Events carry the anonymous id of the segment id they came on.
    foreign = f"SELECT count(*) FROM profiles.pages p WHERE p.segment_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {external} x WHERE x.segment_id = p.segment_id AND x.external_id_type = 'anonymous_id' AND x.external_id_value = p.anonymous_id)"
    assert scalar(con, foreign) == 0
    # Trait rows, some on ids merged away since.
    traits = "profiles.profile_traits_updates"
    assert scalar(
        con,
        f"SELECT count(*) FROM {traits} WHERE segment_id IN (SELECT segment_id FROM {external} WHERE external_id_type = 'user_id')",
    ) == scalar(con, f"SELECT count(*) FROM {traits}")
    assert scalar(
        con,
        f"SELECT count(*) FROM {traits} WHERE segment_id IN (SELECT start FROM ({CHAINS.format(schema='profiles')}))",
    )


def test_every_track_row_matches_its_event_table(
    warehouse: tuple[duckdb.DuckDBPyConnection, ProfilesSyncSummary],
) -> None:
    con, _ = warehouse
    columns = ", ".join(c for c, _ in TRACKS)
    per_event = f"SELECT * FROM (SELECT {columns} FROM profiles.signed_up UNION ALL SELECT {columns} FROM profiles.order_completed)"
    assert (
        scalar(con, f"SELECT count(*) FROM (SELECT {columns} FROM profiles.tracks EXCEPT ALL {per_event})")
        == 0
    )
    assert (
        scalar(con, f"SELECT count(*) FROM ({per_event} EXCEPT ALL SELECT {columns} FROM profiles.tracks)")
        == 0
    )
    events = con.execute("SELECT DISTINCT event, event_text FROM profiles.tracks ORDER BY 1").fetchall()
    assert events == [("order_completed", "Order Completed"), ("signed_up", "Signed Up")]
    assert {r[0] for r in con.execute("SELECT DISTINCT name FROM profiles.pages").fetchall()} == {
        "Home",
        "Pricing",
        "Docs",
        "Blog",
    }


def test_users_browse_anonymously_until_they_sign_up(
    warehouse: tuple[duckdb.DuckDBPyConnection, ProfilesSyncSummary],
) -> None:
    con, _ = warehouse
    signed_in_early = """
        SELECT count(*) FROM (SELECT user_id, timestamp FROM profiles.pages UNION ALL SELECT user_id, timestamp FROM profiles.order_completed) e
        JOIN profiles.signed_up s USING (user_id) WHERE e.timestamp < s.timestamp"""
    assert scalar(con, signed_in_early) == 0
    assert scalar(con, "SELECT count(*) FROM profiles.order_completed WHERE user_id IS NULL") == 0
    assert scalar(con, "SELECT count(DISTINCT user_id) FROM profiles.signed_up") == scalar(
        con, "SELECT count(*) FROM profiles.signed_up"
    )
    # Some people never sign up.
    assert scalar(con, "SELECT count(*) FROM profiles.signed_up") < PEOPLE * 0.85


def test_a_pre_signup_funnel_completes_only_through_identity_resolution(
    warehouse: tuple[duckdb.DuckDBPyConnection, ProfilesSyncSummary],
) -> None:
    """An anonymous page view on a pre-merge segment id and a later signed-in order on another one: by
    user_id/anonymous_id (SPEC §1) they are two profiles, through the merge chains one."""
    con, _ = warehouse
    funnels = con.execute(
        f"""
        WITH RECURSIVE chains AS ({CHAINS.format(schema="profiles")}),
        canonical AS (
            SELECT segment_id, coalesce(canonical, segment_id) AS canonical
            FROM (SELECT DISTINCT segment_id FROM profiles.id_graph_updates) LEFT JOIN chains ON start = segment_id
        )
        SELECT DISTINCT o.user_id
        FROM profiles.pages p JOIN canonical cp ON cp.segment_id = p.segment_id,
            profiles.order_completed o JOIN canonical co ON co.segment_id = o.segment_id
        WHERE p.user_id IS NULL AND o.user_id IS NOT NULL AND p.segment_id <> o.segment_id
            AND cp.canonical = co.canonical AND p.timestamp < o.timestamp
            AND EXISTS (SELECT 1 FROM profiles.signed_up s WHERE s.user_id = o.user_id AND p.timestamp < s.timestamp)
        """
    ).fetchall()
    assert len(funnels) >= 5


def test_append_lands_about_the_share_after_landed() -> None:
    con = duckdb.connect()
    summary = generate(con)
    before = {t: scalar(con, f"SELECT count(*) FROM profiles.{t}") for t in COLUMNS}
    for table in COLUMNS:
        con.execute(f"CREATE TABLE main.before_{table} AS SELECT * FROM profiles.{table}")
    walked, live = chains(con), live_ids(con)
    seqs = " UNION ALL ".join(f"SELECT max(seq) AS m FROM profiles.{t}" for t in UPDATES)
    max_seq = scalar(con, f"SELECT max(m) FROM ({seqs})")
    share = 0.05
    added = append_profiles_sync(con, share=share, landed=LANDED)

    after = {t: scalar(con, f"SELECT count(*) FROM profiles.{t}") for t in COLUMNS}
    assert added == sum(after.values()) - sum(before.values())
    assert added == pytest.approx(share * sum(before.values()), rel=0.3)
    for table in ("pages", "tracks", *UPDATES):
        assert after[table] - before[table] == pytest.approx(share * before[table], rel=0.5), table
    for table in COLUMNS:
        kept = f"SELECT * FROM profiles.{table} WHERE uuid_ts < TIMESTAMP '{LANDED}'"
        assert (
            scalar(con, f"SELECT count(*) FROM ({kept} EXCEPT ALL SELECT * FROM main.before_{table})") == 0
        ), table
        assert (
            scalar(con, f"SELECT count(*) FROM (SELECT * FROM main.before_{table} EXCEPT ALL {kept})") == 0
        ), table
        new = f"SELECT * FROM profiles.{table} WHERE uuid_ts >= TIMESTAMP '{LANDED}'"
        assert (
            scalar(
                con,
                f"SELECT count(*) FROM ({new}) WHERE uuid_ts < TIMESTAMP '{LANDED + timedelta(minutes=1)}'",
            )
            == after[table] - before[table]
        )
    for table in UPDATES:
        # A new row is either a row landed before, again, or numbered after everything landed before.
        new = f"SELECT * FROM profiles.{table} WHERE uuid_ts >= TIMESTAMP '{LANDED}'"
        again = f"SELECT count(*) FROM ({new}) n WHERE id IN (SELECT id FROM main.before_{table})"
        assert scalar(con, again), table
        assert (
            scalar(
                con,
                f"SELECT count(*) FROM ({new}) n WHERE id NOT IN (SELECT id FROM main.before_{table}) AND seq <= {max_seq}",
            )
            == 0
        )
        assert (
            scalar(
                con,
                f"SELECT count(*) FROM ({new}) n WHERE id IN (SELECT id FROM main.before_{table}) AND (id, seq) NOT IN (SELECT (id, seq) FROM main.before_{table})",
            )
            == 0
        )
    late = f"SELECT count(*) FROM profiles.id_graph_updates WHERE uuid_ts >= TIMESTAMP '{LANDED}' AND segment_id <> canonical_segment_id AND uuid_ts >= timestamp + INTERVAL 1 HOUR AND id NOT IN (SELECT id FROM main.before_id_graph_updates)"
    assert scalar(con, late)

    # Chains still end; some previous canonicals merged into a new id, so their chains grew.
    grown = chains(con)
    now_live = live_ids(con)
    assert all(end in now_live for _, end in grown.values())
    assert live - now_live and now_live - live
    assert any(grown[start][0] > depth for start, (depth, _) in walked.items())
    assert max(d for d, _ in grown.values()) >= summary.max_depth

    # A second batch lands after the first; a batch landing before what has landed is refused.
    assert append_profiles_sync(con, share=0.01, landed=LANDED + timedelta(hours=1), seed=44) > 0
    with pytest.raises(ValueError, match="must be after every row already landed"):
        append_profiles_sync(con, share=0.01, landed=LANDED)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"schema": "Bad-Name"},
        {"events": 100},
        {"people": 0},
        {"merged_share": 1.0},
        {"merged_share": 0.9, "max_depth": 1},
        {"max_depth": 0},
    ],
)
def test_generate_rejects_invalid_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        generate(duckdb.connect(), **kwargs)


def test_append_rejects_invalid_arguments() -> None:
    con = duckdb.connect()
    with pytest.raises(ValueError, match="lacks the Profiles Sync tables"):
        append_profiles_sync(con, share=0.01, landed=LANDED)
    generate(con)
    with pytest.raises(ValueError, match="share"):
        append_profiles_sync(con, share=0.0, landed=LANDED)
