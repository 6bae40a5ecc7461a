"""The compiler, without a database: golden SQL, one scan per source table, fingerprints, dialects.

Golden files live in tests/golden/; regenerate them with `UPDATE_GOLDEN=1 python -m pytest tests/test_compile.py`
and review the diff like code.
"""

from __future__ import annotations

import os
import re
import textwrap
from datetime import datetime
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from engage import diff
from engage.catalog import Catalog, Table
from engage.compile.compiler import CompiledSpace, compile_space
from engage.definitions.loader import LoadedDefinition, load_definitions
from engage.identity import UserElseAnonymous
from engage.state import STATE_COLUMNS
from engage.warehouse.capabilities import capabilities_for, for_engine

GOLDEN = Path(__file__).parent / "golden"
AS_OF = datetime(2024, 3, 1, 12, 0, 0)
STANDARD = {"id": "varchar", "user_id": "varchar", "anonymous_id": "varchar", "timestamp": "timestamp",
            "received_at": "timestamp"}  # fmt: skip


def catalog(*sources: str) -> Catalog:
    tables: dict[tuple[str, str], Table] = {}
    for source in sources:
        for name, extra in {
            "tracks": {"event": "varchar", "event_text": "varchar"},
            "identifies": {"plan": "varchar", "email": "varchar", "age": "bigint"},
            "pages": {"name": "varchar", "path": "varchar"},
            "order_completed": {"revenue": "double", "currency": "varchar", "product_sku": "varchar"},
            "product_viewed": {"category": "varchar", "price": "double"},
        }.items():
            tables[(source, name)] = Table(source, name, {**STANDARD, **extra})
    return Catalog(tuple(sources), tables)


def definitions(tmp_path: Path, text: str) -> list[LoadedDefinition]:
    folder = tmp_path / "defs"
    folder.mkdir(exist_ok=True)
    (folder / "d.yml").write_text(textwrap.dedent(text))
    return load_definitions(folder, tmp_path, "duckdb")


def compiled(tmp_path: Path, text: str, *sources: str, dialect: str = "duckdb") -> CompiledSpace:
    return compile_space(
        definitions(tmp_path, text),
        catalog(*(sources or ("website",))),
        UserElseAnonymous(),
        AS_OF,
        caps=capabilities_for(dialect),
    )


SPACE = """
    kind: audience
    name: Repeat Buyers
    condition:
      all:
        - performed: Order Completed
          at_least: 2
          within: 30d
          where:
            - {property: revenue, op: gt, value: 50}
            - {property: product.sku, op: starts_with, value: "sku-"}
        - not:
            trait: plan
            op: eq
            value: enterprise
    ---
    kind: audience
    name: Viewers Not Buyers
    include_anonymous: true
    condition:
      all:
        - performed: Product Viewed
          within: 7d
        - not_performed: Order Completed
        - performed: Page Viewed
          where: [{property: name, op: in, value: [Pricing, Home]}]
    ---
    kind: trait
    name: Lifetime Revenue
    type: sum
    event: Order Completed
    property: revenue
    ---
    kind: trait
    name: Categories
    type: unique_list
    event: Product Viewed
    property: category
    ---
    kind: trait
    name: Last Currency
    type: last
    event: Order Completed
    property: currency
"""


