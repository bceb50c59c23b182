"""Recording's alert stage: after a batch's contact writes, whether its new contacts may have crossed a
threshold, found out as cheaply as each period allows, and the claims and publications that follow.

Small periods are counted; large ones add to a tally that bounds their count; an account's history is read
only once a period can be near an alert (docs/design.md#usage-alerts). The rules themselves are pure and in
`alert_rules`; this module holds the per-container knowledge that saves reads: which thresholds are claimed,
which periods are past the least count at which an alert can be due, and which are large.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from metering import alert_rules
from metering.memory import Remembered
from metering.model import Activation, AlertRecord, PeriodRef
from metering.placement import EventSubscription, Unread
from metering.retrying import CLOCK, RetryBudget
from metering.rules import History

if TYPE_CHECKING:
    from metering.settings import RecorderSettings
    from metering.store import MeteringStore

LARGE_PERIOD = 150
"""Contacts from which a period's batches add to its tally instead of counting it: a consistent count of 150
contact items (about 120 bytes each) reads 5 units of 4 KB, what one write unit costs."""
REMEMBERED_PERIODS = 100_000
"""Periods a container remembers facts of (claims, reaching a count): far more than one container sees."""


class ClaimedThresholds:
    """Thresholds this container knows are claimed, per period (claims are never undone): once all are,
    the period needs no alert read and no count."""

    def __init__(self, capacity: int = REMEMBERED_PERIODS) -> None:
        self._capacity = capacity
        self._claimed: dict[PeriodRef, frozenset[int]] = {}

    def get(self, ref: PeriodRef) -> frozenset[int]:
        return self._claimed.get(ref, frozenset())

    def add(self, ref: PeriodRef, percents: Iterable[int]) -> None:
        self._claimed[ref] = self.get(ref) | frozenset(percents)
        if len(self._claimed) > self._capacity:
            for stale in list(self._claimed)[: self._capacity // 10]:
                del self._claimed[stale]


@dataclass(slots=True)
class NewContacts:
    """The contacts a batch made active in one period, in delivery order, and whether any of them was made
    active by an earlier attempt of a redelivered message (whose alerts may still be unpublished)."""

    contacts: list[tuple[Activation, EventSubscription]] = field(default_factory=list)
    redelivered: bool = False


@dataclass(slots=True)
class AlertChecks:
    """The alert stage: one per container, beside the recorder, so its knowledge lives as long as it does."""

    settings: RecorderSettings
    store: MeteringStore
    claimed: ClaimedThresholds = field(default_factory=ClaimedThresholds)
    populous: Remembered[PeriodRef] = field(default_factory=lambda: Remembered(REMEMBERED_PERIODS))
    """Periods seen at the least count at which any billed subscription has an alert due: their events are
    placed with the account's history read up front, so an unbilled account's count is never read."""
    large: Remembered[PeriodRef] = field(default_factory=lambda: Remembered(REMEMBERED_PERIODS))
    """Periods seen at `LARGE_PERIOD` contacts: their batches add to the tally instead of counting."""

    def wants_history(self, ref: PeriodRef) -> bool:
        """Whether a batch should read the account's history before placing events of this period: once the
        period can be near an alert, and only while the container knows of a threshold still unclaimed."""
        return ref in self.populous and not set(self.settings.alert_thresholds) <= self.claimed.get(ref)

    def settle(self, ref: PeriodRef, new: NewContacts, budget: RetryBudget) -> list[AlertRecord]:
        """Claim and publish the thresholds the new contacts cross; returns the alerts published. The claims
        are read only when a threshold may have been crossed (`_due_count`), or for a redelivery, which may
        have to publish one its first attempt claimed and could not publish. Reads are tried again within
        `budget`; raises StoreUnavailable when the period must be retried."""
        count = self._due_count(ref, new, budget)
        if count is None and not new.redelivered:
            return []
        claims = budget.call(lambda: self.store.alerts.read_claims(ref))
        self.claimed.add(ref, claims)
        to_publish = alert_rules.overdue(claims.values(), self.settings.attempt_timeout_seconds)
        if count is not None:
            to_publish += self._claim_crossed(ref, count, new.contacts, budget)
        unique = list({alert.threshold_percent: alert for alert in to_publish}.values())
        alert_rules.publish(self.store, self.settings.alert_channels, ref, unique, budget)
        return unique

    def _due_count(self, ref: PeriodRef, new: NewContacts, budget: RetryBudget) -> int | None:
        """The period's exact count when the new contacts may have crossed a threshold; None when they
        cannot have. A small period is counted (a few KB); a large one adds its new contacts to the
        period's tally and is counted only when `LARGE_PERIOD - 1 + tally` reaches the next threshold.
        That bound holds because every batch adds after its writes once the period is large to it, and
        the contacts of batches that never added are fewer than `LARGE_PERIOD` (each such batch counted
        fewer after writing); the last batch to add before a crossing therefore sees it."""
        need = self._need(ref, new)
        if need is None:
            return None

        def count_now() -> int:
            return budget.call(lambda: self.store.contacts.count(ref, consistent=True))

        if ref in self.large:
            tally = self._add_to_tally(ref, new, budget)
            need = self._need(ref, new)
            if need is None or LARGE_PERIOD - 1 + tally < need:
                return None
            count = count_now()
        else:
            count = count_now()
            if count >= LARGE_PERIOD:
                self.large.add(ref)
                tally = self._add_to_tally(ref, new, budget)
                need = self._need(ref, new)
                if need is not None and count < need <= LARGE_PERIOD - 1 + tally:
                    count = count_now()
        if need is None or count < need:
            return None
        if any(isinstance(subscription, Unread) for _, subscription in new.contacts):
            self.populous.add(ref)
            new.contacts = self._with_subscriptions(ref, new.contacts, budget)
            need = self._need(ref, new)
        return count if need is not None and count >= need else None

    def _need(self, ref: PeriodRef, new: NewContacts) -> int | None:
        subscriptions = [subscription for _, subscription in new.contacts]
        return alert_rules.lowest_need(self.settings.alert_thresholds, self.claimed.get(ref), subscriptions)

    def _add_to_tally(self, ref: PeriodRef, new: NewContacts, budget: RetryBudget) -> int:
        """Add the new contacts to the tally (a retry after an addition that took effect adds twice: the tally
        is a bound that only makes the exact count come sooner)."""
        tally, claims = budget.call(lambda: self.store.alerts.add_to_tally(ref, len(new.contacts)))
        self.claimed.add(ref, claims)
        return tally

    def _with_subscriptions(
        self, ref: PeriodRef, contacts: Sequence[tuple[Activation, EventSubscription]], budget: RetryBudget
    ) -> list[tuple[Activation, EventSubscription]]:
        """The subscription of each activation placed without its history, as placement would have found it
        with the history: the account had no change in this batch, so the history read now is the one it
        would have read."""
        stored = budget.call(lambda: self.store.subscriptions.history(ref.account_id))
        history = History.of(stored, self.settings.default_timezone)
        for_period = history.for_period(ref.period)
        return [
            (activation, for_period.at(activation.occurred_at) if isinstance(sub, Unread) else sub)
            for activation, sub in contacts
        ]

    def _claim_crossed(
        self,
        ref: PeriodRef,
        count: int,
        contacts: Sequence[tuple[Activation, EventSubscription]],
        budget: RetryBudget,
    ) -> list[AlertRecord]:
        """Claim the thresholds crossed by `contacts` (the last of the `count` active contacts); returns the
        claims to publish: this caller's, and earlier ones whose claimer can no longer publish them."""
        claimed = self.claimed.get(ref)
        read = [(activation, None if isinstance(sub, Unread) else sub) for activation, sub in contacts]
        crossed = alert_rules.crossings(
            ref,
            thresholds=self.settings.alert_thresholds,
            claimed=claimed,
            count_before=count - len(contacts),
            new_contacts=read,
            now=int(CLOCK.wall()),
            claimer=secrets.token_hex(8),
        )
        to_publish: list[AlertRecord] = []
        for alert in crossed:
            earlier = budget.call(partial(self.store.alerts.claim, alert))
            if earlier is None:
                to_publish.append(alert)
            else:
                to_publish += alert_rules.overdue([earlier], self.settings.attempt_timeout_seconds)
        self.claimed.add(ref, [alert.threshold_percent for alert in crossed])
        return to_publish
