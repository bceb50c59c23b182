"""Contact counters: the exact count of a large period, kept by CountContacts from the table's stream, so that
reading a period's usage costs the same for 50 contacts as for 500,000 (docs/design.md#contact-counters).

A counter item holds the count `c`, the instant `through` before which every contact recorded is in it, and
one mark per stream shard (lane) that fed it: the last sequence number applied, so a redelivered stream batch
adds nothing twice. A period gets its counter from a consistent scan of its contacts; the digests of the
contacts that scan saw are kept in snapshot items, because their stream records may still be on their way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from metering.model import PeriodRef
from metering.rules import month_end, utc_iso, zone
from metering.store.codec import EXPIRES, Item, epoch, instant, number, number_value, string_value, text
from metering.store.contacts import CONTACT_RETENTION
from metering.store.keys import (
    CONTACT_PREFIX,
    SNAPSHOT_SK,
    counter_key,
    key,
    period_pk,
    ref_from_pk,
)
from metering.store.table import Conflict, Table

COUNT = "c"
THROUGH = "a"
"""The counter's asOf."""
SNAPSHOT_UNTIL = "u"
SNAPSHOT_CHUNKS = "k"
LANE_PREFIX = "m"
DIGESTS = "d"
DIGEST_BYTES = 12
"""Bytes of a contact's digest in a snapshot: two contacts of one period share one with odds of about one in
10^24 at a million contacts, and 20,000 digests fit one item."""
DIGESTS_PER_CHUNK = 20_000
SEQUENCE_DIGITS = 40
"""Stream sequence numbers are decimal strings of up to 40 digits: padded, they compare as text."""
LANE_RETENTION = timedelta(hours=25)
"""A lane's mark matters while its shard can redeliver: a stream keeps records 24 hours."""
MARK_ATTEMPTS = 3
"""Conditional applications of one period's records before its records are handed back to the stream."""


def digest(contact_id: str) -> bytes:
    return hashlib.blake2b(contact_id.encode("utf-8"), digest_size=DIGEST_BYTES).digest()


def lane_attribute(lane: str) -> str:
    """The attribute holding a lane's mark: short, since it is written with every application."""
    return LANE_PREFIX + hashlib.blake2b(lane.encode("utf-8"), digest_size=4).hexdigest()


@dataclass(frozen=True, slots=True)
class LaneMark:
    sequence: int
    at: datetime

    def encoded(self) -> str:
        return f"{self.sequence:0{SEQUENCE_DIGITS}d}@{int(self.at.timestamp())}"

    @classmethod
    def decode(cls, value: str) -> LaneMark:
        sequence, _, seconds = value.partition("@")
        return cls(int(sequence), datetime.fromtimestamp(int(seconds), UTC))


@dataclass(frozen=True, slots=True)
class ContactCounter:
    """A period's counter: `contacts` is exact for every contact recorded before `through`."""

    ref: PeriodRef
    contacts: int
    through: datetime
    marks: dict[str, LaneMark] = field(default_factory=dict)
    """Lane attribute -> the last sequence number applied from it."""
    snapshot_until: datetime | None = None
    """Until when a streamed contact may be one the bootstrap scan already counted."""

    def mark(self, lane: str) -> int:
        found = self.marks.get(lane_attribute(lane))
        return found.sequence if found else -1


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The contacts a period's bootstrap scan counted (by digest), and until when they matter."""

    digests: frozenset[bytes]
    until: datetime

    def __len__(self) -> int:
        return len(self.digests)


@dataclass(frozen=True, slots=True)
class Scan:
    contact_ids: frozenset[str]
    started: datetime
    ended: datetime


