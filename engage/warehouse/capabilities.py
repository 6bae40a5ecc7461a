"""What each engine can do, as flags the compiler, the diff and the writers read.

Engine differences live here and only here: no module outside an adapter asks which dialect it speaks.
The flags are plain data (no driver import), so `engage compile --dialect snowflake` works on a machine
without the Snowflake driver, and the fingerprint of a definition is computed with one fixed set of flags
(`CANONICAL`) whatever engine the space runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlglot import exp

from engage.errors import InputError

# How a "latest/first value by (timestamp, received_at, id)" aggregate is written:
#   arg_max        ARG_MAX(v, (ts, received_at, id))            tuple keys compare lexicographically
#   max_by_struct  MAX_BY(v, STRUCT(ts, received_at, id))       struct keys compare lexicographically
#   array_agg      (ARRAY_AGG(v ORDER BY ts, received_at, id))[first]   no ARG_MAX, no ordered keys
#   window         ROW_NUMBER() OVER (PARTITION BY profile ORDER BY …) = 1 in a query of its own
#                  (no arrays either: Redshift); the one case that costs an extra scan
Pick = Literal["arg_max", "max_by_struct", "array_agg", "window"]
# How a sorted array of distinct strings is aggregated:
#   list_sort      LIST_SORT(ARRAY_AGG(DISTINCT x))
#   ordered        ARRAY_AGG(DISTINCT x ORDER BY x)  (PostgreSQL)
#   array_sort     ARRAY_SORT(COLLECT_SET(x))
#   listagg        '[' || LISTAGG(DISTINCT quoted x, ',') WITHIN GROUP (ORDER BY …) || ']' (no arrays)
#                  (Redshift has no arrays; fakesnow keeps NULLs in a filtered, ordered ARRAY_AGG)
#   unnest         ARRAY(SELECT DISTINCT e FROM UNNEST(ARRAY_AGG(x IGNORE NULLS)) e ORDER BY e)
#                  (BigQuery: its emulator refuses DISTINCT with IGNORE NULLS in one aggregate)
SortedSet = Literal["list_sort", "ordered", "array_sort", "listagg", "unnest"]
# How an array aggregate leaves out NULLs: a FILTER (WHERE …) clause, natively (the engine drops them),
# or an IGNORE NULLS clause (BigQuery refuses arrays with a NULL element).
ArrayNulls = Literal["filter", "dropped", "ignore_nulls"]


@dataclass(frozen=True)
class Capabilities:
    """One engine's flags. `dialect` is the sqlglot dialect every statement is rendered in."""

    dialect: str
    pick: Pick = "arg_max"
    sorted_set: SortedSet = "list_sort"
    array_nulls: ArrayNulls = "filter"
    try_cast: bool = True  # TRY_CAST; else a numeric text test guards a plain CAST
    json_function: str = "TO_JSON"  # array → JSON text
    text_collation: str | None = None  # collation that orders text byte-wise, when the default may not
    qualify: bool = True  # QUALIFY filters window results; else a subquery does
    # How the engine stores unquoted names: engage's lower-case names are upper-cased for Snowflake.
    identifiers: Literal["lower", "upper"] = "lower"
    # The type of the naive-UTC moments engage compares event timestamps with. BigQuery's event columns
    # are TIMESTAMP, which sqlglot calls TIMESTAMPTZ there (its TIMESTAMP is BigQuery's DATETIME).
    timestamp_type: str = "TIMESTAMP"
    # Adding seconds to a timestamp: DATE_ADD on BigQuery returns a DATE, so it needs TIMESTAMP_ADD.
    add_seconds: Literal["date_add", "timestamp_add"] = "date_add"
    # A bare VARCHAR is VARCHAR(256) on Redshift: engage's text (state values, JSON lists) must not be cut.
    unbounded_text: bool = False
    # DELETE and UPDATE on plain tables. Spark without Delta has neither: a table that changes (the state,
    # `users`) gets its whole new contents written over it instead (`Warehouse.overwrite`).
    row_updates: bool = True
    # A pseudo-column naming a row, stable while nothing is written to its table (DuckDB's rowid). An
    # incremental identity run then deletes the rows it read by it instead of looking their keys up again.
    row_id: str | None = None


DUCKDB = Capabilities(dialect="duckdb", row_id="rowid")
POSTGRES = Capabilities(
    dialect="postgres",
    pick="array_agg",
    sorted_set="ordered",
    try_cast=False,
    text_collation="C",
    qualify=False,
)
REDSHIFT = Capabilities(
    dialect="redshift",
    pick="window",
    sorted_set="listagg",
    try_cast=False,
    unbounded_text=True,
)
SNOWFLAKE = Capabilities(
    dialect="snowflake",
    pick="array_agg",
    sorted_set="listagg",
    array_nulls="dropped",
    identifiers="upper",
)
BIGQUERY = Capabilities(
    dialect="bigquery",
    pick="array_agg",
    sorted_set="unnest",
    array_nulls="ignore_nulls",
    json_function="TO_JSON_STRING",
    timestamp_type="TIMESTAMPTZ",
    add_seconds="timestamp_add",
)
DATABRICKS = Capabilities(
    dialect="databricks",
    pick="max_by_struct",
    sorted_set="array_sort",
    array_nulls="dropped",
    row_updates=False,
)

BY_DIALECT: dict[str, Capabilities] = {
    c.dialect: c for c in (DUCKDB, POSTGRES, REDSHIFT, SNOWFLAKE, BIGQUERY, DATABRICKS)
}
BY_DIALECT["spark"] = DATABRICKS
# Fingerprints hash SQL compiled with these flags, so they do not depend on the space's engine.
CANONICAL = DUCKDB


def capabilities_for(dialect: str) -> Capabilities:
    try:
        return BY_DIALECT[dialect]
    except KeyError:
        known = ", ".join(sorted(BY_DIALECT))
        raise InputError(f"unknown dialect '{dialect}' (known: {known})") from None


def for_engine(caps: Capabilities, statement: exp.Expr) -> exp.Expr:
    """The rewrites every statement gets on its way to the engine: bare VARCHARs become unbounded text
    where a bare VARCHAR has a length limit (Redshift)."""
    if not caps.unbounded_text:
        return statement

    def unbounded(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.VARCHAR and not node.expressions:
            return exp.DataType.build("TEXT")
        return node

    return statement.transform(unbounded)
