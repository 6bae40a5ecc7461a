"""`engage bench --case delivery`: how fast the `segment` destination sends a run's calls, and how lean.

A throwaway project (one space `delivery_bench` on a DuckDB file, one audience and one computed trait that
engage loads and compiles itself) gets a changes table of N changes (default 1M, half audience entries and
exits, half trait values) with the columns `engage.messages.read_calls` reads, generated in SQL. Then:

1. a counting server starts in its own process (so its CPU does not share the sender's GIL) on 127.0.0.1:
   it gunzips and parses every batch, counts its calls and answers 200;
2. a fresh process (`python -m engage.bench_delivery deliver …`) runs `SegmentConnector.deliver` on a real
   `Delivery` of those changes, streamed from DuckDB, identify and track per change; the parent reads its
   peak RSS from `os.wait4` (POSIX only), so the figure covers the whole process: interpreter, DuckDB, the
   calls in flight;
3. the server's count must equal the calls the connector says were accepted.

Targets (the delivery issue): ≥ 20,000 calls/s on 2 cores, peak RSS ≤ 1 GiB. It asserts nothing.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from engage.bench import (
    DATABASE,
    DEFAULT_MEMORY_LIMIT,
    RSS_TARGET_MIB,
    _connect,
    _workdir,
    run_child,
    write_throwaway_project,
)

log = logging.getLogger("engage.bench")

SPACE = "delivery_bench"
AS_OF = datetime(2025, 6, 1)
GENERATION = 1
DEFAULT_CHANGES = 1_000_000
CALLS_TARGET = 20_000.0  # calls per second, at least
CHANGES_TABLE = "bench_changes"
WRITE_KEY_VARIABLE = "ENGAGE_BENCH_WRITE_KEY"
WRITE_KEY = "bench-write-key"  # a throwaway key for a throwaway server
AUDIENCE, TRAIT = "buyers", "order_count"
DEFINITIONS = f"""\
kind: audience
name: Buyers
key: {AUDIENCE}
condition: {{performed: Order Completed}}
---
kind: trait
name: Order Count
key: {TRAIT}
type: count
event: Order Completed
"""


@dataclass
class DeliveryReport:
    """Everything the delivery case prints, in the shape `--json` prints it."""

    changes: int
    calls: int
    seconds: float
    cpu_seconds: float  # the delivering process's, all threads: less sensitive to other load than seconds
    peak_rss_mib: float
    server_calls: int
    requests: int
    rejected: int
    threads: int
    workdir: str

    @property
    def calls_per_second(self) -> float:
        return round(self.calls / self.seconds, 1) if self.seconds else 0.0

    @property
    def throughput_passed(self) -> bool:
        return self.calls_per_second >= CALLS_TARGET

    @property
    def rss_passed(self) -> bool:
        return self.peak_rss_mib <= RSS_TARGET_MIB

    @property
    def counted(self) -> bool:
        """The server counted every call the connector counted as accepted, and no more."""
        return self.server_calls == self.calls

    def to_json(self) -> dict[str, Any]:
        return {
            "case": "delivery",
            **asdict(self),
            "calls_per_second": self.calls_per_second,
            "targets": [
                {"name": "calls per second", "measured": self.calls_per_second, "at_least": CALLS_TARGET,
                 "passed": self.throughput_passed},
                {"name": "peak RSS", "measured": self.peak_rss_mib, "limit": RSS_TARGET_MIB, "unit": "MiB",
                 "passed": self.rss_passed},
            ],
            "server_counted_every_call": self.counted,
        }  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# The parent: project, changes, server, the delivering child
# ---------------------------------------------------------------------------------------------------------


def run_delivery_bench(
    changes: int = DEFAULT_CHANGES,
    workdir: Path | None = None,
    *,
    keep: bool = False,
    threads: int = 2,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> DeliveryReport:
    """Builds the project and its changes, starts the counting server, delivers in a fresh process."""
    with _workdir(workdir, keep) as (root, _):
        write_project(root, memory_limit)
        params = {"root": str(root), "memory_limit": memory_limit}
        write_changes(params, changes)
        with CountingServer() as server:
            started = time.perf_counter()
            result, peak = _deliver_in_child(root, {**params, "endpoint": server.url, "threads": threads})
            log.info("delivery child: %.2fs in all", time.perf_counter() - started)
            counted, requests = server.counts()
        return DeliveryReport(
            changes=changes,
            calls=result["calls"],
            seconds=round(result["seconds"], 3),
            cpu_seconds=round(result["cpu_seconds"], 3),
            peak_rss_mib=peak,
            server_calls=counted,
            requests=requests,
            rejected=result["rejected"],
            threads=threads,
            workdir=str(root),
        )


def write_project(root: Path, memory_limit: str) -> None:
    """The throwaway project: one space on source `website`, the two definitions in benchmarks/."""

    def copy(target: Path) -> None:
        (target / "definitions").mkdir()
        (target / "definitions" / "definitions.yml").write_text(DEFINITIONS)

    space = {"sources": ["website"], "definitions": "benchmarks/definitions"}
    write_throwaway_project(root, copy, SPACE, space, memory_limit, None)


def write_changes(params: dict[str, Any], changes: int) -> None:
    """The source tables the definitions read (empty: nothing is computed) and the changes table, shaped
    as `engage.diff.changes` leaves it: per profile an audience change (9 in 10 entries) and a trait value;
    message ids as the diff makes them."""
    from engage.diff import computation_id

    def message_id(kind: str) -> str:
        parts = [f"'{SPACE}'", "definition_key", "profile_id", "call", f"'{GENERATION}'", f"'{kind}'"]
        return f"md5(concat_ws('|', {', '.join(parts)}))"

    columns = "id VARCHAR, user_id VARCHAR, anonymous_id VARCHAR, timestamp TIMESTAMP, event VARCHAR"
    (Path(params["root"]) / DATABASE).parent.mkdir(parents=True, exist_ok=True)
    con = _connect(params, limited=False)
    try:
        con.execute("CREATE SCHEMA website")
        con.execute(f"CREATE TABLE website.tracks ({columns}, event_text VARCHAR)")
        con.execute(f"CREATE TABLE website.order_completed ({columns}, event_text VARCHAR, revenue DOUBLE)")
        con.execute(
            f"""
            CREATE TABLE {CHANGES_TABLE} AS
            WITH numbered AS (
                SELECT
                    i,
                    i % 2 = 0 AS audience,
                    'user-' || lpad(CAST(i // 2 AS VARCHAR), 8, '0') AS profile_id
                FROM range({changes}) AS r(i)
            ), shaped AS (
                SELECT
                    CASE WHEN audience THEN '{AUDIENCE}' ELSE '{TRAIT}' END AS definition_key,
                    CASE WHEN audience THEN 'audience' ELSE 'trait' END AS kind,
                    CASE WHEN audience THEN '{computation_id(SPACE, AUDIENCE, "audience")}'
                        ELSE '{computation_id(SPACE, TRAIT, "trait")}' END AS computation_id,
                    CASE WHEN NOT audience THEN 'computed' WHEN i % 20 = 0 THEN 'exited' ELSE 'entered' END
                        AS call,
                    profile_id,
                    profile_id AS user_id,
                    'anon-' || substr(md5(profile_id), 1, 16) AS anonymous_id,
                    CASE WHEN NOT audience THEN CAST(1 + i % 17 AS VARCHAR)
                        WHEN i % 20 = 0 THEN 'false' ELSE 'true' END AS value_text
                FROM numbered
            )
            SELECT
                definition_key, kind, computation_id, call, profile_id, user_id, anonymous_id,
                {message_id("identify")} AS identify_id,
                {message_id("track")} AS track_id,
                definition_key AS trait_key,
                value_text
            FROM shaped
            """
        )
    finally:
        con.close()


def _deliver_in_child(root: Path, params: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Runs the delivery in a fresh `python -m engage.bench_delivery deliver` process: its result and
    peak RSS (MiB)."""
    scratch = root / ".engage" / "bench-phases"
    scratch.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, WRITE_KEY_VARIABLE: WRITE_KEY}
    result, peak, _ = run_child("engage.bench_delivery", "deliver", params, scratch, "calls", environment)
    return result, peak


class CountingServer:
    """The counting server, in a `python -m engage.bench_delivery serve` process of its own."""

    def __init__(self) -> None:
        command = [sys.executable, "-m", "engage.bench_delivery", "serve"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.close()
            raise RuntimeError("the counting server did not start")

    def __enter__(self) -> CountingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counts(self) -> tuple[int, int]:
        """The calls and the requests the server has taken so far."""
        with urllib.request.urlopen(f"{self.url}/count", timeout=30) as response:
            counted = json.loads(response.read())
        return int(counted["calls"]), int(counted["requests"])

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()


def print_report(report: DeliveryReport) -> None:
    """The delivery case's figures as rich tables on stdout."""
    from rich.console import Console as RichTerminal
    from rich.table import Table

    terminal = RichTerminal(width=None if sys.stdout.isatty() else 132)
    terminal.print(
        f"engage bench --case delivery: {report.changes:,} changes → {report.calls:,} calls to the segment"
        f" destination on loopback ({report.threads} sending threads)"
    )
    figures = Table(title="delivery (deliver() in a fresh process)", title_justify="left")
    columns = ("calls", "requests", "rejected", "seconds", "calls/s", "CPU seconds", "peak RSS MiB")
    for column in (*columns, "server counted"):
        figures.add_column(column, justify="right")
    figures.add_row(
        f"{report.calls:,}", f"{report.requests:,}", f"{report.rejected:,}", f"{report.seconds:.2f}",
        f"{report.calls_per_second:,.0f}", f"{report.cpu_seconds:.2f}", f"{report.peak_rss_mib:.0f}",
        f"{report.server_calls:,}",
    )  # fmt: skip
    terminal.print(figures)

    def verdict(passed: bool) -> str:
        return "[green]PASS[/green]" if passed else "[red]MISS[/red]"

    targets = Table(title="targets (delivery issue)", title_justify="left")
    for column in ("target", "measured", "limit", ""):
        targets.add_column(column, justify="right" if column in ("measured", "limit") else "left")
    targets.add_row(
        "calls per second", f"{report.calls_per_second:,.0f}", f"≥ {CALLS_TARGET:,.0f}",
        verdict(report.throughput_passed),
    )  # fmt: skip
    targets.add_row(
        "peak RSS",
        f"{report.peak_rss_mib:.0f} MiB",
        f"≤ {RSS_TARGET_MIB:.0f} MiB",
        verdict(report.rss_passed),
    )
    terminal.print(targets)
    counted = "[green]yes[/green]" if report.counted else "[red]NO[/red]"
    terminal.print(f"the server counted every accepted call, and no more: {counted}")


# ---------------------------------------------------------------------------------------------------------
# The children: the delivering process and the counting server
# ---------------------------------------------------------------------------------------------------------


def _deliver(params: dict[str, Any]) -> dict[str, Any]:
    """One delivery of the changes table to the counting server, timed around `deliver()` alone."""
    from engage.config import DestinationConfig, EventNames, load_project
    from engage.connector import Delivery, load_connector
    from engage.messages import MessageContext, WarehouseRows
    from engage.sync import prepare, utc_now

    project = load_project(Path(params["root"]))
    with prepare(project, SPACE) as prepared:
        definitions = prepared.compile(AS_OF).definitions
        if {d.key for d in definitions} != {AUDIENCE, TRAIT}:
            raise RuntimeError(f"the bench's definitions are not {AUDIENCE} and {TRAIT}")
        config = DestinationConfig.model_validate(
            {
                "type": "segment",
                "write_key": os.environ[WRITE_KEY_VARIABLE],
                "endpoint": params["endpoint"],
                "threads": params["threads"],
            }
        )
        connector = load_connector(config.type)("segment", config, prepared.space)
        context = MessageContext(SPACE, AS_OF, utc_now(), EventNames())
        delivery = Delivery(
            destination="segment",
            schema=prepared.space.output_schema,
            send=frozenset(config.send),
            definitions=definitions,
            context=context,
            warehouse=prepared.warehouse,
            changes=CHANGES_TABLE,
            rows=WarehouseRows(CHANGES_TABLE, definitions, context, utc_now()),
        )
        started, cpu = time.perf_counter(), time.process_time()
        calls = connector.deliver(delivery)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"calls": calls, "seconds": seconds, "cpu_seconds": cpu, "rejected": len(delivery.rejections)}


class _CountingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    calls = 0
    requests = 0
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
        batch = json.loads(body)["batch"]
        with self.lock:
            _CountingHandler.calls += len(batch)
            _CountingHandler.requests += 1
        self._answer(b'{"success":true}')

    def do_GET(self) -> None:
        self._answer(json.dumps({"calls": self.calls, "requests": self.requests}).encode())

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve() -> None:
    """The counting server: prints its URL, then serves until terminated, one thread per connection."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"http://{host!s}:{port}", flush=True)
    server.serve_forever()


def child_main(argv: list[str]) -> int:
    """`python -m engage.bench_delivery serve`, `… deliver <params.json> <result.json>`, or `… [changes]`
    to run the whole case and print it."""
    if argv[:1] == ["serve"]:
        serve()
        return 0
    if argv[:1] == ["deliver"]:
        params_path, result_path = argv[1:]
        params: dict[str, Any] = json.loads(Path(params_path).read_text())
        logging.basicConfig(level=int(params.get("log_level", logging.INFO)), stream=sys.stderr)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would flood the output
        try:
            result = _deliver(params)
        except Exception as err:
            traceback.print_exc()
            Path(result_path).write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}))
            return 1
        Path(result_path).write_text(json.dumps(result))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print_report(run_delivery_bench(int(argv[0]) if argv else DEFAULT_CHANGES))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
