"""Segment **Profiles Sync**-shaped sample data, generated entirely inside DuckDB (SPEC §6).

`generate_profiles_sync` (re)creates, in one schema, what Profiles Sync lands: `id_graph_updates`,
`external_id_mapping_updates`, `profile_traits_updates`, and the event tables `pages`, `tracks`, `identifies`,
`signed_up` and `order_completed`, each with Segment's columns plus `segment_id` (the profile when the event
arrived, null on about 5% of the rows) and `event_source_id`. `append_profiles_sync` lands a later batch.

The story. A *person* first visits the website anonymously (`pages` named Home, Pricing, Docs or Blog): that
visit creates a Segment profile, a segment_id, with its own `anonymous_id`. About 75% of the people sign up
later (a `Signed Up` track with their `user_id`, then an identify with email, plan and first name) and are
signed in from then on; some of their visits are orders (`Order Completed`). Visits before signing up carry
only the anonymous id and the pre-merge segment_id. Most people sign up on the profile they browsed on; others
("merged" people) sign up on a new profile into which their anonymous profile merges, together with a second
anonymous device's for a quarter of them. Some of those later log in on further devices, each first seen
anonymously as a new profile into which the previous one merges: chains a → b → c → d of depth 1 to
`max_depth`. Person 0 always has the longest chain. The rest never sign up and keep one anonymous profile.

What lands is as messy as Segment's: 40% of the merged people lack the recursive entries (a → d when c merges
into d), about 5% of merge rows land 1-12 hours after their `timestamp`, 0.5% of the rows of the three
Profiles Sync tables land twice (same row, a later `uuid_ts`), 1% of the creation rows are backfills with
null `seq` and `timestamp`, and a user_id is observed again on each device the person logs in on. `seq`
grows with `timestamp` across the three tables. A merge only ever points at the next id of the person's chain
(in an append, at a new one), so chains never loop. Nothing lands after `end`. The Profiles Sync tables hold
their rows in `uuid_ts` order, as Segment's loads append them: a reader of the rows landed since some moment
then skips the older blocks by their statistics, as it can in a real warehouse.

How it stays fast: everything is set-based SQL and no Python loop touches a row, as in `engage.demo` (whose
hashing helpers this module shares: every pseudo-random draw hashes a unique row key with a salt, so the same
arguments give identical tables). Slim numeric temp tables come first: `_ps_person` (one row per person:
signed up when, merged how deep), `_ps_seg` (one per segment id: created when, merging into which of the
person's ids when, and the spans in which it is the person's current profile), `_ps_evt` (one per page or
track call, shared out over those spans by activity weight), `_ps_ident` (identify calls) and `_ps_upd` (the
rows of the three Profiles Sync tables, numbered in time order: `seq`). `_ps_names` holds the few strings of
each segment id (its id, anonymous id, user id, email). Then one `INSERT … SELECT` per table joins a skeleton
with `_ps_names` and builds the strings there; `tracks` copies the per-event tables.

`append_profiles_sync` reads the landed tables to find the live profiles (the ids whose latest row points at
themselves) and their identifiers, fills the same skeletons from them and writes through the same queries.

The SQL is assembled from strings. That is safe here: every interpolated value is a number, a constant of this
module, or a schema name validated as a plain identifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import duckdb

from engage.demo import (
    _BLOG_POSTS,
    _DAY_MS,
    _EMAIL,
    _FIRST_NAME,
    _HP,
    _USER_ID,
    _create_table,
    _delays,
    _epoch_us,
    _lit,
    _mix,
    _pick,
    _query,
    _recent_ms,
    _row_hash,
    _scalar,
    _timestamps,
    _unif,
    _utc_naive,
    _uuid,
    _weighted,
)

__all__ = ["ProfilesSyncSummary", "append_profiles_sync", "generate_profiles_sync"]


@dataclass(frozen=True)
class ProfilesSyncSummary:
    """What `generate_profiles_sync` wrote.

    Attributes:
        people: Persons (the `people` argument).
        segment_ids: Distinct segment ids of `id_graph_updates`.
        merged: Segment ids merged away (their canonical is another id).
        max_depth: The longest merge chain, following each id's latest row (the way SPEC §6 resolves it).
        events: Rows of `pages` plus `tracks`.
        tables: Row count of every table created, keyed `"<schema>.<table>"`.
    """

    people: int
    segment_ids: int
    merged: int
    max_depth: int
    events: int
    tables: dict[str, int]


# --------------------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------------------

# Segment keys: person * _SLOTS + slot. Slots 0..d are the person's merge chain in creation order (slot 1 the
# profile a merged person signs up on), slot _SECOND_DEVICE a second anonymous device before signing up.
_SLOTS = 64
_SECOND_DEVICE = _SLOTS - 1
_MAX_DEPTH = _SLOTS - 2
# Keys of the calls that belong to one segment id: seg * _EVENT_SLOTS + one of these. An identify's kind, and
# the kind of the traits row it lands, is its slot; `triggering_event_type` derives from the slot too.
_EVENT_SLOTS = 8
_LANDING, _SIGNUP_TRACK, _SIGNUP_IDENTIFY, _LOGIN_IDENTIFY, _EDIT_IDENTIFY = range(5)
# `_ps_evt.tbl`: the event table of a call.
_PAGE, _SIGNED_UP, _ORDER = range(3)
# `_ps_upd.tbl` and, per table, `_ps_upd.kind`.
_GRAPH, _EXTERNAL, _TRAITS = range(3)
_CREATED, _MERGED, _RECURSIVE = range(3)
_ANONYMOUS_ID, _USER_ID_OBSERVED, _EMAIL_OBSERVED = range(3)

_IDENTIFIED_SHARE = 0.75
_SECOND_DEVICE_SHARE = 0.25  # of the merged people
_RECURSIVE_SHARE = 0.6  # of the merged people: Segment wrote the recursive entries of their merges
_ORDER_SHARE = 0.15  # of signed-in visits
_EDIT_SHARE = 0.6  # of the spans in which a person is signed in: a profile edit (identify) happens
_NULL_SEGMENT_SHARE = 0.05  # of event rows
_BACKFILL_SHARE = 0.01  # of creation rows: null seq and timestamp
_LATE_SHARE = 0.05  # of merge rows: land 1-12 hours late
_DUPLICATE_SHARE = 0.005  # of Profiles Sync rows: land twice
_SIGNUP_SPAN = 0.9  # signups fall in the first 90% of the window

_HOUR_MS = 3_600_000
_MINUTE_MS = 60_000
_SOURCE_ID = "qWm4Bz7uTn2kX9cR5vYd1E"  # the website's Segment source id
_PLANS = (("'free'", 65), ("'pro'", 28), ("'enterprise'", 7))
_PAGES = (("'Home'", 35), ("'Pricing'", 20), ("'Docs'", 25), ("'Blog'", 20))
_DOCS = ("getting-started", "audiences", "computed-traits", "profiles-sync", "destinations", "api")

_EVENT_TABLES = ("pages", "signed_up", "order_completed", "identifies")
_UPDATE_TABLES = ("id_graph_updates", "external_id_mapping_updates", "profile_traits_updates")
_TABLES = (*_UPDATE_TABLES, "pages", "tracks", "identifies", "signed_up", "order_completed")
_TIMESTAMP_COLUMNS = ("timestamp", "original_timestamp", "sent_at", "received_at", "uuid_ts")
_TYPES = {**dict.fromkeys(_TIMESTAMP_COLUMNS, "TIMESTAMP"), "seq": "BIGINT", "revenue": "DOUBLE"}
# Ids: random strings, distinct per row or per profile. Compressed, they would take a fifth less space and
# twice as long to write (see engage.demo).
_UNCOMPRESSED = frozenset(
    (
        "id",
        "segment_id",
        "canonical_segment_id",
        "user_id",
        "anonymous_id",
        "triggering_event_id",
        "external_id_value",
        "external_id_hash",
    )
)
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_TEMP_TABLES = ("_ps_person", "_ps_seg", "_ps_span", "_ps_names", "_ps_evt", "_ps_ident", "_ps_upd")
_APPEND_TEMP_TABLES = ("_psa_latest", "_psa_canon", "_psa_member")


@dataclass(frozen=True)
class _Batch:
    """The time window of a generation or an append, and the stream that keeps its ids apart.

    Call times `ts_ms` are milliseconds from `start_us`; calls fall in [0, span_ms), late ones before 0.
    """

    start_us: int
    span_ms: int
    stream: tuple[object, ...]
    end_us: int  # nothing lands after it (a generation)
    landed_us: int | None = None  # an append: every row lands in the minute from here

    def at(self, ms: str) -> str:
        """SQL: the TIMESTAMP `ms` milliseconds into the window."""
        return f"make_timestamp({self.start_us} + ({ms}) * 1000)"

    def landing(self, ms: str, h: str) -> str:
        """SQL: `uuid_ts` of a row that would land `ms` into the window, drawn from row hash `h`."""
        if self.landed_us is None:
            return f"make_timestamp(least({self.end_us}, {self.start_us} + ({ms}) * 1000))"
        return f"make_timestamp({self.landed_us} + floor({_unif(h, 'landing')} * 60000000)::BIGINT)"


def _event_id(key: str, batch: _Batch) -> str:
    """SQL: the id of the call with event key `key` (also a Profiles Sync row's triggering_event_id)."""
    return _uuid(_row_hash(key, "event-id", *batch.stream), "event", *batch.stream)


def _segment_names(key: str, batch: _Batch) -> str:
    """SQL: `segment_id` and `anonymous_id` columns of the segment id with key `key` (a profile's own
    device id)."""
    segment = f"'use_' || lpad(lower(to_hex({_row_hash(key, 'segment', *batch.stream)})), 16, '0')"
    anonymous = _uuid(_row_hash(key, "anonymous-id", *batch.stream), "anonymous", *batch.stream)
    return f"{segment} AS segment_id, {anonymous} AS anonymous_id"


def _merge_ms(k: str, batch: _Batch) -> str:
    """SQL over a person's row (`p`, `signup_ms`, `d`): when chain member `k` becomes the person's profile.

    Member 1 at the signup; member k >= 2 (a login on a new device) in the k-1th of d equal bands after the
    signup, in its first half, so the times grow with k; past the chain (k > d), the end of the window.
    """
    span = batch.span_ms
    u = _unif(_row_hash(f"p * {_SLOTS} + ({k})", "merge", *batch.stream), "at")
    return f"""(CASE WHEN ({k}) > d THEN {span} WHEN ({k}) = 1 THEN signup_ms
        ELSE signup_ms + 1000 + floor(({span} - 2000 - signup_ms) * (({k}) - 1 + 0.5 * {u}) / greatest(d, 1))
        END)::BIGINT"""


def _create_people(
    con: duckdb.DuckDBPyConnection, *, people: int, merged_share: float, max_depth: int, batch: _Batch
) -> None:
    """Creates `_ps_person`: who signs up when, whose profiles merge, and how deep their chain is."""
    span = batch.span_ms
    # Chain depths d in 1..max_depth are truncated-geometric (each one half as likely as the one before), and
    # each merged person merges d ids plus a second device's for some: solve for the merged people's share so
    # that merged ids / all ids = merged_share (each person keeps one live id).
    mean_depth = sum(d * 0.5**d for d in range(1, max_depth + 1)) / (1 - 0.5**max_depth)
    merged_per_person = merged_share / (1 - merged_share)
    merge_chance = merged_per_person / (mean_depth + _SECOND_DEVICE_SHARE) / _IDENTIFIED_SHARE
    if merge_chance > 1:
        raise ValueError(f"merged_share={merged_share} is too high for max_depth={max_depth}")
    forced = "p = 0" if merged_share > 0 else "FALSE"  # person 0 shows the longest chain
    depth = (
        f"greatest(1, least({max_depth}, ceil(-log2(1 - {_unif('hb', 'depth')} * {1 - 0.5**max_depth!r}))))"
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ps_person AS
        WITH population AS (
            SELECT range AS p, {_HP} AS hp, {_row_hash("range", "person", *batch.stream)} AS hb
            FROM range({people})
        ), drawn AS (
            SELECT p, hp, hb,
                {forced} OR {_unif("hb", "identified")} < {_IDENTIFIED_SHARE} AS identified,
                identified AND ({forced} OR {_unif("hb", "merged")} < {merge_chance!r}) AS merged,
                (CASE WHEN NOT merged THEN 0 WHEN {forced} THEN {max_depth} ELSE {depth} END)::INTEGER AS d,
                merged AND NOT {forced} AND {_unif("hb", "second_device")} < {_SECOND_DEVICE_SHARE} AS second,
                merged AND NOT {forced} AND {_unif("hb", "recursive")} < {_RECURSIVE_SHARE} AS recursive,
                -- Signups skew early in the window (u^2), so most of a user's visits are signed in.
                CASE WHEN identified THEN 120000
                    + floor({_unif("hb", "signup")} ^ 2 * {int(_SIGNUP_SPAN * span) - 120000})::BIGINT
                END AS signup_ms,
                -- Activity weight: log-normal (sigma 1.1): a few heavy users, a long tail of light ones.
                (1 + round(100 * exp(1.1 * sqrt(-2 * ln(1 - {_unif("hb", "activity", 1)}))
                    * cos(2 * pi() * {_unif("hb", "activity", 2)}))))::BIGINT AS weight,
                {_weighted(_unif("hb", "plan"), _PLANS)} AS plan0,
                CASE
                    WHEN plan0 IN ('free', 'enterprise') THEN 'pro'
                    WHEN {_unif("hb", "upgrade")} < 0.7 THEN 'enterprise'
                    ELSE 'free'
                END AS plan1,
                -- About 30% of users change plan once, some time after signing up.
                CASE WHEN {_unif("hb", "plan_change")} < 0.3
                    THEN signup_ms + floor({_unif("hb", "change_at")} * ({span} - signup_ms))::BIGINT
                END AS change_ms
            FROM population
        )
        SELECT *,
            -- The first visit: a user's comes 1 minute to 3 days before signing up; anyone else's any time.
            CASE WHEN identified
                THEN signup_ms - {_MINUTE_MS} - floor({_unif("hb", "first")} ^ 2
                    * least({3 * _DAY_MS}, signup_ms - {_MINUTE_MS}))::BIGINT
                ELSE {_recent_ms(_unif("hb", "first"), span)}
            END AS first_ms
        FROM drawn
        """
    )


def _create_segments(con: duckdb.DuckDBPyConnection, batch: _Batch) -> None:
    """Creates `_ps_seg`: one row per segment id, with when it is created, whether and when it merges into
    which of the person's ids, and its two spans: browsing anonymously and being the signed-in profile."""
    span = batch.span_ms
    s = _row_hash("seg", "segment-times", *batch.stream)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ps_seg AS
        WITH chain AS (
            SELECT *, unnest(range(d + 1)) AS j FROM _ps_person
            UNION ALL
            SELECT *, {_SECOND_DEVICE} AS j FROM _ps_person WHERE second
        ), keyed AS (
            SELECT *, p * {_SLOTS} + j AS seg,
                -- The chain member it merges into is the next one; a second device merges at the signup.
                CASE WHEN j = {_SECOND_DEVICE} THEN 0 ELSE j END AS level,
                CASE WHEN j BETWEEN 1 AND d THEN {_merge_ms("j", batch)} END AS login_ms,
                j = CASE WHEN merged THEN 1 ELSE 0 END AND identified AS signs_up
            FROM chain
        )
        SELECT p, hp, j, seg, level, d, recursive, identified, signs_up, signup_ms, login_ms, weight, plan0,
            plan1, change_ms,
            CASE
                WHEN j = 0 THEN first_ms
                WHEN j = {_SECOND_DEVICE}
                    THEN first_ms + 1 + floor({_unif(s, "second")} * (signup_ms - first_ms - 1))::BIGINT
                WHEN j = 1 THEN signup_ms
                -- A later device is first seen anonymously, a minute to 6 hours before the login.
                ELSE greatest(0, login_ms - {_MINUTE_MS}
                    - floor({_unif(s, "device")} * {6 * _HOUR_MS})::BIGINT)
            END AS created_ms,
            CASE WHEN merged AND level < d THEN {_merge_ms("level + 1", batch)} END AS merged_ms,
            -- Browsing anonymously: [created_ms, anon_stop_ms). None on the profile signed up on.
            CASE
                WHEN j IN (0, {_SECOND_DEVICE}) THEN coalesce(signup_ms, {span})
                WHEN j >= 2 THEN login_ms
                ELSE created_ms
            END AS anon_stop_ms,
            -- Signed in, as the person's current profile: [in_start_ms, in_stop_ms).
            CASE WHEN merged AND j BETWEEN 1 AND d THEN login_ms WHEN signs_up THEN signup_ms
            END AS in_start_ms,
            CASE WHEN merged AND j BETWEEN 1 AND d THEN {_merge_ms("j + 1", batch)} WHEN signs_up THEN {span}
            END AS in_stop_ms
        FROM keyed
        """
    )


def _create_names(con: duckdb.DuckDBPyConnection, batch: _Batch) -> None:
    """Creates `_ps_names`: the strings of every segment id (seg) of a generation."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ps_names AS
        SELECT seg, {_segment_names("seg", batch)},
            CASE WHEN identified THEN {_USER_ID} END AS user_id,
            CASE WHEN identified THEN {_EMAIL} END AS email,
            CASE WHEN identified THEN {_FIRST_NAME} END AS first_name
        FROM _ps_seg
        """
    )


def _allocation(con: duckdb.DuckDBPyConnection, table: str, total: int, order: str) -> str:
    """SQL: `table` plus `n`, each row's share of `total` calls by its weight `w`, and `first_i`, the index of
    its first call. Shares add up to exactly `total`; indexes are unique in [0, total)."""
    total_w = max(1, _scalar(con, f"SELECT sum(w) FROM {table}"))
    num = "BIGINT" if total_w * max(total, 1) < 2**62 else "HUGEINT"
    return f"""
        SELECT *, (cum * {total} // {total_w} - first_i)::BIGINT AS n
        FROM (
            SELECT *, ((cum - w) * {total} // {total_w})::BIGINT AS first_i
            FROM (
                SELECT *, sum(w) OVER (ORDER BY {order} ROWS UNBOUNDED PRECEDING)::{num} AS cum FROM {table}
            )
        )"""


def _create_calls(con: duckdb.DuckDBPyConnection, *, total: int, batch: _Batch) -> None:
    """Creates `_ps_evt`: each segment id's first visit, each signup, and `total` more visits shared out
    over the spans of `_ps_seg` by the person's weight and the span's length."""
    span = batch.span_ms
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ps_span AS
        WITH spans AS (
            SELECT seg, created_ms AS start_ms, anon_stop_ms AS stop_ms, FALSE AS signed_in, weight
            FROM _ps_seg WHERE anon_stop_ms > created_ms
            UNION ALL
            SELECT seg, in_start_ms, in_stop_ms, TRUE, weight FROM _ps_seg WHERE in_stop_ms > in_start_ms
        )
        SELECT *, weight * (stop_ms - start_ms) // {max(1, span // 1000)} AS w FROM spans
        """
    )
    base = (_scalar(con, "SELECT max(seg) + 1 FROM _ps_seg")) * _EVENT_SLOTS
    h = _row_hash("i", "call", *batch.stream)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ps_evt AS
        WITH calls AS (
            SELECT seg, signed_in, start_ms, stop_ms, first_i + unnest(range(n)) AS i
            FROM ({_allocation(con, "_ps_span", total, "seg, signed_in")}) WHERE n > 0
        ), drawn AS (
            SELECT *, {h} AS h FROM calls
        )
        SELECT
            (CASE WHEN signed_in AND {_unif("h", "order")} < {_ORDER_SHARE} THEN {_ORDER} ELSE {_PAGE} END)
                ::UTINYINT AS tbl,
            {base} + i AS ekey, seg, signed_in,
            start_ms + floor({_unif("h", "time")} * (stop_ms - start_ms))::BIGINT AS ts_ms
        FROM drawn
        UNION ALL
        -- Each segment id's first visit; the profile a merged person signs up on starts with the signup.
        SELECT {_PAGE}, seg * {_EVENT_SLOTS} + {_LANDING}, seg, FALSE, created_ms
        FROM _ps_seg WHERE j <> 1
        UNION ALL
        SELECT {_SIGNED_UP}, seg * {_EVENT_SLOTS} + {_SIGNUP_TRACK}, seg, TRUE, signup_ms
        FROM _ps_seg WHERE signs_up
        ORDER BY tbl, ts_ms, ekey
        """
    )


def _create_identifies(con: duckdb.DuckDBPyConnection, batch: _Batch) -> None:
    """Creates `_ps_ident`: the identify calls (ekey, seg, ts_ms, kind, plan) of a generation: at signup, at
    each login on a new device, and a profile edit in most of the spans in which someone is signed in."""
    h = _row_hash("seg", "identify", *batch.stream)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ps_ident AS
        WITH calls AS (
            SELECT *, {_SIGNUP_IDENTIFY} AS kind, signup_ms + 500 AS ts_ms FROM _ps_seg WHERE signs_up
            UNION ALL
            SELECT *, {_LOGIN_IDENTIFY}, login_ms FROM _ps_seg WHERE j BETWEEN 2 AND d
            UNION ALL
            SELECT *, {_EDIT_IDENTIFY},
                in_start_ms + 1000 + floor({_unif(h, "edit_at")} * (in_stop_ms - in_start_ms - 1000))::BIGINT
            FROM _ps_seg WHERE in_stop_ms - in_start_ms > 1000 AND {_unif(h, "edit")} < {_EDIT_SHARE}
        )
        SELECT seg * {_EVENT_SLOTS} + kind AS ekey, seg, ts_ms, kind::UTINYINT AS kind,
            -- The plan as of the call; edits leave it out 25% of the time (the latest non-null one stands).
            CASE
                WHEN kind = {_EDIT_IDENTIFY} AND {_unif(h, "plan_missing")} < 0.25 THEN NULL
                WHEN ts_ms >= change_ms THEN plan1
                ELSE plan0
            END AS plan
        FROM calls
        ORDER BY ts_ms, ekey
        """
    )


def _create_updates(con: duckdb.DuckDBPyConnection, rows: str) -> None:
    """Creates `_ps_upd` from `rows` (tbl, kind, seg, tgt, trig, ts_ms, plan), numbering them by time: `r`,
    the basis of `seq`. The order is total, so the numbering is deterministic."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ps_upd AS
        SELECT *, row_number() OVER (ORDER BY ts_ms, tbl, kind, seg, tgt, trig) AS r FROM ({rows})
        """
    )


def _generated_updates(batch: _Batch) -> str:
    """SQL: the Profiles Sync rows of a generation, in `_create_updates`'s shape."""
    created_by = f"""seg * {_EVENT_SLOTS} + CASE WHEN j = 1 THEN {_SIGNUP_TRACK} ELSE {_LANDING} END"""
    # A merge into the profile signed up on comes with the signup; into a later device, with the login.
    merged_by = f"""(p * {_SLOTS} + level + 1) * {_EVENT_SLOTS}
        + CASE WHEN level = 0 THEN {_SIGNUP_TRACK} ELSE {_LOGIN_IDENTIFY} END"""
    return f"""
        SELECT {_GRAPH} AS tbl, {_CREATED} AS kind, seg, seg AS tgt, {created_by} AS trig,
            created_ms AS ts_ms, NULL::VARCHAR AS plan
        FROM _ps_seg
        UNION ALL
        SELECT {_GRAPH}, {_MERGED}, seg, p * {_SLOTS} + level + 1, {merged_by}, merged_ms, NULL
        FROM _ps_seg WHERE merged_ms IS NOT NULL
        UNION ALL
        -- Segment's recursive entries: when chain member k - 1 merges into k, every id already merged into
        -- k - 1 gets a row into k too.
        SELECT {_GRAPH}, {_RECURSIVE}, seg, p * {_SLOTS} + k,
            (p * {_SLOTS} + k) * {_EVENT_SLOTS} + {_LOGIN_IDENTIFY}, {_merge_ms("k", batch)}, NULL
        FROM (
            SELECT *, unnest(range(level + 2, d + 1)) AS k FROM _ps_seg
            WHERE recursive AND merged_ms IS NOT NULL
        )
        UNION ALL
        SELECT {_EXTERNAL}, {_ANONYMOUS_ID}, seg, seg, {created_by}, created_ms, NULL FROM _ps_seg
        UNION ALL
        SELECT {_EXTERNAL}, {_USER_ID_OBSERVED}, seg, seg, seg * {_EVENT_SLOTS} + {_SIGNUP_TRACK},
            signup_ms, NULL
        FROM _ps_seg WHERE signs_up
        UNION ALL
        -- A user_id observed again, on each device the person logs in on.
        SELECT {_EXTERNAL}, {_USER_ID_OBSERVED}, seg, seg, seg * {_EVENT_SLOTS} + {_LOGIN_IDENTIFY},
            login_ms, NULL
        FROM _ps_seg WHERE j BETWEEN 2 AND d
        UNION ALL
        SELECT {_EXTERNAL}, {_EMAIL_OBSERVED}, seg, seg, seg * {_EVENT_SLOTS} + {_SIGNUP_IDENTIFY},
            signup_ms + 500, NULL
        FROM _ps_seg WHERE signs_up
        UNION ALL
        SELECT {_TRAITS}, kind, seg, seg, ekey, ts_ms, plan FROM _ps_ident"""


# --------------------------------------------------------------------------------------------------------
# Writing the warehouse tables from the skeletons.
# --------------------------------------------------------------------------------------------------------


def _event_query(table: str, batch: _Batch) -> tuple[str, list[str]]:
    """SQL for the rows of an event table (`pages`, `signed_up`, `order_completed`, `identifies`) of the
    batch, and its column names."""
    stream = batch.stream
    if table == "identifies":
        rows = "SELECT *, TRUE AS signed_in FROM _ps_ident JOIN _ps_names USING (seg)"
    else:
        code = {"pages": _PAGE, "signed_up": _SIGNED_UP, "order_completed": _ORDER}[table]
        rows = f"SELECT * FROM _ps_evt JOIN _ps_names USING (seg) WHERE tbl = {code}"
    columns = {
        "id": _event_id("ekey", batch),
        "segment_id": f"CASE WHEN {_unif('h', 'segment')} >= {_NULL_SEGMENT_SHARE} THEN segment_id END",
        "event_source_id": _lit(_SOURCE_ID),
        "user_id": "CASE WHEN signed_in THEN user_id END",
        "anonymous_id": "anonymous_id",
    }
    draws: list[str] = []
    if table == "pages":
        docs = _pick([f"/docs/{d}" for d in _DOCS], "h", "doc")
        posts = _pick([f"/blog/{slug}" for slug, _ in _BLOG_POSTS], "h", "post")
        draws.append(f"{_weighted(_unif('h', 'page'), _PAGES)} AS name")
        columns["name"] = "name"
        columns["path"] = f"""CASE name WHEN 'Home' THEN '/' WHEN 'Pricing' THEN '/pricing'
            WHEN 'Docs' THEN {docs} ELSE {posts} END"""
    elif table == "identifies":
        signup = f"kind = {_SIGNUP_IDENTIFY}"
        columns |= {
            "email": f"CASE WHEN {signup} THEN email END",
            "plan": "plan",
            "first_name": f"CASE WHEN {signup} THEN first_name END",
        }
    else:
        text = "Signed Up" if table == "signed_up" else "Order Completed"
        columns |= {"event": _lit(table), "event_text": _lit(text)}
    times = _timestamps(batch.start_us)
    if batch.landed_us is None:
        times["received_at"] = (
            f"make_timestamp(least({batch.end_us}, {batch.start_us} + (ts_ms + delay_ms) * 1000))"
        )
    times["uuid_ts"] = batch.landing("ts_ms + delay_ms + lag_ms", "h")
    columns |= times
    if table == "signed_up":
        columns["method"] = _weighted(
            _unif("h", "method"), [("'email'", 55), ("'google'", 35), ("'github'", 10)]
        )
    elif table == "order_completed":
        u = _unif("h", "revenue")
        columns |= {
            # 94% of orders are 20-150 (most near the bottom); a 6% tail of big baskets reaches 2000.
            "revenue": f"""round(CASE WHEN {_unif("h", "big_basket")} < 0.06
                THEN 150 + 1850 * {u} ^ 3 ELSE 20 + 130 * {u} ^ 1.4 END, 2)""",
            # A fifth of the users pay in euros, always.
            "currency": f"CASE WHEN {_mix('hash(user_id)', 'currency')} % 5 = 0 THEN 'EUR' ELSE 'USD' END",
        }
    layers = [
        [f"{_row_hash('ekey', 'event', *stream)} AS h", f"{_row_hash('seg', 'device', *stream)} AS hq"],
        [*_delays("web"), *draws],
    ]
    return _query(columns, rows, layers), list(columns)


def _update_query(table: str, batch: _Batch, seq0: int) -> tuple[str, list[str]]:
    """SQL for the rows of a Profiles Sync table of the batch, and its column names. `seq` is `seq0` plus the
    row's number in `_ps_upd`. A generation lands some rows late, backfilled or twice (see the module doc)."""
    tbl = _UPDATE_TABLES.index(table)
    rows = f"SELECT * FROM _ps_upd JOIN _ps_names USING (seg) WHERE tbl = {tbl}"
    columns = {"id": _uuid(_row_hash("r", "update-id", *batch.stream), "update", *batch.stream)}
    if table == "id_graph_updates":
        rows = f"""SELECT * FROM ({rows})
            JOIN (SELECT seg AS tgt, segment_id AS canonical_segment_id FROM _ps_names) USING (tgt)"""
        columns |= {
            "segment_id": "segment_id",
            "canonical_segment_id": "canonical_segment_id",
            "triggering_event_type": f"""CASE trig % {_EVENT_SLOTS} WHEN {_LANDING} THEN 'page'
                WHEN {_SIGNUP_TRACK} THEN 'track' ELSE 'identify' END""",
            "triggering_event_id": _event_id("trig", batch),
        }
    elif table == "external_id_mapping_updates":
        kind = f"""CASE kind WHEN {_ANONYMOUS_ID} THEN 'anonymous_id' WHEN {_USER_ID_OBSERVED} THEN 'user_id'
            ELSE 'email' END"""
        value = f"""CASE kind WHEN {_ANONYMOUS_ID} THEN anonymous_id WHEN {_USER_ID_OBSERVED} THEN user_id
            ELSE email END"""
        columns |= {
            "segment_id": "segment_id",
            "external_id_type": kind,
            "external_id_value": value,
            "external_id_hash": f"md5(({kind}) || ':' || ({value}))",
        }
    else:
        signup = f"kind = {_SIGNUP_IDENTIFY}"
        columns |= {
            "segment_id": "segment_id",
            "email": f"CASE WHEN {signup} THEN email END",
            "plan": "plan",
            "first_name": f"CASE WHEN {signup} THEN first_name END",
        }
    span = batch.span_ms
    layers = [[f"{_row_hash('r', 'update', *batch.stream)} AS h", "h AS hq"], _delays("web")]
    if batch.landed_us is None:
        layers.append(
            [
                f"""{tbl} = {_GRAPH} AND kind = {_CREATED} AND {_unif("h", "backfill")} < {_BACKFILL_SHARE}
                    AS backfill""",
                # Late merges and duplicates keep clear of the window's end: they land before it.
                f"""{tbl} = {_GRAPH} AND kind <> {_CREATED} AND ts_ms < {span - 13 * _HOUR_MS}
                    AND {_unif("h", "late")} < {_LATE_SHARE} AS late""",
                f"""NOT backfill AND ts_ms < {span - 2 * _DAY_MS}
                    AND {_unif("h", "duplicate")} < {_DUPLICATE_SHARE} AS duplicate""",
            ]
        )
        layers.append(
            [
                f"""CASE
                    WHEN late
                        THEN ts_ms + {_HOUR_MS} + floor({_unif("h", "late_by")} * {11 * _HOUR_MS})::BIGINT
                    WHEN backfill
                        THEN ts_ms + {_DAY_MS} + floor({_unif("h", "backfill_by")} * {2 * _DAY_MS})::BIGINT
                    ELSE ts_ms + delay_ms + lag_ms
                END AS landed_ms""",
                "unnest(CASE WHEN duplicate THEN [0, 1] ELSE [0] END) AS copy",
            ]
        )
        landed = f"""CASE WHEN copy = 1
            THEN landed_ms + {_HOUR_MS} + floor({_unif("h", "again")} * {23 * _HOUR_MS})::BIGINT
            ELSE landed_ms END"""
        columns |= {
            "timestamp": f"CASE WHEN NOT backfill THEN {batch.at('ts_ms')} END",
            "seq": f"CASE WHEN NOT backfill THEN {seq0} + r END",
            "received_at": batch.landing("ts_ms + delay_ms", "h"),
            "uuid_ts": batch.landing(landed, "h"),
        }
    else:
        columns |= {
            "timestamp": batch.at("ts_ms"),
            "seq": f"{seq0} + r",
            "received_at": batch.at("ts_ms + delay_ms"),
            "uuid_ts": batch.landing("ts_ms", "h"),
        }
    return _query(columns, rows, layers), list(columns)


def _insert(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    """Runs the INSERT `sql`; returns the number of rows it inserted."""
    return int(con.execute(sql).fetchall()[0][0])


def _write(con: duckdb.DuckDBPyConnection, schema: str, batch: _Batch, seq0: int, *, create: bool) -> int:
    """Writes the skeletons' rows into the schema's tables (creating them first with `create`); `tracks`
    copies the per-event tables' rows of this batch. Returns the number of rows written."""
    written = 0
    queries = {t: _update_query(t, batch, seq0) for t in _UPDATE_TABLES}
    queries |= {t: _event_query(t, batch) for t in _EVENT_TABLES}
    for table, (query, columns) in queries.items():
        if create:
            _create_table(con, f"{schema}.{table}", columns, _TYPES, _UNCOMPRESSED)
        if table in _UPDATE_TABLES:  # stored in landing order, as loads append them (module doc)
            query = f"SELECT * FROM ({query}) ORDER BY uuid_ts"
        written += _insert(con, f"INSERT INTO {schema}.{table} ({', '.join(columns)}) {query}")
    tracks = [c for c in queries["signed_up"][1] if c != "method"]  # the tracks columns
    if create:
        _create_table(con, f"{schema}.tracks", tracks, _TYPES, _UNCOMPRESSED)
    this_batch = "" if batch.landed_us is None else f" WHERE uuid_ts >= make_timestamp({batch.landed_us})"
    for event in ("signed_up", "order_completed"):
        cols = ", ".join(tracks)
        written += _insert(
            con, f"INSERT INTO {schema}.tracks ({cols}) SELECT {cols} FROM {schema}.{event}{this_batch}"
        )
    return written


def _check_schema(schema: str) -> None:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r} must be a lower-case SQL identifier")


def _drop_temp(con: duckdb.DuckDBPyConnection, tables: tuple[str, ...]) -> None:
    for table in tables:
        con.execute(f"DROP TABLE IF EXISTS temp.main.{table}")


# --------------------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------------------


def generate_profiles_sync(
    con: duckdb.DuckDBPyConnection,
    *,
    people: int,
    events: int,
    end: datetime,
    days: int = 60,
    seed: int = 42,
    schema: str = "profiles",
    merged_share: float = 0.3,
    max_depth: int = 4,
) -> ProfilesSyncSummary:
    """Creates a Profiles Sync schema of sample data (see the module doc for the story).

    The schema is created if missing; its Profiles Sync and event tables are dropped and recreated (other
    tables in it are left alone).

    Args:
        con: The DuckDB connection to write to.
        people: Number of persons. They have about `people / (1 - merged_share)` segment ids.
        events: Exact number of rows in `pages` plus `tracks`. At least every segment id's first visit plus
            one signup per user (about 2 × `people`).
        end: End of the window (naive = UTC; aware values are converted). No row lands after it.
        days: Length of the window; every `timestamp` lies in `[end - days, end]`.
        seed: Drives everything; the same arguments give identical tables.
        schema: The schema to write.
        merged_share: About the share of all segment ids that merge away.
        max_depth: The longest merge chain (person 0's); depths are 1..max_depth, each half as likely as the
            one before.

    Returns:
        Counts of what was written.

    Raises:
        ValueError: On invalid arguments.
    """
    _check_schema(schema)
    if people < 1 or events < 0 or days < 1:
        raise ValueError("people and days must be positive and events non-negative")
    if not 0 <= merged_share < 1 or not 1 <= max_depth <= _MAX_DEPTH:
        raise ValueError(f"merged_share must be in [0, 1) and max_depth in [1, {_MAX_DEPTH}]")
    end = _utc_naive(end)
    end_us = _epoch_us(end)
    span = days * _DAY_MS
    batch = _Batch(start_us=end_us - span * 1000, span_ms=span, stream=("profiles", seed), end_us=end_us)
    try:
        _create_people(con, people=people, merged_share=merged_share, max_depth=max_depth, batch=batch)
        _create_segments(con, batch)
        fixed = _scalar(
            con, "SELECT count(*) FILTER (WHERE j <> 1) + count(*) FILTER (WHERE signs_up) FROM _ps_seg"
        )
        if events < fixed:
            raise ValueError(
                f"events={events} is fewer than the {fixed} first visits and signups of {people} people"
            )
        _create_names(con, batch)
        _create_calls(con, total=events - fixed, batch=batch)
        _create_identifies(con, batch)
        _create_updates(con, _generated_updates(batch))
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for table in _TABLES:
            con.execute(f"DROP TABLE IF EXISTS {schema}.{table}")
        _write(con, schema, batch, 0, create=True)
        segment_ids, merged = con.execute("SELECT count(*), count(merged_ms) FROM _ps_seg").fetchall()[0]
        # Following latest rows, a merged person's chain is d long, or 1 with the recursive entries.
        depth = _scalar(con, "SELECT max(CASE WHEN recursive THEN least(d, 1) ELSE d END) FROM _ps_person")
    finally:
        _drop_temp(con, _TEMP_TABLES)
    counts = {f"{schema}.{t}": _scalar(con, f"SELECT count(*) FROM {schema}.{t}") for t in _TABLES}
    return ProfilesSyncSummary(
        people=people,
        segment_ids=int(segment_ids),
        merged=int(merged),
        max_depth=depth,
        events=counts[f"{schema}.pages"] + counts[f"{schema}.tracks"],
        tables=counts,
    )


def _create_canonicals(
    con: duckdb.DuckDBPyConnection, schema: str, *, logins: int, edits: int, batch: _Batch
) -> int:
    """Creates `_psa_latest` (each landed segment id's latest row's target) and `_psa_canon`: the live
    profiles (c, segment_id, anonymous_id, user_id), numbered, with whether and when this batch logs one in
    on a new device (about `logins` of the identified ones) or edits its profile (about `edits`). Returns
    the number of live profiles."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _psa_latest AS
        SELECT segment_id,
            arg_max(canonical_segment_id, (coalesce(seq, -1), coalesce(timestamp, '-infinity'::TIMESTAMP),
                uuid_ts, id)) AS points_at
        FROM {schema}.id_graph_updates WHERE segment_id IS NOT NULL GROUP BY segment_id
        """
    )
    h, span = "hc", batch.span_ms
    latest = "arg_max(external_id_value, (coalesce(seq, -1), uuid_ts, id))"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _psa_canon AS
        WITH ids AS (
            SELECT segment_id,
                {latest} FILTER (WHERE external_id_type = 'anonymous_id') AS anonymous_id,
                {latest} FILTER (WHERE external_id_type = 'user_id') AS user_id
            FROM {schema}.external_id_mapping_updates GROUP BY segment_id
        ), live AS (
            SELECT row_number() OVER (ORDER BY segment_id) - 1 AS c, segment_id, anonymous_id, user_id
            FROM _psa_latest LEFT JOIN ids USING (segment_id) WHERE points_at = segment_id
        ), drawn AS (
            SELECT *, {_row_hash("c", "canonical", *batch.stream)} AS hc,
                count(user_id) OVER () AS identified
            FROM live
        )
        SELECT c, segment_id, anonymous_id, user_id,
            user_id IS NOT NULL AND {_unif(h, "login")} * identified < {logins} AS login,
            -- 10% of the logins are merges that land 1-12 hours late.
            CASE WHEN login THEN CASE WHEN {_unif(h, "late")} < 0.1
                THEN -{_HOUR_MS} - floor({_unif(h, "late_by")} * {11 * _HOUR_MS})::BIGINT
                ELSE {_MINUTE_MS} + floor({_unif(h, "login_at")} * {span - _MINUTE_MS})::BIGINT
            END END AS login_ms,
            login_ms - {_MINUTE_MS} - floor({_unif(h, "device")} * {29 * _MINUTE_MS})::BIGINT AS created_ms,
            login AND {_unif(h, "recursive")} < {_RECURSIVE_SHARE} AS recursive,
            user_id IS NOT NULL AND {_unif(h, "edit")} * identified < {edits} AS edit,
            floor({_unif(h, "edit_at")} * {span})::BIGINT AS edit_ms,
            {_weighted(_unif(h, "plan"), _PLANS)} AS plan
        FROM drawn
        """
    )
    return _scalar(con, "SELECT count(*) FROM _psa_canon")


def _create_appended(con: duckdb.DuckDBPyConnection, *, live: int, visits: int, batch: _Batch) -> None:
    """Fills the skeletons of an append from `_psa_canon`. Segment keys: a live profile's is c, its new
    device's `live + c`, and the ids already merged into it that a recursive entry moves along `2 * live`
    onwards."""
    new = f"{live} + c"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _psa_member AS
        SELECT {2 * live} + row_number() OVER (ORDER BY l.segment_id) AS seg, l.segment_id, {new} AS tgt,
            login_ms
        FROM _psa_latest l JOIN _psa_canon ON l.points_at = _psa_canon.segment_id
        WHERE recursive AND l.segment_id <> l.points_at
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ps_names AS
        SELECT c AS seg, segment_id, anonymous_id, user_id, NULL::VARCHAR AS email,
            NULL::VARCHAR AS first_name
        FROM _psa_canon
        UNION ALL
        SELECT {new}, {_segment_names(new, batch)}, user_id, NULL, NULL FROM _psa_canon WHERE login
        UNION ALL
        SELECT seg, segment_id, NULL, NULL, NULL, NULL FROM _psa_member
        """
    )
    # Visits after a login come from the new device's profile.
    current = f"CASE WHEN login AND {{ms}} >= login_ms THEN {new} ELSE c END"
    h = _row_hash("range", "call", *batch.stream)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ps_evt AS
        WITH calls AS (
            SELECT range AS i, {h} AS h FROM range({visits})
        ), picked AS (
            SELECT i, h, ({_mix("h", "who")} % {live})::BIGINT AS c,
                -- 3% of the visits land 1 to 48 hours late.
                CASE WHEN {_unif("h", "late")} < 0.03
                    THEN -{_HOUR_MS} - floor({_unif("h", "late_by")} * {47 * _HOUR_MS})::BIGINT
                    ELSE floor({_unif("h", "time")} * {batch.span_ms})::BIGINT
                END AS ts_ms
            FROM calls
        )
        SELECT
            (CASE WHEN user_id IS NOT NULL AND {_unif("h", "order")} < {_ORDER_SHARE}
                THEN {_ORDER} ELSE {_PAGE} END)::UTINYINT AS tbl,
            {3 * live * _EVENT_SLOTS} + i AS ekey, {current.format(ms="ts_ms")} AS seg,
            user_id IS NOT NULL AS signed_in, ts_ms
        FROM picked JOIN _psa_canon USING (c)
        UNION ALL
        SELECT {_PAGE}, ({new}) * {_EVENT_SLOTS} + {_LANDING}, {new}, FALSE, created_ms
        FROM _psa_canon WHERE login
        ORDER BY tbl, ts_ms, ekey
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ps_ident AS
        SELECT ({new}) * {_EVENT_SLOTS} + {_LOGIN_IDENTIFY} AS ekey, {new} AS seg, login_ms AS ts_ms,
            {_LOGIN_IDENTIFY}::UTINYINT AS kind, plan
        FROM _psa_canon WHERE login
        UNION ALL
        SELECT c * {_EVENT_SLOTS} + {_EDIT_IDENTIFY}, {current.format(ms="edit_ms")}, edit_ms,
            {_EDIT_IDENTIFY}, plan
        FROM _psa_canon WHERE edit
        """
    )
    login = f"({new}) * {_EVENT_SLOTS} + {_LOGIN_IDENTIFY}"
    landing = f"({new}) * {_EVENT_SLOTS} + {_LANDING}"
    _create_updates(
        con,
        f"""
        SELECT {_GRAPH} AS tbl, {_CREATED} AS kind, {new} AS seg, {new} AS tgt, {landing} AS trig,
            created_ms AS ts_ms, NULL::VARCHAR AS plan
        FROM _psa_canon WHERE login
        UNION ALL
        -- The previous canonical merges into the new device's profile: its chain grows by one.
        SELECT {_GRAPH}, {_MERGED}, c, {new}, {login}, login_ms, NULL FROM _psa_canon WHERE login
        UNION ALL
        SELECT {_GRAPH}, {_RECURSIVE}, seg, tgt, tgt * {_EVENT_SLOTS} + {_LOGIN_IDENTIFY}, login_ms, NULL
        FROM _psa_member
        UNION ALL
        SELECT {_EXTERNAL}, {_ANONYMOUS_ID}, {new}, {new}, {landing}, created_ms, NULL
        FROM _psa_canon WHERE login
        UNION ALL
        SELECT {_EXTERNAL}, {_USER_ID_OBSERVED}, {new}, {new}, {login}, login_ms, NULL
        FROM _psa_canon WHERE login
        UNION ALL
        SELECT {_TRAITS}, kind, seg, seg, ekey, ts_ms, plan FROM _ps_ident""",
    )


def append_profiles_sync(
    con: duckdb.DuckDBPyConnection,
    *,
    share: float,
    landed: datetime,
    seed: int = 43,
    schema: str = "profiles",
) -> int:
    """Lands a new batch on a schema made by `generate_profiles_sync`, all rows with `uuid_ts` in the minute
    from `landed`.

    The batch holds about `share` × the rows already landed in each table: visits (pages and orders) of live
    profiles in the hour before `landed`, 3% of them late by up to two days; logins of identified profiles
    on a new device, whose new segment id the previous canonical merges into (so chains grow; 60% with
    recursive entries for the ids already merged into it, 10% late by hours), with the new device's first
    visit, identify, anonymous id and user id; profile edits (identify and traits); and, as duplicates, a
    few of the rows landed before, again. `seq` continues after the largest one landed. All inserts happen in
    one transaction.

    Args:
        con: The DuckDB connection holding the schema.
        share: The size of the batch relative to what has landed, in (0, 1].
        landed: When the batch lands (naive = UTC; aware values are converted); after every row landed so far.
        seed: Drives the batch; the same arguments on the same tables give the same rows.
        schema: The Profiles Sync schema.

    Returns:
        The number of rows added, over all tables.

    Raises:
        ValueError: On invalid arguments, a schema without these tables or live profiles, or a `landed` not
            after every row already landed.
    """
    _check_schema(schema)
    if not 0 < share <= 1:
        raise ValueError("share must be in (0, 1]")
    landed = _utc_naive(landed)
    landed_us = _epoch_us(landed)
    present = {
        row[0]
        for row in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [schema]
        ).fetchall()
    }
    if missing := [t for t in _TABLES if t not in present]:
        raise ValueError(f"schema {schema!r} lacks the Profiles Sync tables {', '.join(missing)}")
    counts = {t: _scalar(con, f"SELECT count(*) FROM {schema}.{t}") for t in _TABLES}
    latest = " UNION ALL ".join(f"SELECT max(uuid_ts) AS m FROM {schema}.{t}" for t in _TABLES)
    last = con.execute(f"SELECT max(m) FROM ({latest})").fetchall()[0][0]
    if last is not None and last >= landed:
        raise ValueError(f"landed={landed} must be after every row already landed (the last at {last})")
    seqs = " UNION ALL ".join(f"SELECT max(seq) AS m FROM {schema}.{t}" for t in _UPDATE_TABLES)
    seq0 = _scalar(con, f"SELECT max(m) FROM ({seqs})")
    # The batch covers the hour before `landed` (up to a minute before it, so that all was received).
    batch = _Batch(
        start_us=landed_us - _HOUR_MS * 1000,
        span_ms=_HOUR_MS - _MINUTE_MS,
        stream=("append", seed, landed_us),
        end_us=landed_us,
        landed_us=landed_us,
    )
    # Each login lands 2 id-graph rows (and about as many external ids), a first visit and a traits row.
    logins = round(share * counts["id_graph_updates"] / 2)
    edits = max(0, round(share * counts["profile_traits_updates"]) - logins)
    try:
        live = _create_canonicals(con, schema, logins=logins, edits=edits, batch=batch)
        if not live:
            raise ValueError(f"schema {schema!r} has no live profile to append to")
        logins = _scalar(con, "SELECT count(*) FILTER (WHERE login) FROM _psa_canon")
        visits = max(0, round(share * (counts["pages"] + counts["tracks"])) - logins)
        _create_appended(con, live=live, visits=visits, batch=batch)
        con.begin()
        try:
            # Duplicates first: rows landed before, again; ~5% of the batch.
            added = 0
            again = _unif("hash(id)", "again", *batch.stream)
            landing = batch.landing("0", "hash(id)")
            for table in _UPDATE_TABLES:
                added += _insert(
                    con,
                    f"""INSERT INTO {schema}.{table} SELECT * REPLACE ({landing} AS uuid_ts)
                    FROM {schema}.{table} WHERE {again} < {0.05 * share!r}""",
                )
            added += _write(con, schema, batch, seq0, create=False)
            con.commit()
        except BaseException:
            con.rollback()
            raise
    finally:
        _drop_temp(con, _TEMP_TABLES + _APPEND_TEMP_TABLES)
    return added
