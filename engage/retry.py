"""Retrying a run that failed on a transient error, within the space's bound (`retry:` in its config).

The whole run is tried again, never a single statement: a statement that failed inside a transaction has
aborted it, and a retried run is safe by construction (the state did not advance, so it computes the same
changes with the same generation and message ids, and writes skip ids already written).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from engage.config import RetryConfig
from engage.errors import TransientError

log = logging.getLogger("engage.retry")
T = TypeVar("T")


def with_retries(
    attempt: Callable[[], T],
    policy: RetryConfig,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`attempt()`, tried up to `policy.attempts` times while it raises a `TransientError`; waits double
    from `initial_delay` up to `max_delay`, each plus up to `initial_delay` of jitter. The last error is
    raised as it is."""

    def announce(state: RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None
        log.warning(
            "%s: attempt %d of %d failed: %s; retrying in %.1fs",
            what, state.attempt_number, policy.attempts, state.outcome.exception(), state.next_action.sleep,
        )  # fmt: skip

    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential_jitter(
            multiplier=policy.initial_delay, max=policy.max_delay, jitter=policy.initial_delay
        ),
        retry=retry_if_exception_type(TransientError),
        before_sleep=announce,
        sleep=sleep,
        reraise=True,
    )
    return retrying(attempt)
