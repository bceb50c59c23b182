"""Usage alert rules: which thresholds a batch's new contacts cross (pure), and their publication.

A threshold of a period is crossed by the first contact, in delivery order, that takes the period's count to
`percent` of the allowance of the subscription in effect for the event that made that contact active.
Each threshold is claimed once per period by a conditional write; the claimer publishes it. A claim whose
publication failed is published by a later batch of the period once its claimer can no longer be running.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from metering import gateways
from metering.model import Activation, AlertRecord, PeriodRef
from metering.placement import EventSubscription, Unread
from metering.retrying import CLOCK
from metering.rules import PLANS, Subscription, threshold_contacts, utc_iso

if TYPE_CHECKING:
    from metering.retrying import RetryBudget
    from metering.store import MeteringStore

USAGE_ALERT_DETAIL_TYPE = "Usage Threshold Reached"


def crossings(
    ref: PeriodRef,
    *,
    thresholds: Sequence[int],
    claimed: Collection[int],
    count_before: int,
    new_contacts: Sequence[tuple[Activation, Subscription | None]],
    now: int,
    claimer: str,
) -> list[AlertRecord]:
    """The thresholds `new_contacts` (in delivery order, after `count_before` active contacts) cross for
    the first time, each with the allowance and plan of the subscription of the event that crossed it, to be
    claimed at `now` by `claimer`."""
    crossed: list[AlertRecord] = []
    open_thresholds = sorted(set(thresholds) - set(claimed))
    for position, (activation, subscription) in enumerate(new_contacts, start=1):
        if subscription is None or not subscription.billed:
            continue
        count = count_before + position
        for percent in [p for p in open_thresholds if count >= threshold_contacts(subscription.allowance, p)]:
            open_thresholds.remove(percent)
            crossed.append(
                AlertRecord(
                    ref,
                    percent,
                    subscription.allowance,
                    count,
                    subscription.plan,
                    utc_iso(activation.occurred_at),
                    now,
                    claimer,
                )
            )
    return crossed


SMALLEST_ALLOWANCE = min(plan.included_contacts for plan in PLANS.values() if plan.billed)
"""The least allowance any billed subscription has (add-ons only raise it): what an unread one may have."""


def lowest_need(
    thresholds: Iterable[int], claimed: Collection[int], subscriptions: Iterable[EventSubscription]
) -> int | None:
    """The smallest count at which any unclaimed threshold could be reached for these subscriptions (an
    unread one may be any billed subscription); None when no threshold can be (nothing billed, or every
    threshold claimed)."""
    allowances = {
        SMALLEST_ALLOWANCE if isinstance(subscription, Unread) else subscription.allowance
        for subscription in subscriptions
        if isinstance(subscription, Unread) or (subscription is not None and subscription.billed)
    }
    needs = [
        threshold_contacts(allowance, percent)
        for allowance in allowances
        for percent in thresholds
        if percent not in claimed
    ]
    return min(needs, default=None)


def overdue(claims: Iterable[AlertRecord], claimer_timeout_seconds: float) -> list[AlertRecord]:
    """Claims whose publication is still missing although their claimer can no longer be running."""
    now = CLOCK.wall()
    return [a for a in claims if not a.published and now - a.claimed_at >= claimer_timeout_seconds]


@dataclass(frozen=True, slots=True)
class AlertChannels:
    """Where alerts go: the bus (always) and the customer topic (an e-mail copy, when configured)."""

    event_bus_name: str
    topic_arn: str


def publish(
    store: MeteringStore,
    channels: AlertChannels,
    ref: PeriodRef,
    alerts: Sequence[AlertRecord],
    budget: RetryBudget,
) -> None:
    """Put the alerts on the bus (and the topic), then mark them published; each step tried again within
    `budget` (publication is at least once: consumers deduplicate)."""
    if not alerts:
        return
    details = [alert_detail(alert) for alert in alerts]
    budget.call(lambda: gateways.publish(channels.event_bus_name, USAGE_ALERT_DETAIL_TYPE, details))
    if channels.topic_arn:
        for alert in alerts:
            subject, message = alert_notification(alert)
            attributes: dict[str, str | int] = {
                "accountId": alert.ref.account_id,
                "thresholdPercent": alert.threshold_percent,
            }
            budget.call(partial(gateways.notify, channels.topic_arn, subject, message, attributes))
    percents = [alert.threshold_percent for alert in alerts]
    budget.call(lambda: store.alerts.mark_published(ref, percents))


def alert_detail(alert: AlertRecord) -> dict[str, Any]:
    """The `Usage Threshold Reached` event detail."""
    return {
        "accountId": alert.ref.account_id,
        "period": alert.ref.period,
        "thresholdPercent": alert.threshold_percent,
        "activeContacts": alert.active_contacts,
        "allowance": alert.allowance,
        "plan": alert.plan,
        "reachedAt": alert.reached_at,
    }


def alert_notification(alert: AlertRecord) -> tuple[str, str]:
    """Subject and text of the e-mail a usage alert sends."""
    ref = alert.ref
    subject = f"Active contacts: {ref.account_id} reached {alert.threshold_percent} % in {ref.period}"
    text = (
        f"Account {ref.account_id} has {alert.active_contacts} active contacts in {ref.period}, "
        f"{alert.threshold_percent} % of its allowance of {alert.allowance} (plan {alert.plan}).\n"
        "Contacts above the allowance are billed at EUR 0.25 each at the end of the month; "
        "add-on contacts bought in advance cost less."
    )
    return subject, text
