"""What an open period is heading for, and what each way out of its projected overusage costs (SPEC §7).

Pure: integer arithmetic only. The projection extends the active contacts counted so far to the period's
end; the advice compares, for the projected overusage, paying it (25 cents a contact), buying that many
add-ons in advance at the plan's add-on price, and moving to each larger plan (priced where plan prices are
configured, otherwise shown by its allowance), and names the cheapest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from metering.fields import PlanName
from metering.rules import OVERUSAGE_UNIT_CENTS, PLANS, Subscription, addon_cost_cents

LINEAR = "linear"
"""Active contacts so far, scaled by the share of the period that has passed."""
SO_FAR = "so far"
"""Too little of the period has passed to extrapolate (its first hour): what is counted now."""
MIN_ELAPSED = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Projection:
    """Active contacts expected at the period's end, and the method that projected them."""

    active_contacts: int
    method: str


def linear_projection(active_contacts: int, start: datetime, end: datetime, now: datetime) -> Projection:
    """The count so far scaled to the whole period (rounded up: a contact is whole): a straight line, which
    overshoots a count of distinct contacts, most of whom appear early in a month."""
    elapsed = min(now, end) - start
    if elapsed < MIN_ELAPSED:
        return Projection(active_contacts, SO_FAR)
    length = int((end - start).total_seconds())
    passed = int(elapsed.total_seconds())
    return Projection(max(active_contacts, -(-active_contacts * length // passed)), LINEAR)


class Option(StrEnum):
    OVERUSAGE = "overusage"
    ADDONS = "addons"
    UPGRADE = "upgrade"


@dataclass(frozen=True, slots=True)
class WayOut:
    """One way to pay for the projected active contacts: its cost for the period in cents (None when the
    plan prices are not configured), and for an upgrade the plan and the allowance it brings."""

    option: Option
    cost_cents: int | None
    plan: PlanName | None = None
    allowance: int | None = None
    addon_contacts: int = 0


@dataclass(frozen=True, slots=True)
class Advice:
    """The ways out of the projected overusage, cheapest first (unpriced upgrades last), the cheapest, and
    what it saves against paying the overusage."""

    overusage_contacts: int
    options: tuple[WayOut, ...]
    cheapest: Option
    saves_cents: int


def advise(
    subscription: Subscription, projected_contacts: int, plan_prices: Mapping[PlanName, int]
) -> Advice | None:
    """The advice for a billed subscription heading for `projected_contacts` (None when it stays within
    its allowance). `plan_prices` are monthly prices in cents (empty: upgrades unpriced)."""
    overusage = max(0, projected_contacts - subscription.allowance)
    if overusage == 0 or not subscription.billed:
        return None
    paying = WayOut(Option.OVERUSAGE, overusage * OVERUSAGE_UNIT_CENTS)
    options = [paying]
    addons = addon_cost_cents(subscription, overusage)
    if addons is not None:
        options.append(WayOut(Option.ADDONS, addons, addon_contacts=overusage))
    options += _upgrades(subscription, projected_contacts, plan_prices)
    priced = sorted((o for o in options if o.cost_cents is not None), key=_cost)
    unpriced = [o for o in options if o.cost_cents is None]
    cheapest = priced[0]
    return Advice(
        overusage_contacts=overusage,
        options=(*priced, *unpriced),
        cheapest=cheapest.option,
        saves_cents=_cost(paying) - _cost(cheapest),
    )


def _upgrades(
    subscription: Subscription, projected_contacts: int, plan_prices: Mapping[PlanName, int]
) -> Sequence[WayOut]:
    """Each larger billed plan, keeping the add-ons bought: the price difference for the period (where both
    prices are known) plus the overusage the larger allowance still leaves."""
    current = PLANS[subscription.plan]
    ways = []
    for plan in PLANS.values():
        if not plan.billed or plan.included_contacts <= current.included_contacts:
            continue
        allowance = plan.included_contacts + subscription.addon_contacts
        left_over = max(0, projected_contacts - allowance) * OVERUSAGE_UNIT_CENTS
        known = plan.name in plan_prices and subscription.plan in plan_prices
        cost = plan_prices[plan.name] - plan_prices[subscription.plan] + left_over if known else None
        ways.append(WayOut(Option.UPGRADE, cost, plan.name, allowance))
    return ways


def _cost(way: WayOut) -> int:
    assert way.cost_cents is not None
    return way.cost_cents


def parse_plan_prices(text: str) -> dict[PlanName, int]:
    """`start=2900,grow=5900` -> monthly prices in cents by plan; empty text, no prices."""
    billed = {plan.name: plan.name for plan in PLANS.values() if plan.billed}
    prices: dict[PlanName, int] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, _, cents = part.partition("=")
        if name not in billed or not cents.isdigit():
            raise ValueError(f"plan price {part!r} is not <billed plan>=<cents>")
        prices[billed[name]] = int(cents)
    return prices
