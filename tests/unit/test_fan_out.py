"""Fan-out of a claim-check `Status Renamed`: each chunk is a valid event with a stable id, and carries the
context the original was judged in (period, close instant, subscription), so it is counted as delivered."""

from __future__ import annotations

import json

import pytest
from metering.events import MAX_INLINE_CONTACT_IDS, StatusRenamed
from metering.fan_out import fan_out_chunks
from metering.message_parsing import (
    FanOutChunk,
    FanOutContext,
    InboundRecord,
    SubscriptionSnapshot,
    parse_record,
)
from metering.model import Rejection

from tests.helpers import contact_ids, load_event, utc

CONTEXT = FanOutContext(
    original_event_id="6f1c2a4e-0007-4c1a-9a7e-2b9d1f0c0007",
    period="2026-10",
    close_instant=utc("2026-11-01T05:00:00Z"),
    subscription=SubscriptionSnapshot(
        account_id="acc-1",
        effective_at=utc("2026-09-01T00:00:00Z"),
        event_id="sub-1",
        plan="grow",
        billing_cycle="monthly",
        addon_contacts=0,
        timezone="Europe/Berlin",
    ),
)


def claim_check_rename(event_id: str) -> StatusRenamed:
    event = parse_record(
        InboundRecord("message-1", json.dumps(load_event("status_renamed_claim_check.json", id=event_id)))
    )
    assert isinstance(event, StatusRenamed)
    return event


def test_fan_out_splits_ids_into_chunks_of_at_most_the_inline_limit_in_order() -> None:
    # Given a claim-check rename of 2,500 contacts
    event = claim_check_rename("6f1c2a4e-0007-4c1a-9a7e-2b9d1f0c0007")
    ids = contact_ids("con", 2500)
    # When it is fanned out
    chunks = [json.loads(body) for body in fan_out_chunks(event, ids, CONTEXT)]
    bodies = [chunk["event"] for chunk in chunks]
    # Then the chunks carry every id once, in order, at most 1,000 each, inline instead of the object
    assert [len(body["detail"]["contactIds"]) for body in bodies] == [1000, 1000, 500]
    assert [cid for body in bodies for cid in body["detail"]["contactIds"]] == ids
    assert all("contactIdsObject" not in body["detail"] for body in bodies)
    assert all(len(body["detail"]["contactIds"]) <= MAX_INLINE_CONTACT_IDS for body in bodies)
    # And they keep the original's account, status, times and detail-type, and the context it was judged in
    assert {
        (body["detail-type"], body["detail"]["accountId"], body["detail"]["statusId"]) for body in bodies
    } == {("Status Renamed", "acc-1", "st-lead")}
    assert {body["time"] for body in bodies} == {"2026-10-05T10:00:05Z"}
    assert all(FanOutContext.model_validate(chunk["context"]) == CONTEXT for chunk in chunks)


def test_fan_out_chunk_ids_are_stable_so_a_redelivered_rename_makes_the_same_chunks() -> None:
    # Given the same claim-check rename fanned out twice (a redelivery)
    event = claim_check_rename("6f1c2a4e-0007-4c1a-9a7e-2b9d1f0c0007")
    ids = contact_ids("con", 1500)
    # When the chunk bodies are compared
    first, second = fan_out_chunks(event, ids, CONTEXT), fan_out_chunks(event, ids, CONTEXT)
    # Then they are identical, with distinct ids derived from the original id
    assert first == second
    chunk_ids = [json.loads(body)["event"]["id"] for body in first]
    assert len(set(chunk_ids)) == 2
    assert all(chunk_id.startswith(event.id) for chunk_id in chunk_ids)


@pytest.mark.parametrize(
    "event_id",
    [
        pytest.param("6f1c2a4e-0007-4c1a-9a7e-2b9d1f0c0007", id="uuid"),
        pytest.param("e" * 256, id="longest-accepted-envelope-id"),
    ],
)
def test_every_fan_out_chunk_parses_as_a_valid_status_renamed(event_id: str) -> None:
    # Given a claim-check rename whose envelope id the contract accepts
    event = claim_check_rename(event_id)
    # When it is fanned out and each chunk is parsed by the recorder as it comes back from the fan-out queue
    parsed = [
        parse_record(InboundRecord(f"chunk-{n}", body, from_fan_out=True))
        for n, body in enumerate(fan_out_chunks(event, contact_ids("con", 1001), CONTEXT))
    ]
    # Then no chunk is rejected: the contacts of an accepted rename are never lost to its own fan-out
    assert [type(result).__name__ for result in parsed] == ["FanOutChunk", "FanOutChunk"]
    assert not any(isinstance(result, Rejection) for result in parsed)


def test_a_chunk_on_the_activity_queue_is_not_trusted_as_a_chunk() -> None:
    # Given a chunk body that reaches the activity queue (an operator's replay, or a forged message)
    body = fan_out_chunks(claim_check_rename("6f1c2a4e-0007-4c1a-9a7e-2b9d1f0c0007"), ["con-1"], CONTEXT)[0]
    # When the recorder parses it as an activity message
    parsed = parse_record(InboundRecord("activity-1", body))
    # Then its context is not believed: it is not a CRM envelope, so it is rejected
    assert isinstance(parsed, Rejection)
    assert not isinstance(parsed, FanOutChunk)
