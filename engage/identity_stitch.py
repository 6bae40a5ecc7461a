"""engage's own identity graph ("stitch", SPEC §6), computed in the warehouse.

A *node* is one identifier value: `<type>:<value>` for each identifier column (`user_id`, `email`,
`anonymous_id`, …) on any row of the space's sources; its id is the lower-case hex MD5 of that text. An
empty string counts as no value. Every step is a set-based statement materializing a temporary table:

1. the rows read, reduced to their distinct tuples of identifier values (with the latest `timestamp` and
   `uuid_ts` of each), and the nodes on them;
2. each non-user node's user_ids: two or more make it untrusted, exactly one is its owner;
3. edges between trusted non-user nodes that share a row, and their connected components by label
   propagation: every pass, a node takes the smallest label among its own, its neighbours' and (hooking)
   those offered to the node its label names, then its new label's label (shortcutting); passes repeat
   until one changes nothing. A component ends labelled with its smallest node id;
4. in components with two or more owners, the unowned members linked again among themselves;
5. each node's profile: a user_id is its own; an owned member, or any member of a single-owner component,
   joins its user; an anonymous group (a component without owner, or a piece of an unowned remainder)
   takes the node id of its member of the highest-priority type, then the smallest value; an untrusted
   node is its own.

Incremental runs read only the rows landed since the stored mark, yet end exactly where a rebuild would.
Which rows carry a node only grows, so only nodes on the new rows change their user_ids (trust, owner),
every new edge joins two such nodes, and an edge only disappears when such a node becomes untrusted. So a
component (as of the last run) without a node on the new rows is unchanged, and the *region* — the
non-user nodes on the new rows plus every member of their stored components — is a union of whole new
components: it is recomputed from the source rows that carry one of its nodes (a semi-join on the
sources), and every other node keeps what is stored. A user_id node is always its own profile, and a
node's latest times are maxima, merged with the stored ones. The run rebuilds everything instead when
there is no previous run, the identifiers changed, an output table is missing or has other columns, or a
table read last time left the sources (its nodes may have to go). Deleted source rows are noticed by a
rebuild (`full_refresh`) only.

Every read is bounded by the landing marks (`uuid_ts`, else `received_at`) taken when the run starts, so a
row landing during the run waits for the next one. Incremental reads start `LOOKBACK` before the stored
mark: reading a row again changes nothing, and a slow load committing after a later one is caught. Rows
without a landing time are read by every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from itertools import permutations

from sqlglot import exp

from engage.catalog import Catalog, Table
from engage.compile.expressions import union_all
from engage.compile.portable import add_seconds, text_order
from engage.errors import DataError
from engage.identity_graph import EXTERNAL_COLUMNS, EXTERNAL_IDS, ID_GRAPH, ID_GRAPH_COLUMNS, IdentityCounts
from engage.warehouse.base import Warehouse
from engage.warehouse.capabilities import Capabilities

USER_ID = "user_id"
NODES, COMPONENTS, WATERMARK = "_engage_stitch_nodes", "_engage_stitch_components", "_engage_stitch_watermark"
# What a row resolver needs: a row belongs to its user_id's profile, else to its highest-priority trusted
# identifier's, else to its highest-priority untrusted one's.
NODE_COLUMNS = [
    ("external_id_type", "VARCHAR"),
    ("external_id_value", "VARCHAR"),
    ("node_id", "VARCHAR"),
    ("canonical_segment_id", "VARCHAR"),
    ("trusted", "BOOLEAN"),
]
# Each trusted non-user node's component (its smallest node id): the region of an incremental run.
COMPONENT_COLUMNS = [("node_id", "VARCHAR"), ("component", "VARCHAR")]
# One row per source table read: the landing mark read up to (NULL: no row had one), with which column
# and for which identifiers.
WATERMARK_COLUMNS = [
    ("source_schema", "VARCHAR"),
    ("source_table", "VARCHAR"),
    ("landed_column", "VARCHAR"),
    ("landed", "TIMESTAMP"),
    ("identifiers", "VARCHAR"),
]
# Tables whose rows link identifiers, besides the per-event tables, pages and screens.
LINKING_TABLES = ("identifies", "tracks")
LANDED_COLUMNS = ("uuid_ts", "received_at")
# An incremental run reads the rows landed since the stored mark less this (as Profiles Sync's does).
LOOKBACK = timedelta(hours=1)
# The tables a run leaves in output_schema, with their columns.
_OUTPUTS = [
    (ID_GRAPH, ID_GRAPH_COLUMNS),
    (EXTERNAL_IDS, EXTERNAL_COLUMNS),
    (NODES, NODE_COLUMNS),
    (COMPONENTS, COMPONENT_COLUMNS),
    (WATERMARK, WATERMARK_COLUMNS),
]
# Label propagation with shortcutting settles in a few passes on identity graphs (about log2 of a chain's
# length); a graph still moving after this many costs too much to go on with.
MAX_PASSES = 100

_MARKS = "__engage_stitch_marks"
_DELTA = "__engage_stitch_delta"
_DELTA_NODES = "__engage_stitch_delta_nodes"
_REGION = "__engage_stitch_region"
_ROWS = "__engage_stitch_rows"
_TRUST = "__engage_stitch_trust"
_EDGES = "__engage_stitch_edges"
_OWNERS = "__engage_stitch_owners"
_SPLIT = "__engage_stitch_split"
_SPLIT_EDGES = "__engage_stitch_split_edges"
_COMPONENT = "__engage_stitch_component"
_SUBCOMPONENT = "__engage_stitch_subcomponent"
_PROFILES = "__engage_stitch_profiles"
_TOUCHED = "__engage_stitch_touched"
_RESULT = "__engage_stitch_result"


@dataclass(frozen=True)
class _Plan:
    caps: Capabilities
    identifiers: tuple[str, ...]
    output_schema: str
    tables: tuple[Table, ...]
    incremental: bool
    # The tables an incremental run reads from their stored mark on (the others: all their rows).
    resumed: frozenset[tuple[str, str]]

    @property
    def linking(self) -> list[tuple[int, str]]:
        """The non-user identifiers, with their slot numbers."""
        return [(n, i) for n, i in enumerate(self.identifiers) if i != USER_ID]


def materialize_stitch(
    warehouse: Warehouse,
    catalog: Catalog,
    identifiers: Sequence[str],
    output_schema: str,
    *,
    full_refresh: bool = False,
) -> IdentityCounts:
    """Brings `id_graph`, `external_id_mapping` and engage's own `_engage_stitch_*` tables in
    `output_schema` up to date with the space's sources: incrementally unless `full_refresh` (or nothing
    allows it), ending where a rebuild ends. `identifiers` are column names, highest priority first.

    The counts: `depth` is the most nodes merged into one profile (its node count less one)."""
    plan = _plan(warehouse, catalog, identifiers, output_schema, full_refresh)
    warehouse.create_temp_table(_MARKS, _marks(plan))
    warehouse.create_temp_table(_DELTA, _delta(plan))
    warehouse.create_temp_table(_DELTA_NODES, _nodes_on(plan))
    warehouse.create_temp_table(_REGION, _region(plan))
    if plan.incremental and plan.linking:
        warehouse.create_temp_table(_ROWS, _rows_touching_region(plan))
    _resolve(warehouse, plan, _ROWS if plan.incremental and plan.linking else _DELTA)
    warehouse.create_temp_table(_TOUCHED, _touched(plan))
    warehouse.create_temp_table(_RESULT, _result())
    _prepare(warehouse, plan)
    read = warehouse.fetchall(exp.select(exp.func("SUM", exp.column("read"))).from_(_DELTA))[0][0]
    _write(warehouse, plan)
    return _counts(warehouse, plan, int(read or 0))


def row_profile(
    alias: str, columns: set[str], identifiers: Sequence[str], output_schema: str
) -> tuple[exp.Expr, list[tuple[exp.Table, exp.Expr]]]:
    """The profile id of a row of a source table aliased `alias` that has `columns`, and the LEFT JOINs
    (table with alias, ON condition) to `_engage_stitch_nodes` it needs: its user_id's node id, else the
    profile of its highest-priority trusted identifier, else of its highest-priority untrusted one.

    An identifier landed after the last materialization is not in the graph yet; it ranks after the
    trusted ones with its own node id (what it is while nothing links it and no two users share it)."""
    present = [i for i in identifiers if i in columns]
    joins: list[tuple[exp.Table, exp.Expr]] = []
    trusted: list[exp.Expr] = []
    unknown: list[exp.Expr] = []
    untrusted: list[exp.Expr] = []
    for identifier in (i for i in present if i != USER_ID):
        value = _value(exp.column(identifier, alias))
        node = f"{alias}_stitch_{identifier}"
        on = exp.and_(
            exp.column("external_id_type", node).eq(exp.Literal.string(identifier)),
            exp.column("external_id_value", node).eq(value.copy()),
        )
        joins.append((exp.table_(NODES, db=output_schema, alias=node), on))
        canonical = exp.column("canonical_segment_id", node)
        trusted.append(exp.case().when(exp.column("trusted", node), canonical))
        unknown.append(
            exp.case().when(exp.column("node_id", node).is_(exp.null()), _node_id(identifier, value))
        )
        untrusted.append(canonical.copy())
    user = [_node_id(USER_ID, _value(exp.column(USER_ID, alias)))] if USER_ID in present else []
    candidates = [*user, *trusted, *unknown, *untrusted]
    if not candidates:
        return exp.null(), joins
    return exp.func("COALESCE", *candidates), joins


# -- what to read --------------------------------------------------------------------------------------
def _plan(
    warehouse: Warehouse,
    catalog: Catalog,
    identifiers: Sequence[str],
    output_schema: str,
    full_refresh: bool,
) -> _Plan:
    names = sorted({*LINKING_TABLES, *catalog.event_table_names()})
    tables = tuple(
        t for n in names for t in catalog.tables_named(n) if any(i in t.columns for i in identifiers)
    )
    if not tables:
        raise DataError(
            f"stitch: no table of the sources ({', '.join(catalog.sources)}) has any of the identifiers"
            f" {', '.join(identifiers)}"
        )
    resumed = None if full_refresh else _resumable(warehouse, identifiers, tables, output_schema)
    return _Plan(
        warehouse.capabilities,
        tuple(identifiers),
        output_schema,
        tables,
        resumed is not None,
        resumed or frozenset(),
    )


def _resumable(
    warehouse: Warehouse, identifiers: Sequence[str], tables: Sequence[Table], schema: str
) -> frozenset[tuple[str, str]] | None:
    """The tables an incremental run may read from their stored mark on, or None when the run must
    rebuild: no previous run, other identifiers, an output table missing or changed, a table read last
    time gone from the sources."""
    stored = warehouse.describe([schema]).tables
    for name, columns in _OUTPUTS:
        found = stored.get((schema, name))
        if found is None or list(found.columns) != [c for c, _ in columns]:
            return None
    marks = warehouse.fetchall(
        exp.select(
            "source_schema",
            "source_table",
            "landed_column",
            exp.column("landed").is_(exp.null()).not_(),
            "identifiers",
        ).from_(exp.table_(WATERMARK, db=schema))
    )
    current = {(t.source, t.name): _landed_column(t) for t in tables}
    if not marks or any(
        listed != ",".join(identifiers) or (source, table) not in current
        for source, table, _, _, listed in marks
    ):
        return None
    return frozenset(
        (source, table)
        for source, table, column, marked, _ in marks
        if marked and column == current[(source, table)]
    )


def _landed_column(table: Table) -> str | None:
    return next((c for c in LANDED_COLUMNS if c in table.columns), None)


def _literal(text: str | None) -> exp.Expr:
    """A text literal (or a NULL) typed as text: untyped literals make untyped columns in a CREATE AS."""
    return exp.cast(exp.Literal.string(text) if text is not None else exp.null(), "VARCHAR")


def _value(column: exp.Expr) -> exp.Expr:
    """An identifier's value as text; an empty string is no value."""
    return exp.Nullif(this=exp.cast(column, "VARCHAR"), expression=exp.Literal.string(""))


