"""The constructs engines spell differently, built from the engine's capability flags.

Everything else the compiler writes is plain sqlglot that renders alike on every engine; these builders
are the only place where the SQL itself (not just its spelling) depends on what the engine can do.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlglot import exp

from engage.warehouse.capabilities import Capabilities

# A number as text: optional sign, digits with an optional fraction (or a bare fraction), optional exponent.
NUMERIC_TEXT = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"


def text_order(caps: Capabilities, text: exp.Expr) -> exp.Expr:
    """Text that sorts and compares byte-wise, as on DuckDB, whatever the database's default collation."""
    if caps.text_collation is None:
        return text
    return exp.Collate(this=text, expression=exp.to_identifier(caps.text_collation, quoted=True))


def to_double(caps: Capabilities, value: exp.Expr) -> exp.Expr:
    """`value` as a double, NULL when it is not a number (never an error)."""
    double = exp.DataType.build("DOUBLE")
    text = exp.cast(value, exp.DataType.Type.VARCHAR)
    if caps.try_cast:  # from text, so that sqlglot keeps TRY_CAST where it only takes strings (Snowflake)
        return exp.TryCast(this=text, to=double)
    is_number = exp.RegexpLike(this=text, expression=exp.Literal.string(NUMERIC_TEXT))
    return exp.case().when(is_number, exp.cast(text.copy(), double))


def add_seconds(caps: Capabilities, moment: exp.Expr, seconds: int) -> exp.Expr:
    builder = exp.TimestampAdd if caps.add_seconds == "timestamp_add" else exp.DateAdd
    return builder(this=moment, expression=exp.Literal.number(seconds), unit=exp.var("SECOND"))


def ordered(columns: Sequence[exp.Expr], newest: bool) -> list[exp.Ordered]:
    """`columns` newest first (else oldest first); a NULL sorts as the smallest value either way."""
    return [exp.Ordered(this=column, desc=newest, nulls_first=not newest) for column in columns]


def first_per_profile(
    caps: Capabilities,
    profile: exp.Column,
    value: exp.Expr,
    source: exp.Expr,
    order: list[exp.Ordered],
    where: exp.Expr | None = None,
) -> exp.Select:
    """`__profile` and `value` of each profile's first row of `source` (where `where` holds) in `order`:
    QUALIFY where the engine has it, else a ranked subquery."""
    rank = exp.Window(this=exp.RowNumber(), partition_by=[profile.copy()], order=exp.Order(expressions=order))
    named = value if value.alias_or_name == "value" else exp.alias_(value, "value")
    picked = exp.select(profile, named).from_(source)
    if where is not None:
        picked = picked.where(where)
    if caps.qualify:
        return picked.qualify(rank.eq(1))
    ranked = picked.select(exp.alias_(rank, "rank"))
    return exp.select(profile.name, "value").from_(ranked.subquery("ranked")).where(exp.column("rank").eq(1))


def _array_agg(caps: Capabilities, value: exp.Expr, keep: exp.Expr, order: list[exp.Ordered]) -> exp.Expr:
    """ARRAY_AGG of `value` over the rows where `keep` holds, in `order` (no NULL element)."""
    if caps.array_nulls == "filter":
        ordered = exp.Order(this=value, expressions=order) if order else value
        return exp.Filter(this=exp.ArrayAgg(this=ordered), expression=exp.Where(this=keep))
    kept = exp.case().when(keep, value)
    if order and caps.array_nulls == "dropped":
        # Kept rows sort first, so the first element is right even where NULLs are not dropped after all
        # (fakesnow keeps them when the aggregate is ordered).
        first = exp.Ordered(
            this=exp.case().when(keep.copy(), exp.Literal.number(0)).else_(exp.Literal.number(1))
        )
        order = [first, *order]
    aggregate: exp.Expr = exp.ArrayAgg(this=exp.Order(this=kept, expressions=order) if order else kept)
    if caps.array_nulls == "ignore_nulls":
        aggregate = exp.IgnoreNulls(this=aggregate)
    return aggregate


