"""Business rules of SPEC §1 as pure functions: periods, plans, allowance, overusage, alert thresholds.

Money is integer euro cents everywhere; no float ever holds an amount.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from math import ceil
from zoneinfo import ZoneInfo

from metering.fields import BillingCycle, PlanName

OVERUSAGE_UNIT_CENTS = 25
CURRENCY = "EUR"


@dataclass(frozen=True, slots=True)
class Plan:
    """A plan's included active contacts per month and its add-on price per contact and month, by cycle."""

    name: PlanName
    included_contacts: int
    billed: bool
    addon_cents: dict[BillingCycle, int] | None


PLANS: dict[PlanName, Plan] = {
    "start": Plan("start", 50, True, {"monthly": 25, "yearly": 20}),
    "grow": Plan("grow", 250, True, {"monthly": 20, "yearly": 16}),
    "expand": Plan("expand", 500, True, {"monthly": 16, "yearly": 13}),
    "scale": Plan("scale", 2000, True, None),
    "legacy": Plan("legacy", 0, False, None),
}


@dataclass(frozen=True, slots=True)
class Subscription:
    """One `Subscription Changed`: what the account has from `effective_at` on."""

    account_id: str
    effective_at: datetime
    event_id: str
    plan: PlanName
    billing_cycle: BillingCycle
    addon_contacts: int
    timezone: str | None

    @property
    def included_contacts(self) -> int:
        return PLANS[self.plan].included_contacts

    @property
    def allowance(self) -> int:
        return self.included_contacts + self.addon_contacts

    @property
    def billed(self) -> bool:
        return PLANS[self.plan].billed


def subscription_at(
    history: Iterable[Subscription], instant: datetime, *, inclusive: bool = True
) -> Subscription | None:
    """The subscription in effect at `instant`: the latest one effective at or before it (strictly before
    when `inclusive` is false, as for a period's end). Ties on the instant are broken by event id so every
    reader picks the same one."""
    candidates = [
        sub for sub in history if sub.effective_at < instant or (inclusive and sub.effective_at == instant)
    ]
    return max(candidates, key=lambda sub: (sub.effective_at, sub.event_id), default=None)


def account_timezone(history: Iterable[Subscription], instant: datetime, default_timezone: str) -> ZoneInfo:
    """The time zone that decides which month `instant` belongs to for this account."""
    current = subscription_at(history, instant)
    return ZoneInfo(current.timezone if current and current.timezone else default_timezone)


def period_of(instant: datetime, tz: ZoneInfo) -> str:
    """The billing period (`YYYY-MM`) holding `instant`: its calendar month in the account's time zone."""
    local = instant.astimezone(tz)
    return f"{local.year:04d}-{local.month:02d}"


def period_bounds(period: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """Start (inclusive) and end (exclusive) of a period as UTC instants; DST-safe via local midnights."""
    year, month = (int(part) for part in period.split("-"))
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    start = datetime(year, month, 1, tzinfo=tz).astimezone(UTC)
    end = datetime(next_year, next_month, 1, tzinfo=tz).astimezone(UTC)
    return start, end


def close_instant(period: str, tz: ZoneInfo, grace: timedelta) -> datetime:
    """When a period may be closed and invoiced: its end plus the grace time for stragglers."""
    return period_bounds(period, tz)[1] + grace


@dataclass(frozen=True, slots=True)
class InvoiceLines:
    """The figures of one overusage invoice (SPEC §3), all integers."""

    plan: PlanName
    billing_cycle: BillingCycle
    included_contacts: int
    addon_contacts: int
    allowance: int
    active_contacts: int
    overusage_contacts: int
    unit_price_cents: int
    amount_cents: int
    currency: str


def invoice_lines(subscription: Subscription, active_contacts: int) -> InvoiceLines:
    """Overusage = max(0, active - allowance), billed at the flat unit price whatever the plan or cycle."""
    overusage = max(0, active_contacts - subscription.allowance)
    return InvoiceLines(
        plan=subscription.plan,
        billing_cycle=subscription.billing_cycle,
        included_contacts=subscription.included_contacts,
        addon_contacts=subscription.addon_contacts,
        allowance=subscription.allowance,
        active_contacts=active_contacts,
        overusage_contacts=overusage,
        unit_price_cents=OVERUSAGE_UNIT_CENTS,
        amount_cents=overusage * OVERUSAGE_UNIT_CENTS,
        currency=CURRENCY,
    )


def addon_cost_cents(subscription: Subscription, contacts: int) -> int | None:
    """What `contacts` extra contacts would cost per month bought in advance as add-ons (None: no add-on)."""
    prices = PLANS[subscription.plan].addon_cents
    return None if prices is None else prices[subscription.billing_cycle] * contacts


def threshold_contacts(allowance: int, percent: int) -> int:
    """Active contacts at which `percent` of the allowance is reached (rounded up: 80 % of 50 is 40)."""
    return ceil(allowance * percent / 100)


def crossed_thresholds(
    thresholds: Sequence[int], allowance: int, active_contacts: int, already_alerted: Iterable[int]
) -> list[int]:
    """Thresholds reached by `active_contacts` that have not been alerted yet, lowest first."""
    alerted = set(already_alerted)
    return sorted(
        percent
        for percent in thresholds
        if percent not in alerted and active_contacts >= threshold_contacts(allowance, percent)
    )


def utc_iso(instant: datetime) -> str:
    """A fixed-width UTC timestamp (`2026-10-01T08:00:00.000000Z`) that sorts as text as it does in time."""
    utc = instant.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
        f".{utc.microsecond:06d}Z"
    )
