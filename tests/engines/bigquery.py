"""Test harness for BigQuery: the real `google-cloud-bigquery` client against a local `bqemulator`.

`ensure_emulator_venv` builds (once per cache dir) a virtualenv holding bqemulator, and `running_emulator`
starts it as a subprocess on a free 127.0.0.1 port and stops it on exit. `client` returns a BigQuery client
pointed at it, `load_rows` lands rows in a table and `query` runs SQL and returns plain tuples.

Workarounds, all kept here because they are about the emulator, not about BigQuery:

- bqemulator pins an older sqlglot (<30.12) than engage (30.22), so it runs from its own virtualenv and
  is only ever talked to over HTTP.
- bqemulator runs `INSTALL spatial` at boot and fails without it. Test machines reach no DuckDB extension
  repository, so the extension comes from the `duckdb-extension-spatial` wheel on PyPI, copied to where
  DuckDB looks for installed extensions (`$HOME/.duckdb/extensions/<duckdb version>/<platform>/`), under a
  HOME that belongs to the cache dir. That wheel pins its DuckDB (`duckdb==1.5.5`), which is why the
  emulator's venv has that DuckDB rather than engage's. It also needs numpy (DuckDB's `create_function`,
  which bqemulator calls at boot to register its UDFs, refuses to run without it), which it does not declare.
- The optional avro extension would also be fetched at boot; `BQEMU_ENABLE_FORMAT_EXTENSIONS=false`
  turns that off (avro loads are not used here).
- Multipart uploads (what `load_table_from_json`, or `load_table_from_file` given a `size`, use) are
  rejected by the emulator, so `load_rows` sends newline-delimited JSON through `load_table_from_file`
  without a size, which makes the client use a resumable upload.
- The emulator's query-result cache is switched off so a test never reads a result from before its own
  writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dt_time
from decimal import Decimal
from pathlib import Path
from typing import Any

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from tests.engines.net import free_port

BQEMULATOR_VERSION = "1.4.0"
# What the emulator's venv gets. `duckdb-extension-spatial` pins the matching duckdb (1.5.5); numpy is
# needed at boot but not declared by bqemulator.
EMULATOR_REQUIREMENTS = (
    f"bqemulator=={BQEMULATOR_VERSION}",
    "duckdb-extension-spatial==1.5.5",
    "numpy>=1.26",
)
DEFAULT_PROJECT = "engage-test"
# Override with ENGAGE_BQEMULATOR_CACHE; reused across runs so only the first one pays for the install.
DEFAULT_CACHE_DIR = Path(
    os.environ.get("ENGAGE_BQEMULATOR_CACHE", f"~/.cache/engage-tests/bqemulator-{BQEMULATOR_VERSION}")
).expanduser()

_STAMP = "complete.json"

# Run inside the emulator's venv: where the wheel put the extension, and where DuckDB will look for it.
_LOCATE_EXTENSION = """\
import json, pathlib, duckdb, duckdb_extension_spatial
con = duckdb.connect()
version = con.sql("PRAGMA version").fetchone()[0]
platform = con.sql("PRAGMA platform").fetchone()[0]
source = pathlib.Path(duckdb_extension_spatial.__file__).parent / "extensions" / version
print(json.dumps({"version": version, "platform": platform, "source": str(source / "spatial.duckdb_extension")}))
"""

# Run inside the emulator's venv under the cache HOME: the same statements bqemulator runs at boot.
_CHECK_EXTENSION = """\
import duckdb
con = duckdb.connect()
con.execute("INSTALL spatial")
con.execute("LOAD spatial")
assert con.sql("SELECT ST_AsText(ST_Point(1, 2))").fetchone()[0] == "POINT (1 2)"
"""


@dataclass(frozen=True)
class BigQueryEndpoint:
    """A running emulator: the project it serves by default and where its REST API listens."""

    project: str
    api_endpoint: str
    port: int
    pid: int
    log_path: Path

    @property
    def host(self) -> str:
        """`host:port`, the form `BIGQUERY_EMULATOR_HOST` takes."""
        return f"127.0.0.1:{self.port}"


def venv_python(venv: Path) -> Path:
    """The interpreter of a POSIX virtualenv."""
    return venv / "bin" / "python"


def ensure_emulator_venv(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Return `cache_dir/venv`, a virtualenv with bqemulator, building it first if needed.

    Also places the DuckDB spatial extension under `cache_dir/home` (the HOME `running_emulator` gives
    the emulator). A stamp file is written last, so an interrupted build is redone from scratch, and a
    file lock keeps parallel test processes from building the same cache dir twice.
    """
    cache_dir = Path(cache_dir).expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    venv, home, stamp = cache_dir / "venv", cache_dir / "home", cache_dir / _STAMP
    expected = {"requirements": list(EMULATOR_REQUIREMENTS), "python": sys.version.split()[0]}
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        complete = stamp.exists() and json.loads(stamp.read_text()) == expected
        if complete and venv_python(venv).exists() and (home / ".duckdb").is_dir():
            return venv
        stamp.unlink(missing_ok=True)
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)], env=_clean_env())
        pip = [str(venv_python(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        # _clean_env drops PIP_CONSTRAINT: engage's pins (duckdb 2.0, sqlglot 30.22) must not reach this venv.
        _run([*pip, *EMULATOR_REQUIREMENTS], env=_clean_env())
        where = json.loads(_run([str(venv_python(venv)), "-c", _LOCATE_EXTENSION], env=_clean_env()))
        target = home / ".duckdb" / "extensions" / where["version"] / where["platform"]
        target.mkdir(parents=True)
        shutil.copy2(where["source"], target / "spatial.duckdb_extension")
        _run([str(venv_python(venv)), "-c", _CHECK_EXTENSION], env=_clean_env(home))
        stamp.write_text(json.dumps(expected))
    return venv


@contextlib.contextmanager
def running_emulator(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    project: str = DEFAULT_PROJECT,
    startup_timeout: float = 60.0,
) -> Iterator[BigQueryEndpoint]:
    """Start bqemulator (in-memory, REST on a free 127.0.0.1 port) and stop it on exit.

    Yields once `/readyz` answers 200. The emulator runs in its own process group, which is sent SIGTERM
    (then SIGKILL after 10 s) on exit, so no process outlives the block. Its log goes to a file that
    exists while the block runs and is quoted in the error if it does not start.
    """
    venv = ensure_emulator_venv(cache_dir)
    home = Path(cache_dir).expanduser().resolve() / "home"
    with tempfile.TemporaryDirectory(prefix="bqemulator-") as work:
        log_path = Path(work) / "emulator.log"
        for attempt in range(3):
            port = free_port()
            command = [
                str(venv / "bin" / "bqemulator"),
                "start",
                "--ephemeral",
                "--rest-host=127.0.0.1",
                f"--rest-port={port}",
                "--grpc-host=127.0.0.1",
                "--grpc-port=0",
                f"--project={project}",
                "--log-level=warning",
                "--log-format=console",
            ]
            env = _clean_env(home) | {
                "BQEMU_ENABLE_FORMAT_EXTENSIONS": "false",
                "BQEMU_QUERY_CACHE_TTL_SECONDS": "0",
            }
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    command,
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            endpoint = BigQueryEndpoint(project, f"http://127.0.0.1:{port}", port, process.pid, log_path)
            try:
                if _wait_ready(endpoint, process, startup_timeout):
                    yield endpoint
                    return
            finally:
                _stop(process)
            output = log_path.read_text(errors="replace")
            if "address already in use" not in output.lower() or attempt == 2:
                raise RuntimeError(f"bqemulator did not start on port {port}:\n{output[-4000:]}")


def client(endpoint: BigQueryEndpoint) -> bigquery.Client:
    """A BigQuery client for the emulator: its endpoint, its project, anonymous credentials."""
    return bigquery.Client(
        project=endpoint.project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=endpoint.api_endpoint),
    )


def load_rows(
    bq: bigquery.Client,
    dataset: str,
    table: str,
    schema: Sequence[bigquery.SchemaField],
    rows: Sequence[Mapping[str, Any]],
) -> bigquery.Table:
    """Create `dataset.table` (and the dataset) if missing and append `rows` with a load job.

    Rows go as newline-delimited JSON through `load_table_from_file` with no `size`: the client then uses
    a resumable upload, which the emulator accepts, where `load_table_from_json` and sized file loads use a
    multipart upload, which it rejects. Datetimes are sent in ISO form (naive ones are read as UTC for a
    TIMESTAMP column, as BigQuery does).
    """
    bq.create_dataset(dataset, exists_ok=True)
    table_id = f"{bq.project}.{dataset}.{table}"
    bq.create_table(bigquery.Table(table_id, schema=list(schema)), exists_ok=True)
    if rows:
        payload = "".join(json.dumps(dict(row), default=_json_value) + "\n" for row in rows).encode()
        job_config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            schema=list(schema),
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
        )
        bq.load_table_from_file(io.BytesIO(payload), table_id, job_config=job_config).result()
    return bq.get_table(table_id)


QueryParameter = bigquery.ScalarQueryParameter | bigquery.ArrayQueryParameter | bigquery.StructQueryParameter


def query(bq: bigquery.Client, sql: str, parameters: Sequence[QueryParameter] = ()) -> list[tuple[Any, ...]]:
    """Run `sql` with optional query parameters (named `@p`, or positional `?` with name None).

    Returns the rows as tuples; TIMESTAMP values come back as UTC-aware datetimes.
    """
    job_config = bigquery.QueryJobConfig(query_parameters=list(parameters))
    return [tuple(row.values()) for row in bq.query(sql, job_config=job_config).result()]


def _json_value(value: object) -> str:
    if isinstance(value, datetime | date | dt_time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__} to BigQuery as JSON: {value!r}")


def _clean_env(home: Path | None = None) -> dict[str, str]:
    """The current environment without what would point a child Python or pip at engage's setup."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_CONSTRAINT", "PIP_REQUIREMENT")
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("BQEMU_")}
    if home is not None:
        env["HOME"] = str(home)
    return env


def _run(command: list[str], *, env: Mapping[str, str]) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-4000:]}"
        )
    return result.stdout


def _wait_ready(endpoint: BigQueryEndpoint, process: subprocess.Popen[bytes], timeout: float) -> bool:
    """True once `/readyz` answers 200; False if the process exits first. Raises on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{endpoint.api_endpoint}/readyz", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(
        f"bqemulator did not answer within {timeout:.0f} s:\n{endpoint.log_path.read_text(errors='replace')}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the emulator's process group (it shuts down cleanly on it), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
