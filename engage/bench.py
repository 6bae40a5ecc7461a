"""`engage bench`: how fast and how lean a sync is, against a hand-written query over the same data.

The benchmark builds a throwaway project (one space `bench` on a DuckDB file, sources `website` and `ios`,
the definitions of `benchmarks/definitions`, one in-warehouse destination), lands demo data in it, and runs
these phases, each in a fresh child process so that its wall time and peak RSS are its own:

1. data generation (`engage.demo.generate_demo`; reported, not part of any target),
2. the first full sync at a fixed as-of (the data's end),
3. the hand-written query of `benchmarks/handwritten.sql`, materialized with CREATE TABLE … AS, then a
   check that it equals, per (definition, profile), the state engage's first sync stored,
4. a re-sync with no change (same data, same as-of),
5. 1% more events appended inside the last day (`engage.demo.append_events`), then a re-sync, then the
   same check again (the incremental state must equal a full recomputation).

It prints figures against the targets the benchmark issue sets (first sync ≤ 1.3× the hand-written
query, no-change re-sync ≤ 0.1× the first sync, peak RSS ≤ 1 GiB); it asserts nothing.

A phase runs as `python -m engage.bench <phase> <params.json> <result.json>`; the parent reads the child's
peak RSS from `os.wait4` (POSIX only), so the figure covers the whole process: interpreter, imports, DuckDB.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("engage.bench")

SPACE = "bench"
SOURCES = ("website", "ios")
AS_OF = datetime(2025, 6, 1)  # the data's end; definitions with `between` depend on it
DAYS = 90
SEED = 42
APPEND_SEED = 2025
DEFAULT_PROFILES = 1_000_000
DEFAULT_EVENTS = 10_000_000
DEFAULT_MEMORY_LIMIT = "768MB"
DATABASE = Path(".engage") / "bench.duckdb"
RESULT_TABLE = "bench_handwritten.result"
STATE_TABLE = f"engage_{SPACE}._engage_state"

FIRST_SYNC_TARGET = 1.3  # first sync ≤ 1.3 × the hand-written query
NO_CHANGE_TARGET = 0.1  # no-change re-sync ≤ 0.1 × the first sync
RSS_TARGET_MIB = 1024.0  # peak RSS ≤ 1 GiB
FLOAT_TOLERANCE = 1e-9  # the diff's own relative tolerance (engage.diff)
HEADER = "# Written by `engage bench`: a throwaway project.\n"

SYNC_PHASES = ("first_sync", "no_change_sync", "changed_sync")
LABELS = {
    "generate": "data generation",
    "first_sync": "first full sync",
    "handwritten": "hand-written query",
    "verify": "check: hand-written = engage",
    "no_change_sync": "no-change re-sync",
    "append": "append 1% events",
    "changed_sync": "1%-changed re-sync",
    "handwritten_after": "hand-written query (after append)",
    "verify_after": "check after append",
}


def benchmarks_dir() -> Path:
    """The repository's `benchmarks/` folder (definitions and the hand-written query), found relative to
    the engage package: a source checkout or an editable install."""
    import engage

    folder = Path(engage.__file__).resolve().parents[1] / "benchmarks"
    if not (folder / "definitions").is_dir() or not (folder / "handwritten.sql").is_file():
        raise FileNotFoundError(
            f"{folder} does not hold definitions/ and handwritten.sql; run engage bench from a checkout"
            " of the engage repository (pip install -e .)"
        )
    return folder


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Phase:
    """One phase: wall-clock seconds of its work, the child's peak RSS and what the phase reported."""

    name: str
    seconds: float
    peak_rss_mib: float
    process_seconds: float
    detail: dict[str, Any] = field(default_factory=dict)
    # A phase timed more than once (`run_plan`'s `repeat`): every run's seconds, in order. `seconds` is then
    # their median, `peak_rss_mib` the highest and `detail` the median run's.
    runs: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)


