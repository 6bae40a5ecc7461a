"""The space lock: a lease row in the warehouse (`engage_<space>._engage_lease`), so that it also holds
between machines. One run of a space holds it at a time; another finds the space busy and stops.

Taking the lease is a compare-and-swap: read the holder, then replace exactly that holder with ours in one
UPDATE, then read back who holds it (two racing runs both read a free lease; the engine serializes their
UPDATEs, and only the first one's condition still matches). A lease is free when nobody holds it, when it
has expired (a holder that crashed on another machine), or when its holder was a process of this machine
that no longer runs (a holder killed here need not wait for the expiry).

Engines without row updates (Spark without Delta) swap by overwriting the table, which is not atomic: there,
two runs started within the same second may both go ahead.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import psutil
from sqlglot import exp

from engage.errors import SpaceBusyError, WarehouseError
from engage.warehouse.base import Warehouse

LEASE_TABLE = "_engage_lease"
LEASE_COLUMNS = [
    ("space", "VARCHAR"),
    ("holder", "VARCHAR"),
    ("acquired_at", "TIMESTAMP"),
    ("expires_at", "TIMESTAMP"),
]


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: the machine, the process and the run."""

    host: str
    pid: int
    run_id: str

    @classmethod
    def this_process(cls, run_id: str) -> Holder:
        return cls(socket.gethostname(), os.getpid(), run_id)

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        parts = text.split("|")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2])

    def __str__(self) -> str:
        return f"{self.host}|{self.pid}|{self.run_id}"

    @property
    def gone(self) -> bool:
        """A process of this machine that no longer runs."""
        return self.host == socket.gethostname() and not psutil.pid_exists(self.pid)


class Lease:
    def __init__(self, warehouse: Warehouse, schema: str, space: str, ttl: timedelta) -> None:
        self.warehouse = warehouse
        self.schema = schema
        self.space = space
        self.ttl = ttl
        self.table = exp.table_(LEASE_TABLE, db=schema)

    def _this_space(self) -> exp.Expr:
        return exp.column("space").eq(exp.Literal.string(self.space))

    def _current(self) -> tuple[str | None, datetime | None, datetime | None]:
        rows = self.warehouse.fetchall(
            exp.select("holder", "acquired_at", "expires_at")
            .from_(self.table)
            .where(self._this_space())
            .order_by("holder")
            .limit(1)
        )
        return rows[0] if rows else (None, None, None)

    def _ensure_row(self) -> None:
        self.warehouse.ensure_schema(self.schema)
        columns = [(c, exp.DataType.build(t)) for c, t in LEASE_COLUMNS]
        self.warehouse.ensure_table(self.schema, LEASE_TABLE, columns)
        exists = exp.select(exp.Literal.number(1)).from_(self.table.copy()).where(self._this_space())
        row = exp.select(
            exp.Literal.string(self.space), *(exp.cast(exp.null(), t) for _, t in LEASE_COLUMNS[1:])
        ).where(exp.not_(exp.Exists(this=exists)))
        self.warehouse.execute(exp.insert(row, self.table.copy(), columns=[c for c, _ in LEASE_COLUMNS]))

    def _swap(self, observed: str | None, holder: str | None, now: datetime | None) -> None:
        """Replaces the `observed` holder (None: nobody) with `holder`, in one statement."""
        matches = exp.and_(
            self._this_space(),
            exp.func("COALESCE", exp.column("holder"), exp.Literal.string("")).eq(
                exp.Literal.string(observed or "")
            ),
        )
        values: dict[str, exp.Expr] = {
            "holder": exp.Literal.string(holder) if holder else exp.cast(exp.null(), "VARCHAR"),
            "acquired_at": _moment(now),
            "expires_at": _moment(now + self.ttl if now else None),
        }
        self.warehouse.update_rows(self.table, values, matches)

    def acquire(self, holder: Holder, now: datetime) -> None:
        """Takes the lease for `holder`, or raises `SpaceBusyError` naming who holds it."""
        try:
            self._ensure_row()
        except WarehouseError:
            if not self.warehouse.table_columns(self.schema, LEASE_TABLE):
                raise
            self._ensure_row()  # another run created the table at the same moment
        observed, acquired, expires = self._current()
        if observed is not None and expires is not None and expires > now:
            previous = Holder.parse(observed)
            if previous is None or not previous.gone:
                raise _busy(self.space, observed, acquired, expires)
        self._swap(observed, str(holder), now)
        winner, acquired, expires = self._current()
        if winner != str(holder):
            raise _busy(self.space, winner or "another run", acquired, expires)

    def release(self, holder: Holder) -> None:
        self._swap(str(holder), None, None)


def _moment(value: datetime | None) -> exp.Expr:
    if value is None:
        return exp.cast(exp.null(), "TIMESTAMP")
    return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), "TIMESTAMP")


def _busy(space: str, holder: str, acquired: datetime | None, expires: datetime | None) -> SpaceBusyError:
    who = Holder.parse(holder)
    described = f"run {who.run_id} of process {who.pid} on {who.host}" if who else holder
    since = f" since {acquired:%Y-%m-%d %H:%M:%S} UTC" if acquired else ""
    until = f"; its lease expires at {expires:%Y-%m-%d %H:%M:%S} UTC" if expires else ""
    return SpaceBusyError(f"space {space} is busy: {described} holds it{since}{until}")


@contextmanager
def held(lease: Lease, holder: Holder, now: datetime) -> Iterator[None]:
    """The lease, for the duration of the block; released whatever happens in it."""
    lease.acquire(holder, now)
    try:
        yield
    finally:
        lease.release(holder)
