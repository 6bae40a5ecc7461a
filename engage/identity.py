"""Profile resolution: which profile a source row belongs to, and which identifiers a profile's calls carry.
The compiler groups by what this returns (SPEC §6).

- `none`: a row's user_id, else its anonymous_id. No join: the compiled SQL is the same as without
  identity resolution.
- `profiles_sync` and `stitch`: a row belongs to the canonical profile an identity graph gives it, held in
  the warehouse (`id_graph`, `external_id_mapping`, built by `identity_graph.py` / `identity_stitch.py`),
  and a profile's calls carry its user_id and most recent anonymous_id from `external_id_mapping`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from engage.catalog import Catalog, Table
from engage.compile.expressions import ANONYMOUS_ID, PROFILE, USER_ID, union_all
from engage.config import ProfilesSyncIdentity, Space, StitchIdentity
from engage.errors import ConfigError, InputError
from engage.warehouse.base import Warehouse

if TYPE_CHECKING:
    from engage.identity_graph import IdentityCounts

# A join a resolver adds to a source table's scan: (the table, aliased; the ON condition).
Join = tuple[exp.Table, exp.Expr]


class ProfileResolver(ABC):
    """Maps the rows of a source table to profile ids, as sqlglot expressions over the row's alias."""

    # The identity graph mapping every id a profile ever had to its canonical, when there is one: the state
    # follows merges through it.
    graph: exp.Table | None = None

    @abstractmethod
    def profile(self, row: str, table: Table) -> tuple[exp.Expr, list[Join]]:
        """The profile id of a row of `table` aliased `row`, and the joins that expression needs."""

    @abstractmethod
    def profiles(self, seen: exp.Query) -> exp.Query:
        """(`__profile`, `__user_id`, `__anonymous_id`) per profile, from `seen`: one row per scan family
        and profile, with the family's largest `__user_id`."""

    @property
    def anonymous_key(self) -> str:
        """The column of `profile_aggregates` an SQL trait keyed by anonymous_id joins on."""
        return ANONYMOUS_ID

    def signature(self, warehouse: Warehouse) -> list[Any] | None:
        """What the identity tables hold, in a few numbers that change when a mapping changes (a remap
        comes with a row landed later, so with a newer `uuid_ts`): a run whose sources and signature are
        unchanged needs no recompute."""
        return None


class UserElseAnonymous(ProfileResolver):
    """`none`: the row's user_id, else its anonymous_id. An anonymous profile's id is its anonymousId; an
    identified profile is its user_id, and its calls carry the userId only (which anonymous ids belong to a
    user is identity resolution's question)."""

    def profile(self, row: str, table: Table) -> tuple[exp.Expr, list[Join]]:
        return exp.func("COALESCE", exp.column("user_id", row), exp.column("anonymous_id", row)), []

    def profiles(self, seen: exp.Query) -> exp.Query:
        user_id = exp.func("MAX", exp.column(USER_ID))
        anonymous = exp.case().when(user_id.copy().is_(exp.null()), exp.column(PROFILE))
        return (
            exp.select(PROFILE, exp.alias_(user_id, USER_ID), exp.alias_(anonymous, ANONYMOUS_ID))
            .from_(seen.subquery("seen"))
            .group_by(PROFILE)
        )

    @property
    def anonymous_key(self) -> str:
        return PROFILE


