"""Checks definitions against the space and its warehouse catalog, before any SQL runs.

Unknown events, properties, traits, audiences and destinations, and membership cycles, are all
reported together, each with the file, line and field that names them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from engage.catalog import Catalog
from engage.definitions.loader import LoadedDefinition
from engage.definitions.models import (
    AllCondition,
    AnyCondition,
    AudienceDefinition,
    EventCondition,
    FunnelCondition,
    InAudienceCondition,
    NotCondition,
    NotInAudienceCondition,
    PropertyFilter,
    TraitCondition,
    TraitDefinition,
)
from engage.errors import DefinitionError, InputError

Loc = tuple[str | int, ...]


def reference_errors(
    definitions: Sequence[LoadedDefinition],
    catalog: Catalog,
    destinations: Sequence[str],
    complete: bool = True,
) -> list[InputError]:
    """Every reference problem of `definitions`. When some definitions of the space failed to load
    (`complete=False`), references to other definitions are not judged: the target may be among them."""
    by_key = {d.key: d for d in definitions}
    trait_keys = {k for d in definitions if d.kind != "audience" for k in d.trait_keys}
    custom_traits = {c for t in catalog.tables_named("identifies") for c in t.columns}
    errors: list[InputError] = []
    for loaded in definitions:
        found = _check_definition(loaded, catalog, by_key, trait_keys, custom_traits, destinations)
        errors.extend(e for e in found if complete or not isinstance(e, _DefinitionReference))
    errors.extend(_cycles(definitions, by_key))
    return errors


class _DefinitionReference(DefinitionError):
    """A reference to a trait or audience of the space that does not resolve."""


def _check_definition(
    loaded: LoadedDefinition,
    catalog: Catalog,
    by_key: dict[str, LoadedDefinition],
    trait_keys: set[str],
    custom_traits: set[str],
    destinations: Sequence[str],
) -> Iterator[InputError]:
    definition = loaded.definition
    for key in loaded.trait_keys:
        if key.startswith("__"):
            yield loaded.error(
                f"key '{key}' may not start with '__' (reserved for engage's own columns)", "key"
            )
    for index, name in enumerate(definition.destinations or []):
        if name not in destinations:
            known = ", ".join(destinations) or "none"
            yield loaded.error(
                f"unknown destination '{name}' (the space has: {known})", "destinations", index
            )
    if isinstance(definition, TraitDefinition):
        for index, event in enumerate(definition.events):
            loc: Loc = ("event",) if isinstance(definition.event, str) else ("event", index)
            yield from _check_event(loaded, catalog, event, loc)
        if all(catalog.event_tables(e) for e in definition.events):
            if definition.property is not None:
                yield from _check_property(
                    loaded, catalog, definition.events, definition.property, ("property",)
                )
            yield from _check_filters(loaded, catalog, definition.events, definition.where, ("where",))
    elif isinstance(definition, AudienceDefinition):
        yield from _check_condition(
            loaded, catalog, definition.condition, ("condition",), by_key, trait_keys, custom_traits
        )


def _check_event(loaded: LoadedDefinition, catalog: Catalog, event: str, loc: Loc) -> Iterator[InputError]:
    if not catalog.event_tables(event):
        table = catalog.event_table_name(event)
        known = ", ".join(catalog.event_table_names()) or "none"
        yield loaded.error(
            f"unknown event '{event}': no table '{table}' in sources {', '.join(catalog.sources)}"
            f" (event tables found: {known})",
            *loc,
        )


def _check_property(
    loaded: LoadedDefinition, catalog: Catalog, events: Sequence[str], prop: str, loc: Loc
) -> Iterator[InputError]:
    tables = [t for e in events for t in catalog.event_tables(e)]
    if catalog.property_column(tables, prop) is None:
        names = ", ".join(sorted({t.name for t in tables}))
        candidates = " or ".join(catalog.property_column_candidates(prop))
        yield loaded.error(f"unknown property '{prop}': no column {candidates} in {names}", *loc)


def _check_filters(
    loaded: LoadedDefinition,
    catalog: Catalog,
    events: Sequence[str],
    where: Sequence[PropertyFilter],
    loc: Loc,
) -> Iterator[InputError]:
    for index, item in enumerate(where):
        yield from _check_property(loaded, catalog, events, item.property, (*loc, index, "property"))


def _check_condition(
    loaded: LoadedDefinition,
    catalog: Catalog,
    node: object,
    loc: Loc,
    by_key: dict[str, LoadedDefinition],
    trait_keys: set[str],
    custom_traits: set[str],
) -> Iterator[InputError]:
    def nested(child: object, *more: str | int) -> Iterator[InputError]:
        return _check_condition(loaded, catalog, child, (*loc, *more), by_key, trait_keys, custom_traits)

    if isinstance(node, EventCondition):
        field = "performed" if node.performed is not None else "not_performed"
        errors = list(_check_event(loaded, catalog, node.event, (*loc, field)))
        yield from errors
        if not errors:
            yield from _check_filters(loaded, catalog, [node.event], node.where, (*loc, "where"))
            if node.aggregate is not None:
                function, prop, _, _ = node.aggregate
                yield from _check_property(loaded, catalog, [node.event], prop, (*loc, function))
    elif isinstance(node, TraitCondition):
        if node.trait not in trait_keys and node.trait not in custom_traits:
            yield _DefinitionReference(
                f"unknown trait '{node.trait}': not a computed or SQL trait of this space, nor a column of"
                " identifies in its sources",
                loaded.locate(*loc, "trait"),
            )
    elif isinstance(node, InAudienceCondition | NotInAudienceCondition):
        field = "in_audience" if isinstance(node, InAudienceCondition) else "not_in_audience"
        key = getattr(node, field)
        target = by_key.get(key)
        if target is None or target.kind != "audience":
            what = f"a {target.kind}, not an audience" if target else "no audience of this space has that key"
            yield _DefinitionReference(f"unknown audience '{key}': {what}", loaded.locate(*loc, field))
    elif isinstance(node, FunnelCondition):
        yield from nested(node.first, "funnel", 0)
        for index, step in enumerate(node.steps, start=1):
            field = "then_not_performed" if step.negated else "then_performed"
            errors = list(_check_event(loaded, catalog, step.event, (*loc, "funnel", index, field)))
            yield from errors
            if not errors:
                yield from _check_filters(
                    loaded, catalog, [step.event], step.where, (*loc, "funnel", index, "where")
                )
    elif isinstance(node, AllCondition | AnyCondition):
        field = "all" if isinstance(node, AllCondition) else "any"
        for index, child in enumerate(getattr(node, field)):
            yield from nested(child, field, index)
    elif isinstance(node, NotCondition):
        yield from nested(node.not_, "not")


def _memberships(node: object, loc: Loc) -> Iterator[tuple[str, Loc]]:
    if isinstance(node, InAudienceCondition):
        yield node.in_audience, (*loc, "in_audience")
    elif isinstance(node, NotInAudienceCondition):
        yield node.not_in_audience, (*loc, "not_in_audience")
    elif isinstance(node, AllCondition):
        for index, child in enumerate(node.all):
            yield from _memberships(child, (*loc, "all", index))
    elif isinstance(node, AnyCondition):
        for index, child in enumerate(node.any):
            yield from _memberships(child, (*loc, "any", index))
    elif isinstance(node, NotCondition):
        yield from _memberships(node.not_, (*loc, "not"))


def _cycles(definitions: Sequence[LoadedDefinition], by_key: dict[str, LoadedDefinition]) -> list[InputError]:
    edges: dict[str, list[tuple[str, Loc]]] = {}
    for loaded in definitions:
        if isinstance(loaded.definition, AudienceDefinition):
            edges[loaded.key] = [
                (k, loc)
                for k, loc in _memberships(loaded.definition.condition, ("condition",))
                if k in by_key
            ]
    errors: list[InputError] = []
    reported: set[frozenset[str]] = set()
    done: set[str] = set()

    def visit(key: str, path: list[str]) -> None:
        if key in done:
            return
        for target, loc in edges.get(key, []):
            if target in path:
                cycle = [*path[path.index(target) :], target]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    errors.append(
                        DefinitionError("membership cycle: " + " → ".join(cycle), by_key[key].locate(*loc))
                    )
            else:
                visit(target, [*path, target])
        done.add(key)

    for key in edges:
        visit(key, [key])
    return errors
