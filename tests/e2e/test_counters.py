"""CountContacts: the exact contact counter of a large period, kept from the table's stream, so that a usage
view costs the same for any period size."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from metering.counting import COUNTER_FROM
from metering.model import PeriodRef
from metering.usage_view import ReadSettings, read_usage

from tests.harness import Metering
from tests.helpers import contact_events, contact_ids

OCTOBER = "2026-10"
LARGE = PeriodRef("acc-large", OCTOBER)
SMALL = PeriodRef("acc-small", OCTOBER)
SETTINGS = ReadSettings("UTC", timedelta(hours=6), {})
MID_OCTOBER = datetime(2026, 10, 20, tzinfo=UTC)
STACK_EVENTS = Path(__file__).resolve().parents[2] / "events"


def record_contacts(metering: Metering, account_id: str, count: int, start: int = 1) -> None:
    """`count` new contacts of the account on October 10th, in batches of 10."""
    ids = contact_ids("con", count, start)
    for offset in range(0, count, 10):
        metering.record_events(contact_events(account_id, ids[offset : offset + 10], "2026-10-10T09:00:00Z"))


def counted(metering: Metering, ref: PeriodRef) -> int | None:
    counter = metering.store.counters.read_settled([ref])[0].get(ref)
    return counter.contacts if counter else None


def test_a_large_period_gets_an_exact_counter_and_a_small_one_none(metering: Metering) -> None:
    # Given a period three times the counter threshold and one below it, recorded in batches of 10
    record_contacts(metering, LARGE.account_id, 3 * COUNTER_FROM)
    record_contacts(metering, SMALL.account_id, COUNTER_FROM // 2)
    # When CountContacts reads the stream in batches of 7 records
    metering.count_new_contacts(batch_size=7)
    # Then the large period's counter is its exact count, and the small period has no counter to write
    assert (
        counted(metering, LARGE) == metering.store.contacts.count(LARGE, consistent=True) == 3 * COUNTER_FROM
    )
    assert counted(metering, SMALL) is None
    # and the usage view reads the counter for one and counts the other outright, both exact
    assert read_usage(metering.store, LARGE.account_id, OCTOBER, MID_OCTOBER, SETTINGS).active_contacts == 72
    assert read_usage(metering.store, SMALL.account_id, OCTOBER, MID_OCTOBER, SETTINGS).active_contacts == 12


def test_a_redelivered_stream_batch_adds_nothing_twice(metering: Metering) -> None:
    # Given a counted period, and 30 contacts recorded after its counter started, counted in batches of 10
    record_contacts(metering, LARGE.account_id, 2 * COUNTER_FROM)
    metering.count_new_contacts()
    record_contacts(metering, LARGE.account_id, 30, start=100)
    delivered = metering.count_new_contacts(batch_size=10)
    assert counted(metering, LARGE) == 2 * COUNTER_FROM + 30
    # When every batch is delivered again (a checkpoint lost after the function succeeded), last first
    for event in reversed(delivered):
        assert metering.invoke("CountContacts", event)["batchItemFailures"] == []
    # Then the counter has not moved
    assert counted(metering, LARGE) == 2 * COUNTER_FROM + 30


def test_contacts_the_bootstrap_scan_saw_are_not_counted_again_when_their_records_arrive(
    metering: Metering,
) -> None:
    # Given 60 contacts recorded before CountContacts has read any of them
    record_contacts(metering, LARGE.account_id, 60)
    # When it reads their records in batches of 25: the first batch's scan sees all 60 stored contacts
    metering.count_new_contacts(batch_size=25)
    # Then the records that arrive after the scan add nothing: the counter is 60, not 60 + 35
    assert counted(metering, LARGE) == 60
    # and contacts recorded after it are added
    record_contacts(metering, LARGE.account_id, 15, start=61)
    metering.count_new_contacts(batch_size=25)
    assert counted(metering, LARGE) == 75


def test_records_of_one_period_from_two_shards_are_each_counted_once(metering: Metering) -> None:
    # Given a counted period, and new contacts whose records come from two shards (a partition split)
    record_contacts(metering, LARGE.account_id, COUNTER_FROM * 2)
    metering.count_new_contacts()
    record_contacts(metering, LARGE.account_id, 20, start=100)
    event = metering.next_stream_batch()
    assert event is not None
    first, second = event["Records"][:10], event["Records"][10:]
    left = {**event, "Records": first, "shardId": "shardId-left"}
    right = {**event, "Records": second, "shardId": "shardId-right"}
    # When each shard's batch is delivered, then both again
    for batch in (left, right, left, right):
        assert metering.invoke("CountContacts", batch)["batchItemFailures"] == []
    # Then each contact is counted once
    assert counted(metering, LARGE) == COUNTER_FROM * 2 + 20


@pytest.mark.parametrize("failing_call", ["BatchGetItem", "UpdateItem", "Query"])
def test_a_period_whose_counter_cannot_be_written_is_returned_to_the_stream_alone(
    metering: Metering, failing_call: str
) -> None:
    # Given two large periods whose records share one stream batch, the first period's counter existing
    record_contacts(metering, LARGE.account_id, COUNTER_FROM * 2)
    metering.count_new_contacts()
    record_contacts(metering, LARGE.account_id, 5, start=200)
    record_contacts(metering, "acc-other", COUNTER_FROM * 2)
    event = metering.next_stream_batch()
    assert event is not None
    # When every counter read, every counter write, or the other period's bootstrap scan keeps failing
    outage = [True]
    metering.throttle_dynamodb(lambda operation, _: bool(outage) and operation == failing_call)
    response = metering.invoke("CountContacts", event)
    outage.clear()
    # Then the batch reports the first record of a period it could not count, and nothing of it was added
    failures = [int(f["itemIdentifier"]) for f in response["batchItemFailures"]]
    assert len(failures) == 1
    # and delivering the batch again from that record counts every period exactly
    metering.count_new_contacts()
    assert counted(metering, LARGE) == COUNTER_FROM * 2 + 5
    assert counted(metering, PeriodRef("acc-other", OCTOBER)) == COUNTER_FROM * 2


def test_the_sam_local_invoke_example_is_an_event_the_handler_takes(metering: Metering) -> None:
    # Given the stream batch `events/README.md` hands to `sam local invoke CountContactsFunction`
    event = json.loads((STACK_EVENTS / "count_contacts_stream.json").read_text(encoding="utf-8"))
    # When CountContacts gets it
    response = metering.invoke("CountContacts", event)
    # Then it answers as a tumbling window expects (a state, no failure); one contact starts no counter
    assert response == {"state": {}, "batchItemFailures": []}
    assert counted(metering, PeriodRef("acc-1001", OCTOBER)) is None
