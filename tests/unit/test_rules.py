"""SPEC §1 business rules as pure functions: periods in the account's time zone, allowance, overusage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from metering.rules import (
    OVERUSAGE_UNIT_CENTS,
    PLANS,
    History,
    Subscription,
    addon_cost_cents,
    invoice_lines,
    period_bounds,
    period_of,
    threshold_contacts,
    utc_iso,
)

from tests.helpers import subscription, utc

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def history(*changes: Subscription, default_timezone: str = "UTC") -> History:
    return History.of(changes, default_timezone)


# ---- periods ----


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        pytest.param("2026-10-31T22:59:59Z", "2026-10", id="last-second-of-october-berlin-cet"),
        pytest.param("2026-10-31T23:00:00Z", "2026-11", id="first-instant-of-november-berlin"),
        pytest.param("2026-03-31T21:59:59Z", "2026-03", id="last-second-of-march-berlin-cest"),
        pytest.param("2026-03-31T22:00:00Z", "2026-04", id="first-instant-of-april-berlin"),
        pytest.param("2025-12-31T23:00:00Z", "2026-01", id="new-year-in-berlin-is-still-december-in-utc"),
        pytest.param("2026-09-30T22:00:00Z", "2026-10", id="first-instant-of-october-berlin-cest"),
    ],
)
def test_period_of_is_the_calendar_month_in_berlin(instant: str, expected: str) -> None:
    # Given an instant near a Berlin month edge
    # When its period is computed in Europe/Berlin
    period = period_of(utc(instant), BERLIN)
    # Then it is the month of the local wall-clock time
    assert period == expected


def test_period_of_an_instant_with_an_offset_is_the_same_as_in_utc() -> None:
    # Given the same instant written with a +02:00 offset and in UTC
    with_offset = datetime.fromisoformat("2026-11-01T00:30:00+02:00")
    # When the period is computed in UTC
    # Then the offset of the input does not matter, only the instant
    assert period_of(with_offset, ZoneInfo("UTC")) == period_of(utc("2026-10-31T22:30:00Z"), ZoneInfo("UTC"))
    assert period_of(with_offset, ZoneInfo("UTC")) == "2026-10"


@pytest.mark.parametrize(
    ("period", "start", "end", "hours"),
    [
        pytest.param(
            "2026-03", "2026-02-28T23:00:00Z", "2026-03-31T22:00:00Z", 31 * 24 - 1, id="march-loses-dst-hour"
        ),
        pytest.param(
            "2026-10", "2026-09-30T22:00:00Z", "2026-10-31T23:00:00Z", 31 * 24 + 1, id="october-gains-hour"
        ),
        pytest.param(
            "2026-12", "2026-11-30T23:00:00Z", "2026-12-31T23:00:00Z", 31 * 24, id="december-into-new-year"
        ),
    ],
)
def test_period_bounds_in_berlin_are_local_midnights_across_dst(
    period: str, start: str, end: str, hours: int
) -> None:
    # Given a Berlin period that contains a DST change (or a year end)
    # When its bounds are computed
    lower, upper = period_bounds(period, BERLIN)
    # Then they are the local midnights as UTC instants, and the month has 743, 745 or 744 hours
    assert (lower, upper) == (utc(start), utc(end))
    assert lower.tzinfo == UTC
    assert upper - lower == timedelta(hours=hours)


def test_period_bounds_and_period_of_agree_at_both_edges() -> None:
    # Given the bounds of October 2026 in Berlin
    start, end = period_bounds("2026-10", BERLIN)
    # When the instants at and just before each bound are placed in a period
    # Then the start belongs to the period (inclusive) and the end to the next one (exclusive)
    assert period_of(start, BERLIN) == "2026-10"
    assert period_of(start - timedelta(microseconds=1), BERLIN) == "2026-09"
    assert period_of(end - timedelta(microseconds=1), BERLIN) == "2026-10"
    assert period_of(end, BERLIN) == "2026-11"


def test_new_york_month_edges_follow_eastern_time() -> None:
    # Given New York, which leaves daylight time on 2026-11-01 at 02:00 local
    # When periods and bounds are computed there
    # Then October ends at 04:00 UTC (EDT, UTC-4) and March starts at 05:00 UTC (EST, UTC-5)
    assert period_of(utc("2026-11-01T03:59:59Z"), NEW_YORK) == "2026-10"
    assert period_of(utc("2026-11-01T04:00:00Z"), NEW_YORK) == "2026-11"
    assert period_bounds("2026-10", NEW_YORK) == (utc("2026-10-01T04:00:00Z"), utc("2026-11-01T04:00:00Z"))
    assert period_bounds("2026-03", NEW_YORK) == (utc("2026-03-01T05:00:00Z"), utc("2026-04-01T04:00:00Z"))


def test_close_instant_is_period_end_plus_grace() -> None:
    # Given an account in Berlin all year and the default grace of 6 hours
    berlin = history(subscription("start", "2026-01-01T00:00:00Z", timezone="Europe/Berlin"))
    # When October's close instant is computed
    instant = berlin.close_instant("2026-10", timedelta(hours=6))
    # Then it is the local end of the month plus six hours
    assert instant == utc("2026-11-01T05:00:00Z")


def test_an_account_without_subscription_ends_its_months_in_the_default_zone() -> None:
    # Given no subscription at all and a deployment whose default zone is New York
    # When October's end is computed
    # Then it is New York's midnight
    assert history(default_timezone="America/New_York").period_end("2026-10") == utc("2026-11-01T04:00:00Z")


@pytest.mark.parametrize(
    ("zone_change_at", "expected_end"),
    [
        pytest.param("2026-10-15T00:00:00Z", "2026-10-31T23:00:00Z", id="mid-month-the-new-zone"),
        pytest.param("2026-10-31T23:30:00Z", "2026-10-31T23:30:00Z", id="after-berlin-midnight-the-change"),
        pytest.param("2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z", id="at-utc-midnight-utc-midnight"),
        pytest.param("2026-11-01T00:00:01Z", "2026-11-01T00:00:00Z", id="after-utc-midnight-utc-midnight"),
    ],
)
def test_a_period_ends_in_the_zone_in_effect_at_its_end(zone_change_at: str, expected_end: str) -> None:
    # Given an account in UTC that moves to Berlin (UTC+1 in winter) at some instant
    account = history(
        subscription("start", "2026-09-01T00:00:00Z", event_id="sub-1"),
        subscription("start", zone_change_at, event_id="sub-2", timezone="Europe/Berlin"),
    )
    # When October's end is computed
    end = account.period_end("2026-10")
    # Then it is the first instant the account's clock, in the zone in effect then, shows November
    assert end == utc(expected_end)
    assert account.place(end) == "2026-11"
    assert account.place(end - timedelta(microseconds=1)) == "2026-10"


def test_a_move_west_late_in_the_month_ends_it_at_the_new_zones_midnight() -> None:
    # Given an account in Berlin that moves to New York (UTC-5) on 31 October at 22:00 UTC
    account = history(
        subscription("start", "2026-09-01T00:00:00Z", event_id="sub-1", timezone="Europe/Berlin"),
        subscription("start", "2026-10-31T22:00:00Z", event_id="sub-2", timezone="America/New_York"),
    )
    # When October's end is computed
    # Then Berlin's midnight (23:00 UTC) no longer ends it: New York's does
    assert account.period_end("2026-10") == utc("2026-11-01T04:00:00Z")


def test_a_change_frozen_out_of_a_period_moves_neither_its_end_nor_its_bill() -> None:
    # Given an account in UTC on start, and a change to Berlin and scale stored after October was sealed
    account = history(
        subscription("start", "2026-09-01T00:00:00Z", event_id="sub-1"),
        subscription(
            "scale",
            "2026-10-15T00:00:00Z",
            event_id="sub-2",
            timezone="Europe/Berlin",
            frozen=frozenset({"2026-10"}),
        ),
    )
    # When October and November are read
    # Then October keeps its UTC end and start plan; November has both changes
    assert account.period_end("2026-10") == utc("2026-11-01T00:00:00Z")
    assert account.billing_subscription("2026-10").plan == "start"  # type: ignore[union-attr]
    assert account.period_end("2026-11") == utc("2026-11-30T23:00:00Z")
    assert account.billing_subscription("2026-11").plan == "scale"  # type: ignore[union-attr]


# ---- the subscription in effect ----


def test_subscription_at_picks_the_latest_change_effective_at_or_before_the_instant() -> None:
    # Given start from September and grow from 15 October
    account = history(
        subscription("grow", "2026-10-15T00:00:00Z", event_id="sub-2"),
        subscription("start", "2026-09-01T00:00:00Z", event_id="sub-1"),
    )
    # When the subscription in effect is asked for several instants
    # Then the latest one effective by then wins, and none before the first
    assert account.at(utc("2026-08-31T23:59:59Z")) is None
    assert account.at(utc("2026-10-14T23:59:59Z")).plan == "start"  # type: ignore[union-attr]
    assert account.at(utc("2026-10-15T00:00:00Z")).plan == "grow"  # type: ignore[union-attr]
    assert account.at(utc("2026-11-01T00:00:00Z")).plan == "grow"  # type: ignore[union-attr]


def test_subscription_at_period_end_excludes_a_change_effective_exactly_at_the_end() -> None:
    # Given grow during October and an upgrade to scale effective exactly when November starts (UTC)
    period_end = period_bounds("2026-10", ZoneInfo("UTC"))[1]
    account = history(
        subscription("grow", "2026-10-01T00:00:00Z", event_id="sub-1"),
        subscription("scale", "2026-11-01T00:00:00Z", event_id="sub-2"),
    )
    # When the subscription at the end is taken inclusively and strictly before the end
    inclusive = account.at(period_end)
    strict = account.billing_subscription("2026-10")
    # Then only the strict reading, used for October's invoice, keeps October's subscription
    assert inclusive is not None
    assert inclusive.plan == "scale"
    assert strict is not None
    assert strict.plan == "grow"


def test_subscription_at_breaks_ties_on_the_same_instant_by_event_id_whatever_the_order() -> None:
    # Given two changes effective at the same instant
    first = subscription("start", "2026-10-10T00:00:00Z", event_id="evt-a")
    second = subscription("expand", "2026-10-10T00:00:00Z", event_id="evt-b")
    # When the history is read in either order
    # Then every reader picks the same one (the greater event id)
    assert history(first, second).at(utc("2026-10-20T00:00:00Z")) == second
    assert history(second, first).at(utc("2026-10-20T00:00:00Z")) == second


def test_a_change_delivered_twice_counts_once_and_its_first_storing_wins() -> None:
    # Given a change stored with the periods it was frozen out of, and the same change delivered again
    stored = subscription("scale", "2026-10-15T00:00:00Z", event_id="sub-2", frozen=frozenset({"2026-10"}))
    again = subscription("scale", "2026-10-15T00:00:00Z", event_id="sub-2")
    # When both are in one history
    account = history(subscription("start", "2026-09-01T00:00:00Z"), stored, again)
    # Then the history holds it once, as first stored
    assert account.changes == (subscription("start", "2026-09-01T00:00:00Z"), stored)


# ---- plans, allowance, invoices ----


def test_plans_include_the_contacts_of_the_spec_and_legacy_is_not_billed() -> None:
    # Given the plan table
    # When it is read
    included = {name: plan.included_contacts for name, plan in PLANS.items() if plan.billed}
    # Then it matches SPEC §1 and legacy is never billed
    assert included == {"start": 50, "grow": 250, "expand": 500, "scale": 2000}
    assert not PLANS["legacy"].billed


@pytest.mark.parametrize(
    ("plan", "addons", "allowance"),
    [("start", 0, 50), ("start", 10, 60), ("grow", 100, 350), ("expand", 0, 500), ("scale", 500, 2500)],
)
def test_allowance_is_included_contacts_plus_addons(plan: str, addons: int, allowance: int) -> None:
    # Given a subscription with add-on contacts
    sub = subscription(plan, addons=addons)
    # When its allowance is read
    # Then it is the plan's included contacts plus the add-ons
    assert sub.allowance == allowance


def test_invoice_lines_bill_overusage_in_integer_cents() -> None:
    # Given grow (250 included) and 263 active contacts
    sub = subscription("grow")
    # When the invoice lines are computed
    lines = invoice_lines(sub, 263)
    # Then 13 contacts are over, at 25 cents each: 325 cents, all integers
    assert (lines.allowance, lines.overusage_contacts, lines.unit_price_cents, lines.amount_cents) == (
        250,
        13,
        25,
        325,
    )
    assert lines.currency == "EUR"
    assert all(
        type(value) is int
        for value in (
            lines.included_contacts,
            lines.addon_contacts,
            lines.allowance,
            lines.active_contacts,
            lines.overusage_contacts,
            lines.unit_price_cents,
            lines.amount_cents,
        )
    )


@pytest.mark.parametrize(("active", "over"), [(250, 0), (0, 0), (249, 0), (251, 1)])
def test_invoice_lines_at_or_below_the_allowance_have_no_overusage(active: int, over: int) -> None:
    # Given grow (250 included)
    # When active contacts are at, below or just above the allowance
    lines = invoice_lines(subscription("grow"), active)
    # Then overusage is never negative and starts at the 251st contact
    assert lines.overusage_contacts == over
    assert lines.amount_cents == over * OVERUSAGE_UNIT_CENTS


def test_invoice_lines_count_addons_in_the_allowance_and_ignore_the_billing_cycle() -> None:
    # Given grow yearly with 20 add-on contacts and 263 active
    lines = invoice_lines(subscription("grow", addons=20, cycle="yearly"), 263)
    # When billed
    # Then the allowance is 270, nothing is over, and the flat price does not depend on the cycle
    assert (lines.included_contacts, lines.addon_contacts, lines.allowance) == (250, 20, 270)
    assert (lines.overusage_contacts, lines.amount_cents) == (0, 0)
    assert invoice_lines(subscription("start", cycle="yearly"), 60).amount_cents == 250


def test_addons_never_cost_more_than_overusage() -> None:
    # Given every plan that sells add-ons
    # When their prices are compared with the overusage price
    # Then an add-on is never dearer than overusage (SPEC §1), and plans without add-ons say so
    for plan in ("start", "grow", "expand"):
        for cycle in ("monthly", "yearly"):
            cost = addon_cost_cents(subscription(plan, cycle=cycle), 1)
            assert cost is not None
            assert 0 < cost <= OVERUSAGE_UNIT_CENTS
    assert addon_cost_cents(subscription("grow", cycle="yearly"), 10) == 160
    assert addon_cost_cents(subscription("scale"), 10) is None


# ---- alert thresholds ----


@pytest.mark.parametrize(
    ("allowance", "percent", "contacts"),
    [
        (50, 80, 40),
        (50, 100, 50),
        (250, 80, 200),
        (51, 80, 41),
        (7, 80, 6),
        (3, 100, 3),
        (1, 80, 1),
        (0, 80, 0),
    ],
)
def test_threshold_contacts_rounds_up(allowance: int, percent: int, contacts: int) -> None:
    # Given an allowance and a threshold percentage
    # When the contacts needed to reach it are computed
    # Then fractional thresholds round up (80 % of 51 is 40.8, reached at 41)
    assert threshold_contacts(allowance, percent) == contacts


def test_threshold_contacts_stay_exact_for_the_largest_allowance_the_contract_accepts() -> None:
    # Given the largest add-on purchase the contract accepts on scale
    allowance = 2000 + 1_000_000_000
    # When its thresholds are computed
    # Then they are exact integers (no float rounding)
    assert threshold_contacts(allowance, 80) == 800_001_600
    assert threshold_contacts(allowance, 100) == allowance
    assert threshold_contacts(allowance + 1, 80) == 800_001_601


def test_utc_iso_is_fixed_width_and_sorts_like_time() -> None:
    # Given instants in different offsets and with and without microseconds
    instants = [
        datetime.fromisoformat("2026-10-05T12:00:00+02:00"),
        datetime.fromisoformat("2026-10-05T10:00:00.5+00:00"),
        datetime.fromisoformat("2026-10-05T09:59:59.999999Z"),
    ]
    # When they are written with utc_iso
    texts = [utc_iso(instant) for instant in instants]
    # Then every text is UTC, equally long, and text order is time order
    assert texts[0] == "2026-10-05T10:00:00.000000Z"
    assert {len(text) for text in texts} == {27}
    assert sorted(texts) == [utc_iso(instant) for instant in sorted(instants)]
