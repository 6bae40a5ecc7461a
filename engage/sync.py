"""One run of one space, the only place that knows the order of the stages:

definitions → compile → run in the warehouse → diff → outbox → state → connectors.

Everything that can be wrong with the user's input is found before the first statement runs (exit 2).
A run commits its changes to the outbox, then advances the state in one transaction with the outputs of
the in-warehouse destinations that are up to date; a failure anywhere before that commit leaves outputs
and state as they were. Every other destination then takes the run from the outbox on its own
(`delivery.py`): one that fails holds back neither the state nor the others, and catches up later.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlglot import exp

from engage import diff
from engage.catalog import Catalog
from engage.compile.compiler import CompiledSpace, compile_space
from engage.config import DestinationConfig, Project, Space
from engage.connector import Connector, Delivery, load_connector
from engage.console import Console, NoopConsole, TimedConsole
from engage.definitions.loader import LoadedDefinition, load_definitions
from engage.definitions.references import reference_errors
from engage.delivery import CatchUp, Deliverer, DeliveryLog, DestinationResult, routes_to
from engage.errors import (
    ConfigError,
    DataError,
    EngageError,
    InputError,
    RunError,
    WarehouseError,
    raise_all,
)
from engage.failpoints import reached
from engage.freshness import Inputs, observe, unchanged
from engage.identity import ProfileResolver, identity_errors, materialize_identity, resolver_for
from engage.lease import Holder, Lease, held
from engage.retry import with_retries
from engage.secrets import redact_json
from engage.state import PendingRun, RunRecord, StateStore
from engage.warehouse import Warehouse, open_warehouse
from engage.warehouse.capabilities import capabilities_for

log = logging.getLogger("engage.sync")


@dataclass
class DefinitionCounts:
    key: str
    kind: str
    entered: int = 0
    exited: int = 0
    changed: int = 0
    size: int = 0  # members (audiences) or profiles with a value (traits) after the run


@dataclass
class RunSummary:
    run_id: str
    space: str
    as_of: datetime
    generation: int
    dry_run: bool
    definitions: list[DefinitionCounts] = field(default_factory=list)
    destinations: dict[str, int] = field(default_factory=dict)  # calls (or rows) each destination took
    failed: dict[str, str] = field(default_factory=dict)  # destination → why it took nothing this time
    rejected: dict[str, int] = field(default_factory=dict)  # destination → calls it refused for good
    seconds: float = 0.0
    unchanged_since: str | None = None  # run id whose results provably still hold (nothing was computed)
    next_change: str | None = None  # ISO time the results next change with no new data (freshness.py)

    @property
    def entered(self) -> int:
        return sum(d.entered for d in self.definitions)

    @property
    def exited(self) -> int:
        return sum(d.exited for d in self.definitions)

    @property
    def changed(self) -> int:
        return sum(d.changed for d in self.definitions)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["as_of"] = self.as_of.isoformat()
        status = "unchanged" if self.unchanged_since else "succeeded"
        data.update(entered=self.entered, exited=self.exited, changed=self.changed, status=status)
        clean: dict[str, Any] = redact_json(data)
        return clean

    def took(self, results: dict[str, DestinationResult]) -> None:
        """Adds what each destination took after the run's commit."""
        for name, result in results.items():
            if result.calls or name not in self.destinations:
                self.destinations[name] = self.destinations.get(name, 0) + result.calls
            if result.rejected:
                self.rejected[name] = self.rejected.get(name, 0) + result.rejected
            if result.error is not None:
                self.failed[name] = result.error


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def parse_as_of(text: str | None) -> datetime:
    """`--as-of`: an ISO time (UTC when no offset is given); default now, to the second."""
    if text is None:
        return utc_now().replace(microsecond=0)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise InputError(f"--as-of: not an ISO time: {text!r}") from err
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


@dataclass
class PreparedSpace:
    """A space whose input is valid: definitions loaded and resolved against the warehouse catalog."""

    space: Space
    warehouse: Warehouse
    definitions: list[LoadedDefinition]
    catalog: Catalog
    connectors: list[Connector]

    def compile(self, as_of: datetime, dialect: str | None = None) -> CompiledSpace:
        """Compiles the space; SQL-trait column types come from the warehouse when it speaks `dialect`."""
        types = {
            d.key: self.warehouse.query_columns(d.query)
            for d in self.definitions
            if d.query is not None and dialect in (None, self.warehouse.dialect)
        }
        caps = capabilities_for(dialect) if dialect else self.warehouse.capabilities
        return compile_space(self.definitions, self.catalog, self.resolver, as_of, types, caps)

    @property
    def resolver(self) -> ProfileResolver:
        return resolver_for(self.space)


