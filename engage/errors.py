"""The errors engage raises, one tree so the CLI can map each family to an exit code.

```
EngageError                    any failure engage reports to a user
├── InputError                 exit 2: the user's files are wrong; nothing ran, nothing was written
│   ├── ConfigError            config/engage.yaml (file, line, field)
│   └── DefinitionError        a definition under the space's definitions folder (file, line, field)
└── RunError                   exit 1: a run started and failed; outputs and state are untouched
    ├── TransientError         worth retrying the run (lock contention, network, throttling)
    ├── WarehouseError         the warehouse refused a statement or could not be reached
    │   └── TransientWarehouseError   a WarehouseError that is also a TransientError
    ├── SpaceBusyError         another run of the space holds its lease
    ├── DataError              the data broke a rule (e.g. an SQL trait returned duplicate identifiers)
    └── ConnectorError         a destination failed to take the run's calls
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class EngageError(Exception):
    """Base of every error engage reports; `str()` is the one line a user reads."""

    exit_code = 1


@dataclass(frozen=True)
class Location:
    """Where in a user's file a problem is: the CLI prints `path:line: field: message`."""

    path: Path
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = str(self.path)
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": {self.field}"
        return where


class InputError(EngageError):
    """The user's config or definitions are invalid. Raised before any SQL runs."""

    exit_code = 2

    def __init__(self, message: str, location: Location | None = None) -> None:
        self.message = message
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class ConfigError(InputError):
    """config/engage.yaml is invalid, or names a space or setting that does not exist."""


class DefinitionError(InputError):
    """A definition is invalid: bad YAML, an unknown field/event/trait/audience, a cycle, a bad SQL trait."""


class InputErrors(InputError):
    """Several input errors found in one pass, reported together so a user fixes them all at once."""

    def __init__(self, errors: list[InputError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def raise_all(errors: list[InputError]) -> None:
    """Raises the errors found, one or several at once; returns when there are none."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InputErrors(errors)


class RunError(EngageError):
    """A run failed after it started. The previous outputs and state are intact."""


class TransientError(RunError):
    """A failure that may pass if the run is tried again (`retry.py` does, within the space's bound)."""


class WarehouseError(RunError):
    """The warehouse refused a statement or could not be reached. A connection failure names the
    setting to fix (`config/engage.yaml:7: warehouse.password: …`), never a secret's value."""

    def __init__(self, message: str, location: Location | None = None) -> None:
        self.message = message
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class TransientWarehouseError(WarehouseError, TransientError):
    """A warehouse failure that may succeed if retried (contention, lost connection)."""


class SpaceBusyError(RunError):
    """Another run holds the space's lease (`lease.py`); this one stopped before computing anything."""


class DataError(RunError):
    """The warehouse data broke a rule of the contract, e.g. an SQL trait's duplicate identifiers."""


class ConnectorError(RunError):
    """A destination could not take the run's calls."""
