"""`type: storage_action`: Segment's Storage Actions (SPEC §5), audience activations appended to a table the
user names, `<space>.<table>`.

```yaml
destinations:
  bi_members:
    type: storage_action
    table: audience_activity                 # a bare name; several destinations may write one table
    activation: Audience Membership Changed  # or Audience Entered / Audience Exited (the default: both)
    mapping: {member: user_id, joined: timestamp}  # column → a field of the payload (`FIELDS`)
```

Segment scopes these writes to the space's schema and supports no other: the schema is the snake_case of
the space's name, and a `schema:` naming another one, or a table name that is not a bare name (`other.t`,
quotes), is refused before any SQL runs. Computed traits are not storage-action material (Segment keeps
them to classic storage): rows are written for the audiences routed to the destination only.

One row per (audience, profile) transition the activation takes: `entered` (Audience Entered), `exited`
(Audience Exited), or both (Audience Membership Changed). The table's columns, in order:

    id            varchar    the row's message id (see below)
    event         varchar    the activation's name
    audience_key  varchar
    user_id       varchar
    anonymous_id  varchar
    membership    boolean    true on entering, false on exiting
    timestamp     timestamp  the run's as-of time
    received_at   timestamp  when the row was written
    uuid_ts       timestamp  when the row was written
    <mapped>                 one column per `mapping` entry, of its field's type
    payload       varchar    the whole Segment-spec track call as JSON text

The payload is the track call of SPEC §4 (`type`, `event`, `messageId`, `userId` and `anonymousId` when
known, `timestamp`, `sentAt`, `context.library`, `context.personas`, `properties: {audience_key, <key>:
true|false}`), its `event` the activation's name and its `messageId` the row's id. It is written as text
by concatenation in SQL, the ids escaped there, so that it is the same JSON on every engine: their JSON
constructors differ (sqlglot renders `JSON_OBJECT` in a syntax PostgreSQL 15, Redshift and Spark lack, and
`STRUCT` where PostgreSQL has none).

An in-warehouse connector: it writes with one `INSERT … SELECT` from the changes it is handed, inside the
transaction the framework opens (the DDL runs before it, in `prepare`), and no row passes through Python.
Rows are appended and never updated or deleted. A row's id is the MD5 of the destination's name and the
message id of the transition: deterministic, so a replayed delivery finds its rows there and writes
nothing twice, and distinct per destination, so two destinations writing one table never mistake each
other's rows for their own. What a delivery holds is the framework's: a run's changes; or, for a
destination new to an audience, its current members as on a first sync (under the ids of the runs that
made them members, so rows already written are not written again); or, for `engage sync --resync
<destination>`, the current members under new message ids, which appends the whole current audience.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlglot import exp

from engage import __version__
from engage.config import DestinationConfig, Space
from engage.connector import Connector, Delivery
from engage.diff import ENTERED, EXITED
from engage.errors import ConfigError
from engage.messages import iso, sql_type
from engage.warehouse.base import Warehouse

Activation = Literal["Audience Entered", "Audience Exited", "Audience Membership Changed"]
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "Audience Entered": (ENTERED,),
    "Audience Exited": (EXITED,),
    "Audience Membership Changed": (ENTERED, EXITED),
}
# A name every engine stores as it is written, unquoted: lower case, within PostgreSQL's 63 bytes.
BARE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# The payload's fields a mapping may lift to columns, with their portable types.
FIELDS: dict[str, str] = {
    "message_id": "varchar",
    "event": "varchar",
    "audience_key": "varchar",
    "computation_id": "varchar",
    "profile_id": "varchar",
    "user_id": "varchar",
    "anonymous_id": "varchar",
    "membership": "boolean",
    "timestamp": "timestamp",
}
FIXED_COLUMNS: list[tuple[str, str]] = [
    ("id", "varchar"),
    ("event", "varchar"),
    ("audience_key", "varchar"),
    ("user_id", "varchar"),
    ("anonymous_id", "varchar"),
    ("membership", "boolean"),
    ("timestamp", "timestamp"),
    ("received_at", "timestamp"),
    ("uuid_ts", "timestamp"),
]
PAYLOAD_COLUMN = ("payload", "varchar")
OWN_COLUMNS = frozenset(c for c, _ in [*FIXED_COLUMNS, PAYLOAD_COLUMN])


class StorageActionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str
    activation: Activation = "Audience Membership Changed"
    mapping: dict[str, str] = {}


class StorageActionConnector(Connector):
    name = "storage_action"
    Options = StorageActionOptions

    def __init__(self, destination: str, config: DestinationConfig, space: Space) -> None:
        super().__init__(destination, config, space)
        assert isinstance(self.options, StorageActionOptions)
        self.settings = self.options
        self.schema = space.slug
        self._refuse_other_schemas()
        self._refuse_bad_mapping()
        self._refuse_classic_settings()

    # -- configuration, checked when the connector is built (before any SQL) --------------------------------
    def _error(self, message: str, *field: str) -> ConfigError:
        return ConfigError(message, self.space.locate("destinations", self.destination, *field))

    def _refuse_other_schemas(self) -> None:
        """Writes stay inside the space's schema: no other `schema:`, no qualified or quoted table name."""
        schema = self.config.schema_
        if schema is not None and schema != self.schema:
            raise self._error(
                f"a storage action writes only into the space's schema '{self.schema}', not '{schema}'",
                "schema",
            )
        table = self.settings.table
        if "." in table:
            raise self._error(
                f"'{table}' names another schema: a storage action writes only {self.schema}.<table>"
                " (give a bare table name)",
                "table",
            )
        if not BARE_NAME.fullmatch(table):
            raise self._error(
                f"'{table}' is not a bare table name (lower-case letters, digits and _, not starting"
                " with a digit, at most 63 characters)",
                "table",
            )

    def _refuse_bad_mapping(self) -> None:
        for column, field in self.settings.mapping.items():
            if not BARE_NAME.fullmatch(column):
                raise self._error(f"'{column}' is not a bare column name", "mapping", column)
            if column in OWN_COLUMNS:
                raise self._error(
                    f"'{column}' is one of the table's own columns ({', '.join(sorted(OWN_COLUMNS))})",
                    "mapping",
                    column,
                )
            if field not in FIELDS:
                raise self._error(f"unknown field '{field}' (known: {', '.join(FIELDS)})", "mapping", column)

    def _refuse_classic_settings(self) -> None:
        """`send` and `events` shape identify and track calls; a storage action writes activations, named
        by `activation`, and would silently ignore them."""
        for setting in ("send", "events"):
            if setting in self.config.model_fields_set:
                raise self._error(
                    "does not apply to a storage action (its `activation` decides what it writes)", setting
                )

    # -- the table ----------------------------------------------------------------------------------------
    @property
    def layout(self) -> list[tuple[str, str]]:
        """(column, portable type) of the table this destination writes, in order."""
        mapped = [(column, FIELDS[field]) for column, field in self.settings.mapping.items()]
        return [*FIXED_COLUMNS, *mapped, PAYLOAD_COLUMN]

    def in_warehouse(self, warehouse: Warehouse) -> bool:
        return True

    def check(self, warehouse: Warehouse) -> None:
        """An existing table (another destination's, or not a storage-action table at all) must have the
        columns this one writes with the same types."""
        existing = warehouse.table_columns(self.schema, self.settings.table)
        mapped = set(self.settings.mapping)
        for column, kind in self.layout:
            found = existing.get(column)
            if found is not None and found != kind:
                where = ("mapping", column) if column in mapped else ("table",)
                raise self._error(
                    f"{self.schema}.{self.settings.table}.{column} is {found}; this destination writes"
                    f" {kind} there",
                    *where,
                )

    def prepare(self, delivery: Delivery) -> None:
        """The schema, the table, and the columns it lacks (a mapping added since, or another destination's
        table)."""
        warehouse, table = delivery.warehouse, self.settings.table
        warehouse.ensure_schema(self.schema)
        warehouse.ensure_table(self.schema, table, [(c, sql_type(t)) for c, t in self.layout])
        existing = warehouse.table_columns(self.schema, table)
        for column, kind in self.layout:
            if column not in existing:
                warehouse.add_column(self.schema, table, column, sql_type(kind))

    def deliver(self, delivery: Delivery) -> int:
        audiences = [d.key for d in delivery.definitions if d.kind == "audience"]
        if not audiences:
            return 0
        rows = ActivationRows(delivery, self.destination, self.settings).select(audiences)
        target = exp.table_(self.settings.table, db=self.schema)
        columns = rows.named_selects
        written = (
            exp.select(exp.Literal.number(1))
            .from_(exp.table_(self.settings.table, db=self.schema, alias="t"))
            .where(exp.column("id", "t").eq(exp.column("id", "s")))
        )
        fresh = (
            exp.select(*(exp.column(c, "s") for c in columns))
            .from_(rows.subquery("s"))
            .where(exp.not_(exp.Exists(this=written)))
        )
        return delivery.warehouse.insert(exp.insert(fresh, target, columns=columns))


