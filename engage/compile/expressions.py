"""Small sqlglot builders the compiler shares: literals, time bounds and the comparison ops of SPEC §2.

User names enter SQL only as identifiers and user values only as literals; nothing here formats SQL text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlglot import exp

from engage.catalog import BOOLEAN, NUMERIC, TIMESTAMP, VARCHAR
from engage.compile.portable import to_double
from engage.definitions.models import Scalar
from engage.warehouse.capabilities import Capabilities

# Names of the shared columns the compiler adds; `__` keeps them apart from property and trait names.
PROFILE, USER_ID, ANONYMOUS_ID = "__profile", "__user_id", "__anonymous_id"
EVENT, TS, RECEIVED_AT, ROW_ID = "__event", "__ts", "__received_at", "__id"


def timestamp(moment: datetime | str, caps: Capabilities) -> exp.Expr:
    """A naive-UTC moment, typed to compare with the engine's event timestamps."""
    text = moment if isinstance(moment, str) else moment.isoformat(sep=" ")
    return exp.cast(exp.Literal.string(text), exp.DataType.build(caps.timestamp_type))


def sql_type(portable: str) -> exp.DataType:
    return exp.DataType.build(
        {"boolean": "BOOLEAN", "bigint": "BIGINT", "double": "DOUBLE", "timestamp": "TIMESTAMP"}.get(
            portable, "VARCHAR"
        )
    )


def false_if_null(predicate: exp.Expr) -> exp.Expr:
    """Two-valued logic for conditions: unknown (NULL) is false, so `not:` of it is true."""
    return exp.func("COALESCE", predicate, exp.false())


def _as_text(column: exp.Expr, column_type: str) -> exp.Expr:
    return column if column_type == VARCHAR else exp.cast(column, exp.DataType.Type.VARCHAR)


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _number(value: Scalar) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    try:
        return float(value)
    except ValueError:
        return None


def _operand(
    caps: Capabilities, column: exp.Expr, column_type: str, value: Scalar
) -> tuple[exp.Expr, exp.Expr]:
    """The column and the literal to compare it with, both in one type chosen from the column's type."""
    number = _number(value)
    if column_type in NUMERIC and number is not None:
        return column, exp.convert(number if not isinstance(value, int) else value)
    if column_type == TIMESTAMP and isinstance(value, str | datetime):
        return column, timestamp(str(value), caps)
    if column_type == BOOLEAN and isinstance(value, bool):
        return column, exp.convert(value)
    return _as_text(column, column_type), exp.Literal.string(_text(value))


def _ordered_operand(
    caps: Capabilities, column: exp.Expr, column_type: str, value: Scalar
) -> tuple[exp.Expr, exp.Expr]:
    """gt/gte/lt/lte: numbers compare as numbers even on a text column (non-numbers become NULL)."""
    number = _number(value)
    if number is not None and column_type not in NUMERIC and column_type != TIMESTAMP:
        return to_double(caps, column), exp.convert(number)
    return _operand(caps, column, column_type, value)


def compare(
    caps: Capabilities, column: exp.Expr, column_type: str, op: str, value: Scalar | list[Scalar] | None
) -> exp.Expr:
    """`column <op> value` with SPEC §2 semantics. NULL columns yield NULL (false) except `not_exists`."""
    if op == "exists":
        return column.is_(exp.null()).not_()
    if op == "not_exists":
        return column.is_(exp.null())
    if op in ("in", "not_in"):
        assert isinstance(value, list)
        pairs = [_operand(caps, column, column_type, v) for v in value]
        test = exp.In(this=pairs[0][0], expressions=[literal for _, literal in pairs])
        return test if op == "in" else exp.and_(column.is_(exp.null()).not_(), test.not_())
    assert value is not None and not isinstance(value, list)
    if op in ("contains", "not_contains", "starts_with", "ends_with"):
        text, needle = _as_text(column, column_type), exp.Literal.string(_text(value))
        if op == "contains":
            return exp.StrPosition(this=text, substr=needle) > 0
        if op == "not_contains":
            return exp.StrPosition(this=text, substr=needle).eq(0)
        # LEFT/RIGHT with the needle's length render on every engine (Postgres lacks ENDS_WITH).
        length = exp.Literal.number(len(_text(value)))
        edge = exp.Left if op == "starts_with" else exp.Right
        return edge(this=text, expression=length).eq(needle)
    if op in ("gt", "gte", "lt", "lte"):
        left, right = _ordered_operand(caps, column, column_type, value)
        builder = {"gt": exp.GT, "gte": exp.GTE, "lt": exp.LT, "lte": exp.LTE}[op]
        return builder(this=left, expression=right)
    left, right = _operand(caps, column, column_type, value)
    if op == "eq":
        return left.eq(right)
    if op == "neq":
        return left.neq(right)
    raise AssertionError(f"unhandled op {op}")


def union_all(branches: Sequence[exp.Query]) -> exp.Query:
    """`UNION ALL` of one or more queries with the same columns."""
    query = branches[0]
    for branch in branches[1:]:
        query = exp.union(query, branch, distinct=False, copy=False)
    return query


def conjunction(*predicates: exp.Expr) -> exp.Expr:
    """AND of the predicates, leaving out literal TRUEs (an absent window or filter)."""
    kept = [p for p in predicates if not (isinstance(p, exp.Boolean) and p.this is True)]
    return exp.and_(*kept) if kept else exp.true()