@dataclass
class Target:
    """One target of the benchmark issue, with the measured figure and whether it holds."""

    name: str
    measured: float
    limit: float
    unit: str
    detail: str

    @property
    def passed(self) -> bool:
        return self.measured <= self.limit


@dataclass
class BenchReport:
    """Everything `engage bench` prints, in the shape `--json` prints it."""

    profiles: int
    events: int
    as_of: datetime
    memory_limit: str
    threads: int | None
    workdir: str
    kept: bool
    phases: dict[str, Phase] = field(default_factory=dict)

    def phase(self, name: str) -> Phase:
        return self.phases[name]

    def targets(self) -> list[Target]:
        first = self.phase("first_sync").seconds
        hand = self.phase("handwritten").seconds
        no_change = self.phase("no_change_sync").seconds
        heaviest = max((self.phase(n) for n in SYNC_PHASES), key=lambda p: p.peak_rss_mib)
        return [
            Target(
                "first sync / hand-written query",
                round(first / hand, 3) if hand else float("inf"),
                FIRST_SYNC_TARGET,
                "×",
                f"{first:.2f}s / {hand:.2f}s",
            ),
            Target(
                "no-change re-sync / first sync",
                round(no_change / first, 3) if first else float("inf"),
                NO_CHANGE_TARGET,
                "×",
                f"{no_change:.2f}s / {first:.2f}s",
            ),
            Target(
                "peak RSS of a sync",
                heaviest.peak_rss_mib,
                RSS_TARGET_MIB,
                "MiB",
                f"{heaviest.label}, DuckDB memory_limit {self.memory_limit}",
            ),
        ]

    def matched(self) -> bool:
        return all(self.phase(n).detail.get("match", False) for n in ("verify", "verify_after"))

    def to_json(self) -> dict[str, Any]:
        return {
            "profiles": self.profiles,
            "events": self.events,
            "as_of": self.as_of.isoformat(),
            "memory_limit": self.memory_limit,
            "threads": self.threads,
            "workdir": self.workdir,
            "kept": self.kept,
            "phases": [
                {"name": p.name, "label": p.label, **{k: v for k, v in asdict(p).items() if k != "name"}}
                for p in self.phases.values()
            ],
            "targets": [{**asdict(t), "passed": t.passed} for t in self.targets()],
            "handwritten_matches_engage": self.matched(),
        }


# ---------------------------------------------------------------------------------------------------------
# The parent: project setup, phases in child processes, the report
# ---------------------------------------------------------------------------------------------------------


def write_project(root: Path, memory_limit: str, threads: int | None) -> None:
    """Writes the throwaway project of the sync case: the benchmark definitions and query, one space on the
    demo sources."""
    source = benchmarks_dir()

    def copy(target: Path) -> None:
        shutil.copytree(source / "definitions", target / "definitions")
        shutil.copy2(source / "handwritten.sql", target / "handwritten.sql")

    space = {"sources": list(SOURCES), "definitions": "benchmarks/definitions"}
    write_throwaway_project(root, copy, SPACE, space, memory_limit, threads)


def write_throwaway_project(
    root: Path,
    copy: Callable[[Path], None],
    name: str,
    space: dict[str, Any],
    memory_limit: str,
    threads: int | None,
) -> None:
    """Writes a benchmark's project in `root`: config/engage.yaml with the one space `name` (`space`, plus a
    DuckDB warehouse and one in-warehouse destination) and what `copy` puts in `root/benchmarks`. A database
    left by an earlier benchmark in `root` is removed, so the first run is a first run."""
    target = root / "benchmarks"
    config_path = root / "config" / "engage.yaml"
    foreign = config_path.exists() and not config_path.read_text().startswith(HEADER)
    if foreign or target.resolve() == benchmarks_dir():
        raise ValueError(f"{root} holds a project that engage bench did not write; pick another --workdir")
    (root / "config").mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    copy(target)
    database = root / DATABASE
    _remove(database, *_companions(database))
    warehouse: dict[str, Any] = {"type": "duckdb", "path": DATABASE.as_posix(), "memory_limit": memory_limit}
    if threads is not None:
        warehouse["threads"] = threads
    config = {
        "spaces": {name: {"warehouse": warehouse, **space, "destinations": {"warehouse": {"type": "duckdb"}}}}
    }
    # JSON is YAML: no quoting rules to get wrong.
    config_path.write_text(HEADER + json.dumps(config, indent=2) + "\n")


