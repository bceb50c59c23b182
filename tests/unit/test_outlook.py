"""The outlook of an open period: its projection to the period's end and the advice on the projected
overusage, in integer cents."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from metering.outlook import (
    LINEAR,
    PREVIOUS_SHAPE,
    SO_FAR,
    Option,
    PeriodShape,
    advise,
    linear_projection,
    parse_plan_prices,
    shaped_projection,
)

from tests.helpers import subscription

START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)
PRICES = parse_plan_prices("start=2900,grow=4900,expand=7900,scale=19900")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(datetime(2026, 10, 1, 0, 30, tzinfo=UTC), (40, SO_FAR), id="first-hour"),
        pytest.param(datetime(2026, 10, 11, tzinfo=UTC), (124, LINEAR), id="day-10"),
        pytest.param(datetime(2026, 10, 21, tzinfo=UTC), (62, LINEAR), id="day-20"),
        pytest.param(datetime(2026, 11, 5, tzinfo=UTC), (40, LINEAR), id="after-the-end"),
    ],
)
def test_a_straight_line_scales_the_count_so_far_to_the_whole_period(
    now: datetime, expected: tuple[int, str]
) -> None:
    # Given 40 active contacts so far in October
    # When the count is projected at several moments
    projection = linear_projection(40, START, END, now)
    # Then it is scaled by the share of the month that has passed, rounded up (none in its first hour)
    assert (projection.active_contacts, projection.method) == expected


def test_within_the_allowance_there_is_nothing_to_advise() -> None:
    assert advise(subscription("grow"), 250, PRICES) is None
    assert advise(subscription("legacy"), 5_000, PRICES) is None


def test_add_ons_bought_in_advance_beat_overusage_on_a_yearly_plan() -> None:
    # Given a yearly grow plan (add-ons at 16 cents) heading for 300 contacts, without plan prices
    advice = advise(subscription("grow", cycle="yearly"), 300, {})
    # Then 50 add-ons (800 cents) beat paying 50 contacts of overusage (1,250 cents); upgrades are unpriced
    assert advice is not None
    assert (advice.overusage_contacts, advice.cheapest, advice.saves_cents) == (50, Option.ADDONS, 450)
    assert [(o.option, o.plan, o.cost_cents, o.allowance) for o in advice.options] == [
        (Option.ADDONS, None, 800, None),
        (Option.OVERUSAGE, None, 1250, None),
        (Option.UPGRADE, "expand", None, 500),
        (Option.UPGRADE, "scale", None, 2000),
    ]


def test_an_upgrade_keeps_the_add_ons_and_still_pays_what_its_allowance_leaves_over() -> None:
    # Given start with 20 add-ons heading for 600 contacts
    advice = advise(subscription("start", addons=20), 600, PRICES)
    assert advice is not None
    upgrades = {o.plan: (o.allowance, o.cost_cents) for o in advice.options if o.option is Option.UPGRADE}
    # Then grow brings 270 and leaves 330 over (2,000 + 8,250), expand 520 and 80 over (5,000 + 2,000)
    assert upgrades == {"grow": (270, 10_250), "expand": (520, 7_000), "scale": (2020, 17_000)}
    assert advice.cheapest is Option.UPGRADE
    assert advice.options[0].plan == "expand"


def test_scale_has_no_add_ons_to_buy() -> None:
    advice = advise(subscription("scale"), 2_100, PRICES)
    assert advice is not None
    assert [o.option for o in advice.options] == [Option.OVERUSAGE]


@pytest.mark.parametrize("text", ["legacy=100", "grow", "grow=-5", "grow=1.5", "gold=100"])
def test_plan_prices_must_name_billed_plans_and_whole_cents(text: str) -> None:
    with pytest.raises(ValueError, match="plan price"):
        parse_plan_prices(text)


SEPTEMBER_START = datetime(2026, 9, 1, tzinfo=UTC)


def test_a_period_shape_counts_the_contacts_active_by_the_end_of_each_tenth() -> None:
    # Given September's contacts: 30 active on the 2nd, 10 on the 16th, 5 on the 30th
    activations = (
        [datetime(2026, 9, 2, tzinfo=UTC)] * 30
        + [datetime(2026, 9, 16, tzinfo=UTC)] * 10
        + [datetime(2026, 9, 30, tzinfo=UTC)] * 5
    )
    # When its shape is taken
    shape = PeriodShape.of(activations, SEPTEMBER_START, START)
    # Then each tenth holds the running count, and the last the final one
    assert shape.points == (30, 30, 30, 30, 30, 40, 40, 40, 40, 45)
    assert shape.final == 45


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(datetime(2026, 10, 6, tzinfo=UTC), (54, PREVIOUS_SHAPE), id="day-5-at-60-of-80"),
        pytest.param(datetime(2026, 10, 11, tzinfo=UTC), (43, PREVIOUS_SHAPE), id="day-10-at-75-of-80"),
        pytest.param(datetime(2026, 10, 24, tzinfo=UTC), (40, PREVIOUS_SHAPE), id="day-23-at-80-of-80"),
        pytest.param(datetime(2026, 10, 1, 0, 30, tzinfo=UTC), (40, SO_FAR), id="first-hour"),
    ],
)
def test_an_open_period_follows_the_shape_of_the_previous_one(
    now: datetime, expected: tuple[int, str]
) -> None:
    # Given a previous period that had three quarters of its contacts a third of the way in
    previous = PeriodShape((60, 60, 75, 75, 80, 80, 80, 80, 80, 80))
    # When 40 contacts so far are projected
    projection = shaped_projection(40, START, END, now, previous)
    # Then they are scaled by the share the previous period had reached at the same point (never below 40)
    assert (projection.active_contacts, projection.method) == expected


@pytest.mark.parametrize(
    "previous",
    [None, PeriodShape((5, 5, 6, 6, 6, 7, 7, 7, 8, 8)), PeriodShape((0, 0, 0, 0, 0, 0, 0, 0, 0, 50))],
    ids=["no-previous-period", "too-few-contacts", "nothing-before-the-last-tenth"],
)
def test_without_a_usable_previous_shape_the_line_is_used(previous: PeriodShape | None) -> None:
    projection = shaped_projection(40, START, END, datetime(2026, 10, 11, tzinfo=UTC), previous)
    assert (projection.active_contacts, projection.method) == (124, LINEAR)