class ActivationRows:
    """The SELECT over a run's changes that shapes one destination's rows, in two steps: the payload's
    fields (`FIELDS`) of each transition taken, then the table's columns from them. The two steps keep
    each expression shallow: the BigQuery emulator's SQL translation gives up on a deeply nested one."""

    def __init__(self, delivery: Delivery, destination: str, settings: StorageActionOptions) -> None:
        self.delivery = delivery
        self.destination = destination
        self.settings = settings

    def select(self, audiences: Sequence[str]) -> exp.Select:
        """The rows of the transitions the activation takes, of `audiences`, in the table's column order."""
        loaded = _moment(self.delivery.rows.loaded_at)
        values: dict[str, exp.Expr] = {c: exp.column(c, "f") for c, _ in FIXED_COLUMNS}
        values.update(id=exp.column("message_id", "f"), received_at=loaded, uuid_ts=loaded.copy())
        values.update({column: exp.column(field, "f") for column, field in self.settings.mapping.items()})
        values["payload"] = self._payload(audiences)
        order = [*(c for c, _ in FIXED_COLUMNS), *self.settings.mapping, PAYLOAD_COLUMN[0]]
        return exp.select(*(exp.alias_(values[c], c) for c in order)).from_(
            self._fields(audiences).subquery("f")
        )

    def _fields(self, audiences: Sequence[str]) -> exp.Select:
        """Each field of `FIELDS` of the transitions taken, and the ids spelled as JSON strings."""
        track_id = exp.func("CONCAT", exp.Literal.string(f"{self.destination}|"), exp.column("track_id"))
        fields: dict[str, exp.Expr] = {
            "message_id": exp.MD5(this=track_id),
            "event": exp.Literal.string(self.settings.activation),
            "audience_key": exp.column("definition_key"),
            "computation_id": exp.column("computation_id"),
            "profile_id": exp.column("profile_id"),
            "user_id": exp.column("user_id"),
            "anonymous_id": exp.column("anonymous_id"),
            "membership": exp.column("call").eq(exp.Literal.string(ENTERED)),
            "timestamp": _moment(self.delivery.context.as_of),
            "user_id_json": _escaped(exp.column("user_id")),
            "anonymous_id_json": _escaped(exp.column("anonymous_id")),
        }
        taken = TRANSITIONS[self.settings.activation]
        return (
            exp.select(*(exp.alias_(value, name) for name, value in fields.items()))
            .from_(self.delivery.changes)
            .where(
                exp.and_(
                    exp.column("definition_key").isin(*(exp.Literal.string(k) for k in audiences)),
                    exp.column("call").isin(*(exp.Literal.string(t) for t in taken)),
                )
            )
        )

    def _payload(self, audiences: Sequence[str]) -> exp.Expr:
        """The transition's track call (SPEC §4) as JSON text. The message and computation ids are hex by
        construction and need no escaping; an audience key comes spelled in JSON from Python."""
        context = self.delivery.context
        user, anonymous = exp.column("user_id", "f"), exp.column("anonymous_id", "f")
        personas = _object(
            ("computation_class", _constant("audience")),
            ("computation_id", _quoted(exp.column("computation_id", "f"))),
            ("computation_key", _audience_key(audiences)),
            ("namespace", _constant(context.namespace)),
            ("space_id", _constant(context.space)),
        )
        call_context = _object(
            ("library", _constant({"name": "engage", "version": __version__})), ("personas", personas)
        )
        membership = _boolean(exp.column("membership", "f"))
        properties = _object(
            ("audience_key", _audience_key(audiences)), (_audience_key(audiences), membership)
        )
        return _text(
            _object(
                ("type", _constant("track")),
                ("event", _constant(self.settings.activation)),
                ("messageId", _quoted(exp.column("message_id", "f"))),
                ("userId", _quoted(exp.column("user_id_json", "f")), user.is_(exp.null()).not_()),
                (
                    "anonymousId",
                    _quoted(exp.column("anonymous_id_json", "f")),
                    anonymous.is_(exp.null()).not_(),
                ),
                ("timestamp", _constant(iso(context.as_of))),
                ("sentAt", _constant(iso(context.sent_at))),
                ("context", call_context),
                ("properties", properties),
            )
        )


