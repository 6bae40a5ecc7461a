"""What the space's source schemas hold: tables, columns and their types (SPEC §1).

The compiler reads definitions against a `Catalog` instead of a live connection, so it stays pure: the
warehouse adapter builds the catalog once per run from information_schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engage.naming import snakecase

# Conditions address pages and screens as these events, with the page/screen `name` as a property.
PAGE_EVENT = "Page Viewed"
SCREEN_EVENT = "Screen Viewed"
_SPECIAL_EVENT_TABLES = {PAGE_EVENT: "pages", SCREEN_EVENT: "screens"}
# Tables every Connections source may have that are not per-event tables.
RESERVED_TABLES = ("tracks", "identifies", "users", "pages", "screens", "groups", "aliases")
# What Profiles Sync lands next to the events, and what engage materializes from it (SPEC §6): not events.
IDENTITY_TABLES = (
    "id_graph_updates",
    "external_id_mapping_updates",
    "profile_traits_updates",
    "id_graph",
    "external_id_mapping",
    "profile_traits",
)

# engage's portable column types, from the warehouse's own type names.
BOOLEAN, BIGINT, DOUBLE, VARCHAR, TIMESTAMP, OTHER = (
    "boolean",
    "bigint",
    "double",
    "varchar",
    "timestamp",
    "other",
)
NUMERIC = (BIGINT, DOUBLE)


def portable_type(warehouse_type: str) -> str:
    """Maps a warehouse type name (`INTEGER`, `DECIMAL(18,3)`, `TIMESTAMP WITH TIME ZONE`…) to engage's."""
    name = warehouse_type.upper()
    if name.startswith("BOOL"):
        return BOOLEAN
    integers = ("TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT", "UBIGINT", "UINTEGER")
    if name in (*integers, "INT2", "INT4", "INT8", "INT64"):
        return BIGINT
    if name.startswith(("DOUBLE", "FLOAT", "REAL", "DECIMAL", "NUMERIC")):
        return DOUBLE
    if name.startswith(("VARCHAR", "TEXT", "STRING", "CHAR", "UUID", "JSON")):
        return VARCHAR
    if name.startswith(("TIMESTAMP", "DATETIME", "DATE")):
        return TIMESTAMP
    return OTHER


@dataclass(frozen=True)
class Table:
    source: str
    name: str
    columns: dict[str, str] = field(default_factory=dict)  # column → portable type


@dataclass(frozen=True)
class Catalog:
    """The tables of a space's sources, keyed by (source, table)."""

    sources: tuple[str, ...]
    tables: dict[tuple[str, str], Table]

    def source_exists(self, source: str) -> bool:
        return any(s == source for s, _ in self.tables)

    def columns(self, source: str, table: str) -> dict[str, str]:
        """Column name → portable type of one table; empty when the catalog does not hold it."""
        found = self.tables.get((source, table))
        return dict(found.columns) if found else {}

    def tables_named(self, name: str) -> list[Table]:
        """The table `name` in every source that has it, in the order the space lists its sources."""
        return [self.tables[(s, name)] for s in self.sources if (s, name) in self.tables]

    @staticmethod
    def event_table_name(event: str) -> str:
        """`Order Completed` → `order_completed`; `Page Viewed` → `pages`; `Screen Viewed` → `screens`."""
        return _SPECIAL_EVENT_TABLES.get(event, snakecase(event))

    def event_tables(self, event: str) -> list[Table]:
        name = self.event_table_name(event)
        if (name in RESERVED_TABLES and event not in _SPECIAL_EVENT_TABLES) or name in IDENTITY_TABLES:
            return []
        return self.tables_named(name)

    def event_table_names(self) -> list[str]:
        """The tables conditions can name as events: per-event tables, pages and screens."""
        special = set(_SPECIAL_EVENT_TABLES.values())
        return sorted(
            {
                n
                for _, n in self.tables
                if (n not in RESERVED_TABLES or n in special)
                and n not in IDENTITY_TABLES
                and not n.startswith("_engage_")
            }
        )

    @staticmethod
    def property_column_candidates(prop: str) -> list[str]:
        """A dotted property is the flattened column; Segment also snake_cases property names."""
        flat = prop.replace(".", "_")
        return list(dict.fromkeys([flat, "_".join(snakecase(part) for part in prop.split("."))]))

    def property_column(self, tables: list[Table], prop: str) -> str | None:
        """The column holding `prop` in any of `tables`, or None when no table has it."""
        for candidate in self.property_column_candidates(prop):
            if any(candidate in t.columns for t in tables):
                return candidate
        return None

    def column_type(self, tables: list[Table], column: str) -> str:
        """One type for a column across tables: equal types stay; mixed numbers widen; else varchar."""
        types = {t.columns[column] for t in tables if column in t.columns}
        if len(types) == 1:
            return types.pop()
        if types and types <= set(NUMERIC):
            return DOUBLE
        return VARCHAR
