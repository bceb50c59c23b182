"""Exactness under real concurrency: several OS processes, each a cold-started copy of a function, against one
moto server over HTTP (see `serial_moto_server`), as Lambda containers run against DynamoDB, SQS and
EventBridge.

1. Four RecordActivity processes record overlapping contacts of the same accounts at once (every contact
   touched by three of them); then two close runs race each other (each close request may reach both
   InvoiceAccount processes at once) and two RecordActivity processes delivering late events.
2. The close run races in-period events that reach the bus just before the close instant: each contact is
   either counted before the seal or named by an event stored as late, and the invoice bills the sealed
   count.
3. At-least-once delivery: every event reaches two RecordActivity processes at about the same time.

Every count, alert and invoice must be exact: contact items == distinct contacts sent (or named by a late
event), one alert per threshold reached, one invoice per period over its allowance billing the contact items
of the sealed period, published once. The close functions run with a fence of RecordActivity's timeout here
(see conftest), as on AWS: a recording that read a period open may still write after its seal.
The worker functions live at module level so `spawn` children can import them; a child sets the functions'
environment before it loads a handler from its file, as a cold start does.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import random
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import pytest
from metering.model import PeriodRef
from metering.rules import period_bounds
from metering.store import keys

from tests.concurrency.conftest import ServerStack
from tests.helpers import (
    ACCOUNT,
    REGION,
    FakeLambdaContext,
    contact_event,
    failed_ids,
    iso,
    load_handler,
    redelivery,
    sqs_event,
    sqs_record,
    subscription_changed,
)

pytestmark = pytest.mark.slow

PERIOD = "2026-10"
GRACE = timedelta(hours=6)
SCHEDULED_TIME = "2026-11-01T07:00:00Z"  # after every account's period end + grace (UTC and Berlin)
TOUCH_TYPES = ("Contact Created", "Note Added", "Message Sent")
RECORD_BATCH_SIZE = 50
CLOSE_BATCH_SIZE = 10
MAX_DELIVERIES = 8  # per SQS message, as a redrive policy's maxReceiveCount would bound it
REDELIVERY_DELAY_SECONDS = 0.25
WORKER_TIME_LIMIT_SECONDS = 240.0  # every child stops on its own after this (a slow CI host needs minutes)
PHASE_TIMEOUT_SECONDS = 300.0  # the parent kills what is still running after this
STOP_GRACE_SECONDS = 3.0
MAX_ERRORS_KEPT = 3
USAGE_ALERT = "Usage Threshold Reached"
INVOICE = "Overusage Invoice Issued"
CLOSE_PERIODS_TIMEOUT = 300  # template.yaml, ClosePeriodsFunction: the run waits out the fence within it


@dataclass(frozen=True)
class Account:
    account_id: str
    plan: str
    addon_contacts: int
    timezone: str | None
    allowance: int

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone or "UTC")

    @property
    def period_end(self) -> datetime:
        return period_bounds(PERIOD, self.tz)[1]

    @property
    def close_instant(self) -> datetime:
        return self.period_end + GRACE

    def subscription(self) -> dict[str, Any]:
        return subscription_changed(
            self.account_id,
            self.plan,
            "2026-09-01T00:00:00Z",
            addon_contacts=self.addon_contacts,
            timezone=self.timezone,
        )


ACCOUNTS = (
    Account("acc-start", "start", 0, None, 50),  # 80 % and 100 % reached, billed
    Account("acc-grow", "grow", 0, "Europe/Berlin", 250),  # 80 % and 100 % reached, billed
    Account("acc-addon", "grow", 100, None, 350),  # only 80 % reached, within allowance
)


# ---- the children: cold-started functions driven as their event source mappings drive them ----


@dataclass
class Report:
    """What a child did, sent back to the test (small: it goes through a pipe)."""

    name: str
    invocations: int = 0
    redelivered: int = 0
    unresolved: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    closes_scheduled: int = 0
    close_requests: int = 0

    def error(self, text: str) -> None:
        """Keep the first few errors (a broken handler fails every delivery the same way)."""
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(text)
        elif len(self.errors) == MAX_ERRORS_KEPT:
            self.errors.append("... more errors left out")


@dataclass(frozen=True)
class RecorderJob:
    """Batches (lists of envelope bodies) for one RecordActivity process. `prelude` goes before the
    start barrier; the last `hold_back` batches wait for the test's release (after the close ran)."""

    name: str
    batches: list[list[str]]
    prelude: list[list[str]] = field(default_factory=list)
    hold_back: int = 0


