"""Where progress goes: a live display on a terminal, plain log lines elsewhere, nothing in tests or --json.

Only the CLI and `sync.py` talk to a Console; nothing else prints.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console as RichTerminal
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("engage")


class Console:
    """Reports the stages of a run as they start and finish."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield

    @contextmanager
    def progress(self, name: str, total: Callable[[], int]) -> Iterator[Callable[[int], None]]:
        """A long piece of work of `total()` steps (counted only by a console that shows them); the caller
        reports the steps it finished."""
        yield lambda steps: None


class NoopConsole(Console):
    """Says nothing (tests, library use, `--json`)."""


class LogConsole(Console):
    """One log line per finished stage, for logs and pipes."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        log.info("%s: done in %.2fs", name, time.monotonic() - started)

    @contextmanager
    def progress(self, name: str, total: Callable[[], int]) -> Iterator[Callable[[int], None]]:
        """A log line every 10% (and at the end), when there is much to do."""
        steps_in_all = total()
        done, step, started = 0, max(steps_in_all // 10, 1), time.monotonic()
        logged = 0

        def advance(steps: int) -> None:
            nonlocal done, logged
            done += steps
            if steps_in_all >= 10_000 and done // step > logged:
                logged = done // step
                log.info("%s: %s of %s", name, done, steps_in_all)

        yield advance
        if steps_in_all:
            log.info("%s: %s in %.2fs", name, done, time.monotonic() - started)


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

    @contextmanager
    def progress(self, name: str, total: Callable[[], int]) -> Iterator[Callable[[int], None]]:
        """A progress bar with rate and time left, on stderr."""
        columns = (
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TimeRemainingColumn(),
        )  # fmt: skip
        with Progress(*columns, console=self.terminal, transient=False) as bar:
            task = bar.add_task(name, total=total())
            yield lambda steps: bar.advance(task, steps)


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

    @contextmanager
    def progress(self, name: str, total: Callable[[], int]) -> Iterator[Callable[[int], None]]:
        with self.inner.progress(name, total) as advance:
            yield advance


def console_for(json_output: bool) -> Console:
    if json_output:
        return NoopConsole()
    return RichConsole() if sys.stderr.isatty() else LogConsole()
