"""Period close: seal every account's period once its close instant has passed, then bill each billed
account exactly once.

Sealing is one write per period for all accounts at once: the period's close state records the instant up
to which accounts' periods are sealed (`closed_through`); recording reads it with every batch and treats a
sealed period's events as late. Counts are read only after a fence (the longest a recording that saw the
period open may still write), so an invoice always counts exactly what was recorded before its seal.

The billed accounts are found in the subscription history, shard by shard and page by page, so memory stays
bounded whatever their number; a run that nears its deadline saves where it stopped and hands over. Each
account's close is idempotent (the invoice is a conditional put, its publication is leased), so a request
sent twice, or a run repeated after a crash, never bills twice. Periods without overusage write nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from metering import gateways
from metering.fields import Id
from metering.intake import InboundRecord
from metering.model import (
    CloseState,
    Invoice,
    PeriodRef,
    PublicationLease,
    ServiceMisconfigured,
    StoreUnavailable,
)
from metering.outlook import MIN_SHAPE_CONTACTS, PeriodShape
from metering.rules import (
    History,
    Subscription,
    earliest_close,
    invoice_lines,
    latest_close,
    next_period,
    previous_period,
    utc_iso,
)

if TYPE_CHECKING:
    from metering.settings import CloseSettings, InvoiceSettings
    from metering.store import MeteringStore

INVOICE_DETAIL_TYPE = "Overusage Invoice Issued"
HANDOVER_MARGIN_SECONDS = 30.0
"""A run stops taking new pages this long before its deadline, to save its cursor and hand over."""
SEND_CHUNK = 100
"""Close requests held before they are sent: memory stays bounded whatever a shard holds. A request sent
again after a crash, before the cursor moved past it, is idempotent."""
FENCE_MARGIN_SECONDS = 15.0
"""Added to the recording function's timeout: a write sent just before an invocation ends still lands, and
the clocks of two hosts may differ by a little."""


class InvoicePublishFailed(StoreUnavailable):
    """The invoice is stored but the bus refused it; the close request is retried and publishes it."""


class NotFencedYet(StoreUnavailable):
    """The period was sealed moments ago: a recording that saw it open may still be writing."""


class CloseOutcome(StrEnum):
    """How an account's period ended."""

    INVOICED = "invoiced"
    WITHIN_ALLOWANCE = "within_allowance"
    LEGACY = "legacy"
    UNBILLED = "unbilled"


class ScheduledRun(BaseModel):
    """The scheduler's input `{"scheduledTime": ...}`; a run that hands over invokes itself with the same."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    scheduled_time: AwareDatetime = Field(alias="scheduledTime")


class CloseRequest(BaseModel):
    """One account's period to close, as ClosePeriods hands it to InvoiceAccount through the close queue."""

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


@dataclass(slots=True)
class CloseRun:
    """What one scheduled run did."""

    sealed: list[str] = field(default_factory=list)
    requests_sent: int = 0
    handed_over: bool = False

    def response(self, run: ScheduledRun) -> dict[str, Any]:
        """What the invocation returns (the Scheduler ignores it; an operator invoking by hand reads it)."""
        return {
            "scheduledTime": run.scheduled_time.isoformat(),
            "requestsSent": self.requests_sent,
            "handedOver": self.handed_over,
        }


@dataclass(frozen=True, slots=True)
class _Pass:
    """One enumeration: the accounts whose close instant lies in (`after`, `through`], from `cursor` on."""

    period: str
    after: datetime | None
    through: datetime
    shard: int
    account: str | None

    def encode(self) -> str:
        return f"{utc_iso(self.through)}|{self.shard}|{self.account or ''}"

    @classmethod
    def resume(cls, state: CloseState) -> _Pass | None:
        if state.closed_through is None or state.cursor is None:
            return None
        through, shard, account = state.cursor.split("|", 2)
        return cls(
            state.period,
            state.enumerated_through,
            datetime.fromisoformat(through),
            int(shard),
            account or None,
        )


