"""Named points of a run where the crash-safety tests kill the process (`ENGAGE_KILL_AT=<point>`).

A run must leave the warehouse so that the next run produces exactly the outputs of an uninterrupted one,
whatever point it died at; the tests prove it by sending SIGKILL at each of these points in turn. Without
the variable (always, outside those tests) `reached` does nothing.
"""

from __future__ import annotations

import os
import signal

ENVIRONMENT = "ENGAGE_KILL_AT"
POINTS = (
    "lease_taken",  # the lease is held; nothing computed
    "computed",  # the changes are computed, in temporary tables only
    "staged",  # the changes are committed to the outbox; no call has left
    "prepared",  # the tables of the in-warehouse destinations exist; the run's transaction has not begun
    "writing",  # inside the transaction: the first engage_<space> table is written, not the others
    "written",  # inside the transaction: every table written; the state has not advanced
    "advanced",  # inside the transaction: the state advanced; not committed
    "committed",  # committed: the state advanced; the destinations outside the warehouse have nothing yet
    "delivering",  # a destination outside the warehouse took its first batch of calls, not the rest
    "delivered",  # a destination outside the warehouse has the run's calls; its cursor has not moved
    "released",  # the lease is released; the process has not exited
)


def reached(point: str) -> None:
    assert point in POINTS, point
    if os.environ.get(ENVIRONMENT) == point:
        os.kill(os.getpid(), signal.SIGKILL)