@dataclass(frozen=True)
class CloserJob:
    """One close run: ClosePeriods as of `scheduled_time`, then InvoiceAccount fed from the close queue
    until it stays empty. With `gate`, it starts once the recorders finished that many batches. With
    `visibility_timeout=0` a received request stays visible, so both closers may get it at once (a
    standard queue's at-least-once delivery)."""

    name: str
    scheduled_time: str
    close_queue_url: str
    close_queue_arn: str
    gate: int = 0
    visibility_timeout: int | None = None


@dataclass(frozen=True)
class Sync:
    """What the children share: the start barrier, the count of recorded batches (closers may wait for
    it), the release of held-back batches, and the queue of reports."""

    barrier: Any
    closers_ready: Any  # the closers start draining together, after every ClosePeriods run
    progress: Any
    release: Any
    reports: Any


def _cold_start(environment: dict[str, str]) -> None:
    for variable in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_DYNAMODB"):
        os.environ.pop(variable, None)
    os.environ.update(environment)


def _deliver(
    handler: Callable[..., dict[str, Any]], bodies: Sequence[str], report: Report, deadline: float
) -> None:
    """One SQS batch; records the response lists as failed are delivered again (alone), as SQS does."""
    event = sqs_event(bodies)
    for delivery in range(1, MAX_DELIVERIES + 1):
        report.invocations += 1
        try:
            failed = failed_ids(handler(event, FakeLambdaContext("record-activity")))
        except Exception:  # a crashed invocation: SQS redelivers the whole batch
            report.error(traceback.format_exc(limit=3)[-600:])
            failed = [record["messageId"] for record in event["Records"]]
        if not failed:
            return
        if delivery == MAX_DELIVERIES or time.monotonic() > deadline:
            break
        report.redelivered += len(failed)
        event = redelivery(event, failed)
        time.sleep(REDELIVERY_DELAY_SECONDS * delivery)
    report.unresolved += [json.loads(record["body"])["id"] for record in event["Records"]][:50]


def record_worker(job: RecorderJob, environment: dict[str, str], sync: Sync) -> None:
    report = Report(job.name)
    deadline = time.monotonic() + WORKER_TIME_LIMIT_SECONDS
    try:
        _cold_start(environment)
        handler = load_handler("record_activity").handler
        for bodies in job.prelude:
            _deliver(handler, bodies, report, deadline)
        sync.barrier.wait(timeout=WORKER_TIME_LIMIT_SECONDS)
        for index, bodies in enumerate(job.batches):
            if index == len(job.batches) - job.hold_back and not sync.release.wait(
                timeout=max(0.0, deadline - time.monotonic())
            ):
                report.error("never released")
                break
            if time.monotonic() > deadline:
                report.error("time limit reached")
                break
            _deliver(handler, bodies, report, deadline)
            with sync.progress.get_lock():
                sync.progress.value += 1
    except BaseException:
        report.error(traceback.format_exc(limit=5)[-1500:])
    finally:
        sync.reports.put(report)


def delete_received(sqs: Any, queue_url: str, receipt_handle: str) -> None:
    """Delete a received message as Lambda's event source mapping does. A message received again since (by
    the other closer) has a new receipt handle: SQS then ignores the old one and moto rejects it; either
    way the message stays with its latest receiver, who deletes it."""
    try:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt_handle)
    except sqs.exceptions.ReceiptHandleIsInvalid:
        return


def settle(sqs: Any, job: CloserJob, messages: list[Any], failed: set[str], report: Report) -> None:
    """What SQS does after an invocation: delete what succeeded, dead-letter what failed its last receive,
    make the rest visible again."""
    for message in messages:
        receives = int(message["Attributes"]["ApproximateReceiveCount"])
        if message["MessageId"] not in failed:
            delete_received(sqs, job.close_queue_url, message["ReceiptHandle"])
        elif receives >= MAX_DELIVERIES:
            report.unresolved.append(message["Body"])
            delete_received(sqs, job.close_queue_url, message["ReceiptHandle"])
        elif job.visibility_timeout != 0:  # visible again at once, not after the timeout
            report.redelivered += 1
            sqs.change_message_visibility(
                QueueUrl=job.close_queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )


