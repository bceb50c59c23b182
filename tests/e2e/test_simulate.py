"""`metering simulate` (SPEC §4): a small month replayed through the real handlers, reported in the contract's
shape and order; against other endpoints (per-service endpoint variables, nothing left behind by a failed
run, missing credentials), and with an events file that is not all UTF-8 text."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from metering.errors import StoreUnavailable
from metering.rules import Subscription
from metering.store.subscriptions import Subscriptions
from metering_tools import cli
from metering_tools.local_stack import LocalStack
from metering_tools.simulate import SimulationOptions, simulate
from moto.server import ThreadedMotoServer

from tests.helpers import EVENTS_DIR, INVOICE_KEYS, LOOPBACK, contact_event, moto_server_process, utc


def run(
    file_name: str, now: str, on_stack: Callable[[LocalStack], None] | None = None, **options: Any
) -> dict[str, Any]:
    return simulate(SimulationOptions(events_path=EVENTS_DIR / file_name, now=utc(now), **options), on_stack)


def test_simulate_reports_a_month_with_exactly_the_keys_shapes_and_order_of_spec_section_4() -> None:
    # Given a month of 21 envelopes: a Berlin account on start over its allowance (every detail-type,
    # an inline and a claim-check rename, both sides of the Berlin month edge, a late event delivered
    # twice), a legacy account, an account without subscription, and three invalid events (one twice)
    events_file = "month.jsonl"
    lines = (EVENTS_DIR / events_file).read_text(encoding="utf-8").splitlines()

    # When it is replayed up to mid-November
    report = run(events_file, "2026-11-15T00:00:00Z")

    # Then the report has exactly the sections of SPEC §4 and is plain JSON
    assert list(report) == ["invoices", "usage", "alerts", "rejected", "late", "stats"]
    assert json.loads(json.dumps(report)) == report
    # And October in Berlin is billed on start: 61 active, 11 over, 275 cents
    assert report["invoices"] == [
        {
            "accountId": "acc-berlin",
            "period": "2026-10",
            "plan": "start",
            "billingCycle": "monthly",
            "includedContacts": 50,
            "addonContacts": 0,
            "allowance": 50,
            "activeContacts": 61,
            "overusageContacts": 11,
            "unitPriceCents": 25,
            "amountCents": 275,
            "currency": "EUR",
        }
    ]
    assert [list(invoice) for invoice in report["invoices"]] == [INVOICE_KEYS]
    # And every account and period with activity is listed, closed only where its close instant has passed
    assert report["usage"] == [
        {"accountId": "acc-berlin", "period": "2026-10", "activeContacts": 61, "closed": True},
        {"accountId": "acc-berlin", "period": "2026-11", "activeContacts": 2, "closed": False},
        {"accountId": "acc-legacy", "period": "2026-10", "activeContacts": 2, "closed": True},
        {"accountId": "acc-nosub", "period": "2026-10", "activeContacts": 1, "closed": True},
        {"accountId": "acc-nosub", "period": "2026-11", "activeContacts": 1, "closed": False},
    ]
    assert report["alerts"] == [
        {"accountId": "acc-berlin", "period": "2026-10", "thresholdPercent": 80, "allowance": 50},
        {"accountId": "acc-berlin", "period": "2026-10", "thresholdPercent": 100, "allowance": 50},
    ]
    # And each rejected and late event is named once, however often it was delivered
    assert [row["eventId"] for row in report["rejected"]] == [
        "bad-contact-id",
        "bad-detail-type",
        "bad-naive-time",
    ]
    assert all(list(row) == ["eventId", "reason"] and row["reason"] for row in report["rejected"])
    reasons = {row["eventId"]: row["reason"] for row in report["rejected"]}
    assert "detail.contactId" in reasons["bad-contact-id"]
    assert "unknown detail-type" in reasons["bad-detail-type"]
    assert "detail.occurredAt" in reasons["bad-naive-time"]
    assert report["late"] == [{"eventId": "late-berlin-b099", "accountId": "acc-berlin", "period": "2026-10"}]

    # And stats count the events, the DynamoDB calls and items by operation, and the invocations by function
    stats = report["stats"]
    # (and, beyond the contract's four: how many receives the messages needed, which ones reached a DLQ, and
    # the capacity units AWS would bill for those calls, by item size)
    assert list(stats) == [
        "events",
        "dynamodb",
        "dynamodbItems",
        "invocations",
        "receives",
        "deadLettered",
        "capacity",
    ]
    assert stats["receives"]["max"] == stats["receives"]["median"] == 1
    assert stats["receives"]["histogram"]["1"] >= len(lines)
    assert stats["deadLettered"] == []
    assert {"writeUnits", "readUnits", "byPath", "writeUnitEquivalents"} <= set(stats["capacity"])
    assert stats["capacity"]["writeUnitEquivalents"] > 0
    assert stats["events"] == len(lines) == 21
    assert set(stats["dynamodbItems"]) == set(stats["dynamodb"])
    for section in ("dynamodb", "dynamodbItems", "invocations"):
        assert all(
            isinstance(name, str) and type(count) is int and count >= 0
            for name, count in stats[section].items()
        )
        assert list(stats[section]) == sorted(stats[section])
    assert {"BatchGetItem", "PutItem", "UpdateItem", "Query"} <= set(stats["dynamodb"])
    assert set(stats["invocations"]) == {"RecordActivity", "ClosePeriods", "InvoiceAccount", "CountContacts"}
    assert all(count > 0 for count in stats["invocations"].values())


def test_simulate_lists_are_sorted_as_spec_section_4_says() -> None:
    # Given the month's report
    report = run("month.jsonl", "2026-11-15T00:00:00Z")
    # When its lists are checked against the order SPEC §4 prescribes
    # Then each is sorted by account, period, then threshold or event id
    assert report["invoices"] == sorted(report["invoices"], key=lambda row: (row["accountId"], row["period"]))
    assert report["usage"] == sorted(report["usage"], key=lambda row: (row["accountId"], row["period"]))
    assert report["alerts"] == sorted(
        report["alerts"], key=lambda row: (row["accountId"], row["period"], row["thresholdPercent"])
    )
    assert report["rejected"] == sorted(report["rejected"], key=lambda row: row["eventId"])
    assert report["late"] == sorted(
        report["late"], key=lambda row: (row["accountId"], row["period"], row["eventId"])
    )


def test_simulate_runs_the_close_at_each_close_instant_before_later_events() -> None:
    # Given an account on start with 60 October contacts, and an upgrade to scale effective 20 October that is
    # only put on the bus on 3 November, after October's close instant (1 November 06:00 UTC)
    # When the three envelopes are replayed up to 10 November
    report = run("retroactive_upgrade.jsonl", "2026-11-10T00:00:00Z")
    # Then October was closed and billed as of its close instant, on start (10 over, 250 cents),
    # before the upgrade was processed (SPEC §4: the job runs before later events are processed)
    assert [(row["plan"], row["activeContacts"], row["amountCents"]) for row in report["invoices"]] == [
        ("start", 60, 250)
    ]


# ---- other endpoints ----


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server in this process, on loopback (never through a proxy)."""
    monkeypatch.setenv("NO_PROXY", LOOPBACK)
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def resources_at(endpoint: str) -> dict[str, list[str]]:
    """What a simulate run could leave at an endpoint: tables, queues, buses and buckets."""
    return {
        "tables": boto3.client("dynamodb", endpoint_url=endpoint).list_tables()["TableNames"],
        "queues": boto3.client("sqs", endpoint_url=endpoint).list_queues().get("QueueUrls", []),
        "buses": [
            bus["Name"]
            for bus in boto3.client("events", endpoint_url=endpoint).list_event_buses()["EventBuses"]
            if bus["Name"] != "default"
        ],
        "buckets": [b["Name"] for b in boto3.client("s3", endpoint_url=endpoint).list_buckets()["Buckets"]],
    }


