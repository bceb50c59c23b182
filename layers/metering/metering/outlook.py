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
PREVIOUS_SHAPE = "previous period's shape"
"""Active contacts so far, scaled by the share of its final count the account's previous period had reached
at the same point: a month of distinct contacts rises fast early and flattens, and an account's months are
alike."""
MIN_ELAPSED = timedelta(hours=1)
SHAPE_POINTS = 10
"""A period's shape: its active contacts at each tenth of the period, the last being its final count."""
MIN_SHAPE_CONTACTS = 20
"""Below this many contacts a previous period's shape is too coarse to scale by: the line is used instead."""


@dataclass(frozen=True, slots=True)
class PeriodShape:
    """How a closed period filled: active contacts at the end of each tenth of it (cumulative)."""

    points: tuple[int, ...]

    @classmethod
    def of(cls, activations: Sequence[datetime], start: datetime, end: datetime) -> PeriodShape:
        """The shape of a period from when each of its contacts became active."""
        length = (end - start).total_seconds()
        counts = [0] * SHAPE_POINTS
        for at in activations:
            share = (at - start).total_seconds() / length
            counts[min(SHAPE_POINTS - 1, max(0, int(share * SHAPE_POINTS)))] += 1
        running, points = 0, []
        for count in counts:
            running += count
            points.append(running)
        return cls(tuple(points))

    @property
    def final(self) -> int:
        return self.points[-1] if self.points else 0

    def reached(self, passed: int, length: int) -> tuple[int, int]:
        """The contacts reached after `passed` of `length` seconds, as the fraction (numerator, denominator)
        of the final count, interpolated between the tenths."""
        tenth = min(SHAPE_POINTS - 1, passed * SHAPE_POINTS // length)
        low = self.points[tenth - 1] if tenth else 0
        into = passed * SHAPE_POINTS - tenth * length
        return low * length + (self.points[tenth] - low) * into, self.final * length


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


def shaped_projection(
    active_contacts: int, start: datetime, end: datetime, now: datetime, previous: PeriodShape | None
) -> Projection:
    """The count so far scaled by the share the previous period had reached at the same point of it; the
    straight line when there is no usable previous shape."""
    elapsed = min(now, end) - start
    if previous is None or previous.final < MIN_SHAPE_CONTACTS or elapsed < MIN_ELAPSED:
        return linear_projection(active_contacts, start, end, now)
    length = int((end - start).total_seconds())
    reached, whole = previous.reached(int(elapsed.total_seconds()), length)
    if reached <= 0:
        return linear_projection(active_contacts, start, end, now)
    return Projection(max(active_contacts, -(-active_contacts * whole // reached)), PREVIOUS_SHAPE)


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