def close_worker(job: CloserJob, environment: dict[str, str], sync: Sync) -> None:
    report = Report(job.name)
    deadline = time.monotonic() + WORKER_TIME_LIMIT_SECONDS
    try:
        _cold_start(environment)
        close_periods = load_handler("close_periods").handler
        invoice_account = load_handler("invoice_account").handler
        sqs = boto3.client("sqs")
        sync.barrier.wait(timeout=WORKER_TIME_LIMIT_SECONDS)
        while sync.progress.value < job.gate and time.monotonic() < deadline:
            time.sleep(0.01)
        response = close_periods(
            {"scheduledTime": job.scheduled_time}, FakeLambdaContext("close-periods", CLOSE_PERIODS_TIMEOUT)
        )
        report.invocations += 1
        report.closes_scheduled = int(response["requestsSent"])
        if response["handedOver"]:
            report.error(f"the close run handed over: {response}")
        sync.closers_ready.wait(timeout=max(0.0, deadline - time.monotonic()))
        empty_receives = 0
        while empty_receives < 2 and time.monotonic() < deadline:
            messages = sqs.receive_message(
                QueueUrl=job.close_queue_url,
                MaxNumberOfMessages=CLOSE_BATCH_SIZE,
                WaitTimeSeconds=1,
                AttributeNames=["All"],
                VisibilityTimeout=360 if job.visibility_timeout is None else job.visibility_timeout,
            ).get("Messages", [])
            if not messages:
                empty_receives += 1
                continue
            empty_receives = 0
            records = [
                sqs_record(
                    m["Body"],
                    m["MessageId"],
                    receive_count=int(m["Attributes"]["ApproximateReceiveCount"]),
                    queue_arn=job.close_queue_arn,
                )
                for m in messages
            ]
            report.invocations += 1
            report.close_requests += len(records)
            failed = set(
                failed_ids(invoice_account({"Records": records}, FakeLambdaContext("invoice-account")))
            )
            settle(sqs, job, messages, failed, report)
        if time.monotonic() >= deadline:
            report.error("time limit reached while draining the close queue")
    except BaseException:
        report.error(traceback.format_exc(limit=5)[-1500:])
    finally:
        sync.reports.put(report)


# ---- the test side: start the children together, collect their reports, never leave one behind ----


class Crew:
    """Child processes (spawn) that start together at a barrier and report back through a queue; none
    outlives the `with` block (joined, then terminated, then killed)."""

    def __init__(
        self, environment: dict[str, str], recorders: Sequence[RecorderJob], closers: Sequence[CloserJob]
    ) -> None:
        context = multiprocessing.get_context("spawn")
        # the parent keeps these for the children's lifetime: a semaphore is unlinked with its last reference
        self.sync = Sync(
            barrier=context.Barrier(len(recorders) + len(closers)),
            closers_ready=context.Barrier(max(1, len(closers))),
            progress=context.Value("i", 0),
            release=context.Event(),
            reports=context.Queue(),
        )
        self.reports: dict[str, Report] = {}
        targets: list[tuple[str, Callable[..., None], object]] = [
            *((job.name, record_worker, job) for job in recorders),
            *((job.name, close_worker, job) for job in closers),
        ]
        self._processes = {
            name: context.Process(target=target, args=(job, environment, self.sync), name=name, daemon=True)
            for name, target, job in targets
        }
        self._deadline = 0.0

    def __enter__(self) -> Crew:
        self._deadline = time.monotonic() + PHASE_TIMEOUT_SECONDS
        for process in self._processes.values():
            process.start()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        patience = self._deadline if exc_type is None else time.monotonic() + STOP_GRACE_SECONDS
        for process in self._processes.values():
            process.join(timeout=max(0.1, patience - time.monotonic()))
        for process in self._processes.values():
            if process.is_alive():
                process.terminate()
                process.join(timeout=STOP_GRACE_SECONDS)
            if process.is_alive():
                process.kill()
                process.join(timeout=STOP_GRACE_SECONDS)
        self.sync.reports.close()
        self.sync.reports.cancel_join_thread()

    def release_held_back(self) -> None:
        self.sync.release.set()

    def wait_for(self, names: Iterable[str]) -> None:
        """Collect reports until every named child has reported (fails the test at the phase timeout)."""
        wanted = set(names)
        while not wanted <= self.reports.keys():
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"children did not finish in time: {sorted(wanted - self.reports.keys())}")
            try:
                report: Report = self.sync.reports.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                silent = wanted - self.reports.keys()
                dead = sorted(name for name in silent if self._processes[name].exitcode not in (None, 0))
                if dead:
                    pytest.fail(f"children died without a report: {dead}")
                continue
            self.reports[report.name] = report

    def wait_all(self, *, allow_unresolved: bool = False) -> dict[str, Report]:
        """Every child's report; fails on a child's error, or on records still failing after the last
        redelivery unless `allow_unresolved`."""
        self.wait_for(self._processes)
        problems = {
            name: {"errors": report.errors, "unresolved": report.unresolved}
            for name, report in self.reports.items()
            if report.errors or (report.unresolved and not allow_unresolved)
        }
        assert not problems, f"children reported errors or records never processed: {problems}"
        return self.reports


