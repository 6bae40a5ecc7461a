"""Per-destination delivery: every destination's own cursor over the runs' calls (SPEC §4–5).

A run commits its changes to the outbox, then advances the state; destinations inside the warehouse that
are up to date take the run in that same transaction. Everything else happens here, after the commit,
destination by destination, each on its own:

- a destination behind (down for a few runs, or outside the warehouse) receives every run it has not
  taken, oldest first, each run's calls once, from the outbox;
- a definition a destination has never taken (a new destination, a definition newly routed to it, or
  `--resync`) receives the current state, as on a first sync: every member `true`, every non-null trait
  value. Each call keeps the message ids of the call that made that state (its run's generation), so a
  state resent after a failure deduplicates downstream; a `--resync` is new calls, with the latest run's;
- a destination that fails keeps its cursor where it was and holds back no other; a call it refuses for
  good is recorded with its error in `_engage_rejected`.

Cursors are rows (destination, definition, generation) in `_engage_cursors`; each attempt is logged in
`_engage_deliveries`. A cursor moves only after the destination has taken the calls, so a crash in
between sends them again with the same message ids, which destinations deduplicate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from engage import diff
from engage.connector import Connector, Delivery, Pace, Rejection, TableSelection
from engage.errors import EngageError, RunError
from engage.failpoints import reached
from engage.messages import MessageContext, WarehouseRows
from engage.secrets import redact
from engage.state import PendingRun, StateStore

if TYPE_CHECKING:
    from engage.compile.compiler import CompiledDefinition, CompiledSpace
    from engage.config import Space
    from engage.console import Console
    from engage.warehouse.base import Warehouse

log = logging.getLogger("engage.delivery")

CURSORS, DELIVERIES, REJECTED = "_engage_cursors", "_engage_deliveries", "_engage_rejected"
CATCH_UP = "__engage_catch_up"  # temporary: the calls of one delivery made after the run's commit
CURSOR_COLUMNS = [
    ("destination", "VARCHAR"),
    ("definition_key", "VARCHAR"),
    ("generation", "BIGINT"),
    ("updated_at", "TIMESTAMP"),
]
DELIVERY_COLUMNS = [
    ("destination", "VARCHAR"),
    ("run_id", "VARCHAR"),
    ("generation", "BIGINT"),
    ("kind", "VARCHAR"),  # run | backfill | resync
    ("status", "VARCHAR"),  # delivered | failed
    ("calls", "BIGINT"),
    ("rejected", "BIGINT"),
    ("error", "VARCHAR"),
    ("seconds", "DOUBLE"),
    ("finished_at", "TIMESTAMP"),
]
REJECTED_COLUMNS = [
    ("destination", "VARCHAR"),
    ("run_id", "VARCHAR"),
    ("generation", "BIGINT"),
    ("message_id", "VARCHAR"),
    ("type", "VARCHAR"),
    ("definition_key", "VARCHAR"),
    ("user_id", "VARCHAR"),
    ("anonymous_id", "VARCHAR"),
    ("error", "VARCHAR"),
    ("rejected_at", "TIMESTAMP"),
]


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def routes_to(definition: CompiledDefinition, connector: Connector) -> bool:
    """A definition goes to every destination of its space unless it lists its own, and then only where
    the destination's selective sync takes it."""
    chosen = definition.loaded.definition.destinations
    if chosen is not None and connector.destination not in chosen:
        return False
    return connector.config.selective_sync.takes_definition(definition.key)


@dataclass
class DestinationResult:
    """What one destination took after a run."""

    calls: int = 0
    runs: list[int] = field(default_factory=list)  # generations delivered, oldest first
    backfilled: list[str] = field(default_factory=list)  # definitions sent their full state
    rejected: int = 0
    error: str | None = None


@dataclass(frozen=True)
class DestinationStatus:
    """`engage status`: a destination's cursor, how far behind it is, and what it refused."""

    destination: str
    generation: int | None  # the oldest run all its definitions have taken
    lag: int  # runs it has not taken
    rejected: int
    last_status: str | None
    last_error: str | None
    last_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "generation": self.generation,
            "lag": self.lag,
            "rejected": self.rejected,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_at": self.last_at.isoformat() if self.last_at else None,
        }


