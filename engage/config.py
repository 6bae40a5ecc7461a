"""`config/engage.yaml`: spaces, their warehouse, sources, definitions, schedule and destinations.

Secrets come from the environment: any string value may contain `${VAR}`, replaced before validation.
A missing variable is a `ConfigError` naming the setting, never the value.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from engage import secrets
from engage.errors import ConfigError, Location, raise_all
from engage.naming import snakecase
from engage.yamlfile import YamlDocument, read_documents, validation_errors

CONFIG_PATH = Path("config") / "engage.yaml"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_INTERVAL = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_IDENTIFIER_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")
_INTERVAL_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DuckDBWarehouseConfig(_Model):
    """The embedded default: a DuckDB database file, relative to the project root."""

    type: Literal["duckdb"]
    path: str = ".engage/warehouse.duckdb"
    threads: int | None = Field(default=None, gt=0)
    memory_limit: str | None = None


class PostgresWarehouseConfig(_Model):
    """PostgreSQL, or Redshift (which speaks its protocol), through SQLAlchemy and psycopg
    (`pip install 'engage[postgres]'`). Put the password in `${AN_ENV_VAR}`."""

    type: Literal["postgres", "redshift"]
    host: str
    port: int | None = Field(default=None, gt=0, lt=65536)  # 5432; Redshift 5439
    database: str
    user: str
    password: SecretStr | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    connect_timeout: int = Field(default=10, gt=0)  # seconds

    @property
    def resolved_port(self) -> int:
        return self.port or (5439 if self.type == "redshift" else 5432)


class SnowflakeWarehouseConfig(_Model):
    """Snowflake through snowflake-connector-python (`pip install 'engage[snowflake]'`). `host`, `port` and
    `protocol` reach a private endpoint (or a test server) instead of `<account>.snowflakecomputing.com`."""

    type: Literal["snowflake"]
    account: str
    user: str
    password: SecretStr | None = None
    database: str
    warehouse: str | None = None
    role: str | None = None
    # The session's schema, which holds the run's temporary tables (Snowflake puts them in one).
    schema_: str = Field(default="PUBLIC", alias="schema")
    host: str | None = None
    port: int | None = Field(default=None, gt=0, lt=65536)
    protocol: Literal["https", "http"] = "https"
    login_timeout: int = Field(default=30, gt=0)  # seconds
    network_timeout: int = Field(default=600, gt=0)  # seconds a request (and its retries) may take


class BigQueryWarehouseConfig(_Model):
    """BigQuery through google-cloud-bigquery (`pip install 'engage[bigquery]'`). Sources are datasets of
    `project`. Credentials: application default, a service-account key file, or none (`auth: none`, for
    an endpoint that needs none, such as a local emulator)."""

    type: Literal["bigquery"]
    project: str
    location: str | None = None
    auth: Literal["default", "none"] = "default"
    credentials_file: str | None = None
    endpoint: str | None = None  # the API endpoint, when not bigquery.googleapis.com
    scratch_dataset: str = "engage_scratch"  # where a run's intermediate tables live while it runs
    timeout: int = Field(default=600, gt=0)  # seconds a job (with its retries) may take


class SparkWarehouseConfig(_Model):
    """Spark SQL (the Databricks dialect) through a PySpark session (`pip install 'engage[spark]'`):
    `master` is `local[N]` or a cluster's URL. Tables are parquet. Sources and outputs are databases of the
    session's catalog, which must outlive the process: the cluster's metastore, or for a local master a
    Derby `metastore` directory (relative paths are from the project root)."""

    type: Literal["spark"]
    master: str = "local[2]"
    warehouse_dir: str | None = None  # where managed tables' files live (spark.sql.warehouse.dir)
    metastore: str | None = None  # a Derby metastore directory (for a local master)
    scratch_schema: str = "engage_scratch"  # where a run's intermediate tables live while it runs
    conf: dict[str, str] = Field(default_factory=dict)  # further Spark settings, passed as they are


WarehouseConfig = Annotated[
    DuckDBWarehouseConfig
    | PostgresWarehouseConfig
    | SnowflakeWarehouseConfig
    | BigQueryWarehouseConfig
    | SparkWarehouseConfig,
    Field(discriminator="type"),
]


class NoIdentity(_Model):
    """`none`: a profile is the row's user_id, else its anonymous_id (SPEC §1)."""

    type: Literal["none"] = "none"


