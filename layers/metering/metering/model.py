"""Domain values passed between the recording and closing logic and the data-access layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from metering.rules import InvoiceLines


@dataclass(frozen=True, slots=True, order=True)
class PeriodRef:
    """One account's billing month: the unit of counting, alerting and invoicing."""

    account_id: str
    period: str


@dataclass(frozen=True, slots=True)
class Activation:
    """A contact touched by an event in a period: a candidate to become active."""

    ref: PeriodRef
    contact_id: str
    event_id: str
    detail_type: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class ContactRecord:
    """A stored active contact and the first event that made it active."""

    contact_id: str
    first_event_id: str
    first_detail_type: str
    first_occurred_at: str
    attempt: str


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """A usage alert that has been claimed for one threshold of one period."""

    ref: PeriodRef
    threshold_percent: int
    allowance: int
    active_contacts: int
    plan: str
    reached_at: str
    claimed_at: int = 0
    """When the claim was written (epoch seconds): a claim whose batch may still be publishing is left be."""


@dataclass(slots=True)
class PeriodSummary:
    """The running state of a period: exact active-contact count, alerts claimed, close status."""

    ref: PeriodRef
    active_contacts: int = 0
    closed_at: str | None = None
    outcome: str | None = None
    period_end: str | None = None
    alerted_percents: frozenset[int] = field(default_factory=frozenset)
    unpublished_alerts: tuple[AlertRecord, ...] = ()
    recent_attempts: dict[str, int] = field(default_factory=dict)
    """Write attempts applied in the last minutes (token -> epoch seconds): the idempotency record."""


@dataclass(frozen=True, slots=True)
class Invoice:
    """An overusage invoice: issued at most once per period, identified by account and period."""

    ref: PeriodRef
    lines: InvoiceLines
    issued_at: str

    @property
    def invoice_id(self) -> str:
        return f"{self.ref.account_id}:{self.ref.period}"

    def as_detail(self) -> dict[str, object]:
        """The invoice in the wire form of SPEC §3 (camelCase, integers)."""
        lines = self.lines
        return {
            "invoiceId": self.invoice_id,
            "accountId": self.ref.account_id,
            "period": self.ref.period,
            "plan": lines.plan,
            "billingCycle": lines.billing_cycle,
            "includedContacts": lines.included_contacts,
            "addonContacts": lines.addon_contacts,
            "allowance": lines.allowance,
            "activeContacts": lines.active_contacts,
            "overusageContacts": lines.overusage_contacts,
            "unitPriceCents": lines.unit_price_cents,
            "amountCents": lines.amount_cents,
            "currency": lines.currency,
            "issuedAt": self.issued_at,
        }


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event that will never be counted, kept with its reason and raw body for an operator to replay."""

    event_id: str
    reason: str
    raw: str
    received_at: str


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event for a period that had already closed: kept and counted, never billed."""

    ref: PeriodRef
    event_id: str
    detail_type: str
    occurred_at: str
    received_at: str


class StoreUnavailable(Exception):
    """A transient failure of a backing service (throttling, 5xx, timeout): the work must be retried."""


class PeriodClosed(Exception):
    """The period was sealed before this write: its events are late."""


class ClaimCheckInvalid(Exception):
    """A claim-check object is missing or holds an invalid contact id: the event is rejected."""
