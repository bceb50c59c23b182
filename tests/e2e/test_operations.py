"""Operator commands over a table: explain a charge, recount the running counts, show current usage."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from metering.model import PeriodRef
from metering.operations import current_usage, explain, recount

from tests.harness import Metering
from tests.helpers import contact_event, contact_events, contact_ids, subscription_changed

OCTOBER = "2026-10"


def test_explain_lists_each_active_contact_with_the_first_event_that_made_it_active(
    metering: Metering,
) -> None:
    # Given a contact created on the 3rd and messaged on the 9th, and another only messaged on the 5th
    created = contact_event("acc-why", "con-a", "2026-10-03T10:00:00Z", event_id="evt-created")
    messaged = contact_event("acc-why", "con-a", "2026-10-09T10:00:00Z", detail_type="Message Sent")
    other = contact_event(
        "acc-why", "con-b", "2026-10-05T10:00:00Z", detail_type="Message Sent", event_id="evt-b"
    )
    metering.record_events([messaged, created, other])
    # When support asks why the account was billed for its contacts in October
    answer = explain(metering.store, PeriodRef("acc-why", OCTOBER))
    # Then every active contact is listed once, oldest first, with the earliest event that touched it
    assert answer["activeContacts"] == 2
    assert [(c["contactId"], c["firstEventId"], c["firstDetailType"]) for c in answer["contacts"]] == [
        ("con-a", "evt-created", "Contact Created"),
        ("con-b", "evt-b", "Message Sent"),
    ]


def test_recount_finds_every_running_count_equal_to_its_contact_items_and_reports_a_drift(
    metering: Metering,
) -> None:
    # Given two accounts with activity
    metering.record_events(contact_events("acc-r1", contact_ids("con", 12), "2026-10-03T10:00:00Z"))
    metering.record_events(contact_events("acc-r2", contact_ids("con", 5), "2026-10-03T10:00:00Z"))
    # When every period is recounted
    results = recount(metering.store)
    # Then each running count equals its contact items
    assert [(r.ref.account_id, r.running_count, r.contact_items, r.consistent) for r in results] == [
        ("acc-r1", 12, 12, True),
        ("acc-r2", 5, 5, True),
    ]
    # When a contact item disappears behind the count's back
    metering.store.delete_contacts(PeriodRef("acc-r2", OCTOBER), ["con-0001"], attempt=_attempt_of(metering))
    # Then the recount of that period reports the mismatch
    drifted = recount(metering.store, PeriodRef("acc-r2", OCTOBER))
    assert [(r.running_count, r.contact_items, r.consistent) for r in drifted] == [(5, 4, False)]


def _attempt_of(metering: Metering) -> str:
    return next(iter(metering.store.contacts(PeriodRef("acc-r2", OCTOBER)))).attempt


@pytest.mark.parametrize(
    ("plan", "cycle", "expected"),
    [
        (
            "start",
            "monthly",
            {
                "allowance": 50,
                "overusageContacts": 10,
                "projectedOverusageCents": 250,
                "sameContactsAsAddonsCents": 250,
            },
        ),
        (
            "grow",
            "yearly",
            {
                "allowance": 250,
                "overusageContacts": 0,
                "projectedOverusageCents": 0,
                "sameContactsAsAddonsCents": 0,
            },
        ),
    ],
)
def test_current_usage_shows_the_projected_overusage_and_what_add_ons_would_have_cost(
    metering: Metering, plan: str, cycle: str, expected: dict[str, int]
) -> None:
    # Given an account with 60 active contacts in the open period
    metering.record_events(
        [subscription_changed("acc-now", plan, "2026-09-01T00:00:00Z", billing_cycle=cycle)]
    )
    metering.record_events(contact_events("acc-now", contact_ids("con", 60), "2026-10-03T10:00:00Z"))
    # When its current usage is asked for in the middle of the month
    usage = current_usage(metering.store, "acc-now", datetime(2026, 10, 15, tzinfo=UTC), "UTC")
    # Then it shows the count, the allowance, the overusage cost so far and the add-on price of the same
    assert usage["period"] == OCTOBER
    assert usage["activeContacts"] == 60
    assert {key: usage[key] for key in expected} == expected


def test_current_usage_of_a_legacy_account_says_it_is_not_billed(metering: Metering) -> None:
    # Given an account on a legacy plan with activity
    metering.record_events([subscription_changed("acc-old", "legacy", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events("acc-old", contact_ids("con", 3), "2026-10-03T10:00:00Z"))
    # When its current usage is asked for
    usage = current_usage(metering.store, "acc-old", datetime(2026, 10, 15, tzinfo=UTC), "UTC")
    # Then the count is shown and no cost is projected
    assert usage == {
        "accountId": "acc-old",
        "period": OCTOBER,
        "activeContacts": 3,
        "plan": "legacy",
        "billed": False,
    }
