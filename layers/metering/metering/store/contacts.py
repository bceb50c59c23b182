"""Active contacts and late events: the items of one account's period that say what is billed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from metering.errors import StoreUnavailable
from metering.model import Activation, ContactRecord, LateEvent, PeriodRef
from metering.retrying import CLOCK, RetryBudget, backoff_delay
from metering.rules import month_end, utc_iso, zone
from metering.store.codec import (
    EXPIRES,
    FIRST_EVENT,
    FIRST_OCCURRED,
    FIRST_TYPE,
    Item,
    epoch,
    string_value,
    text,
)
from metering.store.keys import CONTACT_PREFIX, contact_key, late_key, period_pk, ref_from_pk
from metering.store.table import Conflict, Table

CONTACT_RETENTION = timedelta(days=400)
"""Contacts stay explainable for this long after their period (DynamoDB TTL removes them, free of charge)."""
WRITE_ROUNDS = 4
"""Tries of a contact write within one batch before the batch gives up (botocore retries inside each)."""


@dataclass(frozen=True, slots=True)
class Activated:
    """What writing new contacts found: those this write made active, those found active with this very
    event as their first (an earlier try took effect: a time-out after the write, or an earlier delivery the
    read before the write missed), and those whose write kept failing (their periods must be retried)."""

    inserted: list[Activation]
    rewritten: list[Activation]
    failed: list[Activation]


@dataclass(frozen=True, slots=True)
class FoundActive:
    """What reading contacts found: the active ones, and the periods some of whose contacts could not be
    read (their reads kept failing: those periods must be retried)."""

    active: dict[tuple[PeriodRef, str], ContactRecord]
    unread: set[PeriodRef]


@dataclass(frozen=True, slots=True)
class StoredLate:
    """What storing late events did: those stored now (not by an earlier delivery), and those whose write
    kept failing."""

    stored: list[LateEvent]
    failed: list[LateEvent]


class Contacts:
    def __init__(self, table: Table) -> None:
        self._table = table

    def find_active(self, contacts: Sequence[tuple[PeriodRef, str]]) -> FoundActive:
        """Which of `contacts` are active, in BatchGetItem calls of 100 keys (eventually consistent: a stale
        miss is settled by the conditional write that follows it). Contacts are read period by period, so a
        read that keeps failing leaves as few periods unread as it can."""
        keys = [contact_key(ref, contact_id) for ref, contact_id in sorted(contacts)]
        items, unread = self._table.batch_get_settled(keys)
        return FoundActive(
            active={(ref, record.contact_id): record for ref, record in map(self.decode, items)},
            unread={ref_from_pk(text(key, "pk")) for key in unread},
        )

    @staticmethod
    def decode(item: Item) -> tuple[PeriodRef, ContactRecord]:
        return ref_from_pk(text(item, "pk")), ContactRecord(
            contact_id=text(item, "sk").removeprefix(CONTACT_PREFIX),
            first_event_id=text(item, FIRST_EVENT),
            first_detail_type=text(item, FIRST_TYPE),
            first_occurred_at=text(item, FIRST_OCCURRED),
        )

    def activate(self, activations: Sequence[Activation]) -> Activated:
        """Create one item per contact, each only if it is new (a failed condition returns the item in the
        way, so "already active" costs no read, and says whose it is). A write that fails is tried again in a
        few rounds; what still fails is returned as failed, so only its period is retried."""

        def put(activation: Activation) -> ContactRecord | StoreUnavailable | None:
            period_end = month_end(activation.ref.period, zone("UTC"))
            item = {
                **contact_key(activation.ref, activation.contact_id),
                FIRST_EVENT: string_value(activation.event_id),
                FIRST_TYPE: string_value(activation.detail_type),
                FIRST_OCCURRED: string_value(utc_iso(activation.occurred_at)),
                EXPIRES: epoch(period_end + CONTACT_RETENTION),
            }
            try:
                outcome = self._table.create(item)
            except StoreUnavailable as exc:
                return exc
            return self.decode(outcome.item)[1] if isinstance(outcome, Conflict) else None

        inserted: list[Activation] = []
        rewritten: list[Activation] = []
        pending = list(activations)
        for round_number in range(WRITE_ROUNDS):
            CLOCK.sleep(backoff_delay(round_number) if round_number else 0.0)
            failed: list[Activation] = []
            for activation, result in zip(pending, self._table.in_parallel(put, pending), strict=True):
                if isinstance(result, StoreUnavailable):
                    failed.append(activation)
                elif result is None:
                    inserted.append(activation)
                elif result.first_event_id == activation.event_id:
                    rewritten.append(activation)
            pending = failed
            if not pending:
                break
        return Activated(inserted, rewritten, pending)

    def count(self, ref: PeriodRef, *, consistent: bool) -> int:
        """The period's active contacts, counted from its contact items (a Query reads ~4 KB per 30)."""
        return sum(
            int(page.get("Count", 0))
            for page in self._table.query(
                KeyConditionExpression="pk = :pk AND begins_with(sk, :contact)",
                ExpressionAttributeValues={
                    ":pk": string_value(period_pk(ref)),
                    ":contact": string_value(CONTACT_PREFIX),
                },
                Select="COUNT",
                ConsistentRead=consistent,
            )
        )

    def count_up_to(self, ref: PeriodRef, limit: int, *, consistent: bool) -> int | None:
        """The period's active contacts if there are fewer than `limit`, else None: a read that costs what
        `limit` contact items cost, whatever the period's size."""
        response = self._table.call(
            self._table.client.query,
            TableName=self._table.name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :contact)",
            ExpressionAttributeValues={
                ":pk": string_value(period_pk(ref)),
                ":contact": string_value(CONTACT_PREFIX),
            },
            Select="COUNT",
            Limit=limit,
            ConsistentRead=consistent,
        )
        answer: dict[str, Any] = dict(response)
        return None if "LastEvaluatedKey" in answer else int(answer.get("Count", 0))

    def activation_times(self, ref: PeriodRef) -> list[datetime]:
        """When each of the period's contacts became active, read consistently: the close's count (a Query
        bills the bytes it reads, so reading `o` costs what counting does) and the period's shape."""
        return [
            datetime.fromisoformat(text(item, FIRST_OCCURRED))
            for page in self._table.query(
                KeyConditionExpression="pk = :pk AND begins_with(sk, :contact)",
                ExpressionAttributeValues={
                    ":pk": string_value(period_pk(ref)),
                    ":contact": string_value(CONTACT_PREFIX),
                },
                ProjectionExpression=FIRST_OCCURRED,
                ConsistentRead=True,
            )
            for item in page.get("Items", [])
        ]

    def records(self, ref: PeriodRef) -> Iterator[ContactRecord]:
        """The active contacts of a period with the first event that made each active."""
        for page in self._table.query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :contact)",
            ExpressionAttributeValues={
                ":pk": string_value(period_pk(ref)),
                ":contact": string_value(CONTACT_PREFIX),
            },
        ):
            for item in page.get("Items", []):
                yield self.decode(item)[1]

    def record_late(self, late: LateEvent) -> bool:
        """Keep a late event once per event id; true when this call stored it."""
        item = {
            **late_key(late.ref, late.event_id),
            "eventId": string_value(late.event_id),
            "detailType": string_value(late.detail_type),
            "occurredAt": string_value(late.occurred_at),
            "receivedAt": string_value(late.received_at),
        }
        return not isinstance(self._table.create(item), Conflict)

    def record_late_events(self, events: Sequence[LateEvent], budget: RetryBudget) -> StoredLate:
        """Store late events in parallel, each tried again within `budget` (a conditional put: a second try
        of one that took effect finds it stored)."""
        results = self._table.settle_in_parallel(
            lambda late: budget.call(lambda: self.record_late(late)), events
        )
        return StoredLate(
            stored=[late for late, result in zip(events, results, strict=True) if result is True],
            failed=[
                late
                for late, result in zip(events, results, strict=True)
                if isinstance(result, StoreUnavailable)
            ],
        )
