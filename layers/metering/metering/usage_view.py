"""What an account sees of one period (SPEC §7): the one read model behind the operator's commands (`metering
usage`, `explain`) and the Usage API, so there is one way to compute it.

A closed and invoiced period shows exactly what was invoiced; any other period shows what the close would
count now, with `asOf` the instant before which every recorded contact is counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import AwareDatetime, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from metering.fields import BillingCycle, PlanName
from metering.model import AlertRecord, Invoice, PeriodRef, PeriodSeal
from metering.outlook import Advice, Option, Projection, advise, shaped_projection
from metering.rules import (
    CURRENCY,
    History,
    Subscription,
    invoice_lines,
    previous_period,
)

if TYPE_CHECKING:
    from metering.store import MeteringStore
    from metering.store.counters import ContactCounter


OUTRIGHT_LIMIT = 48
"""Contacts a usage view counts outright (2 read units, consistent) before it falls back to counting them all:
periods get a counter at `metering.counting.COUNTER_FROM` contacts, so only one caught between the two, and
not yet scanned, costs more."""


class PeriodNotOpenYet(ValueError):
    """A period after the one open now in the account's time zone: nothing can be counted in it yet."""


class _View(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class SubscriptionView(_View):
    plan: PlanName
    billing_cycle: BillingCycle
    included_contacts: int
    addon_contacts: int


class OverusageView(_View):
    contacts: int
    amount_cents: int


class ProjectionView(_View):
    active_contacts: int
    overusage_contacts: int
    amount_cents: int
    method: str


class WayOutView(_View):
    option: Option
    cost_cents: int | None
    plan: PlanName | None = None
    allowance: int | None = None
    addon_contacts: int = 0


class AdviceView(_View):
    overusage_contacts: int
    options: list[WayOutView]
    cheapest: Option
    saves_cents: int


class AlertView(_View):
    threshold_percent: int
    allowance: int
    reached_at: str


class InvoiceView(_View):
    account_id: str
    period: str
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
    issued_at: str

    @classmethod
    def of(cls, invoice: Invoice) -> InvoiceView:
        return cls.model_validate({k: v for k, v in invoice.as_detail().items() if k != "invoiceId"})


class UsageView(_View):
    """One account's usage of one period."""

    account_id: str
    period: str
    timezone: str
    period_start: AwareDatetime
    period_end: AwareDatetime
    closes_at: AwareDatetime
    closed: bool
    as_of: AwareDatetime
    subscription: SubscriptionView | None
    billed: bool
    allowance: int | None
    active_contacts: int
    overusage: OverusageView
    projection: ProjectionView
    advice: AdviceView | None
    alerts: list[AlertView]
    invoice: InvoiceView | None
    currency: str = CURRENCY


@dataclass(frozen=True, slots=True)
class ReadSettings:
    """What the read model needs of the stack's configuration."""

    default_timezone: str
    grace: timedelta
    plan_prices: Mapping[PlanName, int]


def read_usage(
    store: MeteringStore, account_id: str, period: str | None, now: datetime, settings: ReadSettings
) -> UsageView:
    """The usage of `period` (default: the period open now in the account's zone). Raises PeriodNotOpenYet
    for a period after the open one. Costs at most 4 read units whatever the period's size
    (docs/design.md#contact-counters)."""
    history = History.of(store.subscriptions.history(account_id, consistent=False), settings.default_timezone)
    open_period = history.place(now)
    period = period or open_period
    if period > open_period:
        raise PeriodNotOpenYet(f"period {period} has not begun in the account's time zone")
    ref = PeriodRef(account_id, period)
    for_period = history.for_period(period)
    start = for_period.period_end(previous_period(period))
    end = for_period.period_end(period)
    closes_at = end + settings.grace
    may_be_closed = now >= closes_at
    seal = (
        store.seals.read_since(period, consistent=False).get(period, PeriodSeal(period))
        if may_be_closed
        else PeriodSeal(period)
    )
    closed = seal.seals(closes_at)
    outcome = store.period_outcome(
        ref,
        with_invoice=may_be_closed,
        shape_of=None if now >= end else PeriodRef(account_id, previous_period(period)),
    )
    invoice = outcome.invoice
    active, as_of = _count(store, ref, outcome.counter, invoice, now, sealed=closed)
    subscription = history.billing_subscription(period)
    projection = (
        Projection(active, "closed")
        if closed or now >= end
        else shaped_projection(active, start, end, now, outcome.previous_shape)
    )
    return UsageView(
        account_id=account_id,
        period=period,
        timezone=str(for_period.zone_at(end - timedelta(microseconds=1))),
        period_start=start,
        period_end=end,
        closes_at=closes_at,
        closed=closed,
        as_of=as_of,
        subscription=_subscription(subscription),
        billed=bool(subscription and subscription.billed),
        allowance=subscription.allowance if subscription else None,
        active_contacts=active,
        overusage=_overusage(subscription, active),
        projection=_projection(subscription, projection),
        advice=_advice(subscription, projection, settings, closed),
        alerts=[
            AlertView(
                threshold_percent=alert.threshold_percent,
                allowance=alert.allowance,
                reached_at=alert.reached_at,
            )
            for alert in sorted(outcome.claims.values(), key=_percent)
        ],
        invoice=InvoiceView.of(invoice) if invoice else None,
    )


def _count(
    store: MeteringStore,
    ref: PeriodRef,
    counter: ContactCounter | None,
    invoice: Invoice | None,
    now: datetime,
    *,
    sealed: bool,
) -> tuple[int, datetime]:
    """The period's active contacts and the instant before which every recorded contact is in them: the
    invoice's count, the counter's, or (for a period without counter) an outright count. A sealed period
    takes no new contacts, so its outright count needs no consistent read."""
    if invoice is not None:
        return invoice.lines.active_contacts, now
    if counter is not None:
        return counter.contacts, min(counter.through, now)
    counted = store.contacts.count_up_to(ref, OUTRIGHT_LIMIT, consistent=not sealed)
    if counted is None:
        counted = store.contacts.count(ref, consistent=not sealed)
    return counted, now


def _percent(alert: AlertRecord) -> int:
    return alert.threshold_percent


def _subscription(subscription: Subscription | None) -> SubscriptionView | None:
    if subscription is None:
        return None
    return SubscriptionView(
        plan=subscription.plan,
        billing_cycle=subscription.billing_cycle,
        included_contacts=subscription.included_contacts,
        addon_contacts=subscription.addon_contacts,
    )


def _overusage(subscription: Subscription | None, active: int) -> OverusageView:
    if subscription is None or not subscription.billed:
        return OverusageView(contacts=0, amount_cents=0)
    lines = invoice_lines(subscription, active)
    return OverusageView(contacts=lines.overusage_contacts, amount_cents=lines.amount_cents)


def _projection(subscription: Subscription | None, projection: Projection) -> ProjectionView:
    over = _overusage(subscription, projection.active_contacts)
    return ProjectionView(
        active_contacts=projection.active_contacts,
        overusage_contacts=over.contacts,
        amount_cents=over.amount_cents,
        method=projection.method,
    )


def _advice(
    subscription: Subscription | None, projection: Projection, settings: ReadSettings, closed: bool
) -> AdviceView | None:
    if subscription is None or closed:
        return None
    advice: Advice | None = advise(subscription, projection.active_contacts, settings.plan_prices)
    if advice is None:
        return None
    return AdviceView(
        overusage_contacts=advice.overusage_contacts,
        options=[
            WayOutView(
                option=way.option,
                cost_cents=way.cost_cents,
                plan=way.plan,
                allowance=way.allowance,
                addon_contacts=way.addon_contacts,
            )
            for way in advice.options
        ],
        cheapest=advice.cheapest,
        saves_cents=advice.saves_cents,
    )
