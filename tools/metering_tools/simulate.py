"""`metering simulate`: replay an EventBridge archive through the real handlers and report what is billed.

The harness plays the parts AWS plays in production and nothing else: it delivers the envelopes to
RecordActivity as SQS batches, redelivers records the handler reports as failed, drains the fan-out and
close queues into their functions, and fires the hourly schedule at each period's close instant. It counts
DynamoDB calls on the functions' own client through botocore's event hooks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from threading import Lock
from types import ModuleType
from typing import Any

import boto3
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from botocore.exceptions import ReadTimeoutError
from metering import aws
from metering.events import CRM_EVENT, SubscriptionChanged
from metering.model import StoreUnavailable
from metering.placement import subscription_of
from metering.rules import History, Subscription, utc_iso
from pydantic import ValidationError

from metering_tools.provisioning import (
    REPO_ROOT,
    LocalStack,
    load_template,
    provision,
    tear_down,
    template_default,
)
from metering_tools.reports import read_report

FUNCTIONS_DIR = REPO_ROOT / "functions"
FUNCTION_MODULES = {
    "RecordActivity": "record_activity",
    "ClosePeriods": "close_periods",
    "InvoiceAccount": "invoice_account",
}
FANOUT_BATCH_SIZE = 2
CLOSE_BATCH_SIZE = 10
MAX_RECEIVES = 5
MAX_RECEIVES_WITH_FAULTS = 500
REGION = "eu-central-1"


@dataclass(frozen=True, slots=True)
class SimulationOptions:
    events_path: Path
    now: datetime
    grace_hours: float | None = None
    default_timezone: str | None = None
    endpoint_url: str | None = None
    batch_size: int | None = None
    batch_sizes: tuple[int, ...] = ()
    redelivered: frozenset[int] = frozenset()
    objects_dir: Path | None = None
    claim_check_bucket: str = "crm-claim-checks"
    fault_rate: float = 0.0
    fault_seed: int = 0


class SimulatedCrash(BaseException):
    """The function's process dies mid-invocation: nothing it would have returned or caught survives."""


class _FailedCall:
    """The HTTP side of an injected failed call, as botocore reads it."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = {}


class FaultInjector:
    """Makes a share of the functions' DynamoDB and S3 calls fail, through botocore's event hooks on their
    own clients: throttling and server errors (the call never lands), a time-out after the write took effect
    (the caller sees a failure, the table has the change), and crashes that kill the invocation."""

    WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"})

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.random = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self._lock = Lock()

    def attach(self, client: Any) -> None:
        service = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(f"before-call.{service}", self._before_call)
        client.meta.events.register(f"after-call.{service}", self._after_call)

    def _draw(self) -> float:
        with self._lock:
            return self.random.random()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1

    def _before_call(
        self, model: Any, context: dict[str, Any], **_: Any
    ) -> tuple[_FailedCall, dict[str, Any]] | None:
        draw = self._draw()
        if draw >= self.rate:
            return None
        share = draw / self.rate
        if share < 0.1:
            self._count("crash")
            raise SimulatedCrash(model.name)
        if share < 0.45:
            self._count("throttling")
            code, status = (
                ("ThrottlingException", 400)
                if model.service_model.service_name == "dynamodb"
                else (
                    "SlowDown",
                    503,
                )
            )
            return _FailedCall(status), {"Error": {"Code": code, "Message": "injected"}}
        if share < 0.8 or model.name not in self.WRITES:
            self._count("server error")
            return _FailedCall(500), {"Error": {"Code": "InternalServerError", "Message": "injected"}}
        context["fail_after_write"] = True
        return None

    def _after_call(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        if context.pop("fail_after_write", False):
            self._count("timeout after write")
            raise ReadTimeoutError(endpoint_url=f"injected after {model.name}")


def cold_start(folder: str) -> ModuleType:
    """Import `functions/<folder>/app.py` fresh, as a Lambda cold start does (it reads its settings then)."""
    spec = importlib.util.spec_from_file_location(
        f"cold_{folder}_{uuid.uuid4().hex[:8]}", FUNCTIONS_DIR / folder / "app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LambdaContext:
    """The attributes of a Lambda context object that Powertools and the handlers read; the remaining time
    counts down from the function's timeout as on Lambda."""

    def __init__(self, function_name: str, timeout_seconds: float = 60) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:{function_name}"
        self.memory_limit_in_mb = 1024
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "simulate"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(slots=True)
class _Message:
    message_id: str
    body: str
    sent_at: datetime
    receive_count: int = 0
    receipt_handle: str = ""

    def as_sqs_record(self, queue_arn: str) -> dict[str, Any]:
        return {
            "messageId": self.message_id,
            "receiptHandle": self.receipt_handle or self.message_id,
            "body": self.body,
            "attributes": {
                "ApproximateReceiveCount": str(self.receive_count),
                "SentTimestamp": str(int(self.sent_at.timestamp() * 1000)),
                "SenderId": "simulate",
                "ApproximateFirstReceiveTimestamp": str(int(self.sent_at.timestamp() * 1000)),
            },
            "messageAttributes": {},
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn,
            "awsRegion": REGION,
        }


