"""`metering simulate`: replay an EventBridge archive through the real handlers and report what is billed.

The harness plays AWS's parts and nothing else: it delivers the envelopes to RecordActivity as SQS batches,
redelivers what the handler reports as failed, drains the fan-out and close queues into their functions and
fires the hourly schedule at each period's close instant, with the batch sizes, timeouts, receive limits and
environment of `template.yaml`. On embedded moto, each function runs as its role (`roles.RoleGuard`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from metering import aws
from metering.errors import StoreUnavailable
from metering.events import CRM_EVENT, SubscriptionChanged
from metering.placement import subscription_of
from metering.rules import History, Subscription, utc_iso

from metering_tools import testkit
from metering_tools.capacity import shared_meter
from metering_tools.embedded_moto import ENDPOINT_VARIABLE, embedded_aws, environment
from metering_tools.local_stack import LocalStack, function_environment, provision, tear_down
from metering_tools.reports import read_report
from metering_tools.roles import RoleGuard
from metering_tools.template import load_template

MAX_RECEIVES_WITH_FAULTS = 500
"""With injected faults, what reached the DLQ is redriven (as the runbook says) until this many receives."""
WARNING_NAMES = 10
"""Dead-lettered messages a warning names (the report's `stats.deadLettered` names all)."""


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
    """A message on its way to a function; its fields are `testkit.sqs_record`'s arguments."""

    message_id: str
    body: str
    sent_at: datetime
    receipt_handle: str
    """Given by SQS for a message received from a queue; for an archive line, its message id."""
    receive_count: int = 0


class Simulation:
    """One replay: its local stack, the functions and what they did. Each function's container (its handler
    module) starts at its first invocation, as a cold start does: one never invoked costs nothing."""

    def __init__(
        self,
        options: SimulationOptions,
        stack: LocalStack,
        functions: Mapping[str, testkit.LocalFunction],
        guard: RoleGuard | None,
    ) -> None:
        self.options = options
        self.stack = stack
        self.functions = functions
        self.guard = guard
        self.grace = timedelta(hours=float(os.environ["GRACE_HOURS"]))
        activity_queue = functions["RecordActivity"].config.sources["ActivityQueue"]
        self.batch_sizes = options.batch_sizes or (options.batch_size or activity_queue.batch_size,)
        self.schedule = CloseSchedule(self.grace, os.environ["DEFAULT_TIMEZONE"])
        rate = options.fault_rate
        self.faults = testkit.FaultInjector(rate, options.fault_seed) if rate > 0 else None
        self.modules: dict[str, ModuleType] = {}
        self.invocations: Counter[str] = Counter()
        self.receives: Counter[int] = Counter()
        """Messages by the receives they needed (every queue the functions consume)."""
        self.dead_letters: dict[tuple[str, str], bool] = {}
        """(queue, message id) of each message its queue's redrive policy moved to the DLQ: whether the replay
        then redrove it (with injected faults, as the runbook does) or it is lost."""
        self.events = 0
        self.batches = 0
        self.redeliveries: list[_Message] = []
        self.delivered = testkit.DeliveredMessages()
        self.returned_for_others = 0
        aws.reset_clients()
        self.requests_before = aws.DYNAMODB_REQUESTS.snapshot()
        self.report_client = boto3.client("dynamodb")  # stats count the functions' own clients only
        streamed = any(function.config.stream for function in functions.values())
        self.stream = testkit.TableStream(stack.table_name, options.endpoint_url) if streamed else None

    def follow_stream(self, *, whole_batches_only: bool) -> None:
        """Hand the new stream records to their function as its event source mapping does: in batches of its
        size, a failed one again from the record it reports as failed (a killed invocation's from its first)
        until it is taken (`whole_batches_only`: while the replay goes on, as a busy stream fills them)."""
        for function_name, function in self.functions.items():
            if self.stream is None or (source := function.config.stream) is None:
                continue
            self.stream.read(source)
            failures = 0
            for event in self.stream.batches(source, whole_only=whole_batches_only):
                try:
                    failed = self.invoke(function_name, event).get("batchItemFailures", [])
                except testkit.SimulatedCrash:  # the batch is read again from its first record
                    self.restart(function_name)
                    failed = [{"itemIdentifier": event["Records"][0]["dynamodb"]["SequenceNumber"]}]
                resume_from = min((str(item["itemIdentifier"]) for item in failed), key=int, default=None)
                self.stream.taken(event, resume_from)
                failures = failures + 1 if resume_from is not None else 0
                if failures > MAX_RECEIVES_WITH_FAULTS:
                    raise RuntimeError(f"{function_name} failed the same stream batch {failures} times")

    def restart(self, function_name: str) -> None:
        """Lambda replaces a killed invocation's execution environment: the next one is a cold start."""
        self.modules[function_name] = self.functions[function_name].cold_start()
        if self.faults is not None:
            self.faults.restart()

    def module(self, function_name: str) -> ModuleType:
        if function_name not in self.modules:
            self.modules[function_name] = self.functions[function_name].cold_start()
        return self.modules[function_name]

    def invoke(self, function_name: str, event: dict[str, Any]) -> Any:
        self.invocations[function_name] += 1
        module = self.module(function_name)

        def instrumented(event: dict[str, Any], context: Any) -> Any:
            # clients are rebuilt whenever another function's role runs: each invocation attaches the capacity
            # meter (embedded moto) and the fault injector to its own (attaching twice changes nothing)
            if self.options.endpoint_url is None:
                shared_meter(self.stack.table_name).attach(aws.dynamodb())
            self.delivered.attach(aws.sqs())
            if self.faults is not None:
                self.faults.attach(aws.dynamodb())
                self.faults.attach(aws.s3())
            try:
                return module.handler(event, context)
            finally:
                # metrics are off here, and Powertools keeps what it does not flush: it would print it all
                # once a metric holds 100 values
                module.metrics.clear_metrics()

        context = self.functions[function_name].context()
        if self.guard is None:
            return instrumented(event, context)
        return self.guard.invoke(function_name, instrumented, event, context)

    def deliver(self, function_name: str, messages: Sequence[_Message], queue: str) -> list[_Message]:
        """Invoke with one SQS batch; returns the messages to redeliver: those reported as failed, or all of
        a failed or killed invocation's, except the ones the function deleted itself."""
        queue_arn = self.functions[function_name].queue_arns[queue]
        for message in messages:
            message.receive_count += 1
        self.delivered.deleted.clear()
        if self.faults is not None:
            self.faults.failed_requests.clear()
        records = [testkit.sqs_record(**asdict(message), queue_arn=queue_arn) for message in messages]
        failed: set[str] = {message.message_id for message in messages}
        try:
            response = self.invoke(function_name, {"Records": records})
        except BatchProcessingError:
            pass
        except testkit.SimulatedCrash:
            self.restart(function_name)
        else:
            failed = {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}
            self.count_returned_for_others([m for m in messages if m.message_id in failed])
        deleted = self.delivered.deleted
        return [m for m in messages if m.message_id in failed and m.receipt_handle not in deleted]

    def count_returned_for_others(self, returned: Sequence[_Message]) -> None:
        """Count the records an invocation returned although only requests of other accounts failed: the
        failure domain of a call is the account (or period) it is for. A failed request that names no account
        (the close states, a claim-check object) may return any record."""
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
        """Deliver a batch and redeliver what fails, as SQS does, until it succeeds or reaches the DLQ at the
        redrive policy's `maxReceiveCount` (without one, SQS redelivers until it expires). With injected
        faults the replay then redrives it, as the runbook prescribes, so that every message is processed."""
        source = self.functions[function_name].config.sources[queue]
        dead_letter_at = source.max_receive_count or MAX_RECEIVES_WITH_FAULTS
        give_up_at = MAX_RECEIVES_WITH_FAULTS if self.faults is not None else dead_letter_at
        pending = list(messages)
        while pending:
            failed = self.deliver(function_name, pending, queue)
            for message in failed:
                if message.receive_count in {dead_letter_at, give_up_at}:
                    self.dead_letters[(queue, message.message_id)] = message.receive_count < give_up_at
            retried = {m.message_id for m in failed if m.receive_count < give_up_at}
            self.receives.update(m.receive_count for m in pending if m.message_id not in retried)
            pending = [m for m in pending if m.message_id in retried]
            self.drain_queue("RecordActivity", "FanOutQueue", self.stack.fanout_queue_url)

    def drain_queue(self, function_name: str, queue: str, queue_url: str) -> None:
        """Feed everything waiting in a local queue to its consumer in batches of the template's size."""
        sqs = boto3.client("sqs")
        batch_size = self.functions[function_name].config.sources[queue].batch_size
        while received := sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=min(batch_size, 10), AttributeNames=["All"]
        ).get("Messages", []):
            batch = [
                _Message(m["MessageId"], m["Body"], datetime.now(UTC), m["ReceiptHandle"]) for m in received
            ]
            for message in batch:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message.receipt_handle)
            self.deliver_until_done(function_name, batch, queue)

    def record(self, lines: Sequence[tuple[int, str, datetime]]) -> None:
        """Deliver one batch: the lines, after the messages SQS delivers a second time (`redelivered`
        lines come again, under the same message id, at the head of the batch after their first). A line's
        message id names its line number, so a rejected line is found in the file."""
        messages = [_Message(f"line-{number}", body, sent, f"line-{number}") for number, body, sent in lines]
        batch = self.redeliveries + messages
        redelivered = self.options.redelivered
        self.redeliveries = [
            replace(m, receive_count=1) for i, m in enumerate(messages, self.events) if i in redelivered
        ]
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
            except testkit.SimulatedCrash:
                self.restart("ClosePeriods")
            except StoreUnavailable:
                continue
        self.drain_queue("InvoiceAccount", "CloseQueue", self.stack.close_queue_url)

    def replay(self, envelopes: Iterator[tuple[int, str, datetime]]) -> None:
        """Deliver the envelopes in order, in batches (the options' sizes in turn, else the template's);
        whenever the clock reaches a period's close instant, record what is waiting and run the close job as
        of that instant, before later events; at the end, as of `now`."""
        pending: list[tuple[int, str, datetime]] = []
        for number, body, sent_at in envelopes:
            for instant in self.schedule.due(sent_at):
                self.record(pending)
                pending = []
                self.close_as_of(instant)
            pending.append((number, body, sent_at))
            self.schedule.learn(body)
            if len(pending) >= self.batch_sizes[self.batches % len(self.batch_sizes)]:
                self.record(pending)
                pending = []
        self.record(pending)
        self.record([])
        self.follow_stream(whole_batches_only=False)
        for instant in sorted({*self.schedule.due(self.options.now), self.options.now}):
            self.close_as_of(instant)

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = dict(
            read_report(self.report_client, self.stack.table_name, self.schedule.default_timezone, self.grace)
        )
        calls, items = aws.DYNAMODB_REQUESTS.snapshot()
        calls.subtract(self.requests_before[0])
        items.subtract(self.requests_before[1])
        counts = sorted(self.receives.elements())
        report["stats"] = {
            "events": self.events,
            "dynamodb": {name: count for name, count in sorted(calls.items()) if count},
            "dynamodbItems": {name: items[name] for name, count in sorted(calls.items()) if count},
            "invocations": dict(sorted(self.invocations.items())),
            "receives": {
                "max": counts[-1] if counts else 0,
                "median": counts[(len(counts) - 1) // 2] if counts else 0,
                "histogram": {str(count): self.receives[count] for count in sorted(self.receives)},
                "returnedForOtherAccounts": self.returned_for_others,
            },
            "deadLettered": [
                {"queue": queue, "messageId": message_id, "redriven": redriven}
                for (queue, message_id), redriven in sorted(self.dead_letters.items())
            ],
        }
        if self.faults is not None:
            report["stats"]["faults"] = dict(sorted(self.faults.injected.items()))
        if self.options.endpoint_url is None:
            report["stats"]["capacity"] = shared_meter(self.stack.table_name).stats()
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
        except ValueError:  # pydantic's ValidationError included
            return
        history = self.histories.setdefault(event.account_id, [])
        periods = self.periods.setdefault(event.account_id, set())
        if isinstance(event, SubscriptionChanged):
            history.append(subscription_of(event))
        else:
            periods.add(History.of(history, self.default_timezone).place(event.occurred_at))
        known = History.of(history, self.default_timezone)
        instants = (known.close_instant(period, self.grace) for period in periods)
        self.upcoming.update(instant for instant in instants if instant > self.clock)

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
            with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
                stamp = datetime.fromisoformat(json.loads(body)["time"])
                clock = max(clock, stamp) if stamp.tzinfo is not None else clock
            yield number, body, clock


def _aws_backend(endpoint_url: str | None) -> contextlib.AbstractContextManager[None]:
    """Embedded moto by default; any endpoint otherwise (moto_server, LocalStack, DynamoDB Local...):
    `AWS_ENDPOINT_URL`, under which botocore's per-service variables (`AWS_ENDPOINT_URL_DYNAMODB`, ...) still
    send their service elsewhere."""
    if not endpoint_url:
        return embedded_aws(testkit.REGION)
    if boto3.session.Session().get_credentials() is None:
        raise SystemExit(
            f"metering simulate: no AWS credentials for {endpoint_url}. Set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (any values for a local emulator), or AWS_PROFILE."
        )
    return environment({ENDPOINT_VARIABLE: endpoint_url})


def upload_claim_checks(objects_dir: Path, bucket: str) -> None:
    """Put every file under `objects_dir` (if any) in the claim-check bucket, keyed by its relative path."""
    s3 = boto3.client("s3")
    for path in sorted(p for p in objects_dir.rglob("*") if p.is_file()):
        s3.put_object(Bucket=bucket, Key=path.relative_to(objects_dir).as_posix(), Body=path.read_bytes())


def function_settings(
    options: SimulationOptions, template: Mapping[str, Any], stack: LocalStack
) -> dict[str, str]:
    """The functions' environment as the template sets it for this stack, with the replay's own settings."""
    settings = function_environment(stack, template)
    return {
        **settings,
        "DEFAULT_TIMEZONE": options.default_timezone or settings["DEFAULT_TIMEZONE"],
        "GRACE_HOURS": str(settings["GRACE_HOURS"] if options.grace_hours is None else options.grace_hours),
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
    after_replay: Callable[[Simulation], None] | None = None,
) -> dict[str, Any]:
    """Run one replay and return the report of SPEC §4. `after_replay` runs with the replayed stack still up
    and its roles still enforced (`metering serve`, the census)."""
    template = load_template()
    # the functions' expected failures under injected faults are not news; real ones are, otherwise
    log_level = os.environ.get("POWERTOOLS_LOG_LEVEL", "CRITICAL" if options.fault_rate else "ERROR")
    process = {
        "AWS_DEFAULT_REGION": testkit.REGION,
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": log_level,
    }
    objects_dir = options.objects_dir or options.events_path.with_suffix(".objects")
    with (
        environment(process),
        _aws_backend(options.endpoint_url),
        testkit.simulated_waits(),
        contextlib.redirect_stdout(sys.stderr),
    ):
        stack = provision(f"sim-{uuid.uuid4().hex[:8]}", options.claim_check_bucket, template)
        try:
            upload_claim_checks(objects_dir, stack.claim_check_bucket)
            guard = RoleGuard.install(template, stack) if options.endpoint_url is None else None
            with (
                environment(function_settings(options, template, stack)),
                guard.enforced() if guard is not None else contextlib.nullcontext(),
            ):
                run = Simulation(options, stack, testkit.local_functions(stack, template), guard)
                if on_stack is not None:
                    on_stack(stack)
                run.replay(read_envelopes(options.events_path))
                report = run.report()
                if after_replay is not None:
                    after_replay(run)
            _warn(run, guard)
        finally:
            if options.endpoint_url:
                tear_down(stack)
    return report


def _warn(run: Simulation, guard: RoleGuard | None) -> None:
    """What the replay's operator should know: dead letters, injected faults, calls no role grants."""
    letters = sorted(run.dead_letters.items())
    for redriven, fate in ((False, "dead-lettered and lost"), (True, "reached their DLQ and were redriven")):
        named = [message_id for (_, message_id), redrove in letters if redrove is redriven]
        if named:
            shown = ", ".join(named[:WARNING_NAMES]) + (", ..." if len(named) > WARNING_NAMES else "")
            print(f"warning: {len(named)} messages {fate} (stats.deadLettered): {shown}", file=sys.stderr)
    if run.faults is not None:
        injected = ", ".join(f"{count} {kind}" for kind, count in sorted(run.faults.injected.items()))
        print(f"faults injected: {sum(run.faults.injected.values())} ({injected})", file=sys.stderr)
    if guard is not None and (refused := guard.refusals()):
        print(f"warning: calls the functions' roles do not grant\n{refused}", file=sys.stderr)