def _node_id(kind: exp.Expr | str, value: exp.Expr) -> exp.Expr:
    """The node id: lower-case hex MD5 of `<type>:<value>` (sqlglot spells MD5 per engine). The MD5 of a
    NULL value is NULL on every engine."""
    kind = exp.Literal.string(kind) if isinstance(kind, str) else kind
    return exp.MD5(this=exp.Concat(expressions=[kind, exp.Literal.string(":"), value]))


def _slot(number: int) -> str:
    """The column holding the identifier at `number` in the rows read."""
    return f"i{number}"


def _timestamp(plan: _Plan, table: Table, column: str | None, alias: str) -> exp.Expr:
    """`table`'s `column` typed as the engine's moments (NULL when the table lacks it): every time engage
    keeps is of that type, as the sources' are."""
    kind = plan.caps.timestamp_type
    if column is None or column not in table.columns:
        return exp.cast(exp.null(), kind)
    return exp.cast(exp.column(column, alias), kind)


def _landed(plan: _Plan, table: Table, alias: str) -> exp.Expr:
    """When a row of `table` landed."""
    return _timestamp(plan, table, _landed_column(table), alias)


def _of_table(marks: exp.Table, table: Table) -> exp.Expr:
    """`table`'s landing mark in `marks`, as a scalar subquery."""
    return (
        exp.select("landed")
        .from_(marks)
        .where(
            exp.and_(
                exp.column("source_schema").eq(exp.Literal.string(table.source)),
                exp.column("source_table").eq(exp.Literal.string(table.name)),
            )
        )
        .subquery()
    )


