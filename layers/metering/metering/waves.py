"""Groups and waves: a large batch cut into parts that finish one after another, so that it can delete the
records each part settles before it starts the next. Groups are sets of whole accounts; waves are the contact
writes a group has left after its reads.

A period's contacts are written and alerted in delivery order. A large period may be cut into consecutive
slices, each written and then alerted before the next is written: exactly as if its events had come in
consecutive batches, which changes nothing (delivery order decides, never batching). Contacts an earlier try
of the batch already wrote all fall in a period's first slice, so the count after a slice's writes is always
the count before the slice plus the slice's own contacts. Pure: no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from metering.alert_checks import NewContacts
from metering.model import Activation, PeriodRef
from metering.placement import BatchEntry, EventSubscription, PeriodWork

ALERT_REQUESTS = 4
"""Requests a period's alert stage makes at most after its writes (count, tally, history, claims)."""


@dataclass(frozen=True, slots=True)
class Slice:
    """Part of one period's work, in delivery order: contacts to write, contacts an earlier try of these
    events made active (their alerts are due again), and the records it settles once written and alerted.
    The last slice of a period also carries its late and sealed events."""

    ref: PeriodRef
    to_write: tuple[Activation, ...]
    written: NewContacts
    settles: frozenset[str]
    last: bool

    @property
    def requests(self) -> int:
        return len(self.to_write) + ALERT_REQUESTS


@dataclass(slots=True)
class _Item:
    """One contact a period's work makes active, at its place in delivery order."""

    order: tuple[int, int]
    message_id: str
    activation: Activation
    subscription: EventSubscription
    written: bool


def account_groups(entries: Sequence[BatchEntry], records_per_group: int | None) -> list[list[BatchEntry]]:
    """The entries in groups of whole accounts (in the order accounts first appear, each account's entries in
    delivery order) of at least `records_per_group` records; all in one group without it. Accounts are
    independent of each other, so recording them group by group is recording the batch."""
    by_account: dict[str, list[BatchEntry]] = {}
    for entry in entries:
        by_account.setdefault(entry.account_id, []).append(entry)
    if records_per_group is None:
        return [list(entries)] if entries else []
    groups: list[list[BatchEntry]] = [[]]
    for account_entries in by_account.values():
        if len(groups[-1]) >= records_per_group:
            groups.append([])
        groups[-1].extend(account_entries)
    return groups if entries else []


def plan_waves(
    work: Mapping[PeriodRef, PeriodWork],
    pending: Sequence[Activation],
    carried: Mapping[PeriodRef, NewContacts],
    requests_per_wave: int | None,
    attempts: Mapping[str, int],
) -> list[list[Slice]]:
    """The periods with something left to do (contacts to write, contacts whose alerts are due again, late or
    sealed events) in waves of about `requests_per_wave` requests, at most one slice of a period per wave;
    without `requests_per_wave`, one wave holding each period whole. A period is cut into slices only once
    its records come back (`attempts`, by message id): a first delivery alerts each period once, as cheaply
    as a batch can, and a redelivery after a crash or time-out loses less to the next one. Periods whose
    records were delivered most often go first."""
    to_write: dict[PeriodRef, list[Activation]] = {}
    for activation in pending:
        to_write.setdefault(activation.ref, []).append(activation)
    busy = [
        w
        for ref, w in work.items()
        if ref in to_write or (ref in carried and carried[ref].contacts) or w.late or w.sealed
    ]
    attempt = {w.ref: max(attempts.get(message, 1) for message in w.message_ids) for w in busy}
    busy.sort(key=lambda w: -attempt[w.ref])
    queues = [
        deque(
            _slices(
                w,
                to_write.get(w.ref, []),
                carried.get(w.ref),
                requests_per_wave if attempt[w.ref] > 1 else None,
            )
        )
        for w in busy
    ]
    waves: list[list[Slice]] = []
    while any(queues):
        wave: list[Slice] = []
        for queue in queues:
            if queue and (requests_per_wave is None or sum(s.requests for s in wave) < requests_per_wave):
                wave.append(queue.popleft())
        waves.append(wave)
    return waves


def _slices(
    w: PeriodWork, to_write: Sequence[Activation], carried: NewContacts | None, requests_per_wave: int | None
) -> list[Slice]:
    items = [_item(w, activation, w.activations[activation.contact_id][1], False) for activation in to_write]
    items += (
        [_item(w, activation, subscription, True) for activation, subscription in carried.contacts]
        if carried
        else []
    )
    items.sort(key=lambda item: item.order)
    cuts = _cuts(items, requests_per_wave)
    last_of = {item.message_id: index for index, (start, end) in enumerate(cuts) for item in items[start:end]}
    slices = []
    for index, (start, end) in enumerate(cuts):
        part = items[start:end]
        last = index == len(cuts) - 1
        settles = w.message_ids if last else {m for m, final in last_of.items() if final == index}
        slices.append(
            Slice(
                w.ref,
                tuple(item.activation for item in part if not item.written),
                NewContacts(
                    [(item.activation, item.subscription) for item in part if item.written],
                    redelivered=bool(carried and carried.redelivered and index == 0),
                ),
                frozenset(settles),
                last,
            )
        )
    return slices


def _cuts(items: Sequence[_Item], requests_per_wave: int | None) -> list[tuple[int, int]]:
    """Where a period's items are cut into slices: the first slice reaches at least its last written item;
    each slice writes at most what a wave holds besides its alert stage."""
    if requests_per_wave is None or not items:
        return [(0, len(items))]
    capacity = max(1, requests_per_wave - ALERT_REQUESTS)
    first_end = max((index + 1 for index, item in enumerate(items) if item.written), default=0)
    cuts: list[tuple[int, int]] = []
    start, writes = 0, 0
    for index, item in enumerate(items):
        if index >= first_end and writes >= capacity:
            cuts.append((start, index))
            start, writes = index, 0
        writes += not item.written
    cuts.append((start, len(items)))
    return cuts


def _item(w: PeriodWork, activation: Activation, subscription: EventSubscription, written: bool) -> _Item:
    position, order, message_id = w.origins[activation.contact_id]
    return _Item((position, order), message_id, activation, subscription, written)