class Counters:
    def __init__(self, table: Table) -> None:
        self._table = table

    def read_settled(
        self, refs: Iterable[PeriodRef]
    ) -> tuple[dict[PeriodRef, ContactCounter], set[PeriodRef]]:
        """The counters of `refs` that exist, read consistently (a period read as counterless must be one),
        and the periods whose counter could not be read (only those must be retried)."""
        items, unread = self._table.batch_get_settled([counter_key(ref) for ref in refs], consistent=True)
        counters = {counter.ref: counter for counter in map(decode_counter, items)}
        return counters, {ref_from_pk(text(key, "pk")) for key in unread}

    def scan(self, ref: PeriodRef) -> Scan:
        """Every contact of the period, read consistently, and when the reading started and ended."""
        started = datetime.now(UTC)
        contact_ids = frozenset(
            text(item, "sk").removeprefix(CONTACT_PREFIX)
            for page in self._table.query(
                KeyConditionExpression="pk = :pk AND begins_with(sk, :contact)",
                ExpressionAttributeValues={
                    ":pk": string_value(period_pk(ref)),
                    ":contact": string_value(CONTACT_PREFIX),
                },
                ProjectionExpression="sk",
                ConsistentRead=True,
            )
            for item in page.get("Items", [])
        )
        return Scan(contact_ids, started=started, ended=datetime.now(UTC))

    def save_snapshot(self, ref: PeriodRef, scan: Scan, relevance: timedelta) -> Snapshot:
        """Store what a bootstrap scan counted, once: a second attempt gets the snapshot stored first (its
        count is the one the counter starts from)."""
        ordered = sorted(digest(contact_id) for contact_id in scan.contact_ids)
        chunks = [
            ordered[offset : offset + DIGESTS_PER_CHUNK]
            for offset in range(0, len(ordered), DIGESTS_PER_CHUNK)
        ] or [[]]
        until = scan.ended + relevance
        head = {
            **_snapshot_key(ref, 0),
            SNAPSHOT_UNTIL: string_value(utc_iso(until)),
            SNAPSHOT_CHUNKS: number_value(len(chunks)),
            EXPIRES: _expiry(ref),
            **_digests(chunks[0]),
        }
        outcome = self._table.create(head)
        if isinstance(outcome, Conflict):
            return self.read_snapshot(ref)
        self._table.batch_put(
            {**_snapshot_key(ref, index), EXPIRES: _expiry(ref), **_digests(chunk)}
            for index, chunk in enumerate(chunks[1:], start=1)
        )
        return Snapshot(frozenset(ordered), until)

    def read_snapshot(self, ref: PeriodRef) -> Snapshot:
        head = self._table.get(_snapshot_key(ref, 0)) or {}
        chunks = number(head, SNAPSHOT_CHUNKS, 1)
        rest = self._table.batch_get([_snapshot_key(ref, i) for i in range(1, chunks)], consistent=True)
        items = [head, *rest]
        if len(items) != chunks:
            raise LookupError(f"snapshot of {period_pk(ref)} is missing chunks")
        found = frozenset(value for item in items for value in item.get(DIGESTS, {}).get("BS", []))
        return Snapshot(found, instant(head, SNAPSHOT_UNTIL) or datetime.min.replace(tzinfo=UTC))

    def apply(
        self,
        counter: ContactCounter,
        lane: str,
        last: LaneMark,
        added: int,
        stale_lanes: Sequence[str] = (),
        snapshot_until: datetime | None = None,
    ) -> ContactCounter | None:
        """Add `added` contacts and move the lane's mark to `last`, only if the mark is still the one
        `counter` holds (created with `counter.contacts` as base when it is new). None when applied; the
        counter as stored when another application came first."""
        mark = lane_attribute(lane)
        stored = counter.marks.get(mark)
        names = {"#mark": mark, **{f"#stale{i}": name for i, name in enumerate(stale_lanes)}}
        values = {
            ":base": number_value(counter.contacts),
            ":added": number_value(added),
            ":mark": string_value(last.encoded()),
            ":through": string_value(utc_iso(max(counter.through, last.at))),
            ":expires": _expiry(counter.ref),
        }
        assignments = [
            f"{COUNT} = if_not_exists({COUNT}, :base) + :added",
            "#mark = :mark",
            f"{THROUGH} = :through",
            f"{EXPIRES} = if_not_exists({EXPIRES}, :expires)",
        ]
        if snapshot_until is not None:
            assignments.append(f"{SNAPSHOT_UNTIL} = :until")
            values[":until"] = string_value(utc_iso(snapshot_until))
        if stored is None:
            condition = "attribute_not_exists(#mark)"
        else:
            condition = "#mark = :stored"
            values[":stored"] = string_value(stored.encoded())
        removals = [name for name in names if name.startswith("#stale")]
        outcome = self._table.write(
            Key=counter_key(counter.ref),
            UpdateExpression="SET "
            + ", ".join(assignments)
            + (" REMOVE " + ", ".join(removals) if removals else ""),
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        if isinstance(outcome, Conflict):
            return decode_counter(outcome.item) if outcome.item else counter
        return None


def decode_counter(item: Item) -> ContactCounter:
    return ContactCounter(
        ref=ref_from_pk(text(item, "pk")),
        contacts=number(item, COUNT),
        through=instant(item, THROUGH) or datetime.min.replace(tzinfo=UTC),
        marks={
            name: LaneMark.decode(value["S"])
            for name, value in item.items()
            if name.startswith(LANE_PREFIX) and "S" in value
        },
        snapshot_until=instant(item, SNAPSHOT_UNTIL),
    )


def _snapshot_key(ref: PeriodRef, chunk: int) -> dict[str, dict[str, str]]:
    return key(period_pk(ref), SNAPSHOT_SK if chunk == 0 else f"{SNAPSHOT_SK}#{chunk}")


def _digests(chunk: list[bytes]) -> Item:
    """A binary set (DynamoDB stores no empty set: an empty scan keeps no attribute)."""
    return {DIGESTS: {"BS": chunk}} if chunk else {}


def _expiry(ref: PeriodRef) -> dict[str, str]:
    return epoch(month_end(ref.period, zone("UTC")) + CONTACT_RETENTION)