def _window(plan: _Plan, table: Table, alias: str, since_mark: bool) -> exp.Expr | None:
    """Which rows of `table` the run reads: landed no later than the mark taken at its start (and, when
    `since_mark` and the table was read before, later than the stored mark less LOOKBACK); rows without
    a landing time always. None: every row."""
    if _landed_column(table) is None:
        return None
    landed = _landed(plan, table, alias)
    bounds: list[exp.Expr] = [landed.copy() <= _of_table(exp.table_(_MARKS), table)]
    if since_mark and (table.source, table.name) in plan.resumed:
        stored = _of_table(exp.table_(WATERMARK, db=plan.output_schema), table)
        bounds.append(landed.copy() > add_seconds(plan.caps, stored, -int(LOOKBACK.total_seconds())))
    return exp.or_(exp.and_(*bounds), landed.is_(exp.null()))


def _read(plan: _Plan, table: Table, since_mark: bool) -> exp.Select:
    """`table`'s rows in the window: one slot per identifier (NULL where the table lacks it), timestamp
    and uuid_ts."""
    slots = [
        exp.alias_(
            _value(exp.column(i, "t")) if i in table.columns else _literal(None),
            _slot(n),
        )
        for n, i in enumerate(plan.identifiers)
    ]
    query = exp.select(
        *slots,
        exp.alias_(_timestamp(plan, table, "timestamp", "t"), "timestamp"),
        exp.alias_(_timestamp(plan, table, "uuid_ts", "t"), "uuid_ts"),
    ).from_(exp.table_(table.name, db=table.source, alias="t"))
    window = _window(plan, table, "t", since_mark)
    return query.where(window) if window is not None else query


