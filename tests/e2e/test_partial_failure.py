"""Progress under partial failure, through the handler on a moto copy of the stack: a call that keeps failing
(after botocore's retries and the invocation's own) costs the records that needed it, never the batch. A
history read or a subscription change's write fails its account's records, a contact read the periods it
covered, opening a month that month's records; a short outage is waited out inside the invocation; and a large
batch deletes the records it has settled before the writes that follow, so a crash returns only the rest."""

from __future__ import annotations

from typing import Any

import pytest
from metering.store.contacts import Contacts

from tests.harness import Metering
from tests.helpers import (
    contact_event,
    contact_events,
    contact_ids,
    failed_ids,
    redelivery,
    subscription_changed,
)

OCTOBER = "2026-10"
MID_OCTOBER = "2026-10-15T10:00:00Z"


def messages_of(batch: dict[str, Any], account_id: str) -> list[str]:
    """The message ids of an account's records in a batch."""
    return sorted(
        record["messageId"] for record in batch["Records"] if f'"accountId": "{account_id}"' in record["body"]
    )


def test_a_history_read_that_keeps_failing_returns_only_its_accounts_records(metering: Metering) -> None:
    # Given an outage on the subscription history of acc-hot (one of its events needs it: a change)
    outage = [True]
    metering.throttle_dynamodb(
        lambda operation, body: bool(outage) and operation == "Query" and "acc-hot#" in body
    )
    # When a batch brings acc-hot's change and contacts, and acc-calm's contacts
    batch, response = metering.record_events(
        [
            subscription_changed("acc-hot", "grow", "2026-10-01T00:00:00Z", delivered_at=MID_OCTOBER),
            *contact_events("acc-hot", contact_ids("hot", 5), MID_OCTOBER),
            *contact_events("acc-calm", contact_ids("calm", 5), MID_OCTOBER),
        ]
    )
    # Then only acc-hot's records come back; acc-calm's are recorded in the same invocation
    assert sorted(failed_ids(response)) == messages_of(batch, "acc-hot")
    assert metering.active_contacts("acc-calm", OCTOBER) == 5
    assert metering.active_contacts("acc-hot", OCTOBER) == 0
    # And once the outage is over, their redelivery records them
    outage.clear()
    assert failed_ids(metering.record(redelivery(batch, failed_ids(response)))) == []
    assert metering.active_contacts("acc-hot", OCTOBER) == 5


def test_a_change_that_cannot_be_stored_holds_back_every_record_of_its_account(metering: Metering) -> None:
    # Given an outage on the writes of acc-move's subscription changes
    outage = [True]
    metering.throttle_dynamodb(
        lambda operation, body: bool(outage) and operation == "PutItem" and "#subscriptions#" in body
    )
    # When a batch brings acc-move's contacts, its move to Tokyo effective at the start of October, its
    # contacts made active on 31 October after 15:00 UTC (1 November in Tokyo), and acc-calm's contacts
    batch, response = metering.record_events(
        [
            contact_event("acc-move", "before", "2026-10-20T10:00:00Z"),
            subscription_changed(
                "acc-move",
                "grow",
                "2026-10-01T00:00:00Z",
                timezone="Asia/Tokyo",
                delivered_at="2026-10-31T16:00:00Z",
            ),
            contact_event("acc-move", "after", "2026-10-31T16:00:00Z"),
            *contact_events("acc-calm", contact_ids("calm", 3), "2026-10-31T16:00:00Z"),
        ]
    )
    # Then every record of acc-move waits (its later contact was judged with the move), acc-calm's do not
    assert sorted(failed_ids(response)) == messages_of(batch, "acc-move")
    assert metering.active_contacts("acc-calm", OCTOBER) == 3
    # And the redelivery after the outage records them in delivery order: the later one in Tokyo's November
    outage.clear()
    assert failed_ids(metering.record(redelivery(batch, failed_ids(response)))) == []
    assert metering.contact_items("acc-move", OCTOBER) == {"before"}
    assert metering.contact_items("acc-move", "2026-11") == {"after"}