def test_a_per_service_endpoint_variable_sends_its_service_elsewhere_than_endpoint_url(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given AWS_ENDPOINT_URL_DYNAMODB naming a second moto server, a process of its own
    with moto_server_process(os.environ) as dynamodb_endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint)
        seen: dict[str, dict[str, list[str]]] = {}

        def look(stack: LocalStack) -> None:
            seen["endpoint-url"] = resources_at(endpoint)
            seen["dynamodb"] = resources_at(dynamodb_endpoint)
            seen["stack"] = {"tables": [stack.table_name]}

        # When the month is replayed with --endpoint-url naming the first
        report = run("month.jsonl", "2026-11-15T00:00:00Z", look, endpoint_url=endpoint)
        left = resources_at(dynamodb_endpoint)["tables"]

    # Then the table was created on the DynamoDB endpoint, the queues at --endpoint-url, and the month was
    # billed as on embedded moto; the run removed its table afterwards
    table = seen["stack"]["tables"][0]
    assert seen["dynamodb"]["tables"] == [table]
    assert seen["endpoint-url"]["tables"] == []
    assert len(seen["endpoint-url"]["queues"]) == 3
    assert [(row["accountId"], row["amountCents"]) for row in report["invoices"]] == [("acc-berlin", 275)]
    assert left == []


