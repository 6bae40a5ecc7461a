"""`engage scheduler`: one long-lived process that runs each space on its `schedule` (APScheduler 3).

- A space never overlaps itself (`max_instances=1`), and runs missed while it was busy or the process was
  paused collapse into one (`coalesce`).
- SIGHUP (or `--watch`, which polls the config and definition files) reloads the config; a config that no
  longer loads is reported and the running schedule kept.
- SIGTERM or SIGINT stops it: a run in progress gets `grace` seconds to finish, else it is abandoned. That is
  safe by construction: outputs and state commit together at the end of a run, so an abandoned run has
  written nothing the next one does not redo with the same message ids.
- Every run logs one line of `key=value` pairs (or a JSON object): space, run id, status, duration, counts,
  error, and when its results next change with no new data: the space also runs then, when that is
  before its next scheduled run (a member of a `within: 30d` audience leaves on time).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from engage.config import Project, load_project
from engage.errors import ConfigError, EngageError
from engage.sync import run_space

log = logging.getLogger("engage.scheduler")


def trigger_for(project: Project, space: str) -> BaseTrigger | None:
    """The space's schedule as an APScheduler trigger (UTC), or None when it has none."""
    schedule = project.space(space).config.schedule
    if schedule is None:
        return None
    if isinstance(schedule, str):
        return CronTrigger.from_crontab(schedule, timezone=UTC)
    return IntervalTrigger(seconds=schedule.interval.total_seconds(), timezone=UTC)