def test_a_contact_read_that_keeps_failing_returns_only_the_periods_it_covered(metering: Metering) -> None:
    # Given an outage on acc-1-hot's October partition for reads, and acc-1-hot with 100 new contacts (the
    # first BatchGetItem of 100 keys, read in key order) beside acc-2-calm's 5
    outage = [True]
    metering.throttle_dynamodb(
        lambda operation, body: (
            bool(outage) and operation == "BatchGetItem" and f"acc-1-hot#{OCTOBER}" in body
        )
    )
    batch, response = metering.record_events(
        [
            *contact_events("acc-1-hot", contact_ids("hot", 100), MID_OCTOBER),
            *contact_events("acc-2-calm", contact_ids("calm", 5), MID_OCTOBER),
        ]
    )
    # Then acc-1-hot's period comes back, and acc-2-calm's is recorded
    assert sorted(failed_ids(response)) == messages_of(batch, "acc-1-hot")
    assert (
        metering.active_contacts("acc-1-hot", OCTOBER),
        metering.active_contacts("acc-2-calm", OCTOBER),
    ) == (
        0,
        5,
    )
    # And after the outage, the redelivery records acc-1-hot's 100
    outage.clear()
    assert failed_ids(metering.record(redelivery(batch, failed_ids(response)))) == []
    assert metering.active_contacts("acc-1-hot", OCTOBER) == 100


def test_a_month_that_cannot_be_opened_returns_only_that_months_records(metering: Metering) -> None:
    # Given September already known to the close job, and an outage on opening November
    metering.record_events([contact_event("acc-early", "opener", "2026-09-10T10:00:00Z")])
    outage = [True]
    metering.throttle_dynamodb(
        lambda operation, body: (
            bool(outage) and operation == "PutItem" and '"#close"' in body and "2026-11" in body
        )
    )
    # When a batch brings September and November contacts of one account, and September ones of another
    september = [*contact_events("acc-both", contact_ids("sep", 3), "2026-09-12T10:00:00Z")]
    november = [*contact_events("acc-both", contact_ids("nov", 3), "2026-11-12T10:00:00Z")]
    batch, response = metering.record_events(
        [*september, *november, *contact_events("acc-sep", contact_ids("sep", 2), "2026-09-12T10:00:00Z")]
    )
    # Then only the November records come back; everything of September is recorded
    november_ids = {event["id"] for event in november}
    returned = {r["messageId"] for r in batch["Records"] if any(i in r["body"] for i in november_ids)}
    assert set(failed_ids(response)) == returned
    assert metering.active_contacts("acc-both", "2026-09") == 3
    assert metering.active_contacts("acc-sep", "2026-09") == 2
    outage.clear()
    assert failed_ids(metering.record(redelivery(batch, failed_ids(response)))) == []
    assert metering.active_contacts("acc-both", "2026-11") == 3


def test_a_short_outage_of_the_close_states_is_waited_out_inside_the_invocation(metering: Metering) -> None:
    # Given the close states (read by every batch) throttled for their first three reads
    throttled = metering.throttle_dynamodb(
        lambda operation, body: operation == "Query" and '"#close"' in body and len(throttled) < 3
    )
    # When a batch is recorded
    _, response = metering.record_events(contact_events("acc-wait", contact_ids("c", 4), MID_OCTOBER))
    # Then it waited the throttling out: nothing comes back, everything is recorded
    assert throttled == ["Query"] * 3
    assert failed_ids(response) == []
    assert metering.active_contacts("acc-wait", OCTOBER) == 4


