"""Recording: a batch of CRM events becomes active contacts, exactly once per account, month and contact.

Stages: intake (parse or reject, claim checks resolved: `batch_intake`) -> placement in delivery order (pure,
`placement`) -> renames too large for a batch handed to the fan-out queue (`fan_out`) -> contact writes (one
conditional put per new contact; which ones: `contacts_to_write`, pure) -> late events -> usage alerts
(`alert_stage`).
A contact item is the record of activity: the count of a period is the number of its contact items, read
with a Query when an alert may be due and at close. Nothing here keeps a running count that could drift.
An account's subscription history is read before placement only where it can change the placement (a
change in the batch, a month edge, a close near); elsewhere it is read after the writes, and only for a
period whose count has reached the least count at which any billed subscription has an alert due.
Failures are confined: only the records of an account-period whose writes failed go back to the queue.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from metering.alert_stage import AlertStage, NewContacts
from metering.batch_intake import take_in
from metering.fan_out import hand_off_large_renames
from metering.intake import InboundRecord
from metering.memory import Remembered
from metering.model import (
    Activation,
    CloseState,
    ContactRecord,
    LateEvent,
    PeriodRef,
    RecordingOutcome,
    StoreUnavailable,
)
from metering.placement import (
    ActivityEvent,
    BatchEntry,
    ChangeEvent,
    PeriodWork,
    judge_batch,
    needs_judging,
    period_work,
)
from metering.rules import History, periods_near, utc_iso, utc_period

if TYPE_CHECKING:
    from metering.settings import RecorderSettings
    from metering.store import MeteringStore


KNOWN_CONTACTS = 300_000
"""Contacts a container remembers as active (about 100 bytes each)."""


@dataclass(slots=True)
class Recorder:
    """Records batches of CRM events; one per container, so its caches live as long as the container."""

    settings: RecorderSettings
    store: MeteringStore
    known: Remembered[tuple[PeriodRef, str]] = field(default_factory=lambda: Remembered(KNOWN_CONTACTS))
    """Contacts this container has seen active: a hit saves a read."""
    alerts: AlertStage = field(init=False)

    def __post_init__(self) -> None:
        self.alerts = AlertStage(self.settings, self.store)

    def record(self, records: Sequence[InboundRecord]) -> RecordingOutcome:
        outcome = RecordingOutcome()
        entries, retries = take_in(records, self.settings, self.store, outcome)
        if not entries:
            return outcome
        try:
            plan_states, histories = self._read_context(entries)
            plan = judge_batch(entries, histories, plan_states, self.settings.grace)
            self.store.subscriptions.save([change.subscription for change in plan.changes])
        except StoreUnavailable as exc:
            outcome.fail((entry.message_id for entry in entries), None, str(exc))
            return outcome
        judged = hand_off_large_renames(plan.judged, self.settings, outcome)
        work = period_work(judged)
        try:
            self._open_periods(work, plan_states)
            active = self._read_active(work)
        except StoreUnavailable as exc:
            outcome.fail((m for w in work.values() for m in w.message_ids), None, str(exc))
            return outcome
        self._write_contacts(work, active, retries, outcome)
        self._record_late(work, active, outcome)
        touches = sum(len(e.contact_ids or ()) for e in entries if isinstance(e, ActivityEvent))
        outcome.duplicate_touches = max(0, touches - outcome.activations - outcome.fanned_out_contacts)
        return outcome

    # ---- stages ----

    def _read_context(
        self, entries: Sequence[BatchEntry]
    ) -> tuple[dict[str, CloseState], dict[str, History]]:
        """The close states of every period the batch can reach, and the histories of the accounts whose
        events need judging (consistent reads: the batch before this one is always seen)."""
        earliest = min(_periods_reached(entries))
        close_states = self.store.close_states.read_since(earliest)
        accounts = {e.subscription.account_id for e in entries if isinstance(e, ChangeEvent)}
        accounts |= {
            e.account_id
            for e in entries
            if isinstance(e, ActivityEvent)
            and (
                needs_judging(e, close_states, self.settings.grace)
                or self.alerts.wants_history(PeriodRef(e.account_id, utc_period(e.event.occurred_at)))
            )
        }
        stored = self.store.subscriptions.histories(accounts)
        default = self.settings.default_timezone
        return close_states, {account: History.of(stored[account], default) for account in accounts}

    def _open_periods(self, work: Mapping[PeriodRef, PeriodWork], states: Mapping[str, CloseState]) -> None:
        """Before a period's first contact is written, the close job must know the period has activity."""
        for period in sorted({ref.period for ref, w in work.items() if w.activations} - set(states)):
            self.store.close_states.open(period)

    def _read_active(
        self, work: Mapping[PeriodRef, PeriodWork]
    ) -> dict[tuple[PeriodRef, str], ContactRecord]:
        unknown = [
            (ref, contact_id)
            for ref, w in work.items()
            for contact_id in [*w.activations, *(c for e in w.sealed for c in e.contact_ids or ())]
            if (ref, contact_id) not in self.known
        ]
        return self.store.read_periods(unknown, [])[0] if unknown else {}

    def _write_contacts(
        self,
        work: Mapping[PeriodRef, PeriodWork],
        active: Mapping[tuple[PeriodRef, str], ContactRecord],
        retries: set[str],
        outcome: RecordingOutcome,
    ) -> None:
        """Write every new contact of every open period at once (round trips overlap), then per period: the
        contacts this batch made active, and the alerts they cross."""
        pending, new = contacts_to_write(work, active, retries, self.known)
        results = self.store.contacts.activate(pending)
        failed_refs = {activation.ref for activation in results.failed}
        for activation in results.inserted:
            new[activation.ref].contacts.append(
                (activation, work[activation.ref].activations[activation.contact_id][1])
            )
        inserted = Counter(activation.ref for activation in results.inserted)
        for ref, w in work.items():
            outcome.activations += inserted[ref]
            if ref in failed_refs:
                outcome.fail(w.message_ids, ref, "contact writes kept failing")
                continue
            found = new.get(ref)
            if found:
                found.contacts.sort(key=lambda pair: _position(w, pair[0]))
            if not found or self._alert(w, found, outcome):
                self.known.add_all((ref, contact_id) for contact_id in w.activations)

    def _alert(self, w: PeriodWork, new: NewContacts, outcome: RecordingOutcome) -> bool:
        """The alerts the new contacts raise; False when the period must be retried (its contacts are then not
        remembered as done, so the retry checks them again)."""
        try:
            outcome.alerts.extend(self.alerts.settle(w.ref, new))
        except StoreUnavailable as exc:
            outcome.fail(w.message_ids, w.ref, str(exc))
            return False
        return True

    def _record_late(
        self,
        work: Mapping[PeriodRef, PeriodWork],
        active: Mapping[tuple[PeriodRef, str], ContactRecord],
        outcome: RecordingOutcome,
    ) -> None:
        """Events past their close instant are late; events of a sealed period are late unless every contact
        they touch was already active (a redelivery of something counted before the seal changes nothing)."""
        received_at = utc_iso(datetime.now(UTC))
        late: list[tuple[LateEvent, str]] = []
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
                late.append((record, entry.message_id))
        if not late:
            return
        try:
            stored = self.store.contacts.record_late_events([record for record, _ in late])
        except StoreUnavailable as exc:
            outcome.fail({message for _, message in late}, None, str(exc))
            return
        outcome.late.extend(stored)


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


def _periods_reached(entries: Iterable[BatchEntry]) -> Iterable[str]:
    for entry in entries:
        if isinstance(entry, ChangeEvent):
            yield from periods_near(entry.subscription.effective_at)
        elif entry.context is not None:
            yield entry.context.period
        else:
            yield from periods_near(entry.event.occurred_at)


def _message_of(work: PeriodWork, activation: Activation) -> str:
    return work.origins[activation.contact_id][2]


def _position(work: PeriodWork, activation: Activation) -> tuple[int, int]:
    position, order, _ = work.origins[activation.contact_id]
    return position, order
