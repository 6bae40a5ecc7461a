"""Audience conditions (SPEC §2) to boolean sqlglot expressions over the shared pass.

Every leaf is two-valued (unknown is false), so `not:` of a condition that cannot be evaluated for a
profile (a null trait, an aggregate over no events) is true, as Segment's builder behaves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from engage.compile.expressions import PROFILE, TS, compare, conjunction, false_if_null
from engage.compile.portable import add_seconds
from engage.compile.scan import ROW
from engage.definitions.models import (
    AllCondition,
    AnyCondition,
    EventCondition,
    FunnelCondition,
    InAudienceCondition,
    NotCondition,
    NotInAudienceCondition,
    TraitCondition,
)

if TYPE_CHECKING:
    from engage.compile.compiler import Compiler
    from engage.definitions.models import Condition

_COUNT_TESTS = {"at_least": exp.GTE, "at_most": exp.LTE, "exactly": exp.EQ}
_AGGREGATE_TESTS = {"gt": exp.GT, "gte": exp.GTE, "lt": exp.LT, "lte": exp.LTE, "eq": exp.EQ, "neq": exp.NEQ}


def condition(compiler: Compiler, node: Condition) -> exp.Expr:
    if isinstance(node, EventCondition):
        return event_condition(compiler, node)
    if isinstance(node, TraitCondition):
        value, value_type = compiler.trait_reference(node.trait)
        return false_if_null(compare(compiler.caps, value, value_type, node.op, node.value))
    if isinstance(node, InAudienceCondition):
        return compiler.audience_member(node.in_audience)
    if isinstance(node, NotInAudienceCondition):
        return exp.not_(compiler.audience_member(node.not_in_audience))
    if isinstance(node, FunnelCondition):
        return funnel(compiler, node)
    if isinstance(node, AllCondition):
        return exp.and_(*(exp.paren(condition(compiler, c)) for c in node.all))
    if isinstance(node, AnyCondition):
        return exp.or_(*(exp.paren(condition(compiler, c)) for c in node.any))
    if isinstance(node, NotCondition):
        return exp.not_(exp.paren(condition(compiler, node.not_)))
    raise AssertionError(f"unhandled condition {type(node).__name__}")


def event_condition(compiler: Compiler, node: EventCondition) -> exp.Expr:
    scan = compiler.scan
    table = compiler.catalog.event_table_name(node.event)
    resolved = {f.property: compiler.property_column([node.event], f.property) for f in node.where}
    aggregate = node.aggregate
    measured = compiler.property_column([node.event], aggregate[1]) if aggregate else None
    scan.read(table, [c for c in [measured, *resolved.values()] if c])
    match = conjunction(
        scan.event_is(table),
        compiler.window(node, scan.column(TS)),
        *compiler.filters(node.where, resolved, scan.column, scan.type_of),
    )
    if aggregate is not None:
        function, _, comparator, number = aggregate
        assert measured is not None
        value = exp.cast(scan.column(measured), exp.DataType.Type.DOUBLE)
        total = scan.aggregate(exp.func(function.upper(), exp.case().when(match, value)))
        return false_if_null(_AGGREGATE_TESTS[comparator](this=total, expression=exp.convert(number)))
    kind, count = node.count
    counted = scan.aggregate(exp.CountIf(this=match))
    return _COUNT_TESTS[kind](
        this=exp.func("COALESCE", counted, exp.Literal.number(0)), expression=exp.Literal.number(count)
    )


def funnel(compiler: Compiler, node: FunnelCondition) -> exp.Expr:
    """Its own query: the first step's events are parents; each later step keeps the parents it follows
    within its window (`p.ts < ts <= p.ts + within`, never past the as-of), and a performed step's events
    become the next parents. Every parent instance is tried (SPEC §2)."""
    first = node.first
    parents = _step_rows(compiler, first.event, first.where)
    current = compiler.add_cte(
        "funnel_step",
        exp.select(exp.column(PROFILE, ROW), exp.column(TS, ROW))
        .from_(parents.subquery(ROW))
        .where(compiler.window(first, exp.column(TS, ROW))),
    )
    for step in node.steps:
        rows = _step_rows(compiler, step.event, step.where).subquery(ROW)
        parent = exp.column(TS, "p")
        in_range = [exp.column(PROFILE, ROW).eq(exp.column(PROFILE, "p")), exp.column(TS, ROW) > parent]
        if step.within is not None:
            limit = add_seconds(compiler.caps, parent, int(step.within.total_seconds()))
            in_range.append(exp.column(TS, ROW) <= limit)
        if step.negated:
            follows = exp.select(exp.Literal.number(1)).from_(rows).where(exp.and_(*in_range))
            query = (
                exp.select(exp.column(PROFILE, "p"), exp.column(TS, "p"))
                .from_(exp.table_(current, alias="p"))
                .where(exp.not_(exp.Exists(this=follows)))
            )
        else:
            query = (
                exp.select(exp.column(PROFILE, "p"), exp.column(TS, ROW))
                .distinct()
                .from_(exp.table_(current, alias="p"))
                .join(rows, on=exp.and_(*in_range))
            )
        current = compiler.add_cte("funnel_step", query)
    done = compiler.add_cte("funnel", exp.select(exp.column(PROFILE)).distinct().from_(current))
    compiler.join_profiles(done)
    return exp.column(PROFILE, done).is_(exp.null()).not_()


def _step_rows(compiler: Compiler, event: str, filters: list) -> exp.Query:  # type: ignore[type-arg]
    """One event's visible rows with its filters applied, for a funnel step."""
    table = compiler.catalog.event_table_name(event)
    resolved = {f.property: compiler.property_column([event], f.property) for f in filters}
    columns = sorted({c for c in resolved.values() if c})
    rows = compiler.event_rows(table, columns)
    tables = compiler.catalog.tables_named(table)
    predicates = compiler.filters(
        filters,
        resolved,
        lambda c: exp.column(c, "f"),
        lambda c: compiler.catalog.column_type(tables, c),
    )
    if not predicates:
        return rows
    return exp.select("*").from_(rows.subquery("f")).where(conjunction(*predicates))
