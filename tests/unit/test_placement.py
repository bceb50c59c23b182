"""Placement without a history, and the least count at which an alert may be due: together they decide which
batches read an account's subscription history, so an event is placed the same whether or not it is read."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from metering.alert_rules import SMALLEST_ALLOWANCE, lowest_need
from metering.events import ContactEvent
from metering.message_parsing import InboundRecord, parse_record
from metering.model import PeriodRef, PeriodSeal
from metering.placement import UNREAD, ActivityEvent, Disposition, needs_history, place_batch
from metering.rules import History, Subscription, threshold_contacts

from tests.helpers import contact_event, subscription, utc

GRACE = timedelta(hours=2)
THRESHOLDS = (80, 100)


def activity(occurred_at: str, *, contact_id: str = "con-0001") -> ActivityEvent:
    event = parse_record(
        InboundRecord("message-1", json.dumps(contact_event("acc-1", contact_id, occurred_at)))
    )
    assert isinstance(event, ContactEvent)
    return ActivityEvent(0, "message-1", event, (contact_id,))


def berlin_grow() -> Subscription:
    return subscription("grow", timezone="Europe/Berlin")


@pytest.mark.parametrize(
    ("occurred_at", "needed"),
    [
        pytest.param("2026-10-15T12:00:00Z", False, id="mid-month"),
        pytest.param("2026-10-31T20:00:00Z", True, id="near-the-end-of-the-utc-month"),
        pytest.param("2026-10-01T03:00:00Z", True, id="near-the-start-of-the-utc-month"),
    ],
)
def test_only_an_event_near_a_month_edge_needs_its_history_to_be_placed(
    occurred_at: str, needed: bool
) -> None:
    # Given a contact event no container has seen, in a month nobody has started to close
    entry = activity(occurred_at)
    # When placement asks whether it needs the account's history
    # Then only an event that some zone could put in another month does
    assert needs_history(entry, {}, GRACE) is needed


def test_an_event_of_a_period_the_close_job_has_started_on_needs_its_history() -> None:
    # Given a period whose close has sealed its first accounts
    seal = PeriodSeal("2026-10", closed_through=utc("2026-11-01T02:00:00Z"))
    # When a mid-month event of it arrives
    # Then it needs the history: its own account may be sealed
    assert needs_history(activity("2026-10-15T12:00:00Z"), {"2026-10": seal}, GRACE)


def test_an_event_placed_without_history_is_open_in_its_utc_month_with_its_subscription_unread() -> None:
    # Given a mid-month event of an account whose history was not read
    entry = activity("2026-10-15T12:00:00Z")
    # When the batch is placed
    plan = place_batch([entry], {}, {}, GRACE)
    # Then it is open in the October of every zone, with its subscription to be read if an alert may be due
    [placed] = plan.placed
    assert (placed.placement.ref, placed.placement.disposition) == (
        PeriodRef("acc-1", "2026-10"),
        Disposition.OPEN,
    )
    assert placed.placement.subscription is UNREAD


def test_placement_with_history_agrees_with_placement_without_it_far_from_every_edge() -> None:
    # Given a mid-month event and the history of its account, in Berlin
    entry = activity("2026-10-15T12:00:00Z")
    history = History.of([berlin_grow()], "UTC")
    # When it is placed with and without the history
    with_history = place_batch([entry], {"acc-1": history}, {}, GRACE).placed[0].placement
    without = place_batch([entry], {}, {}, GRACE).placed[0].placement
    # Then both put it in the same open period
    assert (with_history.ref, with_history.disposition) == (without.ref, without.disposition)
    assert with_history.subscription == berlin_grow()


def test_an_unread_subscription_may_be_due_at_the_smallest_billed_allowance() -> None:
    # Given new contacts whose subscription is not read yet
    # When the least count at which an alert may be due is asked for
    need = lowest_need(THRESHOLDS, frozenset(), [UNREAD])
    # Then it is the first threshold of the smallest billed plan (start: 80 % of 50)
    assert SMALLEST_ALLOWANCE == 50
    assert need == threshold_contacts(SMALLEST_ALLOWANCE, 80) == 40


def test_no_alert_is_due_once_every_threshold_is_claimed_or_nothing_is_billed() -> None:
    # Given a period whose thresholds are all claimed, and one whose only subscription is unbilled
    legacy = subscription("legacy", event_id="sub-2")
    # When the least count at which an alert may be due is asked for
    # Then there is none
    assert lowest_need(THRESHOLDS, frozenset(THRESHOLDS), [UNREAD, berlin_grow()]) is None
    assert lowest_need(THRESHOLDS, frozenset(), [legacy, None]) is None
    # And with 80 % claimed, a grow subscription is next due at its allowance
    assert lowest_need(THRESHOLDS, frozenset({80}), [berlin_grow()]) == 250


def test_an_event_of_a_period_that_is_only_open_needs_no_history() -> None:
    # Given a period the close job knows has activity, and has not sealed for anyone
    seal = PeriodSeal("2026-10")
    # When a mid-month event of it arrives
    # Then its history is not needed to place it
    assert not needs_history(activity("2026-10-15T12:00:00Z"), {"2026-10": seal}, GRACE)