class DeliveryLog:
    """The cursors, attempts and rejected calls of a space's destinations, next to its state."""

    def __init__(self, warehouse: Warehouse, schema: str) -> None:
        self.warehouse = warehouse
        self.schema = schema

    def table(self, name: str) -> exp.Table:
        return exp.table_(name, db=self.schema)

    def ensure(self, store: StateStore, routed: dict[str, list[str]]) -> None:
        """Creates the tables (DDL: before any transaction). A space synced by an engage without cursors
        delivered every run to every destination before its state advanced: its destinations start at
        its latest generation rather than receiving everything again."""
        had_cursors = bool(self.warehouse.table_columns(self.schema, CURSORS))
        for name, columns in (
            (CURSORS, CURSOR_COLUMNS),
            (DELIVERIES, DELIVERY_COLUMNS),
            (REJECTED, REJECTED_COLUMNS),
        ):
            self.warehouse.ensure_table(self.schema, name, [(c, exp.DataType.build(t)) for c, t in columns])
        latest = store.next_generation() - 1
        if not had_cursors and latest > 0:
            with self.warehouse.transaction():
                for destination, keys in routed.items():
                    self.advance(destination, keys, latest)

    def cursors(self) -> dict[str, dict[str, int]]:
        """destination → definition → the generation of the last run it took."""
        rows = self.warehouse.fetchall(
            exp.select("destination", "definition_key", "generation").from_(self.table(CURSORS))
        )
        found: dict[str, dict[str, int]] = {}
        for destination, key, generation in rows:
            found.setdefault(destination, {})[key] = int(generation)
        return found

    def advance(self, destination: str, keys: Sequence[str], generation: int) -> None:
        """Moves the cursors of `keys` at `destination` to `generation` (inside the caller's transaction)."""
        if not keys:
            return
        self.warehouse.delete_rows(
            self.table(CURSORS),
            [
                exp.and_(
                    exp.column("destination").eq(exp.Literal.string(destination)),
                    exp.In(
                        this=exp.column("definition_key"), expressions=[exp.Literal.string(k) for k in keys]
                    ),
                )
            ],
        )
        rows = [[destination, key, generation, utc_now()] for key in keys]
        self._insert(CURSORS, CURSOR_COLUMNS, rows)

    def forget(self, destination: str) -> None:
        """`--resync`: the destination takes the current state of all its definitions again."""
        with self.warehouse.transaction():
            self.warehouse.delete_rows(
                self.table(CURSORS), [exp.column("destination").eq(exp.Literal.string(destination))]
            )

    def resync_marker(self, destination: str, head: PendingRun) -> str:
        """What a resync's message ids are made of instead of a run's generation: new at every resync."""
        done = self.warehouse.fetchall(
            exp.select(exp.Count(this=exp.Star()))
            .from_(self.table(DELIVERIES))
            .where(
                exp.and_(
                    exp.column("destination").eq(exp.Literal.string(destination)),
                    exp.column("kind").eq(exp.Literal.string("resync")),
                )
            )
        )[0][0]
        return f"{head.generation}-resync-{int(done) + 1}"

    def record(
        self, destination: str, run: PendingRun, kind: str, result: DestinationResult, seconds: float
    ) -> None:
        status = "failed" if result.error else "delivered"
        row = [
            destination, run.run_id, run.generation, kind, status, result.calls, result.rejected,
            result.error, round(seconds, 3), utc_now(),
        ]  # fmt: skip
        self._insert(DELIVERIES, DELIVERY_COLUMNS, [row])

    def reject(self, destination: str, run: PendingRun, rejections: Iterable[Rejection]) -> None:
        now = utc_now()
        rows = [
            [
                destination, run.run_id, run.generation, r.message_id, r.type, r.definition_key,
                r.user_id, r.anonymous_id, redact(r.error), now,
            ]
            for r in rejections
        ]  # fmt: skip
        self._insert(REJECTED, REJECTED_COLUMNS, rows)

    def _insert(self, name: str, columns: list[tuple[str, str]], rows: list[list[Any]]) -> None:
        if not rows:
            return
        insert = exp.insert(
            exp.select(*(exp.Placeholder() for _ in columns)),
            self.table(name),
            columns=[c for c, _ in columns],
        )
        self.warehouse.executemany(insert, rows)

    def status(self, destinations: Sequence[str], latest: int) -> list[DestinationStatus]:
        """Each configured destination's cursor, lag, rejected calls and last attempt."""
        if not self.warehouse.table_columns(self.schema, CURSORS):
            return [DestinationStatus(d, None, latest, 0, None, None, None) for d in destinations]
        cursors = self.cursors()
        rejected = dict(
            self.warehouse.fetchall(
                exp.select("destination", exp.Count(this=exp.Star()))
                .from_(self.table(REJECTED))
                .group_by("destination")
            )
        )
        last: dict[str, tuple[str, str | None, datetime]] = {}
        attempts = self.warehouse.fetchall(
            exp.select("destination", "status", "error", "finished_at")
            .from_(self.table(DELIVERIES))
            .order_by("finished_at")
        )
        for destination, status, error, finished_at in attempts:
            last[destination] = (status, error, finished_at)
        found = []
        for destination in destinations:
            taken = cursors.get(destination, {})
            generation = min(taken.values()) if taken else None
            status, error, at = last.get(destination, (None, None, None))
            found.append(
                DestinationStatus(
                    destination,
                    generation,
                    latest - (generation or 0),
                    int(rejected.get(destination, 0)),
                    status,
                    error,
                    at,
                )
            )
        return found