def pick(
    caps: Capabilities,
    value: exp.Expr,
    order: Sequence[exp.Expr],
    keep: exp.Expr,
    newest: bool,
    value_type: exp.DataType,
) -> exp.Expr:
    """An aggregate: `value` of the newest (else the oldest) row where `keep` holds, rows ordered by the
    `order` columns lexicographically (SPEC §1: timestamp, then received_at, then id)."""
    if caps.pick == "arg_max":
        key = exp.case().when(keep, exp.Tuple(expressions=list(order)))
        return exp.func("ARG_MAX" if newest else "ARG_MIN", value, key)
    assert caps.pick != "window", "a window pick is a query of its own (Compiler.latest)"
    if caps.pick == "max_by_struct":
        key = exp.case().when(keep, exp.Struct(expressions=list(order)))
        return exp.func("ARG_MAX" if newest else "ARG_MIN", value, key)
    first = exp.Bracket(
        this=exp.paren(_array_agg(caps, value, keep, ordered(order, newest))),
        expressions=[exp.Literal.number(0)],
        offset=0,
        safe=True,
    )
    return exp.cast(first, value_type)  # some engines' arrays hold variants


def _listagg_json(caps: Capabilities, text: exp.Expr, keep: exp.Expr) -> exp.Expr:
    """JSON text built from strings, for engines without arrays: each value quoted and escaped."""
    escaped = exp.Replace(
        this=exp.Replace(
            this=text_order(caps, text),
            expression=exp.Literal.string("\\"),
            replacement=exp.Literal.string("\\\\"),
        ),
        expression=exp.Literal.string('"'),
        replacement=exp.Literal.string('\\"'),
    )
    quoted = exp.case().when(
        keep,
        exp.DPipe(
            this=exp.DPipe(this=exp.Literal.string('"'), expression=escaped),
            expression=exp.Literal.string('"'),
        ),
    )
    listed = exp.WithinGroup(
        this=exp.GroupConcat(this=exp.Distinct(expressions=[quoted]), separator=exp.Literal.string(",")),
        expression=exp.Order(expressions=[exp.Ordered(this=quoted.copy())]),
    )
    inner = exp.func("COALESCE", listed, exp.Literal.string(""))
    return exp.DPipe(
        this=exp.DPipe(this=exp.Literal.string("["), expression=inner), expression=exp.Literal.string("]")
    )


def sorted_set_json(caps: Capabilities, text: exp.Expr, keep: exp.Expr) -> exp.Expr:
    """JSON text of the sorted distinct non-null values of `text` over the rows where `keep` holds;
    `[]` when there are none."""
    listed: exp.Expr
    if caps.sorted_set == "list_sort":
        distinct = exp.Filter(
            this=exp.ArrayAgg(this=exp.Distinct(expressions=[text])), expression=exp.Where(this=keep)
        )
        listed = exp.func("LIST_SORT", distinct)
    elif caps.sorted_set == "listagg":
        return _listagg_json(caps, text, keep)
    elif caps.sorted_set == "unnest":
        element = exp.column("element")
        gathered = _array_agg(caps, text, keep, [])
        elements = (
            exp.select(element)
            .distinct()
            .from_(
                exp.Unnest(
                    expressions=[gathered], alias=exp.TableAlias(columns=[exp.to_identifier("element")])
                )
            )
            .order_by(exp.Ordered(this=element.copy()))
        )
        listed = exp.Array(expressions=[elements])
    elif caps.sorted_set == "array_sort":
        listed = exp.SortArray(this=exp.ArrayUniqueAgg(this=exp.case().when(keep, text)))
    else:
        collated = text_order(caps, text)
        if caps.array_nulls == "filter":
            ordered = exp.Order(
                this=exp.Distinct(expressions=[collated]), expressions=[exp.Ordered(this=collated.copy())]
            )
            listed = exp.Filter(this=exp.ArrayAgg(this=ordered), expression=exp.Where(this=keep))
        else:
            # With DISTINCT, the ORDER BY must be the aggregated expression itself.
            kept = exp.case().when(keep, collated)
            ordered = exp.Order(
                this=exp.Distinct(expressions=[kept]), expressions=[exp.Ordered(this=kept.copy())]
            )
            listed = exp.ArrayAgg(this=ordered)
            if caps.array_nulls == "ignore_nulls":
                listed = exp.IgnoreNulls(this=listed)
    as_json = exp.cast(exp.func(caps.json_function, listed), exp.DataType.Type.VARCHAR)
    return exp.func("COALESCE", as_json, exp.Literal.string("[]"))