def _companions(database: Path) -> tuple[Path, Path]:
    """What DuckDB keeps beside a database file: its WAL and its spill folder."""
    return Path(f"{database}.wal"), Path(f"{database}.tmp")


def _remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _peak_rss_mib(max_rss: int) -> float:
    """`ru_maxrss` is KiB on Linux and bytes on macOS."""
    return round(max_rss / (1024 * 1024) if sys.platform == "darwin" else max_rss / 1024, 1)


def run_child(
    module: str,
    name: str,
    params: dict[str, Any],
    scratch: Path,
    required: str,
    environment: dict[str, str] | None = None,
) -> tuple[dict[str, Any], float, float]:
    """Runs `python -m <module> <name> <params> <result>` in a fresh process: its result (which must hold
    `required`), its peak RSS in MiB, and its wall seconds."""
    params_path, result_path = scratch / f"{name}.params.json", scratch / f"{name}.result.json"
    params_path.write_text(json.dumps({**params, "log_level": logging.getLogger().getEffectiveLevel()}))
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", module, name, str(params_path), str(result_path)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=environment)
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:  # interrupted: do not leave the child running
        process.kill()
        process.wait()
        raise
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = json.loads(result_path.read_text()) if result_path.exists() else {}
    if process.returncode != 0 or required not in result:
        reason = result.get("error") or f"exit code {process.returncode}"
        raise RuntimeError(f"bench {name!r} failed: {reason}")
    return result, _peak_rss_mib(usage.ru_maxrss), elapsed


def run_phase(name: str, params: dict[str, Any], scratch: Path) -> Phase:
    """Runs one phase in a fresh `python -m engage.bench` process and measures its peak RSS."""
    result, peak, elapsed = run_child("engage.bench", name, params, scratch, "seconds")
    return Phase(
        name=name,
        seconds=round(float(result["seconds"]), 3),
        peak_rss_mib=peak,
        process_seconds=round(elapsed, 3),
        detail=result.get("detail", {}),
    )


