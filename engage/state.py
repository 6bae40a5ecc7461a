"""Run state, kept in the warehouse next to the outputs (`engage_<space>._engage_*`).

- `_engage_state`: what was last sent, one row per (definition, trait key, profile) with the definition's
  fingerprint and the generation that wrote it. Audiences keep members only; traits keep non-null
  values; SQL traits keep every column of every profile in their result.
- `_engage_runs`: the run log (`engage status` reads it). A run's generation is the number of successful
  runs before it plus one, so a run that failed and is retried gets the same generation, and with it the
  same message ids.

Nothing here advances unless the caller's transaction commits (see `sync.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlglot import exp

from engage.warehouse.base import Warehouse

STATE_TABLE, RUNS_TABLE = "_engage_state", "_engage_runs"

STATE_COLUMNS = [
    ("definition_key", "VARCHAR"),
    ("trait_key", "VARCHAR"),
    ("fingerprint", "VARCHAR"),
    ("profile_id", "VARCHAR"),
    ("user_id", "VARCHAR"),
    ("anonymous_id", "VARCHAR"),
    ("value_text", "VARCHAR"),
    ("value_num", "DOUBLE"),
    ("generation", "BIGINT"),
    ("updated_at", "TIMESTAMP"),
]
RUN_COLUMNS = [
    ("run_id", "VARCHAR"),
    ("space", "VARCHAR"),
    ("generation", "BIGINT"),
    ("as_of", "TIMESTAMP"),
    ("started_at", "TIMESTAMP"),
    ("finished_at", "TIMESTAMP"),
    ("status", "VARCHAR"),
    ("entered", "BIGINT"),
    ("exited", "BIGINT"),
    ("changed", "BIGINT"),
    ("summary", "VARCHAR"),
    ("error", "VARCHAR"),
    ("inputs", "VARCHAR"),
]


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    space: str
    generation: int
    as_of: datetime
    started_at: datetime
    finished_at: datetime | None
    status: str
    entered: int
    exited: int
    changed: int
    summary: dict[str, Any]
    error: str | None
    inputs: str | None = None  # what the results were a function of (freshness.Inputs as JSON)


class StateStore:
    """Reads and advances a space's state in its warehouse schema."""

    def __init__(self, warehouse: Warehouse, schema: str) -> None:
        self.warehouse = warehouse
        self.schema = schema

    def table(self, name: str) -> exp.Table:
        return exp.table_(name, db=self.schema)

    @property
    def exists(self) -> bool:
        return bool(self.warehouse.table_columns(self.schema, STATE_TABLE))

    def ensure(self) -> None:
        self.warehouse.ensure_schema(self.schema)
        for name, columns in ((STATE_TABLE, STATE_COLUMNS), (RUNS_TABLE, RUN_COLUMNS)):
            self.warehouse.ensure_table(self.schema, name, [(c, exp.DataType.build(t)) for c, t in columns])
            existing = self.warehouse.table_columns(self.schema, name)
            for column, kind in columns:
                if column not in existing:  # a state table from an older engage
                    self.warehouse.add_column(self.schema, name, column, exp.DataType.build(kind))

    def previous(self) -> exp.Query:
        """The state rows, or an empty relation of the same shape before the first run."""
        if self.exists:
            return exp.select("*").from_(self.table(STATE_TABLE))
        empty = [exp.alias_(exp.cast(exp.null(), t), c) for c, t in STATE_COLUMNS]
        return exp.select(*empty).where(exp.false())

    def next_generation(self) -> int:
        if not self.warehouse.table_columns(self.schema, RUNS_TABLE):
            return 1
        rows = self.warehouse.fetchall(
            exp.select(exp.func("COALESCE", exp.func("MAX", exp.column("generation")), 0))
            .from_(self.table(RUNS_TABLE))
            .where(exp.column("status").eq(exp.Literal.string("succeeded")))
        )
        return int(rows[0][0]) + 1

    def advance(self, changes: str, fingerprints: exp.Query, generation: int, now: datetime) -> None:
        """Applies a run's changes: drops rows of definitions whose logic changed, replaces the rows of
        every changed (definition, trait key, profile), and inserts the new present values. Engines
        without row updates get the state's whole new contents written over it."""
        state = self.table(STATE_TABLE)
        stale = (
            exp.select(exp.Literal.number(1))
            .from_(fingerprints.subquery("f"))
            .where(
                exp.and_(
                    exp.column("definition_key", "f").eq(exp.column("definition_key", STATE_TABLE)),
                    exp.column("fingerprint", "f").neq(exp.column("fingerprint", STATE_TABLE)),
                )
            )
        )
        replaced = (
            exp.select(exp.Literal.number(1))
            .from_(exp.table_(changes, alias="c"))
            .where(
                exp.and_(
                    *(
                        exp.column(k, "c").eq(exp.column(k, STATE_TABLE))
                        for k in ("definition_key", "trait_key", "profile_id")
                    )
                )
            )
        )
        columns = [c for c, _ in STATE_COLUMNS]
        fresh = (
            exp.select(
                exp.column("definition_key", "c"),
                exp.column("trait_key", "c"),
                exp.column("fingerprint", "c"),
                exp.column("profile_id", "c"),
                exp.column("user_id", "c"),
                exp.column("anonymous_id", "c"),
                exp.alias_(exp.column("new_text", "c"), "value_text"),
                exp.alias_(exp.column("new_num", "c"), "value_num"),
                exp.alias_(exp.Literal.number(generation), "generation"),
                exp.alias_(exp.cast(exp.Literal.string(now.isoformat(sep=" ")), "TIMESTAMP"), "updated_at"),
            )
            .from_(exp.table_(changes, alias="c"))
            .where(exp.column("present", "c"))
        )
        if not self.warehouse.capabilities.row_updates:
            kept = (
                exp.select(*columns)
                .from_(state.copy())
                .where(exp.and_(exp.not_(exp.Exists(this=stale)), exp.not_(exp.Exists(this=replaced))))
            )
            self.warehouse.overwrite(state, exp.union(kept, fresh, distinct=False))
            return
        self.warehouse.execute(exp.delete(state, where=exp.Exists(this=stale)))
        self.warehouse.execute(exp.delete(state.copy(), where=exp.Exists(this=replaced)))
        self.warehouse.execute(exp.insert(fresh, state.copy(), columns=columns))

    def record_run(self, record: RunRecord) -> None:
        values = [
            record.run_id,
            record.space,
            record.generation,
            record.as_of,
            record.started_at,
            record.finished_at,
            record.status,
            record.entered,
            record.exited,
            record.changed,
            json.dumps(record.summary, sort_keys=True),
            record.error,
            record.inputs,
        ]
        insert = exp.insert(
            exp.select(*(exp.Placeholder() for _ in values)),
            self.table(RUNS_TABLE),
            columns=[c for c, _ in RUN_COLUMNS],
        )
        self.warehouse.execute(insert, values)

    def runs(self, limit: int = 20, statuses: tuple[str, ...] = ()) -> list[RunRecord]:
        """The latest runs, newest first; only those with one of `statuses` when given."""
        if not self.warehouse.table_columns(self.schema, RUNS_TABLE):
            return []
        query = exp.select(*(c for c, _ in RUN_COLUMNS)).from_(self.table(RUNS_TABLE))
        if statuses:
            query = query.where(
                exp.In(this=exp.column("status"), expressions=[exp.Literal.string(s) for s in statuses])
            )
        rows = self.warehouse.fetchall(
            query.order_by(exp.Ordered(this=exp.column("started_at"), desc=True)).limit(limit)
        )
        return [
            RunRecord(
                run_id=r[0],
                space=r[1],
                generation=r[2],
                as_of=r[3],
                started_at=r[4],
                finished_at=r[5],
                status=r[6],
                entered=r[7] or 0,
                exited=r[8] or 0,
                changed=r[9] or 0,
                summary=json.loads(r[10]) if r[10] else {},
                error=r[11],
                inputs=r[12],
            )
            for r in rows
        ]
