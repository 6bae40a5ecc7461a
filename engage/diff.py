"""The diff: this run's values against the state, as one SQL statement run in the warehouse.

`current_long` unpivots the current-values table into one row per (definition, trait key, profile);
`changes` full-outer-joins it with the state and keeps what must be sent, each row with the
deterministic ids of the calls it belongs to. Only these tables' small summaries reach Python.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlglot import exp

from engage.compile.compiler import CompiledDefinition, Output
from engage.compile.expressions import ANONYMOUS_ID, PROFILE, USER_ID, union_all

CURRENT, CURRENT_LONG, CHANGES = "__engage_current", "__engage_current_long", "__engage_changes"
FLOAT_TOLERANCE = 1e-9
# One call per (definition, profile) and run: audiences enter or exit, traits are computed.
ENTERED, EXITED, CHANGED = "entered", "exited", "changed"


def computation_id(space: str, key: str, kind: str) -> str:
    """A stable id per computation (Segment's `computation_id`): it survives logic changes and renames
    that keep the key."""
    prefix = "aud" if kind == "audience" else "tra"
    return f"{prefix}_{hashlib.sha256(f'{space}/{key}'.encode()).hexdigest()[:24]}"


def _text(output: Output, column: exp.Expr) -> exp.Expr:
    if output.value_type == "json":  # already JSON text
        return column
    if output.value_type == "boolean":
        return (
            exp.case()
            .when(column, exp.Literal.string("true"))
            .when(column.not_(), exp.Literal.string("false"))
        )
    return exp.cast(column, "VARCHAR")


def _number(output: Output, column: exp.Expr) -> exp.Expr:
    if output.value_type in ("bigint", "double"):
        return exp.cast(column, "DOUBLE")
    return exp.cast(exp.null(), "DOUBLE")


def current_long(definitions: Sequence[CompiledDefinition]) -> exp.Query:
    """One row per (definition, trait key, profile) that has something to keep: audience members,
    non-null trait values, and every column of every profile an SQL trait returned. A profile with neither
    a user_id nor an anonymous_id (possible with identity resolution) has nothing to send, so it keeps no
    state: the run in which it gains an identifier sends it everything."""
    identified = exp.or_(
        exp.column(USER_ID, CURRENT).is_(exp.null()).not_(),
        exp.column(ANONYMOUS_ID, CURRENT).is_(exp.null()).not_(),
    )
    branches: list[exp.Select] = []
    for definition in definitions:
        for output in definition.outputs:
            column = exp.column(output.trait_key, CURRENT)
            if output.kind == "audience":
                keep: exp.Expr = column
            elif output.kind == "trait":
                keep = column.is_(exp.null()).not_()
            else:
                assert output.present is not None
                keep = exp.column(output.present, CURRENT)
            branches.append(
                exp.select(
                    exp.alias_(exp.Literal.string(definition.key), "definition_key"),
                    exp.alias_(exp.Literal.string(output.trait_key), "trait_key"),
                    exp.alias_(exp.column(PROFILE, CURRENT), "profile_id"),
                    exp.alias_(exp.column(USER_ID, CURRENT), "user_id"),
                    exp.alias_(exp.column(ANONYMOUS_ID, CURRENT), "anonymous_id"),
                    exp.alias_(_text(output, column), "value_text"),
                    exp.alias_(_number(output, column), "value_num"),
                )
                .from_(CURRENT)
                .where(exp.and_(keep, identified.copy()))
            )
    if not branches:
        columns = ["definition_key", "trait_key", "profile_id", "user_id", "anonymous_id", "value_text"]
        return exp.select(
            *(exp.alias_(exp.cast(exp.null(), "VARCHAR"), c) for c in columns),
            exp.alias_(exp.cast(exp.null(), "DOUBLE"), "value_num"),
        ).where(exp.false())
    return union_all(branches)


def definitions_relation(space: str, definitions: Sequence[CompiledDefinition]) -> exp.Query:
    """The run's definitions as a VALUES relation: key, fingerprint, kind, computation id."""
    rows = [
        exp.tuple_(
            exp.Literal.string(d.key),
            exp.Literal.string(d.fingerprint),
            exp.Literal.string(d.kind),
            exp.Literal.string(computation_id(space, d.key, d.kind)),
        )
        for d in definitions
    ]
    columns = ["definition_key", "fingerprint", "kind", "computation_id"]
    if not rows:
        return exp.select(*(exp.alias_(exp.cast(exp.null(), "VARCHAR"), c) for c in columns)).where(
            exp.false()
        )
    values = exp.values(rows, alias="d", columns=columns)
    return exp.select(*(exp.column(c, "d") for c in columns)).from_(values)


def _same(current: str, previous: str) -> exp.Expr:
    """Equal text, or numbers within a relative tolerance (summation order must not look like a change)."""
    new_num, old_num = exp.column("value_num", current), exp.column("value_num", previous)
    close = exp.and_(
        new_num.is_(exp.null()).not_(),
        old_num.is_(exp.null()).not_(),
        exp.Abs(this=new_num - old_num)
        <= exp.Literal.number(FLOAT_TOLERANCE)
        * exp.func("GREATEST", exp.Abs(this=new_num), exp.Abs(this=old_num)),
    )
    new_text, old_text = exp.column("value_text", current), exp.column("value_text", previous)
    # Spelled out rather than IS NOT DISTINCT FROM, which Redshift lacks.
    equal_text = exp.or_(
        new_text.eq(old_text), exp.and_(new_text.is_(exp.null()), old_text.copy().is_(exp.null()))
    )
    return exp.or_(equal_text, exp.paren(close))


def changes(
    space: str,
    definitions: Sequence[CompiledDefinition],
    previous: exp.Query,
    generation: int | str | None,
    current: exp.Query | None = None,
) -> exp.Query:
    """The changes of a run: rows to send, with transition, message value and deterministic call ids.
    `current` (default: this run's `CURRENT_LONG`) has its columns; against an empty `previous`, the
    rows are those of a first sync. With no `generation`, `current` has a `generation` column, and each
    call's ids are those of the run it names (a resend of the state keeps the ids of the calls that made
    it); a text `generation` makes ids no run has (a deliberate resend)."""
    defs = definitions_relation(space, definitions)
    c, p = "c", "p"
    joined_on = exp.and_(
        *(exp.column(k, c).eq(exp.column(k, p)) for k in ("definition_key", "trait_key", "profile_id"))
    )
    present = exp.column("profile_id", c).is_(exp.null()).not_()
    known = exp.column("profile_id", p).is_(exp.null()).not_()
    # A value never sent and null now (an SQL trait column) is not a change.
    differs = (
        exp.case()
        .when(exp.and_(present, known), exp.not_(exp.paren(_same(c, p))))
        .when(present, exp.column("value_text", c).is_(exp.null()).not_())
        .else_(exp.true())
    )
    joined = (
        exp.select(
            *(
                exp.alias_(exp.func("COALESCE", exp.column(k, c), exp.column(k, p)), k)
                for k in ("definition_key", "trait_key", "profile_id", "user_id", "anonymous_id")
            ),
            exp.alias_(exp.column("value_text", p), "old_text"),
            exp.alias_(exp.column("value_text", c), "new_text"),
            exp.alias_(exp.column("value_num", c), "new_num"),
            exp.alias_(present, "present"),
            exp.alias_(known, "known"),
            exp.alias_(differs, "differs"),
            *([] if generation is not None else [exp.column("generation", c)]),
        )
        .from_(exp.table_(CURRENT_LONG, alias=c) if current is None else current.subquery(c))
        .join(
            exp.select(exp.Column(this=exp.Star(), table=exp.to_identifier("s")))
            .from_(previous.subquery("s"))
            .join(
                defs.subquery("f"),
                on=exp.and_(
                    exp.column("definition_key", "s").eq(exp.column("definition_key", "f")),
                    exp.column("fingerprint", "s").eq(exp.column("fingerprint", "f")),
                ),
            )
            .subquery(p),
            on=joined_on,
            join_type="full outer",
        )
    )
    sql_keys = [exp.Literal.string(d.key) for d in definitions if d.kind == "sql_trait"]
    if sql_keys:
        # An SQL trait sends all its columns in one call when any of them changed.
        kept = (
            exp.select("*")
            .from_(joined.subquery("j"))
            .where(
                exp.or_(
                    exp.column("differs"), exp.In(this=exp.column("definition_key"), expressions=sql_keys)
                )
            )
        )
        group_differs = exp.Window(
            this=exp.func("MAX", exp.cast(exp.column("differs"), "INT")),
            partition_by=[exp.column("definition_key"), exp.column("profile_id")],
        )
        rows = (
            exp.select("*")
            .from_(
                exp.select("*", exp.alias_(group_differs, "group_differs"))
                .from_(kept.subquery("k"))
                .subquery("g")
            )
            .where(exp.column("group_differs").eq(1))
        )
    else:
        rows = exp.select("*").from_(joined.subquery("j")).where(exp.column("differs"))

    r, d = "r", "d"
    is_audience = exp.column("kind", d).eq(exp.Literal.string("audience"))
    transition = (
        exp.case()
        .when(exp.and_(exp.column("present", r), exp.column("known", r).not_()), exp.Literal.string(ENTERED))
        .when(exp.column("present", r).not_(), exp.Literal.string(EXITED))
        .else_(exp.Literal.string(CHANGED))
    )
    call = exp.case().when(is_audience, transition).else_(exp.Literal.string("computed"))
    value_text = (
        exp.case()
        .when(
            is_audience,
            exp.case()
            .when(exp.column("present", r), exp.Literal.string("true"))
            .else_(exp.Literal.string("false")),
        )
        .else_(exp.column("new_text", r))
    )

    def call_id(kind: str) -> exp.Expr:
        parts = [
            exp.Literal.string(space),
            exp.column("definition_key", r),
            exp.column("profile_id", r),
            call,
            exp.Literal.string(str(generation))
            if generation is not None
            else exp.cast(exp.column("generation", r), "VARCHAR"),
            exp.Literal.string(kind),
        ]
        separated: list[exp.Expr] = []
        for part in parts:
            separated.extend([part, exp.Literal.string("|")])
        return exp.MD5(this=exp.func("CONCAT", *separated[:-1]))

    return (
        exp.select(
            exp.column("definition_key", r),
            exp.column("trait_key", r),
            exp.column("profile_id", r),
            exp.column("user_id", r),
            exp.column("anonymous_id", r),
            exp.column("old_text", r),
            exp.column("new_text", r),
            exp.column("new_num", r),
            exp.column("present", r),
            exp.alias_(transition, "transition"),
            exp.alias_(call, "call"),
            exp.alias_(value_text, "value_text"),
            exp.column("fingerprint", d),
            exp.alias_(exp.column("kind", d), "kind"),
            exp.column("computation_id", d),
            exp.alias_(call_id("identify"), "identify_id"),
            exp.alias_(call_id("track"), "track_id"),
        )
        .from_(rows.subquery(r))
        .join(defs.subquery(d), on=exp.column("definition_key", r).eq(exp.column("definition_key", d)))
    )
