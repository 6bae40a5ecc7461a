"""Computed traits (SPEC §2 table): each type is one aggregate of the shared pass, except most_frequent.

A trait has a value only for profiles with at least one visible event of its event type(s); for them,
"no qualifying event" gives the type's empty value (0, [] or null).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from sqlglot import exp

from engage.catalog import BIGINT, DOUBLE, VARCHAR
from engage.compile.expressions import PROFILE, TS, conjunction, sql_type, union_all
from engage.compile.portable import first_per_profile, sorted_set_json, text_order
from engage.compile.scan import ROW
from engage.definitions.models import TraitDefinition

if TYPE_CHECKING:
    from engage.compile.compiler import Compiler

JSON = "json"  # unique lists: JSON text of a sorted array of strings (SPEC §5)


def trait_value(compiler: Compiler, trait: TraitDefinition) -> tuple[exp.Expr, str]:
    """The trait's value expression over the shared pass, and its portable type."""
    scan = compiler.scan
    tables = [compiler.catalog.event_table_name(e) for e in trait.events]
    columns = {f.property for f in trait.where}
    prop_column = None
    if trait.property is not None:
        prop_column = compiler.property_column(trait.events, trait.property)
    resolved = {p: compiler.property_column(trait.events, p) for p in columns}
    for table in tables:
        scan.read(
            table,
            [c for c in [prop_column, *resolved.values()] if c],
            ordered=trait.type in ("first", "last"),
        )
    match = conjunction(
        scan.event_is(*tables),
        compiler.window(trait, scan.column(TS)),
        *compiler.filters(trait.where, resolved, scan.column, scan.type_of),
    )
    has_events = scan.aggregate(exp.CountIf(this=scan.event_is(*tables))) > 0

    def when_has(value: exp.Expr) -> exp.Expr:
        return exp.case().when(has_events, value)

    if trait.type == "count":
        return when_has(scan.aggregate(exp.CountIf(this=match))), BIGINT
    assert prop_column is not None
    prop = scan.column(prop_column)
    prop_type = scan.type_of(prop_column)
    number = exp.cast(prop, exp.DataType.Type.DOUBLE)
    if trait.type == "sum":
        total = scan.aggregate(exp.func("SUM", exp.case().when(match, number)))
        return when_has(exp.func("COALESCE", total, exp.Literal.number(0))), DOUBLE
    if trait.type in ("avg", "min", "max"):
        return when_has(scan.aggregate(exp.func(trait.type.upper(), exp.case().when(match, number)))), DOUBLE
    if trait.type in ("first", "last"):
        known = exp.and_(match, prop.is_(exp.null()).not_())
        return compiler.latest(tables, prop_column, known, trait.type == "last", prop_type), prop_type
    if trait.type == "unique_list":
        text = exp.cast(prop, exp.DataType.Type.VARCHAR)
        known = exp.and_(match, prop.is_(exp.null()).not_())
        return when_has(scan.aggregate(sorted_set_json(compiler.caps, text, known))), JSON
    if trait.type == "unique_list_count":
        distinct = exp.Count(this=exp.Distinct(expressions=[exp.case().when(match, prop)]))
        return when_has(scan.aggregate(distinct)), BIGINT
    if trait.type == "most_frequent":
        return when_has(most_frequent(compiler, trait, tables, prop_column, resolved)), prop_type
    raise AssertionError(f"unhandled trait type {trait.type}")


def most_frequent(
    compiler: Compiler,
    trait: TraitDefinition,
    tables: list[str],
    prop_column: str,
    resolved: Mapping[str, str | None],
) -> exp.Expr:
    """Its own query: counts per (profile, value), then the value seen at least `min_frequency` times
    with the highest count; ties go to the alphabetically first value."""
    needed = sorted({prop_column, *(c for c in resolved.values() if c)})
    rows = union_all([compiler.event_rows(table, needed) for table in tables])
    row = ROW
    prop = exp.column(prop_column, row)
    types = {
        c: compiler.catalog.column_type(
            [t for name in tables for t in compiler.catalog.tables_named(name)], c
        )
        for c in needed
    }
    match = conjunction(
        compiler.window(trait, exp.column(TS, row)),
        prop.is_(exp.null()).not_(),
        *compiler.filters(trait.where, resolved, lambda c: exp.column(c, row), lambda c: types[c]),
    )
    counts = (
        exp.select(
            exp.column(PROFILE, row), exp.alias_(prop, "value"), exp.alias_(exp.Count(this=exp.Star()), "n")
        )
        .from_(rows.subquery(row))
        .where(match)
        .group_by(exp.column(PROFILE, row), prop)
        .having(exp.Count(this=exp.Star()) >= trait.frequency)
    )
    order = [
        exp.Ordered(this=exp.column("n"), desc=True),
        exp.Ordered(
            this=text_order(compiler.caps, exp.cast(exp.column("value"), sql_type(VARCHAR))), desc=False
        ),
    ]
    top = first_per_profile(
        compiler.caps, exp.column(PROFILE), exp.column("value"), counts.subquery("counts"), order
    )
    name = compiler.add_cte("most_frequent", top)
    compiler.join_profiles(name)
    return exp.column("value", name)
