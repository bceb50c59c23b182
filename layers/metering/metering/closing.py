"""Period close: find due periods, seal each, issue its overusage invoice exactly once, publish it.

Every step is idempotent, so a run that dies half-way is finished by the next one:
seal (`closedAt` set once) -> invoice stored by a conditional put -> published, then marked published ->
period taken off the open-periods index. A period stays on the index until its last step is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from metering import gateways
from metering.fields import Id
from metering.model import Invoice, PeriodRef, StoreUnavailable
from metering.rules import invoice_lines, subscription_at, utc_iso

if TYPE_CHECKING:
    from metering.settings import CloseSettings, InvoiceSettings
    from metering.store import DynamoStore

INVOICE_DETAIL_TYPE = "Overusage Invoice Issued"


class InvoicePublishFailed(StoreUnavailable):
    """The invoice is stored but the bus refused it; the close request is retried and publishes it."""


class CloseOutcome(StrEnum):
    """How a period ended, stored on its summary."""

    INVOICED = "invoiced"
    WITHIN_ALLOWANCE = "within_allowance"
    LEGACY = "legacy"
    UNBILLED = "unbilled"


class ScheduledRun(BaseModel):
    """The scheduler's input: `{"scheduledTime": "<aws.scheduler.scheduled-time>"}`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    scheduled_time: AwareDatetime = Field(alias="scheduledTime")


class CloseRequest(BaseModel):
    """One period to close, as ClosePeriods hands it to InvoiceAccount through the close queue."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    account_id: Id = Field(alias="accountId")
    period: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
    as_of: AwareDatetime = Field(alias="asOf")

    @property
    def ref(self) -> PeriodRef:
        return PeriodRef(self.account_id, self.period)


@dataclass(frozen=True, slots=True)
class CloseResult:
    ref: PeriodRef
    outcome: CloseOutcome
    active_contacts: int
    invoice: Invoice | None


def schedule_due_closes(run: ScheduledRun, store: DynamoStore, settings: CloseSettings) -> list[CloseRequest]:
    """Find every period whose end plus grace has passed and queue one close request per period."""
    as_of = run.scheduled_time
    due = store.due_periods(as_of - settings.grace)
    requests = [
        CloseRequest(account_id=ref.account_id, period=ref.period, as_of=as_of) for ref in sorted(due)
    ]
    gateways.send_messages(
        settings.close_queue_url, [request.model_dump_json(by_alias=True) for request in requests]
    )
    return requests


def close_period(request: CloseRequest, store: DynamoStore, settings: InvoiceSettings) -> CloseResult | None:
    """Seal one period and bill it. None when the period is not due yet (a request sent too early)."""
    ref = request.ref
    summary = store.seal_period(ref, request.as_of, period_end_before=request.as_of - settings.grace)
    if summary is None or summary.period_end is None:
        return None
    period_end = datetime.fromisoformat(summary.period_end)
    history = store.load_subscriptions([ref.account_id])[ref.account_id]
    subscription = subscription_at(history, period_end, inclusive=False)
    invoice: Invoice | None = None
    if subscription is None:
        outcome = CloseOutcome.UNBILLED
    elif not subscription.billed:
        outcome = CloseOutcome.LEGACY
    else:
        lines = invoice_lines(subscription, summary.active_contacts)
        if lines.overusage_contacts == 0:
            outcome = CloseOutcome.WITHIN_ALLOWANCE
        else:
            outcome = CloseOutcome.INVOICED
            invoice = store.save_invoice(Invoice(ref, lines, issued_at=utc_iso(request.as_of)))
            publish_once(invoice, store, settings)
    store.finish_close(ref, outcome)
    return CloseResult(ref, outcome, summary.active_contacts, invoice)


def publish_once(invoice: Invoice, store: DynamoStore, settings: InvoiceSettings) -> None:
    """Publish a stored invoice under a lease, so two closers of the same period never both publish it;
    a lease left by a crashed closer expires after the function timeout and the next delivery publishes."""
    now = datetime.now(UTC)
    lease = store.claim_invoice_publication(
        invoice.ref, now, stale_before=now - timedelta(seconds=settings.attempt_timeout_seconds)
    )
    if lease == "published":
        return
    if lease == "busy":
        raise StoreUnavailable(f"invoice {invoice.invoice_id} is being published by another run")
    try:
        gateways.publish(settings.event_bus_name, INVOICE_DETAIL_TYPE, [invoice.as_detail()])
    except StoreUnavailable as exc:
        store.release_invoice_publication(invoice.ref, now)
        raise InvoicePublishFailed(invoice.invoice_id) from exc
    store.mark_invoice_published(invoice.ref, now)
