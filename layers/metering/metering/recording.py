"""Recording: a batch of CRM events becomes active contacts, exactly once per account, month and contact.

Stages: intake (parse or reject, claim checks resolved: `intake_stage`) -> placement in delivery order (pure,
`placement`) -> renames too large for a batch handed to the fan-out queue (`fan_out`) -> contact writes (one
conditional put per new contact; which ones: `contacts_to_write`, pure) -> usage alerts (`alert_checks`) ->
late events.
A contact item is the record of activity: the count of a period is the number of its contact items, read
with a Query when an alert may be due and at close. Nothing here keeps a running count that could drift.
An account's subscription history is read before placement only where it can change the placement (a
change in the batch, a month edge, a close near); elsewhere it is read after the writes, and only for a
period whose count has reached the least count at which any billed subscription has an alert due.
Failures are confined to the records that needed the failed call (docs/design.md#progress-under-faults), and
a large batch is prepared in groups of accounts and written in waves (`waves`), deleting what each part
settles before the next (`acknowledgement`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Protocol

from metering.acknowledgement import Acknowledgement
from metering.alert_checks import AlertChecks, NewContacts
from metering.errors import StoreUnavailable
from metering.fan_out import hand_off_large_renames
from metering.intake_stage import take_in
from metering.memory import Remembered
from metering.message_parsing import InboundRecord
from metering.model import Activation, ContactRecord, LateEvent, PeriodRef, PeriodSeal
from metering.placement import (
    ActivityEvent,
    BatchEntry,
    ChangeEvent,
    PeriodWork,
    needs_history,
    period_work,
    place_batch,
)
from metering.recording_outcome import RecordingOutcome
from metering.retrying import RetryBudget
from metering.rules import History, periods_near, utc_iso, utc_period
from metering.waves import Slice, account_groups, plan_waves

if TYPE_CHECKING:
    from metering.settings import RecorderSettings
    from metering.store import MeteringStore


KNOWN_CONTACTS = 300_000
"""Contacts a container remembers as active (about 100 bytes each)."""
LARGE_BATCH_RECORDS = 100
"""Records from which a batch is recorded in groups of accounts and writes in waves, deleting the records each
part settles before the next (a crash or time-out then redelivers only what was still to do). A live batch
of ten never pays for the deletes: the event source mapping deletes its records when it returns."""
GROUP_RECORDS = 64
"""Records per group of accounts (an account's records are never split between groups)."""
WAVE_REQUESTS = 64
"""Requests per wave of contact writes: eight rounds of the writer pool's eight threads."""


@dataclass(frozen=True, slots=True)
class _Batch:
    """What every group of a batch shares: its records, the period seals read once, the retry budget, and
    the outcome they add to."""

    records: Sequence[InboundRecord]
    retries: set[str]
    seals: dict[str, PeriodSeal]
    budget: RetryBudget
    outcome: RecordingOutcome


@dataclass(slots=True)
class _Prepared:
    """The contact writes the batch has left after its reads: its periods' work, the contacts found active,
    those to write, and those an earlier try made active whose alerts are due again."""

    work: dict[PeriodRef, PeriodWork] = field(default_factory=dict)
    active: dict[tuple[PeriodRef, str], ContactRecord] = field(default_factory=dict)
    pending: list[Activation] = field(default_factory=list)
    carried: defaultdict[PeriodRef, NewContacts] = field(default_factory=lambda: defaultdict(NewContacts))

    def add(self, other: _Prepared) -> None:
        """Another group's (its accounts, and so its periods, are not this one's)."""
        self.work.update(other.work)
        self.active.update(other.active)
        self.pending += other.pending
        self.carried.update(other.carried)


@dataclass(slots=True)
class Recorder:
    """Records batches of CRM events; one per container, so its caches live as long as the container."""

    settings: RecorderSettings
    store: MeteringStore
    known: Remembered[tuple[PeriodRef, str]] = field(default_factory=lambda: Remembered(KNOWN_CONTACTS))
    """Contacts this container has seen active: a hit saves a read."""
    alerts: AlertChecks = field(init=False)

    def __post_init__(self) -> None:
        self.alerts = AlertChecks(self.settings, self.store)

    def record(self, records: Sequence[InboundRecord], budget: RetryBudget) -> RecordingOutcome:
        """Record a batch. A call that keeps failing (after botocore's retries and ours within `budget`) fails
        only the records that needed it: a history read or a change's write its account's records (a later
        event of the account waits with the earlier ones), a contact read the periods it covered, a period's
        opening that month's records; everything else is settled in this invocation. A large batch is
        recorded in groups of accounts, and its settled records are deleted as it goes."""
        outcome = RecordingOutcome()
        entries, retries = take_in(records, self.settings, self.store, outcome, budget)
        entries = held_back(entries, outcome)
        if not entries:
            return outcome
        try:
            seals = budget.call(lambda: self.store.seals.read_since(earliest_period(entries)))
        except StoreUnavailable as exc:
            outcome.fail((entry.message_id for entry in entries), str(exc))
            return outcome
        large = len(records) >= LARGE_BATCH_RECORDS
        acknowledgement = Acknowledgement(records, self.settings, outcome) if large else None
        batch = _Batch(records, retries, seals, budget, outcome)
        if acknowledgement:
            taken = {entry.message_id for entry in entries}
            acknowledgement.settle(r.message_id for r in records if r.message_id not in taken)
        prepared = _Prepared()
        for group in account_groups(entries, GROUP_RECORDS if large else None):
            part = self._prepare(group, batch)
            if acknowledgement:
                busy = messages_with_work(part.work, part.pending, part.carried)
                acknowledgement.settle(entry.message_id for entry in group if entry.message_id not in busy)
            prepared.add(part)
        self._write(prepared, batch, acknowledgement)
        touches = sum(len(e.contact_ids or ()) for e in entries if isinstance(e, ActivityEvent))
        outcome.duplicate_touches = max(0, touches - outcome.activations - outcome.fanned_out_contacts)
        return outcome

    def _prepare(self, entries: Sequence[BatchEntry], batch: _Batch) -> _Prepared:
        """Everything before the contact writes, for the entries of some accounts (all of each account's
        entries in the batch): histories, placement, changes, fan-out, opening months, and the reads that
        say which contacts are already active."""
        outcome, budget = batch.outcome, batch.budget
        histories = self._read_histories(entries, batch.seals, budget, outcome)
        entries = held_back(entries, outcome)
        plan = place_batch(entries, histories, batch.seals, self.settings.grace)
        self._save_changes(plan.changes, histories, budget, outcome)
        placed = hand_off_large_renames(held_back(plan.placed, outcome), self.settings, outcome)
        work = period_work(held_back(placed, outcome))
        work = self._open_periods(work, batch.seals, budget, outcome)
        active = self._read_active(work, outcome)
        pending, carried = contacts_to_write(work, active, batch.retries, self.known)
        return _Prepared(work, active, pending, carried)

    def _write(self, prepared: _Prepared, batch: _Batch, acknowledgement: Acknowledgement | None) -> None:
        """The contact writes, alerts and late events, in waves when the batch is large (each wave's settled
        records deleted before the next)."""
        work, pending, carried = prepared.work, prepared.pending, prepared.carried
        attempts = {record.message_id: record.attempt for record in batch.records}
        waves = plan_waves(work, pending, carried, WAVE_REQUESTS if acknowledgement else None, attempts)
        busy_periods = {part.ref for wave in waves for part in wave}
        self.known.add_all(
            (ref, c) for ref, w in work.items() if ref not in busy_periods for c in w.activations
        )
        failed: set[PeriodRef] = set()
        for number, wave in enumerate(waves, start=1):
            self._write_wave(wave, work, prepared.active, failed, batch.outcome, batch.budget)
            if acknowledgement and number < len(waves):
                acknowledgement.settle(m for part in wave for m in part.settles)

    # ---- stages ----

    def _read_histories(
        self,
        entries: Sequence[BatchEntry],
        seals: Mapping[str, PeriodSeal],
        budget: RetryBudget,
        outcome: RecordingOutcome,
    ) -> dict[str, History]:
        """The histories of the accounts whose events need them to be placed (consistent reads: the batch
        before this one is always seen). An account whose read kept failing has all its records failed."""
        accounts = {e.account_id for e in entries if isinstance(e, ChangeEvent)}
        accounts |= {
            e.account_id
            for e in entries
            if isinstance(e, ActivityEvent)
            and (
                needs_history(e, seals, self.settings.grace)
                or self.alerts.wants_history(PeriodRef(e.account_id, utc_period(e.event.occurred_at)))
            )
        }
        default = self.settings.default_timezone
        histories: dict[str, History] = {}
        for account, stored in self.store.subscriptions.histories(accounts, budget).items():
            if isinstance(stored, StoreUnavailable):
                outcome.fail_account(account, str(stored))
            else:
                histories[account] = History.of(stored, default)
        return histories

    def _save_changes(
        self,
        changes: Sequence[ChangeEvent],
        histories: Mapping[str, History],
        budget: RetryBudget,
        outcome: RecordingOutcome,
    ) -> None:
        """Store the subscription changes not stored yet (a redelivered one is in its history already); an
        account whose change could not be stored has all its records failed (its later events were placed
        with the change)."""
        new = [
            change
            for change in changes
            if all(
                stored.event_id != change.subscription.event_id
                for stored in histories[change.account_id].changes
            )
        ]
        saved = self.store.subscriptions.save([change.subscription for change in new], budget)
        for change, result in zip(new, saved, strict=True):
            if isinstance(result, StoreUnavailable):
                outcome.fail_account(change.account_id, str(result))
        held_back(changes, outcome)

    def _open_periods(
        self,
        work: Mapping[PeriodRef, PeriodWork],
        seals: dict[str, PeriodSeal],
        budget: RetryBudget,
        outcome: RecordingOutcome,
    ) -> dict[PeriodRef, PeriodWork]:
        """Before a period's first contact is written, the close job must know the period has activity (a
        month opened is added to `seals`, so later groups of the batch do not open it again). A month that
        could not be opened has the records of its periods failed; the others go on."""
        unopened: set[str] = set()
        for period in sorted({ref.period for ref, w in work.items() if w.activations} - set(seals)):
            try:
                seals[period] = budget.call(partial(self.store.seals.open, period))
            except StoreUnavailable as exc:
                unopened.add(period)
                for ref, w in work.items():
                    if ref.period == period:
                        outcome.fail(w.message_ids, str(exc), ref)
        return {ref: w for ref, w in work.items() if ref.period not in unopened}

    def _read_active(
        self, work: dict[PeriodRef, PeriodWork], outcome: RecordingOutcome
    ) -> dict[tuple[PeriodRef, str], ContactRecord]:
        """Which contacts the container does not know are already active. A period some of whose contacts
        could not be read has its records failed and leaves `work`."""
        unknown = [
            (ref, contact_id)
            for ref, w in work.items()
            for contact_id in [*w.activations, *(c for e in w.sealed for c in e.contact_ids or ())]
            if (ref, contact_id) not in self.known
        ]
        if not unknown:
            return {}
        found = self.store.contacts.find_active(unknown)
        for ref in sorted(found.unread):
            outcome.fail(work.pop(ref).message_ids, "contact reads kept failing", ref)
        return found.active

    def _write_wave(
        self,
        wave: Sequence[Slice],
        work: Mapping[PeriodRef, PeriodWork],
        active: Mapping[tuple[PeriodRef, str], ContactRecord],
        failed: set[PeriodRef],
        outcome: RecordingOutcome,
        budget: RetryBudget,
    ) -> None:
        """Write the wave's contacts at once (round trips overlap), then per slice, in delivery order, the
        alerts its contacts cross, and the late events of each period whose last slice this is. A period
        whose writes or alerts failed (`failed`) has its records retried and its later slices skipped."""
        live = [part for part in wave if part.ref not in failed]
        results = self.store.contacts.activate([a for part in live for a in part.to_write])
        made_active: defaultdict[PeriodRef, list[Activation]] = defaultdict(list)
        for activation in [*results.inserted, *results.rewritten]:
            made_active[activation.ref].append(activation)
        rewritten = {activation.ref for activation in results.rewritten}
        failed.update(activation.ref for activation in results.failed)
        finished: dict[PeriodRef, PeriodWork] = {}
        for part in live:
            w = work[part.ref]
            outcome.activations += len(made_active[part.ref])
            if part.ref in failed:
                outcome.fail(w.message_ids, "contact writes kept failing", part.ref)
                continue
            new = NewContacts(
                [
                    *part.written.contacts,
                    *((a, w.activations[a.contact_id][1]) for a in made_active[part.ref]),
                ],
                redelivered=part.written.redelivered or part.ref in rewritten,
            )
            new.contacts.sort(key=lambda pair: _position(w, pair[0]))
            if new.contacts and not self._alert(w, new, outcome, budget):
                failed.add(part.ref)
                continue
            self.known.add_all((part.ref, activation.contact_id) for activation, _ in new.contacts)
            if part.last:
                self.known.add_all((part.ref, contact_id) for contact_id in w.activations)
                finished[part.ref] = w
        self._record_late(finished, active, outcome, budget)

    def _alert(self, w: PeriodWork, new: NewContacts, outcome: RecordingOutcome, budget: RetryBudget) -> bool:
        """The alerts the new contacts raise; False when the period must be retried (its contacts are then not
        remembered as done, so the retry checks them again)."""
        try:
            outcome.alerts.extend(self.alerts.settle(w.ref, new, budget))
        except StoreUnavailable as exc:
            outcome.fail(w.message_ids, str(exc), w.ref)
            return False
        return True

    def _record_late(
        self,
        work: Mapping[PeriodRef, PeriodWork],
        active: Mapping[tuple[PeriodRef, str], ContactRecord],
        outcome: RecordingOutcome,
        budget: RetryBudget,
    ) -> None:
        """Events past their close instant are late; events of a sealed period are late unless every contact
        they touch was already active (a redelivery of something counted before the seal changes nothing)."""
        received_at = utc_iso(datetime.now(UTC))
        late: dict[LateEvent, str] = {}
        for ref, w in work.items():

            def was_active(contact_id: str, ref: PeriodRef = ref, w: PeriodWork = w) -> bool:
                key = (ref, contact_id)
                return key in active or key in self.known or contact_id in w.activations

            making_a_difference = [e for e in w.sealed if not all(map(was_active, e.contact_ids or ()))]
            for entry in [*w.late, *making_a_difference]:
                event = entry.event
                record = LateEvent(
                    ref, entry.event_id, event.detail_type, utc_iso(event.occurred_at), received_at
                )
                late[record] = entry.message_id
        if not late:
            return
        results = self.store.contacts.record_late_events(list(late), budget)
        outcome.late.extend(results.stored)
        for record in results.failed:
            outcome.fail([late[record]], "late event writes kept failing", record.ref)


def contacts_to_write(
    work: Mapping[PeriodRef, PeriodWork],
    active: Mapping[tuple[PeriodRef, str], ContactRecord],
    retries: set[str],
    known: Container[tuple[PeriodRef, str]],
) -> tuple[list[Activation], defaultdict[PeriodRef, NewContacts]]:
    """The activations to write (neither known to the container nor found active), and per period the
    contacts already new: those a redelivered message's earlier attempt made active (its alerts are due
    again, as if this attempt had written them)."""
    pending: list[Activation] = []
    new: defaultdict[PeriodRef, NewContacts] = defaultdict(NewContacts)
    for ref, w in work.items():
        for contact_id, (activation, subscription) in w.activations.items():
            if (ref, contact_id) in known:
                continue
            record = active.get((ref, contact_id))
            if record is None:
                pending.append(activation)
            elif record.first_event_id == activation.event_id and _message_of(w, activation) in retries:
                new[ref].contacts.append((activation, subscription))
                new[ref].redelivered = True
    return pending, new


def messages_with_work(
    work: Mapping[PeriodRef, PeriodWork], pending: Sequence[Activation], new: Mapping[PeriodRef, NewContacts]
) -> set[str]:
    """The records with something left to do after the reads: making a contact active (and raising the
    alerts it crosses), or a late or sealed event. A record that only touched contacts already active (or
    made active by an earlier record of the batch) is done."""
    busy = {_message_of(work[activation.ref], activation) for activation in pending}
    busy.update(
        _message_of(work[ref], activation) for ref, found in new.items() for activation, _ in found.contacts
    )
    busy.update(entry.message_id for w in work.values() for entry in [*w.late, *w.sealed])
    return busy


def earliest_period(entries: Iterable[BatchEntry]) -> str:
    """The earliest period an entry of the batch can belong to in any zone: seals are read from it."""
    return min(_periods_reached(entries))


def _periods_reached(entries: Iterable[BatchEntry]) -> Iterable[str]:
    for entry in entries:
        if isinstance(entry, ChangeEvent):
            yield from periods_near(entry.subscription.effective_at)
        elif entry.context is not None:
            yield entry.context.period
        else:
            yield from periods_near(entry.event.occurred_at)


class _OfAccount(Protocol):
    @property
    def account_id(self) -> str: ...

    @property
    def message_id(self) -> str: ...


def held_back[T: _OfAccount](items: Sequence[T], outcome: RecordingOutcome) -> list[T]:
    """The items of accounts none of whose records failed. The others wait with their account's failed
    records (their messages fail too), so an account's events are always recorded in delivery order."""
    failed = outcome.failed_accounts
    outcome.failed_message_ids.update(item.message_id for item in items if item.account_id in failed)
    return [item for item in items if item.account_id not in failed]


def _message_of(work: PeriodWork, activation: Activation) -> str:
    return work.origins[activation.contact_id][2]


def _position(work: PeriodWork, activation: Activation) -> tuple[int, int]:
    position, order, _ = work.origins[activation.contact_id]
    return position, order
