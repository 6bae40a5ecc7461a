"""`type: warehouse`: writes `engage_<space>` (identifies, users, tracks, one table per track event).

Into the space's own warehouse by default, whatever its engine: every write is `INSERT … SELECT` (or the
engine's upsert) inside the run's transaction, and no call passes through Python. With a `warehouse:` of its
own, into another database, of any engine: only the run's changed rows stream there, in batches, into
staging tables, and the same SQL moves them into place in one transaction of that database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from pydantic import BaseModel, ConfigDict
from sqlglot import exp

from engage.config import WarehouseConfig
from engage.connector import Connector, Delivery
from engage.errors import Location
from engage.failpoints import reached
from engage.messages import STANDARD_COLUMNS, TRACK_COLUMNS, USERS_COLUMNS, WarehouseRows, sql_type
from engage.naming import snakecase
from engage.warehouse import connect
from engage.warehouse.base import Warehouse

BATCH_ROWS = 5_000  # rows per round trip when the changes cross to another warehouse
Plan = list[tuple[str, exp.Query, dict[str, str]]]  # (table, rows to write, key columns the table has)


@dataclass(frozen=True)
class _Table:
    """One `engage_<space>` table: its standard columns, the key columns it may get, and its rows given
    the key columns it has."""

    name: str
    standard: list[tuple[str, str]]
    key_types: dict[str, str]
    rows: Callable[[dict[str, str]], exp.Query]


class WarehouseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warehouse: WarehouseConfig | None = None  # another database to write into; default: the space's own


class WarehouseConnector(Connector):
    name = "warehouse"
    Options = WarehouseOptions

    @property
    def _target(self) -> WarehouseConfig | None:
        assert isinstance(self.options, WarehouseOptions)
        return self.options.warehouse

    def in_warehouse(self, warehouse: Warehouse) -> bool:
        return self._target is None

    def prepare(self, delivery: Delivery) -> None:
        TableWriter(delivery).prepare()

    def deliver(self, delivery: Delivery) -> int:
        config = self._target
        if config is None:
            writer = TableWriter(delivery)
            return writer.write(writer.plan())

        def locate(*field: str) -> Location:
            return self.space.locate("destinations", self.destination, *field)

        target = connect(config, self.space, locate)
        try:
            writer = TableWriter(delivery, target)
            writer.prepare()
            plan = writer.plan()
            staged = writer.stage(plan)
            with target.transaction():
                return writer.write(plan, staged)
        finally:
            target.close()


class TableWriter:
    """Writes a delivery into `engage_<space>` tables with SQL only: in the warehouse that computed the
    run's changes, or (`target`) in another one, into which the changed rows are staged first.

    Every insert skips ids already present, so replaying a run whose state did not advance writes
    nothing twice."""

    def __init__(self, delivery: Delivery, target: Warehouse | None = None) -> None:
        self.delivery = delivery
        self.source = delivery.warehouse  # holds the run's changes
        self.warehouse = target or delivery.warehouse  # holds the tables written
        self.schema = delivery.schema
        self.rows: WarehouseRows = delivery.rows

    def _tables(self) -> list[_Table]:
        """Every table this delivery writes, in writing order (selective sync may leave some out)."""
        tables = []
        if "identify" in self.delivery.send:
            key_types = self.rows.key_types()
            tables.append(_Table("identifies", STANDARD_COLUMNS, key_types, self.rows.identifies))
            tables.append(_Table("users", USERS_COLUMNS, key_types, self.rows.users))
        if "track" in self.delivery.send:
            tables.append(_Table("tracks", TRACK_COLUMNS, {}, lambda _: self.rows.tracks()))
            for call, event, label, kinds in self._events():
                standard = [*TRACK_COLUMNS, (label, "varchar")]
                rows = partial(self.rows.tracks, call, label)
                tables.append(_Table(snakecase(event), standard, self.rows.key_types(kinds), rows))
        return [t for t in tables if self.delivery.tables.takes(t.name)]

    def _events(self) -> list[tuple[str, str, str, tuple[str, ...]]]:
        """(transition, event name, label column, definition kinds) of the per-event tables written."""
        events = self.delivery.context.events
        every = [
            ("entered", events.audience_entered, "audience_key", ("audience",)),
            ("exited", events.audience_exited, "audience_key", ("audience",)),
            ("computed", events.trait_computed, "trait_key", ("trait", "sql_trait")),
        ]
        return [e for e in every if any(d.kind in e[3] for d in self.delivery.definitions)]

    def prepare(self) -> None:
        """The DDL, before the run's transaction (Snowflake commits any open transaction at DDL): the
        schema, the tables, and a column for each key whose first non-null value arrives in this run."""
        self.warehouse.ensure_schema(self.schema)
        with_values = {r[0] for r in self.source.fetchall(self.rows.keys_with_values())}
        for table in self._tables():
            columns = [(c, sql_type(t)) for c, t in table.standard]
            self.warehouse.ensure_table(self.schema, table.name, columns)
            existing = self.warehouse.table_columns(self.schema, table.name)
            for key in sorted(with_values & table.key_types.keys() - existing.keys()):
                self.warehouse.add_column(self.schema, table.name, key, sql_type(table.key_types[key]))

    def plan(self) -> Plan:
        """(table, rows to write, key columns the table has) of every table, in writing order; after
        `prepare`, which adds the key columns."""
        plan = []
        for table in self._tables():
            existing = self.warehouse.table_columns(self.schema, table.name)
            keys = {k: t for k, t in table.key_types.items() if k in existing}
            plan.append((table.name, table.rows(keys), keys))
        return plan

    def stage(self, plan: Plan) -> dict[str, exp.Query]:
        """Another warehouse only, before its transaction: each table's changed rows, streamed from the
        computing warehouse in batches into a staging table there. Returns a query of each."""
        types = {
            **dict(TRACK_COLUMNS),
            "audience_key": "varchar",
            "trait_key": "varchar",
            **self.rows.key_types(),
        }
        staged: dict[str, exp.Query] = {}
        for table, query, keys in plan:
            changed = {f"__changed_{key}": "bigint" for key in keys}
            columns = [(c, changed.get(c) or types[c]) for c in query.named_selects]
            stage = f"__engage_stage_{table}"
            empty = exp.select(*(exp.alias_(exp.cast(exp.null(), sql_type(t)), c) for c, t in columns))
            self.warehouse.create_temp_table(stage, empty.where(exp.false()))
            for _, batch in self.source.fetch_batches(query, BATCH_ROWS):
                self.warehouse.load(stage, columns, batch)
            staged[table] = exp.select(*(c for c, _ in columns)).from_(stage)
        return staged

    def write(self, plan: Plan, staged: dict[str, exp.Query] | None = None) -> int:
        """Inserts and upserts only (`prepare` made every table and column they need), from the changes
        themselves, or from what `stage` put in another warehouse."""
        written = 0
        for table, query, keys in plan:
            rows = staged[table] if staged is not None else query
            if table == "users":
                self._upsert_users(keys, rows)
                continue
            inserted = self._insert(table, rows)
            if table in ("identifies", "tracks"):
                written += inserted
            reached("writing")
        return written

    def _not_written(self, table: str, source: str) -> exp.Expr:
        """No row of `table` has the id of the `source` row yet (ids are deterministic, so a replayed
        run finds its rows already written)."""
        written = (
            exp.select(exp.Literal.number(1))
            .from_(exp.table_(table, db=self.schema, alias="t"))
            .where(exp.column("id", "t").eq(exp.column("id", source)))
        )
        return exp.not_(exp.Exists(this=written))

    def _insert(self, table: str, query: exp.Query) -> int:
        target = exp.table_(table, db=self.schema)
        columns = query.named_selects
        fresh = (
            exp.select(*(exp.column(c, "s") for c in columns))
            .from_(query.subquery("s"))
            .where(self._not_written(table, "s"))
        )
        return self.warehouse.insert(exp.insert(fresh, target, columns=columns))

    def _upsert_users(self, key_columns: dict[str, str], rows: exp.Query) -> None:
        """One row per user_id holding the latest value of every key (SPEC §5): new ids inserted, the
        others updated, or (engines without row updates) the table's new contents written over it."""
        loaded = exp.cast(exp.Literal.string(self.rows.loaded_at.isoformat(sep=" ")), "TIMESTAMP")

        def latest(key: str, users: str) -> exp.Expr:
            return (
                exp.case()
                .when(exp.column(f"__changed_{key}", "s").eq(1), exp.column(key, "s"))
                .else_(exp.column(key, users))
            )

        target = exp.table_("users", db=self.schema)
        if not self.warehouse.capabilities.row_updates:
            matched = exp.column("id", "s").is_(exp.null()).not_()
            columns = list(self.warehouse.table_columns(self.schema, "users"))
            values: dict[str, exp.Expr] = {c: exp.column(c, "u") for c in columns}
            values["id"] = exp.func("COALESCE", exp.column("id", "u"), exp.column("id", "s"))
            for column in ("received_at", "uuid_ts"):
                values[column] = exp.case().when(matched, loaded.copy()).else_(exp.column(column, "u"))
            values.update({key: latest(key, "u") for key in key_columns})
            merged = (
                exp.select(*(exp.alias_(values[c], c) for c in columns))
                .from_(target.copy().as_("u"))
                .join(
                    rows.subquery("s"),
                    on=exp.column("id", "u").eq(exp.column("id", "s")),
                    join_type="full outer",
                )
            )
            self.warehouse.overwrite(target, merged)
            return
        source = rows.subquery("s")
        missing = (
            exp.select(exp.column("id", "s"), loaded, loaded.copy())
            .from_(source)
            .where(self._not_written("users", "s"))
        )
        self.warehouse.execute(exp.insert(missing, target, columns=["id", "received_at", "uuid_ts"]))
        assignments = [
            exp.EQ(this=exp.column("received_at"), expression=loaded.copy()),
            exp.EQ(this=exp.column("uuid_ts"), expression=loaded.copy()),
        ]
        assignments += [exp.EQ(this=exp.column(key), expression=latest(key, "users")) for key in key_columns]
        update = exp.Update(
            this=target.copy(),
            expressions=assignments,
            from_=exp.From(this=source.copy()),
            where=exp.Where(this=exp.column("id", "users").eq(exp.column("id", "s"))),
        )
        self.warehouse.execute(update)
