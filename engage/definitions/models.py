"""Typed audience and trait definitions (SPEC §2). Pure data and shape checks; no SQL, no catalog."""

from __future__ import annotations

import builtins
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from engage.naming import snakecase

Scalar = str | int | float | bool
ComparisonOp = Literal[
    "eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in",
    "contains", "not_contains", "starts_with", "ends_with", "exists", "not_exists",
]  # fmt: skip
TraitType = Literal[
    "count", "sum", "avg", "min", "max", "most_frequent", "first", "last", "unique_list", "unique_list_count",
]  # fmt: skip
AGGREGATE_FUNCTIONS = ("sum", "avg", "min", "max")
AGGREGATE_COMPARATORS = ("gt", "gte", "lt", "lte", "eq", "neq")
COUNT_FIELDS = ("at_least", "at_most", "exactly")
SQL_TRAIT_IDENTIFIERS = ("user_id", "anonymous_id", "email")
MAX_SQL_TRAIT_COLUMNS = 25

_DURATION = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")
_DURATION_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: Any) -> timedelta:
    """`N(h|d|w)` → timedelta; the only duration forms SPEC §1 defines."""
    if isinstance(value, timedelta):
        return value
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError("a duration is a whole number and a unit h, d or w, e.g. 30d")
    amount = int(match.group(1))
    if amount <= 0:
        raise ValueError("a duration must be positive")
    return timedelta(**{_DURATION_UNITS[match.group(2)]: amount})


