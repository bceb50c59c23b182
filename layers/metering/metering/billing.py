"""InvoiceAccount's use case: bill each account's period that ClosePeriods sealed (`metering.sealing`): count
it, issue its invoice once, publish it.

Billing is idempotent (the invoice is a conditional put, its publication is leased), so a request sent twice,
or a run repeated after a crash, never bills twice. Periods without overusage issue no invoice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import ValidationError

from metering import gateways
from metering.errors import ServiceMisconfigured, StoreUnavailable
from metering.message_parsing import InboundRecord
from metering.model import Invoice, PeriodRef, PeriodSeal, PublicationLease
from metering.outlook import MIN_SHAPE_CONTACTS, PeriodShape
from metering.rules import History, invoice_lines, next_period, previous_period, utc_iso
from metering.sealing import BillingRequest

if TYPE_CHECKING:
    from metering.settings import InvoiceSettings
    from metering.store import MeteringStore

INVOICE_DETAIL_TYPE = "Overusage Invoice Issued"


class InvoicePublishFailed(StoreUnavailable):
    """The invoice is stored but the bus refused it; the billing request is retried and publishes it."""


class NotFencedYet(StoreUnavailable):
    """The period was sealed moments ago: a recording that saw it open may still be writing."""


class BillingOutcome(StrEnum):
    """How billing an account's period ended."""

    INVOICED = "invoiced"
    WITHIN_ALLOWANCE = "within_allowance"
    LEGACY = "legacy"
    UNBILLED = "unbilled"


@dataclass(frozen=True, slots=True)
class BillingResult:
    """One account's billed period: how billing ended, the active contacts it counted, the invoice issued."""

    ref: PeriodRef
    outcome: BillingOutcome
    active_contacts: int
    invoice: Invoice | None


@dataclass(slots=True)
class SealsRead:
    """The period seals one InvoiceAccount invocation has read. Every request it handles was sent after the
    seal it answers, before the invocation began, and a seal only moves forward: one read per period serves
    every account of it in the batch."""

    store: MeteringStore
    _seals: dict[str, PeriodSeal] = field(default_factory=dict)

    def of(self, period: str) -> PeriodSeal:
        if period not in self._seals:
            self._seals[period] = self.store.seals.read_since(period).get(period, PeriodSeal(period))
        return self._seals[period]


@dataclass(frozen=True, slots=True)
class RetriedRequest:
    """A request that met a transient failure: its message returns to the close queue."""

    message_id: str
    request: BillingRequest
    reason: str
    publish_failed: bool


@dataclass(slots=True)
class BillingBatch:
    """What one InvoiceAccount invocation did with its billing requests."""

    results: list[BillingResult] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    """Message id -> why its body is not a billing request (it ends in the close DLQ after its receives)."""
    retried: list[RetriedRequest] = field(default_factory=list)

    @property
    def retried_message_ids(self) -> list[str]:
        """The records SQS must deliver again: the unreadable and the retried."""
        return [*self.unreadable, *(retried.message_id for retried in self.retried)]


def bill_batch(
    messages: Iterable[InboundRecord], store: MeteringStore, settings: InvoiceSettings
) -> BillingBatch:
    """Bill every request of an SQS batch; one request's failure never fails the others."""
    batch = BillingBatch()
    seals = SealsRead(store)
    for message in messages:
        try:
            request = BillingRequest.model_validate_json(message.body)
        except ValidationError as exc:
            batch.unreadable[message.message_id] = str(exc)
            continue
        try:
            result = bill_account(request, store, settings, seals)
        except StoreUnavailable as exc:
            publish_failed = isinstance(exc, InvoicePublishFailed)
            batch.retried.append(RetriedRequest(message.message_id, request, str(exc), publish_failed))
            continue
        if result is not None:
            batch.results.append(result)
    return batch


def bill_account(
    request: BillingRequest, store: MeteringStore, settings: InvoiceSettings, seals: SealsRead
) -> BillingResult | None:
    """Bill one account's sealed period. None when the period is not sealed for this account (a request
    sent too early); NotFencedYet (retried) while a recording that saw it open may still write."""
    ref = request.ref
    seal = seals.of(ref.period)
    history = History.of(store.subscriptions.history(ref.account_id), settings.default_timezone)
    if not seal.seals(history.for_period(ref.period).close_instant(ref.period, settings.grace)):
        return None
    if seal.fenced_at is not None and datetime.now(UTC) < seal.fenced_at:
        raise NotFencedYet(f"{ref.account_id} {ref.period} was sealed moments ago")
    subscription = history.billing_subscription(ref.period)
    if subscription is None:
        return BillingResult(ref, BillingOutcome.UNBILLED, 0, None)
    if not subscription.billed:
        return BillingResult(ref, BillingOutcome.LEGACY, 0, None)
    for_period = history.for_period(ref.period)
    activations = store.contacts.activation_times(ref)
    active = len(activations)
    shape = None
    if active >= MIN_SHAPE_CONTACTS:
        start, end = for_period.period_end(previous_period(ref.period)), for_period.period_end(ref.period)
        shape = PeriodShape.of(activations, start, end)
    lines = invoice_lines(subscription, active)
    if lines.overusage_contacts == 0:
        if shape is not None:
            store.shapes.save_for_next(PeriodRef(ref.account_id, next_period(ref.period)), shape)
        return BillingResult(ref, BillingOutcome.WITHIN_ALLOWANCE, active, None)
    invoice = store.invoices.save(Invoice(ref, lines, issued_at=utc_iso(request.as_of)), shape)
    publish_once(invoice, store, settings)
    return BillingResult(ref, BillingOutcome.INVOICED, invoice.lines.active_contacts, invoice)


def publish_once(invoice: Invoice, store: MeteringStore, settings: InvoiceSettings) -> None:
    """Publish a stored invoice under a lease, so two billers of the same period never both publish it;
    a lease left by a crashed biller expires after the function timeout and the next delivery publishes."""
    now = datetime.now(UTC)
    lease = store.invoices.claim_publication(
        invoice.ref, now, stale_before=now - timedelta(seconds=settings.attempt_timeout_seconds)
    )
    if lease is PublicationLease.PUBLISHED:
        return
    if lease is PublicationLease.BUSY:
        raise StoreUnavailable(f"invoice {invoice.invoice_id} is being published by another run")
    try:
        gateways.publish(settings.event_bus_name, INVOICE_DETAIL_TYPE, [invoice.as_detail()])
    except StoreUnavailable as exc:
        store.invoices.release_publication(invoice.ref, now)
        raise InvoicePublishFailed(invoice.invoice_id) from exc
    except ServiceMisconfigured:
        # the redelivery after the fix publishes at once instead of waiting for the lease to expire
        store.invoices.release_publication(invoice.ref, now)
        raise
    store.invoices.mark_published(invoice.ref, now)
