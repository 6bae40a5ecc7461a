"""Realistic Segment **Connections**-shaped sample data, generated entirely inside DuckDB (SPEC §1).

`generate_demo` (re)creates one schema per source, laid out the way Segment's warehouse connector lays it out:
`tracks`, one table per event (`product_viewed`, `product_added`, `order_completed`, `signed_up`), `pages`
(websites) or `screens` (apps), `identifies` and `users`. `append_events` adds later activity to an existing
demo, e.g. to exercise incremental runs.

How it stays fast: everything is set-based SQL; no Python loop touches a row. First, slim numeric "skeleton"
temp tables decide who does what and when (one row per call: source, profile number, call index, event, time),
sorted once by time. Then one `INSERT … SELECT` per warehouse table turns skeleton rows into Segment rows,
building strings only there; `tracks` copies the per-event tables.

Determinism: nothing calls `random()`. Every pseudo-random draw is DuckDB's `hash` of a unique row key mixed
with a salt, so the same arguments produce byte-identical tables (with the same DuckDB version). Who the
profiles are (identified or not, ids, traits, home source, activity level) depends only on the profile number
and the sources; `seed` drives what they do and when. That lets `append_events` reach the same people later.

The SQL is assembled from strings. That is safe here: every interpolated value is a number, a constant of this
module, or a source name validated as a plain identifier.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

__all__ = ["DemoSummary", "append_events", "generate_demo"]


@dataclass(frozen=True)
class DemoSummary:
    """What `generate_demo` wrote.

    Attributes:
        profiles: Distinct profiles over every table of every source, a profile being `user_id` when the row
            has one, else `anonymous_id` (SPEC §1). An identified user's anonymous calls from before signing
            up count as a profile of their own, so this exceeds the `profiles` argument.
        identified: Distinct `user_id` values.
        events: Rows in all `tracks` tables (page and screen views are not track calls).
        tables: Row count of every table created, keyed `"<source>.<table>"`.
    """

    profiles: int
    identified: int
    events: int
    tables: dict[str, int]


# --------------------------------------------------------------------------------------------------------
# What the warehouse holds.
# --------------------------------------------------------------------------------------------------------

_TIMESTAMP_COLUMNS = ("timestamp", "original_timestamp", "sent_at", "received_at", "uuid_ts")
_CONTEXT_COLUMNS = ("context_library_name", "context_library_version", "context_ip", "context_user_agent")
_PAGE_CONTEXT_COLUMNS = ("context_page_path", "context_page_url")
_TRAIT_COLUMNS = ("email", "plan", "first_name", "country", "age")

# Warehouse column types, VARCHAR unless listed (Segment has timestamp, integer, float, boolean, varchar).
_TYPES = {
    **dict.fromkeys(_TIMESTAMP_COLUMNS, "TIMESTAMP"),
    **dict.fromkeys(("price", "revenue", "shipping_cost"), "DOUBLE"),
    **dict.fromkeys(("quantity", "age"), "BIGINT"),
}
# Columns of (nearly) unique random strings are stored uncompressed: DuckDB's dictionary/FSST compression
# saves about half their size but makes writing them five times slower, the bulk of a file-backed run.
_UNCOMPRESSED = frozenset(("id", "anonymous_id", "context_ip", "order_id"))


@dataclass(frozen=True)
class _Event:
    code: int  # the `ev` value in the track skeleton
    text: str  # `event_text`
    table: str  # `event` and the per-event table: the snake_case slug of `text`
    properties: tuple[str, ...]


_EVENTS = (
    _Event(0, "Product Viewed", "product_viewed", ("product_id", "name", "category", "price")),
    _Event(1, "Product Added", "product_added", ("product_id", "category", "price", "quantity")),
    _Event(
        2,
        "Order Completed",
        "order_completed",
        ("order_id", "revenue", "currency", "coupon", "products", "shipping_method", "shipping_cost"),
    ),
    _Event(3, "Signed Up", "signed_up", ("method",)),
)
_SIGNED_UP = 3

# A source whose name starts with "web" is a website (analytics.js: pages, page context, add-to-cart). Any
# other source is a mobile app (screens, no separate add-to-cart event); apps whose name contains "android"
# use the Android library, the others the iOS one.
_LIBRARIES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "web": (
        "analytics.js",
        ("npm:next-1.70.0", "npm:next-1.72.1", "npm:next-1.74.0"),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.4 Safari/605.1.15",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.4 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Mobile Safari/537.36",
        ),
    ),
    "ios": (
        "analytics-ios",
        ("4.1.6", "4.1.7", "4.1.8"),
        (
            "ExampleShop/5.12.0 CFNetwork/1494.0.7 Darwin/23.4.0",
            "ExampleShop/5.11.2 CFNetwork/1490.0.4 Darwin/23.2.0",
            "ExampleShop/5.12.0 CFNetwork/1410.0.3 Darwin/22.6.0",
        ),
    ),
    "android": (
        "analytics-android",
        ("4.11.2", "4.11.3"),
        (
            "Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/AP1A.240305.019)",
            "Dalvik/2.1.0 (Linux; U; Android 13; SM-S911B Build/TP1A.220624.014)",
        ),
    ),
}

_SITE = "https://shop.example.com"

# The catalogue: 48 products `sku-1` … `sku-48`, one line of each category per product line. Everything about
# a product is a function of its number (0-based), kept in SQL list literals indexed by it.
_CATEGORIES = ("Shoes", "Shirts", "Bags", "Hats", "Socks", "Jackets")
_BASE_PRICES = (90.0, 35.0, 70.0, 25.0, 12.0, 140.0)  # per category; each product is within ±30%
_PRODUCT_LINES = ("Classic", "Urban", "Trail", "Everyday", "Premium", "Vintage", "Sport", "Eco")
_PRODUCTS = len(_CATEGORIES) * len(_PRODUCT_LINES)

_COUPONS = ("WELCOME10", "SPRING15", "FREESHIP", "VIP20", "BLACKFRIDAY")
_FIRST_NAMES = (
    "Maria", "James", "Sofia", "Liam", "Emma", "Noah", "Olivia", "Lucas", "Mia", "Ethan", "Ana", "Leon",
    "Chloe", "Hugo", "Amelia", "Felix", "Lena", "Gabriel", "Alice", "Oliver", "Julia", "Pedro", "Clara",
    "Max",
)  # fmt: skip
_BLOG_POSTS = (
    ("how-to-choose-running-shoes", "How to choose running shoes"),
    ("spring-collection", "The spring collection is here"),
    ("caring-for-leather", "Caring for leather bags"),
    ("sustainable-materials", "Our sustainable materials"),
    ("packing-light", "Packing light for a weekend away"),
    ("size-guide", "The complete size guide"),
)

_SOURCE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_DAY_MS = 86_400_000
_RECENCY = 4.0  # the last day of the window sees about 4x the activity of the first
_IDENTIFIED_SHARE = 0.75


# --------------------------------------------------------------------------------------------------------
# SQL fragments: deterministic pseudo-random draws and literals.
# --------------------------------------------------------------------------------------------------------


def _key(*parts: object) -> int:
    """A 64-bit constant derived from `parts` (stable across Python runs, unlike `hash()`)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


