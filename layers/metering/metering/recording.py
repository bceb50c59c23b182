"""Recording: turn a batch of CRM events into active contacts, exactly once per account, month and contact.

The count of a period is exact under redelivery, retries and concurrency because of three rules
(docs/design.md has the full argument):
1. a contact item is created by a conditional write that carries the writer's *attempt* token;
2. an attempt's new contacts are added to the period count by one conditional update that records the
   token in the summary, so the same attempt can never be added twice;
3. a redelivered event that finds "its" contact stored by an attempt not recorded as applied (the writer
   died between 1 and 2) recounts the period without losing concurrent increments.
The invariant `summary.activeContacts == number of contact items` is checked by `metering recount`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from metering import gateways
from metering.events import (
    CRM_EVENT,
    FAN_OUT_SUFFIX,
    MAX_EVENT_ID_LENGTH,
    MAX_INLINE_CONTACT_IDS,
    ContactEvent,
    CrmEvent,
    StatusRenamed,
    SubscriptionChanged,
)
from metering.model import (
    Activation,
    AlertRecord,
    ClaimCheckInvalid,
    ContactRecord,
    LateEvent,
    PeriodClosed,
    PeriodRef,
    PeriodSummary,
    Rejection,
    StoreUnavailable,
)
from metering.rules import (
    Subscription,
    account_timezone,
    close_instant,
    crossed_thresholds,
    period_bounds,
    period_of,
    subscription_at,
    threshold_contacts,
    utc_iso,
)

if TYPE_CHECKING:
    from metering.settings import RecorderSettings
    from metering.store import DynamoStore

USAGE_ALERT_DETAIL_TYPE = "Usage Threshold Reached"
MAX_RAW_BYTES = 64 * 1024
MAX_REASON_PROBLEMS = 3
MAX_REASON_LENGTH = 480
ATTEMPT_CONTACTS = 100
"""New contacts per counted attempt: a large group (a fan-out chunk holds 1,000) is counted in steps, so an
invocation that dies part-way keeps what it counted and leaves at most this many for the repair."""


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One SQS message as the recorder sees it: its id (for partial-batch failure) and its body."""

    message_id: str
    body: str


@dataclass(slots=True)
class RecordingOutcome:
    """What a batch did; the handler turns it into the partial-batch response and metrics."""

    failed_message_ids: set[str] = field(default_factory=set)
    retry_reasons: list[tuple[PeriodRef | None, str]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)
    events_by_type: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    activations: int = 0
    duplicate_touches: int = 0
    recovered_contacts: int = 0
    alerts: list[AlertRecord] = field(default_factory=list)
    fanned_out_contacts: int = 0


