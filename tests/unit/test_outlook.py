"""The outlook of an open period: its projection to the period's end and the advice on the projected
overusage, in integer cents."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from metering.outlook import LINEAR, SO_FAR, Option, advise, linear_projection, parse_plan_prices

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
