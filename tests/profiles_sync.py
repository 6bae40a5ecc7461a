"""Lands Profiles Sync tables the way Segment does (SPEC §6), for tests of syncs that resolve identity."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import duckdb

GRAPH = (
    "id VARCHAR, segment_id VARCHAR, canonical_segment_id VARCHAR, triggering_event_type VARCHAR,"
    " triggering_event_id VARCHAR, timestamp TIMESTAMP, seq BIGINT, received_at TIMESTAMP, uuid_ts TIMESTAMP"
)
EXTERNAL = (
    "id VARCHAR, segment_id VARCHAR, external_id_type VARCHAR, external_id_value VARCHAR,"
    " external_id_hash VARCHAR, timestamp TIMESTAMP, seq BIGINT, received_at TIMESTAMP, uuid_ts TIMESTAMP"
)
TRAITS = (
    "id VARCHAR, segment_id VARCHAR, email VARCHAR, plan VARCHAR, timestamp TIMESTAMP, seq BIGINT,"
    " received_at TIMESTAMP, uuid_ts TIMESTAMP"
)


class ProfilesSync:
    """Rows of `id_graph_updates`, `external_id_mapping_updates` and `profile_traits_updates` in `schema`,
    each with an increasing `seq`, landed a minute after its `timestamp` unless told otherwise."""

    def __init__(self, con: duckdb.DuckDBPyConnection, schema: str = "profiles") -> None:
        self.con = con
        self.schema = schema
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        tables = ("id_graph_updates", "external_id_mapping_updates", "profile_traits_updates")
        for table, columns in zip(tables, (GRAPH, EXTERNAL, TRAITS), strict=True):
            con.execute(f"CREATE TABLE IF NOT EXISTS {schema}.{table} ({columns})")
        # seq grows across everything Segment lands, also across batches.
        latest = " UNION ALL ".join(f"SELECT max(seq) AS seq FROM {schema}.{t}" for t in tables)
        row = con.execute(f"SELECT coalesce(max(seq), 0) FROM ({latest})").fetchone()
        self._seq = itertools.count(int(row[0]) + 1 if row else 1)

    def _landed(self, when: str, landed: str | None) -> tuple[datetime, datetime]:
        moment = datetime.fromisoformat(when)
        return moment, datetime.fromisoformat(landed) if landed else moment + timedelta(minutes=1)

    def profile(self, segment_id: str, when: str, into: str | None = None, landed: str | None = None) -> None:
        """A profile created (`into` None) or merged into `into`."""
        seq = next(self._seq)
        moment, loaded = self._landed(when, landed)
        self.con.execute(
            f"INSERT INTO {self.schema}.id_graph_updates VALUES (?, ?, ?, 'identify', ?, ?, ?, ?, ?)",
            [f"g{seq}", segment_id, into or segment_id, f"event{seq}", moment, seq, loaded, loaded],
        )

    def external(self, segment_id: str, kind: str, value: str, when: str, landed: str | None = None) -> None:
        seq = next(self._seq)
        moment, loaded = self._landed(when, landed)
        self.con.execute(
            f"INSERT INTO {self.schema}.external_id_mapping_updates VALUES"
            " (?, ?, ?, ?, md5(? || ':' || ?), ?, ?, ?, ?)",
            [f"x{seq}", segment_id, kind, value, kind, value, moment, seq, loaded, loaded],
        )

    def traits(self, segment_id: str, when: str, email: str | None = None, plan: str | None = None) -> None:
        seq = next(self._seq)
        moment, loaded = self._landed(when, None)
        self.con.execute(
            f"INSERT INTO {self.schema}.profile_traits_updates VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [f"t{seq}", segment_id, email, plan, moment, seq, loaded, loaded],
        )