class Deliverer:
    """Makes `Delivery` objects for a space's connectors and hands them over."""

    def __init__(self, space: Space, warehouse: Warehouse, console: Console) -> None:
        self.space = space
        self.warehouse = warehouse
        self.console = console

    def delivery(
        self,
        connector: Connector,
        definitions: list[CompiledDefinition],
        as_of: datetime,
        changes: str,
    ) -> Delivery:
        config = connector.config
        context = MessageContext(self.space.name, as_of, utc_now(), config.events)
        tables = config.selective_sync.tables
        return Delivery(
            destination=connector.destination,
            schema=config.schema_ or self.space.output_schema,
            send=frozenset(config.send),
            definitions=definitions,
            context=context,
            warehouse=self.warehouse,
            changes=changes,
            rows=WarehouseRows(changes, definitions, context, utc_now()),
            tables=TableSelection(frozenset(tables.include), frozenset(tables.exclude)),
            pace=Pace(config.rate_limit),
        )

    def send(self, connector: Connector, delivery: Delivery, label: str) -> int:
        """Runs the connector, with a progress bar of the calls; its own failures become `RunError`."""
        try:
            with self.console.progress(label, lambda: self._count(delivery)) as advance:
                delivery.pace.progress = advance
                return connector.deliver(delivery)
        except EngageError:
            raise
        except Exception as err:  # a connector's own failure must not escape as a traceback
            raise RunError(f"destination {connector.destination}: {type(err).__name__}: {err}") from err

    def _count(self, delivery: Delivery) -> int:
        if not delivery.definitions:
            return 0
        keys = [exp.Literal.string(d.key) for d in delivery.definitions]
        query = (
            exp.select(
                exp.Count(
                    this=exp.Distinct(expressions=[exp.column("definition_key"), exp.column("profile_id")])
                )
            )
            .from_(delivery.changes)
            .where(exp.In(this=exp.column("definition_key"), expressions=keys))
        )
        return int(self.warehouse.fetchall(query)[0][0])


