"""Usage alerts end to end against moto (SPEC §1): one alert per threshold, account and period under
redelivery, cold containers and two containers racing; the allowance of the subscription in effect; the
published event, its SNS copy, and the EMF metrics an invocation emits.

Redelivery to the same container and the claim that fails once are in test_recording.py; this file does
not repeat them."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import boto3
import pytest
from metering.model import PeriodRef
from metering.observability import metrics
from metering.retrying import CLOCK
from metering.store import keys
from metering.store.alerts import TALLY, Alerts
from metering_tools.local_stack import LocalStack
from metering_tools.testkit import sqs_event
from moto.core.botocore_stubber import BotocoreStubber

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
USAGE_ALERT = "Usage Threshold Reached"
ALERT_FIELDS = {"accountId", "period", "thresholdPercent", "activeContacts", "allowance", "plan", "reachedAt"}


def alert_rows(alerts: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """(account, period, percent, active contacts, allowance, plan) of published alert details."""
    return [
        (a["accountId"], a["period"], a["thresholdPercent"], a["activeContacts"], a["allowance"], a["plan"])
        for a in alerts
    ]


def assert_one_alert_per_threshold(
    metering: Metering, expected: Sequence[tuple[str, str, int]]
) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Exactly the `expected` (account, period, percent) alerts were claimed and published, once each, and
    each published alert is the stored claim. Returns the published alerts by key."""
    claims = metering.report()["alerts"]
    assert sorted((a["accountId"], a["period"], a["thresholdPercent"]) for a in claims) == sorted(expected)
    published = metering.events_published(USAGE_ALERT)
    keys = [(alert["accountId"], alert["period"], alert["thresholdPercent"]) for alert in published]
    assert sorted(keys) == sorted(expected)
    stored_allowance = {(a["accountId"], a["period"], a["thresholdPercent"]): a["allowance"] for a in claims}
    by_key = dict(zip(keys, published, strict=True))
    assert {key: alert["allowance"] for key, alert in by_key.items()} == stored_allowance
    return by_key


