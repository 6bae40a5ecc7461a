"""Whether anything can have changed since the last run, decided from metadata-sized queries.

A run's results depend on its definitions, on the rows of the source tables it reads, and on the as-of.
When the definitions are the same, no table gained or lost a row (count and newest load time,
Segment's loads being append-only), and no event crossed a time boundary between the two as-of times
(visibility at `as_of`, and `as_of - N` for every `within: N`), every value is what the state already
holds: the run can stop there. `--full-refresh` recomputes regardless (for in-place edits of loaded rows).
SQL traits read tables engage cannot see, so a space with one always recomputes.

The same query finds the space's next change: the earliest moment at which an event already loaded crosses
one of those boundaries (a member of a `within: 30d` audience whose last qualifying event ages out), when the
results change with no new data. The scheduler wakes the space then.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlglot import exp

from engage.catalog import Catalog, Table
from engage.compile.compiler import CompiledSpace
from engage.compile.expressions import timestamp, union_all
from engage.warehouse.base import Warehouse

# The column telling when Segment loaded a row, in order of preference.
LOAD_TIME_COLUMNS = ("uuid_ts", "received_at", "timestamp")


@dataclass(frozen=True)
class Inputs:
    """What a run's results are a function of, as stored in the run log."""

    as_of: str
    definitions: dict[str, str]  # key → fingerprint
    watermarks: dict[str, list[Any]]  # "source.table" → [row count, newest load time]
    windows: list[float]  # seconds of every `within`
    next_change: str | None = None  # ISO time an event loaded by now next crosses a boundary; None: never
    identity: list[Any] | None = None  # the identity tables' signature (identity.py), when resolving

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Inputs:
        return cls(**json.loads(text))


def _tables(catalog: Catalog, compiled: CompiledSpace) -> list[Table]:
    return [t for name in compiled.tables for t in catalog.tables_named(name)]


def _offsets(compiled: CompiledSpace) -> list[timedelta]:
    """The boundaries an event crosses as time passes: visibility at `as_of`, and `as_of - N` per window."""
    return [timedelta(0), *compiled.windows]


def observe(
    warehouse: Warehouse, catalog: Catalog, compiled: CompiledSpace, identity: list[Any] | None = None
) -> Inputs:
    """Reads the row count and newest load time of every table the run reads, and the first event past
    each boundary, in one query. `identity` is the identity tables' signature: profiles that merged change
    results as much as new events do."""
    offsets = _offsets(compiled)
    branches = []
    for table in _tables(catalog, compiled):
        loaded = next(c for c in LOAD_TIME_COLUMNS if c in table.columns)
        moment = exp.column("timestamp")
        firsts = [
            exp.alias_(
                exp.func(
                    "MIN", exp.case().when(moment > timestamp(compiled.as_of - offset, compiled.caps), moment)
                ),
                f"first_past_{number}",
            )
            for number, offset in enumerate(offsets)
        ]
        branches.append(
            exp.select(
                exp.alias_(exp.Literal.string(f"{table.source}.{table.name}"), "name"),
                exp.alias_(exp.Count(this=exp.Star()), "row_count"),
                exp.alias_(exp.cast(exp.func("MAX", exp.column(loaded)), "VARCHAR"), "newest"),
                *firsts,
            ).from_(exp.table_(table.name, db=table.source))
        )
    watermarks: dict[str, list[Any]] = {}
    crossings: list[datetime] = []
    if branches:
        for name, count, newest, *past in warehouse.fetchall(union_all(branches)):
            watermarks[name] = [count, newest]
            crossings += [_naive_utc(p) + o for p, o in zip(past, offsets, strict=True) if p is not None]
    # SQL traits own their time logic: when their results change is not known.
    next_change = min(crossings) if crossings and not compiled.sql_traits else None
    return Inputs(
        as_of=compiled.as_of.isoformat(),
        definitions={d.key: d.fingerprint for d in compiled.definitions},
        watermarks=watermarks,
        windows=[w.total_seconds() for w in compiled.windows],
        next_change=next_change.isoformat() if next_change else None,
        identity=identity,
    )


def _naive_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def unchanged(
    previous: Inputs, current: Inputs, warehouse: Warehouse, catalog: Catalog, compiled: CompiledSpace
) -> bool:
    """True when the results at `current` must equal those at `previous` (see the module docstring)."""
    if compiled.sql_traits or previous.definitions != current.definitions:
        return False
    if previous.watermarks != current.watermarks or previous.identity != current.identity:
        return False
    before, now = datetime.fromisoformat(previous.as_of), datetime.fromisoformat(current.as_of)
    if before == now:
        return True
    low, high = min(before, now), max(before, now)
    offsets = _offsets(compiled)
    crossed = exp.or_(
        *(
            exp.and_(
                exp.column("timestamp") > timestamp(low - offset, compiled.caps),
                exp.column("timestamp") <= timestamp(high - offset, compiled.caps),
            )
            for offset in offsets
        )
    )
    for table in _tables(catalog, compiled):
        probe = (
            exp.select(exp.Literal.number(1))
            .from_(exp.table_(table.name, db=table.source))
            .where(crossed)
            .limit(1)
        )
        if warehouse.fetchall(probe):
            return False
    return True