class CatchUp:
    """After a run's commit: brings every destination up to the space's latest generation."""

    def __init__(
        self,
        space: Space,
        warehouse: Warehouse,
        compiled: CompiledSpace,
        connectors: Sequence[Connector],
        console: Console,
    ) -> None:
        self.space = space
        self.warehouse = warehouse
        self.compiled = compiled
        self.connectors = connectors
        self.store = StateStore(warehouse, space.output_schema)
        self.log = DeliveryLog(warehouse, space.output_schema)
        self.deliverer = Deliverer(space, warehouse, console)

    def routed(self, connector: Connector) -> list[CompiledDefinition]:
        return [d for d in self.compiled.definitions if routes_to(d, connector)]

    def run(self, resync: Sequence[str] = (), computed: str | None = None) -> dict[str, DestinationResult]:
        """Every destination up to the latest run; `computed`: the id of the run this connection computed,
        whose changes are still in `diff.CHANGES` (read from there rather than copied from the outbox)."""
        self.computed = computed
        latest = self.store.runs(1, statuses=("succeeded",))
        if not latest:
            return {}
        head = PendingRun(latest[0].run_id, latest[0].generation, latest[0].as_of)
        self.log.ensure(self.store, {c.destination: [d.key for d in self.routed(c)] for c in self.connectors})
        for destination in resync:
            self.log.forget(destination)
        cursors = self.log.cursors()
        results = {}
        for connector in self.connectors:
            taken = cursors.get(connector.destination, {})
            resent = connector.destination in resync
            results[connector.destination] = self._destination(connector, taken, head, resent)
        self._prune(head.generation)
        return results

    def _destination(
        self, connector: Connector, taken: dict[str, int], head: PendingRun, resync: bool
    ) -> DestinationResult:
        result = DestinationResult()
        routed = self.routed(connector)
        behind = {d.key: taken[d.key] for d in routed if d.key in taken and taken[d.key] < head.generation}
        fresh = [d for d in routed if d.key not in taken]
        if behind:
            for run in self.store.outbox_runs(after=min(behind.values()), through=head.generation):
                keys = [k for k, generation in behind.items() if generation < run.generation]
                changes = diff.CHANGES if run.run_id == self.computed else CATCH_UP
                if changes == CATCH_UP:
                    self.store.restore(run, CATCH_UP, keys)
                definitions = [d for d in routed if d.key in keys]
                if not self._deliver(connector, definitions, run, "run", result, changes):
                    return result
                result.runs.append(run.generation)
                behind.update(dict.fromkeys(keys, run.generation))
            with self.warehouse.transaction():  # runs without changes for them
                self.log.advance(connector.destination, list(behind), head.generation)
        if fresh:
            current = self.store.current_values(diff.definitions_relation(self.space.name, fresh))
            generation = self.log.resync_marker(connector.destination, head) if resync else None
            backfill = diff.changes(self.space.name, fresh, self.store.empty(), generation, current)
            self.warehouse.create_temp_table(CATCH_UP, backfill)
            if self._deliver(connector, fresh, head, "resync" if resync else "backfill", result):
                result.backfilled = [d.key for d in fresh]
        return result

    def _deliver(
        self,
        connector: Connector,
        definitions: list[CompiledDefinition],
        run: PendingRun,
        kind: str,
        result: DestinationResult,
        changes: str = CATCH_UP,
    ) -> bool:
        """One delivery of one run (or of the current state) to one destination; False when it failed."""
        started = time.monotonic()
        delivery = self.deliverer.delivery(connector, definitions, run.as_of, changes)
        what = f"run {run.generation}" if kind == "run" else f"the state as of run {run.generation} ({kind})"
        label = f"{connector.destination}: {what}"
        attempt = DestinationResult()
        try:
            if connector.in_warehouse(self.warehouse):
                connector.prepare(delivery)
                with self.warehouse.transaction():
                    attempt.calls = self.deliverer.send(connector, delivery, label)
                    self._taken(connector, delivery, run, definitions)
            else:
                attempt.calls = self.deliverer.send(connector, delivery, label)
                reached("delivered")
                with self.warehouse.transaction():
                    self._taken(connector, delivery, run, definitions)
        except EngageError as err:
            attempt.error = redact(str(err))
            log.warning(
                "destination %s failed to take %s: %s; it keeps its place and catches up on a later run",
                connector.destination, what, attempt.error,
            )  # fmt: skip
        attempt.rejected = len(delivery.rejections)
        with self.warehouse.transaction():
            self.log.record(connector.destination, run, kind, attempt, time.monotonic() - started)
        result.calls += attempt.calls
        result.rejected += attempt.rejected if attempt.error is None else 0
        result.error = attempt.error
        if attempt.error is None:
            log.info(
                "destination %s took %s: calls=%s rejected=%s",
                connector.destination, what, attempt.calls, attempt.rejected,
            )  # fmt: skip
        return attempt.error is None

    def _taken(
        self, connector: Connector, delivery: Delivery, run: PendingRun, definitions: list[CompiledDefinition]
    ) -> None:
        self.log.reject(connector.destination, run, delivery.rejections)
        self.log.advance(connector.destination, [d.key for d in definitions], run.generation)

    def _prune(self, through: int) -> None:
        """Drops the outbox rows every destination has taken."""
        cursors = self.log.cursors()
        retained: dict[str, int] = {}
        for connector in self.connectors:
            taken = cursors.get(connector.destination, {})
            for definition in self.routed(connector):
                generation = taken.get(definition.key, through)  # none yet: it takes the state
                retained[definition.key] = min(retained.get(definition.key, through), generation)
        with self.warehouse.transaction():
            self.store.prune_outbox(through, retained)
