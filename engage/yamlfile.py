"""Reads YAML while keeping where every value came from, so errors can name file, line and field."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from engage.errors import InputError, Location


@dataclass(frozen=True)
class YamlDocument:
    """One YAML document: its plain Python data plus the positions of every key and item."""

    path: Path
    index: int
    start_line: int
    node: Any

    @property
    def data(self) -> Any:
        return _plain(self.node)

    def locate(self, loc: Sequence[str | int]) -> Location:
        """The file position of the deepest node on `loc` that exists in the document.

        `loc` is a pydantic error location. It may hold labels that are not in the document: a union's
        tag (`audience`, `Event`), skipped when the next part is a key here or when it is CapitalCase;
        anything else missing is a key the user left out, kept in the field name.
        """
        node, line = self.node, self.start_line
        fields: list[str] = []
        parts = list(loc)
        for index, part in enumerate(parts):
            following = parts[index + 1] if index + 1 < len(parts) else None
            if isinstance(node, CommentedMap) and part in node:
                line = node.lc.key(part)[0] + 1
                node = node[part]
                fields.append(str(part))
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line = node.lc.item(part)[0] + 1
                node = node[part]
                fields.append(f"[{part}]")
            elif isinstance(node, CommentedMap) and (
                (following is not None and following in node) or part in node.values()
            ):
                continue  # a union's tag (e.g. the value of `kind:`), not a key of this mapping
            elif isinstance(part, str) and part[:1].isupper():
                continue  # one of this project's CapitalCase union tags
            else:
                fields.append(f"[{part}]" if isinstance(part, int) else str(part))
                node = None
        field = ".".join(fields).replace(".[", "[") or None
        return Location(self.path, line, field)


def _plain(node: Any) -> Any:
    """Turns ruamel's round-trip nodes (CommentedMap, ScalarFloat, TimeStamp, …) into plain values."""
    if isinstance(node, CommentedMap):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(v) for v in node]
    if isinstance(node, TaggedScalar):
        return node.value
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, datetime):
        return datetime.fromisoformat(node.isoformat())
    for base in (int, float, str):
        if isinstance(node, base):
            return base(node)
    return node


def read_documents(path: Path, display: Path | None = None) -> Iterator[YamlDocument]:
    """Yields the non-empty documents of a YAML file; malformed YAML raises `InputError` with its line."""
    shown = display or path
    yaml = YAML(typ="rt", pure=True)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read file: {err}", Location(shown)) from err
    try:
        for index, node in enumerate(yaml.load_all(text)):
            if node is None:
                continue
            start = node.lc.line + 1 if hasattr(node, "lc") else 1
            yield YamlDocument(shown, index, start, node)
    except MarkedYAMLError as err:
        # An unclosed [ or { is found at the end of the file: name the line where it opened.
        opened = err.context_mark is not None and "flow" in (err.context or "")
        mark = err.context_mark if opened else (err.problem_mark or err.context_mark)
        line = mark.line + 1 if mark is not None else None
        problem = err.problem or err.context or "malformed YAML"
        if opened:
            problem = f"{err.context} that is never closed ({problem})"
        raise InputError(f"invalid YAML: {problem}", Location(shown, line)) from err
    except YAMLError as err:
        raise InputError(f"invalid YAML: {err}", Location(shown)) from err


def validation_errors(
    document: YamlDocument,
    error: ValidationError,
    error_type: type[InputError],
    base: Sequence[str | int] = (),
) -> list[InputError]:
    """One `error_type` per pydantic error, located in the document. Input values are never echoed,
    because a config value may hold an interpolated secret."""
    found: list[InputError] = []
    for item in error.errors(include_input=False, include_url=False):
        loc, message = (*base, *item["loc"]), item["msg"]
        if item["type"] == "union_tag_invalid":
            context = item.get("ctx", {})
            field = str(context.get("discriminator", "")).strip("'")
            loc = (*loc, field)
            message = (
                f"unknown {field} '{context.get('tag')}' (expected one of: {context.get('expected_tags')})"
            )
        found.append(error_type(message, document.locate(loc)))
    return found
