"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests, from the server binaries on the machine.

Used two ways: the `postgres_server` fixture starts one for the test session when no server is named by
`ENGAGE_TEST_POSTGRES` (host:port:password of a running cluster), and `.ci/run` starts one around the
whole test run with `python -m tests.engines.postgres start DIR` / `stop DIR`. As root the server runs
as the `postgres` user (`runuser`), since PostgreSQL refuses to run as root.

Password authentication is on for TCP connections, so tests can prove what a wrong password does.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.engines.dataset import SourceTable
from tests.engines.net import free_port

PASSWORD = "engage-test-password"
ENV = "ENGAGE_TEST_POSTGRES"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    password: str
    user: str = "postgres"

    def connect(self, database: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            autocommit=True,
        )

    def create_database(self) -> str:
        """A fresh, empty database: each test gets its own."""
        name = f"engage_{uuid.uuid4().hex[:12]}"
        with self.connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.connect() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_TYPES = {
    "varchar": "TEXT",
    "bigint": "BIGINT",
    "double": "DOUBLE PRECISION",
    "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMP",
}


def load_sources(server: PostgresServer, database: str, tables: Sequence[SourceTable]) -> None:
    """Creates the tables and COPYs their rows in (the way a loader lands Segment data)."""
    with server.connect(database) as connection:
        for table in tables:
            connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{table.schema}"')
            columns = ", ".join(f'"{name}" {_TYPES[kind]}' for name, kind in table.columns)
            connection.execute(f'CREATE TABLE "{table.schema}"."{table.name}" ({columns})')
            names = ", ".join(f'"{name}"' for name, _ in table.columns)
            with connection.cursor() as cursor:
                with cursor.copy(f'COPY "{table.schema}"."{table.name}" ({names}) FROM STDIN') as copy:
                    for row in table.rows:
                        copy.write_row(row)


def _bin(tool: str) -> str:
    found = shutil.which(tool) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {tool} is not installed")
    return found


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def start(folder: Path) -> PostgresServer:
    """initdb + pg_ctl start in `folder` (created; owned by the server user)."""
    folder.mkdir(parents=True, exist_ok=True)
    password_file = folder / "password"
    password_file.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        shutil.chown(password_file, "postgres", "postgres")
    data = folder / "data"
    subprocess.run(
        _as_server_user(
            [
                _bin("initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8",
                "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}",
            ]
        ),
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c synchronous_commit=off"
        " -c full_page_writes=off -c max_connections=50"
    )
    subprocess.run(
        _as_server_user(
            [_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    (folder / "port").write_text(str(port))
    return PostgresServer("127.0.0.1", port, PASSWORD)


def stop(folder: Path) -> None:
    subprocess.run(
        _as_server_user([_bin("pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "-w", "stop"]),
        check=False,
        capture_output=True,
    )
    shutil.rmtree(folder, ignore_errors=True)


def _reachable(server: PostgresServer) -> bool:
    try:
        with server.connect():
            return True
    except Exception:
        return False


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """The server named by ENGAGE_TEST_POSTGRES when it answers, else a new cluster, stopped afterwards.

    The cluster's folder is a fresh one under the system temporary directory: the server user must be able
    to reach it, which a root-only pytest temporary folder does not allow."""
    named = os.environ.get(ENV)
    if named:
        host, port, password = named.split(":", 2)
        server = PostgresServer(host, int(port), password)
        if _reachable(server):
            yield server
            return
    folder = Path(tempfile.mkdtemp(prefix="engage-pg-"))
    server = start(folder)
    try:
        yield server
    finally:
        stop(folder)


if __name__ == "__main__":  # .ci/run: `start DIR` prints the ENGAGE_TEST_POSTGRES value; `stop DIR`
    action, where = sys.argv[1], Path(sys.argv[2])
    if action == "start":
        started = start(where)
        print(f"{started.host}:{started.port}:{started.password}")
    else:
        stop(where)
