"""`engage bench --case identity`: how fast identity resolution is, and what it costs a sync.

A throwaway project (one space `identity_bench` on a DuckDB file, `identity: {type: profiles_sync}`, the
definitions of `benchmarks/identity`) gets a generated Profiles Sync schema (`engage.demo_profiles`: about
1M segment_ids, 30% of them merged away in chains up to 4 deep, 10M events), then these phases, each in a
fresh child process (`engage.bench.run_phase`) so that its wall time and peak RSS are its own:

1. data generation (reported, not part of any target),
2. a full materialization of `id_graph`, `external_id_mapping` and `profile_traits`,
3. 1% more rows landed (new visits, merges, late and duplicate rows),
4. an incremental materialization of those rows,
5. a check that the incremental tables equal a full rebuild (into another schema; not timed),
6. a first sync of the space per canonical profile (its identity step finds nothing new).

Targets (the identity issue): incremental ≤ 0.1× the full materialization, peak RSS ≤ 1 GiB. Both
materializations run `repeat` times (3 by default), each from the same database, and the target compares
their medians: a single run on a small shared machine is off by ±15%.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from engage.bench import (
    DEFAULT_MEMORY_LIMIT,
    RSS_TARGET_MIB,
    Phase,
    Target,
    _connect,
    _phase_sync_space,
    _workdir,
    benchmarks_dir,
    run_plan,
    write_throwaway_project,
)

SPACE = "identity_bench"
SCHEMA, OUTPUT, CHECK = "profiles", "profiles_out", "profiles_check"
AS_OF = datetime(2025, 6, 1)
DAYS = 60
DEFAULT_SEGMENT_IDS = 1_000_000
DEFAULT_EVENTS = 10_000_000
INCREMENTAL_TARGET = 0.1  # incremental materialization of 1% new rows ≤ 0.1 × the full one
DEFAULT_REPEAT = 3
TIMED = ("identity_full", "identity_incremental")
APPENDED_SHARE = 0.01
IDENTITY_TABLES = ("id_graph", "external_id_mapping", "profile_traits")
LABELS = {
    "identity_generate": "data generation",
    "identity_full": "full materialization",
    "identity_append": "land 1% more rows",
    "identity_incremental": "incremental materialization",
    "identity_check": "check: incremental = full",
    "identity_sync": "first sync per canonical profile",
}
PLAN = list(LABELS)


@dataclass
class IdentityBenchReport:
    segment_ids: int
    events: int
    memory_limit: str
    workdir: str
    kept: bool
    phases: dict[str, Phase] = field(default_factory=dict)

    def targets(self) -> list[Target]:
        full = self.phases["identity_full"].seconds
        incremental = self.phases["identity_incremental"].seconds
        measured = [
            p
            for n, p in self.phases.items()
            if n in ("identity_full", "identity_incremental", "identity_sync")
        ]
        heaviest = max(measured, key=lambda p: p.peak_rss_mib)
        return [
            Target(
                "incremental / full materialization",
                round(incremental / full, 3) if full else float("inf"),
                INCREMENTAL_TARGET,
                "×",
                f"{incremental:.2f}s / {full:.2f}s{_medians(self.phases['identity_full'])}",
            ),
            Target(
                "peak RSS",
                heaviest.peak_rss_mib,
                RSS_TARGET_MIB,
                "MiB",
                f"{LABELS[heaviest.name]}, DuckDB memory_limit {self.memory_limit}",
            ),
        ]

    def matched(self) -> bool:
        return bool(self.phases["identity_check"].detail.get("match"))

    def to_json(self) -> dict[str, Any]:
        return {
            "case": "identity",
            "segment_ids": self.segment_ids,
            "events": self.events,
            "memory_limit": self.memory_limit,
            "workdir": self.workdir,
            "kept": self.kept,
            "phases": [
                {
                    "name": p.name,
                    "label": LABELS[p.name],
                    **{k: v for k, v in asdict(p).items() if k != "name"},
                }
                for p in self.phases.values()
            ],
            "targets": [{**asdict(t), "passed": t.passed} for t in self.targets()],
            "incremental_matches_full": self.matched(),
        }


def _medians(phase: Phase) -> str:
    return f", medians of {len(phase.runs)} runs each" if len(phase.runs) > 1 else ""


def write_project(root: Path, memory_limit: str, threads: int | None) -> None:
    """The throwaway project of the identity case: a copy of `benchmarks/identity`, one space resolving
    identity through the generated Profiles Sync schema."""
    import shutil

    def copy(target: Path) -> None:
        shutil.copytree(benchmarks_dir() / "identity", target / "identity")

    space = {
        "sources": [SCHEMA],
        "identity": {"type": "profiles_sync", "schema": SCHEMA, "output_schema": OUTPUT},
        "definitions": "benchmarks/identity",
    }
    write_throwaway_project(root, copy, SPACE, space, memory_limit, threads)


def run_identity_bench(
    *,
    segment_ids: int = DEFAULT_SEGMENT_IDS,
    events: int = DEFAULT_EVENTS,
    workdir: Path | None = None,
    keep: bool = False,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    threads: int | None = None,
    progress: bool = True,
    repeat: int = DEFAULT_REPEAT,
) -> IdentityBenchReport:
    from rich.console import Console as RichTerminal

    terminal = RichTerminal(stderr=True, quiet=not progress)
    with _workdir(workdir, keep) as (root, kept):
        write_project(root, memory_limit, threads)
        scratch = root / ".engage" / "bench-phases"
        scratch.mkdir(parents=True, exist_ok=True)
        report = IdentityBenchReport(segment_ids, events, memory_limit, str(root), kept)
        base = {"root": str(root), "segment_ids": segment_ids, "events": events, "memory_limit": memory_limit}
        base["threads"] = threads
        terminal.print(f"engage bench identity: ~{segment_ids:,} segment ids, {events:,} events, in {root}")
        report.phases = run_plan(PLAN, LABELS, base, scratch, terminal, dict.fromkeys(TIMED, repeat))
        return report


def print_identity_report(report: IdentityBenchReport) -> None:
    import sys

    from rich.console import Console as RichTerminal
    from rich.table import Table

    terminal = RichTerminal(width=None if sys.stdout.isatty() else 132)
    terminal.print(
        f"engage bench identity: ~{report.segment_ids:,} segment ids, {report.events:,} events;"
        f" DuckDB memory_limit {report.memory_limit}"
    )
    phases = Table(title="phases (each in a fresh process)", title_justify="left")
    for column in ("phase", "seconds", "peak RSS MiB", "notes"):
        phases.add_column(column, justify="left" if column in ("phase", "notes") else "right")
    for phase in report.phases.values():
        phases.add_row(LABELS[phase.name], f"{phase.seconds:.2f}", f"{phase.peak_rss_mib:.0f}", _notes(phase))
    terminal.print(phases)
    targets = Table(title="targets (identity issue)", title_justify="left")
    for column in ("target", "measured", "limit", "", "from"):
        targets.add_column(column, justify="right" if column in ("measured", "limit") else "left")
    for target in report.targets():
        verdict = "[green]PASS[/green]" if target.passed else "[red]MISS[/red]"
        targets.add_row(
            target.name, f"{target.measured:g} {target.unit}", f"≤ {target.limit:g} {target.unit}", verdict,
            target.detail,
        )  # fmt: skip
    terminal.print(targets)
    verdict = "[green]yes[/green]" if report.matched() else "[red]NO[/red]"
    terminal.print(f"incremental tables = full rebuild: {verdict}")
    if report.kept:
        terminal.print(f"project kept in {report.workdir}")


def _notes(phase: Phase) -> str:
    detail = phase.detail
    if phase.name == "identity_generate":
        return (
            f"{detail['people']:,} people, {detail['segment_ids']:,} segment ids"
            f" ({detail['merged']:,} merged, chains up to {detail['max_depth']}), {detail['events']:,} events"
        )
    if phase.name == "identity_append":
        return f"+{detail['rows']:,} rows"
    if phase.name in TIMED:
        runs = f"; median of {', '.join(f'{s:.2f}' for s in phase.runs)}" if phase.runs else ""
        return (
            f"{detail['profiles']:,} profiles, {detail['segment_ids']:,} ids, {detail['merged']:,} merged,"
            f" {detail['external_ids']:,} external ids, {detail['new_rows']:,} rows read{runs}"
        )
    if phase.name == "identity_check":
        return "equal" if detail.get("match") else f"differs: {detail.get('differences')}"
    if phase.name == "identity_sync":
        return f"{detail['entered']:,} entered, {detail['changed']:,} trait values"
    return ""


# -- the child: one phase per process ------------------------------------------------------------------------


def _generate(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    from engage.demo_profiles import generate_profiles_sync

    started = time.perf_counter()
    con = _connect(params, limited=False)
    try:
        summary = generate_profiles_sync(
            con, people=int(params["segment_ids"] * 0.7), events=params["events"], end=AS_OF, days=DAYS
        )
    finally:
        con.close()
    detail = asdict(summary)
    return time.perf_counter() - started, detail


def _append(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    from engage.demo_profiles import append_profiles_sync

    started = time.perf_counter()
    con = _connect(params, limited=False)
    try:
        rows = append_profiles_sync(con, share=APPENDED_SHARE, landed=AS_OF + timedelta(hours=1))
    finally:
        con.close()
    return time.perf_counter() - started, {"rows": rows}


def _materialize(params: dict[str, Any], output: str, full_refresh: bool) -> tuple[float, dict[str, Any]]:
    from engage.config import load_project
    from engage.identity_graph import materialize
    from engage.warehouse import open_warehouse

    space = load_project(Path(params["root"])).space(SPACE)
    warehouse = open_warehouse(space)
    try:
        started = time.perf_counter()
        counts = materialize(warehouse, SCHEMA, output, full_refresh=full_refresh, depth=False)
        seconds = time.perf_counter() - started
    finally:
        warehouse.close()
    return seconds, asdict(counts)


def _full(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    return _materialize(params, OUTPUT, full_refresh=True)


def _incremental(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    return _materialize(params, OUTPUT, full_refresh=False)


def _check(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """A full rebuild into another schema, then both tables' rows minus the other's, per table."""
    started = time.perf_counter()
    _materialize(params, CHECK, full_refresh=True)
    con = _connect(params)
    try:
        differences = {
            table: int(
                con.execute(
                    f"SELECT count(*) FROM ((SELECT * FROM {OUTPUT}.{table} EXCEPT ALL"
                    f" SELECT * FROM {CHECK}.{table}) UNION ALL (SELECT * FROM {CHECK}.{table}"
                    f" EXCEPT ALL SELECT * FROM {OUTPUT}.{table}))"
                ).fetchall()[0][0]
            )
            for table in IDENTITY_TABLES
        }
    finally:
        con.close()
    return time.perf_counter() - started, {"match": not any(differences.values()), "differences": differences}


def _sync(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    return _phase_sync_space(params, SPACE, AS_OF + timedelta(hours=2))


PHASES = {
    "identity_generate": _generate,
    "identity_full": _full,
    "identity_append": _append,
    "identity_incremental": _incremental,
    "identity_check": _check,
    "identity_sync": _sync,
}