def _marks(plan: _Plan) -> exp.Query:
    """Each table's landing mark as the run starts: the watermark it stores when done."""
    listed = ",".join(plan.identifiers)

    def mark(table: Table) -> exp.Select:
        column = _landed_column(table)
        landed = exp.func("MAX", _landed(plan, table, "t")) if column else _landed(plan, table, "t")
        query = exp.select(
            exp.alias_(_literal(table.source), "source_schema"),
            exp.alias_(_literal(table.name), "source_table"),
            exp.alias_(_literal(column), "landed_column"),
            exp.alias_(landed, "landed"),
            exp.alias_(_literal(listed), "identifiers"),
        )
        return query.from_(exp.table_(table.name, db=table.source, alias="t")) if column else query

    return union_all([mark(t) for t in plan.tables])


def _slots(plan: _Plan) -> list[exp.Column]:
    return [exp.column(_slot(n)) for n in range(len(plan.identifiers))]


def _delta(plan: _Plan) -> exp.Query:
    """The rows read (those landed since the stored mark; all on a rebuild), as distinct identifier tuples
    with their latest timestamp and uuid_ts, and how many rows each stands for."""
    rows = union_all([_read(plan, t, since_mark=True) for t in plan.tables])
    slots = _slots(plan)
    return (
        exp.select(
            *slots,
            exp.alias_(exp.func("MAX", exp.column("timestamp")), "timestamp"),
            exp.alias_(exp.func("MAX", exp.column("uuid_ts")), "uuid_ts"),
            exp.alias_(exp.Count(this=exp.Star()), "read"),
        )
        .from_(rows.subquery("r"))
        .where(exp.or_(*(s.copy().is_(exp.null()).not_() for s in slots)))
        .group_by(*(s.copy() for s in slots))
    )


def _nodes_on(plan: _Plan) -> exp.Query:
    """The nodes on the rows read, with the latest timestamp and uuid_ts of the rows carrying them."""
    per_type = [
        exp.select(
            exp.alias_(_literal(identifier), "external_id_type"),
            exp.alias_(exp.column(_slot(n)), "external_id_value"),
            exp.alias_(exp.func("MAX", exp.column("timestamp")), "timestamp"),
            exp.alias_(exp.func("MAX", exp.column("uuid_ts")), "uuid_ts"),
        )
        .from_(_DELTA)
        .where(exp.column(_slot(n)).is_(exp.null()).not_())
        .group_by(exp.column(_slot(n)))
        for n, identifier in enumerate(plan.identifiers)
    ]
    node = _node_id(exp.column("external_id_type"), exp.column("external_id_value"))
    return exp.select(
        "external_id_type", "external_id_value", exp.alias_(node, "node_id"), "timestamp", "uuid_ts"
    ).from_(union_all(per_type).subquery("n"))


def _region(plan: _Plan) -> exp.Query:
    """The non-user nodes whose profile this run computes: those on the rows read, and incrementally every
    member of their stored components. A node already untrusted is left out: it stays so, links nothing
    and keeps its own profile (and a shared device or address is the node with the most rows to read)."""
    keys = [exp.column(c, "d") for c in ("external_id_type", "external_id_value", "node_id")]
    on_rows = (
        exp.select(*keys)
        .from_(exp.table_(_DELTA_NODES, alias="d"))
        .where(exp.column("external_id_type", "d").neq(exp.Literal.string(USER_ID)))
    )
    if not plan.incremental:
        return on_rows
    schema = plan.output_schema
    on_rows = on_rows.join(
        exp.table_(NODES, db=schema, alias="o"),
        on=exp.column("node_id", "o").eq(exp.column("node_id", "d")),
        join_type="left",
    ).where(exp.func("COALESCE", exp.column("trusted", "o"), exp.true()))
    mates = (
        exp.select(
            exp.column("external_id_type", "n"),
            exp.column("external_id_value", "n"),
            exp.column("node_id", "n"),
        )
        .from_(exp.table_(_DELTA_NODES, alias="d"))
        .join(
            exp.table_(COMPONENTS, db=schema, alias="c"),
            on=exp.column("node_id", "c").eq(exp.column("node_id", "d")),
        )
        .join(
            exp.table_(COMPONENTS, db=schema, alias="m"),
            on=exp.column("component", "m").eq(exp.column("component", "c")),
        )
        .join(
            exp.table_(NODES, db=schema, alias="n"),
            on=exp.column("node_id", "n").eq(exp.column("node_id", "m")),
        )
    )
    return exp.union(on_rows, mates, distinct=True)


