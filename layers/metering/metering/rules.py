"""Business rules of SPEC §1 as pure functions: periods, plans, allowance, overusage, alert thresholds.

Money is integer euro cents everywhere; no float ever holds an amount.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

from metering.fields import BillingCycle, PlanName

OVERUSAGE_UNIT_CENTS = 25
CURRENCY = "EUR"
ZONE_REACH = timedelta(hours=15)
"""How far any zone's local midnight lies from UTC midnight (offsets span -12 h to +14 h since 1970), with a
margin: an instant further than this from every UTC month edge is in the same month in every zone."""


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
    frozen_periods: frozenset[str] = frozenset()
    """Periods already sealed when this change was stored: it moves neither their end nor their bill."""

    @property
    def included_contacts(self) -> int:
        return PLANS[self.plan].included_contacts

    @property
    def allowance(self) -> int:
        return self.included_contacts + self.addon_contacts

    @property
    def billed(self) -> bool:
        return PLANS[self.plan].billed

    @property
    def order(self) -> tuple[datetime, str]:
        """Changes take effect in this order; two at the same instant are ordered by event id, so every
        reader picks the same one."""
        return self.effective_at, self.event_id


@dataclass(frozen=True, slots=True)
class History:
    """An account's subscription changes in effect order, and the rules that read them: which subscription
    and time zone apply at an instant, which period an instant belongs to, when a period ends."""

    changes: tuple[Subscription, ...]
    default_timezone: str
    _instants: tuple[datetime, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        first_known: dict[str, Subscription] = {}
        for change in self.changes:
            first_known.setdefault(change.event_id, change)
        ordered = tuple(sorted(first_known.values(), key=_order))
        object.__setattr__(self, "changes", ordered)
        object.__setattr__(self, "_instants", tuple(change.effective_at for change in ordered))

    @classmethod
    def of(cls, changes: Iterable[Subscription], default_timezone: str) -> History:
        return cls(tuple(changes), default_timezone)

    def with_change(self, change: Subscription) -> History:
        return History((*self.changes, change), self.default_timezone)

    def for_period(self, period: str) -> History:
        """The changes that may decide `period`: those stored before it was sealed."""
        kept = tuple(change for change in self.changes if period not in change.frozen_periods)
        return self if len(kept) == len(self.changes) else History(kept, self.default_timezone)

    def at(self, instant: datetime, *, inclusive: bool = True) -> Subscription | None:
        """The subscription in effect at `instant`: the latest change effective at or before it (strictly
        before when `inclusive` is false, as at a period's end)."""
        index = bisect_right(self._instants, instant) if inclusive else bisect_left(self._instants, instant)
        return self.changes[index - 1] if index else None

    def zone_at(self, instant: datetime) -> ZoneInfo:
        """The time zone that decides which month `instant` belongs to for this account."""
        current = self.at(instant)
        return zone(current.timezone if current and current.timezone else self.default_timezone)

    def place(self, instant: datetime) -> str:
        """The period of `instant`: its calendar month in the account's time zone at that instant."""
        return period_of(instant, self.zone_at(instant))

    def period_end(self, period: str) -> datetime:
        """The first instant that belongs to a later period: the end of the month in the zone in effect at
        that end. A zone change can move it; between changes the zone is fixed, so the end is the first
        instant of the first stretch of constant zone whose local clock has passed the month."""
        history = self.for_period(period)
        starts = (datetime.min.replace(tzinfo=UTC), *history._instants)
        zones = (
            zone(self.default_timezone),
            *(zone(change.timezone or self.default_timezone) for change in history.changes),
        )
        for index, start in enumerate(starts):
            stretch_end = starts[index + 1] if index + 1 < len(starts) else None
            candidate = max(start, month_end(period, zones[index]))
            if stretch_end is None or candidate < stretch_end:
                return candidate
        raise AssertionError("the last stretch of a history never ends")

    def close_instant(self, period: str, grace: timedelta) -> datetime:
        """When a period may be closed and invoiced: its end plus the grace time for stragglers."""
        return self.period_end(period) + grace

    def billing_subscription(self, period: str) -> Subscription | None:
        """The subscription that bills a period: in effect at its end (changes effective exactly at the end
        belong to the next period), among the changes known before the period was sealed."""
        history = self.for_period(period)
        return history.at(history.period_end(period), inclusive=False)


def _order(change: Subscription) -> tuple[datetime, str]:
    return change.order


@cache
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def period_of(instant: datetime, tz: ZoneInfo) -> str:
    """The billing period (`YYYY-MM`) holding `instant`: its calendar month in the account's time zone."""
    local = instant.astimezone(tz)
    return f"{local.year:04d}-{local.month:02d}"


def period_bounds(period: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """Start (inclusive) and end (exclusive) of a period as UTC instants; DST-safe via local midnights."""
    year, month = (int(part) for part in period.split("-"))
    start = datetime(year, month, 1, tzinfo=tz).astimezone(UTC)
    end = datetime(*_next_month(year, month), 1, tzinfo=tz).astimezone(UTC)
    return start, end


def month_end(period: str, tz: ZoneInfo) -> datetime:
    return period_bounds(period, tz)[1]


def next_period(period: str) -> str:
    year, month = _next_month(*(int(part) for part in period.split("-")))
    return f"{year:04d}-{month:02d}"


def previous_period(period: str) -> str:
    year, month = (int(part) for part in period.split("-"))
    year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return f"{year:04d}-{month:02d}"


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def utc_period(instant: datetime) -> str:
    return period_of(instant, zone("UTC"))


def periods_near(instant: datetime) -> tuple[str, ...]:
    """Every period `instant` can belong to in some zone: its UTC month, and a neighbour near a month edge."""
    return tuple(
        sorted({utc_period(instant - ZONE_REACH), utc_period(instant), utc_period(instant + ZONE_REACH)})
    )


def earliest_close(period: str, grace: timedelta) -> datetime:
    """No account's period closes before this (the zone furthest east ends the month first)."""
    return month_end(period, zone("UTC")) - ZONE_REACH + grace


def latest_close(period: str, grace: timedelta) -> datetime:
    """Every account's period has closed by this (the zone furthest west ends the month last)."""
    return month_end(period, zone("UTC")) + ZONE_REACH + grace


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
    """Active contacts at which `percent` of the allowance is reached (rounded up: 80 % of 50 is 40), in
    integers so that no allowance is too large to be exact."""
    return -(-allowance * percent // 100)


def utc_iso(instant: datetime) -> str:
    """A fixed-width UTC timestamp (`2026-10-01T08:00:00.000000Z`) that sorts as text as it does in time."""
    utc = instant.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
        f".{utc.microsecond:06d}Z"
    )