@contextmanager
def prepare(project: Project, space_name: str, *, read_only: bool = False) -> Iterator[PreparedSpace]:
    """Validates a space against its warehouse and yields it with an open connection. No SQL but
    catalog reads runs here."""
    space = project.space(space_name)
    problems: list[InputError] = []
    definitions = load_definitions(space.definitions_dir, project.root, space.config.warehouse.type, problems)
    connectors = [_connector(space, name, config) for name, config in space.config.destinations.items()]
    if not _database_exists(space):
        raise_all(problems)  # the definitions' own errors first, then the missing database
    _require_database(space)
    warehouse = open_warehouse(space, read_only=read_only)
    try:
        catalog = warehouse.describe(space.config.sources)
        missing = [s for s in space.config.sources if not catalog.source_exists(s)]
        if missing:
            raise WarehouseError(
                f"source schema {', '.join(missing)} not found in the warehouse ({warehouse.location});"
                " run `engage demo` for sample data",
                space.locate("sources"),
            )
        problems.extend(identity_errors(space, warehouse, catalog))
        problems.extend(_selective_sync_errors(space, definitions))
        destinations = list(space.config.destinations)
        problems.extend(reference_errors(definitions, catalog, destinations, complete=not problems))
        raise_all(problems)
        for connector in connectors:
            connector.check(warehouse)
        yield PreparedSpace(space, warehouse, definitions, catalog, connectors)
    finally:
        warehouse.close()


def _selective_sync_errors(space: Space, definitions: list[LoadedDefinition]) -> list[InputError]:
    """A key selective sync names that no definition has (a glob may match nothing: it is a rule)."""
    keys = {d.key for d in definitions}
    problems: list[InputError] = []
    for name, config in space.config.destinations.items():
        chosen = config.selective_sync.definitions
        for field_name, patterns in (("include", chosen.include), ("exclude", chosen.exclude)):
            for index, pattern in enumerate(patterns):
                if not any(c in pattern for c in "*?[") and pattern not in keys:
                    where = ("destinations", name, "selective_sync", "definitions", field_name, index)
                    problems.append(ConfigError(f"unknown definition '{pattern}'", space.locate(*where)))
    return problems


def _connector(space: Space, name: str, config: DestinationConfig) -> Connector:
    try:
        connector_type = load_connector(config.type)
    except InputError as err:
        raise ConfigError(err.message, space.locate("destinations", name, "type")) from err
    return connector_type(name, config, space)


def _database_exists(space: Space) -> bool:
    config = space.config.warehouse
    return config.type != "duckdb" or space.resolve(config.path).exists()


def _require_database(space: Space) -> None:
    """An embedded warehouse file that does not exist holds no sources: say so, and create nothing."""
    config = space.config.warehouse
    if config.type == "duckdb" and not _database_exists(space):
        raise ConfigError(
            f"warehouse file {config.path} does not exist; run `engage demo` to create sample data",
            space.locate("warehouse", "path"),
        )


def open_writable(space: Space) -> Warehouse:
    """A connection to an existing warehouse that may write (`engage identity`)."""
    _require_database(space)
    return open_warehouse(space)


def open_readonly(space: Space) -> Warehouse:
    """A connection that cannot write (validate, compile, status)."""
    _require_database(space)
    return open_warehouse(space, read_only=True)


