"""Recording's intake stage: each SQS record becomes a batch entry in delivery order, or a rejection with its
reason (stored, never retried). A claim-checked rename gets its contact ids from the bucket here, so every
later stage works on contact ids in memory."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from metering import gateways
from metering.errors import ClaimCheckInvalid, StoreUnavailable
from metering.events import StatusRenamed, SubscriptionChanged
from metering.message_parsing import FanOutChunk, InboundRecord, parse_record, rejection_now
from metering.model import Rejection
from metering.placement import ActivityEvent, BatchEntry, ChangeEvent, subscription_of
from metering.recording_outcome import RecordingOutcome
from metering.retrying import RetryBudget

if TYPE_CHECKING:
    from metering.settings import RecorderSettings
    from metering.store import MeteringStore


def take_in(
    records: Sequence[InboundRecord],
    settings: RecorderSettings,
    store: MeteringStore,
    outcome: RecordingOutcome,
    budget: RetryBudget,
) -> tuple[list[BatchEntry], set[str]]:
    """Parse each record; store rejections; resolve claim checks (a read that fails is tried again within
    `budget`, then fails its account's records). Returns the entries in delivery order and the message ids
    that are retries (an earlier attempt may have written and then died)."""
    entries: list[BatchEntry] = []
    rejected_messages: list[str] = []
    retries = {record.message_id for record in records if record.attempt > 1}
    for position, record in enumerate(records):
        parsed = parse_record(record)
        if isinstance(parsed, Rejection):
            outcome.rejected.append(parsed)
            rejected_messages.append(record.message_id)
            continue
        event = parsed.event if isinstance(parsed, FanOutChunk) else parsed
        outcome.events_by_type[event.detail_type] += 1
        if isinstance(event, SubscriptionChanged):
            entries.append(ChangeEvent(position, record.message_id, subscription_of(event)))
            continue
        try:
            contact_ids = budget.call(partial(_contacts_of, event, settings))
        except ClaimCheckInvalid as exc:
            assert isinstance(event, StatusRenamed)
            outcome.rejected.append(rejection_now(event.id, str(exc), event.model_dump_json(by_alias=True)))
            rejected_messages.append(record.message_id)
            continue
        except StoreUnavailable as exc:
            outcome.fail_account(event.account_id, str(exc), [record.message_id])
            continue
        context = parsed.context if isinstance(parsed, FanOutChunk) else None
        entries.append(ActivityEvent(position, record.message_id, event, contact_ids, context))
    try:
        store.rejections.save(outcome.rejected)
    except StoreUnavailable as exc:
        outcome.fail(rejected_messages, str(exc))
    return entries, retries


def _contacts_of(event: object, settings: RecorderSettings) -> tuple[str, ...]:
    if not isinstance(event, StatusRenamed):
        return (getattr(event, "detail").contact_id,)  # noqa: B009 - every single-contact detail has one
    if event.detail.contact_ids is not None:
        return tuple(event.detail.contact_ids)
    claim = event.detail.contact_ids_object
    assert claim is not None  # the model requires one of the two sources
    if claim.bucket != settings.claim_check_bucket:
        raise ClaimCheckInvalid(f"claim-check bucket {claim.bucket!r} is not the configured one")
    return tuple(gateways.read_claim_check(claim.bucket, claim.key))
