"""BigQuery, through google-cloud-bigquery.

A run's intermediate tables live in a scratch dataset (`scratch.py`). Statements run as separate jobs:
there is no multi-statement transaction, so a run relies on what every engine has, writes that skip ids
already written and a state advanced last.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from engage.catalog import Catalog, Table, portable_type
from engage.errors import TransientWarehouseError, WarehouseError
from engage.warehouse.base import Setting, Warehouse, empty_result, first_line
from engage.warehouse.capabilities import BIGQUERY
from engage.warehouse.drivers import require
from engage.warehouse.scratch import ScratchTables

if TYPE_CHECKING:
    from engage.config import BigQueryWarehouseConfig

log = logging.getLogger("engage.warehouse")


class BigQueryWarehouse(Warehouse):
    capabilities = BIGQUERY

    def __init__(self, config: BigQueryWarehouseConfig, setting: Setting) -> None:
        self.config = config
        self._setting = setting
        self._bigquery = require("google.cloud.bigquery", "bigquery")
        self._exceptions = require("google.api_core.exceptions", "bigquery")
        self._scratch = ScratchTables(config.scratch_dataset)
        self.client = self._client()

    def _client(self) -> Any:
        from google.api_core.client_options import ClientOptions
        from google.auth.exceptions import DefaultCredentialsError

        config = self.config
        credentials = None
        if config.auth == "none":
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        elif config.credentials_file:
            from google.oauth2 import service_account

            load = service_account.Credentials.from_service_account_file
            credentials = load(config.credentials_file)  # type: ignore[no-untyped-call]
        options = ClientOptions(api_endpoint=config.endpoint) if config.endpoint else None
        try:
            return self._bigquery.Client(
                project=config.project,
                credentials=credentials,
                location=config.location,
                client_options=options,
            )
        except DefaultCredentialsError:
            raise WarehouseError(
                "no credentials: set credentials_file, or application default credentials"
                " (GOOGLE_APPLICATION_CREDENTIALS)",
                self._setting("credentials_file"),
            ) from None

    @property
    def location(self) -> str:
        return f"bigquery:{self.config.project}"

    def render(self, statement: exp.Expr) -> str:
        return super().render(self._scratch.rewrite(statement))

    @staticmethod
    def _bind(statement: exp.Expr, parameters: Sequence[Any]) -> exp.Expr:
        values = iter(parameters)

        def literal(node: exp.Expr) -> exp.Expr:
            if not isinstance(node, exp.Placeholder):
                return node
            value = next(values)
            if isinstance(value, datetime):
                return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), "TIMESTAMP")
            return exp.convert(value)

        return statement.transform(literal)

    # -- jobs ---------------------------------------------------------------------------------------
    def _translate(self, err: Exception, sql: str) -> WarehouseError:
        exceptions = self._exceptions
        if isinstance(err, exceptions.RetryError) and err.cause is not None:  # retried until the timeout
            err = err.cause
        transient = (
            exceptions.ServiceUnavailable,
            exceptions.InternalServerError,
            exceptions.TooManyRequests,
            exceptions.GatewayTimeout,
        )
        if isinstance(err, transient):
            return TransientWarehouseError(f"bigquery: {first_line(err)}")
        if isinstance(err, exceptions.Forbidden | exceptions.Unauthorized):
            return WarehouseError(f"access denied: {first_line(err)}", self._setting("credentials_file"))
        if not isinstance(err, exceptions.GoogleAPIError):  # the endpoint did not answer at all
            where = self.config.endpoint or "bigquery.googleapis.com"
            return TransientWarehouseError(
                f"cannot reach {where}: {first_line(err)}", self._setting("endpoint")
            )
        return WarehouseError(f"bigquery: {first_line(err)}\n  in: {sql[:300]}")

    @property
    def _bounded(self) -> dict[str, Any]:
        """Retry and timeout arguments for API calls: nothing waits longer than `timeout`."""
        from google.api_core.retry import Retry

        return {"retry": Retry(timeout=self.config.timeout), "timeout": self.config.timeout}

    def _job(self, sql: str) -> Any:
        started = time.monotonic()
        try:
            job = self.client.query(sql, **self._bounded)
            result = job.result(timeout=self.config.timeout)
        except Exception as err:
            raise self._translate(err, sql) from err
        log.debug("%.3fs %s", time.monotonic() - started, sql)
        return job, result

    def execute(self, statement: exp.Expr, parameters: Sequence[Any] = ()) -> None:
        self._job(self.render(self._bind(statement, parameters) if parameters else statement))

    def insert(self, statement: exp.Insert) -> int:
        job, _ = self._job(self.render(statement))
        return int(job.num_dml_affected_rows or 0)

    def fetchall(self, query: exp.Expr) -> list[tuple[Any, ...]]:
        _, result = self._job(self.render(query))
        return [tuple(row.values()) for row in result]

    def fetch_batches(self, query: exp.Expr, size: int) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        sql = self.render(query)
        _, result = self._job(sql)
        names = [field.name for field in result.schema]
        try:
            for page in result.pages:
                rows = [tuple(row.values()) for row in page]
                for start in range(0, len(rows), size):
                    yield names, rows[start : start + size]
        except Exception as err:
            raise self._translate(err, sql) from err

    def executemany(self, statement: exp.Expr, rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            self.execute(statement, row)

    def load(self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> None:
        """Into a scratch table of this connection, by a load job of newline-delimited JSON (one job per
        batch, not one statement per row)."""
        if not rows:
            return
        names = [name for name, _ in columns]
        lines = [
            json.dumps(
                {n: v.isoformat() if isinstance(v, datetime) else v for n, v in zip(names, row, strict=True)}
            )
            for row in rows
        ]
        target = self._scratch.table(table)
        dataset, name = target.db, target.name
        bigquery = self._bigquery
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
        )
        try:
            payload = io.BytesIO("\n".join(lines).encode())
            job = self.client.load_table_from_file(
                payload, f"{self.config.project}.{dataset}.{name}", job_config=config
            )
            job.result(timeout=self.config.timeout)
        except Exception as err:
            raise self._translate(err, f"load into {dataset}.{name}") from err

    def query_columns(self, query: exp.Query) -> dict[str, str]:
        _, result = self._job(self.render(empty_result(query)))
        return {field.name: portable_type(field.field_type) for field in result.schema}

    def describe(self, schemas: Sequence[str]) -> Catalog:
        """Through the tables API (a dataset's table list, then each table's schema)."""
        bounded = self._bounded
        tables: dict[tuple[str, str], Table] = {}
        for schema in schemas:
            try:
                listed = list(self.client.list_tables(schema, **bounded))
                for item in sorted(listed, key=lambda t: t.table_id):
                    fields = self.client.get_table(item.reference, **bounded).schema
                    columns = {f.name: portable_type(f.field_type) for f in fields}
                    tables[(schema, item.table_id)] = Table(schema, item.table_id, columns)
            except self._exceptions.NotFound:
                continue
            except Exception as err:
                raise self._translate(err, f"list tables of {schema}") from err
        return Catalog(tuple(schemas), tables)

    def table_columns(self, schema: str, table: str) -> dict[str, str]:
        """From a query of the table: metadata lags behind ALTER TABLE on some servers (the emulator)."""
        try:
            self.client.get_table(f"{schema}.{table}", **self._bounded)
        except self._exceptions.NotFound:
            return {}
        except Exception as err:
            raise self._translate(err, f"get table {schema}.{table}") from err
        return self.query_columns(exp.select("*").from_(exp.table_(table, db=schema)))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """No multi-statement transactions outside scripts: statements commit one by one."""
        yield

    def create_temp_table(self, name: str, query: exp.Query) -> None:
        if not self._scratch:  # the connection's first scratch table
            self.ensure_schema(self.config.scratch_dataset)
        target = self._scratch.add(name)
        self.execute(exp.Create(this=target, kind="TABLE", expression=query, replace=True))

    def close(self) -> None:
        self._scratch.drop(self.execute)
        self.client.close()
