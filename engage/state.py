"""Run state, kept in the warehouse next to the outputs (`engage_<space>._engage_*`).

- `_engage_state`: what was last sent, one row per (definition, trait key, profile) with the definition's
  fingerprint and the generation that wrote it. Audiences keep members only; traits keep non-null
  values; SQL traits keep every column of every profile in their result.
- `_engage_runs`: the run log (`engage status` reads it). A run's generation is the number of successful
  runs before it plus one, so a run that failed and is retried gets the same generation, and with it the
  same message ids.
- `_engage_outbox`: each run's changes, with the run's id, generation and as-of, committed before the state
  advances. A run that dies before its state advanced is finished by the next one, from here, before it
  computes anything. A run's rows stay until every destination routed to them has taken them
  (`delivery.py`), so a destination that was down catches up on every run it missed.

Nothing here advances unless the caller's transaction commits (see `sync.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlglot import exp

from engage.compile.expressions import union_all
from engage.messages import sql_type
from engage.warehouse.base import Warehouse

STATE_TABLE, RUNS_TABLE, OUTBOX_TABLE = "_engage_state", "_engage_runs", "_engage_outbox"
INHERITED = "__engage_inherited_state"  # temporary: the state canonicals take over from merged ids
# The outbox's own columns, in front of the changes' columns.
OUTBOX_RUN_COLUMNS = [("run_id", "VARCHAR"), ("generation", "BIGINT"), ("as_of", "TIMESTAMP")]

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
    ("stages", "VARCHAR"),
]


@dataclass(frozen=True)
class PendingRun:
    """A run whose changes are in the outbox: it died delivering them."""

    run_id: str
    generation: int
    as_of: datetime


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
    # Seconds per stage finished before the run was recorded (compile, compute, diff, each delivery).
    # Per definition there is none to give: definitions reading the same table share one scan.
    stages: dict[str, float] = field(default_factory=dict)


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
            self._ensure_table(name, [(c, exp.DataType.build(t)) for c, t in columns])

    def _ensure_table(self, name: str, columns: list[tuple[str, exp.DataType]]) -> None:
        """The table with every column of `columns`, adding those a table from an older engage lacks."""
        self.warehouse.ensure_table(self.schema, name, columns)
        existing = self.warehouse.table_columns(self.schema, name)
        for column, kind in columns:
            if column not in existing:
                self.warehouse.add_column(self.schema, name, column, kind)

    def previous(self, graph: exp.Table | None = None) -> exp.Query:
        """The state rows, or an empty relation of the same shape before the first run. With an identity
        `graph`, as merges leave it: the rows of ids that have not merged away, and what canonicals
        inherit from those that have."""
        if not self.exists:
            return self.empty()
        if graph is None:
            return exp.select("*").from_(self.table(STATE_TABLE))
        return union_all([self._kept(graph), self._inherited(graph)])

    def _canonical(self, graph: exp.Table) -> tuple[exp.Expr, exp.Expr]:
        """The canonical of a state row's profile (aliased `s`) through `graph` aliased `g`, and the join."""
        profile = exp.column("profile_id", "s")
        canonical = exp.func("COALESCE", exp.column("canonical_segment_id", "g"), profile.copy())
        return canonical, exp.column("segment_id", "g").eq(profile.copy())

    def _with_canonical(self, graph: exp.Table) -> exp.Select:
        canonical, on = self._canonical(graph)
        return (
            exp.select(*(exp.column(c, "s") for c, _ in STATE_COLUMNS), exp.alias_(canonical, "canonical_id"))
            .from_(exp.table_(STATE_TABLE, db=self.schema, alias="s"))
            .join(exp.table_(graph.name, db=graph.db, alias="g"), on=on, join_type="left")
        )

    def _kept(self, graph: exp.Table) -> exp.Query:
        """State rows of profiles that have not merged away."""
        rows = self._with_canonical(graph).subquery("c")
        return (
            exp.select(*(exp.column(c, "c") for c, _ in STATE_COLUMNS))
            .from_(rows)
            .where(exp.column("canonical_id", "c").eq(exp.column("profile_id", "c")))
        )

    def _inherited(self, graph: exp.Table) -> exp.Query:
        """What a canonical takes from the ids merged into it, for each definition it has no state of
        (SPEC §6): per trait key, the row last sent among them (ties: the smallest id), now its own. For an
        audience that is membership when any merged id was a member (only members have rows)."""
        rank = exp.Window(
            this=exp.RowNumber(),
            partition_by=[exp.column("definition_key"), exp.column("trait_key"), exp.column("canonical_id")],
            order=exp.Order(
                expressions=[
                    exp.Ordered(this=exp.column("generation"), desc=True, nulls_first=False),
                    exp.Ordered(this=exp.column("profile_id"), nulls_first=True),
                ]
            ),
        )
        moved = (
            exp.select("*", exp.alias_(rank, "r"))
            .from_(self._with_canonical(graph).subquery("c"))
            .where(exp.column("canonical_id").neq(exp.column("profile_id")))
        )
        own = (
            exp.select(exp.Literal.number(1))
            .from_(self.table(STATE_TABLE).as_("o"))
            .where(
                exp.and_(
                    exp.column("definition_key", "o").eq(exp.column("definition_key", "m")),
                    exp.column("profile_id", "o").eq(exp.column("canonical_id", "m")),
                )
            )
        )
        columns = [
            exp.alias_(exp.column("canonical_id", "m"), c) if c == "profile_id" else exp.column(c, "m")
            for c, _ in STATE_COLUMNS
        ]
        return (
            exp.select(*columns)
            .from_(moved.subquery("m"))
            .where(exp.and_(exp.column("r", "m").eq(1), exp.not_(exp.Exists(this=own))))
        )

    def prepare_merges(self, graph: exp.Table) -> None:
        """What each canonical inherits (`_inherited`), in a temporary table of this connection for
        `advance`: created before its transaction, because DDL commits a transaction on some engines."""
        self.warehouse.create_temp_table(INHERITED, self._inherited(graph))

    def _follow_merges(self, graph: exp.Table) -> None:
        """Rewrites the state as merges leave it: merged-away ids leave it, silently, and canonicals take
        what `prepare_merges` found. Runs in the transaction that advances the state, before the changes
        (which were diffed against this same view) are applied."""
        merged_away = (
            exp.select(exp.Literal.number(1))
            .from_(exp.table_(graph.name, db=graph.db, alias="g"))
            .where(
                exp.and_(
                    exp.column("segment_id", "g").eq(exp.column("profile_id", STATE_TABLE)),
                    exp.column("canonical_segment_id", "g").neq(exp.column("segment_id", "g")),
                )
            )
        )
        self.warehouse.delete_rows(self.table(STATE_TABLE), [exp.Exists(this=merged_away)])
        columns = [c for c, _ in STATE_COLUMNS]
        self.warehouse.execute(
            exp.insert(exp.select(*columns).from_(INHERITED), self.table(STATE_TABLE), columns=columns)
        )

    def next_generation(self) -> int:
        if not self.warehouse.table_columns(self.schema, RUNS_TABLE):
            return 1
        rows = self.warehouse.fetchall(
            exp.select(exp.func("COALESCE", exp.func("MAX", exp.column("generation")), 0))
            .from_(self.table(RUNS_TABLE))
            .where(exp.column("status").eq(exp.Literal.string("succeeded")))
        )
        return int(rows[0][0]) + 1

    def advance(
        self,
        changes: str,
        fingerprints: exp.Query,
        generation: int,
        now: datetime,
        graph: exp.Table | None = None,
    ) -> None:
        """Applies a run's changes: follows merges through the identity `graph` when there is one
        (`prepare_merges` first, outside the transaction), drops rows of definitions whose logic changed,
        replaces the rows of every changed (definition, trait key, profile), and inserts the new present
        values (engines without row updates rewrite the kept rows once, `Warehouse.delete_rows`)."""
        if graph is not None:
            self._follow_merges(graph)
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
        self.warehouse.delete_rows(state, [exp.Exists(this=stale), exp.Exists(this=replaced)])
        self.warehouse.execute(exp.insert(fresh, state.copy(), columns=columns))

    # -- the outbox ---------------------------------------------------------------------------------------
    def stage(self, changes: str, run: PendingRun) -> None:
        """Commits a run's changes to the outbox (DDL first: some engines commit at DDL)."""
        columns = self.warehouse.query_columns(exp.select("*").from_(changes))
        table = [(c, exp.DataType.build(t)) for c, t in OUTBOX_RUN_COLUMNS]
        self._ensure_table(OUTBOX_TABLE, table + [(c, sql_type(t)) for c, t in columns.items()])
        keys = [
            exp.Literal.string(run.run_id),
            exp.Literal.number(run.generation),
            exp.cast(exp.Literal.string(run.as_of.isoformat(sep=" ")), "TIMESTAMP"),
        ]
        rows = exp.select(*keys, *columns).from_(changes)
        names = [c for c, _ in OUTBOX_RUN_COLUMNS] + list(columns)
        with self.warehouse.transaction():
            self.warehouse.execute(exp.insert(rows, self.table(OUTBOX_TABLE), columns=names))

    def pending(self) -> PendingRun | None:
        """The run whose changes wait in the outbox with its state not advanced, if one died there."""
        runs = self.outbox_runs(after=self.next_generation() - 1)
        return runs[0] if runs else None

    def outbox_runs(self, after: int, through: int | None = None) -> list[PendingRun]:
        """The runs with changes in the outbox and a generation in (`after`, `through`], oldest first."""
        if not self.warehouse.table_columns(self.schema, OUTBOX_TABLE):
            return []
        generation = exp.column("generation")
        within: exp.Expr = generation > exp.Literal.number(after)
        if through is not None:
            within = exp.and_(within, generation <= exp.Literal.number(through))
        rows = self.warehouse.fetchall(
            exp.select(*(c for c, _ in OUTBOX_RUN_COLUMNS))
            .from_(self.table(OUTBOX_TABLE))
            .where(within)
            .group_by(*(c for c, _ in OUTBOX_RUN_COLUMNS))
            .order_by("generation")
        )
        return [PendingRun(r[0], int(r[1]), r[2]) for r in rows]

    def restore(self, run: PendingRun, changes: str, keys: list[str]) -> None:
        """The pending run's changes of the definitions `keys`, as the temporary table `changes`."""
        run_columns = {c for c, _ in OUTBOX_RUN_COLUMNS}
        columns = [c for c in self.warehouse.table_columns(self.schema, OUTBOX_TABLE) if c not in run_columns]
        query = (
            exp.select(*columns)
            .from_(self.table(OUTBOX_TABLE))
            .where(
                exp.and_(
                    exp.column("run_id").eq(exp.Literal.string(run.run_id)),
                    exp.In(
                        this=exp.column("definition_key"), expressions=[exp.Literal.string(k) for k in keys]
                    )
                    if keys
                    else exp.false(),
                )
            )
        )
        self.warehouse.create_temp_table(changes, query)

    def prune_outbox(self, through: int, retained: dict[str, int]) -> None:
        """Deletes the outbox rows of runs up to generation `through` (whose state has advanced) that no
        destination still needs: a definition in `retained` keeps its rows after the generation given."""
        if not self.warehouse.table_columns(self.schema, OUTBOX_TABLE):
            return
        generation, key = exp.column("generation"), exp.column("definition_key")
        still_needed = [
            exp.and_(key.eq(exp.Literal.string(k)), generation > exp.Literal.number(g))
            for k, g in sorted(retained.items())
            if g < through
        ]
        condition: exp.Expr = generation <= exp.Literal.number(through)
        if still_needed:
            condition = exp.and_(condition, exp.not_(exp.paren(exp.or_(*still_needed))))
        self.warehouse.delete_rows(self.table(OUTBOX_TABLE), [condition])

    def current_values(self, definitions: exp.Query) -> exp.Query:
        """The state as `diff.CURRENT_LONG`'s columns, for the definitions (key, fingerprint) of
        `definitions`: what a destination that starts now must receive. Its `generation` is the run that
        last wrote the (definition, profile): the run of the call a resend repeats."""
        columns = ["definition_key", "trait_key", "profile_id", "user_id", "anonymous_id"]
        last_written = exp.Window(
            this=exp.func("MAX", exp.column("generation", "s")),
            partition_by=[exp.column("definition_key", "s"), exp.column("profile_id", "s")],
        )
        return (
            exp.select(
                *(exp.column(c, "s") for c in columns),
                exp.column("value_text", "s"),
                exp.column("value_num", "s"),
                exp.alias_(last_written, "generation"),
            )
            .from_(exp.table_(STATE_TABLE, db=self.schema, alias="s"))
            .join(
                definitions.subquery("f"),
                on=exp.and_(
                    exp.column("definition_key", "s").eq(exp.column("definition_key", "f")),
                    exp.column("fingerprint", "s").eq(exp.column("fingerprint", "f")),
                ),
            )
        )

    def empty(self) -> exp.Query:
        """The state's shape with no rows: the previous values of a destination that starts now."""
        return exp.select(*(exp.alias_(exp.cast(exp.null(), t), c) for c, t in STATE_COLUMNS)).where(
            exp.false()
        )

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
            json.dumps(record.stages),  # in the order the stages ran
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
                stages=json.loads(r[13]) if r[13] else {},
            )
            for r in rows
        ]
