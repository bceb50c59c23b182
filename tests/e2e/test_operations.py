"""Operator commands over a table: explain a charge, list a period's invoices, show current usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from metering.model import PeriodRef
from metering_tools.operations import current_usage, explain, invoices

from tests.harness import Metering
from tests.helpers import contact_event, contact_events, contact_ids, status_renamed, subscription_changed

OCTOBER = "2026-10"
GRACE = timedelta(hours=6)


def test_explain_lists_each_active_contact_with_the_first_event_that_made_it_active(
    metering: Metering,
) -> None:
    # Given a contact created on the 3rd and messaged on the 9th, and another only messaged on the 5th
    created = contact_event("acc-why", "con-a", "2026-10-03T10:00:00Z", event_id="evt-created")
    messaged = contact_event("acc-why", "con-a", "2026-10-09T10:00:00Z", detail_type="Message Sent")
    other = contact_event(
        "acc-why", "con-b", "2026-10-05T10:00:00Z", detail_type="Message Sent", event_id="evt-b"
    )
    # delivered as two batches, the creation first
    metering.record_events([created])
    metering.record_events([messaged, other])
    # When support asks why the account was billed for its contacts in October, before and after the close
    before = explain(metering.store, PeriodRef("acc-why", OCTOBER), "UTC", GRACE)
    metering.close("2026-11-01T06:00:00Z")
    after = explain(metering.store, PeriodRef("acc-why", OCTOBER), "UTC", GRACE)
    # Then every active contact is listed once, oldest first, with the first event delivered that touched it
    assert before["activeContacts"] == 2
    assert [(c["contactId"], c["firstEventId"], c["firstDetailType"]) for c in before["contacts"]] == [
        ("con-a", "evt-created", "Contact Created"),
        ("con-b", "evt-b", "Message Sent"),
    ]
    # And it says whether the period is closed and what was invoiced (nothing: no subscription)
    assert (before["closed"], after["closed"], after["invoice"]) == (False, True, None)


def test_invoices_lists_the_invoices_of_a_period_with_their_amounts(metering: Metering) -> None:
    # Given three accounts over, within and without an allowance, and a legacy one, closed for October
    for account, plan, active in (("acc-i1", "start", 60), ("acc-i2", "grow", 251), ("acc-i3", "start", 50)):
        metering.record_events([subscription_changed(account, plan, "2026-09-01T00:00:00Z")])
        metering.record_events(
            [status_renamed(account, "2026-10-10T09:00:00Z", contact_ids=contact_ids("con", active))]
        )
    metering.close("2026-11-01T06:00:00Z")
    # When the operator lists October's invoices
    listed = list(invoices(metering.store, OCTOBER))
    # Then the two accounts over their allowance are listed, by account, with their amounts
    assert [(row["accountId"], row["overusageContacts"], row["amountCents"]) for row in listed] == [
        ("acc-i1", 10, 250),
        ("acc-i2", 1, 25),
    ]
    assert list(invoices(metering.store, "2026-09")) == []


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
