"""`metering simulate`: replay an EventBridge archive through the real handlers and report what is billed.

The harness plays the parts AWS plays in production and nothing else: it delivers the envelopes to
RecordActivity as SQS batches, redelivers records the handler reports as failed, drains the fan-out and
close queues into their functions, and fires the hourly schedule at each period's close instant. Batch
sizes, timeouts, receive limits and the functions' environment come from `template.yaml`. On embedded moto
each function runs as its template role (`testkit.RoleGuard`), as the end-to-end tests do. It counts
DynamoDB calls on the functions' own clients through botocore's event hooks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from metering import aws
from metering.events import CRM_EVENT, SubscriptionChanged
from metering.model import StoreUnavailable
from metering.placement import subscription_of
from metering.rules import History, Subscription, utc_iso
from pydantic import ValidationError

from metering_tools.capacity import moto_partition_queries
from metering_tools.provisioning import (
    LocalStack,
    function_configs,
    function_environment,
    load_template,
    provision,
    tear_down,
)
from metering_tools.reports import read_report
from metering_tools.roles import CensusTally
from metering_tools.testkit import (
    DeliveredMessages,
    FaultInjector,
    LocalFunction,
    RoleGuard,
    SimulatedCrash,
    TableStream,
    local_functions,
    simulated_waits,
    sqs_record,
)

MAX_RECEIVES_WITH_FAULTS = 500
"""With injected faults, what reached the DLQ is redriven (as the runbook says) until this many receives."""
WARNING_NAMES = 10
"""Dead-lettered messages a warning names (the report's `stats.deadLettered` names all)."""
REGION = "eu-central-1"
ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL"


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


@dataclass(slots=True)
class _Message:
    message_id: str
    body: str
    sent_at: datetime
    receive_count: int = 0
    receipt_handle: str = ""

    @property
    def handle(self) -> str:
        return self.receipt_handle or self.message_id

    def as_sqs_record(self, queue_arn: str) -> dict[str, Any]:
        return sqs_record(
            self.body,
            self.message_id,
            receive_count=self.receive_count,
            queue_arn=queue_arn,
            sent_at=self.sent_at,
            receipt_handle=self.handle,
        )


@dataclass(slots=True)
class Simulation:
    """One replay: its local stack, the loaded functions and what they did."""

    options: SimulationOptions
    stack: LocalStack
    functions: Mapping[str, LocalFunction]
    grace: timedelta
    batch_size: int
    guard: RoleGuard | None = None
    modules: dict[str, ModuleType] = field(default_factory=dict)
    invocations: Counter[str] = field(default_factory=Counter)
    requests_before: tuple[Counter[str], Counter[str]] = field(default_factory=lambda: (Counter(), Counter()))
    receives: Counter[int] = field(default_factory=Counter)
    """Messages by the receives they needed (every queue the functions consume)."""
    dead_letters: dict[tuple[str, str], DeadLetter] = field(default_factory=dict)
    schedule: CloseSchedule = field(init=False)
    events: int = 0
    batches: int = 0
    redeliveries: list[_Message] = field(default_factory=list)
    report_client: Any = None
    faults: FaultInjector | None = None
    delivered: DeliveredMessages = field(default_factory=DeliveredMessages)
    returned_for_others: int = 0
    stream: TableStream | None = None

    def __post_init__(self) -> None:
        self.schedule = CloseSchedule(self.grace, os.environ["DEFAULT_TIMEZONE"])
        if self.options.fault_rate > 0:
            self.faults = FaultInjector(self.options.fault_rate, self.options.fault_seed)

    def receive_limits(self, function_name: str, queue: str) -> tuple[int, int]:
        """When a message moves to the queue's DLQ (its redrive policy's `maxReceiveCount`; a queue without
        one redelivers until the message expires), and when the replay stops delivering it: then, or with
        injected faults after the redrive the runbook prescribes, so the replay goes on until every message
        is processed."""
        limit = self.functions[function_name].config.sources[queue].max_receive_count
        dead_letter_at = limit or MAX_RECEIVES_WITH_FAULTS
        return dead_letter_at, MAX_RECEIVES_WITH_FAULTS if self.faults is not None else dead_letter_at

    def load_functions(self) -> None:
        """Start from fresh clients; each handler module is imported fresh at its first invocation, as a cold
        start does, with the stack's environment set (a function the replay never invokes costs nothing)."""
        aws.reset_clients()
        self.requests_before = aws.DYNAMODB_REQUESTS.snapshot()
        self.report_client = boto3.client("dynamodb")
        if any(function.config.stream for function in self.functions.values()):
            self.stream = TableStream(self.stack.table_name, self.options.endpoint_url)

    def follow_stream(self, *, whole_batches_only: bool) -> None:
        """Hand the table's new stream records to the function that consumes them, as its event source mapping
        does: in batches of its size, a failed batch again until it is taken (`whole_batches_only`: as long
        as the replay goes on, only full batches, as a busy stream fills them)."""
        if self.stream is None:
            return
        for function_name, function in self.functions.items():
            source = function.config.stream
            if source is None:
                continue
            self.stream.read(source)
            failures = 0
            for event in self.stream.batches(source, whole_only=whole_batches_only):
                failed_sequence = self.deliver_stream_batch(function_name, event)
                self.stream.taken(event, failed_sequence)
                failures = failures + 1 if failed_sequence is not None else 0
                if failures > MAX_RECEIVES_WITH_FAULTS:
                    raise RuntimeError(f"{function_name} failed the same stream batch {failures} times")

    def deliver_stream_batch(self, function_name: str, event: dict[str, Any]) -> str | None:
        """Invoke with one stream batch: the sequence number from which it must be delivered again (the first
        record of a failed or killed invocation), or None."""
        try:
            response = self.invoke(function_name, event)
        except SimulatedCrash:
            self.restart(function_name)
            return str(event["Records"][0]["dynamodb"]["SequenceNumber"])
        failures = response.get("batchItemFailures", [])
        return min((str(item["itemIdentifier"]) for item in failures), key=int, default=None)

    def restart(self, function_name: str) -> None:
        """Lambda replaces the execution environment of an invocation that was killed: the next one is a
        cold start, with nothing remembered in memory."""
        self.modules[function_name] = self.functions[function_name].cold_start()
        if self.faults is not None:
            self.faults.restart()

    def module(self, function_name: str) -> ModuleType:
        """The function's current container (its handler module), cold-started when it has none."""
        if function_name not in self.modules:
            self.modules[function_name] = self.functions[function_name].cold_start()
        return self.modules[function_name]

    def invoke(self, function_name: str, event: dict[str, Any]) -> Any:
        """Invoke a function as Lambda does: on embedded moto as its own role."""
        self.invocations[function_name] += 1
        module = self.module(function_name)
        handler = module.handler

        def instrumented(event: dict[str, Any], context: Any) -> Any:
            self.instrument()
            try:
                return handler(event, context)
            finally:
                # metrics are off here, and Powertools keeps what it does not flush: it would print it all
                # once a metric holds 100 values
                module.metrics.clear_metrics()

        context = self.functions[function_name].context()
        if self.guard is None:
            return instrumented(event, context)
        return self.guard.invoke(function_name, instrumented, event, context)

    def instrument(self) -> None:
        """Attach the capacity meter (embedded moto) and the fault injector to the clients the running
        function uses. They are rebuilt whenever another function's role runs; attaching twice changes
        nothing."""
        if self.options.endpoint_url is None:
            from metering_tools import capacity  # noqa: PLC0415 - a development tool, outside the Lambda layer

            capacity.shared_meter(self.stack.table_name).attach(aws.dynamodb())
        self.delivered.attach(aws.sqs())
        if self.faults is not None:
            self.faults.attach(aws.dynamodb())
            self.faults.attach(aws.s3())

    def deliver(self, function_name: str, messages: Sequence[_Message], queue: str) -> list[_Message]:
        """Invoke with one SQS batch; returns the messages to redeliver: those reported as failed, or all of
        a failed or killed invocation's, except the ones the function deleted itself."""
        queue_arn = self.functions[function_name].queue_arns[queue]
        for message in messages:
            message.receive_count += 1
        self.delivered.deleted.clear()
        if self.faults is not None:
            self.faults.failed_requests.clear()
        failed: set[str] = {message.message_id for message in messages}
        try:
            response = self.invoke(function_name, {"Records": [m.as_sqs_record(queue_arn) for m in messages]})
        except BatchProcessingError:
            pass
        except SimulatedCrash:
            self.restart(function_name)
        else:
            failed = {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}
            self.count_returned_for_others([m for m in messages if m.message_id in failed])
        deleted = self.delivered.deleted
        return [m for m in messages if m.message_id in failed and m.handle not in deleted]

    def count_returned_for_others(self, returned: Sequence[_Message]) -> None:
        """Count the records an invocation returned although no failed request named their account while a
        request of another account failed: the failure domain of a call is the account (or period) it is
        for. A failed request that names no account (the close states, a claim-check object) may return any
        record."""
        if self.faults is None or not returned:
            return
        requests = self.faults.failed_requests
        if any(not _ACCOUNT_KEY.search(request) for request in requests):
            return
        for message in returned:
            account = _account_of(message.body)
            if account and not any(f"{account}#" in request for request in requests):
                self.returned_for_others += 1

    def deliver_until_done(self, function_name: str, messages: Sequence[_Message], queue: str) -> None:
        """Deliver a batch and redeliver what fails, as SQS does, until it succeeds or dead-letters."""
        dead_letter_at, give_up_at = self.receive_limits(function_name, queue)
        pending = list(messages)
        while pending:
            failed = self.deliver(function_name, pending, queue)
            failed_ids = {m.message_id for m in failed}
            self.receives.update(m.receive_count for m in pending if m.message_id not in failed_ids)
            for message in failed:
                if message.receive_count in {dead_letter_at, give_up_at}:
                    letter = DeadLetter(queue, message.message_id, message.receive_count < give_up_at)
                    self.dead_letters[(queue, message.message_id)] = letter
            self.receives.update(m.receive_count for m in failed if m.receive_count >= give_up_at)
            pending = [m for m in failed if m.receive_count < give_up_at]
            self.drain_queue("RecordActivity", "FanOutQueue", self.stack.fanout_queue_url)

    def drain_queue(self, function_name: str, queue: str, queue_url: str) -> None:
        """Feed everything waiting in a local queue to its consumer in batches of the template's size."""
        sqs = boto3.client("sqs")
        batch_size = self.functions[function_name].config.sources[queue].batch_size
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
            self.deliver_until_done(function_name, batch, queue)

    def batch_limit(self) -> int:
        """The size of the next RecordActivity batch: the options' sizes in turn, else the template's."""
        sizes = self.options.batch_sizes
        return sizes[self.batches % len(sizes)] if sizes else self.batch_size

    def record(self, lines: Sequence[tuple[int, str, datetime]]) -> None:
        """Deliver one batch: the lines, after the messages SQS delivers a second time (`redelivered`
        lines come again, under the same message id, at the head of the batch after their first). A line's
        message id names its line number, so a rejected line is found in the file."""
        messages = [_Message(f"line-{number}", body, sent) for number, body, sent in lines]
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
            self.deliver_until_done("RecordActivity", batch, "ActivityQueue")
            self.follow_stream(whole_batches_only=True)

    def close_as_of(self, instant: datetime) -> None:
        """The hourly schedule firing at `instant` (a failed run retried as Lambda retries an asynchronous
        invocation), then the close queue drained into InvoiceAccount."""
        attempts = 1 + self.functions["ClosePeriods"].config.async_retry_attempts
        for _ in range(MAX_RECEIVES_WITH_FAULTS if self.faults is not None else attempts):
            try:
                self.invoke("ClosePeriods", {"scheduledTime": utc_iso(instant).replace(".000000Z", "Z")})
                break
            except SimulatedCrash:
                self.restart("ClosePeriods")
            except StoreUnavailable:
                continue
        self.drain_queue("InvoiceAccount", "CloseQueue", self.stack.close_queue_url)

    def replay(self, envelopes: Iterator[tuple[int, str, datetime]]) -> None:
        """Deliver the envelopes in order, in batches; whenever the clock reaches a period's close instant,
        record what is waiting and run the close job as of that instant, before later events."""
        pending: list[tuple[int, str, datetime]] = []
        for number, body, sent_at in envelopes:
            for instant in self.schedule.due(sent_at):
                self.record(pending)
                pending = []
                self.close_as_of(instant)
            pending.append((number, body, sent_at))
            self.schedule.learn(body)
            if len(pending) >= self.batch_limit():
                self.record(pending)
                pending = []
        self.record(pending)
        self.record([])
        self.follow_stream(whole_batches_only=False)
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
            "receives": receive_stats(self.receives, self.returned_for_others),
            "deadLettered": [letter.as_json() for letter in sorted(self.dead_letters.values())],
        }
        if self.faults is not None:
            report["stats"]["faults"] = dict(sorted(self.faults.injected.items()))
        if self.options.endpoint_url is None:
            from metering_tools import capacity  # noqa: PLC0415 - a development tool, outside the Lambda layer

            report["stats"]["capacity"] = capacity.shared_meter(self.stack.table_name).stats()
        return report


