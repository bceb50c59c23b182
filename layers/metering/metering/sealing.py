"""ClosePeriods' use case: seal every account's period once its close instant has passed, then hand each
billed account to InvoiceAccount (`metering.billing`) through the close queue.

Sealing is one write per period for all accounts at once: the period's seal records the instant up to which
accounts' periods are sealed (`closed_through`); recording reads it with every batch and treats a sealed
period's events as late. The seal also sets a fence (the longest a recording that saw the period open may
still write), so an invoice always counts exactly what was recorded before its seal.

The billed accounts are found in the subscription history, shard by shard and page by page, so memory stays
bounded whatever their number; a run that nears its deadline saves where it stopped and hands over. A
request sent twice is harmless: billing is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from metering import gateways
from metering.fields import Id
from metering.model import PeriodRef, PeriodSeal
from metering.rules import History, Subscription, earliest_close, latest_close, utc_iso

if TYPE_CHECKING:
    from metering.settings import CloseSettings
    from metering.store import MeteringStore

HANDOVER_MARGIN_SECONDS = 30.0
"""A run stops taking new pages this long before its deadline, to save its cursor and hand over."""
SEND_CHUNK = 100
"""Billing requests held before they are sent: memory stays bounded whatever a shard holds. A request sent
again after a crash, before the cursor moved past it, is idempotent."""
FENCE_MARGIN_SECONDS = 15.0
"""Added to the recording function's timeout: a write sent just before an invocation ends still lands, and
the clocks of two hosts may differ by a little."""


class ScheduledRun(BaseModel):
    """The scheduler's input `{"scheduledTime": ...}`; a run that hands over invokes itself with the same."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    scheduled_time: AwareDatetime = Field(alias="scheduledTime")


class BillingRequest(BaseModel):
    """One account's sealed period to bill, as ClosePeriods sends it to InvoiceAccount on the close queue."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    account_id: Id = Field(alias="accountId")
    period: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
    as_of: AwareDatetime = Field(alias="asOf")

    @property
    def ref(self) -> PeriodRef:
        return PeriodRef(self.account_id, self.period)


@dataclass(slots=True)
class SealingRun:
    """What one scheduled run of ClosePeriods did."""

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
class _AccountScan:
    """One scan of the subscription shards for the accounts whose close instant lies in (`after`, `through`],
    from (`shard`, `account`) on; saved as the seal's cursor when a run hands over."""

    period: str
    after: datetime | None
    through: datetime
    shard: int
    account: str | None

    def encode(self) -> str:
        return f"{utc_iso(self.through)}|{self.shard}|{self.account or ''}"

    @classmethod
    def resume(cls, seal: PeriodSeal) -> _AccountScan | None:
        if seal.closed_through is None or seal.cursor is None:
            return None
        through, shard, account = seal.cursor.split("|", 2)
        return cls(
            seal.period,
            seal.enumerated_through,
            datetime.fromisoformat(through),
            int(shard),
            account or None,
        )


def fence(settings: CloseSettings) -> timedelta:
    """How long after a seal a count may be read: no recording that saw the period open still writes."""
    seconds = settings.recorder_timeout_seconds
    return timedelta(seconds=seconds + FENCE_MARGIN_SECONDS if seconds else 0)


def seal_and_hand_over(
    run: ScheduledRun,
    store: MeteringStore,
    settings: CloseSettings,
    remaining_seconds: Callable[[], float],
) -> SealingRun:
    """Seal every period with activity whose earliest close instant has passed, up to `scheduledTime`, and
    hand every billed account whose period it sealed to InvoiceAccount."""
    as_of = run.scheduled_time
    result = SealingRun()
    for found in sorted(store.seals.incomplete(), key=lambda seal: seal.period):
        if earliest_close(found.period, settings.grace) > as_of:
            continue
        seal = found
        if found.closed_through is None or found.closed_through < as_of:
            seal = store.seals.seal(found.period, as_of, datetime.now(UTC) + fence(settings))
            result.sealed.append(seal.period)
        if not _wait_for_fence(seal, remaining_seconds):
            result.handed_over = True
            return result
        if not _enumerate(seal, store, settings, remaining_seconds, result):
            result.handed_over = True
            return result
    return result


def _wait_for_fence(seal: PeriodSeal, remaining_seconds: Callable[[], float]) -> bool:
    assert seal.fenced_at is not None
    wait = (seal.fenced_at - datetime.now(UTC)).total_seconds()
    if wait <= 0:
        return True
    if wait > remaining_seconds() - HANDOVER_MARGIN_SECONDS:
        return False
    time.sleep(wait)
    return True


def _enumerate(
    seal: PeriodSeal,
    store: MeteringStore,
    settings: CloseSettings,
    remaining_seconds: Callable[[], float],
    result: SealingRun,
) -> bool:
    """Send a billing request for every billed account whose period this seal has sealed and that has not
    been handed over yet. False when the run must hand over (its cursor is saved)."""
    assert seal.closed_through is not None
    current = _AccountScan.resume(seal) or _AccountScan(
        seal.period, seal.enumerated_through, seal.closed_through, 0, None
    )
    if seal.enumerated_through is not None and current.through <= seal.enumerated_through:
        return True
    for shard in range(current.shard, len(store.subscriptions.shards())):
        after_account = current.account if shard == current.shard else None
        requests: list[str] = []
        for account_id, changes in _accounts(store.subscriptions.shard_pages(shard, after_account)):
            if _due(changes, current, settings):
                requests.append(
                    BillingRequest(
                        account_id=account_id, period=seal.period, as_of=current.through
                    ).model_dump_json(by_alias=True)
                )
            if len(requests) >= SEND_CHUNK:
                _send(settings, requests, result)
                requests = []
            if remaining_seconds() < HANDOVER_MARGIN_SECONDS:
                _send(settings, requests, result)
                stopped_at = replace(current, shard=shard, account=account_id)
                store.seals.save_cursor(seal.period, stopped_at.encode())
                return False
        _send(settings, requests, result)
        store.seals.save_cursor(seal.period, replace(current, shard=shard + 1, account=None).encode())
    complete = current.through >= latest_close(seal.period, settings.grace)
    store.seals.finish_enumeration(seal.period, current.through, complete=complete)
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


def _due(changes: list[Subscription], current: _AccountScan, settings: CloseSettings) -> bool:
    history = History.of(changes, settings.default_timezone)
    instant = history.for_period(current.period).close_instant(current.period, settings.grace)
    in_scan = instant <= current.through and (current.after is None or instant > current.after)
    subscription = history.billing_subscription(current.period)
    return in_scan and subscription is not None and subscription.billed


def _send(settings: CloseSettings, requests: list[str], result: SealingRun) -> None:
    gateways.send_messages(settings.close_queue_url, requests)
    result.requests_sent += len(requests)