class GraphResolver(ProfileResolver):
    """A resolver over identity tables in `schema`: profiles carry the identifiers `external_id_mapping`
    gives their canonical (the most recent of each type; ties: the larger value)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.graph = exp.table_("id_graph", db=schema)

    def signature(self, warehouse: Warehouse) -> list[Any] | None:
        def summary(name: str) -> exp.Select:
            return exp.select(
                exp.alias_(exp.Literal.string(name), "name"),
                exp.Count(this=exp.Star()),
                exp.Count(this=exp.Distinct(expressions=[exp.column("canonical_segment_id")])),
                exp.cast(exp.func("MAX", exp.column("uuid_ts")), "VARCHAR"),
                exp.cast(exp.func("MAX", exp.column("timestamp")), "VARCHAR"),
            ).from_(exp.table_(name, db=self.schema))

        rows = warehouse.fetchall(union_all([summary("id_graph"), summary("external_id_mapping")]))
        return sorted(list(row) for row in rows)  # a union's rows come in any order

    def external_ids(self, alias: str) -> exp.Table:
        return exp.table_("external_id_mapping", db=self.schema, alias=alias)

    def profiles(self, seen: exp.Query) -> exp.Query:
        per_profile = (
            exp.select(PROFILE, exp.alias_(exp.func("MAX", exp.column(USER_ID)), USER_ID))
            .from_(seen.subquery("seen"))
            .group_by(PROFILE)
        )
        ids = self._identifiers()
        user_id = exp.func("COALESCE", exp.column("user_id", "x"), exp.column(USER_ID, "s"))
        return (
            exp.select(
                exp.column(PROFILE, "s"),
                exp.alias_(user_id, USER_ID),
                exp.alias_(exp.column("anonymous_id", "x"), ANONYMOUS_ID),
            )
            .from_(per_profile.subquery("s"))
            .join(
                ids.subquery("x"),
                on=exp.column("canonical_segment_id", "x").eq(exp.column(PROFILE, "s")),
                join_type="left",
            )
        )

    def _identifiers(self) -> exp.Query:
        """Per canonical: its most recent user_id and anonymous_id (ties: the larger value)."""
        kind, value = exp.column("external_id_type"), exp.column("external_id_value")
        wanted = [exp.Literal.string("user_id"), exp.Literal.string("anonymous_id")]
        rank = exp.Window(
            this=exp.RowNumber(),
            partition_by=[exp.column("canonical_segment_id"), kind.copy()],
            order=exp.Order(
                expressions=[
                    exp.Ordered(this=exp.column("timestamp"), desc=True, nulls_first=False),
                    exp.Ordered(this=value.copy(), desc=True, nulls_first=False),
                ]
            ),
        )
        ranked = (
            exp.select("canonical_segment_id", "external_id_type", "external_id_value", exp.alias_(rank, "r"))
            .from_(self.external_ids("m"))
            .where(exp.In(this=kind.copy(), expressions=wanted))
        )

        def latest(name: str) -> exp.Expr:
            return exp.alias_(
                exp.func("MAX", exp.case().when(kind.copy().eq(exp.Literal.string(name)), value.copy())),
                name,
            )

        return (
            exp.select("canonical_segment_id", latest("user_id"), latest("anonymous_id"))
            .from_(ranked.subquery("ranked"))
            .where(exp.column("r").eq(1))
            .group_by("canonical_segment_id")
        )


class ProfilesSyncResolver(GraphResolver):
    """A row belongs to the canonical of its `segment_id` (an id `id_graph` lacks is its own). A row that
    has no segment_id (or a table without the column) resolves through `external_id_mapping`: its user_id's
    profile, else its anonymous_id's."""

    def profile(self, row: str, table: Table) -> tuple[exp.Expr, list[Join]]:
        joins: list[Join] = []
        candidates: list[exp.Expr] = []
        lacking_segment: list[exp.Expr] = []
        if "segment_id" in table.columns:
            segment = exp.column("segment_id", row)
            graph = exp.table_("id_graph", db=self.schema, alias=f"{row}_g")
            joins.append((graph, exp.column("segment_id", f"{row}_g").eq(segment.copy())))
            candidates += [exp.column("canonical_segment_id", f"{row}_g"), segment.copy()]
            lacking_segment = [segment.copy().is_(exp.null())]
        for kind in ("user_id", "anonymous_id"):
            alias = f"{row}_{kind[0]}"
            on = exp.and_(
                *(c.copy() for c in lacking_segment),
                exp.column("external_id_type", alias).eq(exp.Literal.string(kind)),
                exp.column("external_id_value", alias).eq(exp.column(kind, row)),
            )
            joins.append((self.external_ids(alias), on))
            candidates.append(exp.column("canonical_segment_id", alias))
        return exp.func("COALESCE", *candidates), joins