def _rows_touching_region(plan: _Plan) -> exp.Query:
    """Every row in the window (from the first row on) carrying a node of the region, as distinct
    identifier tuples: all a region node's user_ids and links are on them."""
    region = exp.table_(_REGION, alias="r")
    branches = [
        _read(plan, table, since_mark=False).join(
            region.copy(),
            on=exp.and_(
                exp.column("external_id_type", "r").eq(exp.Literal.string(identifier)),
                exp.column("external_id_value", "r").eq(_value(exp.column(identifier, "t"))),
            ),
        )
        for table in plan.tables
        for _, identifier in plan.linking
        if identifier in table.columns
    ]
    return exp.select(*_slots(plan)).distinct().from_(union_all(branches).subquery("u"))


# -- who is who ----------------------------------------------------------------------------------------
def _resolve(warehouse: Warehouse, plan: _Plan, rows: str) -> None:
    """`_PROFILES`: each region node's profile, whether it is trusted, and its component, from `rows`."""
    warehouse.create_temp_table(_TRUST, _trust(plan, rows))
    warehouse.create_temp_table(_EDGES, _edges(plan, rows))
    component = _connect(warehouse, _trusted_nodes(), _EDGES, _COMPONENT)
    warehouse.create_temp_table(_OWNERS, _owners(component))
    warehouse.create_temp_table(_SPLIT, _unowned_in_split(component))
    warehouse.create_temp_table(_SPLIT_EDGES, _edges_within(_SPLIT))
    subcomponent = _connect(warehouse, exp.select("node_id").from_(_SPLIT), _SPLIT_EDGES, _SUBCOMPONENT)
    warehouse.create_temp_table(_PROFILES, _profiles(warehouse.capabilities, component, subcomponent))


def _user_slot(plan: _Plan) -> exp.Expr:
    if USER_ID in plan.identifiers:
        return exp.column(_slot(plan.identifiers.index(USER_ID)))
    return _literal(None)


def _trust(plan: _Plan, rows: str) -> exp.Query:
    """Each region node's priority, whether it is trusted (fewer than two user_ids on its rows) and its
    owner (the one user_id, when there is exactly one)."""
    carried = [
        exp.select(
            exp.alias_(_literal(identifier), "external_id_type"),
            exp.alias_(exp.column(_slot(n)), "external_id_value"),
            exp.alias_(_user_slot(plan), "user_value"),
        )
        .from_(rows)
        .where(exp.column(_slot(n)).is_(exp.null()).not_())
        for n, identifier in plan.linking
    ]
    if not carried:  # only user_id: the region is empty
        names = ("external_id_type", "external_id_value", "user_value")
        none = exp.select(*(exp.alias_(_literal(None), c) for c in names)).from_(_REGION)
        carried = [none.where(exp.false())]
    users = exp.Count(this=exp.Distinct(expressions=[exp.column("user_value", "c")]))
    kind = exp.column("external_id_type", "r")
    priority = exp.case()
    for number, identifier in enumerate(plan.identifiers):
        priority = priority.when(kind.copy().eq(exp.Literal.string(identifier)), exp.Literal.number(number))
    keys = [exp.column(c, "r") for c in ("node_id", "external_id_type", "external_id_value")]
    return (
        exp.select(
            *keys,
            exp.alias_(priority, "priority"),
            exp.alias_(users < 2, "trusted"),
            exp.alias_(
                exp.case().when(users.copy().eq(1), exp.func("MIN", exp.column("user_value", "c"))), "owner"
            ),
        )
        .from_(exp.table_(_REGION, alias="r"))
        .join(
            union_all(carried).subquery("c"),
            on=exp.and_(
                exp.column("external_id_type", "c").eq(kind.copy()),
                exp.column("external_id_value", "c").eq(exp.column("external_id_value", "r")),
            ),
            join_type="left",
        )
        .group_by(*(k.copy() for k in keys))
    )


def _edges(plan: _Plan, rows: str) -> exp.Query:
    """Both directions of every link between two trusted region nodes on one row."""

    def trusted_node(alias: str, number: int, identifier: str) -> tuple[exp.Table, exp.Expr]:
        on = exp.and_(
            exp.column("external_id_type", alias).eq(exp.Literal.string(identifier)),
            exp.column("external_id_value", alias).eq(exp.column(_slot(number), "x")),
            exp.column("trusted", alias),
        )
        return exp.table_(_TRUST, alias=alias), on

    branches: list[exp.Query] = []
    for (m, first), (n, second) in permutations(plan.linking, 2):
        a, on_a = trusted_node("a", m, first)
        b, on_b = trusted_node("b", n, second)
        branches.append(
            exp.select(
                exp.alias_(exp.column("node_id", "a"), "a"), exp.alias_(exp.column("node_id", "b"), "b")
            )
            .from_(exp.table_(rows, alias="x"))
            .join(a, on=on_a)
            .join(b, on=on_b)
        )
    if not branches:  # a single non-user identifier links nothing
        none = exp.select(exp.alias_("node_id", "a"), exp.alias_("node_id", "b")).from_(_TRUST)
        return none.where(exp.false())
    return exp.select("a", "b").distinct().from_(union_all(branches).subquery("e"))


