"""Operator checks over a deployed table: recount the running counts, explain a period's charge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from metering import gateways
from metering.model import PeriodRef
from metering.rules import account_timezone, addon_cost_cents, invoice_lines, period_of, subscription_at

if TYPE_CHECKING:
    from metering.store import DynamoStore


@dataclass(frozen=True, slots=True)
class Recount:
    ref: PeriodRef
    running_count: int
    contact_items: int

    @property
    def consistent(self) -> bool:
        return self.running_count == self.contact_items


def recount(store: DynamoStore, ref: PeriodRef | None = None) -> list[Recount]:
    """Compare each period's running `activeContacts` with its contact items, counted one by one."""
    summaries = (
        [s for s in [store.summary(ref)] if s] if ref else sorted(store.summaries(), key=lambda s: s.ref)
    )
    return [Recount(s.ref, s.active_contacts, store.count_contacts(s.ref)) for s in summaries]


def explain(store: DynamoStore, ref: PeriodRef) -> dict[str, Any]:
    """Why a period was billed what it was: its count, close outcome and every active contact with the
    first event that made it active (type, id, time), oldest first."""
    summary = store.summary(ref)
    contacts = sorted(store.contacts(ref), key=lambda c: (c.first_occurred_at, c.contact_id))
    return {
        "accountId": ref.account_id,
        "period": ref.period,
        "activeContacts": summary.active_contacts if summary else 0,
        "closed": bool(summary and summary.closed_at),
        "outcome": summary.outcome if summary else None,
        "contacts": [
            {
                "contactId": c.contact_id,
                "firstEventId": c.first_event_id,
                "firstDetailType": c.first_detail_type,
                "firstOccurredAt": c.first_occurred_at,
            }
            for c in contacts
        ],
    }


def list_rejected(store: DynamoStore, month: str) -> list[dict[str, str]]:
    """Events rejected in a month (by time of receipt), with their reasons."""
    return [
        {"eventId": event_id, "reason": reason, "receivedAt": received_at}
        for event_id, reason, received_at, _ in store.list_rejections(month)
    ]


def replay_rejected(
    store: DynamoStore, month: str, event_id: str, queue_url: str, corrected_body: str | None = None
) -> str:
    """Send a rejected event (as stored, or corrected by the operator) back to the activity queue with its
    original id, and forget the rejection. Recording is idempotent, so a replay counts at most once."""
    stored = {rejected_id: raw for rejected_id, _, _, raw in store.list_rejections(month)}
    if event_id not in stored:
        raise LookupError(f"no rejected event {event_id!r} in {month}")
    body = corrected_body if corrected_body is not None else stored[event_id]
    gateways.send_messages(queue_url, [body])
    store.delete_rejection(month, event_id)
    return body


def current_usage(
    store: DynamoStore, account_id: str, now: datetime, default_timezone: str
) -> dict[str, Any]:
    """An account's open period as support and the customer see it: active contacts, allowance, what the
    overusage would cost if the month ended now, and what the same contacts would cost as add-ons."""
    history = store.load_subscriptions([account_id])[account_id]
    tz = account_timezone(history, now, default_timezone)
    ref = PeriodRef(account_id, period_of(now, tz))
    summary = store.summary(ref)
    active = summary.active_contacts if summary else 0
    subscription = subscription_at(history, now)
    usage: dict[str, Any] = {"accountId": account_id, "period": ref.period, "activeContacts": active}
    if subscription is None or not subscription.billed:
        return {**usage, "plan": subscription.plan if subscription else None, "billed": False}
    lines = invoice_lines(subscription, active)
    return {
        **usage,
        "plan": subscription.plan,
        "billingCycle": subscription.billing_cycle,
        "billed": True,
        "allowance": lines.allowance,
        "overusageContacts": lines.overusage_contacts,
        "projectedOverusageCents": lines.amount_cents,
        "sameContactsAsAddonsCents": addon_cost_cents(subscription, lines.overusage_contacts),
        "currency": lines.currency,
    }