def to_naive_utc(moment: datetime) -> datetime:
    """Warehouse timestamps are naive UTC (Segment's convention); aware inputs are converted."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


Duration = Annotated[timedelta, Field(json_schema_extra={"format": "N(h|d|w)"})]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _Comparison(_Model):
    """An `op` with its `value`, shared by property filters and trait conditions."""

    op: ComparisonOp
    value: Scalar | list[Scalar] | None = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> _Comparison:
        if self.op in ("exists", "not_exists"):
            if self.value is not None:
                raise ValueError(f"op '{self.op}' takes no value")
        elif self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"op '{self.op}' needs a non-empty list as value")
        elif self.value is None or isinstance(self.value, list):
            raise ValueError(f"op '{self.op}' needs one value")
        elif self.op in ("contains", "not_contains", "starts_with", "ends_with") and not isinstance(
            self.value, str
        ):
            raise ValueError(f"op '{self.op}' needs a string value")
        return self


class PropertyFilter(_Comparison):
    """`{property, op, value}` on an event property; `a.b` addresses the flattened column `a_b`."""

    property: str = Field(min_length=1)


class Window(_Model):
    """A time window: `within: N` (relative to the as-of) or `between: [from, to]` (inclusive)."""

    within: Duration | None = None
    between: tuple[datetime, datetime] | None = None

    @field_validator("within", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("between", mode="after")
    @classmethod
    def _utc(cls, value: tuple[datetime, datetime] | None) -> tuple[datetime, datetime] | None:
        return None if value is None else (to_naive_utc(value[0]), to_naive_utc(value[1]))

    @model_validator(mode="after")
    def _one_window(self) -> Window:
        if self.within is not None and self.between is not None:
            raise ValueError("use either within or between, not both")
        if self.between is not None and self.between[0] > self.between[1]:
            raise ValueError("between: the start is after the end")
        return self


class EventCondition(Window):
    """`performed` / `not_performed` an event, with a count or an aggregate, a window and filters."""

    performed: str | None = Field(default=None, min_length=1)
    not_performed: str | None = Field(default=None, min_length=1)
    at_least: int | None = Field(default=None, ge=0)
    at_most: int | None = Field(default=None, ge=0)
    exactly: int | None = Field(default=None, ge=0)
    sum: str | None = None
    avg: str | None = None
    min: str | None = None
    max: str | None = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    eq: float | None = None
    neq: float | None = None
    where: list[PropertyFilter] = []

    @model_validator(mode="after")
    def _one_measure(self) -> EventCondition:
        if (self.performed is None) == (self.not_performed is None):
            raise ValueError("an event condition has exactly one of performed or not_performed")
        counts = [f for f in COUNT_FIELDS if getattr(self, f) is not None]
        aggregates = [f for f in AGGREGATE_FUNCTIONS if getattr(self, f) is not None]
        comparators = [f for f in AGGREGATE_COMPARATORS if getattr(self, f) is not None]
        if self.not_performed is not None and (counts or aggregates or comparators):
            raise ValueError("not_performed takes no count or aggregate (it means: zero such events)")
        if len(counts) > 1:
            raise ValueError(f"use one count, not {' and '.join(counts)}")
        if len(aggregates) > 1:
            raise ValueError(f"use one aggregate, not {' and '.join(aggregates)}")
        if counts and aggregates:
            raise ValueError("use a count or an aggregate, not both")
        if aggregates and len(comparators) != 1:
            raise ValueError(
                f"aggregate '{aggregates[0]}' needs exactly one of {', '.join(AGGREGATE_COMPARATORS)}"
            )
        if comparators and not aggregates:
            raise ValueError(f"'{comparators[0]}' compares an aggregate: add one of sum, avg, min or max")
        return self

    @property
    def event(self) -> str:
        return self.performed if self.performed is not None else str(self.not_performed)

    @property
    def aggregate(self) -> tuple[str, str, str, float] | None:
        """(function, property, comparator, number) when the condition aggregates a property."""
        for function in AGGREGATE_FUNCTIONS:
            prop = getattr(self, function)
            if prop is not None:
                comparator = next(c for c in AGGREGATE_COMPARATORS if getattr(self, c) is not None)
                return function, prop, comparator, float(getattr(self, comparator))
        return None

    @property
    def count(self) -> tuple[str, int]:
        """(at_least|at_most|exactly, N); `not_performed` is `exactly 0`, the default `at_least 1`."""
        if self.not_performed is not None:
            return "exactly", 0
        for field in COUNT_FIELDS:
            if getattr(self, field) is not None:
                return field, int(getattr(self, field))
        return "at_least", 1


class TraitCondition(_Comparison):
    """`trait: <key>` with op and value, on a custom trait or a computed/SQL trait of the space."""

    trait: str = Field(min_length=1)


class InAudienceCondition(_Model):
    in_audience: str = Field(min_length=1)


class NotInAudienceCondition(_Model):
    not_in_audience: str = Field(min_length=1)


class FunnelStep(_Model):
    """A later funnel step; it must follow its parent within `within` (and never after the as-of)."""

    then_performed: str | None = Field(default=None, min_length=1)
    then_not_performed: str | None = Field(default=None, min_length=1)
    within: Duration | None = None
    where: list[PropertyFilter] = []

    @field_validator("within", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _one_event(self) -> FunnelStep:
        if (self.then_performed is None) == (self.then_not_performed is None):
            raise ValueError("a funnel step has exactly one of then_performed or then_not_performed")
        return self

    @property
    def event(self) -> str:
        return self.then_performed if self.then_performed is not None else str(self.then_not_performed)

    @property
    def negated(self) -> bool:
        return self.then_not_performed is not None


def _funnel_member_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "then_performed" in value or "then_not_performed" in value:
            return "Step"
        return "First"
    return "Step" if isinstance(value, FunnelStep) else "First"


class FunnelCondition(_Model):
    funnel: list[
        Annotated[
            Annotated[EventCondition, Tag("First")] | Annotated[FunnelStep, Tag("Step")],
            Discriminator(_funnel_member_kind),
        ]
    ] = Field(min_length=2)

    @model_validator(mode="after")
    def _shape(self) -> FunnelCondition:
        first, *rest = self.funnel
        if not isinstance(first, EventCondition) or first.performed is None:
            raise ValueError("a funnel starts with a performed event step")
        if first.aggregate is not None or first.count != ("at_least", 1):
            raise ValueError("the first funnel step takes no count or aggregate: every instance is a parent")
        if not all(isinstance(step, FunnelStep) for step in rest):
            raise ValueError("every funnel step after the first is then_performed or then_not_performed")
        return self

    @property
    def first(self) -> EventCondition:
        assert isinstance(self.funnel[0], EventCondition)
        return self.funnel[0]

    @property
    def steps(self) -> list[FunnelStep]:
        return [s for s in self.funnel[1:] if isinstance(s, FunnelStep)]


class AllCondition(_Model):
    all: list[Condition] = Field(min_length=1)


class AnyCondition(_Model):
    any: list[Condition] = Field(min_length=1)


class NotCondition(_Model):
    not_: Condition = Field(alias="not")


_CONDITION_KEYS = {
    "performed": "Event",
    "not_performed": "Event",
    "trait": "Trait",
    "in_audience": "InAudience",
    "not_in_audience": "NotInAudience",
    "funnel": "Funnel",
    "all": "All",
    "any": "Any",
    "not": "Not",
}
_CONDITION_CLASSES: dict[str, type[BaseModel]] = {}


def _condition_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for key, tag in _CONDITION_KEYS.items():
            if key in value:
                return tag
        return None
    for tag, cls in _CONDITION_CLASSES.items():
        if isinstance(value, cls):
            return tag
    return None


Condition = Annotated[
    Annotated[EventCondition, Tag("Event")]
    | Annotated[TraitCondition, Tag("Trait")]
    | Annotated[InAudienceCondition, Tag("InAudience")]
    | Annotated[NotInAudienceCondition, Tag("NotInAudience")]
    | Annotated[FunnelCondition, Tag("Funnel")]
    | Annotated[AllCondition, Tag("All")]
    | Annotated[AnyCondition, Tag("Any")]
    | Annotated[NotCondition, Tag("Not")],
    Discriminator(
        _condition_kind,
        custom_error_type="condition_kind",
        custom_error_message="a condition needs one of: " + ", ".join(_CONDITION_KEYS),
    ),
]
_CONDITION_CLASSES.update(
    Event=EventCondition,
    Trait=TraitCondition,
    InAudience=InAudienceCondition,
    NotInAudience=NotInAudienceCondition,
    Funnel=FunnelCondition,
    All=AllCondition,
    Any=AnyCondition,
    Not=NotCondition,
)
for _model in (AllCondition, AnyCondition, NotCondition):
    _model.model_rebuild()


class _Definition(_Model):
    name: str = Field(min_length=1)
    key: str | None = Field(default=None, min_length=1)
    description: str | None = None
    destinations: list[str] | None = None

    @property
    def resolved_key(self) -> str:
        """The explicit `key`, else the go-snakecase of `name` (SPEC §2)."""
        return self.key if self.key is not None else snakecase(self.name)


class AudienceDefinition(_Definition):
    kind: Literal["audience"]
    include_anonymous: bool = False
    condition: Condition


class TraitDefinition(Window, _Definition):
    kind: Literal["trait"]
    type: TraitType
    event: str | list[str]
    property: str | None = Field(default=None, min_length=1)
    min_frequency: int | None = Field(default=None, ge=1)
    where: list[PropertyFilter] = []

    @model_validator(mode="after")
    def _fields_fit_type(self) -> TraitDefinition:
        if self.type == "count" and self.property is not None:
            raise ValueError("a count trait takes no property")
        if self.type != "count" and self.property is None:
            raise ValueError(f"a {self.type} trait needs a property")
        if self.min_frequency is not None and self.type != "most_frequent":
            raise ValueError("min_frequency applies to most_frequent traits only")
        if isinstance(self.event, list) and (not self.event or len(set(self.event)) != len(self.event)):
            raise ValueError("event lists must be non-empty and without repeats")
        return self

    @builtins.property  # the field `property` shadows the builtin in this class body
    def events(self) -> list[str]:
        return [self.event] if isinstance(self.event, str) else list(self.event)

    @builtins.property
    def frequency(self) -> int:
        return self.min_frequency if self.min_frequency is not None else 2


class SqlTraitDefinition(_Definition):
    kind: Literal["sql_trait"]
    sql: str = Field(min_length=1)
    dialect: str | None = None

    @field_validator("dialect")
    @classmethod
    def _known_dialect(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        from sqlglot.dialects.dialect import Dialect

        try:
            Dialect.get_or_raise(value)
        except ValueError as err:
            raise ValueError(str(err)) from err
        return value


Definition = Annotated[
    AudienceDefinition | TraitDefinition | SqlTraitDefinition,
    Field(discriminator="kind"),
]