def _trusted_nodes() -> exp.Select:
    return exp.select("node_id").from_(_TRUST).where(exp.column("trusted"))


def _connect(warehouse: Warehouse, nodes: exp.Query, edges: str, name: str) -> str:
    """Labels `nodes` with the smallest node id of their connected component over `edges` (both
    directions); returns the table holding (node_id, label)."""
    labels, other = name, f"{name}_next"  # each pass writes the other table from this one
    warehouse.create_temp_table(
        labels, exp.select("node_id", exp.alias_(exp.column("node_id"), "label")).from_(nodes.subquery("n"))
    )
    for _ in range(MAX_PASSES):
        warehouse.create_temp_table(other, _propagate(labels, edges))
        changed = warehouse.fetchall(
            exp.select(exp.Count(this=exp.Star()))
            .from_(exp.table_(other, alias="n"))
            .join(exp.table_(labels, alias="o"), on=exp.column("node_id", "o").eq(exp.column("node_id", "n")))
            .where(exp.column("label", "n").neq(exp.column("label", "o")))
        )[0][0]
        labels, other = other, labels
        if not changed:
            return labels
    raise DataError(f"stitch: the identity graph did not settle after {MAX_PASSES} passes")


def _propagate(labels: str, edges: str) -> exp.Query:
    """One pass: each node's smallest offered label (its own, its neighbours', and those offered through
    the nodes it labels), then that label's own new label. Labels only decrease and always name a node of
    the component, so a pass that changes nothing leaves one label per component: its smallest node."""

    def label(alias: str) -> exp.Table:
        return exp.table_(labels, alias=alias)

    edge = exp.table_(edges, alias="e")
    offers = union_all(
        [
            exp.select("node_id", "label").from_(labels),
            exp.select(exp.alias_(exp.column("a", "e"), "node_id"), exp.column("label", "l"))
            .from_(edge.copy())
            .join(label("l"), on=exp.column("node_id", "l").eq(exp.column("b", "e"))),
            exp.select(exp.alias_(exp.column("label", "la"), "node_id"), exp.column("label", "lb"))
            .from_(edge.copy())
            .join(label("la"), on=exp.column("node_id", "la").eq(exp.column("a", "e")))
            .join(label("lb"), on=exp.column("node_id", "lb").eq(exp.column("b", "e"))),
        ]
    )
    lowest = (
        exp.select("node_id", exp.alias_(exp.func("MIN", exp.column("label")), "label"))
        .from_(offers.subquery("o"))
        .group_by("node_id")
    )
    return (
        exp.select(exp.column("node_id", "m"), exp.column("label", "p"))
        .from_(exp.table_("lowest", alias="m"))
        .join(exp.table_("lowest", alias="p"), on=exp.column("node_id", "p").eq(exp.column("label", "m")))
        .with_("lowest", as_=lowest)
    )


def _owners(component: str) -> exp.Query:
    """Per component: how many owners its members have, and the smallest."""
    owner = exp.column("owner", "t")
    return (
        exp.select(
            exp.alias_(exp.column("label", "c"), "component"),
            exp.alias_(exp.Count(this=exp.Distinct(expressions=[owner])), "owners"),
            exp.alias_(exp.func("MIN", owner.copy()), "owner"),
        )
        .from_(exp.table_(component, alias="c"))
        .join(exp.table_(_TRUST, alias="t"), on=exp.column("node_id", "t").eq(exp.column("node_id", "c")))
        .group_by(exp.column("label", "c"))
    )


def _unowned_in_split(component: str) -> exp.Query:
    """The unowned members of components with several owners: they are linked again among themselves."""
    return (
        exp.select(exp.column("node_id", "c"))
        .from_(exp.table_(component, alias="c"))
        .join(exp.table_(_OWNERS, alias="o"), on=exp.column("component", "o").eq(exp.column("label", "c")))
        .join(exp.table_(_TRUST, alias="t"), on=exp.column("node_id", "t").eq(exp.column("node_id", "c")))
        .where(exp.and_(exp.column("owners", "o") > 1, exp.column("owner", "t").is_(exp.null())))
    )


def _edges_within(nodes: str) -> exp.Query:
    return (
        exp.select(exp.column("a", "e"), exp.column("b", "e"))
        .from_(exp.table_(_EDGES, alias="e"))
        .join(exp.table_(nodes, alias="x"), on=exp.column("node_id", "x").eq(exp.column("a", "e")))
        .join(exp.table_(nodes, alias="y"), on=exp.column("node_id", "y").eq(exp.column("b", "e")))
    )


