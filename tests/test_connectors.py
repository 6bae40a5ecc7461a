"""The connector contract: discovery by name and entry point, one connector per module, clear errors."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import engage_connectors
from engage.connector import Connector, load_connector
from engage.errors import InputError


def test_each_module_defines_one_connector_named_after_it() -> None:
    for module_info in pkgutil.iter_modules(engage_connectors.__path__):
        module = importlib.import_module(f"engage_connectors.{module_info.name}")
        defined = [
            obj
            for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, Connector) and obj is not Connector and obj.__module__ == module.__name__
        ]
        assert [c.name for c in defined] == [module_info.name], module_info.name


@pytest.mark.parametrize("name", ["duckdb", "jsonl", "memory", "segment", "treasure_data", "storage_action"])
def test_shipped_connectors_load_by_name(name: str) -> None:
    assert load_connector(name).name == name


def test_shipped_connectors_are_registered_as_entry_points() -> None:
    from importlib.metadata import entry_points

    names = {e.name for e in entry_points(group="engage.connectors")}
    assert {"duckdb", "jsonl", "memory", "segment", "treasure_data", "storage_action"} <= names


def test_an_unknown_connector_suggests_the_closest_name() -> None:
    with pytest.raises(InputError, match="did you mean 'jsonl'"):
        load_connector("jsnol")