class ProfilesSyncIdentity(_Model):
    """Segment's Profiles Sync (SPEC §6): `schema` holds what Segment lands; engage materializes
    `id_graph`, `external_id_mapping` and `profile_traits` in `output_schema` (default: `schema`)."""

    type: Literal["profiles_sync"]
    schema_: str = Field(alias="schema")
    output_schema: str | None = None

    @property
    def resolved_output_schema(self) -> str:
        return self.output_schema or self.schema_


class StitchIdentity(_Model):
    """engage's own identity graph over the space's sources (SPEC §6): profiles from the identifiers seen
    together on rows, `identifiers` in priority order; outputs in `output_schema` (default
    `identity_<space>`)."""

    type: Literal["stitch"]
    identifiers: list[str] = Field(default=["user_id", "email", "anonymous_id"], min_length=1)
    output_schema: str | None = None

    @field_validator("identifiers")
    @classmethod
    def _valid_identifiers(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("an identifier is listed twice")
        if "user_id" not in value:
            raise ValueError("the identifiers must include user_id (a profile is at most one user)")
        for name in value:
            if not _IDENTIFIER_COLUMN.match(name):
                raise ValueError(f"not a column name: {name!r}")
        return value


IdentityConfig = Annotated[NoIdentity | ProfilesSyncIdentity | StitchIdentity, Field(discriminator="type")]


class RetryConfig(_Model):
    """How a run that failed on a transient error (lock contention, a lost connection) is tried again: the
    whole run, after a wait that doubles from `initial_delay` up to `max_delay`, plus random jitter."""

    attempts: int = Field(default=3, ge=1)  # tries in all; 1 never retries
    initial_delay: float = Field(default=2.0, gt=0)  # seconds before the first retry
    max_delay: float = Field(default=60.0, gt=0)  # the longest wait between two tries


class IntervalSchedule(_Model):
    every: str

    @field_validator("every")
    @classmethod
    def _positive_interval(cls, value: str) -> str:
        match = _INTERVAL.match(value)
        if not match:
            raise ValueError("an interval is a number and a unit: 30s, 15m, 1h, 1d or 1w")
        if int(match.group(1)) <= 0:
            raise ValueError("the interval must be positive")
        return value

    @property
    def interval(self) -> timedelta:
        match = _INTERVAL.match(self.every)
        assert match is not None
        return timedelta(**{_INTERVAL_UNITS[match.group(2)]: int(match.group(1))})


class EventNames(_Model):
    """Track event names a destination receives (SPEC §4)."""

    audience_entered: str = "Audience Entered"
    audience_exited: str = "Audience Exited"
    trait_computed: str = "Trait Computed"


class Selection(_Model):
    """Names a destination takes: none listed in `include` means all of them; `exclude` always wins."""

    include: list[str] = []
    exclude: list[str] = []


class SelectiveSync(_Model):
    """Per-destination selective sync (SPEC §5): definitions by key or glob (`churn_*`), and tables
    (`identifies`, `users`, `tracks`, or a per-event table such as `audience_exited`)."""

    definitions: Selection = Selection()
    tables: Selection = Selection()

    def takes_definition(self, key: str) -> bool:
        def listed(patterns: list[str]) -> bool:
            return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)

        include, exclude = self.definitions.include, self.definitions.exclude
        return not listed(exclude) and (not include or listed(include))


class DestinationConfig(BaseModel):
    """One destination: `type` picks the connector; extra keys are the connector's own options."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    type: str
    schema_: str | None = Field(default=None, alias="schema")
    send: list[Literal["identify", "track"]] = ["identify", "track"]
    events: EventNames = EventNames()
    selective_sync: SelectiveSync = SelectiveSync()
    rate_limit: float | None = Field(default=None, gt=0, description="calls per second, at most")

    @field_validator("selective_sync")
    @classmethod
    def _known_tables(cls, value: SelectiveSync, info: ValidationInfo) -> SelectiveSync:
        events = info.data.get("events", EventNames())
        names = (events.audience_entered, events.audience_exited, events.trait_computed)
        known = {"identifies", "users", "tracks", *(snakecase(e) for e in names)}
        for table in (*value.tables.include, *value.tables.exclude):
            if table not in known:
                raise ValueError(f"unknown table '{table}' (known: {', '.join(sorted(known))})")
        return value

    @property
    def options(self) -> dict[str, Any]:
        """Connector-specific settings: every key this model does not define itself."""
        return dict(self.model_extra or {})

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """A connector's own secret settings (`write_key`, `apikey`, …) are plain extra keys here."""
        for name, value in super().__repr_args__():
            hidden = name is not None and secrets.is_secret_setting(name)
            yield name, secrets.REDACTED if hidden else value


def _schedule_kind(value: Any) -> str:
    return "cron" if isinstance(value, str) else "interval"