# ---- events and batches ----


def body(envelope: dict[str, Any]) -> str:
    return json.dumps(envelope, separators=(",", ":"))


def contact_id(number: int) -> str:
    return f"con-{number:04d}"


def chunked(bodies: Sequence[str], size: int) -> list[list[str]]:
    return [list(bodies[start : start + size]) for start in range(0, len(bodies), size)]


@dataclass
class Sent:
    """Every activity event the test sent: event id -> (account, contact)."""

    events: dict[str, tuple[str, str]] = field(default_factory=dict)

    def add(self, envelope: dict[str, Any]) -> str:
        detail = envelope["detail"]
        self.events[envelope["id"]] = (detail["accountId"], detail["contactId"])
        return body(envelope)

    def contacts(self, account_id: str) -> set[str]:
        return {contact for account, contact in self.events.values() if account == account_id}


# ---- reading the table (the test's own client on the server) ----


class Table:
    def __init__(self, server: ServerStack) -> None:
        self._client = boto3.client("dynamodb", endpoint_url=server.endpoint, region_name=REGION)
        self._sqs = boto3.client("sqs", endpoint_url=server.endpoint, region_name=REGION)
        self._name = server.stack.table_name
        self._capture = server.capture_queue_url
        self.published: list[dict[str, Any]] = []

    def item(self, account_id: str, sk: str) -> dict[str, Any] | None:
        response = self._client.get_item(
            TableName=self._name,
            Key=keys.key(keys.period_pk(PeriodRef(account_id, PERIOD)), sk),
            ConsistentRead=True,
        )
        item: dict[str, Any] | None = response.get("Item")
        return item

    def alerts(self, account_id: str) -> dict[str, Any]:
        """The claimed thresholds of the account's period: percent (text) -> claim."""
        item = self.item(account_id, keys.ALERTS_SK) or {}
        return {
            name.removeprefix("alert"): value["M"] for name, value in item.items() if name.startswith("alert")
        }

    def close_state(self) -> dict[str, Any]:
        response = self._client.get_item(
            TableName=self._name, Key=keys.close_key(PERIOD), ConsistentRead=True
        )
        item: dict[str, Any] = response.get("Item", {})
        return item

    def active_contacts(self, account_id: str) -> int:
        return len(self.contacts(account_id))

    def sort_keys(self, account_id: str, prefix: str) -> list[str]:
        """The sort keys under `prefix` of the account's period, prefix removed (a list: duplicates show)."""
        found: list[str] = []
        for page in self._client.get_paginator("query").paginate(
            TableName=self._name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={
                ":pk": {"S": keys.period_pk(PeriodRef(account_id, PERIOD))},
                ":prefix": {"S": prefix},
            },
            ProjectionExpression="sk",
            ConsistentRead=True,
        ):
            found += [item["sk"]["S"].removeprefix(prefix) for item in page.get("Items", [])]
        return found

    def contacts(self, account_id: str) -> set[str]:
        found = [key for key in self.sort_keys(account_id, keys.CONTACT_PREFIX) if key]  # "" is the tally
        assert len(found) == len(set(found))
        return set(found)

    def invoice_items(self) -> list[dict[str, Any]]:
        return [
            item
            for page in self._client.get_paginator("scan").paginate(
                TableName=self._name,
                FilterExpression="sk = :invoice",
                ExpressionAttributeValues={":invoice": {"S": keys.INVOICE_SK}},
                ConsistentRead=True,
            )
            for item in page.get("Items", [])
        ]

    def events_published(self, detail_type: str) -> list[dict[str, Any]]:
        """Details of what the functions put on the bus (copied to the capture queue), so far."""
        empty = 0
        while empty < 2:
            messages = self._sqs.receive_message(
                QueueUrl=self._capture, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not messages:
                empty += 1
                continue
            self.published += [json.loads(message["Body"]) for message in messages]
            for message in messages:
                self._sqs.delete_message(QueueUrl=self._capture, ReceiptHandle=message["ReceiptHandle"])
        return [event["detail"] for event in self.published if event["detail-type"] == detail_type]


def closer_jobs(
    server: ServerStack, count: int, *, gate: int = 0, visibility_timeout: int | None = None
) -> list[CloserJob]:
    arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{server.stack.table_name}-close"
    return [
        CloserJob(
            f"closer-{index}", SCHEDULED_TIME, server.stack.close_queue_url, arn, gate, visibility_timeout
        )
        for index in range(count)
    ]


def expected_thresholds(account: Account, active: int) -> set[str]:
    return {str(percent) for percent in (80, 100) if active * 100 >= account.allowance * percent}


def alert_problems(table: Table, active: dict[str, int]) -> list[str]:
    """What differs from: the alerts item holds exactly the thresholds reached (each marked published), and
    each was published on the bus exactly once."""
    problems = []
    published: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for detail in table.events_published(USAGE_ALERT):
        published[(detail["accountId"], str(detail["thresholdPercent"]))].append(detail)
    wanted = {
        (account.account_id, percent)
        for account in ACCOUNTS
        for percent in expected_thresholds(account, active[account.account_id])
    }
    for account in ACCOUNTS:
        claimed = table.alerts(account.account_id)
        reached = {percent for acc, percent in wanted if acc == account.account_id}
        if set(claimed) != reached or not all("publishedAt" in alert for alert in claimed.values()):
            problems.append(f"{account.account_id}: alerts claimed {claimed}, thresholds reached {reached}")
    for key in sorted(wanted | published.keys()):
        if len(published[key]) != 1 or key not in wanted:
            problems.append(
                f"{key[0]} {key[1]} % alert published {len(published[key])} times: {published[key]}"
            )
    return problems


def assert_closed_and_billed(table: Table) -> None:
    """The period sealed for every account (its close state is through the run's time); one invoice item per
    period over its allowance, billing the contact items of the sealed period; none within its allowance."""
    invoices = {keys.ref_from_pk(item["pk"]["S"]).account_id: item for item in table.invoice_items()}
    billed = set()
    assert table.close_state()["closedThrough"]["S"] == "2026-11-01T07:00:00.000000Z"
    for account in ACCOUNTS:
        sealed = table.active_contacts(account.account_id)
        over = max(0, sealed - account.allowance)
        if over == 0:
            continue
        billed.add(account.account_id)
        invoice = invoices[account.account_id]
        assert int(invoice["activeContacts"]["N"]) == sealed
        assert int(invoice["allowance"]["N"]) == account.allowance
        assert int(invoice["overusageContacts"]["N"]) == over
        assert int(invoice["amountCents"]["N"]) == 25 * over
        assert "publishedAt" in invoice
    assert invoices.keys() == billed


def invoice_publication_problems(table: Table) -> list[str]:
    """What differs from: each stored invoice was published on the bus exactly once, with its figures."""
    invoices = {keys.ref_from_pk(item["pk"]["S"]).account_id: item for item in table.invoice_items()}
    published: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for detail in table.events_published(INVOICE):
        published[detail["accountId"]].append(detail)
    problems = []
    for account_id in sorted(invoices.keys() | published.keys()):
        details = published[account_id]
        stored = invoices.get(account_id)
        if stored is None or any(
            detail["invoiceId"] != f"{account_id}:{PERIOD}"
            or detail["activeContacts"] != int(stored["activeContacts"]["N"])
            for detail in details
        ):
            problems.append(f"invoice of {account_id}: stored {stored}, published {details}")
        elif len(details) != 1:
            problems.append(f"invoice {account_id}:{PERIOD} published {len(details)} times: {details}")
    return problems


# ---- scenario 1 ----

CONTACTS_PER_ACCOUNT = 300
RECORDERS = 4
LATE_CONTACTS = 40  # per account: late events for 20 counted contacts and 20 never seen before


def overlapping_batches(sent: Sent) -> list[list[list[str]]]:
    """Per recorder: every contact of every account touched by 3 events, each in another recorder's
    batches; batches mix the accounts in a random order."""
    streams: list[list[str]] = [[] for _ in range(RECORDERS)]
    base = datetime(2026, 10, 2, 8, tzinfo=UTC)
    for account in ACCOUNTS:
        for number in range(1, CONTACTS_PER_ACCOUNT + 1):
            for touch, detail_type in enumerate(TOUCH_TYPES):
                occurred_at = iso(base + timedelta(days=touch * 9, minutes=number))
                envelope = contact_event(
                    account.account_id, contact_id(number), occurred_at, detail_type=detail_type
                )
                streams[(number + touch) % RECORDERS].append(sent.add(envelope))
    rng = random.Random(20261031)
    for stream in streams:
        rng.shuffle(stream)
    return [chunked(stream, RECORD_BATCH_SIZE) for stream in streams]


def late_batches(sent: Sent) -> tuple[list[list[list[str]]], list[str]]:
    """Two recorders' batches of events delivered after the close instant for contacts of the period."""
    bodies, ids = [], []
    delivered = datetime(2026, 11, 1, 9, tzinfo=UTC)
    numbers = [*range(1, LATE_CONTACTS // 2 + 1), *range(1001, 1001 + LATE_CONTACTS // 2)]
    for account in ACCOUNTS:
        for index, number in enumerate(numbers):
            envelope = contact_event(
                account.account_id,
                contact_id(number),
                iso(datetime(2026, 10, 20, 12, tzinfo=UTC) + timedelta(minutes=index)),
                detail_type="Contact Property Changed",
                delivered_at=iso(delivered + timedelta(seconds=index)),
            )
            bodies.append(body(envelope))
            ids.append(envelope["id"])
            sent.events[envelope["id"]] = (account.account_id, contact_id(number))
    random.Random(7).shuffle(bodies)
    half = len(bodies) // 2
    return [chunked(bodies[:half], 25), chunked(bodies[half:], 25)], ids


def test_overlapping_recorders_then_close_racing_late_events(server_stack: ServerStack) -> None:
    table = Table(server_stack)
    sent = Sent()
    streams = overlapping_batches(sent)
    subscriptions = [[body(account.subscription()) for account in ACCOUNTS]]
    recorders = [
        RecorderJob(f"recorder-{index}", batches, prelude=subscriptions if index == 0 else [])
        for index, batches in enumerate(streams)
    ]

    # When four processes record overlapping contacts of the same accounts at once
    with Crew(server_stack.environment, recorders, []) as crew:
        crew.wait_all()

    # Then each period counts every distinct contact exactly once, and its count equals its contact items
    active = {}
    for account in ACCOUNTS:
        contacts = table.contacts(account.account_id)
        assert contacts == sent.contacts(account.account_id)
        assert table.active_contacts(account.account_id) == len(contacts) == CONTACTS_PER_ACCOUNT
        active[account.account_id] = len(contacts)
    # And each threshold reached was claimed and published exactly once (checked last, so that the close
    # below still runs when it fails)
    alerts_wrong = alert_problems(table, active)

    # When two close runs race each other (each close request may reach both InvoiceAccount containers at
    # once) and two processes delivering late events
    late_streams, late_ids = late_batches(sent)
    late_recorders = [RecorderJob(f"late-{index}", batches) for index, batches in enumerate(late_streams)]
    closers = closer_jobs(server_stack, 2, visibility_timeout=0)
    with Crew(server_stack.environment, late_recorders, closers) as crew:
        reports = crew.wait_all()
    assert sum(reports[f"closer-{index}"].closes_scheduled for index in range(2)) >= len(ACCOUNTS)

    # Then every period is sealed at its count and billed once, and the late events are kept as late
    assert_closed_and_billed(table)
    late_by_account = defaultdict(set)
    for event_id in late_ids:
        late_by_account[sent.events[event_id][0]].add(event_id)
    for account in ACCOUNTS:
        assert table.active_contacts(account.account_id) == active[account.account_id]
        assert table.contacts(account.account_id) == {
            contact_id(n) for n in range(1, CONTACTS_PER_ACCOUNT + 1)
        }
        assert (
            set(table.sort_keys(account.account_id, keys.LATE_PREFIX)) == late_by_account[account.account_id]
        )
    # And (checked last) each alert and each invoice reached the bus exactly once
    published_wrong = alerts_wrong + invoice_publication_problems(table)
    assert not published_wrong, "published on the bus: " + "; ".join(published_wrong)


# ---- scenario 2 ----

PRELOADED_CONTACTS = 60
RACING_CONTACTS = 180  # per account, new in the race (each touched twice), and re-touches of preloaded ones
STRAGGLERS = 20  # per account and recorder: contacts only the held-back batches touch
RACING_RECORDERS = 3
RACE_BATCH_SIZE = 20


@dataclass
class Race:
    preload: list[list[str]]
    streams: list[list[list[str]]]  # per recorder: batches before the close, then the held-back ones
    held_back: int  # batches per recorder delivered only after the close run finished

    @property
    def racing_batches(self) -> int:
        return sum(len(stream) - self.held_back for stream in self.streams)


def racing_events(sent: Sent) -> Race:
    """The preload (subscriptions and the first contacts, early in the period) and per recorder the batches
    of events that occur in the period's last minutes and reach the bus just before its close instant;
    each recorder's last batches touch contacts nothing else touches (they arrive after the seal)."""
    preload = [body(account.subscription()) for account in ACCOUNTS]
    streams: list[list[str]] = [[] for _ in range(RACING_RECORDERS)]
    stragglers: list[list[str]] = [[] for _ in range(RACING_RECORDERS)]
    for account in ACCOUNTS:
        for number in range(1, PRELOADED_CONTACTS + 1):
            occurred_at = iso(datetime(2026, 10, 3, tzinfo=UTC) + timedelta(minutes=number))
            preload.append(sent.add(contact_event(account.account_id, contact_id(number), occurred_at)))
        last_minutes = account.period_end - timedelta(minutes=30)
        just_before_close = account.close_instant - timedelta(minutes=10)
        numbers = [*range(1, PRELOADED_CONTACTS + 1, 3), *range(1001, 1001 + RACING_CONTACTS)]
        for index, number in enumerate(numbers):
            for touch, detail_type in enumerate(("Note Added", "Message Sent")):
                envelope = contact_event(
                    account.account_id,
                    contact_id(number),
                    iso(last_minutes + timedelta(seconds=index, milliseconds=touch)),
                    detail_type=detail_type,
                    delivered_at=iso(just_before_close + timedelta(seconds=index)),
                )
                streams[(number + touch) % RACING_RECORDERS].append(sent.add(envelope))
        for recorder in range(RACING_RECORDERS):
            for index in range(STRAGGLERS):
                number = 5001 + recorder * STRAGGLERS + index
                envelope = contact_event(
                    account.account_id,
                    contact_id(number),
                    iso(last_minutes + timedelta(minutes=1, seconds=index)),
                    detail_type="Contact Status Changed",
                    delivered_at=iso(just_before_close + timedelta(minutes=5, seconds=index)),
                )
                stragglers[recorder].append(sent.add(envelope))
    rng = random.Random(11)
    for stream in streams:
        rng.shuffle(stream)
    held_back = -(-len(stragglers[0]) // RACE_BATCH_SIZE)
    return Race(
        chunked(preload, RECORD_BATCH_SIZE),
        [
            chunked(stream, RACE_BATCH_SIZE) + chunked(late, RACE_BATCH_SIZE)
            for stream, late in zip(streams, stragglers, strict=True)
        ],
        held_back,
    )


def test_close_racing_in_period_events_counts_or_keeps_each_as_late(server_stack: ServerStack) -> None:
    table = Table(server_stack)
    sent = Sent()
    race = racing_events(sent)

    # When the close run (two overlapping runs) starts while three processes still record events that
    # reached the bus before the close instant, and a few of their batches arrive only after it (the
    # subscriptions and the first contacts were recorded before, early in the period)
    recorders = [
        RecorderJob(
            f"recorder-{index}", batches, prelude=race.preload if index == 0 else [], hold_back=race.held_back
        )
        for index, batches in enumerate(race.streams)
    ]
    closers = closer_jobs(server_stack, 2, gate=race.racing_batches // 3)
    with Crew(server_stack.environment, recorders, closers) as crew:
        crew.wait_for(job.name for job in closers)
        crew.release_held_back()
        crew.wait_all()

    # Then no event is lost: each contact is counted (sealed) or named by a late event, never neither
    assert_closed_and_billed(table)
    for account in ACCOUNTS:
        counted = table.contacts(account.account_id)
        sealed = len(counted)
        late_ids = set(table.sort_keys(account.account_id, keys.LATE_PREFIX))
        assert late_ids <= sent.events.keys()
        late_contacts = {sent.events[event_id][1] for event_id in late_ids}
        wanted = sent.contacts(account.account_id)
        assert counted | late_contacts == wanted, sorted(wanted - counted - late_contacts)[:20]
        assert sealed + len(late_contacts - counted) == len(wanted)
        # and the race really happened: the held-back batches met a sealed period
        stragglers = {contact_id(5001 + n) for n in range(RACING_RECORDERS * STRAGGLERS)}
        assert stragglers <= late_contacts - counted
        assert sealed >= PRELOADED_CONTACTS
    # And each invoice reached the bus exactly once
    published_wrong = invoice_publication_problems(table)
    assert not published_wrong, "published on the bus: " + "; ".join(published_wrong)


# ---- scenario 3: at-least-once delivery, the same events to two containers at once ----

DUPLICATED_CONTACTS = 100  # per account


def duplicated_batches(sent: Sent) -> list[list[list[str]]]:
    """Recorders 0 and 1 get the same events, as do recorders 2 and 3 (each event delivered twice, as
    EventBridge and SQS may): the same batches in the same order, each batch in its own order."""
    halves: list[list[str]] = [[], []]
    for account in ACCOUNTS:
        for number in range(1, DUPLICATED_CONTACTS + 1):
            occurred_at = iso(datetime(2026, 10, 12, tzinfo=UTC) + timedelta(minutes=number))
            envelope = contact_event(account.account_id, contact_id(number), occurred_at)
            halves[number % 2].append(sent.add(envelope))
    rng = random.Random(3)
    streams = []
    for half in halves:
        rng.shuffle(half)
        batches = chunked(half, RECORD_BATCH_SIZE)
        for _ in range(2):
            streams.append([rng.sample(batch, len(batch)) for batch in batches])
    return streams


def test_duplicate_deliveries_in_flight_leave_no_contact_uncounted(server_stack: ServerStack) -> None:
    table = Table(server_stack)
    sent = Sent()
    subscriptions = [[body(account.subscription()) for account in ACCOUNTS]]
    recorders = [
        RecorderJob(f"recorder-{index}", batches, prelude=subscriptions if index == 0 else [])
        for index, batches in enumerate(duplicated_batches(sent))
    ]

    # When every event reaches two RecordActivity containers at about the same time; records a response
    # lists as failed are redelivered (within seconds here; after the visibility timeout on AWS)
    with Crew(server_stack.environment, recorders, []) as crew:
        reports = crew.wait_all(allow_unresolved=True)

    # Then every contact sent is active exactly once, and no record is still failing
    problems = {}
    for account in ACCOUNTS:
        contacts = table.contacts(account.account_id)
        if contacts != sent.contacts(account.account_id):
            problems[account.account_id] = (
                f"contact items {len(contacts)}, sent {len(sent.contacts(account.account_id))}"
            )
    unresolved = sum(len(report.unresolved) for report in reports.values())
    assert not problems, f"{problems}; records still failing after {MAX_DELIVERIES} deliveries: {unresolved}"
    assert unresolved == 0
