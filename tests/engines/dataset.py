"""One landed dataset for every engine: source tables read from a DuckDB file in engage's portable types,
so each engine's harness can land exactly the same rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from engage.catalog import portable_type


@dataclass(frozen=True)
class SourceTable:
    schema: str
    name: str
    columns: list[tuple[str, str]]  # (name, portable type)
    rows: list[tuple[Any, ...]]
    origin: Path  # the DuckDB file it was read from (DuckDB engines copy from it in SQL)


def read_sources(path: Path, schemas: Sequence[str]) -> list[SourceTable]:
    """Every table of `schemas` in the DuckDB file, rows ordered by id for reproducible loads."""
    tables = []
    with duckdb.connect(str(path), read_only=True) as connection:
        found = connection.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            f" WHERE table_schema IN ({', '.join('?' for _ in schemas)}) ORDER BY 1, 2",
            list(schemas),
        ).fetchall()
        for schema, name in found:
            described = connection.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
                [schema, name],
            ).fetchall()
            columns = [(column, portable_type(kind)) for column, kind in described]
            rows = connection.execute(f'SELECT * FROM "{schema}"."{name}" ORDER BY 1').fetchall()
            tables.append(SourceTable(schema, name, columns, rows, path))
    return tables