# A cron expression, or {every: 15m}; the tag keeps pydantic from reporting both shapes' errors.
Schedule = Annotated[
    Annotated[str, Tag("cron")] | Annotated[IntervalSchedule, Tag("interval")], Discriminator(_schedule_kind)
]


class SpaceConfig(_Model):
    warehouse: WarehouseConfig
    sources: list[str] = Field(min_length=1)
    identity: IdentityConfig = NoIdentity()
    definitions: str = "audiences"
    schedule: Schedule | None = None
    retry: RetryConfig = RetryConfig()
    # Seconds a run's lease on the space lasts: after a crash on another machine, the space is free again
    # after this long (a holder that died on this machine frees it at once). Longer than the longest run.
    lease_ttl: int = Field(default=6 * 3600, gt=0)
    destinations: dict[str, DestinationConfig] = {}

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: Schedule | None) -> Schedule | None:
        if isinstance(value, str):
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(value)
            except ValueError as err:
                raise ValueError(f"invalid cron expression: {err}") from err
        return value

    @field_validator("sources")
    @classmethod
    def _distinct_sources(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a source is listed twice")
        return value


class ProjectConfig(_Model):
    spaces: dict[str, SpaceConfig] = Field(min_length=1)


class Project:
    """A loaded project: its root folder and validated config. Relative paths resolve against the root."""

    def __init__(self, root: Path, config: ProjectConfig, document: YamlDocument) -> None:
        self.root = root
        self.config = config
        self._document = document

    def space(self, name: str) -> Space:
        if name not in self.config.spaces:
            known = ", ".join(sorted(self.config.spaces))
            raise ConfigError(
                f"unknown space '{name}' (the config defines: {known})",
                Location(self._document.path, self._document.start_line, "spaces"),
            )
        return Space(name, self.config.spaces[name], self)

    @property
    def config_path(self) -> Path:
        return self._document.path

    def locate(self, *loc: str | int) -> Location:
        """Where a config key sits in config/engage.yaml, for errors found after validation."""
        return self._document.locate(loc)


class Space:
    """One space of a project: where its definitions live and what its outputs are called."""

    def __init__(self, name: str, config: SpaceConfig, project: Project) -> None:
        self.name = name
        self.config = config
        self.project = project

    @property
    def slug(self) -> str:
        return snakecase(self.name)

    @property
    def output_schema(self) -> str:
        """`engage_` + the snake_case of the space name (SPEC §5). State lives here too."""
        return f"engage_{self.slug}"

    @property
    def identity_schema(self) -> str | None:
        """Where the space's identity tables live (`id_graph`, `external_id_mapping`), if it resolves
        identity."""
        identity = self.config.identity
        if isinstance(identity, ProfilesSyncIdentity):
            return identity.resolved_output_schema
        if isinstance(identity, StitchIdentity):
            return identity.output_schema or f"identity_{self.slug}"
        return None

    @property
    def definitions_dir(self) -> Path:
        return self.project.root / self.config.definitions

    def resolve(self, path: str) -> Path:
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.project.root / candidate

    def locate(self, *loc: str | int) -> Location:
        return self.project.locate("spaces", self.name, *loc)


def _interpolate(value: Any, document: YamlDocument, loc: tuple[str | int, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, document, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, document, (*loc, i)) for i, v in enumerate(value)]
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"environment variable {name} is not set", document.locate(loc))
            if any(isinstance(part, str) and secrets.is_secret_setting(part) for part in loc[-1:]):
                secrets.register(os.environ[name])
            return os.environ[name]

        return _ENV_REFERENCE.sub(substitute, value)
    return value


def find_project_root(start: Path) -> Path:
    """`start` itself when it holds config/engage.yaml, else the nearest parent that does."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / CONFIG_PATH).is_file():
            return folder
    raise ConfigError(f"no {CONFIG_PATH} in {start} or its parents (use --project DIR)")


def load_project(root: Path) -> Project:
    """Reads and validates `<root>/config/engage.yaml`."""
    path = root / CONFIG_PATH
    if not path.is_file():
        raise ConfigError(f"no {CONFIG_PATH} in {root} (use --project DIR)")
    documents = list(read_documents(path, display=CONFIG_PATH))
    if len(documents) != 1:
        raise ConfigError("the config file must hold exactly one YAML document", Location(CONFIG_PATH, 1))
    document = documents[0]
    data = _interpolate(document.data, document, ())
    try:
        config = ProjectConfig.model_validate(data)
    except ValidationError as err:
        raise_all(validation_errors(document, err, ConfigError))
    return Project(root, config, document)
