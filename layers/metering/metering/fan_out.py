"""Fan-out stage of recording: a placed rename of more contacts than one batch takes goes to the fan-out queue
in chunks, each carrying the context the rename was placed in, so the chunks are recorded as the rename would
have been. Grouping (`placement.period_work`) then sees only what this batch records itself."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from metering import gateways
from metering.errors import StoreUnavailable
from metering.events import FAN_OUT_SUFFIX, MAX_INLINE_CONTACT_IDS, StatusRenamed
from metering.message_parsing import FanOutContext, SubscriptionSnapshot
from metering.placement import ActivityEvent, Disposition, PlacedEvent, Unread
from metering.recording_outcome import RecordingOutcome

if TYPE_CHECKING:
    from metering.settings import RecorderSettings


def hand_off_large_renames(
    placed: Sequence[PlacedEvent], settings: RecorderSettings, outcome: RecordingOutcome
) -> list[PlacedEvent]:
    """The placed events this batch records: renames too large for one batch are sent to the fan-out queue
    instead; a rename that is late or sealed is late as a whole (kept, without its contacts). A rename whose
    chunks could not be sent fails its account's records."""
    kept: list[PlacedEvent] = []
    for item in placed:
        entry, placement = item.entry, item.placement
        contact_ids = entry.contact_ids or ()
        if entry.context is not None or len(contact_ids) <= MAX_INLINE_CONTACT_IDS:
            kept.append(item)
            continue
        if placement.disposition is not Disposition.OPEN:
            kept.append(PlacedEvent(_without_contacts(entry), placement))
            continue
        assert isinstance(entry.event, StatusRenamed)
        # a rename to fan out is placed with its account's history, so its subscription is read
        assert not isinstance(placement.subscription, Unread)
        context = FanOutContext(
            original_event_id=entry.event.id,
            period=placement.ref.period,
            close_instant=placement.close_instant,
            subscription=SubscriptionSnapshot.of(placement.subscription) if placement.subscription else None,
        )
        try:
            gateways.send_messages(
                settings.fanout_queue_url, fan_out_chunks(entry.event, contact_ids, context)
            )
        except StoreUnavailable as exc:
            outcome.fail_account(entry.account_id, str(exc), [entry.message_id])
            continue
        outcome.fanned_out_contacts += len(contact_ids)
    return kept


def fan_out_chunks(event: StatusRenamed, contact_ids: Sequence[str], context: FanOutContext) -> list[str]:
    """A huge rename as chunks of at most the inline limit, each an ordinary `Status Renamed` with a derived
    id and the context its original was placed in."""
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
        body = {"event": chunk, "context": context.model_dump(mode="json", by_alias=True)}
        bodies.append(json.dumps(body, separators=(",", ":")))
    return bodies


def _without_contacts(entry: ActivityEvent) -> ActivityEvent:
    return ActivityEvent(entry.position, entry.message_id, entry.event, (), entry.context)