def _moment(moment: datetime) -> exp.Expr:
    return exp.cast(exp.Literal.string(moment.isoformat(sep=" ")), "TIMESTAMP")


# -- JSON text in SQL ---------------------------------------------------------------------------------------
# A JSON value as the pieces of SQL text that, concatenated, spell it.
Json = list[exp.Expr]
# A member of an object: key, value, and (optionally) the condition for it to be present.
Member = tuple[str | Json, Json] | tuple[str | Json, Json, exp.Expr]
_SHORT_ESCAPES = {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}
# Backslash first, so the escapes added after it are left alone. NUL is left out: PostgreSQL text cannot
# hold it, and CHR(0) fails there.
_ESCAPES: list[tuple[exp.Expr, str]] = [
    (exp.Literal.string("\\"), "\\\\"),
    (exp.Literal.string('"'), '\\"'),
    *(
        (exp.Chr(expressions=[exp.Literal.number(code)]), _SHORT_ESCAPES.get(code, f"\\u{code:04x}"))
        for code in range(1, 32)
    ),
]


def _constant(value: object) -> Json:
    return [exp.Literal.string(json.dumps(value, separators=(",", ":")))]


def _audience_key(audiences: Sequence[str]) -> Json:
    """The row's audience key as a JSON string, spelled by Python."""
    spelled = exp.case(exp.column("audience_key", "f"))
    for audience in audiences:
        spelled = spelled.when(exp.Literal.string(audience), _constant(audience)[0])
    return [spelled]


