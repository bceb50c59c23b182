"""Domain values passed between the recording and closing logic and the data-access layer."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
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
class CloseState:
    """How far the close of one period has got, for every account at once.

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


class StoreUnavailable(Exception):
    """A transient failure of a backing service (throttling, 5xx, time-out): the work must be retried."""


class ServiceMisconfigured(Exception):
    """A call the service refused for a reason a retry cannot fix (access denied, a missing resource, a
    malformed request): a deployment or programming fault. It fails the invocation, so the function's Errors
    alarm fires on the first occurrence and the records go back to their queue (and on to its DLQ)."""

    def __init__(self, service: str, operation: str, resource: str, code: str, message: str) -> None:
        super().__init__(f"{service} {operation} on {resource} refused: {code}: {message}")
        self.service = service
        self.operation = operation
        self.resource = resource
        self.code = code


class ClaimCheckInvalid(Exception):
    """A claim-check object is missing or holds an invalid contact id: the event is rejected."""


@dataclass(frozen=True, slots=True)
class RetryReason:
    """Why records go back to their queue, and whose they are (an account, or one of its periods)."""

    reason: str
    records: int
    """Records failed for this reason (0 for an account: all its records in the batch)."""
    account_id: str | None = None
    period: str | None = None


@dataclass(slots=True)
class RecordingOutcome:
    """What a batch did; the handler turns it into the partial-batch response and metrics."""

    failed_message_ids: set[str] = field(default_factory=set)
    acknowledged_message_ids: set[str] = field(default_factory=set)
    """Records deleted from their queue before the batch ended (settled): never retried, whatever follows."""
    failed_accounts: set[str] = field(default_factory=set)
    """Accounts all of whose records in the batch failed (a history read or a change's write kept failing)."""
    retry_reasons: list[RetryReason] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)
    events_by_type: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    activations: int = 0
    duplicate_touches: int = 0
    alerts: list[AlertRecord] = field(default_factory=list)
    fanned_out_contacts: int = 0

    @property
    def retried_message_ids(self) -> set[str]:
        """The records SQS must deliver again: failed, and still on their queue."""
        return self.failed_message_ids - self.acknowledged_message_ids

    def fail(self, message_ids: Iterable[str], reason: str, ref: PeriodRef | None = None) -> None:
        """These records go back to their queue (SQS redelivers them)."""
        messages = set(message_ids)
        self.failed_message_ids |= messages
        self.retry_reasons.append(
            RetryReason(reason, len(messages), ref.account_id if ref else None, ref.period if ref else None)
        )

    def fail_account(self, account_id: str, reason: str, message_ids: Iterable[str] = ()) -> None:
        """Every record of the account in the batch goes back to its queue (`recording.held_back` fails the
        ones not named here), so its events are recorded again in delivery order."""
        self.failed_accounts.add(account_id)
        self.failed_message_ids.update(message_ids)
        self.retry_reasons.append(RetryReason(reason, 0, account_id))
