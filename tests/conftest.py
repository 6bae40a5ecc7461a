"""Test harness: a throwaway engage project on a real DuckDB file, with Segment-shaped source tables.

`Workspace` writes config and definitions, lands events the way Segment does (a row in `tracks` and in
the per-event table, pages and identifies in their own tables), runs `engage` through its real code path,
and reads back what it computed and sent.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner, Result
from sqlglot import exp

from engage.cli import main
from engage.config import load_project
from engage.console import NoopConsole
from engage.diff import CURRENT
from engage.naming import snakecase
from engage.sync import RunSummary, materialize_current, prepare, run_space
from engage_connectors.memory import MemoryConnector

STANDARD = {
    "id": "VARCHAR",
    "user_id": "VARCHAR",
    "anonymous_id": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "original_timestamp": "TIMESTAMP",
    "sent_at": "TIMESTAMP",
    "received_at": "TIMESTAMP",
    "uuid_ts": "TIMESTAMP",
}
TRACKS = {**STANDARD, "event": "VARCHAR", "event_text": "VARCHAR"}

CONFIG = """\
spaces:
  default:
    warehouse: {{type: duckdb, path: .engage/warehouse.duckdb}}
    sources: [{sources}]
    definitions: audiences
    destinations:
      warehouse: {{type: duckdb, send: [identify, track]}}
      mem: {{type: memory, send: [identify, track]}}