def _profiles(caps: Capabilities, component: str, subcomponent: str) -> exp.Query:
    """Each region node's profile: its user's (its own owner, or its component's only one), else its
    anonymous group's head (the member of the highest-priority type, then the smallest value), else (an
    untrusted node) its own node id."""
    user = exp.func(
        "COALESCE",
        exp.column("owner", "t"),
        exp.case().when(exp.column("owners", "o").eq(1), exp.column("owner", "o")),
    )
    group = exp.case().when(
        user.copy().is_(exp.null()),
        exp.func("COALESCE", exp.column("label", "s"), exp.column("label", "c")),
    )
    members = (
        exp.select(
            exp.column("node_id", "t"),
            exp.column("priority", "t"),
            exp.column("external_id_value", "t"),
            exp.column("trusted", "t"),
            exp.alias_(exp.column("label", "c"), "component"),
            exp.alias_(user, "user_value"),
            exp.alias_(group, "grp"),
        )
        .from_(exp.table_(_TRUST, alias="t"))
        .join(
            exp.table_(component, alias="c"),
            on=exp.column("node_id", "c").eq(exp.column("node_id", "t")),
            join_type="left",
        )
        .join(
            exp.table_(_OWNERS, alias="o"),
            on=exp.column("component", "o").eq(exp.column("label", "c")),
            join_type="left",
        )
        .join(
            exp.table_(subcomponent, alias="s"),
            on=exp.column("node_id", "s").eq(exp.column("node_id", "t")),
            join_type="left",
        )
    )
    rank = exp.Window(
        this=exp.RowNumber(),
        partition_by=[exp.column("grp")],
        order=exp.Order(
            expressions=[
                exp.Ordered(this=exp.column("priority")),
                exp.Ordered(this=text_order(caps, exp.column("external_id_value"))),
            ]
        ),
    )
    ranked = (
        exp.select("grp", "node_id", exp.alias_(rank, "rank"))
        .from_("members")
        .where(exp.column("grp").is_(exp.null()).not_())
    )
    heads = (
        exp.select("grp", exp.alias_(exp.column("node_id"), "head"))
        .from_(ranked.subquery("ranked"))
        .where(exp.column("rank").eq(1))
    )
    canonical = exp.func(
        "COALESCE",
        _node_id(USER_ID, exp.column("user_value", "m")),
        exp.column("head", "h"),
        exp.column("node_id", "m"),
    )
    return (
        exp.select(
            exp.column("node_id", "m"),
            exp.alias_(canonical, "canonical_segment_id"),
            exp.column("trusted", "m"),
            exp.column("component", "m"),
        )
        .from_(exp.table_("members", alias="m"))
        .join(
            exp.table_("heads", alias="h"),
            on=exp.column("grp", "h").eq(exp.column("grp", "m")),
            join_type="left",
        )
        .with_("members", as_=members)
        .with_("heads", as_=heads)
    )


# -- what to write -------------------------------------------------------------------------------------
def _touched(plan: _Plan) -> exp.Query:
    """The nodes whose rows this run writes (those on the rows read, and the region), with their latest
    times: incrementally, the larger of the stored ones and those of the rows read."""
    fresh = exp.select("external_id_type", "external_id_value", "node_id", "timestamp", "uuid_ts").from_(
        _DELTA_NODES
    )
    if not plan.incremental:
        return fresh
    keys = exp.union(
        exp.select("node_id").from_(_DELTA_NODES), exp.select("node_id").from_(_REGION), distinct=True
    )
    stored = (
        exp.select(
            exp.column("external_id_type", "x"),
            exp.column("external_id_value", "x"),
            exp.alias_(exp.column("external_id_hash", "x"), "node_id"),
            exp.column("timestamp", "x"),
            exp.column("uuid_ts", "x"),
        )
        .from_(exp.table_(EXTERNAL_IDS, db=plan.output_schema, alias="x"))
        .join(keys.subquery("k"), on=exp.column("node_id", "k").eq(exp.column("external_id_hash", "x")))
    )
    return (
        exp.select(
            "external_id_type",
            "external_id_value",
            "node_id",
            exp.alias_(exp.func("MAX", exp.column("timestamp")), "timestamp"),
            exp.alias_(exp.func("MAX", exp.column("uuid_ts")), "uuid_ts"),
        )
        .from_(union_all([fresh, stored]).subquery("b"))
        .group_by("external_id_type", "external_id_value", "node_id")
    )