def test_close_states_unreadable_for_longer_than_the_invocation_can_wait_return_the_batch(
    metering: Metering,
) -> None:
    # Given the close states throttled without end
    metering.throttle_dynamodb(lambda operation, body: operation == "Query" and '"#close"' in body)
    # When a batch is recorded
    batch, response = metering.record_events(contact_events("acc-wait", contact_ids("c", 4), MID_OCTOBER))
    # Then every record needed them: all come back, nothing is written
    assert sorted(failed_ids(response)) == sorted(r["messageId"] for r in batch["Records"])
    assert metering.active_contacts("acc-wait", OCTOBER) == 0


def test_a_large_batch_deletes_its_settled_records_so_a_crash_returns_only_the_rest(
    metering: Metering, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given acc-a with 20 active contacts, and a container that dies during its second wave of writes
    metering.record_events(contact_events("acc-a", contact_ids("old", 20), "2026-10-02T10:00:00Z"))
    real_activate = Contacts.activate
    waves: list[list[str]] = []

    def dies_in_the_second_wave(self: Contacts, activations: Any) -> Any:
        waves.append(sorted({activation.ref.account_id for activation in activations}))
        if len(waves) == 2:
            raise RuntimeError("the container died")
        return real_activate(self, activations)

    monkeypatch.setattr(Contacts, "activate", dies_in_the_second_wave)
    # When a batch brings 20 touches of those contacts and 80 new ones of acc-a, and 80 new ones of acc-b
    touches = contact_events("acc-a", contact_ids("old", 20), MID_OCTOBER, detail_type="Note Added")
    batch = metering.activity_batch(
        [
            *touches,
            *contact_events("acc-a", contact_ids("new", 80), MID_OCTOBER),
            *contact_events("acc-b", contact_ids("new", 80), MID_OCTOBER),
        ]
    )
    with pytest.raises(RuntimeError, match="died"):
        metering.record(batch)
    # Then the touches (settled by the reads) and the first wave's records (acc-a's) were deleted before the
    # crash in the second wave (acc-b's)
    assert waves == [["acc-a"], ["acc-b"]]
    deleted = {r["messageId"] for r in batch["Records"] if r["receiptHandle"] in metering.delivered.deleted}
    assert deleted == set(messages_of(batch, "acc-a"))
    # And SQS redelivers only the rest, which completes the counts exactly
    monkeypatch.setattr(Contacts, "activate", real_activate)
    assert failed_ids(metering.record(redelivery(batch, messages_of(batch, "acc-b")))) == []
    assert metering.counts("acc-a", OCTOBER) == (100, set(contact_ids("old", 20) + contact_ids("new", 80)))
    assert metering.counts("acc-b", OCTOBER) == (80, set(contact_ids("new", 80)))


def test_a_small_batch_leaves_deleting_its_records_to_the_event_source_mapping(metering: Metering) -> None:
    # Given a live-traffic batch of ten new contacts
    # When it is recorded
    _, response = metering.record_events(contact_events("acc-live", contact_ids("c", 10), MID_OCTOBER))
    # Then it deletes nothing itself
    assert failed_ids(response) == []
    assert metering.delivered.deleted == set()


def test_no_record_of_another_account_comes_back_for_an_accounts_failed_writes(metering: Metering) -> None:
    # Given an outage on acc-hot's contact writes
    outage = [True]
    metering.throttle_dynamodb(
        lambda operation, body: bool(outage) and operation == "PutItem" and f"acc-hot#{OCTOBER}" in body
    )
    # When a batch brings contacts of acc-hot and of four other accounts
    others = [f"acc-{n}" for n in range(4)]
    batch, response = metering.record_events(
        [
            *contact_events("acc-hot", contact_ids("hot", 3), MID_OCTOBER),
            *(
                event
                for account in others
                for event in contact_events(account, contact_ids("c", 3), MID_OCTOBER)
            ),
        ]
    )
    # Then only acc-hot's records come back
    assert sorted(failed_ids(response)) == messages_of(batch, "acc-hot")
    assert [metering.active_contacts(account, OCTOBER) for account in others] == [3, 3, 3, 3]