@contextmanager
def _workdir(workdir: Path | None, keep: bool) -> Iterator[tuple[Path, bool]]:
    """The project folder and whether it stays: a --workdir always stays, a temp dir only with --keep."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir.resolve(), True
        return
    folder = Path(tempfile.mkdtemp(prefix="engage-bench-"))
    try:
        yield folder, keep
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def run_bench(
    *,
    profiles: int = DEFAULT_PROFILES,
    events: int = DEFAULT_EVENTS,
    workdir: Path | None = None,
    keep: bool = False,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    threads: int | None = None,
    progress: bool = True,
) -> BenchReport:
    """Runs every phase of the benchmark and returns the figures (printing is `print_report`'s)."""
    from rich.console import Console as RichTerminal

    terminal = RichTerminal(stderr=True, quiet=not progress)
    with _workdir(workdir, keep) as (root, kept):
        write_project(root, memory_limit, threads)
        scratch = root / ".engage" / "bench-phases"
        scratch.mkdir(parents=True, exist_ok=True)
        report = BenchReport(profiles, events, AS_OF, memory_limit, threads, str(root), kept)
        base = {"root": str(root), "profiles": profiles, "events": events, "memory_limit": memory_limit}
        base["threads"] = threads
        plan = [
            "generate", "first_sync", "handwritten", "verify", "no_change_sync", "append", "changed_sync",
            "handwritten_after", "verify_after",
        ]  # fmt: skip
        terminal.print(f"engage bench: {profiles:,} profiles, {events:,} events, project in {root}")
        report.phases = run_plan(plan, LABELS, base, scratch, terminal)
        return report


def run_plan(
    plan: list[str],
    labels: dict[str, str],
    base: dict[str, Any],
    scratch: Path,
    terminal: Any,
    repeat: dict[str, int] | None = None,
) -> dict[str, Phase]:
    """Runs the phases of `plan` in order, each in its own process, saying how each went on `terminal`.
    Each starts once the writes of the one before are on disk (`os.sync`): a phase is not timed while the
    kernel flushes what another one wrote.

    A phase named in `repeat` runs that many times, each from the same database: a copy taken before the
    first run is put back before each further one, and the phase reports the median of the runs
    (`_median_run`): on a small shared machine one run's time is off by ±15%, and a ratio of two such times
    by more."""
    phases: dict[str, Phase] = {}
    database = Path(base["root"]) / DATABASE
    for name in plan:
        times = (repeat or {}).get(name, 1)
        runs: list[Phase] = []
        with _snapshot(database, keep=times > 1) as restore:
            for run in range(times):
                if run:
                    restore()
                os.sync()
                counter = f" (run {run + 1} of {times})" if times > 1 else ""
                with terminal.status(f"{labels[name]}{counter}…"):
                    runs.append(run_phase(name, base, scratch))
                figures = f"{runs[-1].seconds:.2f}s, peak RSS {runs[-1].peak_rss_mib:.0f} MiB"
                terminal.print(f"[green]✓[/green] {labels[name]}{counter}: {figures}")
        phases[name] = _median_run(runs) if times > 1 else runs[0]
    return phases


@contextmanager
def _snapshot(database: Path, *, keep: bool) -> Iterator[Callable[[], None]]:
    """With `keep`, a copy of the DuckDB file (closed, so without a WAL) beside it, removed afterwards; yields
    what puts it back."""
    copy = database.with_name(f"{database.name}.snapshot")
    if keep:
        shutil.copyfile(database, copy)

    def restore() -> None:
        _remove(*_companions(database))
        shutil.copyfile(copy, database)

    try:
        yield restore
    finally:
        copy.unlink(missing_ok=True)


def _median_run(runs: list[Phase]) -> Phase:
    """One phase from its repeated runs: the median of their seconds, the highest peak RSS, every run's
    seconds, and the detail of the median run (of an even count, the lower middle one)."""
    middle = sorted(runs, key=lambda p: p.seconds)[(len(runs) - 1) // 2]
    return Phase(
        name=middle.name,
        seconds=statistics.median(p.seconds for p in runs),
        peak_rss_mib=max(p.peak_rss_mib for p in runs),
        process_seconds=middle.process_seconds,
        detail=middle.detail,
        runs=[p.seconds for p in runs],
    )


def print_report(report: BenchReport) -> None:
    """The benchmark's figures as rich tables on stdout."""
    from rich.console import Console as RichTerminal
    from rich.table import Table

    # Piped output gets a fixed width rather than rich's 80 columns, so the tables stay one line a row.
    terminal = RichTerminal(width=None if sys.stdout.isatty() else 132)
    threads = report.threads if report.threads is not None else "DuckDB default (all cores)"
    terminal.print(
        f"engage bench: {report.profiles:,} profiles, {report.events:,} events, as of "
        f"{report.as_of.isoformat()}\nDuckDB memory_limit {report.memory_limit} (syncs and the hand-written"
        f" query), threads {threads}"
    )
    phases = Table(title="phases (each in a fresh process)", title_justify="left")
    for column in ("phase", "seconds", "peak RSS MiB", "entered", "exited", "changed", "notes"):
        phases.add_column(column, justify="left" if column in ("phase", "notes") else "right")
    for phase in report.phases.values():
        detail = phase.detail
        counts = [str(detail[k]) if k in detail else "" for k in ("entered", "exited", "changed")]
        phases.add_row(
            phase.label, f"{phase.seconds:.2f}", f"{phase.peak_rss_mib:.0f}", *counts, _notes(phase)
        )
    terminal.print(phases)

    targets = Table(title="targets (benchmark issue)", title_justify="left")
    for column in ("target", "measured", "limit", "", "from"):
        targets.add_column(column, justify="right" if column in ("measured", "limit") else "left")
    for target in report.targets():
        verdict = "[green]PASS[/green]" if target.passed else "[red]MISS[/red]"
        unit = target.unit
        targets.add_row(
            target.name, f"{target.measured:g} {unit}", f"≤ {target.limit:g} {unit}", verdict, target.detail
        )
    terminal.print(targets)
    first, changed = report.phase("first_sync").seconds, report.phase("changed_sync").seconds
    if first:
        terminal.print(f"(no target) 1%-changed re-sync / first sync: {changed / first:.3f}×")

    stages = Table(title="sync stages (seconds, from engage's console)", title_justify="left")
    stages.add_column("stage")
    names: list[str] = []
    for phase_name in SYNC_PHASES:
        stages.add_column(LABELS[phase_name], justify="right")
        for stage, _ in report.phase(phase_name).detail.get("stages", []):
            if stage not in names:
                names.append(stage)
    for stage in names:
        cells = []
        for phase_name in SYNC_PHASES:
            times = dict(report.phase(phase_name).detail.get("stages", []))
            cells.append(f"{times[stage]:.2f}" if stage in times else "")
        stages.add_row(stage, *cells)
    terminal.print(stages)

    check = Table(title="hand-written query vs engage state, per (definition, profile)", title_justify="left")
    columns = ("definition", "kind", "engage", "hand-written", "mismatched", "after append", "mismatched ")
    for column in columns:
        check.add_column(column, justify="left" if column in ("definition", "kind") else "right")
    before = {r["key"]: r for r in report.phase("verify").detail.get("definitions", [])}
    after = {r["key"]: r for r in report.phase("verify_after").detail.get("definitions", [])}
    for key, row in before.items():
        later = after.get(key, {})
        check.add_row(
            key, row["kind"], f"{row['engage']:,}", f"{row['handwritten']:,}", str(row["mismatched"]),
            f"{later.get('engage', 0):,}", str(later.get("mismatched", "")),
        )  # fmt: skip
    terminal.print(check)
    verdict = "[green]yes[/green]" if report.matched() else "[red]NO[/red]"
    terminal.print(f"hand-written = engage state, after the first sync and after the append: {verdict}")
    if report.kept:
        terminal.print(f"project kept in {report.workdir}")


def _notes(phase: Phase) -> str:
    detail = phase.detail
    if phase.name == "generate":
        identified = f"{detail['identified']:,} identified"
        return f"{detail['profiles']:,} profiles ({identified}), {detail['events']:,} tracks"
    if phase.name == "append":
        return f"+{detail['events']:,} track calls within the last day"
    if phase.name in SYNC_PHASES:
        if detail.get("unchanged_since"):
            return "skipped by engage: nothing changed since the last run"
        return f"generation {detail['generation']}, {detail['rows_written']:,} output rows"
    if phase.name.startswith("handwritten"):
        return f"{detail['rows']:,} profile rows"
    if phase.name.startswith("verify"):
        return "match" if detail.get("match") else f"{detail.get('mismatched', '?')} mismatched rows"
    return ""


# ---------------------------------------------------------------------------------------------------------
# The child: one phase per process
# ---------------------------------------------------------------------------------------------------------


def _timestamp_literal(moment: datetime) -> str:
    return f"TIMESTAMP '{moment.isoformat(sep=' ')}'"


def _connect(params: dict[str, Any], *, limited: bool = True) -> Any:
    import duckdb

    config: dict[str, Any] = {}
    if limited:
        # The same settings engage's DuckDB adapter runs with.
        config["memory_limit"] = params["memory_limit"]
        config["preserve_insertion_order"] = False
        if params.get("threads") is not None:
            config["threads"] = params["threads"]
    return duckdb.connect(str(Path(params["root"]) / DATABASE), config=config)


def _phase_generate(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    from engage.demo import generate_demo

    # Generation is not measured against a target: it runs without the memory limit.
    started = time.perf_counter()
    con = _connect(params, limited=False)
    try:
        summary = generate_demo(
            con, profiles=params["profiles"], events=params["events"], end=AS_OF, days=DAYS, seed=SEED,
            sources=SOURCES,
        )  # fmt: skip
    finally:
        con.close()
    seconds = time.perf_counter() - started
    detail = asdict(summary)
    detail["tables"] = dict(summary.tables)
    return seconds, detail


def _phase_append(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    from engage.demo import append_events

    count = max(1, params["events"] // 100)
    started = time.perf_counter()
    con = _connect(params, limited=False)
    try:
        appended = append_events(
            con, events=count, start=AS_OF - timedelta(days=1), end=AS_OF, seed=APPEND_SEED, sources=SOURCES,
            profiles=params["profiles"],
        )  # fmt: skip
    finally:
        con.close()
    return time.perf_counter() - started, {"events": appended}


def _phase_sync(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    return _phase_sync_space(params, SPACE, AS_OF)


def _phase_sync_space(params: dict[str, Any], space: str, as_of: datetime) -> tuple[float, dict[str, Any]]:
    """One sync of `space` at `as_of`, timed per stage."""
    from engage.config import load_project
    from engage.console import Console

    class Stages(Console):
        """Records how long each stage of the run takes."""

        def __init__(self) -> None:
            self.times: list[tuple[str, float]] = []

        @contextmanager
        def stage(self, name: str) -> Iterator[None]:
            started = time.perf_counter()
            yield
            self.times.append((name, round(time.perf_counter() - started, 3)))
            log.debug("stage %s: %.2fs", name, self.times[-1][1])

    from engage.sync import run_space

    stages = Stages()
    started = time.perf_counter()
    project = load_project(Path(params["root"]))
    summary = run_space(project, space, as_of=as_of, console=stages)
    seconds = time.perf_counter() - started
    return seconds, {
        "entered": summary.entered,
        "exited": summary.exited,
        "changed": summary.changed,
        "generation": summary.generation,
        "rows_written": sum(summary.destinations.values()),
        "engage_seconds": summary.seconds,
        "stages": stages.times,
        # Set when engage found nothing could have changed since an earlier run and skipped the compute.
        "unchanged_since": getattr(summary, "unchanged_since", None),
        "sizes": {d.key: d.size for d in summary.definitions},
    }


def _phase_handwritten(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    sql = (Path(params["root"]) / "benchmarks" / "handwritten.sql").read_text()
    statement = sql.format(as_of=_timestamp_literal(AS_OF))
    started = time.perf_counter()
    con = _connect(params)
    try:
        con.execute(statement)
    finally:
        con.close()
    seconds = time.perf_counter() - started
    con = _connect(params)
    try:
        rows = con.execute(f"SELECT count(*) FROM {RESULT_TABLE}").fetchall()[0][0]
    finally:
        con.close()
    return seconds, {"rows": int(rows)}


def _verify_query(columns: list[tuple[str, str]]) -> str:
    """Per definition: engage's state rows, the hand-written rows, and the (definition, profile) pairs where
    they differ (one side missing, or values apart beyond the diff's float tolerance)."""
    branches = []
    for key, kind in columns:
        keep = key if kind == "BOOLEAN" else f"{key} IS NOT NULL"
        text = "'true'" if kind == "BOOLEAN" else f"CAST({key} AS VARCHAR)"
        number = "NULL::DOUBLE" if kind in ("BOOLEAN", "VARCHAR") else f"CAST({key} AS DOUBLE)"
        branches.append(
            f"SELECT '{key}' AS definition_key, profile AS profile_id, {text} AS value_text,"
            f" {number} AS value_num FROM {RESULT_TABLE} WHERE {keep}"
        )
    keys = ", ".join(f"('{key}', '{'audience' if kind == 'BOOLEAN' else 'trait'}')" for key, kind in columns)
    hand = "\n            UNION ALL ".join(branches)
    return f"""
        WITH hand AS (
            {hand}
        ), engage AS (
            SELECT definition_key, profile_id, value_text, value_num FROM {STATE_TABLE}
        ), joined AS (
            SELECT
                coalesce(e.definition_key, h.definition_key) AS definition_key,
                e.profile_id AS engage_profile,
                h.profile_id AS hand_profile,
                e.value_text IS NOT DISTINCT FROM h.value_text
                    OR abs(e.value_num - h.value_num)
                        <= {FLOAT_TOLERANCE} * greatest(abs(e.value_num), abs(h.value_num)) AS same
            FROM engage AS e
            FULL OUTER JOIN hand AS h
                ON e.definition_key = h.definition_key AND e.profile_id = h.profile_id
        ), per_key AS (
            SELECT definition_key,
                count(engage_profile) AS engage_rows,
                count(hand_profile) AS hand_rows,
                count(*) FILTER (
                    WHERE engage_profile IS NULL OR hand_profile IS NULL OR NOT coalesce(same, FALSE)
                ) AS mismatched
            FROM joined
            GROUP BY definition_key
        )
        SELECT k.key, k.kind, coalesce(p.engage_rows, 0), coalesce(p.hand_rows, 0), coalesce(p.mismatched, 0)
        FROM (VALUES {keys}) AS k(key, kind)
        FULL OUTER JOIN per_key AS p ON p.definition_key = k.key
        ORDER BY k.kind, k.key
    """


def _phase_verify(params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    con = _connect(params)
    try:
        described = con.execute(f"DESCRIBE {RESULT_TABLE}").fetchall()
        skip = ("profile", "user_id")
        columns = [(str(name), str(kind)) for name, kind, *_ in described if name not in skip]
        rows = con.execute(_verify_query(columns)).fetchall()
    finally:
        con.close()
    definitions: list[dict[str, Any]] = [
        {
            "key": key if key is not None else "(only in engage state)",
            "kind": kind or "?",
            "engage": int(engage),
            "handwritten": int(hand),
            "mismatched": int(bad),
        }
        for key, kind, engage, hand, bad in rows
    ]
    mismatched = sum(int(bad) for *_, bad in rows)
    return time.perf_counter() - started, {
        "match": mismatched == 0,
        "mismatched": mismatched,
        "definitions": definitions,
    }


_PHASES = {
    "generate": _phase_generate,
    "first_sync": _phase_sync,
    "no_change_sync": _phase_sync,
    "changed_sync": _phase_sync,
    "append": _phase_append,
    "handwritten": _phase_handwritten,
    "handwritten_after": _phase_handwritten,
    "verify": _phase_verify,
    "verify_after": _phase_verify,
}


def child_main(argv: list[str]) -> int:
    """Entry point of a phase's process: `python -m engage.bench <phase> <params.json> <result.json>`."""
    name, params_path, result_path = argv
    params: dict[str, Any] = json.loads(Path(params_path).read_text())
    logging.basicConfig(
        level=int(params.get("log_level", logging.INFO)),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from engage.bench_identity import PHASES as IDENTITY_PHASES

    try:
        seconds, detail = {**_PHASES, **IDENTITY_PHASES}[name](params)
    except Exception as err:
        traceback.print_exc()
        Path(result_path).write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}))
        return 1
    Path(result_path).write_text(json.dumps({"seconds": seconds, "detail": detail}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
