"""engage's own identity graph (SPEC §6 Stitch) on DuckDB: identifiers linked across rows and tables, shared
identifiers that link nothing, components split between their owners, ids independent of row order,
incremental runs that end where a rebuild ends, and rows resolved to profiles by rule 4."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlglot import exp

from engage import identity_stitch
from engage.errors import DataError
from engage.identity_graph import IdentityCounts
from engage.identity_stitch import materialize_stitch, row_profile
from engage.warehouse.duckdb import DuckDBWarehouse

IDENTIFIERS = ["user_id", "email", "anonymous_id"]
STANDARD = ["id", "user_id", "anonymous_id"]
TIMES = ["timestamp", "received_at", "uuid_ts"]
COLUMNS = {
    "identifies": [*STANDARD, "email", *TIMES],
    "tracks": [*STANDARD, "event", *TIMES],
    "pages": [*STANDARD, "name", *TIMES],
    "order_completed": [*STANDARD, "email", "revenue", *TIMES],
}
TYPES = {"timestamp": "TIMESTAMP", "received_at": "TIMESTAMP", "uuid_ts": "TIMESTAMP", "revenue": "DOUBLE"}
OUTPUTS = (
    "id_graph",
    "external_id_mapping",
    "_engage_stitch_nodes",
    "_engage_stitch_components",
    "_engage_stitch_watermark",
)
DAY = datetime(2024, 1, 1)


@dataclass(frozen=True)
class Row:
    """One landed row: its table, id, identifiers, event time and landing time."""

    table: str
    id: str
    user: str | None = None
    anon: str | None = None
    email: str | None = None
    day: int = 0  # timestamp: DAY + day days; received_at and uuid_ts an hour later

    @property
    def at(self) -> datetime:
        return DAY + timedelta(days=self.day)

    @property
    def landed(self) -> datetime:
        return self.at + timedelta(hours=1)


def node(kind: str, value: str) -> str:
    return hashlib.md5(f"{kind}:{value}".encode()).hexdigest()


def user(value: str) -> str:
    return node("user_id", value)


def email(value: str) -> str:
    return node("email", value)


def anon(value: str) -> str:
    return node("anonymous_id", value)


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    connection = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def land(connection: duckdb.DuckDBPyConnection, rows: Iterable[Row], schema: str = "src") -> None:
    connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for row in rows:
        columns = COLUMNS[row.table]
        definition = ", ".join(f"{c} {TYPES.get(c, 'VARCHAR')}" for c in columns)
        connection.execute(f"CREATE TABLE IF NOT EXISTS {schema}.{row.table} ({definition})")
        values = {
            "id": row.id,
            "user_id": row.user,
            "anonymous_id": row.anon,
            "email": row.email,
            "timestamp": row.at,
            "received_at": row.landed,
            "uuid_ts": row.landed,
        }
        placeholders = ", ".join("?" for _ in columns)
        connection.execute(
            f"INSERT INTO {schema}.{row.table} ({', '.join(columns)}) VALUES ({placeholders})",
            [values.get(c) for c in columns],
        )


def stitch(
    warehouse: DuckDBWarehouse,
    output: str = "identity",
    *,
    full_refresh: bool = False,
    identifiers: Sequence[str] = IDENTIFIERS,
    sources: Sequence[str] = ("src",),
) -> IdentityCounts:
    catalog = warehouse.describe(list(sources))
    return materialize_stitch(warehouse, catalog, identifiers, output, full_refresh=full_refresh)


def graph(counts: IdentityCounts) -> tuple[int, ...]:
    """What the counts say of the tables (not of the run)."""
    return counts.profiles, counts.segment_ids, counts.merged, counts.depth, counts.external_ids


def tables(warehouse: DuckDBWarehouse, output: str = "identity") -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: warehouse.connection.execute(f"SELECT * FROM {output}.{name} ORDER BY ALL").fetchall()
        for name in OUTPUTS
    }


def profiles(warehouse: DuckDBWarehouse, output: str = "identity") -> dict[tuple[str, str], str]:
    """(type, value) → profile id, from `_engage_stitch_nodes`."""
    rows = warehouse.connection.execute(
        f"SELECT external_id_type, external_id_value, canonical_segment_id FROM {output}._engage_stitch_nodes"
    ).fetchall()
    return {(kind, value): canonical for kind, value, canonical in rows}


def resolve(
    warehouse: DuckDBWarehouse, table: str, output: str = "identity", identifiers: Sequence[str] = IDENTIFIERS
) -> dict[str, str | None]:
    """Each row id of `src.table` → its profile by `row_profile`, in a real query."""
    columns = set(warehouse.table_columns("src", table))
    profile, joins = row_profile("r", columns, identifiers, output)
    query = exp.select(exp.column("id", "r"), profile).from_(exp.table_(table, db="src", alias="r"))
    for joined, on in joins:
        query = query.join(joined, on=on, join_type="left")
    return dict(warehouse.fetchall(query))


def test_an_anonymous_id_and_an_email_join_their_users_profile(warehouse: DuckDBWarehouse) -> None:
    page = Row("pages", "p1", anon="a1", day=1)
    linking = Row("identifies", "i1", anon="a1", email="e", day=2)
    identified = Row("identifies", "i2", user="u", email="e", day=3)
    blank = Row("tracks", "t1", user="u", anon="", day=0)  # an empty anonymous_id is none
    land(warehouse.connection, [page, linking, identified, blank])

    counts = stitch(warehouse)

    assert counts == IdentityCounts(profiles=1, segment_ids=3, merged=2, depth=2, external_ids=3, new_rows=4)
    out = tables(warehouse)
    assert out["id_graph"] == sorted(
        [
            (anon("a1"), user("u"), linking.at, None, linking.landed),
            (email("e"), user("u"), identified.at, None, identified.landed),
            (user("u"), user("u"), identified.at, None, identified.landed),
        ]
    )
    assert out["external_id_mapping"] == sorted(
        [
            (user("u"), "anonymous_id", "a1", anon("a1"), linking.at, linking.landed),
            (user("u"), "email", "e", email("e"), identified.at, identified.landed),
            (user("u"), "user_id", "u", user("u"), identified.at, identified.landed),
        ]
    )
    assert out["_engage_stitch_nodes"] == sorted(
        [
            ("anonymous_id", "a1", anon("a1"), user("u"), True),
            ("email", "e", email("e"), user("u"), True),
            ("user_id", "u", user("u"), user("u"), True),
        ]
    )
    assert out["_engage_stitch_components"] == sorted(
        [(anon("a1"), min(anon("a1"), email("e"))), (email("e"), min(anon("a1"), email("e")))]
    )
    assert out["_engage_stitch_watermark"] == [
        ("src", "identifies", "uuid_ts", identified.landed, "user_id,email,anonymous_id"),
        ("src", "pages", "uuid_ts", page.landed, "user_id,email,anonymous_id"),
        ("src", "tracks", "uuid_ts", blank.landed, "user_id,email,anonymous_id"),
    ]


def test_a_shared_device_links_nothing_and_is_its_own_profile(warehouse: DuckDBWarehouse) -> None:
    land(
        warehouse.connection,
        [
            Row("tracks", "t1", user="u1", anon="d", day=1),
            Row("tracks", "t2", user="u2", anon="d", day=2),
            Row("pages", "p1", anon="d", day=3),
            Row("pages", "p2", user="u1", day=4),
            Row("order_completed", "o1", anon="d", email="f", day=5),
        ],
    )

    counts = stitch(warehouse)

    assert counts == IdentityCounts(profiles=4, segment_ids=4, merged=0, depth=0, external_ids=4, new_rows=5)
    assert tables(warehouse)["_engage_stitch_nodes"] == sorted(
        [
            ("anonymous_id", "d", anon("d"), anon("d"), False),
            ("email", "f", email("f"), email("f"), True),
            ("user_id", "u1", user("u1"), user("u1"), True),
            ("user_id", "u2", user("u2"), user("u2"), True),
        ]
    )
    assert resolve(warehouse, "tracks") == {"t1": user("u1"), "t2": user("u2")}
    assert resolve(warehouse, "pages") == {"p1": anon("d"), "p2": user("u1")}
    # A trusted email outranks the untrusted device, whatever their priorities.
    assert resolve(warehouse, "order_completed") == {"o1": email("f")}
    assert resolve(warehouse, "order_completed", identifiers=["user_id", "anonymous_id", "email"]) == {
        "o1": email("f")
    }


# Owners u1 (of e1) and u2 (of e2) share one component through a4; team@ is seen with both users.
# Without the owned e1 and e2, the unowned rest falls apart into {a1, g, a3}, {a2} and {a4}.
SPLIT = [
    Row("identifies", "i1", user="u1", email="team", day=1),
    Row("identifies", "i2", user="u2", email="team", day=2),
    Row("identifies", "i3", user="u1", email="e1", day=3),
    Row("identifies", "i4", user="u2", email="e2", day=4),
    Row("identifies", "i5", anon="a1", email="e1", day=5),
    Row("identifies", "i6", anon="a1", email="g", day=6),
    Row("identifies", "i7", anon="a3", email="g", day=7),
    Row("identifies", "i8", anon="a2", email="e2", day=8),
    Row("identifies", "i9", anon="a4", email="e1", day=9),
    Row("order_completed", "o1", anon="a4", email="e2", day=10),
    Row("pages", "p1", anon="a2", day=11),
    Row("identifies", "i10", anon="a2", email="team", day=12),
]
SPLIT_PROFILES = {
    ("user_id", "u1"): user("u1"),
    ("user_id", "u2"): user("u2"),
    ("email", "team"): email("team"),
    ("email", "e1"): user("u1"),
    ("email", "e2"): user("u2"),
    ("email", "g"): email("g"),
    ("anonymous_id", "a1"): email("g"),
    ("anonymous_id", "a3"): email("g"),
    ("anonymous_id", "a2"): anon("a2"),
    ("anonymous_id", "a4"): anon("a4"),
}


def test_a_component_with_two_owners_splits_between_them(warehouse: DuckDBWarehouse) -> None:
    land(warehouse.connection, SPLIT)

    counts = stitch(warehouse)

    assert counts == IdentityCounts(
        profiles=6, segment_ids=10, merged=4, depth=2, external_ids=10, new_rows=12
    )
    assert profiles(warehouse) == SPLIT_PROFILES
    out = tables(warehouse)
    trusted = {(kind, value): flag for kind, value, _, _, flag in out["_engage_stitch_nodes"]}
    assert [key for key, flag in trusted.items() if not flag] == [("email", "team")]
    members = [email("e1"), email("e2"), email("g"), anon("a1"), anon("a2"), anon("a3"), anon("a4")]
    assert out["_engage_stitch_components"] == sorted((m, min(members)) for m in members)
    assert resolve(warehouse, "identifies") == {
        "i1": user("u1"),
        "i2": user("u2"),
        "i3": user("u1"),
        "i4": user("u2"),
        "i5": user("u1"),  # e1 (owned by u1) outranks a1
        "i6": email("g"),
        "i7": email("g"),
        "i8": user("u2"),
        "i9": user("u1"),
        "i10": anon("a2"),  # team@ is untrusted: the trusted a2 decides
    }


def test_the_same_rows_in_another_order_give_the_same_tables(tmp_path: Path) -> None:
    rows = [*SPLIT, Row("pages", "p9", anon="solo", day=3), Row("tracks", "t9", user="u3", anon="a9", day=4)]
    built = []
    for name, order in (("forward", rows), ("backward", rows[::-1])):
        warehouse = DuckDBWarehouse(tmp_path / f"{name}.duckdb")
        land(warehouse.connection, order)
        stitch(warehouse)
        built.append(tables(warehouse))
        warehouse.close()
    assert built[0] == built[1]
    assert len(built[0]["id_graph"]) == 13


FIRST = [
    Row("pages", "p1", anon="a5", day=1),
    Row("identifies", "i1", anon="a5", email="e5", day=2),
    Row("pages", "p2", anon="a6", day=3),
    Row("tracks", "t1", user="u1", anon="d", day=4),
    Row("identifies", "i2", user="u3", email="e3", day=5),
    Row("identifies", "i3", anon="a7", email="e3", day=6),
    Row("identifies", "i4", anon="a8", email="e8", day=7),
]
SECOND = [
    Row("identifies", "i5", anon="a6", email="e5", day=8),  # merges {a5, e5} and {a6}
    Row("tracks", "t2", user="u2", anon="d", day=9),  # d: a second user, untrusted
    replace(FIRST[1], day=10),  # i1 again, landed later
    Row("identifies", "i6", user="u4", email="e8", day=11),  # {a8, e8} joins u4
    Row("order_completed", "o1", anon="a9", email="e3", day=12),  # a new table: a9 joins u3
    Row("tracks", "t3", user="u5", anon="a7", day=13),  # {e3, a7, a9}: owners u3 and u5, split
]


def test_an_incremental_run_ends_where_a_rebuild_ends(warehouse: DuckDBWarehouse) -> None:
    land(warehouse.connection, FIRST)
    first = stitch(warehouse)
    assert (first.full, first.new_rows) == (True, 7)
    assert profiles(warehouse)[("anonymous_id", "d")] == user("u1")
    land(warehouse.connection, SECOND)

    counts = stitch(warehouse)

    # The 6 new rows, and the rows landed within LOOKBACK of each table's mark, read again: i4, t1, p2.
    assert (counts.full, counts.new_rows) == (False, 9)

    assert profiles(warehouse) == {
        ("anonymous_id", "a5"): email("e5"),
        ("email", "e5"): email("e5"),
        ("anonymous_id", "a6"): email("e5"),
        ("anonymous_id", "d"): anon("d"),
        ("user_id", "u1"): user("u1"),
        ("user_id", "u2"): user("u2"),
        ("user_id", "u3"): user("u3"),
        ("email", "e3"): user("u3"),
        ("anonymous_id", "a7"): user("u5"),
        ("user_id", "u5"): user("u5"),
        ("anonymous_id", "a9"): anon("a9"),
        ("anonymous_id", "a8"): user("u4"),
        ("email", "e8"): user("u4"),
        ("user_id", "u4"): user("u4"),
    }
    assert graph(counts) == (8, 14, 6, 2, 14)
    assert graph(stitch(warehouse, "rebuilt", full_refresh=True)) == graph(counts)
    assert tables(warehouse) == tables(warehouse, "rebuilt")

    before = tables(warehouse)
    again = stitch(warehouse)
    assert (graph(again), again.full, again.new_rows) == (graph(counts), False, 4)  # i6, t3, p2, o1
    assert tables(warehouse) == before


def test_an_incremental_run_only_rewrites_the_touched_region(warehouse: DuckDBWarehouse) -> None:
    land(warehouse.connection, FIRST)
    stitch(warehouse)
    # Mark every stored row: the rows an incremental run rewrites lose the mark.
    warehouse.connection.execute("UPDATE identity.id_graph SET seq = 7")
    land(warehouse.connection, [Row("identifies", "i5", anon="a6", email="e5", day=8)])

    stitch(warehouse)

    rewritten = warehouse.connection.execute(
        "SELECT segment_id FROM identity.id_graph WHERE seq IS NULL ORDER BY 1"
    ).fetchall()
    # The new row's nodes and e5's component; and the rows landed at each table's mark, read again (a
    # row may land in the instant of the mark after the run read it): i4 (a8, e8), p2 (a6), t1 (u1, d).
    touched = [anon("a5"), email("e5"), anon("a6"), anon("a8"), email("e8"), user("u1"), anon("d")]
    assert [r[0] for r in rewritten] == sorted(touched)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_batches_stitched_incrementally_match_a_rebuild(tmp_path: Path, seed: int) -> None:
    generator = random.Random(seed)
    warehouse = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    number = 0
    for batch in range(4):
        rows = []
        for _ in range(12):
            number += 1
            table = generator.choice(list(COLUMNS))
            has_email = "email" in COLUMNS[table]
            rows.append(
                Row(
                    table,
                    f"r{number}",
                    user=generator.choice([None, None, "u1", "u2", "u3"]),
                    anon=generator.choice([None, *(f"a{i}" for i in range(8))]),
                    email=generator.choice([None, *(f"e{i}" for i in range(6))]) if has_email else None,
                    day=10 * batch + generator.randrange(10),
                )
            )
        land(warehouse.connection, rows)
        counts = stitch(warehouse)
        assert counts.full == (batch == 0)
        assert graph(stitch(warehouse, f"rebuilt_{batch}", full_refresh=True)) == graph(counts)
        assert tables(warehouse) == tables(warehouse, f"rebuilt_{batch}")
    warehouse.close()


def test_rows_resolve_by_rule_4_and_new_identifiers_to_their_own_node(warehouse: DuckDBWarehouse) -> None:
    land(
        warehouse.connection,
        [
            Row("identifies", "i1", user="u1", email="team", day=1),
            Row("identifies", "i2", user="u2", email="team", day=2),
            Row("identifies", "i3", anon="a1", email="e1", day=3),
            Row("identifies", "i4", user="u1", anon="a1", email="team", day=4),
        ],
    )
    stitch(warehouse)
    land(
        warehouse.connection,
        [
            Row("identifies", "i5", anon="a1", email="team", day=5),  # trusted a1 before untrusted team
            Row("identifies", "i6", anon="new", email="team", day=6),  # not materialized yet
            Row("identifies", "i7", email="team", day=7),  # only an untrusted identifier
            Row("identifies", "i8", email="e1", day=8),
            Row("identifies", "i9", day=9),  # no identifier at all
        ],
    )

    assert resolve(warehouse, "identifies") == {
        "i1": user("u1"),
        "i2": user("u2"),
        "i3": user("u1"),
        "i4": user("u1"),
        "i5": user("u1"),
        "i6": anon("new"),
        "i7": email("team"),
        "i8": user("u1"),
        "i9": None,
    }


def test_a_long_chain_is_one_profile_and_a_pass_limit_stops_a_graph_that_does_not_settle(
    warehouse: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a00 - e00 - a01 - e01 - … - a40: 81 nodes in a path, one anonymous profile headed by e00.
    rows = []
    for i in range(40):
        rows.append(Row("identifies", f"x{i}", anon=f"a{i:02d}", email=f"e{i:02d}", day=i))
        rows.append(Row("identifies", f"y{i}", anon=f"a{i + 1:02d}", email=f"e{i:02d}", day=i))
    land(warehouse.connection, rows)

    counts = stitch(warehouse)

    assert counts == IdentityCounts(
        profiles=1, segment_ids=81, merged=80, depth=80, external_ids=81, new_rows=80
    )
    assert set(profiles(warehouse).values()) == {email("e00")}
    monkeypatch.setattr(identity_stitch, "MAX_PASSES", 2)
    with pytest.raises(DataError, match="did not settle after 2 passes"):
        stitch(warehouse, "limited")


def test_new_identifiers_or_a_source_gone_rebuild(warehouse: DuckDBWarehouse) -> None:
    land(warehouse.connection, FIRST)
    land(warehouse.connection, [Row("pages", "w1", anon="web", day=2)], schema="web")
    stitch(warehouse, identifiers=["user_id", "anonymous_id"], sources=("src", "web"))
    assert ("anonymous_id", "web") in profiles(warehouse)

    stitch(warehouse)  # email now links, and the web source left the space

    stitch(warehouse, "rebuilt", full_refresh=True)
    assert tables(warehouse) == tables(warehouse, "rebuilt")
    assert ("anonymous_id", "web") not in profiles(warehouse)


def test_only_user_id_makes_each_user_a_profile(warehouse: DuckDBWarehouse) -> None:
    land(warehouse.connection, FIRST)

    counts = stitch(warehouse, identifiers=["user_id"])

    assert counts == IdentityCounts(profiles=2, segment_ids=2, merged=0, depth=0, external_ids=2, new_rows=2)
    assert profiles(warehouse) == {("user_id", "u1"): user("u1"), ("user_id", "u3"): user("u3")}
    land(warehouse.connection, [Row("tracks", "t9", user="u9", day=9)])
    assert stitch(warehouse, identifiers=["user_id"]).profiles == 3