def _result() -> exp.Query:
    """Every touched node's row: the region's as resolved; a user_id is its own trusted profile, and any
    other node outside the region was untrusted already, its own profile."""
    is_user = exp.column("external_id_type", "t").eq(exp.Literal.string(USER_ID))
    return (
        exp.select(
            exp.column("external_id_type", "t"),
            exp.column("external_id_value", "t"),
            exp.column("node_id", "t"),
            exp.alias_(
                exp.func("COALESCE", exp.column("canonical_segment_id", "p"), exp.column("node_id", "t")),
                "canonical_segment_id",
            ),
            exp.alias_(exp.func("COALESCE", exp.column("trusted", "p"), is_user), "trusted"),
            exp.column("component", "p"),
            exp.column("timestamp", "t"),
            exp.column("uuid_ts", "t"),
        )
        .from_(exp.table_(_TOUCHED, alias="t"))
        .join(
            exp.table_(_PROFILES, alias="p"),
            on=exp.column("node_id", "p").eq(exp.column("node_id", "t")),
            join_type="left",
        )
    )


def _prepare(warehouse: Warehouse, plan: _Plan) -> None:
    """Creates the output tables that are missing; one with other columns is made again."""
    schema = plan.output_schema
    warehouse.ensure_schema(schema)
    stored = warehouse.describe([schema]).tables
    for name, columns in _OUTPUTS:
        found = stored.get((schema, name))
        if found is not None and list(found.columns) != [c for c, _ in columns]:
            warehouse.execute(exp.Drop(tables=[exp.table_(name, db=schema)], kind="TABLE", exists=True))
        moment = plan.caps.timestamp_type  # as the sources' times, on every engine
        typed = [(c, exp.DataType.build(moment if t == "TIMESTAMP" else t)) for c, t in columns]
        warehouse.ensure_table(schema, name, typed)


def _node_rows() -> list[tuple[str, str, exp.Select]]:
    """Per node-keyed output: its name, key column and the rows `_RESULT` gives it."""
    result = exp.table_(_RESULT)
    graph = exp.select(
        exp.alias_(exp.column("node_id"), "segment_id"),
        "canonical_segment_id",
        "timestamp",
        exp.alias_(exp.cast(exp.null(), "BIGINT"), "seq"),
        "uuid_ts",
    ).from_(result.copy())
    external = exp.select(
        "canonical_segment_id",
        "external_id_type",
        "external_id_value",
        exp.alias_(exp.column("node_id"), "external_id_hash"),
        "timestamp",
        "uuid_ts",
    ).from_(result.copy())
    nodes = exp.select(*(c for c, _ in NODE_COLUMNS)).from_(result.copy())
    components = (
        exp.select(*(c for c, _ in COMPONENT_COLUMNS))
        .from_(result.copy())
        .where(exp.column("component").is_(exp.null()).not_())
    )
    return [
        (ID_GRAPH, "segment_id", graph),
        (EXTERNAL_IDS, "external_id_hash", external),
        (NODES, "node_id", nodes),
        (COMPONENTS, "node_id", components),
    ]


def _write(warehouse: Warehouse, plan: _Plan) -> None:
    """Replaces the touched nodes' rows (every row on a rebuild) in one transaction, the watermark deleted
    first and written last. Engines without transactions commit statement by statement: a run failing
    midway then leaves no watermark, and the next run rebuilds."""
    watermark = exp.table_(WATERMARK, db=plan.output_schema)
    with warehouse.transaction():
        warehouse.delete_rows(watermark, [exp.true()])
        for name, key, rows in _node_rows():
            table = exp.table_(name, db=plan.output_schema)
            touched = exp.column(key).isin(query=exp.select("node_id").from_(_RESULT))
            warehouse.delete_rows(table, [touched if plan.incremental else exp.true()])
            warehouse.execute(exp.insert(rows, table.copy(), columns=rows.named_selects))
        marks = exp.select(*(c for c, _ in WATERMARK_COLUMNS)).from_(_MARKS)
        warehouse.execute(exp.insert(marks, watermark.copy(), columns=marks.named_selects))


def _counts(warehouse: Warehouse, plan: _Plan, read: int) -> IdentityCounts:
    """What id_graph holds (`depth`: the most nodes merged into one profile), and what the run read."""
    merged = exp.case().when(exp.column("segment_id").neq(exp.column("canonical_segment_id")), 1).else_(0)
    per_profile = (
        exp.select(
            exp.alias_(exp.Count(this=exp.Star()), "size"),
            exp.alias_(exp.func("SUM", merged), "merged"),
        )
        .from_(exp.table_(ID_GRAPH, db=plan.output_schema))
        .group_by("canonical_segment_id")
    )
    profiles, nodes, merged_nodes, largest = warehouse.fetchall(
        exp.select(
            exp.Count(this=exp.Star()),
            exp.func("SUM", exp.column("size")),
            exp.func("SUM", exp.column("merged")),
            exp.func("MAX", exp.column("size")),
        ).from_(per_profile.subquery("p"))
    )[0]
    total = int(nodes or 0)
    return IdentityCounts(
        profiles=int(profiles),
        segment_ids=total,
        merged=int(merged_nodes or 0),
        depth=max(int(largest or 0) - 1, 0),
        external_ids=total,
        full=not plan.incremental,
        new_rows=read,
    )