def run_space(
    project: Project,
    space_name: str,
    *,
    as_of: datetime | None = None,
    dry_run: bool = False,
    full_refresh: bool = False,
    console: Console | None = None,
    resync: Sequence[str] = (),
) -> RunSummary:
    """Runs one space once: computes every definition as of `as_of`, advances the state, and brings every
    destination up to date (`resync`: these destinations take the current state again).

    Unless `full_refresh`, a run that provably cannot change anything (see `freshness.py`) stops after
    its metadata checks. A run that fails on a transient error is tried again (`retry.py`)."""
    console = console or NoopConsole()
    moment = as_of or parse_as_of(None)
    space_config = project.space(space_name).config
    for name in resync:
        if name not in space_config.destinations:
            known = ", ".join(space_config.destinations) or "none"
            raise ConfigError(f"--resync: space {space_name} has no destination '{name}' (it has: {known})")

    def attempt() -> RunSummary:
        with prepare(project, space_name) as prepared:
            if dry_run:  # writes nothing, so needs no lease
                _require_identity_tables(prepared)
                return Run(prepared, moment, dry_run, console, full_refresh).execute()
            space = prepared.space
            run_id = uuid.uuid4().hex
            ttl = timedelta(seconds=space.config.lease_ttl)
            lease = Lease(prepared.warehouse, space.output_schema, space.name, ttl)
            # The lease before anything is read: the generation, and so the message ids, come after it.
            with held(lease, Holder.this_process(run_id), utc_now()):
                reached("lease_taken")
                _materialize_identity(prepared, console, full_refresh)
                pending = StateStore(prepared.warehouse, space.output_schema).pending()
                if pending is not None:
                    Run(prepared, pending.as_of, False, console, False, pending).resume()
                summary = Run(prepared, moment, dry_run, console, full_refresh, run_id=run_id).execute()
                with console.stage("deliver"):
                    compiled = prepared.compile(moment)
                    catch_up = CatchUp(space, prepared.warehouse, compiled, prepared.connectors, console)
                    computed = None if summary.unchanged_since else summary.run_id
                    summary.took(catch_up.run(resync, computed))
            reached("released")
            if summary.failed:
                log.warning(
                    "space %s: %s took nothing this time and will catch up on a later run",
                    space.name, ", ".join(f"{d} ({e})" for d, e in summary.failed.items()),
                )  # fmt: skip
            return summary

    return with_retries(attempt, project.space(space_name).config.retry, f"space {space_name}")


def _materialize_identity(prepared: PreparedSpace, console: Console, full_refresh: bool) -> None:
    """Brings the identity tables up to date before anything is computed from them (SPEC §6)."""
    if prepared.space.identity_schema is None:
        return
    with console.stage("resolve identity"):
        counts = materialize_identity(
            prepared.space, prepared.warehouse, prepared.catalog, full_refresh=full_refresh, depth=False
        )
    if counts is not None:
        log.info(
            "identity space=%s profiles=%s ids=%s merged=%s external_ids=%s rows_read=%s full=%s",
            prepared.space.name, counts.profiles, counts.segment_ids, counts.merged, counts.external_ids,
            counts.new_rows, counts.full,
        )  # fmt: skip


def _require_identity_tables(prepared: PreparedSpace) -> None:
    """A dry run writes nothing, so it reads the identity tables as the last sync or `engage identity`
    left them; there must be some."""
    schema = prepared.space.identity_schema
    if schema is not None and not prepared.warehouse.table_columns(schema, "id_graph"):
        raise ConfigError(
            f"a dry run reads the identity tables in {schema}, and there are none yet: run `engage identity"
            f" --space {prepared.space.name}` (or a sync) first",
            prepared.space.locate("identity"),
        )


def materialize_current(warehouse: Warehouse, compiled: CompiledSpace, console: Console) -> None:
    """Runs a space's SQL traits (checking their identifiers) and its current-values query into
    temporary tables of this connection: `__engage_current` holds one row per profile."""
    for item in compiled.sql_traits:
        with console.stage(f"SQL trait {item.definition.key}"):
            warehouse.create_temp_table(item.table, item.query)
            _check_sql_trait(warehouse, item.table, item.identifier, item.definition)
    with console.stage("compute audiences and traits"):
        warehouse.create_temp_table(diff.CURRENT, compiled.query)


def _check_sql_trait(warehouse: Warehouse, table: str, identifier: str, loaded: LoadedDefinition) -> None:
    column = exp.column(identifier)
    nulls, duplicates = warehouse.fetchall(
        exp.select(
            exp.func("COALESCE", exp.func("SUM", exp.case().when(column.is_(exp.null()), 1).else_(0)), 0),
            exp.Count(this=column) - exp.Count(this=exp.Distinct(expressions=[column])),
        ).from_(table)
    )[0]
    where = loaded.locate("sql")
    if nulls:
        raise DataError(f"{where}: SQL trait '{loaded.key}' returned {nulls} rows with a null {identifier}")
    if duplicates:
        raise DataError(
            f"{where}: SQL trait '{loaded.key}' returned {duplicates} duplicate {identifier} values"
        )