def fence(settings: CloseSettings | InvoiceSettings) -> timedelta:
    """How long after a seal a count may be read: no recording that saw the period open still writes."""
    seconds = settings.recorder_timeout_seconds
    return timedelta(seconds=seconds + FENCE_MARGIN_SECONDS if seconds else 0)


def run_close(
    run: ScheduledRun,
    store: MeteringStore,
    settings: CloseSettings,
    remaining_seconds: Callable[[], float],
) -> CloseRun:
    """Seal every period with activity whose earliest close instant has passed, up to `scheduledTime`, and
    hand every billed account whose period it sealed to InvoiceAccount."""
    as_of = run.scheduled_time
    result = CloseRun()
    for found in sorted(store.close_states.incomplete(), key=lambda s: s.period):
        if earliest_close(found.period, settings.grace) > as_of:
            continue
        state = found
        if found.closed_through is None or found.closed_through < as_of:
            state = store.close_states.seal(found.period, as_of, datetime.now(UTC) + fence(settings))
            result.sealed.append(state.period)
        if not _wait_for_fence(state, remaining_seconds):
            result.handed_over = True
            return result
        if not _enumerate(state, store, settings, remaining_seconds, result):
            result.handed_over = True
            return result
    return result


def _wait_for_fence(state: CloseState, remaining_seconds: Callable[[], float]) -> bool:
    assert state.fenced_at is not None
    wait = (state.fenced_at - datetime.now(UTC)).total_seconds()
    if wait <= 0:
        return True
    if wait > remaining_seconds() - HANDOVER_MARGIN_SECONDS:
        return False
    time.sleep(wait)
    return True


def _enumerate(
    state: CloseState,
    store: MeteringStore,
    settings: CloseSettings,
    remaining_seconds: Callable[[], float],
    result: CloseRun,
) -> bool:
    """Send a close request for every billed account whose period this state has sealed and that has not
    been handed over yet. False when the run must hand over (its cursor is saved)."""
    assert state.closed_through is not None
    current = _Pass.resume(state) or _Pass(
        state.period, state.enumerated_through, state.closed_through, 0, None
    )
    if state.enumerated_through is not None and current.through <= state.enumerated_through:
        return True
    for shard in range(current.shard, len(store.subscriptions.shards())):
        after_account = current.account if shard == current.shard else None
        requests: list[str] = []
        for account_id, changes in _accounts(store.subscriptions.shard_pages(shard, after_account)):
            if _due(changes, current, settings):
                requests.append(
                    CloseRequest(
                        account_id=account_id, period=state.period, as_of=current.through
                    ).model_dump_json(by_alias=True)
                )
            if len(requests) >= SEND_CHUNK:
                _send(settings, requests, result)
                requests = []
            if remaining_seconds() < HANDOVER_MARGIN_SECONDS:
                _send(settings, requests, result)
                stopped_at = replace(current, shard=shard, account=account_id)
                store.close_states.save_cursor(state.period, stopped_at.encode())
                return False
        _send(settings, requests, result)
        store.close_states.save_cursor(state.period, replace(current, shard=shard + 1, account=None).encode())
    complete = current.through >= latest_close(state.period, settings.grace)
    store.close_states.finish_enumeration(state.period, current.through, complete=complete)
    return True


def _accounts(pages: Iterable[list[Subscription]]) -> Iterator[tuple[str, list[Subscription]]]:
    """Group a shard's changes by account across page boundaries (they are sorted by account)."""
    account: str | None = None
    changes: list[Subscription] = []
    for page in pages:
        for change in page:
            if change.account_id != account and account is not None:
                yield account, changes
                changes = []
            account = change.account_id
            changes.append(change)
    if account is not None:
        yield account, changes


