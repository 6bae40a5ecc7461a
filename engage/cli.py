"""The `engage` command. Each command is a few lines over `sync.py`, `config.py` and `state.py`.

Exit codes: 0 success, 1 a run failed, 2 invalid input (the message names file, line and field).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console as RichTerminal
from rich.markup import escape
from rich.table import Table

from engage import __version__
from engage.config import ProfilesSyncIdentity, Project, find_project_root, load_project
from engage.console import console_for
from engage.delivery import DeliveryLog, DestinationStatus
from engage.errors import ConfigError, EngageError, InputErrors, raise_all
from engage.freshness import Inputs
from engage.identity import identity_errors, materialize_identity
from engage.lease import Holder, Lease, held
from engage.scheduler import RunLog, Scheduler
from engage.secrets import redact, redact_json
from engage.state import RunRecord, StateStore
from engage.sync import (
    RunSummary,
    open_readonly,
    open_writable,
    parse_as_of,
    prepare,
    run_space,
    utc_now,
)
from engage.warehouse.capabilities import BY_DIALECT

F = TypeVar("F", bound=Callable[..., Any])
DIALECTS = sorted(BY_DIALECT)


def _fail(err: EngageError, as_json: bool) -> None:
    lines = [redact(str(e)) for e in (err.errors if isinstance(err, InputErrors) else [err])]
    if as_json:
        click.echo(json.dumps({"status": "failed", "exit_code": err.exit_code, "errors": lines}, indent=2))
    else:
        for line in lines:
            click.secho(f"error: {line}", fg="red", err=True)
    sys.exit(err.exit_code)


def handles_errors(command: F) -> F:
    """Renders every engage error once, as red lines (or a JSON object under --json), with its exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EngageError as err:
            _fail(err, bool(kwargs.get("as_json")))

    return wrapper  # type: ignore[return-value]


def _root(ctx: click.Context) -> Path:
    root: Path | None = ctx.obj["project"]
    return root if root is not None else find_project_root(Path.cwd())


def _project(ctx: click.Context) -> Project:
    return load_project(_root(ctx))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="engage")
@click.option(
    "--project",
    type=click.Path(file_okay=False, path_type=Path),
    help="Project root (holds config/engage.yaml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every SQL statement and its duration.")
@click.pass_context
def main(ctx: click.Context, project: Path | None, verbose: bool) -> None:
    """engage: audiences and computed traits from your warehouse, synced as Segment-spec calls.

    Definitions (YAML) compile to SQL that runs in the warehouse; every run diffs against the last
    one and sends only the changes, as identify/track calls and engage_<space> tables.
    """
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("engage").setLevel(logging.DEBUG if verbose else logging.INFO)
    ctx.obj = {"project": project}


@main.command()
@click.option("--space", default=None, help="Validate one space (default: all).")
@click.option("--json", "as_json", is_flag=True, help="List every definition with its key and kind, as JSON.")
@click.pass_context
@handles_errors
def validate(ctx: click.Context, space: str | None, as_json: bool) -> None:
    """Check config and definitions, including events, traits and audiences against the warehouse."""
    project = _project(ctx)
    report: dict[str, list[dict[str, Any]]] = {}
    for name in [space] if space else list(project.config.spaces):
        with prepare(project, name, read_only=True) as prepared:
            report[name] = [
                {"key": d.key, "kind": d.kind, "name": d.definition.name, "file": str(d.document.path),
                 "line": d.document.start_line, "trait_keys": d.trait_keys}
                for d in prepared.definitions
            ]  # fmt: skip
    if as_json:
        click.echo(json.dumps({"status": "valid", "spaces": report}, indent=2))
        return
    for name, definitions in report.items():
        click.echo(f"space {name}: {len(definitions)} definitions valid")
        for d in definitions:
            click.echo(f"  {d['kind']:<10} {d['key']:<32} {d['file']}:{d['line']}")