@dataclass(slots=True)
class Simulation:
    """One replay: its local stack, the loaded functions and what they did."""

    options: SimulationOptions
    stack: LocalStack
    grace: timedelta
    batch_size: int
    functions: dict[str, ModuleType] = field(default_factory=dict)
    invocations: Counter[str] = field(default_factory=Counter)
    requests_before: tuple[Counter[str], Counter[str]] = field(default_factory=lambda: (Counter(), Counter()))
    dead_letters: list[str] = field(default_factory=list)
    schedule: CloseSchedule = field(init=False)
    events: int = 0
    batches: int = 0
    redeliveries: list[_Message] = field(default_factory=list)
    report_client: Any = None
    faults: FaultInjector | None = None

    def __post_init__(self) -> None:
        self.schedule = CloseSchedule(self.grace, os.environ["DEFAULT_TIMEZONE"])
        if self.options.fault_rate > 0:
            self.faults = FaultInjector(self.options.fault_rate, self.options.fault_seed)

    @property
    def max_receives(self) -> int:
        """SQS's receive limit; with injected faults, what would dead-letter is redriven (as the runbook
        says), so the replay goes on until every message is processed."""
        return MAX_RECEIVES if self.faults is None else MAX_RECEIVES_WITH_FAULTS

    def load_functions(self) -> None:
        """Import each handler module fresh, as a cold start does, with the stack's environment set. On
        embedded moto the functions' DynamoDB client also gets the capacity meter of this replay's table;
        a client built later joins it with `capacity.shared_meter(table_name).attach(client)`."""
        aws.reset_clients()
        for function_name, folder in FUNCTION_MODULES.items():
            self.functions[function_name] = cold_start(folder)
        self.requests_before = aws.DYNAMODB_REQUESTS.snapshot()
        if self.options.endpoint_url is None:
            from metering_tools import capacity  # noqa: PLC0415 - a development tool, outside the Lambda layer

            capacity.shared_meter(self.stack.table_name).attach(aws.dynamodb())
        if self.faults is not None:
            self.faults.attach(aws.dynamodb())
            self.faults.attach(aws.s3())
        self.report_client = boto3.client("dynamodb")

    def restart(self, function_name: str) -> None:
        """Lambda replaces the execution environment of an invocation that was killed: the next one is a
        cold start, with nothing remembered in memory."""
        self.functions[function_name] = cold_start(FUNCTION_MODULES[function_name])

    def invoke(self, function_name: str, event: dict[str, Any]) -> Any:
        self.invocations[function_name] += 1
        return self.functions[function_name].handler(event, LambdaContext(function_name))

    def deliver(self, function_name: str, messages: Sequence[_Message], queue_arn: str) -> list[_Message]:
        """Invoke with one SQS batch; returns the messages reported as failed (to be redelivered)."""
        for message in messages:
            message.receive_count += 1
        try:
            response = self.invoke(function_name, {"Records": [m.as_sqs_record(queue_arn) for m in messages]})
        except BatchProcessingError:
            return list(messages)
        except SimulatedCrash:
            self.restart(function_name)
            return list(messages)
        failed = {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}
        return [message for message in messages if message.message_id in failed]

    def deliver_until_done(self, function_name: str, messages: Sequence[_Message], queue_arn: str) -> None:
        """Deliver a batch and redeliver what fails, as SQS does, until it succeeds or dead-letters."""
        pending = list(messages)
        while pending:
            failed = self.deliver(function_name, pending, queue_arn)
            self.dead_letters += [m.message_id for m in failed if m.receive_count >= self.max_receives]
            pending = [m for m in failed if m.receive_count < self.max_receives]
            self.drain_queue("RecordActivity", self.stack.fanout_queue_url, FANOUT_BATCH_SIZE)

    def drain_queue(self, function_name: str, queue_url: str, batch_size: int) -> None:
        """Feed everything waiting in a local queue to its consumer in batches of the template's size."""
        sqs = boto3.client("sqs")
        arn = f"arn:aws:sqs:{REGION}:123456789012:{queue_url.rsplit('/', 1)[-1]}"
        while True:
            received = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=min(batch_size, 10), AttributeNames=["All"]
            ).get("Messages", [])
            if not received:
                return
            batch = [
                _Message(m["MessageId"], m["Body"], datetime.now(UTC), receipt_handle=m["ReceiptHandle"])
                for m in received
            ]
            for message in batch:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message.receipt_handle)
            self.deliver_until_done(function_name, batch, arn)

    def batch_limit(self) -> int:
        """The size of the next RecordActivity batch: the options' sizes in turn, else the template's."""
        sizes = self.options.batch_sizes
        return sizes[self.batches % len(sizes)] if sizes else self.batch_size

    def record(self, lines: Sequence[tuple[str, datetime]]) -> None:
        """Deliver one batch: the lines, after the messages SQS delivers a second time (`redelivered`
        lines come again, under the same message id, at the head of the batch after their first)."""
        messages = [
            _Message(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{i}:{body}")), body, sent)
            for i, (body, sent) in enumerate(lines, start=self.events)
        ]
        again = [
            _Message(m.message_id, m.body, m.sent_at, receive_count=1)
            for i, m in enumerate(messages, start=self.events)
            if i in self.options.redelivered
        ]
        batch = self.redeliveries + messages
        self.redeliveries = again
        self.events += len(lines)
        if batch:
            self.batches += 1
            self.deliver_until_done("RecordActivity", batch, f"arn:aws:sqs:{REGION}:123456789012:activity")

    def close_as_of(self, instant: datetime) -> None:
        """The hourly schedule firing at `instant`, then the close queue drained into InvoiceAccount."""
        for _ in range(self.max_receives):
            try:
                self.invoke("ClosePeriods", {"scheduledTime": utc_iso(instant).replace(".000000Z", "Z")})
                break
            except SimulatedCrash:
                self.restart("ClosePeriods")
            except StoreUnavailable:
                continue
        self.drain_queue("InvoiceAccount", self.stack.close_queue_url, CLOSE_BATCH_SIZE)

    def replay(self, envelopes: Iterator[tuple[str, datetime]]) -> None:
        """Deliver the envelopes in order, in batches; whenever the clock reaches a period's close instant,
        record what is waiting and run the close job as of that instant, before later events."""
        pending: list[tuple[str, datetime]] = []
        for body, sent_at in envelopes:
            for instant in self.schedule.due(sent_at):
                self.record(pending)
                pending = []
                self.close_as_of(instant)
            pending.append((body, sent_at))
            self.schedule.learn(body)
            if len(pending) >= self.batch_limit():
                self.record(pending)
                pending = []
        self.record(pending)
        self.record([])
        now = self.options.now
        instants = self.schedule.due(now)
        for instant in instants:
            self.close_as_of(instant)
        if not instants or instants[-1] != now:
            self.close_as_of(now)

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = dict(
            read_report(self.report_client, self.stack.table_name, self.schedule.default_timezone, self.grace)
        )
        calls, items = aws.DYNAMODB_REQUESTS.snapshot()
        calls.subtract(self.requests_before[0])
        items.subtract(self.requests_before[1])
        report["stats"] = {
            "events": self.events,
            "dynamodb": {name: count for name, count in sorted(calls.items()) if count},
            "dynamodbItems": {name: items[name] for name, count in sorted(calls.items()) if count},
            "invocations": dict(sorted(self.invocations.items())),
        }
        if self.faults is not None:
            report["stats"]["faults"] = dict(sorted(self.faults.injected.items()))
        if self.options.endpoint_url is None:
            from metering_tools import capacity  # noqa: PLC0415 - a development tool, outside the Lambda layer

            report["stats"]["capacity"] = capacity.shared_meter(self.stack.table_name).stats()
        return report


@dataclass(slots=True)
class CloseSchedule:
    """When the hourly job would find a period due: the close instant of every period an event has been
    delivered for (its end in the zone in effect at that end, as known from the subscription changes
    delivered so far, plus grace: the rules the functions apply). A change learnt later adds the instants it
    moves periods to. It only times the close runs; what they close is read from the table."""

    grace: timedelta
    default_timezone: str
    histories: dict[str, list[Subscription]] = field(default_factory=dict)
    periods: dict[str, set[str]] = field(default_factory=dict)
    upcoming: set[datetime] = field(default_factory=set)
    clock: datetime = field(default_factory=lambda: datetime.min.replace(tzinfo=UTC))

    def learn(self, body: str) -> None:
        try:
            event = CRM_EVENT.validate_json(body)
        except (ValidationError, ValueError):
            return
        history = self.histories.setdefault(event.account_id, [])
        periods = self.periods.setdefault(event.account_id, set())
        if isinstance(event, SubscriptionChanged):
            history.append(subscription_of(event))
        else:
            periods.add(History.of(history, self.default_timezone).place(event.occurred_at))
        known = History.of(history, self.default_timezone)
        for period in periods:
            instant = known.close_instant(period, self.grace)
            if instant > self.clock:
                self.upcoming.add(instant)

    def due(self, clock: datetime) -> list[datetime]:
        """The close instants the clock has reached, in order; each is returned once (an instant the clock
        has already passed, learnt from a late event, had its run then)."""
        self.clock = max(self.clock, clock)
        reached = sorted(instant for instant in self.upcoming if instant <= clock)
        self.upcoming.difference_update(reached)
        return reached


def read_envelopes(path: Path) -> Iterator[tuple[str, datetime]]:
    """Each non-empty line with the bus time it carries; a line without a readable time keeps the clock."""
    clock = datetime.min.replace(tzinfo=UTC)
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            body = line.rstrip("\r\n")
            if not body.strip():
                continue
            clock = max(clock, _bus_time(body) or clock)
            yield body, clock


def _bus_time(body: str) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(json.loads(body)["time"])
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return stamp if stamp.tzinfo is not None else None


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _aws_backend(endpoint_url: str | None) -> Iterator[None]:
    """Embedded moto by default; any endpoint (moto_server, LocalStack, DynamoDB Local...) otherwise."""
    if endpoint_url:
        with _environment({"AWS_ENDPOINT_URL": endpoint_url}):
            yield
        return
    from moto import mock_aws  # noqa: PLC0415 - moto is a development dependency, only needed here

    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
    }
    with _environment(credentials), mock_aws():
        yield