class Run:
    def __init__(
        self,
        prepared: PreparedSpace,
        as_of: datetime,
        dry_run: bool,
        console: Console,
        full_refresh: bool,
        pending: PendingRun | None = None,
        *,
        run_id: str | None = None,
    ) -> None:
        """A new run, or (`pending`) the completion of one that died delivering its staged changes."""
        self.prepared = prepared
        self.full_refresh = full_refresh
        self.inputs: Inputs | None = None
        self.space = prepared.space
        self.warehouse = prepared.warehouse
        self.as_of = as_of
        self.dry_run = dry_run
        self.console = TimedConsole(console)
        self.state = StateStore(self.warehouse, self.space.output_schema)
        self.started = utc_now()
        self.run_id = pending.run_id if pending else run_id or uuid.uuid4().hex
        self.generation = pending.generation if pending else self.state.next_generation()

    def execute(self) -> RunSummary:
        clock = time.monotonic()
        summary = RunSummary(self.run_id, self.space.name, self.as_of, self.generation, self.dry_run)
        try:
            with self.console.stage("compile"):
                compiled = self.prepared.compile(self.as_of)
            with self.console.stage("check for new data"):
                previous = self._unchanged_since(compiled)
            summary.next_change = self.inputs.next_change if self.inputs else None
            if previous is not None:
                summary.unchanged_since = previous.run_id
                summary.definitions = [
                    DefinitionCounts(d.key, d.kind, size=previous.summary.get(d.key, {}).get("size", 0))
                    for d in compiled.definitions
                ]
                if not self.dry_run:
                    self.state.record_run(self._record("unchanged", summary, None))
                summary.seconds = round(time.monotonic() - clock, 3)
                log.info("run %s space=%s: nothing changed since run %s; skipped", self.run_id,
                         self.space.name, previous.run_id)  # fmt: skip
                return summary
            self._compute(compiled)
            reached("computed")
            summary.definitions = self._counts(compiled)
            if not self.dry_run:
                summary.destinations = self._deliver_and_advance(compiled, summary)
        except RunError as err:
            if not self.dry_run:
                self._record_failure(err)
            raise
        summary.seconds = round(time.monotonic() - clock, 3)
        log.info(
            "run %s space=%s generation=%s as_of=%s entered=%s exited=%s changed=%s seconds=%s dry_run=%s",
            self.run_id, self.space.name, self.generation, self.as_of.isoformat(), summary.entered,
            summary.exited, summary.changed, summary.seconds, self.dry_run,
        )  # fmt: skip
        return summary

    def resume(self) -> RunSummary:
        """Finishes a run that died after staging its changes: sends them again (same message ids, so
        destinations drop what they already have) and advances the state, as that run would have."""
        clock = time.monotonic()
        summary = RunSummary(self.run_id, self.space.name, self.as_of, self.generation, False)
        compiled = self.prepared.compile(self.as_of)
        pending = PendingRun(self.run_id, self.generation, self.as_of)
        keys = [d.key for d in compiled.definitions]
        self.state.restore(pending, diff.CHANGES, keys)
        summary.definitions = self._counts(compiled, sizes=False)
        summary.destinations = self._deliver_and_advance(compiled, summary, staged=True)
        summary.seconds = round(time.monotonic() - clock, 3)
        log.warning(
            "run %s space=%s generation=%s as_of=%s died after staging its changes; finished now:"
            " entered=%s exited=%s changed=%s",
            self.run_id, self.space.name, self.generation, self.as_of.isoformat(), summary.entered,
            summary.exited, summary.changed,
        )  # fmt: skip
        return summary

    def _unchanged_since(self, compiled: CompiledSpace) -> RunRecord | None:
        """The last computing run, when its results provably still hold (freshness.py): compared with the
        latest run, whose inputs may be those of a run that found nothing to do."""
        identity = self.prepared.resolver.signature(self.warehouse)
        self.inputs = observe(self.warehouse, self.prepared.catalog, compiled, identity)
        if self.full_refresh:
            return None
        last = self.state.runs(1, statuses=("succeeded", "unchanged"))
        if not last or last[0].inputs is None:
            return None
        previous = Inputs.from_json(last[0].inputs)
        if not unchanged(previous, self.inputs, self.warehouse, self.prepared.catalog, compiled):
            return None
        computed = self.state.runs(1, statuses=("succeeded",))
        return computed[0] if computed else None

    def _compute(self, compiled: CompiledSpace) -> None:
        materialize_current(self.warehouse, compiled, self.console)
        with self.console.stage("diff against state"):
            self.warehouse.create_temp_table(diff.CURRENT_LONG, diff.current_long(compiled.definitions))
            changes = diff.changes(
                self.space.name,
                compiled.definitions,
                self.state.previous(self.prepared.resolver.graph),
                self.generation,
            )
            self.warehouse.create_temp_table(diff.CHANGES, changes)

    def _counts(self, compiled: CompiledSpace, sizes: bool = True) -> list[DefinitionCounts]:
        """Entered/exited/changed per definition, and (`sizes`) its members or values after the run."""
        counts = {d.key: DefinitionCounts(d.key, d.kind) for d in compiled.definitions}
        rows = self.warehouse.fetchall(
            exp.select(
                "definition_key", "call", exp.Count(this=exp.Distinct(expressions=[exp.column("profile_id")]))
            )
            .from_(diff.CHANGES)
            .group_by("definition_key", "call")
        )
        for key, call, number in rows:
            entry = counts[key]
            if call == "entered":
                entry.entered = number
            elif call == "exited":
                entry.exited = number
            else:
                entry.changed = number
        if not sizes:
            return list(counts.values())
        present = self.warehouse.fetchall(
            exp.select("definition_key", exp.Count(this=exp.Distinct(expressions=[exp.column("profile_id")])))
            .from_(diff.CURRENT_LONG)
            .where(exp.column("value_text").is_(exp.null()).not_())
            .group_by("definition_key")
        )
        for key, number in present:
            counts[key].size = number
        return list(counts.values())

    def _in_step(self, compiled: CompiledSpace, log: DeliveryLog) -> list[tuple[Connector, Delivery]]:
        """The in-warehouse destinations' share of this run: the definitions each has taken every run of
        so far. The others (new to it, or behind) take the state or their missed runs after the commit."""
        deliverer = Deliverer(self.space, self.warehouse, self.console)
        cursors = log.cursors()
        deliveries = []
        for connector in self.prepared.connectors:
            if not connector.in_warehouse(self.warehouse):
                continue
            taken = cursors.get(connector.destination, {})
            current = [
                d
                for d in compiled.definitions
                if routes_to(d, connector) and taken.get(d.key) == self.generation - 1
            ]
            if current:
                deliveries.append(
                    (connector, deliverer.delivery(connector, current, self.as_of, diff.CHANGES))
                )
        return deliveries

    def _deliver_and_advance(
        self, compiled: CompiledSpace, summary: RunSummary, staged: bool = False
    ) -> dict[str, int]:
        """Stages the changes in the outbox (unless `staged`: a resumed run's are), then writes the
        up-to-date in-warehouse destinations and advances the state in one transaction."""
        run = PendingRun(self.run_id, self.generation, self.as_of)
        written: dict[str, int] = {}
        self.state.ensure()
        log = DeliveryLog(self.warehouse, self.space.output_schema)
        routed = {
            c.destination: [d.key for d in compiled.definitions if routes_to(d, c)]
            for c in self.prepared.connectors
        }
        log.ensure(self.state, routed)
        in_step = self._in_step(compiled, log)
        if not staged:
            self.state.stage(diff.CHANGES, run)
        reached("staged")
        with self.console.stage("write outputs and advance state"):
            for connector, delivery in in_step:
                connector.prepare(delivery)
            reached("prepared")
            graph = self.prepared.resolver.graph
            if graph is not None:
                self.state.prepare_merges(graph)
            deliverer = Deliverer(self.space, self.warehouse, self.console)
            with self.warehouse.transaction():
                for connector, delivery in in_step:
                    written[connector.destination] = deliverer.send(
                        connector, delivery, connector.destination
                    )
                    log.advance(connector.destination, [d.key for d in delivery.definitions], self.generation)
                reached("written")
                self.state.advance(
                    diff.CHANGES,
                    diff.definitions_relation(self.space.name, compiled.definitions),
                    self.generation,
                    utc_now(),
                    graph,
                )
                self.state.record_run(self._record("succeeded", summary, None))
                reached("advanced")
            reached("committed")
        return written

    def _record(self, status: str, summary: RunSummary | None, error: str | None) -> RunRecord:
        return RunRecord(
            run_id=self.run_id,
            space=self.space.name,
            generation=self.generation,
            as_of=self.as_of,
            started_at=self.started,
            finished_at=utc_now(),
            status=status,
            entered=summary.entered if summary else 0,
            exited=summary.exited if summary else 0,
            changed=summary.changed if summary else 0,
            summary={d.key: asdict(d) for d in summary.definitions} if summary else {},
            error=error,
            inputs=self.inputs.to_json() if self.inputs and status != "failed" else None,
            stages=dict(self.console.seconds),
        )

    def _record_failure(self, err: RunError) -> None:
        try:
            self.state.ensure()
            self.state.record_run(self._record("failed", None, str(err)))
        except EngageError:
            log.exception("could not record the failed run %s", self.run_id)