# Client IPs: one of 128 networks ("a.b.") and of 256 hosts ("c.d"), ~33k addresses. Two strings picked from
# lists are much cheaper per row than four formatted numbers, and short lists keep the SQL quick to plan.
_IP_NETWORKS = tuple(f"{1 + _key('net', n) % 223}.{_key('net', n) >> 56}." for n in range(128))
_IP_HOSTS = tuple(f"{_key('host', n) >> 56}.{1 + _key('host', n) % 254}" for n in range(256))


def _mix(h: str, *salt: object) -> str:
    """SQL: a fresh 64-bit hash of the row hash `h` for `salt`.

    DuckDB's `hash(a, b, 'salt')` changes between salts only by an XOR with a constant, so its low bits are
    perfectly correlated across salts. XOR-ing the salt in *before* hashing a single UBIGINT (DuckDB uses the
    MurmurHash3 finaliser, a bijection with full avalanche) gives independent streams instead.
    """
    return f"hash(xor({h}, {_key(*salt)}::UBIGINT))"


def _unif(h: str, *salt: object) -> str:
    """SQL: a uniform DOUBLE in [0, 1) drawn from row hash `h` for `salt`."""
    return f"(({_mix(h, *salt)} >> 11)::DOUBLE / 9007199254740992.0)"


def _row_hash(key: str, *stream: object) -> str:
    """SQL: the base hash of the row with unique integer key `key` in `stream`; a bijection of `key`."""
    return f"hash(xor(hash(({key})::UBIGINT), {_key(*stream)}::UBIGINT))"


def _uuid(lo: str, *salt: object) -> str:
    """SQL: a UUID (version 4 layout) as VARCHAR, whose low half is `lo` and high half a hash of it.

    With `lo` a bijection of a row key, ids never collide within a stream; the high half depends on `salt`
    too, so ids of different streams practically never meet either.
    """
    hi = f"(({_mix(lo, 'uuid', *salt)}) & 18446744073709490175::UBIGINT | 16384::UBIGINT)"  # version nibble 4
    return f"(({hi}::UHUGEINT << 64) | ({lo})::UHUGEINT)::UUID::VARCHAR"


