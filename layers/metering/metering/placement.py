"""Placement: where each event of a batch belongs and how it counts, decided in delivery order.

Pure: given the batch, the subscription histories read before it and the seals of its periods, it
decides for every activity event its period, its close instant, the subscription its alerts are raised with
and whether the period is open, sealed by the close job, or past its close instant. A `Subscription Changed`
takes effect for the events delivered after it, exactly as if each event were its own batch. A change that
arrives after a period was sealed is frozen out of that period: it moves neither its end nor its bill.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum, StrEnum

from metering.events import MAX_INLINE_CONTACT_IDS, ContactEvent, StatusRenamed, SubscriptionChanged
from metering.message_parsing import FanOutContext
from metering.model import Activation, PeriodRef, PeriodSeal
from metering.rules import (
    ZONE_REACH,
    History,
    Subscription,
    earliest_close,
    utc_period,
    zone,
)


class Disposition(StrEnum):
    OPEN = "open"
    SEALED = "sealed"
    """Closed by the close job before this delivery: late, unless it changes nothing."""
    LATE = "late"
    """Arrived (bus time) at or after its period's close instant: late whatever it touches."""


@dataclass(frozen=True, slots=True)
class ActivityEvent:
    """An activity event at its place in the batch, with the contacts it touches (None: too many to record
    here, they are fanned out) and, for a fan-out chunk, the context its original event was placed in."""

    position: int
    message_id: str
    event: ContactEvent | StatusRenamed
    contact_ids: tuple[str, ...] | None
    context: FanOutContext | None = None

    @property
    def event_id(self) -> str:
        """The id recorded for what this event does: a chunk acts for its original event."""
        return self.context.original_event_id if self.context else self.event.id

    @property
    def account_id(self) -> str:
        return self.event.account_id


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    position: int
    message_id: str
    subscription: Subscription

    @property
    def account_id(self) -> str:
        return self.subscription.account_id


BatchEntry = ActivityEvent | ChangeEvent


class Unread(Enum):
    """The subscription of an event placed without its account's history (far from every edge and close,
    where only an alert needs it): read after the writes, and only when the count may reach a threshold."""

    SUBSCRIPTION = "unread"


UNREAD = Unread.SUBSCRIPTION
EventSubscription = Subscription | None | Unread
"""The subscription in effect for an event: none (unbilled), or not read yet."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an activity event counts: its account-period, when that period closes for the account, the
    subscription its alerts are raised with, and whether the period is open, sealed, or past its close."""

    ref: PeriodRef
    close_instant: datetime
    subscription: EventSubscription
    disposition: Disposition


@dataclass(frozen=True, slots=True)
class PlacedEvent:
    """An activity event and its placement."""

    entry: ActivityEvent
    placement: Placement

    @property
    def account_id(self) -> str:
        return self.entry.account_id

    @property
    def message_id(self) -> str:
        return self.entry.message_id


@dataclass(slots=True)
class BatchPlan:
    """The batch's subscription changes to store (each as it must be stored) and its placed events."""

    changes: list[ChangeEvent] = field(default_factory=list)
    placed: list[PlacedEvent] = field(default_factory=list)


def subscription_of(event: SubscriptionChanged) -> Subscription:
    detail = event.detail
    return Subscription(
        account_id=detail.account_id,
        effective_at=detail.occurred_at.astimezone(tz=zone("UTC")),
        event_id=event.id,
        plan=detail.plan,
        billing_cycle=detail.billing_cycle,
        addon_contacts=detail.addon_contacts,
        timezone=detail.timezone,
    )


def needs_history(entry: ActivityEvent, seals: Mapping[str, PeriodSeal], grace: timedelta) -> bool:
    """Whether an event needs its account's history to be placed. One far from every month edge (so in its
    UTC month in every zone), early enough that its period cannot be closed or sealed yet, and small enough
    to be recorded here does not: it is open in its UTC month whatever the history says."""
    if entry.context is not None:
        return False
    occurred, period = entry.event.occurred_at, utc_period(entry.event.occurred_at)
    near_edge = utc_period(occurred - ZONE_REACH) != period or utc_period(occurred + ZONE_REACH) != period
    earliest = earliest_close(period, grace)
    seal = seals.get(period)
    may_be_sealed = seal is not None and (
        seal.complete or (seal.closed_through is not None and seal.closed_through >= earliest)
    )
    fanned_out = entry.contact_ids is None or len(entry.contact_ids) > MAX_INLINE_CONTACT_IDS
    return near_edge or may_be_sealed or entry.event.time >= earliest or fanned_out


