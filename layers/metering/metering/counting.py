"""CountContacts: keep the contact counter of every large period from the table's stream of new contacts.

A small period is counted outright by whoever reads it (a few KB); a period gets a counter once a scan finds
`COUNTER_FROM` contacts in it. Scans are triggered by sampled contacts, so a small period is scanned about
once in `SAMPLING` contacts and never written to. A redelivered stream batch adds nothing twice: each counter
holds the last sequence number applied per shard (docs/design.md#contact-counters).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from metering.errors import StoreUnavailable
from metering.model import PeriodRef
from metering.retrying import RetryBudget
from metering.store.counters import (
    LANE_RETENTION,
    MARK_ATTEMPTS,
    ContactCounter,
    LaneMark,
    Snapshot,
    digest,
    lane_attribute,
)

if TYPE_CHECKING:
    from metering.store import MeteringStore

COUNTER_FROM = 24
"""Contacts from which a period gets a counter. Below it the usage view counts outright: a consistent count of
48 contact items reads 2 units of 4 KB, and sampling makes a counterless period above 48 rare
(`OUTRIGHT_LIMIT` in metering.usage_view)."""
SAMPLING = 4
"""One contact in this many (by digest) makes its counterless period scanned; so does a batch with this many
of its contacts."""
SNAPSHOT_RELEVANCE = timedelta(seconds=60)
"""After a bootstrap scan ends, how long a streamed contact may be one it counted: a contact the scan saw was
stored before it ended, and its stream record carries that time (give or take the clocks' skew)."""


@dataclass(frozen=True, slots=True)
class StreamedContact:
    """A new contact item as the stream reports it."""

    ref: PeriodRef
    contact_id: str
    sequence: int
    created_at: datetime


@dataclass(slots=True)
class CountOutcome:
    """What one stream batch did: contacts added per period, periods that got a counter, and the records to
    hand back to the stream (their periods' writes kept failing)."""

    added: dict[PeriodRef, int] = field(default_factory=dict)
    bootstrapped: list[PeriodRef] = field(default_factory=list)
    failed: list[StreamedContact] = field(default_factory=list)

    @property
    def first_failed_sequence(self) -> int | None:
        return min((record.sequence for record in self.failed), default=None)


def is_sampled(contact_id: str) -> bool:
    return hashlib.blake2b(contact_id.encode("utf-8"), digest_size=1).digest()[0] % SAMPLING == 0


def count_contacts(
    records: Sequence[StreamedContact], lane: str, store: MeteringStore, budget: RetryBudget
) -> CountOutcome:
    """Apply one stream batch from `lane` (its shard) to the counters of its periods."""
    outcome = CountOutcome()
    by_period: dict[PeriodRef, list[StreamedContact]] = defaultdict(list)
    for record in sorted(records, key=_sequence):
        by_period[record.ref].append(record)
    counters, unread = store.counters.read_settled(by_period)
    for ref, period_records in by_period.items():
        if ref in unread:
            outcome.failed.extend(period_records)
            continue
        try:
            counter = counters.get(ref)
            if counter is not None:
                outcome.added[ref] = _apply(store, counter, lane, period_records, budget)
            elif is_sampled_period(period_records) and _bootstrap(store, ref, lane, period_records, budget):
                outcome.bootstrapped.append(ref)
        except StoreUnavailable:
            outcome.failed.extend(period_records)
    return outcome


def is_sampled_period(records: Sequence[StreamedContact]) -> bool:
    return len(records) >= SAMPLING or any(is_sampled(record.contact_id) for record in records)


def _bootstrap(
    store: MeteringStore,
    ref: PeriodRef,
    lane: str,
    records: Sequence[StreamedContact],
    budget: RetryBudget,
) -> bool:
    """Give a period its counter if a consistent scan finds `COUNTER_FROM` contacts: the scan's count, plus
    the batch's contacts it did not see. True when the period now has a counter."""
    scan = budget.call(lambda: store.counters.scan(ref))
    if len(scan.contact_ids) < COUNTER_FROM:
        return False
    snapshot = budget.call(lambda: store.counters.save_snapshot(ref, scan, SNAPSHOT_RELEVANCE))
    unseen = [record for record in records if not _in_snapshot(record, snapshot)]
    counter = ContactCounter(ref, len(snapshot), scan.started)
    _write(store, counter, lane, records, len(unseen), budget, snapshot.until)
    return True


def _apply(
    store: MeteringStore,
    counter: ContactCounter,
    lane: str,
    records: Sequence[StreamedContact],
    budget: RetryBudget,
) -> int:
    """Add the records past the lane's mark that the bootstrap scan did not count; the number added."""
    for _ in range(MARK_ATTEMPTS):
        pending = [record for record in records if record.sequence > counter.mark(lane)]
        if not pending:
            return 0
        added = _not_counted_at_bootstrap(store, counter, pending, budget)
        stored = _write(store, counter, lane, pending, added, budget)
        if stored is None:
            return added
        counter = stored
    raise StoreUnavailable(f"the counter of {counter.ref} kept moving under lane {lane}")


def _not_counted_at_bootstrap(
    store: MeteringStore, counter: ContactCounter, records: Sequence[StreamedContact], budget: RetryBudget
) -> int:
    """How many of `records` the bootstrap scan did not count (read only while it can have counted them)."""
    until = counter.snapshot_until
    if until is None or all(record.created_at > until for record in records):
        return len(records)
    snapshot = budget.call(lambda: store.counters.read_snapshot(counter.ref))
    return sum(1 for record in records if not _in_snapshot(record, snapshot))


def _write(
    store: MeteringStore,
    counter: ContactCounter,
    lane: str,
    records: Sequence[StreamedContact],
    added: int,
    budget: RetryBudget,
    snapshot_until: datetime | None = None,
) -> ContactCounter | None:
    newest = records[-1]
    stale = [
        name
        for name, mark in counter.marks.items()
        if mark.at < newest.created_at - LANE_RETENTION and name != lane_attribute(lane)
    ]
    return budget.call(
        lambda: store.counters.apply(
            counter,
            lane,
            LaneMark(newest.sequence, newest.created_at),
            added,
            stale,
            snapshot_until,
        )
    )


def _in_snapshot(record: StreamedContact, snapshot: Snapshot) -> bool:
    return record.created_at <= snapshot.until and digest(record.contact_id) in snapshot.digests


def _sequence(record: StreamedContact) -> int:
    return record.sequence