def test_a_run_that_fails_after_provisioning_leaves_nothing_at_the_endpoint(endpoint: str) -> None:
    # Given a run that fails once its stack exists
    def fail(stack: LocalStack) -> None:
        raise RuntimeError(f"injected after provisioning {stack.table_name}")

    # When the month is replayed at an endpoint
    with pytest.raises(RuntimeError, match="injected after provisioning"):
        run("month.jsonl", "2026-11-15T00:00:00Z", fail, endpoint_url=endpoint)

    # Then nothing of it is left there
    assert resources_at(endpoint) == {"tables": [], "queues": [], "buses": [], "buckets": []}


def test_a_run_whose_provisioning_fails_part_way_leaves_only_what_was_there_before(endpoint: str) -> None:
    # Given an endpoint that already holds the claim-check bucket, so provisioning fails at its last step
    boto3.client("s3", endpoint_url=endpoint).create_bucket(
        Bucket="crm-claim-checks", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )

    # When the month is replayed there
    with pytest.raises(Exception, match="BucketAlreadyOwnedByYou"):
        run("month.jsonl", "2026-11-15T00:00:00Z", endpoint_url=endpoint)

    # Then the table, queues and bus it had created are gone, and the bucket it did not create is kept
    assert resources_at(endpoint) == {
        "tables": [],
        "queues": [],
        "buses": [],
        "buckets": ["crm-claim-checks"],
    }


def test_missing_credentials_for_an_endpoint_are_named_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given no credentials in the environment (and no instance metadata to fall back on)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    # When the operator replays a month against an endpoint
    command = ["simulate", str(EVENTS_DIR / "month.jsonl"), "--now", "2026-11-15T00:00:00Z"]
    with pytest.raises(SystemExit) as stopped:
        cli.main([*command, "--endpoint-url", "http://127.0.0.1:9"])

    # Then it stops with a message saying what to set, before creating anything
    message = str(stopped.value.code)
    assert "no AWS credentials" in message
    assert "AWS_ACCESS_KEY_ID" in message
    assert "AWS_PROFILE" in message


# ---- the events file ----


def test_a_line_that_is_not_utf8_is_rejected_with_its_line_number_like_any_unreadable_line(
    tmp_path: Path,
) -> None:
    # Given an events file whose second line holds bytes that are not UTF-8 and whose fourth is plain text
    valid = [contact_event("acc-bytes", f"con-{n}", "2026-10-05T10:00:00Z") for n in (1, 2)]
    events = tmp_path / "month.jsonl"
    events.write_bytes(
        json.dumps(valid[0]).encode()
        + b"\n"
        + b'{"id": "bad-\xff\xfe-bytes", "detail": {}}\n'
        + json.dumps(valid[1]).encode()
        + b"\n"
        + b"not an envelope\n"
    )

    # When it is replayed
    report = simulate(SimulationOptions(events_path=events, now=utc("2026-11-15T00:00:00Z")))

    # Then both unreadable lines are rejected as unreadable, each under the number of its line, and the
    # valid lines around them count
    rejected = {row["eventId"]: row["reason"] for row in report["rejected"]}
    assert list(rejected) == ["sqs:line-2", "sqs:line-4"]
    assert all(reason.startswith("body is not a JSON object") for reason in rejected.values())
    assert [(row["accountId"], row["activeContacts"]) for row in report["usage"]] == [("acc-bytes", 2)]


def test_a_replay_that_loses_messages_names_them_and_exits_with_status_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a store whose every read of acc-legacy's subscription history fails (no redelivery fixes it)
    real_history = Subscriptions.history

    def failing(self: Subscriptions, account_id: str) -> list[Subscription]:
        if account_id == "acc-legacy":
            raise StoreUnavailable("DynamoDB ThrottlingException")
        return real_history(self, account_id)

    monkeypatch.setattr(Subscriptions, "history", failing)
    # When the month is replayed without injected faults
    status = cli.main(["simulate", str(EVENTS_DIR / "month.jsonl"), "--now", "2026-11-15T00:00:00Z"])
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    # Then acc-legacy's records went through the activity queue's five receives and were lost: the report
    # names each, the command says so and exits with status 3; the others were recorded
    lost = report["stats"]["deadLettered"]
    assert status == cli.LOST_MESSAGES == 3
    assert len(lost) == 3
    assert {letter["queue"] for letter in lost} == {"ActivityQueue"}
    assert not any(letter["redriven"] for letter in lost)
    assert report["stats"]["receives"]["max"] == 5
    assert "acc-legacy" not in {row["accountId"] for row in report["usage"]}
    assert {row["accountId"] for row in report["usage"]} == {"acc-berlin", "acc-nosub"}
    assert "3 messages dead-lettered and lost" in printed.err
