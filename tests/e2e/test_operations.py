"""Operator commands over a table: explain a charge, list a period's invoices, show current usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from metering.model import PeriodRef
from metering.usage_view import PeriodNotOpenYet, ReadSettings
from metering_tools.operations import explain, invoices, usage

from tests.harness import Metering
from tests.helpers import contact_event, contact_events, contact_ids, status_renamed, subscription_changed

OCTOBER = "2026-10"
GRACE = timedelta(hours=6)
SETTINGS = ReadSettings("UTC", GRACE, {})
MID_OCTOBER = datetime(2026, 10, 15, tzinfo=UTC)
AFTER_THE_CLOSE = datetime(2026, 11, 2, tzinfo=UTC)


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
    before = explain(metering.store, PeriodRef("acc-why", OCTOBER), MID_OCTOBER, SETTINGS)
    metering.close("2026-11-01T06:00:00Z")
    after = explain(metering.store, PeriodRef("acc-why", OCTOBER), AFTER_THE_CLOSE, SETTINGS)
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


def test_usage_of_the_open_period_projects_it_and_names_the_cheapest_way_out(metering: Metering) -> None:
    # Given an account on start (50, add-ons at 25 cents monthly) with 60 active contacts on 15 October
    metering.record_events([subscription_changed("acc-now", "start", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events("acc-now", contact_ids("con", 60), "2026-10-03T10:00:00Z"))
    # When its usage is asked for, with plan prices configured
    prices = ReadSettings("UTC", GRACE, {"start": 2900, "grow": 4900, "expand": 7900, "scale": 19900})
    view = usage(metering.store, "acc-now", None, MID_OCTOBER, prices)
    # Then it shows the open period in the account's zone, the count, the overusage so far
    assert (view["period"], view["timezone"], view["closed"]) == (OCTOBER, "UTC", False)
    assert (view["periodStart"], view["periodEnd"], view["closesAt"]) == (
        "2026-10-01T00:00:00Z",
        "2026-11-01T00:00:00Z",
        "2026-11-01T06:00:00Z",
    )
    assert view["subscription"] == {
        "plan": "start",
        "billingCycle": "monthly",
        "includedContacts": 50,
        "addonContacts": 0,
    }
    assert (view["billed"], view["allowance"], view["activeContacts"]) == (True, 50, 60)
    assert view["overusage"] == {"contacts": 10, "amountCents": 250}
    # And the projection to the month's end: 60 in 14 of 31 days, a straight line, 133 contacts
    assert view["projection"] == {
        "activeContacts": 133,
        "overusageContacts": 83,
        "amountCents": 2075,
        "method": "linear",
    }
    # And the advice: growing to grow (2,000 cents more, no overusage left) beats add-ons and overusage
    advice = view["advice"]
    assert (advice["cheapest"], advice["savesCents"]) == ("upgrade", 75)
    assert [(o["option"], o["plan"], o["costCents"]) for o in advice["options"]] == [
        ("upgrade", "grow", 2000),
        ("overusage", None, 2075),
        ("addons", None, 2075),
        ("upgrade", "expand", 5000),
        ("upgrade", "scale", 17000),
    ]
    assert view["invoice"] is None


def test_usage_of_a_closed_period_shows_exactly_what_was_invoiced(metering: Metering) -> None:
    # Given an account on start with 60 active contacts in October, closed and invoiced
    metering.record_events([subscription_changed("acc-done", "start", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events("acc-done", contact_ids("con", 60), "2026-10-03T10:00:00Z"))
    metering.close("2026-11-01T06:00:00Z")
    # When October's usage is asked for in November
    view = usage(metering.store, "acc-done", OCTOBER, AFTER_THE_CLOSE, SETTINGS)
    # Then it is closed, its count is the invoice's, nothing is projected or advised
    assert (view["closed"], view["activeContacts"], view["overusage"]["amountCents"]) == (True, 60, 250)
    assert view["projection"]["method"] == "closed"
    assert view["advice"] is None
    assert view["invoice"]["amountCents"] == 250
    assert [(a["thresholdPercent"], a["allowance"]) for a in view["alerts"]] == [(80, 50), (100, 50)]


def test_usage_of_a_legacy_account_or_one_without_subscription_is_not_billed(metering: Metering) -> None:
    # Given a legacy account and one without subscription, both with activity
    metering.record_events([subscription_changed("acc-old", "legacy", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events("acc-old", contact_ids("con", 3), "2026-10-03T10:00:00Z"))
    metering.record_events(contact_events("acc-none", contact_ids("con", 2), "2026-10-03T10:00:00Z"))
    # When their usage is asked for
    old = usage(metering.store, "acc-old", None, MID_OCTOBER, SETTINGS)
    none = usage(metering.store, "acc-none", None, MID_OCTOBER, SETTINGS)
    # Then the count is shown, without bill, overusage or advice
    assert (old["subscription"]["plan"], old["billed"], old["activeContacts"], old["advice"]) == (
        "legacy",
        False,
        3,
        None,
    )
    assert old["overusage"] == {"contacts": 0, "amountCents": 0}
    assert (none["subscription"], none["billed"], none["allowance"], none["activeContacts"]) == (
        None,
        False,
        None,
        2,
    )


def test_a_period_that_has_not_begun_cannot_be_shown(metering: Metering) -> None:
    # Given an account in Tokyo
    metering.record_events(
        [subscription_changed("acc-tokyo", "grow", "2026-09-01T00:00:00Z", timezone="Asia/Tokyo")]
    )
    # When November is asked for at 14:00 UTC on 31 October (23:00 in Tokyo) and at 16:00 UTC (1 November)
    # Then it has not begun at the first, and is the open period at the second
    with pytest.raises(PeriodNotOpenYet):
        usage(metering.store, "acc-tokyo", "2026-11", datetime(2026, 10, 31, 14, tzinfo=UTC), SETTINGS)
    view = usage(metering.store, "acc-tokyo", None, datetime(2026, 10, 31, 16, tzinfo=UTC), SETTINGS)
    assert (view["period"], view["timezone"], view["periodStart"]) == (
        "2026-11",
        "Asia/Tokyo",
        "2026-10-31T15:00:00Z",
    )
