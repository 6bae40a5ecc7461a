"""PostgreSQL and Redshift, through SQLAlchemy (connection settings, pooling) and psycopg (the driver).

Statements run on one DBAPI connection in autocommit mode; `transaction()` groups statements into one
transaction. Large results stream through a server-side cursor, so only a batch at a time is in memory.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from engage.catalog import Catalog, Table, portable_type
from engage.errors import TransientWarehouseError, WarehouseError
from engage.warehouse.base import Setting, Warehouse, empty_result, first_line
from engage.warehouse.capabilities import POSTGRES, REDSHIFT
from engage.warehouse.drivers import require

if TYPE_CHECKING:
    import psycopg

    from engage.config import PostgresWarehouseConfig

log = logging.getLogger("engage.warehouse")

# SQLSTATE classes worth a retry: connection exceptions, serialization failures and deadlocks,
# insufficient resources, operator intervention (server restart).
_TRANSIENT_STATES = ("08", "40001", "40P01", "53", "57P")


class PostgresWarehouse(Warehouse):
    def __init__(self, config: PostgresWarehouseConfig, setting: Setting) -> None:
        self.capabilities = REDSHIFT if config.type == "redshift" else POSTGRES
        self.config = config
        self._setting = setting
        self._connection = self._connect()

    # -- connecting ---------------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        sqlalchemy = require("sqlalchemy", "postgres")
        driver = require("psycopg", "postgres")
        config = self.config
        url = sqlalchemy.engine.URL.create(
            "postgresql+psycopg",
            username=config.user,
            password=config.password.get_secret_value() if config.password else None,
            host=config.host,
            port=config.resolved_port,
            database=config.database,
            query={"sslmode": config.sslmode} if config.sslmode else {},
        )
        engine = sqlalchemy.create_engine(
            url,
            poolclass=sqlalchemy.pool.NullPool,
            connect_args={"connect_timeout": config.connect_timeout, "application_name": "engage"},
        )
        try:
            raw = engine.raw_connection()
        except sqlalchemy.exc.DBAPIError as err:  # how SQLAlchemy wraps a driver error, when it does
            raise self._connection_error(err.orig or err) from None
        except driver.Error as err:
            raise self._connection_error(err) from None
        self._pooled = raw  # the DBAPI connection closes when SQLAlchemy's proxy is collected
        connection: psycopg.Connection[Any] = raw.driver_connection
        connection.autocommit = True
        return connection

    def _connection_error(self, err: BaseException) -> WarehouseError:
        """A failed connect, as one line naming the setting to fix (never the password)."""
        message = first_line(err)
        state = getattr(err, "sqlstate", None)
        where = f"{self.config.host}:{self.config.resolved_port}"
        if state == "28P01" or "password authentication failed" in message:
            return WarehouseError(
                f"authentication failed for user {self.config.user!r}", self._setting("password")
            )
        if "no password supplied" in message:
            return WarehouseError(
                "the server asks for a password and none is configured", self._setting("password")
            )
        # A failed connect carries the server's FATAL text, not always its SQLSTATE.
        if state == "3D000" or re.search(r'database ".*" does not exist', message):
            return WarehouseError(
                f"database {self.config.database!r} does not exist", self._setting("database")
            )
        if state == "28000":
            return WarehouseError(
                f"the server refused user {self.config.user!r}: {message}", self._setting("user")
            )
        # Refused, timed out, unknown host: nothing answered at host:port. Worth a retry later.
        reason = message.rsplit(":", 1)[-1].strip() or message
        return TransientWarehouseError(f"cannot reach {where}: {reason}", self._setting("host"))

    @property
    def location(self) -> str:
        config = self.config
        return f"{config.type}:{config.host}:{config.resolved_port}/{config.database}"

    # -- statements ---------------------------------------------------------------------------------
    def _translate(self, err: Exception, sql: str) -> WarehouseError:
        state = getattr(err, "sqlstate", None) or ""
        message = f"{self.config.type}: {first_line(err)}"
        if state.startswith(_TRANSIENT_STATES):
            return TransientWarehouseError(message)
        return WarehouseError(f"{message}\n  in: {sql[:300]}")

    @contextmanager
    def _cursor(self, sql: str, parameters: Sequence[Any] = ()) -> Iterator[psycopg.Cursor[Any]]:
        import psycopg

        started = time.monotonic()
        try:
            with self._connection.cursor() as cursor:
                cursor.execute(sql, list(parameters) if parameters else None)
                log.debug("%.3fs %s", time.monotonic() - started, sql)
                yield cursor
        except psycopg.Error as err:
            raise self._translate(err, sql) from err

    def execute(self, statement: exp.Expr, parameters: Sequence[Any] = ()) -> None:
        with self._cursor(self.render(statement), parameters):
            pass

    def insert(self, statement: exp.Insert) -> int:
        with self._cursor(self.render(statement)) as cursor:
            return max(cursor.rowcount, 0)

    def fetchall(self, query: exp.Expr) -> list[tuple[Any, ...]]:
        with self._cursor(self.render(query)) as cursor:
            return [tuple(row) for row in cursor.fetchall()]

    def fetch_batches(self, query: exp.Expr, size: int) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        import psycopg

        sql = self.render(query)
        try:
            # A named cursor keeps the result on the server; WITH HOLD lets it live outside a transaction.
            with self._connection.cursor(name="engage_batches", withhold=True) as cursor:
                cursor.execute(sql)
                names = [d.name for d in cursor.description or []]
                while rows := cursor.fetchmany(size):
                    yield names, [tuple(r) for r in rows]
        except psycopg.Error as err:
            raise self._translate(err, sql) from err

    def executemany(self, statement: exp.Expr, rows: Sequence[Sequence[Any]]) -> None:
        import psycopg

        sql = self.render(statement)
        try:
            with self._connection.cursor() as cursor:
                cursor.executemany(sql, [list(r) for r in rows])
        except psycopg.Error as err:
            raise self._translate(err, sql) from err

    def describe(self, schemas: Sequence[str]) -> Catalog:
        if not schemas:
            return Catalog((), {})
        query = (
            exp.select("table_schema", "table_name", "column_name", "data_type")
            .from_(exp.table_("columns", db="information_schema"))
            .where(
                exp.and_(
                    exp.column("table_catalog").eq(exp.func("CURRENT_DATABASE")),
                    exp.In(
                        this=exp.column("table_schema"),
                        expressions=[exp.Literal.string(s) for s in schemas],
                    ),
                )
            )
            .order_by("table_schema", "table_name", "ordinal_position")
        )
        tables: dict[tuple[str, str], Table] = {}
        for schema, table, column, data_type in self.fetchall(query):
            tables.setdefault((schema, table), Table(schema, table)).columns[column] = portable_type(
                data_type
            )
        return Catalog(tuple(schemas), tables)

    def query_columns(self, query: exp.Query) -> dict[str, str]:
        import psycopg

        probe = empty_result(query)
        with self._cursor(self.render(probe)) as cursor:
            described = cursor.description or []
        found = {}
        for column in described:
            info = psycopg.adapters.types.get(column.type_code)
            found[column.name] = portable_type(info.name if info else "other")
        return found

    @contextmanager
    def transaction(self) -> Iterator[None]:
        import psycopg

        try:
            with self._connection.transaction():
                yield
        except psycopg.Error as err:
            raise self._translate(err, "COMMIT") from err

    def create_temp_table(self, name: str, query: exp.Query) -> None:
        self.execute(exp.Drop(tables=[exp.table_(name)], kind="TABLE", exists=True))
        self.execute(
            exp.Create(
                this=exp.table_(name),
                kind="TABLE",
                expression=query,
                properties=exp.Properties(expressions=[exp.TemporaryProperty()]),
            )
        )
        # Temporary tables are never auto-analyzed; the diff's joins plan badly without statistics.
        self.execute(exp.Analyze(tables=[exp.table_(name)]))

    def close(self) -> None:
        self._pooled.close()
