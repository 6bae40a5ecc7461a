"""Changes to Segment-spec calls (SPEC §4), in two shapes:

- `Call` objects with `identify()` / `track()` payloads, streamed in batches for destinations outside the
  warehouse (only the changes move through Python);
- `WarehouseRows`: SELECTs over the changes table that shape the same calls as Segment's warehouse rows
  (SPEC §5), for `INSERT … SELECT` when the destination is the warehouse itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from sqlglot import exp

from engage import __version__
from engage.compile.compiler import CompiledDefinition, Output
from engage.compile.expressions import union_all
from engage.config import EventNames
from engage.naming import snakecase
from engage.warehouse.base import Warehouse

MAX_STRING = 512
STANDARD_COLUMNS: list[tuple[str, str]] = [
    ("id", "varchar"),
    ("user_id", "varchar"),
    ("anonymous_id", "varchar"),
    ("timestamp", "timestamp"),
    ("original_timestamp", "timestamp"),
    ("sent_at", "timestamp"),
    ("received_at", "timestamp"),
    ("uuid_ts", "timestamp"),
    ("context_library_name", "varchar"),
    ("context_library_version", "varchar"),
    ("context_personas_computation_class", "varchar"),
    ("context_personas_computation_id", "varchar"),
    ("context_personas_computation_key", "varchar"),
    ("context_personas_namespace", "varchar"),
    ("context_personas_space_id", "varchar"),
]
TRACK_COLUMNS = [*STANDARD_COLUMNS, ("event", "varchar"), ("event_text", "varchar")]
USERS_COLUMNS: list[tuple[str, str]] = [
    ("id", "varchar"),
    ("received_at", "timestamp"),
    ("uuid_ts", "timestamp"),
]
RESERVED_COLUMNS = frozenset(c for c, _ in TRACK_COLUMNS) | {"audience_key", "trait_key"}


@dataclass(frozen=True)
class MessageContext:
    """What every call of a run shares."""

    space: str
    as_of: datetime
    sent_at: datetime
    events: EventNames

    # Cached: every call of a run carries them, and a delivery may build a million calls.
    @cached_property
    def namespace(self) -> str:
        return f"spa_{snakecase(self.space)}"

    @cached_property
    def as_of_iso(self) -> str:
        return iso(self.as_of)

    @cached_property
    def sent_at_iso(self) -> str:
        return iso(self.sent_at)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds") + "Z"


def value_of(text: str | None, value_type: str) -> Any:
    """A trait value from its state text, as the JSON value a call carries."""
    if text is None:
        return None
    if value_type == "boolean":
        return text == "true"
    if value_type == "bigint":
        return int(text)
    if value_type == "double":
        return float(text)
    if value_type == "json":
        return json.loads(text)
    if value_type == "timestamp":
        return iso(datetime.fromisoformat(text))
    return text


@dataclass
class Call:
    """One (computation, profile) change of a run: one identify and/or one track call."""

    definition_key: str
    kind: str
    computation_id: str
    transition: str  # entered | exited | computed
    profile_id: str
    user_id: str | None
    anonymous_id: str | None
    identify_id: str
    track_id: str
    traits: dict[str, Any] = field(default_factory=dict)

    def _common(self, context: MessageContext, message_id: str) -> dict[str, Any]:
        message: dict[str, Any] = {"messageId": message_id}
        if self.user_id is not None:
            message["userId"] = self.user_id
        if self.anonymous_id is not None:
            message["anonymousId"] = self.anonymous_id
        message["timestamp"] = context.as_of_iso
        message["sentAt"] = context.sent_at_iso
        message["context"] = {
            "library": {"name": "engage", "version": __version__},
            "personas": {
                "computation_class": "audience" if self.kind == "audience" else "trait",
                "computation_id": self.computation_id,
                "computation_key": self.definition_key,
                "namespace": context.namespace,
                "space_id": context.space,
            },
        }
        return message

    def identify(self, context: MessageContext) -> dict[str, Any]:
        return {"type": "identify", **self._common(context, self.identify_id), "traits": dict(self.traits)}

    def event_name(self, events: EventNames) -> str:
        return {
            "entered": events.audience_entered,
            "exited": events.audience_exited,
        }.get(self.transition, events.trait_computed)

    def track(self, context: MessageContext) -> dict[str, Any]:
        label = "audience_key" if self.kind == "audience" else "trait_key"
        return {
            "type": "track",
            "event": self.event_name(context.events),
            **self._common(context, self.track_id),
            "properties": {label: self.definition_key, **self.traits},
        }


_CALL_COLUMNS = [
    "definition_key", "kind", "computation_id", "call", "profile_id", "user_id", "anonymous_id",
    "identify_id", "track_id", "trait_key", "value_text",
]  # fmt: skip


def read_calls(
    warehouse: Warehouse,
    changes: str,
    definitions: Sequence[CompiledDefinition],
    batch_size: int,
) -> Iterator[list[Call]]:
    """Streams the calls of `definitions` from the changes table, in batches of about `batch_size`."""
    types = {(d.key, o.trait_key): o.value_type for d in definitions for o in d.outputs}
    if not definitions:
        return
    query = (
        exp.select(*(exp.column(c) for c in _CALL_COLUMNS))
        .from_(changes)
        .where(
            exp.In(
                this=exp.column("definition_key"),
                expressions=[exp.Literal.string(d.key) for d in definitions],
            )
        )
        .order_by("definition_key", "profile_id", "trait_key")
    )
    batch: list[Call] = []
    current: Call | None = None
    for _, rows in warehouse.fetch_batches(query, batch_size):
        for row in rows:
            values = dict(zip(_CALL_COLUMNS, row, strict=True))
            if current is None or (current.definition_key, current.profile_id) != (
                values["definition_key"],
                values["profile_id"],
            ):
                if current is not None:
                    batch.append(current)
                    if len(batch) >= batch_size:
                        yield batch
                        batch = []
                current = Call(
                    definition_key=values["definition_key"],
                    kind=values["kind"],
                    computation_id=values["computation_id"],
                    transition=values["call"],
                    profile_id=values["profile_id"],
                    user_id=values["user_id"],
                    anonymous_id=values["anonymous_id"],
                    identify_id=values["identify_id"],
                    track_id=values["track_id"],
                )
            value_type = types[(values["definition_key"], values["trait_key"])]
            current.traits[values["trait_key"]] = value_of(values["value_text"], value_type)
    if current is not None:
        batch.append(current)
    if batch:
        yield batch


def sql_type(value_type: str) -> exp.DataType:
    return exp.DataType.build(
        {"boolean": "BOOLEAN", "bigint": "BIGINT", "double": "DOUBLE", "timestamp": "TIMESTAMP"}.get(
            value_type, "VARCHAR"
        )
    )


Reduce = Callable[[exp.Expr], exp.Expr]  # how a column of a call is read from its change rows


def _as_is(column: exp.Expr) -> exp.Expr:
    return column


def _max(column: exp.Expr) -> exp.Expr:
    return exp.func("MAX", column)


def _keys_in(keys: list[str]) -> exp.Expr:
    if not keys:
        return exp.false()
    return exp.In(this=exp.column("definition_key"), expressions=[exp.Literal.string(k) for k in keys])


class WarehouseRows:
    """SELECTs over the changes table shaped as the rows of `engage_<space>` tables (SPEC §5)."""

    def __init__(
        self,
        changes: str,
        definitions: Sequence[CompiledDefinition],
        context: MessageContext,
        loaded_at: datetime,
    ) -> None:
        self.changes = changes
        self.definitions = list(definitions)
        self.context = context
        self.loaded_at = loaded_at

    @property
    def outputs(self) -> list[Output]:
        return [o for d in self.definitions for o in d.outputs]

    def key_types(self, kinds: Sequence[str] = ("audience", "trait", "sql_trait")) -> dict[str, str]:
        """Trait key → portable type, for keys that may become columns (reserved names are dropped)."""
        return {
            o.trait_key: o.value_type
            for o in self.outputs
            if o.kind in kinds and o.trait_key not in RESERVED_COLUMNS
        }

    def _routed(self, *more: exp.Expr) -> exp.Expr:
        return exp.and_(_keys_in([d.key for d in self.definitions]), *more)

    def keys_with_values(self) -> exp.Select:
        """The trait keys with a non-null value in this run: only these may add a column."""
        return (
            exp.select(exp.column("trait_key"))
            .distinct()
            .from_(self.changes)
            .where(self._routed(exp.column("value_text").is_(exp.null()).not_()))
        )

    def _moment(self, moment: datetime) -> exp.Expr:
        return exp.cast(exp.Literal.string(moment.isoformat(sep=" ")), "TIMESTAMP")

    def _value(self, key: str, value_type: str, per_call: Reduce) -> exp.Expr:
        picked = exp.case().when(
            exp.column("trait_key").eq(exp.Literal.string(key)), exp.column("value_text")
        )
        value: exp.Expr = exp.cast(per_call(picked), sql_type(value_type))
        if value_type not in ("boolean", "bigint", "double", "timestamp"):
            value = exp.Left(this=value, expression=exp.Literal.number(MAX_STRING))
        return value

    def _standard(self, id_column: str, per_call: Reduce) -> list[exp.Expr]:
        as_of, loaded = self._moment(self.context.as_of), self._moment(self.loaded_at)
        computation_class = (
            exp.case()
            .when(
                per_call(exp.column("kind")).eq(exp.Literal.string("audience")),
                exp.Literal.string("audience"),
            )
            .else_(exp.Literal.string("trait"))
        )
        return [
            exp.alias_(exp.column(id_column), "id"),
            exp.alias_(per_call(exp.column("user_id")), "user_id"),
            exp.alias_(per_call(exp.column("anonymous_id")), "anonymous_id"),
            exp.alias_(as_of, "timestamp"),
            exp.alias_(as_of.copy(), "original_timestamp"),
            exp.alias_(self._moment(self.context.sent_at), "sent_at"),
            exp.alias_(loaded, "received_at"),
            exp.alias_(loaded.copy(), "uuid_ts"),
            exp.alias_(exp.Literal.string("engage"), "context_library_name"),
            exp.alias_(exp.Literal.string(__version__), "context_library_version"),
            exp.alias_(computation_class, "context_personas_computation_class"),
            exp.alias_(per_call(exp.column("computation_id")), "context_personas_computation_id"),
            exp.alias_(exp.column("definition_key"), "context_personas_computation_key"),
            exp.alias_(exp.Literal.string(self.context.namespace), "context_personas_namespace"),
            exp.alias_(exp.Literal.string(self.context.space), "context_personas_space_id"),
        ]

    def _event_name(self, slug: bool, per_call: Reduce) -> exp.Expr:
        """The track event of each call, as configured (`event_text`) or snake_cased (`event`)."""
        events = self.context.events
        case = exp.case()
        for call, name in (("entered", events.audience_entered), ("exited", events.audience_exited)):
            case = case.when(
                exp.column("call").eq(exp.Literal.string(call)),
                exp.Literal.string(snakecase(name) if slug else name),
            )
        computed = events.trait_computed
        return per_call(case.else_(exp.Literal.string(snakecase(computed) if slug else computed)))

    def _per_call(
        self, columns: Callable[[Reduce], list[exp.Expr]], where: exp.Expr, id_column: str
    ) -> exp.Query:
        """One row per call. A call of an audience or computed trait is one change row, read as it is;
        an SQL trait's call gathers one change row per column, grouped."""
        single = [d.key for d in self.definitions if d.kind != "sql_trait"]
        grouped = [d.key for d in self.definitions if d.kind == "sql_trait"]
        parts: list[exp.Select] = [
            exp.select(*columns(_as_is)).from_(self.changes).where(exp.and_(where, _keys_in(single)))
        ]
        if grouped:
            parts.append(
                exp.select(*columns(_max))
                .from_(self.changes)
                .where(exp.and_(where, _keys_in(grouped)))
                .group_by("definition_key", "profile_id", id_column)
            )
        return union_all(parts)

    def identifies(self, key_columns: dict[str, str]) -> exp.Query:
        """One row per call, the call's trait keys as columns."""

        def columns(per_call: Reduce) -> list[exp.Expr]:
            values = (exp.alias_(self._value(k, t, per_call), k) for k, t in key_columns.items())
            return [*self._standard("identify_id", per_call), *values]

        return self._per_call(columns, exp.true(), "identify_id")

    def tracks(
        self, call: str | None = None, label: str | None = None, key_columns: dict[str, str] | None = None
    ) -> exp.Query:
        """One row per track call; with `call`, only that transition (a per-event table), with the
        `audience_key`/`trait_key` label and the key columns."""

        def columns(per_call: Reduce) -> list[exp.Expr]:
            selected = [
                *self._standard("track_id", per_call),
                exp.alias_(self._event_name(True, per_call), "event"),
                exp.alias_(self._event_name(False, per_call), "event_text"),
            ]
            if label is not None:
                selected.append(exp.alias_(exp.column("definition_key"), label))
            selected.extend(
                exp.alias_(self._value(k, t, per_call), k) for k, t in (key_columns or {}).items()
            )
            return selected

        where = exp.true() if call is None else exp.column("call").eq(exp.Literal.string(call))
        return self._per_call(columns, where, "track_id")

    def users(self, key_columns: dict[str, str]) -> exp.Select:
        """One row per user_id with the run's value of each key it changed, and a flag per key saying
        whether it changed (so the upsert leaves other keys alone). Anonymous profiles never appear."""
        columns: list[exp.Expr] = [exp.alias_(exp.column("user_id"), "id")]
        for key, value_type in key_columns.items():
            touched = exp.case().when(
                exp.column("trait_key").eq(exp.Literal.string(key)), exp.Literal.number(1)
            )
            columns.append(exp.alias_(exp.func("COALESCE", exp.func("MAX", touched), 0), f"__changed_{key}"))
            columns.append(exp.alias_(self._value(key, value_type, _max), key))
        return (
            exp.select(*columns)
            .from_(self.changes)
            .where(self._routed(exp.column("user_id").is_(exp.null()).not_()))
            .group_by("user_id")
        )