def place_batch(
    entries: Sequence[BatchEntry],
    histories: Mapping[str, History],
    seals: Mapping[str, PeriodSeal],
    grace: timedelta,
) -> BatchPlan:
    """Walk the batch in delivery order. `histories` holds the accounts whose events need their history; the
    others' events are open in their UTC month with their subscription unread. A change already stored keeps
    the frozen periods it was stored with."""
    plan = BatchPlan()
    current = dict(histories)
    for entry in entries:
        if isinstance(entry, ChangeEvent):
            history = current[entry.subscription.account_id]
            stored = next((c for c in history.changes if c.event_id == entry.subscription.event_id), None)
            change = stored or freeze_sealed(entry.subscription, history, seals, grace)
            plan.changes.append(ChangeEvent(entry.position, entry.message_id, change))
            current[change.account_id] = history.with_change(change)
        elif entry.context is not None:
            plan.placed.append(PlacedEvent(entry, _place_chunk(entry, entry.context, seals)))
        elif entry.account_id in current:
            plan.placed.append(
                PlacedEvent(entry, place_event(entry, current[entry.account_id], seals, grace))
            )
        else:
            plan.placed.append(PlacedEvent(entry, _place_in_utc_month(entry, grace)))
    return plan


def _place_in_utc_month(entry: ActivityEvent, grace: timedelta) -> Placement:
    period = utc_period(entry.event.occurred_at)
    return Placement(
        PeriodRef(entry.account_id, period), earliest_close(period, grace), UNREAD, Disposition.OPEN
    )


def place_event(
    entry: ActivityEvent, history: History, seals: Mapping[str, PeriodSeal], grace: timedelta
) -> Placement:
    """The placement of an event whose account's history was read."""
    event = entry.event
    period = history.place(event.occurred_at)
    for_period = history.for_period(period)
    close_instant = for_period.close_instant(period, grace)
    seal = seals.get(period, PeriodSeal(period))
    if event.time >= close_instant:
        disposition = Disposition.LATE
    elif seal.seals(close_instant):
        disposition = Disposition.SEALED
    else:
        disposition = Disposition.OPEN
    return Placement(
        PeriodRef(event.account_id, period), close_instant, for_period.at(event.occurred_at), disposition
    )


def _place_chunk(entry: ActivityEvent, context: FanOutContext, seals: Mapping[str, PeriodSeal]) -> Placement:
    seal = seals.get(context.period, PeriodSeal(context.period))
    return Placement(
        PeriodRef(entry.account_id, context.period),
        context.close_instant,
        context.subscription.subscription() if context.subscription else None,
        Disposition.SEALED if seal.seals(context.close_instant) else Disposition.OPEN,
    )


def freeze_sealed(
    change: Subscription, history: History, seals: Mapping[str, PeriodSeal], grace: timedelta
) -> Subscription:
    """The change as it must be stored: frozen out of every period it reaches that is already sealed, under
    the history before it or after it (so a sealed period never moves, and one the change would seal
    retroactively keeps its end and closes on schedule)."""
    after = history.with_change(change)
    reach_from = utc_period(change.effective_at - ZONE_REACH)
    frozen = {
        period
        for period, seal in seals.items()
        if period >= reach_from
        and (seal.closed_through is not None or seal.complete)
        and (
            seal.seals(history.for_period(period).close_instant(period, grace))
            or seal.seals(after.for_period(period).close_instant(period, grace))
        )
    }
    return change if not frozen else _with_frozen(change, frozenset(frozen))


def _with_frozen(change: Subscription, frozen: frozenset[str]) -> Subscription:
    return Subscription(
        account_id=change.account_id,
        effective_at=change.effective_at,
        event_id=change.event_id,
        plan=change.plan,
        billing_cycle=change.billing_cycle,
        addon_contacts=change.addon_contacts,
        timezone=change.timezone,
        frozen_periods=frozen,
    )


@dataclass(slots=True)
class PeriodWork:
    """What one batch does to one account's period, in delivery order: the contacts its open events make
    active (each by the first event delivered that touched it), and the sealed or late events."""

    ref: PeriodRef
    message_ids: set[str] = field(default_factory=set)
    activations: dict[str, tuple[Activation, EventSubscription]] = field(default_factory=dict)
    """Contact -> its activation and the subscription of the event that made it active (for alerts)."""
    origins: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    """Contact -> (delivery position of its activating event, order of activation, that event's message)."""
    sealed: list[ActivityEvent] = field(default_factory=list)
    late: list[ActivityEvent] = field(default_factory=list)

    def add(self, entry: ActivityEvent, placement: Placement) -> None:
        self.message_ids.add(entry.message_id)
        contacts = entry.contact_ids or ()
        if placement.disposition is Disposition.LATE:
            self.late.append(entry)
        elif placement.disposition is Disposition.SEALED:
            self.sealed.append(entry)
        else:
            for contact_id in contacts:
                if contact_id not in self.activations:
                    activation = Activation(
                        self.ref, contact_id, entry.event_id, entry.event.detail_type, entry.event.occurred_at
                    )
                    self.origins[contact_id] = (entry.position, len(self.activations), entry.message_id)
                    self.activations[contact_id] = (activation, placement.subscription)


def period_work(placed: Iterable[PlacedEvent]) -> dict[PeriodRef, PeriodWork]:
    """Group placed events by account-period, keeping delivery order within each."""
    work: dict[PeriodRef, PeriodWork] = {}
    for item in placed:
        ref = item.placement.ref
        if ref not in work:
            work[ref] = PeriodWork(ref)
        work[ref].add(item.entry, item.placement)
    return work
