"""Loads a space's definitions folder: every `*.yaml`/`*.yml`, one or more documents per file."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sqlglot
from pydantic import TypeAdapter, ValidationError
from sqlglot import exp
from sqlglot.errors import ParseError

from engage.definitions.models import (
    MAX_SQL_TRAIT_COLUMNS,
    SQL_TRAIT_IDENTIFIERS,
    AudienceDefinition,
    Definition,
    SqlTraitDefinition,
    TraitDefinition,
)
from engage.errors import DefinitionError, InputError, InputErrors, Location, raise_all
from engage.yamlfile import YamlDocument, read_documents, validation_errors

_DEFINITION = TypeAdapter[AudienceDefinition | TraitDefinition | SqlTraitDefinition](Definition)


@dataclass(frozen=True)
class LoadedDefinition:
    """A validated definition and the YAML document it came from, for errors that name file:line."""

    definition: AudienceDefinition | TraitDefinition | SqlTraitDefinition
    document: YamlDocument
    query: exp.Query | None = None  # the parsed SELECT of an SQL trait

    @property
    def key(self) -> str:
        return self.definition.resolved_key

    @property
    def kind(self) -> str:
        return self.definition.kind

    def locate(self, *loc: str | int) -> Location:
        return self.document.locate(loc)

    def error(self, message: str, *loc: str | int) -> DefinitionError:
        return DefinitionError(message, self.locate(*loc))

    @property
    def trait_keys(self) -> list[str]:
        """The trait keys this definition sends: its own key, or an SQL trait's column names."""
        if self.query is not None:
            return sql_trait_columns(self.query)
        return [self.key]


def definition_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_definitions(
    folder: Path, root: Path, default_dialect: str, problems: list[InputError] | None = None
) -> list[LoadedDefinition]:
    """Validates every definition under `folder`. All problems are raised together, or, when the caller
    passes a `problems` list, added to it and the valid definitions returned."""
    if not folder.is_dir():
        raise DefinitionError(f"definitions folder {folder} does not exist")
    loaded: list[LoadedDefinition] = []
    errors: list[InputError] = []
    for path in definition_files(folder):
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        try:
            documents = list(read_documents(path, display=shown))
        except InputError as err:
            errors.append(DefinitionError(err.message, err.location))
            continue
        for document in documents:
            try:
                loaded.append(_load_one(document, default_dialect))
            except InputErrors as err:
                errors.extend(err.errors)
            except InputError as err:
                errors.append(err)
    errors.extend(_duplicate_keys(loaded))
    if problems is None:
        raise_all(errors)
    else:
        problems.extend(errors)
    return loaded


def _load_one(document: YamlDocument, default_dialect: str) -> LoadedDefinition:
    if not isinstance(document.data, dict):
        raise DefinitionError("a definition is a mapping with kind, name and its fields", document.locate(()))
    try:
        definition = _DEFINITION.validate_python(document.data)
    except ValidationError as err:
        raise_all(validation_errors(document, err, DefinitionError))
    if not definition.resolved_key:
        field = "key" if definition.key is not None else "name"
        raise DefinitionError(
            f"'{definition.name}' has an empty key once snake_cased; set a key", document.locate((field,))
        )
    query = None
    if isinstance(definition, SqlTraitDefinition):
        query = parse_sql_trait(definition, document, default_dialect)
    return LoadedDefinition(definition, document, query)


def parse_sql_trait(
    definition: SqlTraitDefinition, document: YamlDocument, default_dialect: str
) -> exp.Query:
    """Parses an SQL trait: exactly one SELECT, with one identifier column and 1–25 trait columns."""
    where = document.locate(("sql",))
    dialect = definition.dialect or default_dialect
    try:
        statements = [s for s in sqlglot.parse(definition.sql, read=dialect) if s is not None]
    except ParseError as err:
        first = err.errors[0]["description"] if err.errors else str(err)
        raise DefinitionError(f"the SQL does not parse as {dialect}: {first}", where) from err
    if len(statements) != 1:
        raise DefinitionError(
            f"an SQL trait is one SELECT statement, found {len(statements)} statements", where
        )
    query = statements[0]
    if query.find(exp.Into) is not None:
        raise DefinitionError("an SQL trait is a SELECT; SELECT … INTO is refused", where)
    if not isinstance(query, exp.Query):
        raise DefinitionError(f"an SQL trait is a SELECT; {query.key.upper()} statements are refused", where)
    for node in query.walk():
        if isinstance(node, exp.DDL | exp.DML | exp.Command):
            raise DefinitionError(f"an SQL trait may not contain {node.key.upper()}", where)
    columns = query.named_selects
    if "*" in columns or any(not c for c in columns):
        raise DefinitionError("name every column of an SQL trait (no * and no unnamed expressions)", where)
    identifiers = [c for c in columns if c in SQL_TRAIT_IDENTIFIERS]
    if len(identifiers) != 1:
        raise DefinitionError(
            f"an SQL trait returns exactly one identifier column ({', '.join(SQL_TRAIT_IDENTIFIERS)}),"
            f" found {len(identifiers)}",
            where,
        )
    traits = sql_trait_columns(query)
    if not 1 <= len(traits) <= MAX_SQL_TRAIT_COLUMNS:
        raise DefinitionError(
            f"an SQL trait returns 1 to {MAX_SQL_TRAIT_COLUMNS} trait columns, found {len(traits)}", where
        )
    if len(set(columns)) != len(columns):
        raise DefinitionError("an SQL trait returns each column name once", where)
    return query


def sql_trait_columns(query: exp.Query) -> list[str]:
    return [c for c in query.named_selects if c not in SQL_TRAIT_IDENTIFIERS]


def sql_trait_identifier(query: exp.Query) -> str:
    return next(c for c in query.named_selects if c in SQL_TRAIT_IDENTIFIERS)


def _duplicate_keys(loaded: Iterable[LoadedDefinition]) -> list[InputError]:
    seen: dict[str, LoadedDefinition] = {}
    errors: list[InputError] = []
    for item in loaded:
        for key in dict.fromkeys([item.key, *item.trait_keys]):
            if key in seen:
                first = seen[key].locate("key" if seen[key].definition.key is not None else "name")
                errors.append(item.error(f"key '{key}' is already used by the definition at {first}", "name"))
            else:
                seen[key] = item
    return errors