"""


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


class Workspace:
    """One engage project in a temporary folder."""

    def __init__(self, root: Path, sources: tuple[str, ...] = ("website",)) -> None:
        self.root = root
        (root / "config").mkdir(parents=True)
        (root / "audiences").mkdir()
        (root / ".engage").mkdir()
        self.write_config(CONFIG.format(sources=", ".join(sources)))
        self._ids = 0
        # Rows land in one connection per batch, just before engage reads: opening the file per row is slow.
        self._pending: list[tuple[str, str, dict[str, str], dict[str, Any]]] = []
        with self.connect() as con:
            for source in sources:
                con.execute(f'CREATE SCHEMA "{source}"')
                self._create(con, source, "tracks", TRACKS)
                self._create(con, source, "identifies", {**STANDARD})
                self._create(con, source, "pages", {**STANDARD, "name": "VARCHAR", "path": "VARCHAR"})

    # -- files -----------------------------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        (self.root / "config" / "engage.yaml").write_text(textwrap.dedent(text))

    def define(self, text: str, name: str = "definitions.yml") -> Path:
        path = self.root / "audiences" / name
        path.write_text(textwrap.dedent(text))
        return path

    # -- landing data, the way Segment does --------------------------------------------------------------
    def connect(self) -> duckdb.DuckDBPyConnection:
        """A connection to the warehouse file, after landing every pending row."""
        con = duckdb.connect(str(self.root / ".engage" / "warehouse.duckdb"))
        pending, self._pending = self._pending, []
        for source, table, columns, row in pending:
            self._create(con, source, table, columns)
            self._insert(con, source, table, row)
        return con

    def flush(self) -> None:
        if self._pending:
            self.connect().close()

    def _land(self, source: str, table: str, columns: dict[str, str], row: dict[str, Any]) -> None:
        self._pending.append((source, table, columns, row))

    @staticmethod
    def _create(con: duckdb.DuckDBPyConnection, source: str, table: str, columns: dict[str, str]) -> None:
        body = ", ".join(f'"{name}" {kind}' for name, kind in columns.items())
        con.execute(f'CREATE TABLE IF NOT EXISTS "{source}"."{table}" ({body})')
        existing = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
            [source, table]).fetchall()}  # fmt: skip
        for name, kind in columns.items():
            if name not in existing:
                con.execute(f'ALTER TABLE "{source}"."{table}" ADD COLUMN "{name}" {kind}')

    def _insert(self, con: duckdb.DuckDBPyConnection, source: str, table: str, row: dict[str, Any]) -> None:
        names = ", ".join(f'"{k}"' for k in row)
        marks = ", ".join("?" for _ in row)
        con.execute(f'INSERT INTO "{source}"."{table}" ({names}) VALUES ({marks})', list(row.values()))

    def _standard(
        self, user_id: str | None, anonymous_id: str | None, when: str, row_id: str | None
    ) -> dict[str, Any]:
        self._ids += 1
        moment = at(when)
        return {
            "id": row_id or f"row-{self._ids:06d}",
            "user_id": user_id,
            "anonymous_id": anonymous_id,
            "timestamp": moment,
            "original_timestamp": moment,
            "sent_at": moment,
            "received_at": moment,
            "uuid_ts": moment,
        }

    def track(
        self,
        event: str,
        when: str,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        source: str = "website",
        row_id: str | None = None,
        types: dict[str, str] | None = None,
        **properties: Any,
    ) -> None:
        """Lands one track call: a row in `tracks` and in the event's own table."""
        table = snakecase(event)
        row = self._standard(user_id, anonymous_id, when, row_id)
        kinds = {k: (types or {}).get(k) or _kind(v) for k, v in properties.items()}
        self._land(source, "tracks", TRACKS, {**row, "event": table, "event_text": event})
        self._land(
            source, table, {**TRACKS, **kinds}, {**row, "event": table, "event_text": event, **properties}
        )

    def page(
        self,
        when: str,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        source: str = "website",
        **properties: Any,
    ) -> None:
        row = self._standard(user_id, anonymous_id, when, None)
        self._land(
            source,
            "pages",
            {**STANDARD, **{k: _kind(v) for k, v in properties.items()}},
            {**row, **properties},
        )

    def identify(
        self,
        when: str,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        source: str = "website",
        row_id: str | None = None,
        received_at: str | None = None,
        **traits: Any,
    ) -> None:
        row = self._standard(user_id, anonymous_id, when, row_id)
        if received_at is not None:
            row["received_at"] = at(received_at)
        kinds = {k: _kind(v) for k, v in traits.items()}
        self._land(source, "identifies", {**STANDARD, **kinds}, {**row, **traits})

    # -- running engage ----------------------------------------------------------------------------------
    def sync(self, as_of: str, dry_run: bool = False, full_refresh: bool = False) -> RunSummary:
        self.flush()
        project = load_project(self.root)
        return run_space(project, "default", as_of=at(as_of), dry_run=dry_run, full_refresh=full_refresh)

    def cli(self, *args: str) -> Result:
        self.flush()
        return CliRunner().invoke(main, ["--project", str(self.root), *args], catch_exceptions=False)

    def current(self, as_of: str) -> dict[str, dict[str, Any]]:
        """key → {profile: value} as computed at `as_of`, without writing anything."""
        self.flush()
        with prepare(load_project(self.root), "default", read_only=True) as prepared:
            compiled = prepared.compile(at(as_of))
            materialize_current(prepared.warehouse, compiled, NoopConsole())
            types = {o.trait_key: o.value_type for o in compiled.outputs}
            query = exp.select("*").from_(CURRENT)
            table = [
                dict(zip(names, row, strict=True))
                for names, rows in prepared.warehouse.fetch_batches(query, 10_000)
                for row in rows
            ]
        decode = {"json": lambda v: None if v is None else json.loads(v)}
        return {
            k: {r["__profile"]: decode.get(t, lambda v: v)(r[k]) for r in table} for k, t in types.items()
        }

    def members(self, key: str, as_of: str) -> set[str]:
        return {p for p, v in self.current(as_of)[key].items() if v}

    def sent(self) -> list[dict[str, Any]]:
        """Every payload the `mem` destination received, in order."""
        return list(MemoryConnector.sent.get("mem", []))

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with self.connect() as con:
            return con.execute(sql).fetchall()


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "BIGINT"
    if isinstance(value, float):
        return "DOUBLE"
    if isinstance(value, datetime):
        return "TIMESTAMP"
    return "VARCHAR"


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    MemoryConnector.sent.clear()
    yield Workspace(tmp_path / "project")
    MemoryConnector.sent.clear()