class KnownActiveContacts:
    """Contacts this container has seen active. Activity within a period only ever grows, so a hit is
    always true and saves a read; the set is bounded and forgets its oldest entries first."""

    def __init__(self, capacity: int = 300_000) -> None:
        self._capacity = capacity
        self._keys: dict[tuple[str, str, str], None] = {}

    def __contains__(self, key: tuple[PeriodRef, str]) -> bool:
        ref, contact_id = key
        return (ref.account_id, ref.period, contact_id) in self._keys

    def add_all(self, ref: PeriodRef, contact_ids: Iterable[str]) -> None:
        for contact_id in contact_ids:
            self._keys[(ref.account_id, ref.period, contact_id)] = None
        overflow = len(self._keys) - self._capacity
        if overflow > 0:
            for stale in list(self._keys)[: overflow + self._capacity // 10]:
                del self._keys[stale]


@dataclass(slots=True)
class _Group:
    """The events of one batch that fall into one period of one account."""

    ref: PeriodRef
    timezone: Any
    message_ids: set[str] = field(default_factory=set)
    events: list[ContactEvent | StatusRenamed] = field(default_factory=list)
    activations: dict[str, Activation] = field(default_factory=dict)
    touches: int = 0
    contacts_by_event: dict[str, Sequence[str]] = field(default_factory=dict)

    def contacts_of(self, event: ContactEvent | StatusRenamed) -> Sequence[str]:
        return self.contacts_by_event[event.id]

    def add(self, message_id: str, event: ContactEvent | StatusRenamed, contact_ids: Sequence[str]) -> None:
        self.message_ids.add(message_id)
        self.events.append(event)
        self.touches += len(contact_ids)
        self.contacts_by_event[event.id] = contact_ids
        for contact_id in contact_ids:
            known = self.activations.get(contact_id)
            if known is None or (event.occurred_at, event.id) < (known.occurred_at, known.event_id):
                self.activations[contact_id] = Activation(
                    self.ref, contact_id, event.id, event.detail_type, event.occurred_at
                )

    @property
    def event_ids(self) -> set[str]:
        return {event.id for event in self.events}

    @property
    def latest_event_time(self) -> datetime:
        return max(event.time for event in self.events)


def new_attempt_token() -> str:
    """A unique write-attempt id that also says when it started (hex milliseconds), <= 36 characters."""
    return f"{int(time.time() * 1000):x}.{secrets.token_hex(8)}"


def attempt_age_seconds(token: str) -> float:
    started_ms = int(token.split(".", 1)[0], 16)
    return time.time() - started_ms / 1000


def parse_record(record: InboundRecord) -> CrmEvent | Rejection:
    """Parse one SQS body into a typed event, or a rejection that says precisely what is wrong."""
    try:
        document = json.loads(record.body, object_pairs_hook=_reject_duplicate_keys)
    except DuplicatedKey as exc:
        return _rejection(record, _event_id_of(json.loads(record.body)), str(exc))
    except (ValueError, RecursionError) as exc:
        return _rejection(record, None, f"body is not a JSON object: {exc}")
    event_id = _event_id_of(document)
    if not isinstance(document, dict):
        return _rejection(record, event_id, "body is not a JSON object")
    try:
        return CRM_EVENT.validate_python(document)
    except ValidationError as exc:
        return _rejection(record, event_id, describe_validation_error(exc))


def describe_validation_error(exc: ValidationError) -> str:
    """`detail.contactId: String should match pattern ...; ...` without echoing the offending values."""
    problems: list[str] = []
    errors = exc.errors(include_url=False, include_input=False)
    for error in errors[:MAX_REASON_PROBLEMS]:
        location = ".".join(str(part) for part in error["loc"][1:] if part not in {"function-after"})
        if error["type"] == "union_tag_invalid":
            problems.append("unknown detail-type")
        elif error["type"] == "union_tag_not_found":
            problems.append("detail-type is missing")
        else:
            problems.append(f"{location or 'event'}: {error['msg']}")
    if len(errors) > MAX_REASON_PROBLEMS:
        problems.append(f"and {len(errors) - MAX_REASON_PROBLEMS} more")
    return "; ".join(problems)


class DuplicatedKey(ValueError):
    """A JSON object names the same key twice: which value counts would be a guess."""


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise DuplicatedKey(f"duplicated key {key[:64]!r}")
        document[key] = value
    return document


def _event_id_of(document: object) -> str | None:
    if isinstance(document, dict):
        event_id = document.get("id")
        if isinstance(event_id, str) and _usable_as_key(event_id):
            return event_id
    return None


def _usable_as_key(event_id: str) -> bool:
    """Whether a rejected event's own id can key its record: printable, valid UTF-8, within the key size."""
    try:
        size = len(event_id.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return event_id.isprintable() and 0 < size <= MAX_EVENT_ID_LENGTH


def _rejection(record: InboundRecord, event_id: str | None, reason: str) -> Rejection:
    return rejection_now(event_id or f"sqs:{record.message_id}", reason, record.body)


def rejection_now(event_id: str, reason: str, raw: str) -> Rejection:
    """A rejection received now: the reason bounded, the raw body kept up to `MAX_RAW_BYTES`."""
    return Rejection(event_id, short_reason(reason), raw[:MAX_RAW_BYTES], utc_iso(datetime.now(UTC)))


def short_reason(reason: str) -> str:
    """Reasons are for people: bounded, whatever the input was."""
    return reason if len(reason) <= MAX_REASON_LENGTH else reason[: MAX_REASON_LENGTH - 1] + "…"


def subscription_of(event: SubscriptionChanged) -> Subscription:
    detail = event.detail
    return Subscription(
        account_id=detail.account_id,
        effective_at=detail.occurred_at.astimezone(UTC),
        event_id=event.id,
        plan=detail.plan,
        billing_cycle=detail.billing_cycle,
        addon_contacts=detail.addon_contacts,
        timezone=detail.timezone,
    )


def fan_out_chunks(event: StatusRenamed, contact_ids: Sequence[str]) -> list[str]:
    """A huge rename as `Status Renamed` events with inline ids of at most the inline limit, one per chunk;
    each is an ordinary event with a derived id, so its processing is the same code path."""
    document = event.model_dump(mode="json", by_alias=True, exclude={"detail": {"contact_ids_object"}})
    bodies = []
    for index, start in enumerate(range(0, len(contact_ids), MAX_INLINE_CONTACT_IDS)):
        chunk = {
            **document,
            "id": FAN_OUT_SUFFIX.format(id=event.id, index=index),
            "detail": {
                **document["detail"],
                "contactIds": list(contact_ids[start : start + MAX_INLINE_CONTACT_IDS]),
            },
        }
        bodies.append(json.dumps(chunk, separators=(",", ":")))
    return bodies


@dataclass(slots=True)
class Recorder:
    """Records a batch: validation, subscriptions, fan-out, conditional writes, counts, alerts, lateness."""

    settings: RecorderSettings
    store: DynamoStore
    known: KnownActiveContacts = field(default_factory=KnownActiveContacts)

    def record(self, records: Sequence[InboundRecord]) -> RecordingOutcome:
        outcome = RecordingOutcome()
        parsed: list[tuple[str, CrmEvent]] = []
        rejected_message_ids: set[str] = set()
        for record in records:
            result = parse_record(record)
            if isinstance(result, Rejection):
                outcome.rejected.append(result)
                rejected_message_ids.add(record.message_id)
            else:
                parsed.append((record.message_id, result))
                outcome.events_by_type[result.detail_type] += 1
        try:
            self.store.save_rejections(outcome.rejected)
        except StoreUnavailable as exc:
            outcome.failed_message_ids = {message_id for message_id, _ in parsed} | rejected_message_ids
            outcome.retry_reasons.append((None, str(exc)))
            return outcome
        try:
            histories = self._subscriptions(parsed)
            groups, late = self._group(parsed, histories, outcome)
            summaries, existing = self.store.read_period_state(
                groups,
                [(ref, c) for ref, g in groups.items() for c in g.activations if (ref, c) not in self.known],
            )
        except StoreUnavailable as exc:
            outcome.failed_message_ids = {message_id for message_id, _ in parsed}
            outcome.retry_reasons.append((None, str(exc)))
            return outcome
        for message_id, event, ref in late:
            self._record_late(outcome, message_id, event, ref)
        for ref, group in groups.items():
            try:
                self._record_group(outcome, group, summaries.get(ref), existing, histories[ref.account_id])
            except StoreUnavailable as exc:
                outcome.failed_message_ids |= group.message_ids
                outcome.retry_reasons.append((ref, str(exc)))
        return outcome

    def _subscriptions(self, parsed: Sequence[tuple[str, CrmEvent]]) -> dict[str, list[Subscription]]:
        """Store this batch's subscription changes, then load every involved account's history."""
        changes = [subscription_of(event) for _, event in parsed if isinstance(event, SubscriptionChanged)]
        self.store.save_subscriptions(changes)
        histories = self.store.load_subscriptions(sorted({event.account_id for _, event in parsed}))
        for change in changes:
            history = histories.setdefault(change.account_id, [])
            if change not in history:
                history.append(change)
        return histories

    def _group(
        self,
        parsed: Sequence[tuple[str, CrmEvent]],
        histories: dict[str, list[Subscription]],
        outcome: RecordingOutcome,
    ) -> tuple[dict[PeriodRef, _Group], list[tuple[str, ContactEvent | StatusRenamed, PeriodRef]]]:
        """Place each activity event in its period; events arriving after their period's close are late."""
        groups: dict[PeriodRef, _Group] = {}
        late: list[tuple[str, ContactEvent | StatusRenamed, PeriodRef]] = []
        for message_id, event in parsed:
            if isinstance(event, SubscriptionChanged):
                continue
            tz = account_timezone(
                histories[event.account_id], event.occurred_at, self.settings.default_timezone
            )
            ref = PeriodRef(event.account_id, period_of(event.occurred_at, tz))
            if event.time >= close_instant(ref.period, tz, self.settings.grace):
                late.append((message_id, event, ref))
                continue
            try:
                contact_ids = self._contacts_of(event, outcome)
            except StoreUnavailable as exc:
                outcome.failed_message_ids.add(message_id)
                outcome.retry_reasons.append((ref, str(exc)))
                continue
            if contact_ids is not None:
                groups.setdefault(ref, _Group(ref, tz)).add(message_id, event, contact_ids)
        return groups, late

    def _contacts_of(
        self, event: ContactEvent | StatusRenamed, outcome: RecordingOutcome
    ) -> Sequence[str] | None:
        """The contacts an event activates here; None when it was rejected or handed to the fan-out queue."""
        if not isinstance(event, StatusRenamed):
            return (event.detail.contact_id,)
        if event.detail.contact_ids is not None:
            return event.detail.contact_ids
        claim = event.detail.contact_ids_object
        assert claim is not None  # the model requires one of the two sources
        try:
            if claim.bucket != self.settings.claim_check_bucket:
                raise ClaimCheckInvalid(f"claim-check bucket {claim.bucket!r} is not the configured one")
            contact_ids = gateways.read_claim_check(claim.bucket, claim.key)
        except ClaimCheckInvalid as exc:
            rejection = rejection_now(event.id, str(exc), event.model_dump_json(by_alias=True))
            self.store.save_rejections([rejection])
            outcome.rejected.append(rejection)
            return None
        if len(contact_ids) <= MAX_INLINE_CONTACT_IDS:
            return contact_ids
        gateways.send_messages(self.settings.fanout_queue_url, fan_out_chunks(event, contact_ids))
        outcome.fanned_out_contacts += len(contact_ids)
        return None

    def _record_group(
        self,
        outcome: RecordingOutcome,
        group: _Group,
        summary: PeriodSummary | None,
        existing: dict[tuple[PeriodRef, str], ContactRecord],
        history: list[Subscription],
    ) -> None:
        ref = group.ref
        if summary is not None and summary.closed_at is not None:
            self._record_late_group(outcome, group, existing, summary.recent_attempts)
            return
        period_end = period_bounds(ref.period, group.timezone)[1]
        stored = [existing[(ref, c)] for c in group.activations if (ref, c) in existing]
        candidates = [
            activation
            for contact_id, activation in group.activations.items()
            if (ref, contact_id) not in existing and (ref, contact_id) not in self.known
        ]
        applied = dict(summary.recent_attempts) if summary else {}
        forget = [token for token in applied if attempt_age_seconds(token) > self._recent_seconds]
        activations_before = outcome.activations
        try:
            after, conflicts = self._write_and_count(outcome, ref, candidates, period_end, forget)
        except PeriodClosed:
            self._record_late_group(outcome, group, existing, applied)
            return
        stored += conflicts
        recovered, repaired = self._repair_orphaned_attempts(
            outcome, group, stored, applied, period_end=period_end
        )
        counted = [r for r in stored if r.attempt in applied or (repaired and self._settled(r.attempt))]
        self.known.add_all(ref, [r.contact_id for r in counted])
        outcome.recovered_contacts += recovered
        outcome.duplicate_touches += group.touches - (outcome.activations - activations_before)
        latest = after or summary
        active = (latest.active_contacts if latest else 0) + recovered
        alerted = latest.alerted_percents if latest else frozenset()
        self._alert(outcome, group, summary, history, active=active, alerted=alerted)

    def _write_and_count(
        self,
        outcome: RecordingOutcome,
        ref: PeriodRef,
        candidates: Sequence[Activation],
        period_end: datetime,
        forget: Sequence[str],
    ) -> tuple[PeriodSummary | None, list[ContactRecord]]:
        """Write the new contacts and count them, `ATTEMPT_CONTACTS` per attempt. Returns the summary after
        the last count and the records that already existed. Raises PeriodClosed when the period was sealed
        first, after undoing the writes of the attempt that could not be counted."""
        after: PeriodSummary | None = None
        conflicts: list[ContactRecord] = []
        for start in range(0, len(candidates), ATTEMPT_CONTACTS):
            attempt = new_attempt_token()
            inserted, existed = self.store.insert_contacts(
                candidates[start : start + ATTEMPT_CONTACTS], attempt, period_end
            )
            conflicts += existed
            if not inserted:
                continue
            applied_at = datetime.now(UTC)
            try:
                counted = self.store.apply_attempt(
                    ref, attempt, len(inserted), period_end=period_end, applied_at=applied_at, forget=forget
                )
            except PeriodClosed:
                self.store.delete_contacts(ref, [activation.contact_id for activation in inserted], attempt)
                raise
            after = counted or after
            forget = ()
            self.known.add_all(ref, [activation.contact_id for activation in inserted])
            outcome.activations += len(inserted)
        return after, conflicts

    @property
    def _recent_seconds(self) -> float:
        """How long an applied attempt stays in the summary's idempotency record: past any retry of the same
        call, which cannot outlive its invocation. Older attempts are settled; a redelivery that meets one
        recounts the period, so a shorter record costs reads, never exactness."""
        return 2.0 * self.settings.attempt_timeout_seconds

    def _settled(self, attempt: str) -> bool:
        """An attempt old enough that it is certainly not running any more."""
        return attempt_age_seconds(attempt) >= self.settings.attempt_timeout_seconds

    def _repair_orphaned_attempts(
        self,
        outcome: RecordingOutcome,
        group: _Group,
        stored: Sequence[ContactRecord],
        applied: dict[str, int],
        *,
        period_end: datetime,
    ) -> tuple[int, bool]:
        """A redelivered event that finds the contact it created stored by an attempt that is not recorded
        as applied may be looking at a crash between the contact write and the count: recount the period
        (race-free, see `DynamoStore.repair_count`). An attempt still young may be running: retry later.
        Returns the contacts recovered and whether the period was recounted (all settled attempts counted)."""
        event_ids = group.event_ids
        suspects = {r.attempt for r in stored if r.first_event_id in event_ids and r.attempt not in applied}
        if not suspects:
            return 0, False
        if not all(self._settled(attempt) for attempt in suspects):
            raise StoreUnavailable("an earlier attempt of these events may still be running; retry later")
        try:
            recovered = self.store.repair_count(group.ref, self._settled, period_end)
        except PeriodClosed:
            orphaned_events = {r.first_event_id for r in stored if r.attempt in suspects}
            for event in group.events:
                if event.id in orphaned_events:
                    self._record_late(outcome, "", event, group.ref)
            return 0, False
        return recovered, True

    def _alert(
        self,
        outcome: RecordingOutcome,
        group: _Group,
        before: PeriodSummary | None,
        history: list[Subscription],
        *,
        active: int,
        alerted: frozenset[int],
    ) -> None:
        """Claim each threshold `active` (the count after this batch's write) has reached, once per period
        by a conditional write that also checks the stored count, then publish it. An alert claimed by a
        batch that failed to publish it is published by a later batch of that period, once the claiming
        batch can no longer be running."""
        now = time.time()
        pending = [
            alert
            for alert in (before.unpublished_alerts if before else ())
            if now - alert.claimed_at >= self.settings.attempt_timeout_seconds
        ]
        subscription = subscription_at(history, group.latest_event_time)
        if subscription is not None and subscription.billed:
            reached_at = utc_iso(group.latest_event_time)
            thresholds = self.settings.alert_thresholds
            for percent in crossed_thresholds(thresholds, subscription.allowance, active, alerted):
                alert = AlertRecord(
                    group.ref,
                    percent,
                    subscription.allowance,
                    active,
                    subscription.plan,
                    reached_at,
                    int(now),
                )
                if self.store.claim_alert(alert, threshold_contacts(subscription.allowance, percent)):
                    pending.append(alert)
        if pending:
            gateways.publish(
                self.settings.event_bus_name, USAGE_ALERT_DETAIL_TYPE, map(alert_detail, pending)
            )
            if self.settings.usage_alert_topic_arn:
                for alert in pending:
                    gateways.notify(
                        self.settings.usage_alert_topic_arn,
                        *alert_notification(alert),
                        attributes={
                            "accountId": alert.ref.account_id,
                            "thresholdPercent": alert.threshold_percent,
                        },
                    )
            self.store.mark_alerts_published(group.ref, [alert.threshold_percent for alert in pending])
            outcome.alerts.extend(pending)

    def _record_late_group(
        self,
        outcome: RecordingOutcome,
        group: _Group,
        existing: dict[tuple[PeriodRef, str], ContactRecord],
        applied: Mapping[str, int],
    ) -> None:
        """Store the group's events as late, except those that could not have changed the bill: every
        contact they touch was already made active by another event, or by this event in an attempt the
        summary records as counted (a redelivery after the seal)."""
        ref = group.ref
        for event in group.events:
            made_no_difference = all(
                (ref, c) in self.known
                or (
                    (ref, c) in existing
                    and (
                        existing[(ref, c)].first_event_id != event.id or existing[(ref, c)].attempt in applied
                    )
                )
                for c in group.contacts_of(event)
            )
            if not made_no_difference:
                self._record_late(outcome, "", event, ref)

    def _record_late(
        self, outcome: RecordingOutcome, message_id: str, event: ContactEvent | StatusRenamed, ref: PeriodRef
    ) -> None:
        late = LateEvent(
            ref, event.id, event.detail_type, utc_iso(event.occurred_at), utc_iso(datetime.now(UTC))
        )
        try:
            if self.store.record_late(late):
                outcome.late.append(late)
        except StoreUnavailable:
            if not message_id:
                raise
            outcome.failed_message_ids.add(message_id)


def alert_detail(alert: AlertRecord) -> dict[str, Any]:
    """The `Usage Threshold Reached` event detail."""
    return {
        "accountId": alert.ref.account_id,
        "period": alert.ref.period,
        "thresholdPercent": alert.threshold_percent,
        "activeContacts": alert.active_contacts,
        "allowance": alert.allowance,
        "plan": alert.plan,
        "reachedAt": alert.reached_at,
    }


def alert_notification(alert: AlertRecord) -> tuple[str, str]:
    """Subject and text of the e-mail a usage alert sends."""
    ref = alert.ref
    subject = f"Active contacts: {ref.account_id} reached {alert.threshold_percent} % in {ref.period}"
    text = (
        f"Account {ref.account_id} has {alert.active_contacts} active contacts in {ref.period}, "
        f"{alert.threshold_percent} % of its allowance of {alert.allowance} (plan {alert.plan}).\n"
        "Contacts above the allowance are billed at EUR 0.25 each at the end of the month; "
        "add-on contacts bought in advance cost less."
    )
    return subject, text