class StitchResolver(GraphResolver):
    """A row belongs to its user_id's profile, else its highest-priority trusted identifier's, else its
    highest-priority untrusted one's (engage's own graph, `identity_stitch.py`)."""

    def __init__(self, schema: str, identifiers: list[str]) -> None:
        super().__init__(schema)
        self.identifiers = identifiers

    def profile(self, row: str, table: Table) -> tuple[exp.Expr, list[Join]]:
        from engage.identity_stitch import row_profile

        return row_profile(row, set(table.columns), self.identifiers, self.schema)


def resolver_for(space: Space) -> ProfileResolver:
    identity = space.config.identity
    schema = space.identity_schema
    if isinstance(identity, ProfilesSyncIdentity):
        assert schema is not None
        return ProfilesSyncResolver(schema)
    if isinstance(identity, StitchIdentity):
        assert schema is not None
        return StitchResolver(schema, identity.identifiers)
    return UserElseAnonymous()


# The columns engage reads from each table Profiles Sync lands (SPEC §6).
PROFILES_SYNC_COLUMNS = {
    "id_graph_updates": ("id", "segment_id", "canonical_segment_id", "timestamp", "seq", "uuid_ts"),
    "external_id_mapping_updates": (
        "id",
        "segment_id",
        "external_id_type",
        "external_id_value",
        "external_id_hash",
        "timestamp",
        "seq",
        "uuid_ts",
    ),
    "profile_traits_updates": ("id", "segment_id", "timestamp", "seq", "uuid_ts"),
}


def identity_errors(space: Space, warehouse: Warehouse, catalog: Catalog) -> list[InputError]:
    """What is wrong with a space's identity config against its warehouse, before anything runs."""
    identity = space.config.identity
    schema = space.identity_schema
    if schema is None:
        return []
    problems: list[InputError] = []
    outputs = {s.output_schema: s.name for s in map(space.project.space, space.project.config.spaces)}
    if schema in outputs:
        key = "output_schema" if getattr(identity, "output_schema", None) else "schema"
        problems.append(
            ConfigError(
                f"identity tables cannot live in {schema}: it is the output schema of space"
                f" {outputs[schema]}; choose another output_schema",
                space.locate("identity", key),
            )
        )
    if isinstance(identity, ProfilesSyncIdentity):
        for table, needed in PROFILES_SYNC_COLUMNS.items():
            columns = warehouse.table_columns(identity.schema_, table)
            if not columns:
                problems.append(
                    ConfigError(
                        f"Profiles Sync table {identity.schema_}.{table} not found in the warehouse",
                        space.locate("identity", "schema"),
                    )
                )
                continue
            missing = [c for c in needed if c not in columns]
            if missing:
                problems.append(
                    ConfigError(
                        f"Profiles Sync table {identity.schema_}.{table} lacks column"
                        f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                        space.locate("identity", "schema"),
                    )
                )
    if isinstance(identity, StitchIdentity):
        seen = {c for t in catalog.tables.values() for c in t.columns}
        for number, name in enumerate(identity.identifiers):
            if name not in seen:
                problems.append(
                    ConfigError(
                        f"identifier {name} is a column of no table in the sources"
                        f" ({', '.join(catalog.sources)})",
                        space.locate("identity", "identifiers", number),
                    )
                )
    return problems


def materialize_identity(
    space: Space, warehouse: Warehouse, catalog: Catalog, *, full_refresh: bool = False, depth: bool = True
) -> IdentityCounts | None:
    """Brings the space's identity tables up to date with what has landed (incrementally unless
    `full_refresh`); None when the space resolves no identity. `depth`: count the longest merge chain."""
    identity = space.config.identity
    schema = space.identity_schema
    if isinstance(identity, ProfilesSyncIdentity):
        from engage.identity_graph import materialize

        assert schema is not None
        return materialize(warehouse, identity.schema_, schema, full_refresh=full_refresh, depth=depth)
    if isinstance(identity, StitchIdentity):
        from engage.identity_stitch import materialize_stitch

        assert schema is not None
        return materialize_stitch(warehouse, catalog, identity.identifiers, schema, full_refresh=full_refresh)
    return None