def race(*runs: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the invocations in threads released at the same instant; re-raises the first error."""
    start = threading.Barrier(len(runs))
    results: list[dict[str, Any] | BaseException | None] = [None] * len(runs)

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = runs[index]()
        except BaseException as exc:  # handed to the test thread below
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(runs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    assert all(isinstance(result, dict) for result in results), results
    return [result for result in results if isinstance(result, dict)]


@pytest.fixture
def atomic_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each AWS request is atomic, as DynamoDB's single-item conditional writes are on AWS. Moto evaluates a
    condition and writes the item in separate Python steps, so two threads could otherwise both pass the same
    condition: a race in the fake, not in the code under test. Requests still interleave freely."""
    lock = threading.RLock()
    real = BotocoreStubber.process_request

    def process_request(self: BotocoreStubber, request: Any) -> Any:
        with lock:
            return real(self, request)

    monkeypatch.setattr(BotocoreStubber, "process_request", process_request)


# ---- once per threshold and period ----


def test_alerts_stay_single_when_batches_are_redelivered_to_cold_containers_in_any_order(
    metering: Metering,
) -> None:
    # Given an account on start (allowance 50: 80 % at 40 contacts, 100 % at 50)
    metering.record_events([subscription_changed("acc-cold", "start", "2026-09-01T00:00:00Z")])
    # When one batch takes it to 45 active contacts (80 %) and a second one to 55 (100 %)
    first, first_response = metering.record_events(
        contact_events("acc-cold", contact_ids("con", 45), "2026-10-03T09:00:00Z")
    )
    second, second_response = metering.record_events(
        contact_events(
            "acc-cold", contact_ids("con", 10, 46), "2026-10-04T09:00:00Z", detail_type="Note Added"
        )
    )
    # And each batch is delivered three more times, every time to a new container that has seen nothing,
    # the later batch first, the last time only half of it (SQS redelivers what a response failed)
    responses = [first_response, second_response]
    for again in (
        redelivery(second),
        redelivery(first),
        redelivery(redelivery(second)),
        redelivery(redelivery(first)),
        redelivery(redelivery(redelivery(second)), [r["messageId"] for r in second["Records"][:5]]),
        redelivery(redelivery(redelivery(first))),
    ):
        metering.cold_start()
        responses.append(metering.record(again))
    # And later batches of the same period go on past the allowance, on another cold container
    metering.cold_start()
    responses.append(
        metering.record_events(contact_events("acc-cold", contact_ids("con", 5, 56), "2026-10-06T09:00:00Z"))[
            1
        ]
    )

    # Then every delivery succeeded and the count is exact
    assert [failed_ids(response) for response in responses] == [[]] * len(responses)
    assert metering.counts("acc-cold", OCTOBER) == (60, set(contact_ids("con", 60)))
    # And exactly one alert per threshold was published, with the count that first reached it
    assert alert_rows(metering.events_published(USAGE_ALERT)) == [
        ("acc-cold", OCTOBER, 80, 40, 50, "start"),
        ("acc-cold", OCTOBER, 100, 50, 50, "start"),
    ]
    # And both claims are stored as published, so no later batch publishes them again
    alerts = metering.alert_claims("acc-cold", OCTOBER)
    assert sorted(alerts) == [80, 100]
    assert all(alert.published for alert in alerts.values())


def tally(metering: Metering, account_id: str) -> int | None:
    """The tally of the account's October alerts item (None before the period is large to any batch)."""
    item = boto3.client("dynamodb").get_item(
        TableName=metering.stack.table_name,
        Key=keys.alerts_key(PeriodRef(account_id, OCTOBER)),
        ConsistentRead=True,
    )
    value = item.get("Item", {}).get(TALLY)
    return int(value["N"]) if value else None


def test_a_large_period_alerts_at_the_exact_contact_while_its_batches_only_add_to_a_tally(
    metering: Metering,
) -> None:
    # Given an account on grow (allowance 250: 80 % at 200 contacts, 100 % at 250) with 148 active contacts
    metering.record_events([subscription_changed("acc-large", "grow", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events("acc-large", contact_ids("con", 148), "2026-10-02T09:00:00Z"))
    assert tally(metering, "acc-large") is None
    # When batches of 5 new contacts follow, alternately on the warm container and on cold ones
    responses = []
    for start in range(149, 259, 5):
        if start % 2:
            metering.cold_start()
        batch = contact_events("acc-large", contact_ids("con", 5, start), "2026-10-05T09:00:00Z")
        responses.append(metering.record_events(batch)[1])

    # Then every batch succeeded and the count is exact
    assert [failed_ids(response) for response in responses] == [[]] * len(responses)
    assert metering.counts("acc-large", OCTOBER) == (258, set(contact_ids("con", 258)))
    # And the alerts were raised by the 200th and the 250th contact, as if every batch had counted
    assert alert_rows(metering.events_published(USAGE_ALERT)) == [
        ("acc-large", OCTOBER, 80, 200, 250, "grow"),
        ("acc-large", OCTOBER, 100, 250, 250, "grow"),
    ]
    # And from the batch that took the period to 150 contacts to the one that crossed 100 %, every batch added
    # its new contacts to the tally, the bound that decides when the exact count is read; the last one, with
    # both thresholds claimed, did not
    assert tally(metering, "acc-large") == 253 - 148


@pytest.mark.usefixtures("atomic_requests")
def test_containers_racing_on_a_large_period_raise_each_alert_once(metering: Metering) -> None:
    # Given five accounts on grow (80 % at 200 contacts) with 190 active contacts each, large to one container
    accounts = [f"acc-large-race-{number}" for number in range(1, 6)]
    metering.record_events(
        [subscription_changed(account, "grow", "2026-09-01T00:00:00Z") for account in accounts]
    )
    warm = metering.container("RecordActivity")
    invoke = partial(metering.invoke, "RecordActivity")
    for account in accounts:
        invoke(
            sqs_event(contact_events(account, contact_ids("con", 190), "2026-10-02T09:00:00Z")),
            container=warm,
        )

    for account in accounts:
        # When the warm container (which adds to the tally) and a cold one (which counts) each get a batch of
        # 6 new contacts at the same instant: neither crosses 80 % alone, together they do
        cold = metering.container("RecordActivity")
        left = sqs_event(contact_events(account, contact_ids("con", 6, 191), "2026-10-05T09:00:00Z"))
        right = sqs_event(contact_events(account, contact_ids("con", 6, 197), "2026-10-05T09:00:01Z"))
        responses = race(partial(invoke, left, container=warm), partial(invoke, right, container=cold))

        # Then both succeed and the count is exact
        assert [failed_ids(response) for response in responses] == [[], []]
        assert metering.counts(account, OCTOBER) == (202, set(contact_ids("con", 202)))

    # And each account got its 80 % alert exactly once, with a count one of the containers saw
    claimed = assert_one_alert_per_threshold(metering, [(account, OCTOBER, 80) for account in accounts])
    assert all(200 <= alert["activeContacts"] <= 202 for alert in claimed.values())


def test_a_new_period_gets_its_own_alerts(metering: Metering) -> None:
    # Given an account on start that reached both thresholds in October
    metering.record_events([subscription_changed("acc-monthly", "start", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events("acc-monthly", contact_ids("con", 50), "2026-10-05T09:00:00Z"))
    # When the same 50 contacts are active again in November
    metering.cold_start()
    _, response = metering.record_events(
        contact_events(
            "acc-monthly", contact_ids("con", 50), "2026-11-05T09:00:00Z", detail_type="Note Added"
        )
    )
    # Then November raises its own 80 % and 100 % alerts, once each
    assert failed_ids(response) == []
    assert [(a["period"], a["thresholdPercent"]) for a in metering.events_published(USAGE_ALERT)] == [
        (OCTOBER, 80),
        (OCTOBER, 100),
        ("2026-11", 80),
        ("2026-11", 100),
    ]


# ---- two containers racing on one account ----


@pytest.mark.usefixtures("atomic_requests")
def test_two_containers_racing_on_one_account_raise_each_alert_once_and_count_exactly(
    metering: Metering,
) -> None:
    # Given five accounts on start (allowance 50) with 30 active contacts each (below 80 % = 40)
    accounts = [f"acc-race-{number}" for number in range(1, 6)]
    metering.record_events(
        [subscription_changed(account, "start", "2026-09-01T00:00:00Z") for account in accounts]
    )
    for account in accounts:
        metering.record_events(contact_events(account, contact_ids("con", 30), "2026-10-02T09:00:00Z"))
    # And two RecordActivity containers
    left, right = metering.container("RecordActivity"), metering.container("RecordActivity")
    invoke = partial(metering.invoke, "RecordActivity")

    for account in accounts:
        # When both get a batch for the account at the same instant: contacts 31-50 on the left, 41-60 on the
        # right (41-50 in both, by other events), each batch enough on its own to cross both thresholds
        left_batch = sqs_event(contact_events(account, contact_ids("con", 20, 31), "2026-10-05T09:00:00Z"))
        right_batch = sqs_event(
            contact_events(
                account, contact_ids("con", 20, 41), "2026-10-05T09:00:01Z", detail_type="Message Sent"
            )
        )
        responses = race(
            partial(invoke, left_batch, container=left), partial(invoke, right_batch, container=right)
        )

        # Then both succeed, and the count equals the contact items: the 60 distinct contacts
        assert [failed_ids(response) for response in responses] == [[], []]
        assert metering.counts(account, OCTOBER) == (60, set(contact_ids("con", 60)))

    # And each account claimed exactly one 80 % and one 100 % alert, whichever container raised it, each with
    # a count at or above its threshold that one of the containers actually saw
    claimed = assert_one_alert_per_threshold(
        metering, [(account, OCTOBER, percent) for account in accounts for percent in (80, 100)]
    )
    for (_, _, percent), alert in claimed.items():
        assert (alert["allowance"], alert["plan"]) == (50, "start")
        assert 40 * percent // 80 <= alert["activeContacts"] <= 60


@pytest.mark.usefixtures("atomic_requests")
def test_the_same_batch_delivered_to_two_containers_at_once_alerts_once_after_the_retries(
    metering: Metering,
) -> None:
    # Given an account on start (allowance 50) with 35 active contacts
    metering.record_events([subscription_changed("acc-twin", "start", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events("acc-twin", contact_ids("con", 35), "2026-10-02T09:00:00Z"))
    # When SQS hands the same 20 messages (contacts 36-55) to two containers at the same instant
    batch = sqs_event(contact_events("acc-twin", contact_ids("con", 20, 36), "2026-10-05T09:00:00Z"))
    left, right = metering.container("RecordActivity"), metering.container("RecordActivity")
    invoke = partial(metering.invoke, "RecordActivity")
    responses = race(
        partial(invoke, batch, container=left), partial(invoke, redelivery(batch), container=right)
    )
    # And redelivers whatever either reported failed
    retried = {message_id for response in responses for message_id in failed_ids(response)}
    if retried:
        assert failed_ids(invoke(redelivery(batch, retried), container=left)) == []

    # Then no contact is lost or doubled
    assert metering.counts("acc-twin", OCTOBER) == (55, set(contact_ids("con", 55)))
    # And each threshold was claimed exactly once
    assert_one_alert_per_threshold(metering, [("acc-twin", OCTOBER, 80), ("acc-twin", OCTOBER, 100)])


def test_an_alert_being_published_by_one_container_is_not_published_again_by_another(
    metering: Metering, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an account on start (allowance 50) with 39 active contacts, and two containers
    metering.record_events([subscription_changed("acc-inflight", "start", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events("acc-inflight", contact_ids("con", 39), "2026-10-02T09:00:00Z"))
    first, second = metering.container("RecordActivity"), metering.container("RecordActivity")
    invoke = partial(metering.invoke, "RecordActivity")
    # And the second container gets a batch of the same account (one more touch of a known contact) just
    # while the first one has claimed the 80 % alert and put it on the bus, but not yet marked it published
    real_mark = Alerts.mark_published
    touch = sqs_event(
        [contact_event("acc-inflight", "con-0001", "2026-10-05T10:00:00Z", detail_type="Note Added")]
    )
    interleaved: list[dict[str, Any]] = []

    def second_batch_runs_now(self: Alerts, ref: Any, percents: Sequence[int]) -> None:
        if not interleaved:
            interleaved.append({})  # only the first container's mark is interleaved
            interleaved[0] = invoke(touch, container=second)
        real_mark(self, ref, percents)

    monkeypatch.setattr(Alerts, "mark_published", second_batch_runs_now)
    # When the first container records the 40th contact
    response = invoke(
        sqs_event([contact_event("acc-inflight", "con-0040", "2026-10-05T09:00:00Z")]), container=first
    )
    # Then both succeed, and the 80 % alert was published once (customers read the e-mail copy as is)
    assert failed_ids(response) == failed_ids(interleaved[0]) == []
    assert [a["thresholdPercent"] for a in metering.events_published(USAGE_ALERT)] == [80]


def test_an_alert_whose_publication_failed_is_published_once_after_its_claimer_is_over(
    metering: Metering,
) -> None:
    # Given an account on start (80 % at 40 contacts) with 39 active contacts, and a bus that refuses every
    # PutEvents during an outage
    metering.record_events([subscription_changed("acc-unpublished", "start", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events("acc-unpublished", contact_ids("con", 39), "2026-10-02T09:00:00Z"))
    outage = [True]
    refused = metering.refuse_put_events(lambda entries: bool(outage), calls=None)
    # When the 40th contact is recorded: the alert is claimed, its publication keeps failing for longer than
    # the invocation tries it again, the record is retried
    batch, response = metering.record_events(
        [contact_event("acc-unpublished", "con-0040", "2026-10-05T09:00:00Z")]
    )
    outage.clear()
    assert {entry["DetailType"] for entry in refused} == {USAGE_ALERT}
    assert len(refused) > 1
    assert failed_ids(response) == [batch["Records"][0]["messageId"]]
    # And another container records a touch of the account while the claiming batch may still be running
    metering.cold_start()
    _, meanwhile = metering.record_events(
        [contact_event("acc-unpublished", "con-0001", "2026-10-05T09:30:00Z", detail_type="Note Added")]
    )
    published_meanwhile = metering.events_published(USAGE_ALERT)
    # And SQS redelivers the failed record after its visibility timeout, when the claimer's time is over
    # (the claim is aged in the table rather than the clock moved)
    boto3.client("dynamodb").update_item(
        TableName=metering.stack.table_name,
        Key=keys.alerts_key(PeriodRef("acc-unpublished", OCTOBER)),
        UpdateExpression="SET #alert.claimedAt = :long_ago",
        ExpressionAttributeNames={"#alert": "alert80"},
        ExpressionAttributeValues={":long_ago": {"N": str(int(CLOCK.wall()) - 3600)}},
    )
    retried = metering.record(redelivery(batch))
    # And later batches of the period arrive
    metering.record_events(
        contact_events("acc-unpublished", contact_ids("con", 3, 41), "2026-10-06T09:00:00Z")
    )

    # Then the batch in between left the young claim alone, and the redelivery published it, once
    assert failed_ids(meanwhile) == failed_ids(retried) == []
    assert published_meanwhile == []
    assert alert_rows(metering.events_published(USAGE_ALERT)) == [
        ("acc-unpublished", OCTOBER, 80, 40, 50, "start")
    ]
    assert metering.active_contacts("acc-unpublished", OCTOBER) == 43


# ---- who gets alerts ----


def test_no_alerts_for_legacy_plans_or_periods_without_a_subscription_in_effect(metering: Metering) -> None:
    # Given an account that was on start in September and moved to legacy (with add-ons) before October,
    # and an account whose first subscription takes effect only in November
    metering.record_events(
        [
            subscription_changed("acc-to-legacy", "start", "2026-09-01T00:00:00Z"),
            subscription_changed("acc-to-legacy", "legacy", "2026-09-20T00:00:00Z", addon_contacts=10),
            subscription_changed("acc-from-november", "start", "2026-11-01T00:00:00Z"),
        ]
    )
    # When each has 45 active contacts in September and 120 in October, delivered twice, the second time
    # to a cold container
    for account in ("acc-to-legacy", "acc-from-november"):
        batch, response = metering.record_events(
            [
                *contact_events(account, contact_ids("con", 45), "2026-09-10T09:00:00Z"),
                *contact_events(account, contact_ids("con", 120), "2026-10-10T09:00:00Z"),
            ]
        )
        metering.cold_start()
        assert failed_ids(response) == failed_ids(metering.record(redelivery(batch))) == []

    # Then their October usage is recorded in full
    assert metering.active_contacts("acc-to-legacy", OCTOBER) == 120
    assert metering.active_contacts("acc-from-november", OCTOBER) == 120
    # And the only alert is the 80 % of September, while acc-to-legacy was still on start
    assert alert_rows(metering.events_published(USAGE_ALERT)) == [
        ("acc-to-legacy", "2026-09", 80, 40, 50, "start")
    ]
    assert [(a["accountId"], a["period"]) for a in metering.report()["alerts"]] == [
        ("acc-to-legacy", "2026-09")
    ]


# ---- the allowance of the subscription in effect ----


def test_the_100_percent_alert_uses_the_allowance_including_addons_bought_before_it(
    metering: Metering,
) -> None:
    # Given an account on start (50 included) that reaches 80 % of 50 with 45 contacts on 3 October
    metering.record_events([subscription_changed("acc-addon", "start", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events("acc-addon", contact_ids("con", 45), "2026-10-03T09:00:00Z"))
    # When it buys 30 add-on contacts on 10 October (allowance 80)
    metering.record_events(
        [subscription_changed("acc-addon", "start", "2026-10-10T00:00:00Z", addon_contacts=30)]
    )
    # And reaches 60 contacts on 11 October: above the old allowance, below the new one
    metering.record_events(contact_events("acc-addon", contact_ids("con", 15, 46), "2026-10-11T09:00:00Z"))
    no_alert_yet = metering.events_published(USAGE_ALERT)
    # And 80 contacts on 12 October, on a cold container
    metering.cold_start()
    metering.record_events(contact_events("acc-addon", contact_ids("con", 20, 61), "2026-10-12T09:00:00Z"))

    # Then 100 % fired only at 80 contacts, carrying allowance 50 + 30
    assert alert_rows(no_alert_yet) == [("acc-addon", OCTOBER, 80, 40, 50, "start")]
    assert alert_rows(metering.events_published(USAGE_ALERT)) == [
        ("acc-addon", OCTOBER, 80, 40, 50, "start"),
        ("acc-addon", OCTOBER, 100, 80, 80, "start"),
    ]
    assert metering.report()["alerts"] == [
        {"accountId": "acc-addon", "period": OCTOBER, "thresholdPercent": 80, "allowance": 50},
        {"accountId": "acc-addon", "period": OCTOBER, "thresholdPercent": 100, "allowance": 80},
    ]


def test_addons_in_the_same_batch_as_the_contacts_count_for_the_alert(metering: Metering) -> None:
    # Given an account on grow (250 included)
    metering.record_events([subscription_changed("acc-addon-batch", "grow", "2026-09-01T00:00:00Z")])
    # When one batch holds a purchase of 50 add-ons (allowance 300) and, after it, 250 contacts
    _, response = metering.record_events(
        [
            subscription_changed("acc-addon-batch", "grow", "2026-10-01T08:00:00Z", addon_contacts=50),
            *contact_events("acc-addon-batch", contact_ids("con", 250), "2026-10-01T09:00:00Z"),
        ]
    )
    # Then only 80 % of 300 (240) is reached, not 100 % of the old 250
    assert failed_ids(response) == []
    assert alert_rows(metering.events_published(USAGE_ALERT)) == [
        ("acc-addon-batch", OCTOBER, 80, 240, 300, "grow")
    ]


# ---- what is published ----


def test_the_published_event_and_its_sns_copy(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch, metering: Metering
) -> None:
    # Given the customer usage-alert topic, with a queue subscribed to read what it sends
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic_arn = sns.create_topic(Name=f"{stack.table_name}-usage-alerts")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"{stack.table_name}-usage-alert-mails")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    # And RecordActivity deployed with that topic (a new container reads its settings)
    monkeypatch.setenv("USAGE_ALERT_TOPIC_ARN", topic_arn)
    metering.cold_start()
    # And an account on expand with 100 add-ons (allowance 600: 80 % at 480)
    metering.record_events(
        [subscription_changed("acc-notify", "expand", "2026-09-01T00:00:00Z", addon_contacts=100)]
    )

    # When a batch takes it to 480 active contacts, and the batch is delivered again
    batch, response = metering.record_events(
        contact_events("acc-notify", contact_ids("con", 480), "2026-10-07T12:00:00Z")
    )
    metering.record(redelivery(batch))

    # Then one `Usage Threshold Reached` event is on the bus, from source metering, with the contract's fields
    assert failed_ids(response) == []
    [detail] = metering.events_published(USAGE_ALERT)
    [event] = [e for e in metering.published if e["detail-type"] == USAGE_ALERT]
    assert event["source"] == "metering"
    assert set(detail) == ALERT_FIELDS
    assert {key: value for key, value in detail.items() if key != "reachedAt"} == {
        "accountId": "acc-notify",
        "period": OCTOBER,
        "thresholdPercent": 80,
        "activeContacts": 480,
        "allowance": 600,
        "plan": "expand",
    }
    assert detail["reachedAt"] == "2026-10-07T12:00:00.000000Z"  # when the 480th contact's event occurred
    # And one readable message went to the topic, with attributes a subscription can filter on
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == 1
    notification = json.loads(messages[0]["Body"])
    assert notification["MessageAttributes"] == {
        "accountId": {"Type": "String", "Value": "acc-notify"},
        "thresholdPercent": {"Type": "Number", "Value": "80"},
    }
    assert "acc-notify" in notification["Subject"]
    assert "80 %" in notification["Subject"]
    assert "480 active contacts" in notification["Message"]
    assert "allowance of 600" in notification["Message"]


# ---- metrics ----


@pytest.fixture
def emf_metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Powertools metrics switched on (the suite switches them off); the shared metric set starts empty.
    The handler loaded after this fixture flushes EMF to stdout at the end of each invocation."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    metrics.clear_metrics()  # what earlier tests added while metrics were off (never flushed then)
    yield
    metrics.clear_metrics()


def emf_documents(stdout: str) -> list[dict[str, Any]]:
    documents = []
    for line in stdout.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            documents.append(json.loads(line))
    return documents


def metric_totals(document: Mapping[str, Any]) -> dict[str, float]:
    """Each metric the EMF document declares, with its values summed (a value may be a list)."""
    names = [metric["Name"] for block in document["_aws"]["CloudWatchMetrics"] for metric in block["Metrics"]]
    totals = {}
    for name in names:
        value = document[name]
        totals[name] = sum(value) if isinstance(value, list) else value
    return totals


@pytest.mark.usefixtures("emf_metrics")
def test_an_invocation_emits_its_counts_as_emf_with_only_the_service_dimension(
    metering: Metering, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an account on start (80 % at 40 contacts) and a fresh container with metrics on
    metering.record_events([subscription_changed("acc-emf", "start", "2026-09-01T00:00:00Z")])
    metering.cold_start()
    capsys.readouterr()
    # When one batch creates 40 contacts and touches two of them again with notes
    _, response = metering.record_events(
        [
            *contact_events("acc-emf", contact_ids("con", 40), "2026-10-05T09:00:00Z"),
            *contact_events(
                "acc-emf", contact_ids("con", 2), "2026-10-05T10:00:00Z", detail_type="Note Added"
            ),
        ]
    )

    # Then the invocation printed one EMF document
    assert failed_ids(response) == []
    [document] = emf_documents(capsys.readouterr().out)
    totals = metric_totals(document)
    # And it counts 42 events, 40 activations, 2 duplicate touches, the 80 % alert, and one PutItem per
    # contact plus the period's close state, created with its first contact
    assert {
        name: totals.get(name)
        for name in (
            "EventsProcessed",
            "Activations",
            "DuplicateTouches",
            "UsageAlerts",
            "DynamoDBCalls_PutItem",
        )
    } == {
        "EventsProcessed": 42,
        "Activations": 40,
        "DuplicateTouches": 2,
        "UsageAlerts": 1,
        "DynamoDBCalls_PutItem": 41,
    }
    assert totals["Events_ContactCreated"] == 40
    assert totals["Events_NoteAdded"] == 2
    assert totals["AllowanceReached"] == 0
    assert totals["RejectedEvents"] == totals["LateEvents"] == totals["RecordsRetried"] == 0
    # And its only dimension is the service: no per-account dimension (each value would be a billed metric)
    [block] = document["_aws"]["CloudWatchMetrics"]
    assert block["Namespace"] == "Metering/test"
    assert block["Dimensions"] == [["service"]]
    assert document["service"] == "metering"
    assert "accountId" not in document
    assert "acc-emf" not in json.dumps(document)
