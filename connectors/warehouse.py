"""`type: warehouse`: writes `engage_<space>` (identifies, users, tracks, one table per track event) into the
space's own warehouse, whatever its engine. Every write is `INSERT … SELECT` (or the engine's upsert) inside
the run's transaction where the engine has one: no call passes through Python."""

from __future__ import annotations

from sqlglot import exp

from engage.connector import Connector, Delivery
from engage.messages import STANDARD_COLUMNS, TRACK_COLUMNS, USERS_COLUMNS, WarehouseRows, sql_type
from engage.naming import snakecase
from engage.warehouse.base import Warehouse


class WarehouseConnector(Connector):
    name = "warehouse"

    def in_warehouse(self, warehouse: Warehouse) -> bool:
        return True

    def prepare(self, delivery: Delivery) -> None:
        TableWriter(delivery).prepare()

    def deliver(self, delivery: Delivery) -> int:
        return TableWriter(delivery).write()


class TableWriter:
    """Writes a delivery into the warehouse's `engage_<space>` tables with SQL only.

    Every insert skips ids already present, so replaying a run whose state did not advance writes
    nothing twice."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.warehouse = delivery.warehouse
        self.schema = delivery.schema
        self.rows: WarehouseRows = delivery.rows

    def _tables(self) -> list[tuple[str, list[tuple[str, str]], dict[str, str]]]:
        """(table, standard columns, key → type) of every table this delivery writes."""
        tables = []
        if "identify" in self.delivery.send:
            tables.append(("identifies", STANDARD_COLUMNS, self.rows.key_types()))
            tables.append(("users", USERS_COLUMNS, self.rows.key_types()))
        if "track" in self.delivery.send:
            tables.append(("tracks", TRACK_COLUMNS, {}))
            for _, event, label, kinds in self._events():
                tables.append(
                    (snakecase(event), [*TRACK_COLUMNS, (label, "varchar")], self.rows.key_types(kinds))
                )
        return tables

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
        with_values = {r[0] for r in self.warehouse.fetchall(self.rows.keys_with_values())}
        for table, standard, key_types in self._tables():
            self.warehouse.ensure_table(self.schema, table, [(c, sql_type(t)) for c, t in standard])
            existing = self.warehouse.table_columns(self.schema, table)
            for key in sorted(with_values & key_types.keys() - existing.keys()):
                self.warehouse.add_column(self.schema, table, key, sql_type(key_types[key]))

    def write(self) -> int:
        """Inserts and upserts only: `prepare` made every table and column they need."""
        keys = {
            table: {
                k: t for k, t in key_types.items() if k in self.warehouse.table_columns(self.schema, table)
            }
            for table, _, key_types in self._tables()
        }
        written = 0
        if "identify" in self.delivery.send:
            written += self._insert("identifies", self.rows.identifies(keys["identifies"]))
            self._upsert_users(keys["users"])
        if "track" in self.delivery.send:
            written += self._insert("tracks", self.rows.tracks())
            for call, event, label, _ in self._events():
                table = snakecase(event)
                self._insert(table, self.rows.tracks(call, label, keys[table]))
        return written

    def _insert(self, table: str, query: exp.Query) -> int:
        target = exp.table_(table, db=self.schema)
        columns = query.named_selects
        fresh = (
            exp.select(*(exp.column(c, "s") for c in columns))
            .from_(query.subquery("s"))
            .where(
                exp.not_(
                    exp.Exists(
                        this=exp.select(exp.Literal.number(1))
                        .from_(exp.table_(table, db=self.schema, alias="t"))
                        .where(exp.column("id", "t").eq(exp.column("id", "s")))
                    )
                )
            )
        )
        return self.warehouse.insert(exp.insert(fresh, target, columns=columns))

    def _upsert_users(self, key_columns: dict[str, str]) -> None:
        """One row per user_id holding the latest value of every key (SPEC §5)."""
        target = exp.table_("users", db=self.schema)
        source = self.rows.users(key_columns).subquery("s")
        loaded = exp.cast(exp.Literal.string(self.rows.loaded_at.isoformat(sep=" ")), "TIMESTAMP")
        missing = (
            exp.select(exp.column("id", "s"), loaded, loaded.copy())
            .from_(source)
            .where(
                exp.not_(
                    exp.Exists(
                        this=exp.select(exp.Literal.number(1))
                        .from_(exp.table_("users", db=self.schema, alias="u"))
                        .where(exp.column("id", "u").eq(exp.column("id", "s")))
                    )
                )
            )
        )
        self.warehouse.execute(exp.insert(missing, target, columns=["id", "received_at", "uuid_ts"]))
        assignments = [
            exp.EQ(this=exp.column("received_at"), expression=loaded.copy()),
            exp.EQ(this=exp.column("uuid_ts"), expression=loaded.copy()),
        ]
        for key in key_columns:
            keep = (
                exp.case()
                .when(exp.column(f"__changed_{key}", "s").eq(1), exp.column(key, "s"))
                .else_(exp.column(key, "users"))
            )
            assignments.append(exp.EQ(this=exp.column(key), expression=keep))
        update = exp.Update(
            this=target,
            expressions=assignments,
            from_=exp.From(this=source.copy()),
            where=exp.Where(this=exp.column("id", "users").eq(exp.column("id", "s"))),
        )
        self.warehouse.execute(update)
