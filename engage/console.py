"""Where progress goes: a live display on a terminal, plain log lines elsewhere, nothing in tests or --json.

Only the CLI and `sync.py` talk to a Console; nothing else prints.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console as RichTerminal

log = logging.getLogger("engage")


class Console:
    """Reports the stages of a run as they start and finish."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield


class NoopConsole(Console):
    """Says nothing (tests, library use, `--json`)."""


class LogConsole(Console):
    """One log line per finished stage, for logs and pipes."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        log.info("%s: done in %.2fs", name, time.monotonic() - started)


class RichConsole(Console):
    """A spinner per running stage and a check mark with its duration when done, on stderr."""

    def __init__(self) -> None:
        self.terminal = RichTerminal(stderr=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        with self.terminal.status(f"{name}…"):
            yield
        self.terminal.print(f"[green]✓[/green] {name} [dim]{time.monotonic() - started:.2f}s[/dim]")


class TimedConsole(Console):
    """Passes a run's stages on to another console and keeps how long each took, for the run log."""

    def __init__(self, inner: Console) -> None:
        self.inner = inner
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        with self.inner.stage(name):
            yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - started, 3)


def console_for(json_output: bool) -> Console:
    if json_output:
        return NoopConsole()
    return RichConsole() if sys.stderr.isatty() else LogConsole()
