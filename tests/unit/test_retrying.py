"""Trying a failed call again inside the invocation: with backoff, and only while the next try would start
within the share of the invocation's time the budget was given."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from metering.errors import ServiceMisconfigured, StoreUnavailable
from metering.retrying import RETRY_SHARE, RetryBudget, backoff_delay
from metering_tools.testkit import SimulatedClock, simulated_waits


@pytest.fixture
def clock() -> Iterator[SimulatedClock]:
    with simulated_waits() as simulated:
        yield simulated


def failing(times: int, answer: str = "done") -> tuple[list[int], Callable[[], str]]:
    """A call that raises StoreUnavailable `times` times, then answers; and the list of its tries."""
    tries: list[int] = []

    def call() -> str:
        tries.append(len(tries) + 1)
        if len(tries) <= times:
            raise StoreUnavailable("DynamoDB ThrottlingException")
        return answer

    return tries, call


def test_a_call_that_recovers_is_answered_after_backoff(clock: SimulatedClock) -> None:
    # Given an invocation with 60 s left and a call that fails three times, then succeeds
    budget = RetryBudget.for_invocation(60)
    tries, call = failing(3)
    # When it is made within the budget
    answer = budget.call(call)
    # Then it is answered on the fourth try, after waiting 0.1 + 0.2 + 0.4 s in between
    assert (answer, tries) == ("done", [1, 2, 3, 4])
    assert clock.waited == pytest.approx(backoff_delay(1) + backoff_delay(2) + backoff_delay(3))


def test_a_call_that_keeps_failing_gives_up_before_the_budget_is_spent(clock: SimulatedClock) -> None:
    # Given an invocation with 10 s left and a call that never succeeds
    budget = RetryBudget.for_invocation(10)
    tries, call = failing(1_000)
    # When it is made
    # Then the last failure is raised once the next try would start after the invocation's retry share
    with pytest.raises(StoreUnavailable, match="ThrottlingException"):
        budget.call(call)
    assert clock.waited <= 10 * RETRY_SHARE
    assert clock.waited + backoff_delay(len(tries)) > 10 * RETRY_SHARE - 0.01
    assert len(tries) > 3


def test_a_single_try_budget_raises_the_first_failure(clock: SimulatedClock) -> None:
    # Given a budget that allows no retry
    tries, call = failing(1)
    # When a call fails once
    # Then the failure is the caller's, at once
    with pytest.raises(StoreUnavailable):
        RetryBudget.single_try().call(call)
    assert (tries, clock.waited) == ([1], 0.0)


def test_a_failure_a_retry_cannot_fix_is_never_tried_again(clock: SimulatedClock) -> None:
    # Given a call the service refuses (a deployment fault)
    tries: list[int] = []

    def refused() -> None:
        tries.append(1)
        raise ServiceMisconfigured("dynamodb", "Query", "table", "AccessDeniedException", "denied")

    # When it is made with time to spare
    # Then it surfaces at once
    with pytest.raises(ServiceMisconfigured):
        RetryBudget.for_invocation(60).call(refused)
    assert (tries, clock.waited) == ([1], 0.0)