class RunLog:
    """One line per run, as `key=value` pairs or a JSON object."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def write(self, level: int, fields: dict[str, Any]) -> None:
        if self.as_json:
            log.log(level, "%s", json.dumps(fields, default=str))
            return
        pairs = " ".join(
            f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}" for k, v in fields.items()
        )
        log.log(level, "run %s", pairs)


class Scheduler:
    """Schedules the spaces of a project (all of them that have a `schedule`, or `spaces`)."""

    def __init__(
        self,
        root: Path,
        spaces: Sequence[str] = (),
        *,
        grace: float = 4.0,
        run_log: RunLog | None = None,
        watch: float | None = None,
    ) -> None:
        self.root = root
        self.only = tuple(spaces)
        self.grace = grace
        self.run_log = run_log or RunLog(as_json=False)
        self.watch = watch
        self.failures = 0
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=4)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._active = 0  # runs in progress
        self._active_lock = threading.Lock()
        self._running_spaces: set[str] = set()  # a space's schedule and its wake-up must not overlap
        self._watched: dict[Path, float] = {}
        self.project = self._load()

    # -- config ---------------------------------------------------------------------------------------
    def _load(self) -> Project:
        """Loads the config and checks that every space to schedule exists and has a schedule."""
        project = load_project(self.root)
        for name in self.only:
            project.space(name)  # an unknown space is a ConfigError at `spaces`
            if project.space(name).config.schedule is None:
                raise ConfigError(f"space '{name}' has no schedule", project.locate("spaces", name))
        if not self._spaces(project):
            raise ConfigError(
                "no space has a schedule (add `schedule:` to a space)", project.locate("spaces")
            )
        return project

    def _spaces(self, project: Project) -> list[str]:
        names = self.only or tuple(project.config.spaces)
        return [n for n in names if project.space(n).config.schedule is not None]

    def _files(self) -> dict[Path, float]:
        """The modification times of the config and of every definition file it uses."""
        files = [self.root / "config" / "engage.yaml"]
        for name in self.project.config.spaces:
            folder = self.project.space(name).definitions_dir
            files += sorted(folder.rglob("*.y*ml")) if folder.is_dir() else []
        return {f: f.stat().st_mtime for f in files if f.exists()}

    def _schedule(self) -> None:
        self._scheduler.remove_all_jobs()
        now = datetime.now(UTC)
        for name in self._spaces(self.project):
            trigger = trigger_for(self.project, name)
            assert trigger is not None
            # An interval schedule runs at once on start (a restarted daemon catches up); cron waits.
            first = now if isinstance(trigger, IntervalTrigger) else trigger.get_next_fire_time(None, now)
            self._scheduler.add_job(self._run, trigger, args=[name], id=name, name=name, next_run_time=first)
            log.info("scheduled space %s: %s", name, self.project.space(name).config.schedule)
        self._watched = self._files()

    def reload(self) -> None:
        """Re-reads the config; a config that does not load is reported and the schedule kept."""
        try:
            self.project = self._load()
        except EngageError as err:
            log.error("reload failed, keeping the current schedule: %s", err)
            return
        self._schedule()
        log.info("reloaded %s", self.root / "config" / "engage.yaml")

    # -- runs -----------------------------------------------------------------------------------------
    def _run(self, space: str) -> None:
        with self._active_lock:
            if self._stop.is_set() or space in self._running_spaces:
                return
            self._running_spaces.add(space)
            self._active += 1
        try:
            self._run_logged(space)
        finally:
            with self._active_lock:
                self._running_spaces.discard(space)
                self._active -= 1

    def _wake_at(self, space: str, next_change: str | None) -> None:
        """Runs the space again when its results next change with no new data (a member of a windowed
        audience ages out), when that is before its next scheduled run."""
        if next_change is None or not self._scheduler.running:
            return
        moment = datetime.fromisoformat(next_change).replace(tzinfo=UTC)
        if moment.microsecond:  # a run's as-of is whole seconds: wake when it is past the change
            moment = moment.replace(microsecond=0) + timedelta(seconds=1)
        job = self._scheduler.get_job(space)
        if moment <= datetime.now(UTC) or (job and job.next_run_time and job.next_run_time <= moment):
            return
        self._scheduler.add_job(
            self._run, DateTrigger(moment), args=[space], id=f"{space}@next_change", replace_existing=True
        )
        log.info("space %s: woken at %s, when its results next change", space, moment.isoformat())

    def _run_logged(self, space: str) -> None:
        started = time.monotonic()
        try:
            summary = run_space(load_project(self.root), space)
        except EngageError as err:
            self.failures += 1
            fields = {"space": space, "status": "failed", "seconds": round(time.monotonic() - started, 3)}
            self.run_log.write(logging.ERROR, {**fields, "error": str(err).splitlines()[0]})
            return
        except Exception as err:  # a bug must not stop the daemon: report it, keep scheduling
            self.failures += 1
            log.exception("space %s: unexpected error", space)
            self.run_log.write(logging.ERROR, {"space": space, "status": "failed", "error": repr(err)})
            return
        status = "unchanged" if summary.unchanged_since else "succeeded"
        self.run_log.write(
            logging.INFO,
            {
                "space": space, "run_id": summary.run_id, "status": status,
                "as_of": summary.as_of.isoformat(), "seconds": summary.seconds,
                "entered": summary.entered, "exited": summary.exited, "changed": summary.changed,
                "next_change": summary.next_change,
            },
        )  # fmt: skip
        self._wake_at(space, summary.next_change)

    def run_once(self) -> int:
        """Every scheduled space once, in order: how many failed."""
        for name in self._spaces(self.project):
            self._run(name)
        return self.failures

    # -- the daemon -----------------------------------------------------------------------------------
    def serve(self, install_signals: bool = True) -> None:
        """Runs until SIGTERM/SIGINT (or `stop`); returns once running jobs finished or `grace` passed."""
        if install_signals:
            self._install_signals()
        self._schedule()
        self._scheduler.start()
        log.info("scheduler started: %s", ", ".join(self._spaces(self.project)))
        while not self._stop.is_set():
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if self.watch is not None and self._files() != self._watched:
                self.reload()
            self._stop.wait(self.watch or 0.5)
        self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    def _shutdown(self) -> None:
        self._scheduler.pause()
        deadline = time.monotonic() + self.grace
        while self._running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._running():
            log.warning("stopping with a run in progress: it is abandoned, its changes were not committed")
            logging.shutdown()
            os._exit(0)  # worker threads cannot be interrupted; the process ends, the warehouse rolls back
        self._scheduler.shutdown(wait=False)
        log.info("scheduler stopped")

    def _running(self) -> bool:
        with self._active_lock:
            return self._active > 0

    def _install_signals(self) -> None:
        def stop(signum: int, _: FrameType | None) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            self._stop.set()

        def reload(signum: int, _: FrameType | None) -> None:
            self._reload.set()

        handlers: dict[int, Callable[[int, FrameType | None], None]] = {
            signal.SIGTERM: stop,
            signal.SIGINT: stop,
            signal.SIGHUP: reload,
        }
        for number, handler in handlers.items():
            signal.signal(number, handler)