def _quoted(text: exp.Expr) -> Json:
    """A JSON string of SQL text that holds no character JSON escapes (or has them escaped)."""
    return [exp.Literal.string('"'), text, exp.Literal.string('"')]


def _escaped(text: exp.Expr) -> exp.Expr:
    """SQL text as the inside of a JSON string: backslash, quote and control characters escaped (RFC 8259
    §7)."""
    for char, escape in _ESCAPES:
        text = exp.func("REPLACE", text, char.copy(), exp.Literal.string(escape))
    return text


def _boolean(condition: exp.Expr) -> Json:
    return [exp.case().when(condition, exp.Literal.string("true")).else_(exp.Literal.string("false"))]


def _object(*members: Member) -> Json:
    """A JSON object; a member with a condition is left out (with its comma) of rows where it is false, so
    the first member must have none."""
    pieces: Json = [exp.Literal.string("{")]
    for index, (key, value, *present) in enumerate(members):
        member = [
            exp.Literal.string("," if index else ""),
            *(_constant(key) if isinstance(key, str) else key),
            exp.Literal.string(":"),
            *value,
        ]
        if not present:
            pieces.extend(member)
            continue
        assert index, "the first member of an object is always present"
        pieces.append(exp.case().when(present[0], _text(member)).else_(exp.Literal.string("")))
    pieces.append(exp.Literal.string("}"))
    return pieces


def _text(pieces: Json) -> exp.Expr:
    """The concatenation of `pieces`, adjacent literals joined (PostgreSQL cannot concatenate two untyped
    literals)."""
    joined: Json = []
    for piece in pieces:
        previous = joined[-1] if joined else None
        if _is_text(piece) and _is_text(previous):
            assert isinstance(previous, exp.Literal)
            joined[-1] = exp.Literal.string(previous.this + piece.this)
        elif not (_is_text(piece) and piece.this == ""):
            joined.append(piece)
    return joined[0] if len(joined) == 1 else exp.Concat(expressions=joined)


def _is_text(piece: exp.Expr | None) -> bool:
    return isinstance(piece, exp.Literal) and piece.is_string
