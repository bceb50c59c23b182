"""A local copy of the stack (moto) with the three functions loaded, driven the way AWS drives them: each
function invoked as the IAM role its `template.yaml` entry names (`roles.RoleGuard`), with the template's
batch sizes and timeouts."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any
from urllib.parse import unquote

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from metering import aws
from metering.model import AlertRecord, PeriodRef
from metering.store import MeteringStore
from metering.store.alerts import Alerts
from metering.store.keys import ALERTS_SK, CONTACT_PREFIX, INVOICE_SK, REJECTED_PREFIX, period_pk
from metering_tools.local_stack import LocalStack
from metering_tools.reports import read_report
from metering_tools.roles import Handler, RoleGuard
from metering_tools.template import StreamSource
from metering_tools.testkit import (
    DeliveredMessages,
    LocalFunction,
    TableStream,
    answered,
    local_functions,
    sqs_event,
    sqs_record,
)

from tests.helpers import failed_ids


@dataclass
class Metering:
    """The system under test: deliver events, run the close, and read what was stored and published."""

    stack: LocalStack
    guard: RoleGuard
    functions: Mapping[str, LocalFunction]
    capture_queue_url: str
    modules: dict[str, ModuleType] = field(default_factory=dict)
    """One "container" of each function: module globals (settings, store, caches) live as long as it does."""
    published: list[dict[str, Any]] = field(default_factory=list)
    invisible_close_requests: list[str] = field(default_factory=list)
    """Receipt handles of close requests received and not deleted (failed, or lost by a killed run)."""
    delivered: DeliveredMessages = field(default_factory=DeliveredMessages)
    """The messages the functions deleted themselves while they ran (SQS's answer is the harness's)."""
    stream: TableStream | None = None

    def __post_init__(self) -> None:
        self.cold_start()

    @classmethod
    @contextmanager
    def running(cls, stack: LocalStack, template: Mapping[str, Any], guard: RoleGuard) -> Iterator[Metering]:
        """The functions cold-started against `stack`, each invoked as its role (IAM enforcement on: the
        caller entered `guard.enforced()`), and a queue capturing what they publish. On exit it fails if a
        function made a call its role does not grant (resource ARNs included): AWS would refuse it."""
        yield cls(stack, guard, local_functions(stack, template), add_capture_queue(stack))
        if refused := guard.refusals():
            pytest.fail(refused, pytrace=False)

    @property
    def store(self) -> MeteringStore:
        """A store on the test's own client, for reading what the functions wrote."""
        return MeteringStore(self.stack.table_name, boto3.client("dynamodb"))

    def cold_start(self) -> None:
        """A new container for every function: empty in-memory caches, settings read again."""
        self.modules = {name: function.cold_start() for name, function in self.functions.items()}

    def container(self, function: str) -> ModuleType:
        """Another container of one function, beside the harness's own (two containers racing)."""
        return self.functions[function].cold_start()

    # ---- driving the functions ----

    def invoke(
        self,
        function: str,
        event: Mapping[str, Any],
        *,
        container: ModuleType | None = None,
        remaining_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Invoke a function as Lambda does, as its role: in the harness's container unless another is
        given, with its template timeout ahead unless `remaining_seconds` says less. Then `metering.aws`
        forgets the function's clients: test code that runs next (the operator's commands) builds its own."""
        module = container or self.modules[function]
        context = self.functions[function].context(remaining_seconds)

        def handler(event: dict[str, Any], context: Any) -> Any:
            self.delivered.attach(aws.sqs())
            return module.handler(event, context)

        try:
            response: dict[str, Any] = self.guard.invoke(function, handler, dict(event), context)
        finally:
            aws.reset_clients()
        return response

    def record(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Invoke RecordActivity with one SQS batch; returns its partial-batch response."""
        return self.invoke("RecordActivity", event)

    def activity_batch(self, events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """These envelopes as one SQS batch of the activity queue."""
        return sqs_event(events, queue_arn=self._queue_arn("RecordActivity", "ActivityQueue"))

    def record_events(self, events: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Deliver these envelopes as one batch; returns (the SQS event, the response)."""
        batch = self.activity_batch(events)
        return batch, self.record(batch)

    def drain_fanout(self) -> dict[str, Any]:
        """Feed the fan-out queue to RecordActivity in batches of the template's size until it is empty;
        returns every record delivered as one SQS event (for redelivering it later)."""
        delivered: list[dict[str, Any]] = []
        arn = self._queue_arn("RecordActivity", "FanOutQueue")
        while messages := self._receive(
            self.stack.fanout_queue_url, self._batch_size("RecordActivity", "FanOutQueue")
        ):
            batch = {"Records": [sqs_record(m["Body"], m["MessageId"], queue_arn=arn) for m in messages]}
            response = self.record(batch)
            assert failed_ids(response) == [], response
            self._delete(self.stack.fanout_queue_url, messages)
            delivered += batch["Records"]
        return {"Records": delivered}

    def next_stream_batch(self, batch_size: int | None = None) -> dict[str, Any] | None:
        """The next batch of new stream records CountContacts' event source mapping would hand over (its
        filter, `batch_size` records or the template's), without delivering it."""
        source = self._stream_source(batch_size)
        if self.stream is None:
            self.stream = TableStream(self.stack.table_name, None)
        self.stream.read(source)
        return next(self.stream.batches(source, whole_only=False), None)

    def count_new_contacts(self, batch_size: int | None = None) -> list[dict[str, Any]]:
        """Deliver every new stream record to CountContacts as its event source mapping does, each batch
        until the function takes it all; returns the events delivered (for delivering them again)."""
        delivered: list[dict[str, Any]] = []
        while event := self.next_stream_batch(batch_size):
            failures = self.invoke("CountContacts", event)["batchItemFailures"]
            assert self.stream is not None
            self.stream.taken(event, min((f["itemIdentifier"] for f in failures), key=int, default=None))
            delivered.append(event)
        return delivered

    def _stream_source(self, batch_size: int | None) -> StreamSource:
        source = self.functions["CountContacts"].config.stream
        assert source is not None
        return replace(source, batch_size=batch_size) if batch_size else source

    def schedule_closes(self, as_of: str, *, remaining_seconds: float | None = None) -> dict[str, Any]:
        """The hourly ClosePeriods run as the scheduler invokes it."""
        return self.invoke("ClosePeriods", {"scheduledTime": as_of}, remaining_seconds=remaining_seconds)

    def invoice_queued(self, limit: int | None = None) -> list[str]:
        """Drain the close queue into InvoiceAccount (at most `limit` requests; the rest are received and
        then lost, as by a run killed half-way). Returns the message ids InvoiceAccount reported failed;
        those, like the lost ones, stay on the queue (invisible) as SQS leaves them."""
        failures: list[str] = []
        handled = 0
        arn = self._queue_arn("InvoiceAccount", "CloseQueue")
        batch_size = self._batch_size("InvoiceAccount", "CloseQueue")
        while received := self._receive(self.stack.close_queue_url, batch_size):
            messages = received
            if limit is not None:
                messages, handled = received[: max(0, limit - handled)], handled + len(received)
            self.invisible_close_requests += [m["ReceiptHandle"] for m in received[len(messages) :]]
            if not messages:
                continue
            batch = {"Records": [sqs_record(m["Body"], m["MessageId"], queue_arn=arn) for m in messages]}
            failed = failed_ids(self.invoke("InvoiceAccount", batch))
            failures += failed
            self.invisible_close_requests += [
                m["ReceiptHandle"] for m in messages if m["MessageId"] in failed
            ]
            self._delete(self.stack.close_queue_url, [m for m in messages if m["MessageId"] not in failed])
        return failures

    def close_requests_reappear(self) -> None:
        """The visibility timeout of every close request received but not deleted passes: SQS delivers
        them again."""
        sqs = boto3.client("sqs")
        for receipt_handle in self.invisible_close_requests:
            sqs.change_message_visibility(
                QueueUrl=self.stack.close_queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=0
            )
        self.invisible_close_requests = []

    def invoice_requests(self, requests: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Invoke InvoiceAccount directly with close requests (as an operator or a stray message would)."""
        arn = self._queue_arn("InvoiceAccount", "CloseQueue")
        return self.invoke("InvoiceAccount", sqs_event(requests, queue_arn=arn))

    def close(self, as_of: str) -> list[str]:
        """One full close run: ClosePeriods as of `as_of`, then every queued close request invoiced."""
        self.schedule_closes(as_of)
        return self.invoice_queued()

    # ---- AWS answering otherwise (botocore hooks on the functions' sessions: each call is still made,
    # so it is authorized and censused as on AWS) ----

    def accept_hand_overs(self) -> list[tuple[str, dict[str, Any]]]:
        """Lambda accepts ClosePeriods' asynchronous invocations of itself (202) without running them here;
        returns the list each accepted (function, payload) is appended to."""
        accepted: list[tuple[str, dict[str, Any]]] = []

        def accept_for(function: str) -> Handler:
            def accept(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
                accepted.append((unquote(params["url_path"].split("/")[3]), json.loads(params["body"])))
                return answered(202), {"StatusCode": 202}

            return accept

        self.guard.identities.register_per_function("before-call.lambda.Invoke", accept_for)
        return accepted

    def refuse_put_events(
        self, refuses: Callable[[list[dict[str, Any]]], bool], *, calls: int | None = 1
    ) -> list[dict[str, Any]]:
        """The bus fails every entry of the first `calls` PutEvents (all, for None) whose entries
        (`DetailType`, parsed `Detail`) `refuses` picks, as EventBridge reports entries it could not take;
        returns the list those entries are appended to."""
        refused: list[dict[str, Any]] = []
        refusals: list[int] = []

        def refuse_for(function: str) -> Handler:
            def refuse(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
                entries = [
                    {**entry, "Detail": json.loads(entry["Detail"])}
                    for entry in json.loads(params["body"])["Entries"]
                ]
                if (calls is not None and len(refusals) >= calls) or not refuses(entries):
                    return None
                refusals.append(len(entries))
                refused.extend(entries)
                failed = {"ErrorCode": "InternalFailure", "ErrorMessage": "refused by the test"}
                return answered(200), {"FailedEntryCount": len(entries), "Entries": [failed] * len(entries)}

            return refuse

        self.guard.identities.register_per_function("before-call.eventbridge.PutEvents", refuse_for)
        return refused

    def throttle_dynamodb(self, throttles: Callable[[str, str], bool]) -> list[str]:
        """DynamoDB throttles, beyond botocore's retries, every call of the functions whose operation and
        request body `throttles` picks (an outage on the partitions it names, for as long as it says);
        returns the operations it throttled."""
        throttled: list[str] = []

        def throttle_for(function: str) -> Handler:
            def throttle(
                model: Any, params: dict[str, Any], **_: Any
            ) -> tuple[AWSResponse, dict[str, Any]] | None:
                body = params["body"].decode() if isinstance(params["body"], bytes) else str(params["body"])
                if not throttles(model.name, body):
                    return None
                throttled.append(model.name)
                error = {"Code": "ThrottlingException", "Message": "throttled by the test"}
                return answered(400), {"Error": error}

            return throttle

        self.guard.identities.register_per_function("before-call.dynamodb", throttle_for)
        return throttled

    # ---- reading the outcome ----

    def active_contacts(self, account_id: str, period: str) -> int:
        """The period's count, as the close counts it: its contact items (0 when there are none)."""
        return len(self.contact_items(account_id, period))

    def counts(self, account_id: str, period: str) -> tuple[int, set[str]]:
        """(the period's count as the functions count it, the ids of its contact items)."""
        return self.store.contacts.count(PeriodRef(account_id, period), consistent=True), self.contact_items(
            account_id, period
        )

    def contact_items(self, account_id: str, period: str) -> set[str]:
        """The ids of the contact items stored for a period."""
        return {
            item["sk"]["S"].removeprefix(CONTACT_PREFIX)
            for item in self._query(period_pk(PeriodRef(account_id, period)), CONTACT_PREFIX)
        }

    def alert_claims(self, account_id: str, period: str) -> dict[int, AlertRecord]:
        """The usage alerts claimed for a period, by threshold percent."""
        item = self._get(period_pk(PeriodRef(account_id, period)), ALERTS_SK)
        return Alerts.decode(item)[1] if item else {}

    def invoice_items(self) -> list[dict[str, Any]]:
        """Every invoice item of the table."""
        return [item for item in self.scan_items() if item["sk"]["S"] == INVOICE_SK]

    def report(self) -> dict[str, list[dict[str, Any]]]:
        """Invoices, usage, alerts, rejected and late in the wire form of SPEC §4."""
        environment = self.modules["InvoiceAccount"].SETTINGS
        return read_report(
            boto3.client("dynamodb"), self.stack.table_name, environment.default_timezone, environment.grace
        )

    def rejections(self) -> dict[str, dict[str, str]]:
        """Stored rejected events by event id: reason, raw body, month partition."""
        return {
            item["sk"]["S"]: {
                "reason": item["reason"]["S"],
                "raw": item["raw"]["S"],
                "pk": item["pk"]["S"],
            }
            for item in self.scan_items()
            if item["pk"]["S"].startswith(REJECTED_PREFIX)
        }

    def events_published(self, detail_type: str) -> list[dict[str, Any]]:
        """The details of every event the functions put on the bus with this detail-type, in order."""
        while messages := self._receive(self.capture_queue_url, 10):
            self.published += [json.loads(message["Body"]) for message in messages]
            self._delete(self.capture_queue_url, messages)
        return [event["detail"] for event in self.published if event["detail-type"] == detail_type]

    # ---- plumbing ----

    def scan_items(self) -> list[dict[str, Any]]:
        """Every item of the table (small test tables only)."""
        paginator = boto3.client("dynamodb").get_paginator("scan")
        return [
            item for page in paginator.paginate(TableName=self.stack.table_name) for item in page["Items"]
        ]

    def _get(self, pk: str, sk: str) -> dict[str, Any] | None:
        item: dict[str, Any] | None = (
            boto3.client("dynamodb")
            .get_item(
                TableName=self.stack.table_name, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
            )
            .get("Item")
        )
        return item

    def _query(self, pk: str, sk_prefix: str) -> list[dict[str, Any]]:
        paginator = boto3.client("dynamodb").get_paginator("query")
        return [
            item
            for page in paginator.paginate(
                TableName=self.stack.table_name,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                ExpressionAttributeValues={":pk": {"S": pk}, ":prefix": {"S": sk_prefix}},
                ConsistentRead=True,
            )
            for item in page.get("Items", [])
        ]

    @staticmethod
    def _receive(queue_url: str, batch_size: int) -> list[dict[str, Any]]:
        response = boto3.client("sqs").receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=batch_size, AttributeNames=["All"]
        )
        return [dict(message) for message in response.get("Messages", [])]

    @staticmethod
    def _delete(queue_url: str, messages: Iterable[dict[str, Any]]) -> None:
        sqs = boto3.client("sqs")
        for message in messages:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    def _queue_arn(self, function: str, queue: str) -> str:
        return self.functions[function].queue_arns[queue]

    def _batch_size(self, function: str, queue: str) -> int:
        return self.functions[function].config.sources[queue].batch_size


def add_capture_queue(stack: LocalStack) -> str:
    """A rule on the stack's bus that copies every event the functions publish to a queue the test reads."""
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName=f"{stack.table_name}-published")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events = boto3.client("events")
    events.put_rule(
        Name=f"{stack.table_name}-published",
        EventBusName=stack.event_bus_name,
        EventPattern=json.dumps({"source": ["metering"]}),
    )
    events.put_targets(
        Rule=f"{stack.table_name}-published",
        EventBusName=stack.event_bus_name,
        Targets=[{"Id": "capture", "Arn": queue_arn}],
    )
    return queue_url
