"""Domain values passed between recording, sealing, billing, the read side and the data-access layer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from metering.rules import InvoiceLines


@dataclass(frozen=True, slots=True, order=True)
class PeriodRef:
    """One account's billing month: the unit of counting, alerting and invoicing."""

    account_id: str
    period: str


@dataclass(frozen=True, slots=True)
class Activation:
    """A contact made active in a period by an event: the first event delivered that touched it."""

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


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """A usage alert claimed for one threshold of one period."""

    ref: PeriodRef
    threshold_percent: int
    allowance: int
    active_contacts: int
    plan: str
    reached_at: str
    claimed_at: int = 0
    """When the claim was written (epoch seconds): a claim whose claimer may still publish it is left be."""
    claimer: str = ""
    """A token of the attempt that wrote the claim: a second try of the same write knows it as its own."""
    published: bool = False


@dataclass(frozen=True, slots=True)
class PeriodSeal:
    """How far the close of one period has got, for every account at once (stored as its close state item).

    An account's period is sealed once its close instant (end in the account's zone + grace) is at or before
    `closed_through`; its invoice may be computed once `fenced_at` has passed (no recording that saw the
    period open can still be writing). `enumerated_through` says up to which close instant the accounts
    have been handed to InvoiceAccount; `cursor` where an unfinished enumeration stopped."""

    period: str
    closed_through: datetime | None = None
    fenced_at: datetime | None = None
    enumerated_through: datetime | None = None
    cursor: str | None = None
    complete: bool = False

    def seals(self, close_instant: datetime) -> bool:
        return self.complete or (self.closed_through is not None and close_instant <= self.closed_through)


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


class PublicationLease(StrEnum):
    """What taking the lease to publish an invoice found."""

    CLAIMED = "claimed"
    PUBLISHED = "published"
    BUSY = "busy"


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
