"""`engage bench --case identity` times each materialization more than once, from the same data, and compares
the medians (engage/bench.py `run_plan`, engage/bench_identity.py)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from click.testing import CliRunner

from engage.bench import Phase, _median_run, _snapshot
from engage.cli import main


def _phase(seconds: float, rss: float) -> Phase:
    return Phase("identity_full", seconds, rss, seconds + 1, {"seconds_seen": seconds})


def test_the_median_run_gives_the_seconds_and_detail_and_the_highest_rss() -> None:
    phase = _median_run([_phase(2.0, 500), _phase(1.5, 900), _phase(9.0, 400)])
    assert (phase.seconds, phase.detail, phase.peak_rss_mib) == (2.0, {"seconds_seen": 2.0}, 900)
    assert phase.runs == [2.0, 1.5, 9.0]  # in the order they ran
    even = _median_run([_phase(3.0, 1), _phase(1.0, 1)])
    assert (even.seconds, even.detail) == (2.0, {"seconds_seen": 1.0})  # the detail of the lower middle run


def test_the_snapshot_puts_the_database_back_and_is_removed(tmp_path: Path) -> None:
    database = tmp_path / "bench.duckdb"
    database.write_bytes(b"before")
    with _snapshot(database, keep=True) as restore:
        database.write_bytes(b"after a run")
        Path(f"{database}.wal").write_bytes(b"log")
        restore()
        assert database.read_bytes() == b"before"
        assert not Path(f"{database}.wal").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.duckdb"]


def test_a_small_identity_bench_reports_every_run_and_an_incremental_equal_to_full(tmp_path: Path) -> None:
    small = ["--profiles", "2000", "--events", "20000", "--repeat", "2"]
    result = CliRunner().invoke(
        main, ["bench", "--case", "identity", *small, "--workdir", str(tmp_path / "bench"), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    phases = {p["name"]: p for p in report["phases"]}
    for timed in ("identity_full", "identity_incremental"):
        assert len(phases[timed]["runs"]) == 2
        assert phases[timed]["seconds"] == statistics.median(phases[timed]["runs"])
    assert phases["identity_generate"]["runs"] == []
    assert phases["identity_incremental"]["detail"]["new_rows"] > 0
    assert report["incremental_matches_full"] is True
    ratio = next(t for t in report["targets"] if t["name"].startswith("incremental"))
    assert ratio["measured"] == round(
        phases["identity_incremental"]["seconds"] / phases["identity_full"]["seconds"], 3
    )
    assert not list((tmp_path / "bench" / ".engage").glob("*.snapshot"))