@main.command(name="compile")
@click.option("--space", default="default", show_default=True)
@click.option("--dialect", type=click.Choice(DIALECTS), default=None, help="Default: the warehouse's.")
@click.option("--as-of", default=None, help="ISO time the query computes as of (default: now).")
@click.pass_context
@handles_errors
def compile_command(ctx: click.Context, space: str, dialect: str | None, as_of: str | None) -> None:
    """Print the SQL a sync runs: SQL traits first, then the current-values query."""
    project = _project(ctx)
    with prepare(project, space, read_only=True) as prepared:
        compiled = prepared.compile(parse_as_of(as_of), dialect)
    for title, sql in compiled.statements():
        click.echo(f"-- {title}\n{sql};\n")


@main.command()
@click.option("--space", default="default", show_default=True)
@click.option("--as-of", default=None, help="ISO time to compute as of (default: now).")
@click.option("--dry-run", is_flag=True, help="Compute and report counts; write nothing.")
@click.option(
    "--full-refresh", is_flag=True, help="Recompute even when no row, definition or window boundary changed."
)
@click.option(
    "--resync",
    multiple=True,
    metavar="DESTINATION",
    help="Send this destination the current state again, as on a first sync (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.pass_context
@handles_errors
def sync(
    ctx: click.Context,
    space: str,
    as_of: str | None,
    dry_run: bool,
    full_refresh: bool,
    resync: tuple[str, ...],
    as_json: bool,
) -> None:
    """Compute every definition of a space, advance its state, and bring every destination up to date.

    Each destination has its own place in the runs: one that fails (exit 1) holds back neither the state
    nor the others, and receives every run it missed, in order, on a later sync. A destination or
    definition new to a destination first receives the current state."""
    if resync and dry_run:
        raise click.UsageError("--resync sends calls; it cannot be combined with --dry-run")
    project = _project(ctx)
    summary = run_space(
        project,
        space,
        as_of=parse_as_of(as_of),
        dry_run=dry_run,
        full_refresh=full_refresh,
        console=console_for(as_json),
        resync=resync,
    )
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
    else:
        _print_summary(summary)
    if summary.failed:
        sys.exit(1)


def _print_summary(summary: RunSummary) -> None:
    terminal = RichTerminal()
    if summary.unchanged_since:
        terminal.print(
            f"space {summary.space} as of {summary.as_of.isoformat()}: nothing can have changed since run"
            f" {summary.unchanged_since} (no new rows, same definitions, no window boundary crossed);"
            f" nothing computed in {summary.seconds:.2f}s. --full-refresh recomputes anyway."
        )
        _print_destinations(terminal, summary)
        return
    title = f"space {summary.space} as of {summary.as_of.isoformat()}" + (
        " (dry run: nothing written)" if summary.dry_run else ""
    )
    table = Table(title=title, title_justify="left")
    for column in ("definition", "kind", "size", "entered", "exited", "changed"):
        table.add_column(column, justify="left" if column in ("definition", "kind") else "right")
    for d in summary.definitions:
        table.add_row(d.key, d.kind, str(d.size), str(d.entered), str(d.exited), str(d.changed))
    terminal.print(table)
    terminal.print(
        f"entered {summary.entered}, exited {summary.exited}, changed {summary.changed}"
        f" in {summary.seconds:.2f}s (generation {summary.generation})"
    )
    _print_destinations(terminal, summary)


def _print_destinations(terminal: RichTerminal, summary: RunSummary) -> None:
    if summary.dry_run:
        return
    sent = ", ".join(f"{name}: {count}" for name, count in summary.destinations.items()) or "nothing"
    terminal.print(f"written: {sent}", markup=False)
    for name, count in summary.rejected.items():
        terminal.print(f"{name}: {count} calls rejected for good (engage status shows them)", markup=False)
    for name, error in summary.failed.items():
        terminal.print(
            f"[red]{name} failed[/red]: {escape(error)}; it keeps its place and catches up on a later sync"
        )


@main.command()
@click.option(
    "--space",
    "spaces",
    multiple=True,
    help="Schedule only this space (repeatable). Default: every space with a schedule.",
)
@click.option("--once", is_flag=True, help="Run each scheduled space once, then exit (1 if one failed).")
@click.option("--watch", is_flag=True, help="Reload when the config or a definition file changes.")
@click.option(
    "--grace",
    default=4.0,
    show_default=True,
    help="Seconds a run in progress may take to finish after SIGTERM/SIGINT before it is abandoned.",
)
@click.option("--json-logs", is_flag=True, help="Log each run as a JSON object instead of key=value pairs.")
@click.pass_context
@handles_errors
def scheduler(
    ctx: click.Context, spaces: tuple[str, ...], once: bool, watch: bool, grace: float, json_logs: bool
) -> None:
    """Run spaces on their `schedule` (a cron expression, or {every: 15m}) until SIGTERM or SIGINT.

    A space never overlaps itself, and runs missed while it was busy collapse into one. SIGHUP reloads
    the config; a run in progress at SIGTERM gets --grace seconds, then is abandoned uncommitted."""
    daemon = Scheduler(
        _root(ctx), spaces, grace=grace, run_log=RunLog(as_json=json_logs), watch=2.0 if watch else None
    )
    if once:
        sys.exit(1 if daemon.run_once() else 0)
    daemon.serve()


@main.command()
@click.option("--space", default="default", show_default=True)
@click.option("--limit", default=10, show_default=True, help="How many recent runs to show.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def status(ctx: click.Context, space: str, limit: int, as_json: bool) -> None:
    """Show recent runs: status, duration, entered/exited/changed per definition, errors."""
    selected = _project(ctx).space(space)
    warehouse = open_readonly(selected)
    try:
        store = StateStore(warehouse, selected.output_schema)
        runs = store.runs(limit)
        latest = store.next_generation() - 1 if runs else 0
        names = list(selected.config.destinations)
        destinations = DeliveryLog(warehouse, selected.output_schema).status(names, latest) if runs else []
    finally:
        warehouse.close()
    if as_json:
        click.echo(json.dumps(redact_json({
            "runs": [
                {**r.__dict__, "as_of": r.as_of.isoformat(), "started_at": r.started_at.isoformat(),
                 "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                 "next_change": _next_change(r)}
                for r in runs
            ],
            "destinations": [d.to_json() for d in destinations],
        }), indent=2))  # fmt: skip
        return
    if not runs:
        click.echo(f"space {space}: no runs yet")
        return
    terminal = RichTerminal()
    _print_runs(terminal, space, runs)
    _print_destination_status(terminal, destinations)


def _print_destination_status(terminal: RichTerminal, destinations: list[DestinationStatus]) -> None:
    table = Table(title="destinations", title_justify="left")
    for column in ("destination", "at generation", "runs behind", "rejected", "last attempt", "error"):
        table.add_column(column, overflow="fold" if column == "error" else "ellipsis")
    for d in destinations:
        last = f"{d.last_status} {d.last_at:%Y-%m-%d %H:%M:%S}" if d.last_at else "never"
        table.add_row(
            d.destination, "-" if d.generation is None else str(d.generation), str(d.lag), str(d.rejected),
            last, escape(redact(d.last_error or "")),
        )  # fmt: skip
    terminal.print(table)


def _print_runs(terminal: RichTerminal, space: str, runs: list[RunRecord]) -> None:
    table = Table(title=f"space {space}: last {len(runs)} runs", title_justify="left")
    for column in ("started", "as of", "gen", "status", "secs", "entered", "exited", "changed", "error"):
        table.add_column(
            column, overflow="fold" if column == "error" else "ellipsis", no_wrap=column != "error"
        )
    for r in runs:
        seconds = (r.finished_at - r.started_at).total_seconds() if r.finished_at else 0.0
        error = (r.error or "").splitlines()[0][:120] if r.error else ""
        table.add_row(
            f"{r.started_at:%Y-%m-%d %H:%M:%S}", f"{r.as_of:%Y-%m-%d %H:%M:%S}", str(r.generation), r.status,
            f"{seconds:.2f}", str(r.entered), str(r.exited), str(r.changed), error,
        )  # fmt: skip
    terminal.print(table)
    latest = runs[0]
    upcoming = next((_next_change(r) for r in runs if r.inputs), None)
    if upcoming:
        terminal.print(f"next change with no new data: {upcoming} UTC (an event crosses a window boundary)")
    if latest.stages:
        stages = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in latest.stages.items())
        terminal.print(f"stages of the latest run: {stages}")
    if latest.summary:
        detail = Table(title="latest run per definition", title_justify="left")
        for column in ("definition", "kind", "size", "entered", "exited", "changed"):
            detail.add_column(column)
        for key, d in sorted(latest.summary.items()):
            detail.add_row(
                key, d["kind"], str(d["size"]), str(d["entered"]), str(d["exited"]), str(d["changed"])
            )
        terminal.print(detail)


@main.command()
@click.option("--space", default="default", show_default=True)
@click.option(
    "--full-refresh", is_flag=True, help="Rebuild from every landed row instead of only the new ones."
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_context
@handles_errors
def identity(ctx: click.Context, space: str, full_refresh: bool, as_json: bool) -> None:
    """Bring the space's identity tables up to date, and nothing else.

    Profiles Sync: id_graph, external_id_mapping and profile_traits from the landed *_updates tables.
    Stitch: id_graph and external_id_mapping from the identifiers seen together in the sources. Only rows
    landed since the last run are read, unless --full-refresh; both end in the same tables. Prints the
    counts: live profiles, ids, merged ids, the longest merge chain, external ids. `engage sync` does this
    first by itself."""
    selected = _project(ctx).space(space)
    schema = selected.identity_schema
    if schema is None:
        raise ConfigError(
            "engage identity needs `identity: {type: profiles_sync, schema: …}` or `{type: stitch}`",
            selected.locate("identity"),
        )
    warehouse = open_writable(selected)
    try:
        catalog = warehouse.describe(selected.config.sources)
        raise_all(identity_errors(selected, warehouse, catalog))
        lease = Lease(
            warehouse, selected.output_schema, selected.name, timedelta(seconds=selected.config.lease_ttl)
        )
        with held(lease, Holder.this_process(uuid.uuid4().hex), utc_now()):
            counts = materialize_identity(selected, warehouse, catalog, full_refresh=full_refresh)
    finally:
        warehouse.close()
    assert counts is not None
    if as_json:
        click.echo(json.dumps(asdict(counts), indent=2))
        return
    click.echo(
        f"space {space}: {counts.profiles} profiles from {counts.segment_ids} ids ({counts.merged}"
        f" merged, longest merge chain {counts.depth}), {counts.external_ids} external ids -> {schema}"
    )


def _next_change(record: RunRecord) -> str | None:
    return Inputs.from_json(record.inputs).next_change if record.inputs else None


@main.command()
@click.option(
    "--space", default="default", show_default=True, help="The space whose warehouse gets the data."
)
@click.option("--profiles", default=2_000, show_default=True)
@click.option("--events", default=30_000, show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.pass_context
@handles_errors
def demo(ctx: click.Context, space: str, profiles: int, events: int, seed: int) -> None:
    """Create Segment-shaped sample sources (website, ios) in the space's DuckDB warehouse.

    Also lands a small Profiles Sync schema (anonymous visits that later merge into signed-up profiles) for
    every space of the project on the same file that resolves identity through Profiles Sync."""
    from engage.demo import generate_demo
    from engage.demo_profiles import generate_profiles_sync
    from engage.warehouse.duckdb import DuckDBWarehouse

    project = _project(ctx)
    selected = project.space(space)
    config = selected.config.warehouse
    if config.type != "duckdb":
        raise EngageError("engage demo writes sample data into a DuckDB warehouse only")
    path = selected.resolve(config.path)
    end = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    warehouse = DuckDBWarehouse(path)
    try:
        result = generate_demo(
            warehouse.connection,
            profiles=profiles,
            events=events,
            end=end,
            seed=seed,
            sources=tuple(selected.config.sources),
        )
        people = max(10, profiles * 3 // 10)
        landed = {
            schema: generate_profiles_sync(
                warehouse.connection, people=people, events=max(events * 4 // 15, people * 3), end=end,
                seed=seed, schema=schema,
            )
            for schema in _profiles_sync_schemas(project, path)
        }  # fmt: skip
    finally:
        warehouse.close()
    click.echo(
        f"sample data in {config.path}: {result.profiles} profiles ({result.identified} identified),"
        f" {result.events} track events, {len(result.tables)} tables in {', '.join(selected.config.sources)}"
    )
    for schema, summary in landed.items():
        click.echo(
            f"Profiles Sync sample in {schema}: {summary.people} people on {summary.segment_ids} segment ids"
            f" ({summary.merged} merged away), {summary.events} events"
        )


def _profiles_sync_schemas(project: Project, path: Path) -> list[str]:
    """The Profiles Sync schemas that spaces on the DuckDB file `path` read."""
    schemas = set()
    for name in project.config.spaces:
        space = project.space(name)
        identity, warehouse = space.config.identity, space.config.warehouse
        if isinstance(identity, ProfilesSyncIdentity) and warehouse.type == "duckdb":
            if space.resolve(warehouse.path) == path:
                schemas.add(identity.schema_)
    return sorted(schemas)


@main.command()
@click.option(
    "--case",
    type=click.Choice(["sync", "identity", "delivery"]),
    default="sync",
    show_default=True,
    help="sync: syncs against a hand-written query; identity: Profiles Sync materialization and a sync"
    " per canonical profile; delivery: --changes changes to the segment destination on loopback.",
)
@click.option(
    "--changes", default=1_000_000, show_default=True, help="delivery: changes in the run (two calls each)."
)
@click.option(
    "--profiles",
    default=1_000_000,
    show_default=True,
    help="Profiles in the generated data (identity: segment ids).",
)
@click.option("--events", default=10_000_000, show_default=True, help="Track calls in the generated data.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Build the throwaway project here (kept) instead of in a temporary folder.",
)
@click.option("--keep", is_flag=True, help="Keep the temporary project folder afterwards.")
@click.option(
    "--memory-limit", default="768MB", show_default=True, help="DuckDB memory_limit of the bench warehouse."
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="DuckDB threads (default: all).")
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="identity: runs of each materialization, from the same data; the target compares their medians.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout.")
def bench(
    case: str,
    changes: int,
    profiles: int,
    events: int,
    workdir: Path | None,
    keep: bool,
    memory_limit: str,
    threads: int | None,
    repeat: int,
    as_json: bool,
) -> None:
    """Benchmark: generated data, timed phases in fresh processes, peak RSS per phase, against targets."""
    from engage.bench import print_report, run_bench
    from engage.bench_identity import print_identity_report, run_identity_bench

    if case == "delivery":
        from engage.bench_delivery import print_report as print_delivery_report
        from engage.bench_delivery import run_delivery_bench

        delivery_report = run_delivery_bench(changes, workdir, keep=keep, memory_limit=memory_limit)
        if as_json:
            click.echo(json.dumps(delivery_report.to_json(), indent=2))
        else:
            print_delivery_report(delivery_report)
        return
    if case == "identity":
        try:
            identity_report = run_identity_bench(
                segment_ids=profiles, events=events, workdir=workdir, keep=keep, memory_limit=memory_limit,
                threads=threads, progress=not as_json, repeat=repeat,
            )  # fmt: skip
        except (RuntimeError, FileNotFoundError, ValueError) as err:
            raise click.ClickException(str(err)) from err
        if as_json:
            click.echo(json.dumps(identity_report.to_json(), indent=2))
        else:
            print_identity_report(identity_report)
        return
    try:
        report = run_bench(
            profiles=profiles,
            events=events,
            workdir=workdir,
            keep=keep,
            memory_limit=memory_limit,
            threads=threads,
            progress=not as_json,
        )
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        print_report(report)


if __name__ == "__main__":  # pragma: no cover
    main()