def upload_claim_checks(objects_dir: Path | None, bucket: str) -> None:
    """Put every file under `objects_dir` in the claim-check bucket, keyed by its relative path."""
    if objects_dir is None or not objects_dir.is_dir():
        return
    s3 = boto3.client("s3")
    for path in sorted(p for p in objects_dir.rglob("*") if p.is_file()):
        s3.put_object(Bucket=bucket, Key=path.relative_to(objects_dir).as_posix(), Body=path.read_bytes())


def simulate(
    options: SimulationOptions, on_stack: Callable[[LocalStack], None] | None = None
) -> dict[str, Any]:
    """Run one replay and return the report of SPEC §4."""
    template = load_template()
    grace_hours = (
        options.grace_hours
        if options.grace_hours is not None
        else float(template_default(template, "GraceHours"))
    )
    environment = {
        "AWS_DEFAULT_REGION": REGION,
        "DEFAULT_TIMEZONE": options.default_timezone or template_default(template, "DefaultTimezone"),
        "GRACE_HOURS": str(grace_hours),
        "ALERT_THRESHOLDS": template_default(template, "AlertThresholds"),
        # one process, one invocation at a time: no earlier attempt can still be running
        "ATTEMPT_TIMEOUT_SECONDS": "0",
        "RECORDER_TIMEOUT_SECONDS": "0",
        # embedded moto answers in this process, behind the GIL: parallel writes only contend there
        "WRITE_CONCURRENCY": "1" if options.endpoint_url is None else "8",
        "POWERTOOLS_SERVICE_NAME": "metering",
        "POWERTOOLS_METRICS_NAMESPACE": "Metering/simulate",
        "POWERTOOLS_METRICS_DISABLED": "true",
        # the functions' expected failures under injected faults are not news; real ones are, otherwise
        "POWERTOOLS_LOG_LEVEL": os.environ.get(
            "POWERTOOLS_LOG_LEVEL", "CRITICAL" if options.fault_rate else "ERROR"
        ),
    }
    objects_dir = options.objects_dir or options.events_path.with_suffix(".objects")
    with (
        _environment(environment),
        _aws_backend(options.endpoint_url),
        contextlib.redirect_stdout(sys.stderr),
    ):
        stack = provision(f"metering-sim-{uuid.uuid4().hex[:8]}", options.claim_check_bucket, template)
        try:
            upload_claim_checks(objects_dir, stack.claim_check_bucket)
            with _environment(stack.environment()):
                run = Simulation(
                    options,
                    stack,
                    grace=timedelta(hours=grace_hours),
                    batch_size=options.batch_size or int(template_default(template, "ActivityBatchSize")),
                )
                run.load_functions()
                if on_stack is not None:
                    on_stack(stack)
                run.replay(read_envelopes(options.events_path))
                report = run.report()
                if run.dead_letters:
                    print(f"warning: {len(run.dead_letters)} messages dead-lettered", file=sys.stderr)
                if run.faults is not None:
                    injected = ", ".join(
                        f"{count} {kind}" for kind, count in sorted(run.faults.injected.items())
                    )
                    print(
                        f"faults injected: {sum(run.faults.injected.values())} ({injected})", file=sys.stderr
                    )
        finally:
            if options.endpoint_url:
                tear_down(stack)
    return report
