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

    def write(self) -> int:
        self.warehouse.ensure_schema(self.schema)
        with_values = {r[0] for r in self.warehouse.fetchall(self.rows.keys_with_values())}
        written = 0
        if "identify" in self.delivery.send:
            keys = self._key_columns("identifies", STANDARD_COLUMNS, self.rows.key_types(), with_values)
            written += self._insert("identifies", self.rows.identifies(keys))
            self._upsert_users(self._key_columns("users", USERS_COLUMNS, self.rows.key_types(), with_values))
        if "track" in self.delivery.send:
            written += self._insert_table("tracks", TRACK_COLUMNS, self.rows.tracks())
            events = self.delivery.context.events
            for call, event, label, kinds in (
                ("entered", events.audience_entered, "audience_key", ("audience",)),
                ("exited", events.audience_exited, "audience_key", ("audience",)),
                ("computed", events.trait_computed, "trait_key", ("trait", "sql_trait")),
            ):
                if not any(d.kind in kinds for d in self.delivery.definitions):
                    continue
                table = snakecase(event)
                columns = [*TRACK_COLUMNS, (label, "varchar")]
                keys = self._key_columns(table, columns, self.rows.key_types(kinds), with_values)
                self._insert_table(table, columns, self.rows.tracks(call, label, keys))
        return written

    def _key_columns(
        self, table: str, standard: list[tuple[str, str]], key_types: dict[str, str], with_values: set[str]
    ) -> dict[str, str]:
        """Creates the table if needed and adds a column for each key whose first non-null value arrived;
        returns the key columns the table has now."""
        self.warehouse.ensure_table(self.schema, table, [(c, sql_type(t)) for c, t in standard])
        existing = self.warehouse.table_columns(self.schema, table)
        for key in sorted(with_values & key_types.keys() - existing.keys()):
            self.warehouse.add_column(self.schema, table, key, sql_type(key_types[key]))
            existing[key] = key_types[key]
        return {k: t for k, t in key_types.items() if k in existing}

    def _insert_table(self, table: str, standard: list[tuple[str, str]], query: exp.Query) -> int:
        self.warehouse.ensure_table(self.schema, table, [(c, sql_type(t)) for c, t in standard])
        return self._insert(table, query)

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
