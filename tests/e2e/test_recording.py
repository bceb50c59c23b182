"""RecordActivity end to end against moto: exact counts under redelivery, rejections, claim checks, failures
part-way, stale reads, a seal landing mid-batch, and usage alerts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from metering.errors import StoreUnavailable
from metering.model import PeriodRef
from metering.store.alerts import Alerts
from metering.store.contacts import Contacts, FoundActive
from metering.store.rejections import Rejections
from metering_tools.local_stack import LocalStack
from metering_tools.testkit import sqs_event, sqs_record

from tests.harness import Metering
from tests.helpers import (
    CONTACT_EVENT_FILES,
    contact_event,
    contact_events,
    contact_ids,
    failed_ids,
    redelivery,
    status_renamed,
    subscription_changed,
)

OCTOBER = "2026-10"
USAGE_ALERT = "Usage Threshold Reached"


# ---- redelivery ----


def test_redelivering_a_batch_three_times_counts_each_contact_once_and_bills_one_invoice(
    metering: Metering,
) -> None:
    # Given an account on start (50 included)
    metering.record_events([subscription_changed("acc-redeliver", "start", "2026-09-01T00:00:00Z")])
    # And a batch touching 60 distinct contacts through every kind of activity, some contacts several times
    rename = status_renamed("acc-redeliver", "2026-10-03T09:00:00Z", contact_ids=contact_ids("con", 55))
    singles = [
        contact_event("acc-redeliver", contact_id, "2026-10-04T09:00:00Z", detail_type=detail_type)
        for detail_type, contact_id in zip(
            CONTACT_EVENT_FILES, ["con-0001", "con-0056", "con-0057", "con-0058", "con-0059"], strict=True
        )
    ]
    repeats = [
        contact_event("acc-redeliver", "con-0060", "2026-10-05T09:00:00Z", detail_type="Note Added"),
        contact_event("acc-redeliver", "con-0060", "2026-10-06T09:00:00Z", detail_type="Message Sent"),
    ]
    batch, first = metering.record_events([rename, *singles, *repeats])
    counts = [metering.counts("acc-redeliver", OCTOBER)]

    # When the same batch is delivered twice more: once to the same container, once to a cold one
    second = metering.record(redelivery(batch))
    counts.append(metering.counts("acc-redeliver", OCTOBER))
    metering.cold_start()
    third = metering.record(redelivery(redelivery(batch)))
    counts.append(metering.counts("acc-redeliver", OCTOBER))

    # Then every delivery succeeds and leaves the same 60 active contacts, as many as contact items
    assert failed_ids(first) == failed_ids(second) == failed_ids(third) == []
    assert counts == [(60, set(contact_ids("con", 60)))] * 3
    # And each contact remembers the first event that made it active (SPEC §5, explain a charge)
    first_touch = metering.store.contacts.find_active([(PeriodRef("acc-redeliver", OCTOBER), "con-0001")])
    assert [(record.first_event_id, record.first_detail_type) for record in first_touch.active.values()] == [
        (rename["id"], "Status Renamed")
    ]

    # When the period closes
    metering.close("2026-11-01T06:00:00Z")
    # Then there is one invoice for the 10 contacts over the allowance
    assert metering.report()["invoices"] == [
        {
            "accountId": "acc-redeliver",
            "period": OCTOBER,
            "plan": "start",
            "billingCycle": "monthly",
            "includedContacts": 50,
            "addonContacts": 0,
            "allowance": 50,
            "activeContacts": 60,
            "overusageContacts": 10,
            "unitPriceCents": 25,
            "amountCents": 250,
            "currency": "EUR",
        }
    ]
    assert len(metering.invoice_items()) == 1
    assert len(metering.events_published("Overusage Invoice Issued")) == 1


# ---- rejections ----


def test_a_malformed_record_is_stored_as_rejected_while_the_rest_of_the_batch_counts(
    metering: Metering,
) -> None:
    # Given a batch of four valid events and, in the middle, one whose contact id breaks the id pattern
    good = contact_events("acc-mixed", contact_ids("con", 4), "2026-10-05T10:00:00Z")
    bad = contact_event("acc-mixed", "con#5", "2026-10-05T10:00:00Z", event_id="evt-bad-contact-id")
    batch = sqs_event([*good[:2], bad, *good[2:]])
    months = {datetime.now(UTC).strftime("%Y-%m")}

    # When RecordActivity processes the batch, and SQS delivers it once more
    response = metering.record(batch)
    again = metering.record(redelivery(batch))

    # Then no record is reported failed: a rejection is final, never retried
    assert failed_ids(response) == failed_ids(again) == []
    # And the valid events are counted
    assert metering.active_contacts("acc-mixed", OCTOBER) == 4
    assert metering.contact_items("acc-mixed", OCTOBER) == set(contact_ids("con", 4))
    # And the rejection is stored once, with its reason and raw body, where an operator can list and replay it
    rejections = metering.rejections()
    assert list(rejections) == ["evt-bad-contact-id"]
    assert "detail.contactId" in rejections["evt-bad-contact-id"]["reason"]
    assert json.loads(rejections["evt-bad-contact-id"]["raw"]) == bad
    months.add(datetime.now(UTC).strftime("%Y-%m"))  # received in this month (or the next, at midnight)
    listed = [row for month in sorted(months) for row in metering.store.rejections.received_in(month)]
    assert [(row.event_id, row.raw) for row in listed] == [("evt-bad-contact-id", json.dumps(bad))]


def test_a_rejection_that_could_not_be_stored_is_retried_not_lost(
    metering: Metering, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a store that is throttled the first time it saves rejections
    real_save = Rejections.save
    throttled: list[int] = []

    def throttle_once(self: Rejections, rejections: Any) -> None:
        if not throttled:
            throttled.append(len(rejections))
            raise StoreUnavailable("DynamoDB ProvisionedThroughputExceededException")
        real_save(self, rejections)

    monkeypatch.setattr(Rejections, "save", throttle_once)
    # When a batch with one valid and one malformed event is recorded, and SQS redelivers what failed
    bad = contact_event("acc-throttled", "con#2", "2026-10-05T10:00:00Z", event_id="evt-unsaved-rejection")
    batch, response = metering.record_events(
        [contact_event("acc-throttled", "con-1", "2026-10-05T10:00:00Z"), bad]
    )
    metering.record(redelivery(batch, failed_ids(response)))
    # Then only the malformed record was retried, its rejection is stored in the end (an invalid event is
    # never lost), and the valid one counted the first time
    assert throttled == [1]
    assert failed_ids(response) == [batch["Records"][1]["messageId"]]
    assert "evt-unsaved-rejection" in metering.rejections()
    assert metering.active_contacts("acc-throttled", OCTOBER) == 1


def test_a_body_that_is_not_json_is_rejected_under_its_message_id_and_not_retried(metering: Metering) -> None:
    # Given a batch with one valid event and one body that is not JSON
    good = contact_event("acc-garbage", "con-1", "2026-10-05T10:00:00Z")
    garbage = sqs_record("this is not an EventBridge envelope", "msg-garbage")
    batch = {"Records": [sqs_record(good), garbage]}
    # When RecordActivity processes it
    response = metering.record(batch)
    # Then nothing is retried, the valid event counts, and the garbage is kept under its SQS message id
    assert failed_ids(response) == []
    assert metering.active_contacts("acc-garbage", OCTOBER) == 1
    assert metering.rejections()["sqs:msg-garbage"]["raw"] == "this is not an EventBridge envelope"


def test_a_claim_check_object_that_does_not_exist_is_rejected_not_retried(
    metering: Metering, stack: LocalStack
) -> None:
    # Given a Status Renamed whose claim-check object was never uploaded
    rename = status_renamed(
        "acc-claim",
        "2026-10-07T08:00:00Z",
        claim_check=(stack.claim_check_bucket, "renames/missing.txt"),
        event_id="evt-missing-object",
    )
    # When RecordActivity processes it
    _, response = metering.record_events([rename])
    # Then it is rejected (stored with its reason), not retried and nothing is counted
    assert failed_ids(response) == []
    assert "does not exist" in metering.rejections()["evt-missing-object"]["reason"]
    assert metering.active_contacts("acc-claim", OCTOBER) == 0


def test_a_claim_check_object_holding_an_invalid_id_is_rejected_as_a_whole(
    metering: Metering, stack: LocalStack
) -> None:
    # Given a claim-check object whose third line is not a valid contact id
    boto3.client("s3").put_object(
        Bucket=stack.claim_check_bucket, Key="renames/bad.txt", Body=b"con-1\ncon-2\ncon#3\n"
    )
    rename = status_renamed(
        "acc-claim",
        "2026-10-07T08:00:00Z",
        claim_check=(stack.claim_check_bucket, "renames/bad.txt"),
        event_id="evt-bad-object",
    )
    # When RecordActivity processes it
    _, response = metering.record_events([rename])
    # Then the event is rejected naming the line, and none of its contacts is counted
    assert failed_ids(response) == []
    assert "line 3" in metering.rejections()["evt-bad-object"]["reason"]
    assert metering.contact_items("acc-claim", OCTOBER) == set()


# ---- claim-check fan-out ----


@pytest.mark.slow
def test_a_status_rename_of_2500_contacts_in_a_claim_check_fans_out_and_counts_each_once(
    metering: Metering, stack: LocalStack
) -> None:
    # Given a column of 2,500 contacts whose ids the CRM put in an S3 claim-check object
    ids = contact_ids("con", 2500)
    boto3.client("s3").put_object(
        Bucket=stack.claim_check_bucket, Key="renames/st-lead.txt", Body="\n".join(ids).encode()
    )
    rename = status_renamed(
        "acc-big", "2026-10-07T08:00:00Z", claim_check=(stack.claim_check_bucket, "renames/st-lead.txt")
    )

    # When RecordActivity gets the event
    batch, response = metering.record_events([rename])
    # Then it succeeds by handing the ids to the fan-out queue, counting nothing itself yet
    assert failed_ids(response) == []
    assert metering.active_contacts("acc-big", OCTOBER) == 0

    # When the fan-out queue is fed back to RecordActivity
    chunks = metering.drain_fanout()
    # Then the chunks held at most 1,000 ids each, and all 2,500 contacts are active exactly once
    sizes = sorted(
        len(json.loads(record["body"])["event"]["detail"]["contactIds"]) for record in chunks["Records"]
    )
    assert sizes == [500, 1000, 1000]
    assert metering.active_contacts("acc-big", OCTOBER) == 2500
    assert metering.contact_items("acc-big", OCTOBER) == set(ids)

    # When the original event is redelivered and fanned out again, and the first chunks are redelivered,
    # all to a cold container (no in-memory knowledge of what is active)
    metering.cold_start()
    assert failed_ids(metering.record(redelivery(batch))) == []
    second_chunks = metering.drain_fanout()
    assert failed_ids(metering.record(redelivery(chunks))) == []
    # Then nothing changes
    assert len(second_chunks["Records"]) == 3
    assert metering.active_contacts("acc-big", OCTOBER) == 2500
    assert metering.contact_items("acc-big", OCTOBER) == set(ids)


def test_a_claim_check_of_at_most_1000_ids_is_counted_without_fan_out(
    metering: Metering, stack: LocalStack
) -> None:
    # Given a claim-check object of three ids, with blank lines and surrounding spaces
    boto3.client("s3").put_object(
        Bucket=stack.claim_check_bucket, Key="renames/small.txt", Body=b"con-1\n\n  con-2  \r\ncon-3\n"
    )
    rename = status_renamed(
        "acc-small", "2026-10-07T08:00:00Z", claim_check=(stack.claim_check_bucket, "renames/small.txt")
    )
    # When RecordActivity processes it
    _, response = metering.record_events([rename])
    # Then the three contacts are counted directly and nothing is queued for fan-out
    assert failed_ids(response) == []
    assert metering.contact_items("acc-small", OCTOBER) == {"con-1", "con-2", "con-3"}
    assert metering.active_contacts("acc-small", OCTOBER) == 3
    assert metering.drain_fanout() == {"Records": []}


# ---- failures part-way ----


def test_a_failure_after_the_contact_writes_is_completed_by_redelivery_with_its_alert(
    metering: Metering, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an account on start (80 % at 40 contacts) and a store whose counts of acc-crash fail during the
    # first delivery (after the batch's contact items were written), longer than the invocation retries them
    metering.record_events([subscription_changed("acc-crash", "start", "2026-09-01T00:00:00Z")])
    real_count = Contacts.count
    outage = [True]

    def fail_during_outage(self: Contacts, ref: PeriodRef, *, consistent: bool) -> int:
        if ref.account_id == "acc-crash" and outage:
            raise StoreUnavailable("DynamoDB ProvisionedThroughputExceededException")
        return real_count(self, ref, consistent=consistent)

    monkeypatch.setattr(Contacts, "count", fail_during_outage)
    crash_ids = contact_ids("con", 45)

    # When a batch for acc-crash (45 contacts) and a bystander account (5 contacts) is recorded
    batch, response = metering.record_events(
        [
            *contact_events("acc-crash", crash_ids, "2026-10-05T10:00:00Z"),
            *contact_events("acc-bystander", contact_ids("con", 5), "2026-10-05T10:00:00Z"),
        ]
    )
    # Then exactly acc-crash's records are reported for retry; its contacts are stored, no alert yet
    crashed_messages = [record["messageId"] for record in batch["Records"][:45]]
    assert sorted(failed_ids(response)) == sorted(crashed_messages)
    assert metering.contact_items("acc-crash", OCTOBER) == set(crash_ids)
    assert metering.active_contacts("acc-bystander", OCTOBER) == 5
    assert metering.events_published("Usage Threshold Reached") == []

    # When the outage is over and SQS redelivers them, to a cold container, with a new event for the account
    outage.clear()
    metering.cold_start()
    retry = redelivery(batch, crashed_messages)
    retry["Records"].append(sqs_record(contact_event("acc-crash", "con-0046", "2026-10-06T10:00:00Z")))
    retry_response = metering.record(retry)
    # Then everything succeeds, nothing is lost or doubled, and the 80 % alert the first delivery crossed is
    # raised, with the count at which it was crossed
    assert failed_ids(retry_response) == []
    assert metering.counts("acc-crash", OCTOBER) == (46, set(contact_ids("con", 46)))
    assert [(a["thresholdPercent"], a["activeContacts"]) for a in metering.events_published(USAGE_ALERT)] == [
        (80, 40)
    ]

    # When the same records arrive once more at a cold container
    metering.cold_start()
    assert failed_ids(metering.record(redelivery(retry))) == []
    # Then nothing changes: the alert is not raised twice
    assert metering.counts("acc-crash", OCTOBER) == (46, set(contact_ids("con", 46)))
    assert [a["thresholdPercent"] for a in metering.events_published(USAGE_ALERT)] == [80]


def test_a_duplicate_of_a_counted_event_raises_no_alert_its_first_delivery_did_not_cross(
    metering: Metering,
) -> None:
    # Given an account on start whose early event made con-0001 active at a count of 1, then 44 contacts
    # made active while it was on legacy (no alerts), then back on start
    metering.record_events([subscription_changed("acc-dup", "start", "2026-09-01T00:00:00Z")])
    early = contact_event("acc-dup", "con-0001", "2026-10-02T10:00:00Z")
    metering.record_events([early])
    metering.record_events([subscription_changed("acc-dup", "legacy", "2026-10-03T00:00:00Z")])
    metering.record_events(contact_events("acc-dup", contact_ids("con", 44, 2), "2026-10-04T10:00:00Z"))
    metering.record_events([subscription_changed("acc-dup", "start", "2026-10-05T00:00:00Z")])
    # When the EventBridge delivers the early event again (a new SQS message, as at-least-once delivery does)
    _, response = metering.record_events([early])
    # Then it changes nothing: no alert, although the count is now above 80 % of start
    assert failed_ids(response) == []
    assert metering.events_published(USAGE_ALERT) == []
    # And the next contact made active on start raises the 80 % alert at its count
    metering.record_events([contact_event("acc-dup", "con-0046", "2026-10-06T10:00:00Z")])
    assert [(a["thresholdPercent"], a["activeContacts"]) for a in metering.events_published(USAGE_ALERT)] == [
        (80, 46)
    ]


def test_a_batch_that_read_its_period_open_just_before_the_seal_is_counted_by_the_invoice(
    metering: Metering, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 55 October contacts on start
    metering.record_events([subscription_changed("acc-inflight", "start", "2026-09-01T00:00:00Z")])
    metering.record_events(
        [status_renamed("acc-inflight", "2026-10-10T09:00:00Z", contact_ids=contact_ids("con", 55))]
    )
    # And a close that seals October while a batch, which has already read the period open, writes
    real_activate = Contacts.activate
    sealed: list[dict[str, Any]] = []

    def seal_first(self: Contacts, activations: Any) -> Any:
        if not sealed:
            sealed.append(metering.schedule_closes("2026-11-01T06:00:00Z"))
        return real_activate(self, activations)

    monkeypatch.setattr(Contacts, "activate", seal_first)
    # When that batch makes an in-grace contact active, and InvoiceAccount then handles the close requests
    _, response = metering.record_events(
        [
            contact_event(
                "acc-inflight", "con-0056", "2026-10-31T23:30:00Z", delivered_at="2026-11-01T03:00:00Z"
            )
        ]
    )
    assert metering.invoice_queued() == []
    # Then the contact counts and is billed (the close counts only after every such batch is over), not late
    assert failed_ids(response) == []
    assert sealed[0]["requestsSent"] == 1
    assert metering.counts("acc-inflight", OCTOBER) == (56, set(contact_ids("con", 56)))
    assert [row["amountCents"] for row in metering.report()["invoices"]] == [150]
    assert metering.report()["late"] == []


def test_contacts_a_stale_read_misses_are_settled_by_the_conditional_write(
    metering: Metering, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given ten contacts already active
    metering.record_events(contact_events("acc-stale", contact_ids("con", 10), "2026-10-05T10:00:00Z"))

    # And an eventually consistent read that has not seen any of them yet, on a cold container
    def stale_read(self: Contacts, contacts: Any) -> FoundActive:
        return FoundActive(active={}, unread=set())

    monkeypatch.setattr(Contacts, "find_active", stale_read)
    metering.cold_start()
    # When other events touch those ten and two new contacts
    _, response = metering.record_events(
        contact_events("acc-stale", contact_ids("con", 12), "2026-10-06T10:00:00Z", detail_type="Note Added")
    )
    # Then only the two new contacts are added
    assert failed_ids(response) == []
    assert metering.active_contacts("acc-stale", OCTOBER) == 12
    assert metering.contact_items("acc-stale", OCTOBER) == set(contact_ids("con", 12))


# ---- periods ----


def test_accounts_without_a_time_zone_use_the_deployment_default(
    metering: Metering, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployment whose default time zone is Europe/Berlin, and an account without subscription
    monkeypatch.setenv("DEFAULT_TIMEZONE", "Europe/Berlin")
    metering.cold_start()
    # When contacts are touched just before and at midnight of 1 November, Berlin time
    metering.record_events(
        [
            contact_event("acc-default-tz", "con-1", "2026-10-31T22:59:59Z"),
            contact_event("acc-default-tz", "con-2", "2026-10-31T23:00:00Z"),
        ]
    )
    # Then each is counted in the month of its Berlin wall-clock time
    assert metering.counts("acc-default-tz", "2026-10") == (1, {"con-1"})
    assert metering.counts("acc-default-tz", "2026-11") == (1, {"con-2"})


# ---- usage alerts ----


def test_usage_alerts_fire_once_per_threshold_even_under_redelivery(metering: Metering) -> None:
    # Given an account on start (allowance 50) with alerts at 80 % (40 contacts) and 100 % (50 contacts)
    metering.record_events([subscription_changed("acc-alerts", "start", "2026-09-01T00:00:00Z")])
    steps = [
        (contact_ids("con", 39), "03", []),
        (["con-0040"], "04", [80]),
        (contact_ids("con", 10, 41), "05", [80, 100]),
    ]
    for ids, day, expected in steps:
        # When 39, then 1, then 10 more contacts become active, each batch delivered three times
        batch, response = metering.record_events(
            contact_events("acc-alerts", ids, f"2026-10-{day}T09:00:00Z")
        )
        metering.record(redelivery(batch))
        metering.cold_start()
        metering.record(redelivery(redelivery(batch)))
        # Then after each step exactly the reached thresholds have been published, once each
        published = metering.events_published("Usage Threshold Reached")
        assert [alert["thresholdPercent"] for alert in published] == expected
        assert failed_ids(response) == []

    alerts = metering.events_published("Usage Threshold Reached")
    assert [
        (a["accountId"], a["period"], a["thresholdPercent"], a["activeContacts"], a["allowance"], a["plan"])
        for a in alerts
    ] == [
        ("acc-alerts", OCTOBER, 80, 40, 50, "start"),
        ("acc-alerts", OCTOBER, 100, 50, 50, "start"),
    ]
    assert metering.report()["alerts"] == [
        {"accountId": "acc-alerts", "period": OCTOBER, "thresholdPercent": 80, "allowance": 50},
        {"accountId": "acc-alerts", "period": OCTOBER, "thresholdPercent": 100, "allowance": 50},
    ]


def test_a_usage_alert_whose_claim_failed_is_raised_when_the_batch_is_redelivered(
    metering: Metering, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an account on start (80 % alert at 40 contacts) and a store whose alert claims fail during the
    # first delivery, after the batch's contacts were written, for longer than the invocation retries them
    metering.record_events([subscription_changed("acc-alert-crash", "start", "2026-09-01T00:00:00Z")])
    real_claim = Alerts.claim
    failures: list[int] = []

    def fail_during_outage(self: Alerts, alert: Any) -> Any:
        if not retried_delivery:
            failures.append(alert.threshold_percent)
            raise StoreUnavailable("DynamoDB ProvisionedThroughputExceededException")
        return real_claim(self, alert)

    retried_delivery: list[bool] = []
    monkeypatch.setattr(Alerts, "claim", fail_during_outage)
    # When a batch takes the account to 45 active contacts (with an event of another account),
    # and SQS redelivers the records reported failed once the outage is over
    batch, response = metering.record_events(
        [
            *contact_events("acc-alert-crash", contact_ids("con", 45), "2026-10-05T10:00:00Z"),
            contact_event("acc-bystander", "con-1", "2026-10-05T10:00:00Z"),
        ]
    )
    retried_delivery.append(True)
    retried = metering.record(redelivery(batch, failed_ids(response)))
    # Then the count is exact and the 80 % alert is raised once, although no new contact arrives afterwards
    assert set(failures) == {80}
    assert len(failed_ids(response)) == 45
    assert failed_ids(retried) == []
    assert metering.active_contacts("acc-alert-crash", OCTOBER) == 45
    assert [alert["thresholdPercent"] for alert in metering.events_published("Usage Threshold Reached")] == [
        80
    ]


def test_legacy_and_unsubscribed_accounts_are_recorded_but_get_no_alerts_and_no_invoices(
    metering: Metering,
) -> None:
    # Given a legacy account and an account without any subscription, 60 active contacts each
    metering.record_events([subscription_changed("acc-legacy", "legacy", "2026-09-01T00:00:00Z")])
    _, response = metering.record_events(
        [
            *contact_events("acc-legacy", contact_ids("con", 60), "2026-10-05T10:00:00Z"),
            *contact_events("acc-nosub", contact_ids("con", 60), "2026-10-05T10:00:00Z"),
        ]
    )
    # When their period closes
    metering.close("2026-11-01T06:00:00Z")
    # Then their usage is recorded like anyone's, but no alert and no invoice is issued or published
    assert failed_ids(response) == []
    assert metering.report()["usage"] == [
        {"accountId": "acc-legacy", "period": OCTOBER, "activeContacts": 60, "closed": True},
        {"accountId": "acc-nosub", "period": OCTOBER, "activeContacts": 60, "closed": True},
    ]
    assert metering.report()["alerts"] == []
    assert metering.report()["invoices"] == []
    assert metering.events_published("Usage Threshold Reached") == []
    assert metering.events_published("Overusage Invoice Issued") == []