def _lit(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _list(values: Sequence[str | float]) -> str:
    """A SQL list literal."""
    return "[" + ", ".join(_lit(v) if isinstance(v, str) else repr(v) for v in values) + "]"


def _pick(values: Sequence[str | float], h: str, *salt: object) -> str:
    """SQL: one of `values`, uniformly, drawn from row hash `h`."""
    return f"{_list(values)}[1 + ({_mix(h, *salt)} % {len(values)})::BIGINT]"


def _weighted(u: str, options: Sequence[tuple[str, float]]) -> str:
    """SQL: one of the SQL expressions `options`, by weight, using the uniform draw `u`."""
    total = sum(weight for _, weight in options)
    cases, acc = [], 0.0
    for value, weight in options[:-1]:
        acc += weight / total
        cases.append(f"WHEN {u} < {acc!r} THEN {value}")
    return f"CASE {' '.join(cases)} ELSE {options[-1][0]} END"


def _recent_ms(u: str, span_ms: int) -> str:
    """SQL: an offset in [0, span_ms) whose density grows toward the end of the window.

    Inverse CDF of a density proportional to `_RECENCY ** x` on [0, 1): recent days see more activity.
    """
    r = _RECENCY
    return f"least({span_ms - 1}, floor(ln(1 + {u} * {r - 1!r}) / {math.log(r)!r} * {span_ms}))::BIGINT"


def _kind(source: str) -> str:
    if source.startswith("web"):
        return "web"
    return "android" if "android" in source else "ios"


# Profile attributes, as SQL over `p` (profile number) and `hp` (its population hash). They ignore the seed.
_HP = _row_hash("p", "population")
_IDENTIFIED = f"({_unif('hp', 'identified')} < {_IDENTIFIED_SHARE})"
# `user_000123`; lpad would truncate numbers past six digits, so those are written out in full.
_USER_ID = "concat('user_', CASE WHEN p < 1000000 THEN lpad(p::VARCHAR, 6, '0') ELSE p::VARCHAR END)"
_FIRST_NAME = _pick(_FIRST_NAMES, "hp", "first_name")
_EMAIL = f"concat({_pick([n.lower() for n in _FIRST_NAMES], 'hp', 'first_name')}, '.', p, '@example.com')"
_COUNTRY = _weighted(
    _unif("hp", "country"), [("'US'", 40), ("'GB'", 15), ("'DE'", 15), ("'FR'", 12), ("'BR'", 18)]
)
# A quarter of users never give their age; the others are 18-69, skewed young.
_AGE = f"""CASE WHEN {_unif("hp", "age")} >= 0.25
    THEN (18 + floor(52 * (({_unif("hp", "age")} - 0.25) / 0.75) ^ 1.5))::BIGINT END"""


def _pair_hash(n_src: int, s: int | str) -> str:
    """SQL: the hash of profile `p` in source `s`; device-level attributes come from it, seed-independent."""
    return _row_hash(f"p * {n_src} + {s}", "pair")


def _device_columns(source: str) -> dict[str, str]:
    """SQL over `hq` (the pair hash): the anonymous id and `context_*` of a profile's device in `source`."""
    name, versions, agents = _LIBRARIES[_kind(source)]
    ip = f"{_pick(_IP_NETWORKS, 'hq', 'ip_network')} || {_pick(_IP_HOSTS, 'hq', 'ip_host')}"
    return {
        # anonymousId is per device, so a user seen in two sources has two of them. `hq` is a bijection of
        # the (profile, source) key, so its hex digits never collide.
        "anonymous_id": "'anon_' || lower(to_hex(hq))",
        "context_library_name": _lit(name),
        "context_library_version": _pick(versions, "hq", "version"),
        "context_ip": ip,
        "context_user_agent": _pick(agents, "hq", "agent"),
    }


def _delays(kind: str) -> list[str]:
    """SQL: per-call delays in ms from row hash `h` and pair hash `hq`: `skew_ms` (the device clock's error),
    `delay_ms` (from the call to its delivery) and `lag_ms` (from delivery to the warehouse load)."""
    # Browsers send at once; apps flush in batches, so their calls arrive up to ~45 s late.
    u = _unif("h", "delay")
    delay = f"20 + floor({u} ^ 3 * 2000)" if kind == "web" else f"500 + floor({u} ^ 2 * 45000)"
    return [
        # Most device clocks are right; 15% are off by up to 5 seconds either way.
        f"""(CASE WHEN {_unif("hq", "skewed")} < 0.85 THEN 0
            ELSE floor(({_unif("hq", "skew")} - 0.5) * 10000) END)::BIGINT AS skew_ms""",
        f"({delay})::BIGINT AS delay_ms",
        f"(60000 + floor({_unif('h', 'lag')} * 1800000))::BIGINT AS lag_ms",
    ]


def _timestamps(start_us: int) -> dict[str, str]:
    """SQL: the five Segment timestamps of a call at window offset `ts_ms`, given the `_delays` columns.

    Segment computes `timestamp = received_at - (sent_at - original_timestamp)`. So with a device clock off by
    `skew` and a batching delay `delay`: original_timestamp = timestamp + skew, sent_at = original_timestamp +
    delay, received_at = timestamp + delay; the warehouse loader stamps `uuid_ts` `lag` after receiving it.
    """

    def at(ms: str) -> str:
        return f"make_timestamp({start_us} + ({ms}) * 1000)"

    return {
        "timestamp": at("ts_ms"),
        "original_timestamp": at("ts_ms + skew_ms"),
        "sent_at": at("ts_ms + skew_ms + delay_ms"),
        "received_at": at("ts_ms + delay_ms"),
        "uuid_ts": at("ts_ms + delay_ms + lag_ms"),
    }


def _catalogue() -> dict[str, list[str] | list[float]]:
    """The product catalogue as parallel lists indexed by product number."""
    skus = [f"sku-{n + 1}" for n in range(_PRODUCTS)]
    cats = [_CATEGORIES[n % len(_CATEGORIES)] for n in range(_PRODUCTS)]
    names = [f"{_PRODUCT_LINES[n // len(_CATEGORIES)]} {cats[n]}" for n in range(_PRODUCTS)]
    prices = [
        round(_BASE_PRICES[n % len(_CATEGORIES)] * (0.7 + 0.6 * (_key("price", n) % 1000) / 1000)) - 0.01
        for n in range(_PRODUCTS)
    ]
    return {"sku": skus, "category": cats, "name": names, "price": prices}


_CATALOGUE = _catalogue()
# Product popularity is skewed: sku-1 sells most. `prod` is the product number of a call, from row hash `h`.
_PROD = f"least({_PRODUCTS - 1}, floor({_PRODUCTS} * {_unif('h', 'product')} ^ 2))::BIGINT"


def _product(field: str) -> str:
    return f"{_list(_CATALOGUE[field])}[prod + 1]"


# --------------------------------------------------------------------------------------------------------
# Building the demo.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    """The time window of a generation or append, and the stream that keeps its ids apart."""

    start_us: int  # epoch microseconds, UTC
    span_ms: int
    stream: tuple[object, ...]
    recency: bool  # skew toward the end of the window (generation) or spread uniformly (append)

    def when(self, u: str) -> str:
        """SQL: a call's offset in the window, from the uniform draw `u`."""
        if self.recency:
            return _recent_ms(u, self.span_ms)
        return f"floor({u} * {self.span_ms + 1})::BIGINT"  # [0, span] inclusive


def _create_pairs(
    con: duckdb.DuckDBPyConnection,
    *,
    profiles: int,
    sources: tuple[str, ...],
    seed: int,
    span_ms: int,
    timeline: bool,
) -> None:
    """Creates the temp table `_demo_pair`: one row per (profile, source) the profile uses.

    Identity and activity come from the profile number. With `timeline`, the seed places each identified
    user's signup (home source) or first login (second source) inside the window; before it their calls
    carry only `anonymous_id`. Without it (appending later activity), identified users are signed in.
    """
    n_src = len(sources)
    web = "[" + ", ".join("TRUE" if _kind(s) == "web" else "FALSE" for s in sources) + "]"
    plans = [("'free'", 65), ("'pro'", 28), ("'enterprise'", 7)]
    span = span_ms
    login = "0"  # appending: identified users are signed in all along
    if timeline:
        # Signed in from their signup in the home source; in a second source, from a first login after it.
        login = f"""CASE WHEN is_home THEN signup_ms
            ELSE signup_ms + floor({_unif("hl", "login")} * ({span - 2000} - signup_ms))::BIGINT END"""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _demo_pair AS
        WITH population AS (
            SELECT range AS p, {_HP} AS hp FROM range({profiles})
        ), profile AS (
            SELECT p, hp,
                -- About 75% of profiles eventually identify; the rest stay anonymous-only for ever.
                {_IDENTIFIED} AS identified,
                -- Each profile lives in one home source; ~3% of identified users also use a second one.
                ({_mix("hp", "home")} % {n_src})::INTEGER AS home,
                CASE WHEN identified AND {n_src} > 1 AND {_unif("hp", "multi")} < 0.03
                    THEN ((home + 1 + {_mix("hp", "second")} % {max(n_src - 1, 1)}) % {n_src})::INTEGER
                END AS second,
                -- Activity weight: log-normal (sigma 1.1): a few heavy users, a long tail of light ones.
                (1 + round(100 * exp(1.1 * sqrt(-2 * ln(1 - {_unif("hp", "activity", 1)}))
                    * cos(2 * pi() * {_unif("hp", "activity", 2)}))))::BIGINT AS weight,
                {_weighted(_unif("hp", "plan"), plans)} AS plan0
            FROM population
        ), pairs AS (
            SELECT *, home AS s, TRUE AS is_home, weight AS w FROM profile
            UNION ALL
            -- In their second source, users are less active (30% of their weight).
            SELECT *, second AS s, FALSE AS is_home, greatest(1, weight * 3 // 10) AS w
            FROM profile WHERE second IS NOT NULL
        ), draws AS (
            SELECT *,
                {_row_hash("p", "timeline", seed)} AS ht,  -- per profile: one signup time
                {_row_hash(f"p * {n_src} + s", "pair-timeline", seed)} AS hl  -- per (profile, source)
            FROM pairs
        ), timeline AS (
            SELECT *,
                -- Signups skew early in the window (u^2), so most of a user's activity is signed in.
                floor({_unif("ht", "signup")} ^ 2 * {span - 2000})::BIGINT AS signup_ms,
                CASE WHEN identified THEN {login} END AS login_ms
            FROM draws
        )
        SELECT
            p, s, is_home, identified, w, p * {n_src} + s AS pair_key, {web}[s + 1] AS is_web, login_ms,
            -- Every (profile, source) has a first visit: an identified user's comes anonymously 1 minute to
            -- 3 days before they sign up / log in; anyone else's at any time (recency-skewed).
            CASE WHEN identified
                THEN greatest(0, login_ms - 60000 - floor({_unif("hl", "landing")} ^ 2 * {3 * _DAY_MS}))
                ELSE {_recent_ms(_unif("hl", "landing"), span)}
            END::BIGINT AS landing_ms,
            -- Identifies: 2-6 per identified user in their home source, over time.
            (2 + floor(5 * {_unif("hl", "identifies")} ^ 2))::BIGINT AS n_identifies,
            -- About 30% of identified users change plan once, some time after signing up.
            CASE WHEN {_unif("ht", "plan_change")} < 0.3
                THEN signup_ms + floor({_unif("ht", "change_at")} * ({span} - signup_ms))::BIGINT
            END AS change_ms,
            plan0,
            CASE
                WHEN plan0 = 'free' THEN 'pro'
                WHEN plan0 = 'enterprise' THEN 'pro'
                WHEN {_unif("ht", "upgrade")} < 0.7 THEN 'enterprise'
                ELSE 'free'
            END AS plan1,
            -- 10% of anonymous-only visitors leave their email (a newsletter): an identify without user_id.
            NOT identified AND {_unif("hl", "newsletter")} < 0.1 AS newsletter,
            {_recent_ms(_unif("hl", "newsletter_at"), span)} AS newsletter_ms
        FROM timeline
        """
    )


def _allocation(con: duckdb.DuckDBPyConnection, total: int) -> str:
    """SQL: `_demo_pair` plus `n`, the pair's share of `total` calls by activity weight, and `first_i`,
    the index of its first call. Shares add up to exactly `total`; indexes are unique in [0, total)."""
    total_w = _scalar(con, "SELECT sum(w) FROM _demo_pair")
    # Exact integer shares. BIGINT arithmetic is much faster than HUGEINT: use it when it cannot overflow.
    num = "BIGINT" if total_w * max(total, 1) < 2**62 else "HUGEINT"
    return f"""
        SELECT *, (cum * {total} // {total_w} - first_i)::BIGINT AS n
        FROM (
            SELECT *, ((cum - w) * {total} // {total_w})::BIGINT AS first_i
            FROM (
                SELECT *, sum(w) OVER (ORDER BY p, s ROWS UNBOUNDED PRECEDING)::{num} AS cum FROM _demo_pair
            )
        )"""


def _create_track_skeleton(
    con: duckdb.DuckDBPyConnection, *, total: int, signups: bool, window: _Window
) -> None:
    """Creates the temp table `_demo_trk`: one row (s, p, i, ev, ts_ms, signed_in) per track call.

    `total` calls are shared out by activity weight, plus, with `signups`, one `Signed Up` per identified user
    in their home source at their signup. Sorted by source, event and time, so each warehouse table is one
    contiguous, time-ordered slice.
    """
    signup_rows = (
        f"""
            UNION ALL
            SELECT s, p, login_ms, is_web, {total} + p AS i, TRUE AS is_signup
            FROM _demo_pair WHERE identified AND is_home"""
        if signups
        else ""
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _demo_trk AS
        WITH calls AS (
            SELECT s, p, login_ms, is_web, first_i + unnest(range(n)) AS i, FALSE AS is_signup
            FROM ({_allocation(con, total)}) WHERE n > 0
            {signup_rows}
        ), draws AS (
            SELECT *, {_row_hash("i", "track", *window.stream)} AS h FROM calls
        ), typed AS (
            SELECT s, p, i, login_ms,
                CASE
                    WHEN is_signup THEN {_SIGNED_UP}
                    -- 60% product views, 26.7% add-to-cart, 13.3% orders (45/20/10 of all calls once page
                    -- and screen views are counted). Apps have no add-to-cart event: those are views too.
                    WHEN {_unif("h", "kind")} < 0.6 THEN 0
                    WHEN {_unif("h", "kind")} < 0.8667 THEN CASE WHEN is_web THEN 1 ELSE 0 END
                    ELSE 2
                END::UTINYINT AS ev,
                CASE WHEN is_signup THEN login_ms + 200 + floor({_unif("h", "time")} * 1300)::BIGINT
                    ELSE {window.when(_unif("h", "time"))}
                END AS ts_ms
            FROM draws
        )
        -- Before signing up (or logging in to this source) a user's calls carry only the anonymous_id.
        SELECT s, p, i, ev, ts_ms, coalesce(ts_ms >= login_ms, FALSE) AS signed_in
        FROM typed
        ORDER BY s, ev, ts_ms, i
        """
    )


def _create_view_skeleton(
    con: duckdb.DuckDBPyConnection, *, extra: int, landing: bool, window: _Window
) -> None:
    """Creates the temp table `_demo_view`: one row (s, p, i, ts_ms, signed_in) per page or screen view.

    With `landing`, each (profile, source) has its first visit; `extra` more views are shared out by weight.
    """
    landing_rows = (
        """
            UNION ALL
            SELECT s, p, login_ms, pair_key AS i, landing_ms AS fixed_ms FROM _demo_pair"""
        if landing
        else ""
    )
    # First visits take indexes up to the largest pair key; shared-out views come after, so all are unique.
    offset = _scalar(con, "SELECT coalesce(max(pair_key), 0) + 1 FROM _demo_pair")
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _demo_view AS
        WITH views AS (
            SELECT s, p, login_ms, {offset} + first_i + unnest(range(n)) AS i, NULL::BIGINT AS fixed_ms
            FROM ({_allocation(con, extra)}) WHERE n > 0
            {landing_rows}
        ), timed AS (
            SELECT *, coalesce(fixed_ms, {window.when(_unif(_row_hash("i", "page", *window.stream), "time"))})
                AS ts_ms
            FROM views
        )
        SELECT s, p, i, ts_ms, coalesce(ts_ms >= login_ms, FALSE) AS signed_in
        FROM timed
        ORDER BY s, ts_ms, i
        """
    )


def _create_identify_skeleton(con: duckdb.DuckDBPyConnection, *, window: _Window) -> None:
    """Creates the temp table `_demo_ident`: one row (s, p, i, ts_ms, plan, has_user) per identify call."""
    span = window.span_ms
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _demo_ident AS
        WITH calls AS (
            -- j = 0: the identify sent at signup; j = 1, 2, …: later ones (app launches, profile edits).
            SELECT *, unnest(range(n_identifies)) AS j FROM _demo_pair WHERE identified AND is_home
            UNION ALL
            -- j = 14: the identify sent when the user first logs in to their second source.
            SELECT *, 14 AS j FROM _demo_pair WHERE identified AND NOT is_home
            UNION ALL
            -- j = 15: a newsletter signup by an anonymous visitor: traits, but no user_id.
            SELECT *, 15 AS j FROM _demo_pair WHERE newsletter
        ), draws AS (
            SELECT *, p * 16 + j AS i, {_row_hash("p * 16 + j", "identify", *window.stream)} AS h FROM calls
        ), timed AS (
            SELECT *,
                CASE
                    WHEN j IN (0, 14) THEN login_ms
                    WHEN j = 15 THEN newsletter_ms
                    -- Later identifies: any time after signing up.
                    ELSE login_ms + 1 + floor({_unif("h", "time")} * ({span - 1} - login_ms))::BIGINT
                END AS ts_ms
            FROM draws
        )
        SELECT s, p, i, ts_ms,
            -- The plan as of the call: some users switch once (change_ms). Later identifies leave the plan
            -- out 25% of the time (a NULL trait: the latest non-null value still stands).
            CASE
                WHEN j = 15 THEN NULL
                WHEN j > 0 AND {_unif("h", "plan_missing")} < 0.25 THEN NULL
                WHEN ts_ms >= change_ms THEN plan1
                ELSE plan0
            END AS plan,
            j < 15 AS has_user
        FROM timed
        ORDER BY s, ts_ms, i
        """
    )


def _event_properties(event: _Event, source: str, stream: tuple[object, ...]) -> dict[str, str]:
    """SQL over the track row (`h`, `hp`, `prod`, `i`): the property columns of `event`."""
    if event.table in ("product_viewed", "product_added"):
        quantities = [("1", 80), ("2", 15), ("3", 3), ("4", 1), ("5", 1)]
        columns = {
            "product_id": _product("sku"),
            "name": _product("name"),
            "category": _product("category"),
            "price": _product("price"),
            # 80% add one unit, the rest 2-5.
            "quantity": f"({_weighted(_unif('h', 'quantity'), quantities)})::BIGINT",
        }
        return {name: columns[name] for name in event.properties}
    if event.table == "order_completed":
        # An array property, stored as JSON text: 1-4 product ids, mostly one, following product popularity.
        numbers = ", ".join(
            f"1 + least({_PRODUCTS - 1}, floor({_PRODUCTS} * {_unif('h', 'item', j)} ^ 2))::BIGINT"
            for j in range(4)
        )
        n_items = f"(1 + floor(4 * {_unif('h', 'items')} ^ 2.5))::BIGINT"
        items = f"list_transform(list_slice([{numbers}], 1, {n_items}), lambda n: 'sku-' || n)"
        u = _unif("h", "revenue")
        coupon = _pick(_COUPONS, "h", "coupon_code")
        return {
            "order_id": f"'ord_' || lpad(lower(to_hex({_row_hash('i', 'order', *stream)})), 16, '0')",
            # 94% of orders are 20-150 (most near the bottom); a 6% tail of big baskets reaches 2000.
            "revenue": f"""round(CASE WHEN {_unif("h", "big_basket")} < 0.06
                THEN 150 + 1850 * {u} ^ 3 ELSE 20 + 130 * {u} ^ 1.4 END, 2)""",
            "currency": f"CASE WHEN ({_COUNTRY}) IN ('DE', 'FR') THEN 'EUR' ELSE 'USD' END",
            # 70% of orders use no coupon: NULL, as Segment writes only non-null values.
            "coupon": f"CASE WHEN {_unif('h', 'coupon')} >= 0.7 THEN {coupon} END",
            "products": f"""'["' || array_to_string({items}, '","') || '"]'""",
            # A nested object `shipping: {method, cost}`, flattened with `_`; standard is free from 100.
            "shipping_method": f"CASE WHEN {_unif('h', 'shipping')} < 0.25 THEN 'express' "
            "ELSE 'standard' END",
            "shipping_cost": "CASE WHEN shipping_method = 'express' THEN 14.99 WHEN revenue >= 100 THEN 0.0 "
            "ELSE 4.99 END::DOUBLE",
        }
    methods = [("'email'", 55), ("'google'", 35), ("'apple'", 10)]
    if _kind(source) != "web":
        methods = [("'email'", 40), ("'google'", 20), ("'apple'", 40)]
    return {"method": _weighted(_unif("h", "method"), methods)}


def _query(columns: dict[str, str], rows: str, layers: Sequence[Sequence[str]]) -> str:
    """SQL: `columns` (name -> expression) over `rows`, each of `layers` adding computed columns in turn."""
    sql = rows
    for layer in layers:
        sql = f"SELECT *, {', '.join(layer)}\n            FROM ({sql})"
    body = ",\n            ".join(f"{expr} AS {name}" for name, expr in columns.items())
    return f"SELECT\n            {body}\n        FROM ({sql})"


def _hashes(sources: tuple[str, ...], s: int, *stream: object) -> list[str]:
    """SQL: a call's row hash `h` (from its index `i`), pair hash `hq` and population hash `hp`."""
    return [f"{_row_hash('i', *stream)} AS h", f"{_pair_hash(len(sources), s)} AS hq", f"{_HP} AS hp"]


def _track_query(
    sources: tuple[str, ...], s: int, event: _Event | None, window: _Window
) -> tuple[str, list[str]]:
    """SQL for the rows of `<source>.tracks` (event None) or of a per-event table, and its column names."""
    source, stream = sources[s], window.stream
    kind = _kind(source)
    device = _device_columns(source)
    columns = {
        "id": _uuid(_row_hash("i", "track-id", *stream), "track", *stream),
        "user_id": f"CASE WHEN signed_in THEN {_USER_ID} END",
        "anonymous_id": device.pop("anonymous_id"),
        "event": _list([e.table for e in _EVENTS]) + "[ev + 1]",
        "event_text": _list([e.text for e in _EVENTS]) + "[ev + 1]",
        **_timestamps(window.start_us),
        **device,
    }
    if kind == "web":
        # The page the call was made on: the product page, the checkout confirmation or the signup page.
        for column, prefix in (("context_page_path", ""), ("context_page_url", _SITE)):
            products = _list([f"{prefix}/products/{sku}" for sku in _CATALOGUE["sku"]])
            columns[column] = (
                f"CASE ev WHEN {_SIGNED_UP} THEN '{prefix}/signup' WHEN 2 THEN '{prefix}/checkout/complete' "
                f"ELSE {products}[prod + 1] END"
            )
    rows = f"SELECT * FROM _demo_trk WHERE s = {s}"
    if event is not None:
        rows += f" AND ev = {event.code}"
        columns |= {"event": _lit(event.table), "event_text": _lit(event.text)}
        columns |= _event_properties(event, source, stream)
    layers = [_hashes(sources, s, "track", *stream), [*_delays(kind), f"{_PROD} AS prod"]]
    # shipping_cost refers to revenue and shipping_method by their aliases: DuckDB allows lateral aliases.
    return _query(columns, rows, layers), list(columns)


def _view_query(sources: tuple[str, ...], s: int, window: _Window) -> tuple[str, list[str]]:
    """SQL for the rows of `<source>.pages` (websites) or `<source>.screens` (apps), and its column names."""
    source, stream = sources[s], window.stream
    kind = _kind(source)
    device = _device_columns(source)
    columns = {
        "id": _uuid(_row_hash("i", "page-id", *stream), "page", *stream),
        "user_id": f"CASE WHEN signed_in THEN {_USER_ID} END",
        "anonymous_id": device.pop("anonymous_id"),
        **_timestamps(window.start_us),
        **device,
    }
    post = f"1 + ({_mix('h', 'post')} % {len(_BLOG_POSTS)})::BIGINT AS post"
    if kind == "web":
        names = [("Home", 30), ("Product", 35), ("Pricing", 10), ("Checkout", 10), ("Blog", 15)]
        referrers = [
            ("'https://www.google.com/'", 50),
            ("'https://www.facebook.com/'", 15),
            ("'https://t.co/'", 10),
            ("'https://news.ycombinator.com/'", 5),
            (_lit(_SITE + "/"), 20),
        ]
        products = _list([f"/products/{sku}" for sku in _CATALOGUE["sku"]])
        posts = _list([f"/blog/{slug}" for slug, _ in _BLOG_POSTS])
        path = f"""CASE name WHEN 'Home' THEN '/' WHEN 'Pricing' THEN '/pricing'
                WHEN 'Checkout' THEN '/checkout' WHEN 'Product' THEN {products}[prod + 1]
                ELSE {posts}[post] END AS path"""
        columns |= {
            "context_page_path": "path",
            "context_page_url": f"'{_SITE}' || path",
            "name": "name",
            "path": "path",
            "url": f"'{_SITE}' || path",
            "title": f"""CASE name WHEN 'Home' THEN 'Example Shop'
                WHEN 'Product' THEN {_list([f"{n} | Example Shop" for n in _CATALOGUE["name"]])}[prod + 1]
                WHEN 'Blog' THEN {_list([f"{t} | Example Shop Blog" for _, t in _BLOG_POSTS])}[post]
                ELSE name || ' | Example Shop' END""",
            # Half the visits are direct (no referrer); the rest come from search, social or our own site.
            "referrer": f"""CASE WHEN {_unif("h", "referred")} >= 0.5
                THEN {_weighted(_unif("h", "referrer"), referrers)} END""",
        }
    else:
        names = [("Home", 30), ("Product", 40), ("Cart", 20), ("Settings", 10)]
        columns["name"] = "name"
        path = "NULL AS path"
    name = f"{_weighted(_unif('h', 'page'), [(_lit(n), w) for n, w in names])} AS name"
    layers = [_hashes(sources, s, "page", *stream), [*_delays(kind), f"{_PROD} AS prod", post, name], [path]]
    return _query(columns, f"SELECT * FROM _demo_view WHERE s = {s}", layers), list(columns)


def _identify_query(sources: tuple[str, ...], s: int, window: _Window) -> tuple[str, list[str]]:
    """SQL for the rows of `<source>.identifies`, and its column names."""
    source, stream = sources[s], window.stream
    device = _device_columns(source)
    columns = {
        "id": _uuid(_row_hash("i", "identify-id", *stream), "identify", *stream),
        "user_id": f"CASE WHEN has_user THEN {_USER_ID} END",
        "anonymous_id": device["anonymous_id"],
        **_timestamps(window.start_us),
        "context_library_name": device["context_library_name"],
        "email": _EMAIL,
        "plan": "plan",
        # The newsletter form only asks for an email.
        "first_name": f"CASE WHEN has_user THEN {_FIRST_NAME} END",
        "country": f"CASE WHEN has_user THEN {_COUNTRY} END",
        "age": f"CASE WHEN has_user THEN {_AGE} END",
    }
    layers = [_hashes(sources, s, "identify", *stream), _delays(_kind(source))]
    return _query(columns, f"SELECT * FROM _demo_ident WHERE s = {s}", layers), list(columns)


def _create_table(
    con: duckdb.DuckDBPyConnection,
    table: str,
    columns: Sequence[str],
    types: dict[str, str] = _TYPES,
    uncompressed: frozenset[str] = _UNCOMPRESSED,
) -> None:
    """Creates `table` with Segment's column types (`types`, VARCHAR otherwise); the `uncompressed` columns
    are random ids, which compression only slows down."""
    defs = ",\n    ".join(
        f"{c} {types.get(c, 'VARCHAR')}" + (" USING COMPRESSION uncompressed" if c in uncompressed else "")
        for c in columns
    )
    con.execute(f"CREATE TABLE {table} (\n    {defs}\n)")


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    rows = con.execute(sql).fetchall()  # fetch all: DuckDB refuses new work on a half-read result
    return int(rows[0][0] or 0)


def _drop_temp(con: duckdb.DuckDBPyConnection) -> None:
    for table in ("_demo_pair", "_demo_trk", "_demo_view", "_demo_ident"):
        con.execute(f"DROP TABLE IF EXISTS temp.main.{table}")


def _check_sources(sources: tuple[str, ...]) -> None:
    if not sources:
        raise ValueError("sources must name at least one source")
    for source in sources:
        if not _SOURCE_NAME.match(source):
            raise ValueError(f"source name {source!r} must be a lower-case SQL identifier")
    if len(set(sources)) != len(sources):
        raise ValueError(f"duplicate source names in {sources!r}")


def _utc_naive(value: datetime) -> datetime:
    """A naive UTC datetime: aware values are converted, naive ones are taken to be UTC already."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _epoch_us(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _events_of(source: str) -> tuple[_Event, ...]:
    if _kind(source) == "web":
        return _EVENTS
    return tuple(e for e in _EVENTS if e.table != "product_added")


def _view_table(source: str) -> str:
    return "pages" if _kind(source) == "web" else "screens"


# --------------------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------------------


def generate_demo(
    con: duckdb.DuckDBPyConnection,
    *,
    profiles: int = 2_000,
    events: int = 30_000,
    end: datetime | None = None,
    days: int = 90,
    seed: int = 42,
    sources: tuple[str, ...] = ("website", "ios"),
) -> DemoSummary:
    """Creates a Segment Connections warehouse of sample data, one schema per source.

    Each source schema is dropped (`DROP SCHEMA … CASCADE`) and recreated with `tracks`, one table per event,
    `pages` (sources named `web*`) or `screens` (apps), `identifies` and `users`.

    Profile `p` in `[0, profiles)` is identified (`user_id` = `user_000123`) for about 75% of profiles; their
    calls carry only an `anonymous_id` before they sign up and both after. The others stay anonymous-only
    (`anon_…`) and never have a `user_id`. About 3% of identified users also use a second source. Track calls:
    one `Signed Up` per identified user, the rest ~60% `Product Viewed`, ~27% `Product Added` (views in apps)
    and ~13% `Order Completed`; about `events / 3` page or screen views come on top. Activity per profile is
    log-normal, and rises toward `end`. Rows are stored in timestamp order within each event.

    Args:
        con: The DuckDB connection to write to.
        profiles: Number of profiles (people).
        events: Exact number of track calls over all `tracks` tables. At least the number of identified
            profiles (~75% of `profiles`), since each of them signs up once.
        end: End of the window (naive = UTC; aware values are converted). Defaults to now, to the second.
        days: Length of the window; every `timestamp` lies in `[end - days, end]`.
        seed: Drives behaviour (what happens when); the same arguments give byte-identical tables.
        sources: Source schema names. Names starting with `web` are websites, others mobile apps.

    Returns:
        Counts of what was written.

    Raises:
        ValueError: On invalid arguments.
    """
    _check_sources(sources)
    if profiles < 1 or events < 0 or days < 1:
        raise ValueError("profiles and days must be positive and events non-negative")
    end = _utc_naive(end) if end is not None else datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    window = _Window(
        start_us=_epoch_us(end - timedelta(days=days)),
        span_ms=days * _DAY_MS,
        stream=("generate", seed),
        recency=True,
    )
    written: list[str] = []
    try:
        _create_pairs(
            con, profiles=profiles, sources=sources, seed=seed, span_ms=window.span_ms, timeline=True
        )
        signups = _scalar(con, "SELECT count(*) FROM _demo_pair WHERE identified AND is_home")
        if events < signups:
            raise ValueError(
                f"events={events} is fewer than the {signups} identified profiles, who each sign up once"
            )
        n_pairs = _scalar(con, "SELECT count(*) FROM _demo_pair")
        _create_track_skeleton(con, total=events - signups, signups=True, window=window)
        # Page and screen views are about a quarter of all calls: events / 3 on top of the track calls.
        _create_view_skeleton(con, extra=max(0, events // 3 - n_pairs), landing=True, window=window)
        _create_identify_skeleton(con, window=window)
        for source in sources:
            con.execute(f"DROP SCHEMA IF EXISTS {source} CASCADE")
            con.execute(f"CREATE SCHEMA {source}")
        for s, source in enumerate(sources):
            tables: list[tuple[str, tuple[str, list[str]]]] = [
                (e.table, _track_query(sources, s, e, window)) for e in _events_of(source)
            ]
            tables.append((_view_table(source), _view_query(sources, s, window)))
            tables.append(("identifies", _identify_query(sources, s, window)))
            for table, (query, columns) in tables:
                _create_table(con, f"{source}.{table}", columns)
                con.execute(f"INSERT INTO {source}.{table} {query}")
                written.append(f"{source}.{table}")
            # tracks: the tracks columns of every per-event table (same rows, same ids), event by event.
            track_columns = _track_query(sources, s, None, window)[1]
            _create_table(con, f"{source}.tracks", track_columns)
            for event in _events_of(source):
                cols = ", ".join(track_columns)
                con.execute(f"INSERT INTO {source}.tracks SELECT {cols} FROM {source}.{event.table}")
            written.append(f"{source}.tracks")
            # users: one row per user_id with the latest non-null value of each trait, as Segment upserts it.
            # "Latest" orders by timestamp, then received_at (one HUGEINT key: faster than a struct).
            latest = ",\n                    ".join(
                f"arg_max({t}, k) FILTER (WHERE {t} IS NOT NULL) AS {t}" for t in _TRAIT_COLUMNS
            )
            _create_table(con, f"{source}.users", ["id", "received_at", "uuid_ts", *_TRAIT_COLUMNS])
            con.execute(
                f"""
                INSERT INTO {source}.users
                SELECT user_id AS id, max(received_at) AS received_at, max(uuid_ts) AS uuid_ts,
                    {latest}
                FROM (
                    SELECT *, (epoch_us(timestamp)::HUGEINT << 64) + epoch_us(received_at) AS k
                    FROM {source}.identifies WHERE user_id IS NOT NULL
                )
                GROUP BY user_id ORDER BY user_id
                """
            )
            written.append(f"{source}.users")
        # A profile is the user (p) when the row has a user_id, else the device (p, s): count them from the
        # skeletons rather than re-reading millions of strings.
        n_src = len(sources)
        profile_rows = """
            SELECT signed_in AS has_user, p, s FROM _demo_trk
            UNION ALL SELECT signed_in, p, s FROM _demo_view
            UNION ALL SELECT has_user, p, s FROM _demo_ident"""
        profiles_seen, identified = con.execute(
            f"""
            SELECT count(*) FILTER (WHERE anonymous) + count(DISTINCT p) FILTER (WHERE signed_in),
                count(DISTINCT p) FILTER (WHERE signed_in)
            FROM (
                SELECT p, bool_or(NOT has_user) AS anonymous, bool_or(has_user) AS signed_in
                FROM ({profile_rows}) GROUP BY p * {n_src} + s, p
            )
            """
        ).fetchall()[0]
    finally:
        _drop_temp(con)

    counts = {table: _scalar(con, f"SELECT count(*) FROM {table}") for table in sorted(written)}
    return DemoSummary(
        profiles=int(profiles_seen),
        identified=int(identified),
        events=sum(counts[f"{source}.tracks"] for source in sources),
        tables=counts,
    )


def append_events(
    con: duckdb.DuckDBPyConnection,
    *,
    events: int,
    start: datetime,
    end: datetime,
    seed: int,
    sources: tuple[str, ...] = ("website", "ios"),
    profiles: int = 2_000,
) -> int:
    """Appends later activity of the existing profiles to a demo made by `generate_demo`.

    Adds `events` track calls (`Product Viewed`, `Product Added`, `Order Completed`, in `generate_demo`'s mix)
    to `tracks` and the per-event tables, plus `events // 3` page or screen views, with timestamps spread
    uniformly over `[start, end]`. Pass the same `profiles` and `sources` as to `generate_demo` so the calls
    belong to the same people; identified users are signed in throughout. Ids derive from `seed`, the window
    and `events`, so they differ from every generated or previously appended id; repeating an identical call
    is refused rather than duplicating rows. All inserts happen in one transaction.

    Args:
        con: The DuckDB connection holding the demo.
        events: Number of track calls to add.
        start: Start of the window (naive = UTC; aware values are converted).
        end: End of the window, inclusive.
        seed: Drives the new calls; the same arguments give the same rows.
        sources: The demo's source schemas.
        profiles: The demo's number of profiles.

    Returns:
        The number of rows appended to the `tracks` tables, i.e. `events` (the per-event tables receive the
        same calls; pages and screens a third as many on top).

    Raises:
        ValueError: On invalid arguments, or when these calls were already appended by an identical call.
    """
    _check_sources(sources)
    start, end = _utc_naive(start), _utc_naive(end)
    if profiles < 1 or events < 0 or end < start:
        raise ValueError("profiles must be positive, events non-negative and start <= end")
    if events == 0:
        return 0
    start_us = _epoch_us(start)
    span_ms = (_epoch_us(end) - start_us) // 1000
    window = _Window(
        start_us=start_us, span_ms=span_ms, stream=("append", seed, start_us, span_ms, events), recency=False
    )
    try:
        _create_pairs(con, profiles=profiles, sources=sources, seed=seed, span_ms=span_ms, timeline=False)
        _create_track_skeleton(con, total=events, signups=False, window=window)
        _create_view_skeleton(con, extra=events // 3, landing=False, window=window)
        inserts: list[tuple[str, str, list[str]]] = []
        for s, source in enumerate(sources):
            inserts.append((f"{source}.tracks", *_track_query(sources, s, None, window)))
            inserts += [
                (f"{source}.{e.table}", *_track_query(sources, s, e, window)) for e in _events_of(source)
            ]
            inserts.append((f"{source}.{_view_table(source)}", *_view_query(sources, s, window)))
        for table, query, _ in inserts:
            if table.endswith((".tracks", ".pages", ".screens")):
                clash = f"SELECT count(*) FROM {table} WHERE id IN (SELECT id FROM ({query}))"
                if _scalar(con, clash):
                    raise ValueError(f"these calls were already appended to {table}; use another seed")
        con.begin()
        try:
            for table, query, columns in inserts:
                con.execute(f"INSERT INTO {table} ({', '.join(columns)}) {query}")
            con.commit()
        except BaseException:
            con.rollback()
            raise
    finally:
        _drop_temp(con)
    return events