def _due(changes: list[Subscription], current: _Pass, settings: CloseSettings) -> bool:
    history = History.of(changes, settings.default_timezone)
    instant = history.for_period(current.period).close_instant(current.period, settings.grace)
    in_pass = instant <= current.through and (current.after is None or instant > current.after)
    subscription = history.billing_subscription(current.period)
    return in_pass and subscription is not None and subscription.billed


def _send(settings: CloseSettings, requests: list[str], result: CloseRun) -> None:
    gateways.send_messages(settings.close_queue_url, requests)
    result.requests_sent += len(requests)


@dataclass(slots=True)
class CloseStatesRead:
    """The close states one InvoiceAccount invocation has read. Every request it handles was sent after the
    seal it answers, before the invocation began, and a state only moves forward: one read per period
    serves every account of it in the batch."""

    store: MeteringStore
    _states: dict[str, CloseState] = field(default_factory=dict)

    def of(self, period: str) -> CloseState:
        if period not in self._states:
            self._states[period] = self.store.close_states.read_since(period).get(period, CloseState(period))
        return self._states[period]


@dataclass(frozen=True, slots=True)
class CloseRetried:
    """A request that meets a transient failure: its message returns to the close queue."""

    request: CloseRequest
    reason: str
    publish_failed: bool


@dataclass(slots=True)
class CloseBatch:
    """What one InvoiceAccount invocation did with its close requests; `failed_message_ids` go back to the
    queue (an unreadable one ends in the close DLQ after its receives)."""

    closed: list[CloseResult] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    retried: list[CloseRetried] = field(default_factory=list)
    failed_message_ids: list[str] = field(default_factory=list)


def close_batch(
    messages: Iterable[InboundRecord], store: MeteringStore, settings: InvoiceSettings
) -> CloseBatch:
    """Close every request of an SQS batch; one request's failure never fails the others."""
    batch = CloseBatch()
    states = CloseStatesRead(store)
    for message in messages:
        try:
            request = CloseRequest.model_validate_json(message.body)
        except ValidationError as exc:
            batch.unreadable[message.message_id] = str(exc)
            batch.failed_message_ids.append(message.message_id)
            continue
        try:
            result = close_account(request, store, settings, states)
        except StoreUnavailable as exc:
            batch.retried.append(CloseRetried(request, str(exc), isinstance(exc, InvoicePublishFailed)))
            batch.failed_message_ids.append(message.message_id)
            continue
        if result is not None:
            batch.closed.append(result)
    return batch


def close_account(
    request: CloseRequest, store: MeteringStore, settings: InvoiceSettings, states: CloseStatesRead
) -> CloseResult | None:
    """Bill one account's sealed period. None when the period is not sealed for this account (a request
    sent too early); NotFencedYet (retried) while a recording that saw it open may still write."""
    ref = request.ref
    state = states.of(ref.period)
    history = History.of(store.subscriptions.history(ref.account_id), settings.default_timezone)
    if not state.seals(history.for_period(ref.period).close_instant(ref.period, settings.grace)):
        return None
    if state.fenced_at is not None and datetime.now(UTC) < state.fenced_at:
        raise NotFencedYet(f"{ref.account_id} {ref.period} was sealed moments ago")
    subscription = history.billing_subscription(ref.period)
    if subscription is None:
        return CloseResult(ref, CloseOutcome.UNBILLED, 0, None)
    if not subscription.billed:
        return CloseResult(ref, CloseOutcome.LEGACY, 0, None)
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
        return CloseResult(ref, CloseOutcome.WITHIN_ALLOWANCE, active, None)
    invoice = store.invoices.save(Invoice(ref, lines, issued_at=utc_iso(request.as_of)), shape)
    publish_once(invoice, store, settings)
    return CloseResult(ref, CloseOutcome.INVOICED, invoice.lines.active_contacts, invoice)


def publish_once(invoice: Invoice, store: MeteringStore, settings: InvoiceSettings) -> None:
    """Publish a stored invoice under a lease, so two closers of the same period never both publish it;
    a lease left by a crashed closer expires after the function timeout and the next delivery publishes."""
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