@dataclass(frozen=True, slots=True, order=True)
class DeadLetter:
    """A message that failed as often as its queue's redrive policy allows: on AWS it is now on the DLQ."""

    queue: str
    message_id: str
    redriven: bool
    """Whether the replay redrove it (with injected faults, as the runbook does); if not, it is lost."""

    def as_json(self) -> dict[str, Any]:
        return {"queue": self.queue, "messageId": self.message_id, "redriven": self.redriven}


def receive_stats(receives: Counter[int], returned_for_others: int) -> dict[str, Any]:
    """How many receives the most-received message needed, the median message, the histogram, and how many
    records an invocation returned only because a request of another account failed."""
    counts = sorted(receives.elements())
    return {
        "max": counts[-1] if counts else 0,
        "median": counts[(len(counts) - 1) // 2] if counts else 0,
        "histogram": {str(count): receives[count] for count in sorted(receives)},
        "returnedForOtherAccounts": returned_for_others,
    }


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


_ACCOUNT_KEY = re.compile(r'"S": ?"[A-Za-z0-9][A-Za-z0-9_.:-]*#')
"""A key attribute naming an account (`{account}#...`); the system's own partitions start with `#`."""


def _account_of(body: str) -> str | None:
    """The account a record is for: an envelope's `detail.accountId`, or a fan-out chunk's event's."""
    try:
        document = json.loads(body)
        event = document.get("event", document)
        return str(event["detail"]["accountId"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def read_envelopes(path: Path) -> Iterator[tuple[int, str, datetime]]:
    """Each non-empty line, with its line number and the bus time it carries; a line without a readable
    time keeps the clock. A line that is not UTF-8 text is delivered with its undecodable bytes escaped
    (`\\xff`), which no JSON reader accepts: it is rejected like any other unreadable line."""
    clock = datetime.min.replace(tzinfo=UTC)
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            body = raw.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
            if not body.strip():
                continue
            clock = max(clock, _bus_time(body) or clock)
            yield number, body, clock


def _bus_time(body: str) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(json.loads(body)["time"])
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return stamp if stamp.tzinfo is not None else None


@contextlib.contextmanager
def _environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) these variables for the block; restore them after it."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _aws_backend(endpoint_url: str | None) -> Iterator[None]:
    """Embedded moto by default, every client on it (endpoint variables set for other runs are ignored), its
    Query answered from the queried partition (`capacity.moto_partition_queries`);
    any endpoint otherwise (moto_server, LocalStack, DynamoDB Local...): `AWS_ENDPOINT_URL`, under which
    botocore's per-service variables (`AWS_ENDPOINT_URL_DYNAMODB`, ...) still send their service elsewhere."""
    if endpoint_url:
        if boto3.session.Session().get_credentials() is None:
            raise SystemExit(
                f"metering simulate: no AWS credentials for {endpoint_url}. Set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (any values for a local emulator), or AWS_PROFILE."
            )
        with _environment({ENDPOINT_VARIABLE: endpoint_url}):
            yield
        return
    from moto import mock_aws  # noqa: PLC0415 - moto is a development dependency, only needed here

    embedded: dict[str, str | None] = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        **{name: None for name in os.environ if name.startswith(ENDPOINT_VARIABLE)},
    }
    with _environment(embedded), mock_aws(), moto_partition_queries():
        yield


def upload_claim_checks(objects_dir: Path | None, bucket: str) -> None:
    """Put every file under `objects_dir` in the claim-check bucket, keyed by its relative path."""
    if objects_dir is None or not objects_dir.is_dir():
        return
    s3 = boto3.client("s3")
    for path in sorted(p for p in objects_dir.rglob("*") if p.is_file()):
        s3.put_object(Bucket=bucket, Key=path.relative_to(objects_dir).as_posix(), Body=path.read_bytes())


def function_settings(
    options: SimulationOptions, template: Mapping[str, Any], stack: LocalStack
) -> dict[str, str]:
    """The functions' environment as the template sets it for this stack, with the replay's own settings."""
    environment = function_environment(stack, template)
    return {
        **environment,
        "DEFAULT_TIMEZONE": options.default_timezone or environment["DEFAULT_TIMEZONE"],
        "GRACE_HOURS": str(
            options.grace_hours if options.grace_hours is not None else environment["GRACE_HOURS"]
        ),
        # one process, one invocation at a time: no earlier attempt can still be running
        "ATTEMPT_TIMEOUT_SECONDS": "0",
        "RECORDER_TIMEOUT_SECONDS": "0",
        # embedded moto answers in this process, behind the GIL: parallel writes only contend there
        "WRITE_CONCURRENCY": "1" if options.endpoint_url is None else "8",
        # no usage-alert topic is created: alerts go to the bus only
        "USAGE_ALERT_TOPIC_ARN": "",
    }


def simulate(
    options: SimulationOptions,
    on_stack: Callable[[LocalStack], None] | None = None,
    census: CensusTally | None = None,
    after_replay: Callable[[Simulation], None] | None = None,
) -> dict[str, Any]:
    """Run one replay and return the report of SPEC §4. On embedded moto each function runs as its template
    role; a call a role does not grant is warned about, and every call is added to `census` when given.
    `after_replay` runs with the replayed stack still up and its roles still enforced (`metering serve`)."""
    template = load_template()
    process = {
        "AWS_DEFAULT_REGION": REGION,
        "POWERTOOLS_METRICS_DISABLED": "true",
        # the functions' expected failures under injected faults are not news; real ones are, otherwise
        "POWERTOOLS_LOG_LEVEL": os.environ.get(
            "POWERTOOLS_LOG_LEVEL", "CRITICAL" if options.fault_rate else "ERROR"
        ),
    }
    objects_dir = options.objects_dir or options.events_path.with_suffix(".objects")
    with (
        _environment(process),
        _aws_backend(options.endpoint_url),
        simulated_waits(),
        contextlib.redirect_stdout(sys.stderr),
    ):
        stack: LocalStack | None = None
        try:
            stack = provision(f"metering-sim-{uuid.uuid4().hex[:8]}", options.claim_check_bucket, template)
            upload_claim_checks(objects_dir, stack.claim_check_bucket)
            guard = RoleGuard.install(template, stack) if options.endpoint_url is None else None
            settings = function_settings(options, template, stack)
            with (
                _environment(settings),
                guard.enforced() if guard is not None else contextlib.nullcontext(),
            ):
                run = Simulation(
                    options,
                    stack,
                    local_functions(stack, template),
                    grace=timedelta(hours=float(settings["GRACE_HOURS"])),
                    batch_size=options.batch_size
                    or function_configs(template)["RecordActivity"].sources["ActivityQueue"].batch_size,
                    guard=guard,
                )
                run.load_functions()
                if on_stack is not None:
                    on_stack(stack)
                run.replay(read_envelopes(options.events_path))
                report = run.report()
                if after_replay is not None:
                    after_replay(run)
            _warn(run, guard, census)
        finally:
            if stack is not None and options.endpoint_url:
                tear_down(stack)
    return report


def _warn(run: Simulation, guard: RoleGuard | None, census: CensusTally | None) -> None:
    """What the replay's operator should know: dead letters, injected faults, calls no role grants."""
    if run.dead_letters:
        letters = sorted(run.dead_letters.values())
        for redriven, fate in (
            (False, "dead-lettered and lost"),
            (True, "reached their DLQ and were redriven"),
        ):
            named = [letter.message_id for letter in letters if letter.redriven is redriven]
            if named:
                shown = ", ".join(named[:WARNING_NAMES]) + (", ..." if len(named) > WARNING_NAMES else "")
                print(f"warning: {len(named)} messages {fate} (stats.deadLettered): {shown}", file=sys.stderr)
    if run.faults is not None:
        injected = ", ".join(f"{count} {kind}" for kind, count in sorted(run.faults.injected.items()))
        print(f"faults injected: {sum(run.faults.injected.values())} ({injected})", file=sys.stderr)
    if guard is None:
        return
    for found in guard.ungranted():
        print(f"warning: calls the function's role does not grant\n{found.describe()}", file=sys.stderr)
    if census is not None:
        census.add(guard.roles, guard.census)