def check_golden(name: str, sql: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(sql + "\n")
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert sql + "\n" == path.read_text()


def test_golden_duckdb(tmp_path: Path) -> None:
    space = compiled(tmp_path, SPACE, "website", "ios")
    ((_, sql),) = space.statements()
    check_golden("space.duckdb.sql", sql)


EVERY_TRAIT = """
    ---
    kind: trait
    name: Latest Category
    type: last
    event: Product Viewed
    property: category
    ---
    kind: trait
    name: First Currency
    type: first
    event: Order Completed
    property: currency
    ---
    kind: trait
    name: Favourite Category
    type: most_frequent
    event: Product Viewed
    property: category
    ---
    kind: audience
    name: Cheap Viewers
    condition:
      performed: Product Viewed
      where: [{property: category, op: lt, value: 10}]
    ---
    kind: audience
    name: Viewed Then Bought
    condition:
      funnel:
        - {performed: Product Viewed}
        - {then_performed: Order Completed, within: 1d}
"""


def test_golden_redshift(tmp_path: Path) -> None:
    """Redshift cannot run here: its SQL is checked as text, and for the constructs Redshift lacks."""
    space = compiled(tmp_path, SPACE + EVERY_TRAIT, "website", "ios", dialect="redshift")
    ((_, sql),) = space.statements()
    check_golden("space.redshift.sql", sql)


# Functions and clauses Redshift does not have (sqlglot passes most of them through without a word).
REDSHIFT_LACKS = [
    r"\bARRAY_AGG\(", r"\bARG_M(AX|IN)\(", r"\bM(AX|IN)_BY\(", r"\bFILTER\s*\(", r"\bTRY_CAST\(",
    r"\bLIST_SORT\(", r"\bSORT_ARRAY\(", r"\bTO_JSON", r"\bCOUNT_IF\(", r"\bIS (NOT )?DISTINCT FROM\b",
    r"\bSTRUCT\(", r"\bARRAY\[", r"\bCONCAT\(\s*[^,()]+,[^,()]+,",
]  # fmt: skip


def test_redshift_sql_avoids_what_redshift_lacks(tmp_path: Path) -> None:
    space = compiled(tmp_path, SPACE + EVERY_TRAIT, "website", "ios", dialect="redshift")
    ((_, sql),) = space.statements()
    no_state = exp.select(*(exp.alias_(exp.cast(exp.null(), t), c) for c, t in STATE_COLUMNS)).where(
        exp.false()
    )
    changes = diff.changes("default", space.definitions, no_state, 1)
    diff_sql = for_engine(space.caps, changes).sql(dialect="redshift")  # as the adapter renders it
    for text in (sql, diff_sql):
        found = [p for p in REDSHIFT_LACKS if re.search(p, text, flags=re.IGNORECASE)]
        assert not found, f"Redshift has no {found}"
        assert not re.search(r"\bVARCHAR\b(?!\()", text), "a bare VARCHAR is VARCHAR(256) on Redshift"
    assert re.search(r"LISTAGG\(\s*DISTINCT", sql) and "ROW_NUMBER() OVER" in sql


def test_bigquery_sql_compares_timestamps_with_timestamps(tmp_path: Path) -> None:
    """BigQuery's event columns are TIMESTAMP, and real BigQuery refuses to compare one with a DATETIME
    (sqlglot's spelling of TIMESTAMP) or to DATE_ADD it; its emulator accepts both, so this is checked here."""
    space = compiled(tmp_path, SPACE + EVERY_TRAIT, "website", "ios", dialect="bigquery")
    ((_, sql),) = space.statements()
    assert "DATETIME" not in sql and "DATE_ADD(" not in sql
    assert "CAST('2024-03-01 12:00:00' AS TIMESTAMP)" in sql and "TIMESTAMP_ADD(" in sql


@pytest.mark.parametrize("dialect", ["postgres", "redshift", "snowflake", "bigquery", "databricks"])
def test_other_dialects_render_sql_that_parses_back(tmp_path: Path, dialect: str) -> None:
    space = compiled(tmp_path, SPACE, dialect=dialect)
    ((_, sql),) = space.statements()
    parsed = sqlglot.parse_one(sql, read=dialect)
    assert isinstance(parsed, exp.Select)
    assert "order_completed" in sql.lower()


def _reads(sql: str, table: str) -> int:
    return sum(1 for t in sqlglot.parse_one(sql, read="duckdb").find_all(exp.Table) if t.name == table)


def test_tables_read_together_share_one_family_pass(tmp_path: Path) -> None:
    space = compiled(tmp_path, """
        kind: trait
        name: Product Events
        type: count
        event: [Product Viewed, Order Completed]
        ---
        kind: audience
        name: Buyers
        condition: {performed: Order Completed}
    """)  # fmt: skip
    scans = {c.alias: c for c in space.query.find_all(exp.CTE) if c.alias.startswith("scan_")}
    assert set(scans) == {"scan_identifies", "scan_order_completed", "scan_pages", "scan_tracks"}
    tables = {t.name for t in scans["scan_order_completed"].find_all(exp.Table)}
    assert tables == {"order_completed", "product_viewed"}


def test_one_scan_per_source_table_however_many_definitions_read_it(tmp_path: Path) -> None:
    many = [
        f"kind: audience\nname: Buyers {n}\ncondition: {{performed: Order Completed, at_least: {n}, within: {n}d}}\n"
        for n in range(1, 11)
    ]
    many.append("kind: trait\nname: Revenue\ntype: sum\nevent: Order Completed\nproperty: revenue\n")
    space = compiled(tmp_path, "---\n".join(many), "website", "ios")
    ((_, sql),) = space.statements()
    assert _reads(sql, "order_completed") == 2  # once per source, not once per definition
    assert _reads(sql, "tracks") == 2 and _reads(sql, "identifies") == 2 and _reads(sql, "pages") == 2
    assert _reads(sql, "product_viewed") == 0
    assert len(space.definitions) == 11


def test_identical_conditions_share_one_aggregate(tmp_path: Path) -> None:
    space = compiled(tmp_path, """
        kind: audience
        name: A
        condition: {performed: Order Completed, within: 7d}
        ---
        kind: audience
        name: B
        condition: {any: [{performed: Order Completed, within: 7d}, {performed: Product Viewed}]}
    """)  # fmt: skip
    scans = [c for c in space.query.find_all(exp.CTE) if c.alias.startswith("scan_")]
    count_ifs = [node for scan in scans for node in scan.find_all(exp.CountIf)]
    assert len(count_ifs) == 2


def test_funnels_and_most_frequent_get_their_own_queries(tmp_path: Path) -> None:
    space = compiled(
        tmp_path,
        """
        kind: audience
        name: Viewed Then Bought
        condition:
          funnel:
            - performed: Product Viewed
            - then_performed: Order Completed
              within: 1d
        ---
        kind: trait
        name: Top Category
        type: most_frequent
        event: Product Viewed
        property: category
    """,
    )
    names = [cte.alias for cte in space.query.find_all(exp.CTE)]
    assert {"scan_product_viewed", "profiles", "profile_aggregates"} <= set(names)
    assert any(n.startswith("funnel_") for n in names) and any(n.startswith("most_frequent_") for n in names)


def fingerprint_of(tmp_path: Path, text: str) -> str:
    (definition,) = compiled(tmp_path, text).definitions
    return definition.fingerprint


def test_fingerprint_ignores_name_key_description_and_layout(tmp_path: Path) -> None:
    base = fingerprint_of(
        tmp_path, "kind: audience\nname: A\ncondition: {performed: Order Completed, within: 7d}\n"
    )
    same = fingerprint_of(
        tmp_path,
        """
        # a comment
        kind: audience
        name: Something Else
        key: other_key
        description: new words
        condition:
          performed: Order Completed
          within: 168h
    """,
    )
    assert same == base


def test_fingerprint_changes_with_logic(tmp_path: Path) -> None:
    base = fingerprint_of(
        tmp_path, "kind: audience\nname: A\ncondition: {performed: Order Completed, within: 7d}\n"
    )
    for changed in (
        "kind: audience\nname: A\ncondition: {performed: Order Completed, within: 8d}\n",
        "kind: audience\nname: A\ncondition: {performed: Order Completed, within: 7d, at_least: 2}\n",
        "kind: audience\nname: A\ninclude_anonymous: true\ncondition: {performed: Order Completed, within: 7d}\n",
        "kind: audience\nname: A\ncondition: {performed: Product Viewed, within: 7d}\n",
    ):
        assert fingerprint_of(tmp_path, changed) != base, changed


def test_fingerprint_does_not_depend_on_the_as_of_or_other_definitions(tmp_path: Path) -> None:
    text = "kind: audience\nname: A\ncondition: {performed: Order Completed, within: 7d}\n"
    alone = compiled(tmp_path, text).definitions[0].fingerprint
    later = compile_space(definitions(tmp_path, text), catalog("website"), UserElseAnonymous(),
                          datetime(2030, 1, 1)).definitions[0].fingerprint  # fmt: skip
    crowded = compiled(tmp_path, text + "---\nkind: trait\nname: B\ntype: count\nevent: Product Viewed\n")
    assert alone == later == crowded.definitions[0].fingerprint


def test_values_enter_sql_as_literals_never_as_text(tmp_path: Path) -> None:
    space = compiled(
        tmp_path,
        """
        kind: audience
        name: Tricky
        condition:
          performed: Order Completed
          where: [{property: currency, op: eq, value: "x'; DROP TABLE website.tracks; --"}]
    """,
    )
    ((_, sql),) = space.statements()
    statements = sqlglot.parse(sql, read="duckdb")
    assert len(statements) == 1 and isinstance(statements[0], exp.Select)
    literals = {lit.this for lit in statements[0].find_all(exp.Literal) if lit.is_string}
    assert "x'; DROP TABLE website.tracks; --" in literals
