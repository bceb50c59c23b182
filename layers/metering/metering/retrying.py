"""Trying a failed call again inside the invocation, before the failure becomes an SQS redelivery.

A call that fails after botocore's own retries (a throttling storm on one partition, a service hiccup) often
succeeds a moment later. Waiting for it inside the invocation is cheaper than a redelivery: a redelivered
record is read, placed and written again, and counts towards its queue's `maxReceiveCount`. The wait is
bounded by a share of the invocation's remaining time, so the work that follows still has time to finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from metering.errors import StoreUnavailable

RETRY_SHARE = 0.5
"""Share of an invocation's remaining time (at its start) in which failed calls may be tried again."""


@dataclass(slots=True)
class Clock:
    """Monotonic time, waiting and the wall clock of claims, one for the process. A replay of a month
    (`metering simulate`) sets a simulated one, so that backoff passes in simulated time, the budget runs out
    as it would on AWS, and what the replay stores does not depend on when it ran."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall: Callable[[], float] = time.time


CLOCK = Clock()


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before try number `attempt` of a request that may succeed later (50 ms doubling,
    capped at 2 s)."""
    return min(0.05 * 2.0**attempt, 2.0)


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Until when (on `CLOCK`) a failed call may be tried again. One per invocation."""

    deadline: float

    @classmethod
    def for_invocation(cls, remaining_seconds: float) -> RetryBudget:
        return cls(CLOCK.now() + remaining_seconds * RETRY_SHARE)

    @classmethod
    def single_try(cls) -> RetryBudget:
        """No retry: the first failure is the caller's."""
        return cls(float("-inf"))

    def call[T](self, operation: Callable[[], T]) -> T:
        """`operation()`, tried again with backoff after each `StoreUnavailable` while the next try would
        start before the deadline; the last failure is raised."""
        attempt = 0
        while True:
            try:
                return operation()
            except StoreUnavailable:
                attempt += 1
                delay = backoff_delay(attempt)
                if CLOCK.now() + delay > self.deadline:
                    raise
                CLOCK.sleep(delay)
