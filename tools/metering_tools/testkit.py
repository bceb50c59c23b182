"""Lambda's part for the handlers run here, one for the tests and `metering simulate`: a handler module loaded
as a cold start, the Lambda context, the SQS and stream events AWS hands it, simulated time and injected
faults. `roles.RoleGuard` runs each handler as the IAM role its `template.yaml` entry names."""

from __future__ import annotations

import importlib.util
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any
from unittest import mock

import boto3
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.exceptions import ReadTimeoutError
from metering import retrying

from metering_tools.capacity import WRITES
from metering_tools.local_stack import LocalStack
from metering_tools.template import STACK_ROOT, FunctionConfig, StreamSource, functions

FUNCTIONS_DIR = STACK_ROOT / "functions"
REGION = "eu-central-1"
ACCOUNT = "123456789012"
ACTIVITY_QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:metering-test-activity"
type MessageBody = str | Mapping[str, Any]


def cold_start(folder: str) -> ModuleType:
    """Import `functions/<folder>/app.py` fresh, as a Lambda cold start does (it reads its settings then)."""
    name = f"cold_{folder}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, FUNCTIONS_DIR / folder / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LambdaContext:
    """The attributes of a Lambda context object that Powertools and the handlers read; the remaining time
    counts down from the function's timeout as on Lambda."""

    def __init__(self, function_name: str, timeout_seconds: float = 60, *, function_arn: str = "") -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        default_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"
        self.invoked_function_arn = function_arn or default_arn
        self.memory_limit_in_mb = 1024
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True, slots=True)
class LocalFunction:
    """A function of the template as it runs here: its configuration, and its name and ARN in the local
    stack (ClosePeriods invokes itself by `invoked_function_arn`, which its role grants by that name)."""

    config: FunctionConfig
    function_name: str
    function_arn: str
    queue_arns: Mapping[str, str]
    """The local ARN of each queue it consumes, by logical id (what `eventSourceARN` names)."""

    def context(self, remaining_seconds: float | None = None) -> LambdaContext:
        timeout = self.config.timeout_seconds if remaining_seconds is None else remaining_seconds
        return LambdaContext(self.function_name, timeout, function_arn=self.function_arn)

    def cold_start(self) -> ModuleType:
        return cold_start(self.config.code_folder)


def local_functions(stack: LocalStack, template: Mapping[str, Any]) -> dict[str, LocalFunction]:
    """Every function of the template, named as the template names it for `stack`."""
    resolver = stack.resolver(template)
    return {
        name: LocalFunction(
            config,
            resolver.refs[config.logical_id],
            resolver.attributes[config.logical_id]["Arn"],
            {queue: resolver.attributes[queue]["Arn"] for queue in config.sources},
        )
        for name, config in functions(template).items()
    }


def sqs_record(
    body: MessageBody,
    message_id: str | None = None,
    *,
    receive_count: int = 1,
    queue_arn: str = ACTIVITY_QUEUE_ARN,
    sent_at: datetime | None = None,
    receipt_handle: str | None = None,
) -> dict[str, Any]:
    """One SQS record as the Lambda event source mapping delivers it."""
    message_id = message_id or str(uuid.uuid4())
    sent_ms = str(int((sent_at or datetime.now(UTC)).timestamp() * 1000))
    return {
        "messageId": message_id,
        "receiptHandle": receipt_handle or f"handle-{message_id}",
        "body": body if isinstance(body, str) else json.dumps(body),
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": sent_ms,
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": sent_ms,
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


def sqs_event(bodies: Iterable[MessageBody], *, queue_arn: str = ACTIVITY_QUEUE_ARN) -> dict[str, Any]:
    """An SQS batch event with one record per body (each with a fresh message id)."""
    return {"Records": [sqs_record(body, queue_arn=queue_arn) for body in bodies]}


def answered(status: int) -> AWSResponse:
    """The HTTP side of an answer a botocore `before-call` hook gives instead of sending the request."""
    return AWSResponse("https://answered.locally.invalid", status, HTTPHeaders(), None)


class TableStream:
    """The table's stream as CountContacts' event source mapping reads it: shard by shard in order, through
    the mapping's filter, in batches of its size, each with the shard id a tumbling window adds. A batch the
    function fails is read again from the record it reports, as Lambda checkpoints a shard."""

    def __init__(self, table_name: str, endpoint_url: str | None) -> None:
        self._table_name = table_name
        self._endpoint_url = endpoint_url
        self._arn = boto3.client("dynamodb").describe_table(TableName=table_name)["Table"]["LatestStreamArn"]
        self._after: dict[str, str] = {}
        self.waiting: list[tuple[str, dict[str, Any]]] = []
        """Records read and passed by the filter, not yet taken by the function: (shard id, record)."""

    def read(self, source: StreamSource) -> None:
        for shard_id, records in self._new_records():
            if records:
                self._after[shard_id] = records[-1]["dynamodb"]["SequenceNumber"]
            for record in filter(source.passes, records):
                created = record["dynamodb"]["ApproximateCreationDateTime"]
                seconds = int(created.timestamp() if isinstance(created, datetime) else float(created))
                change = {**record["dynamodb"], "ApproximateCreationDateTime": seconds}
                delivered = {**record, "awsRegion": REGION, "dynamodb": change, "eventSourceARN": self._arn}
                self.waiting.append((shard_id, delivered))

    def _new_records(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        if self._endpoint_url is None:
            # embedded moto's one shard, read in memory: its streams API answers on a host name botocore no
            # longer uses, and through it a replay would spend seconds serializing records
            from moto.dynamodb.models import dynamodb_backends  # noqa: PLC0415 - moto only where it is embedded

            shard = dynamodb_backends[ACCOUNT][REGION].get_table(self._table_name).stream_shard
            assert shard is not None, "the table has no stream: the template's StreamSpecification is missing"
            first = shard.starting_sequence_number
            after = int(self._after.get(shard.id, first - 1))
            yield shard.id, [record.to_json() for record in shard.items[after + 1 - first :]]
            return
        # the stream is served where the table is (a per-service endpoint variable may move DynamoDB)
        client = boto3.client("dynamodbstreams", endpoint_url=boto3.client("dynamodb").meta.endpoint_url)
        for shard in client.describe_stream(StreamArn=self._arn)["StreamDescription"]["Shards"]:
            shard_id = shard["ShardId"]
            position = {"ShardIteratorType": "TRIM_HORIZON"}
            if (last_read := self._after.get(shard_id)) is not None:
                position = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": last_read}
            iterator = client.get_shard_iterator(StreamArn=self._arn, ShardId=shard_id, **position)
            cursor = iterator["ShardIterator"]
            records: list[dict[str, Any]] = []
            while cursor and (answer := client.get_records(ShardIterator=cursor, Limit=1000))["Records"]:
                records += answer["Records"]
                cursor = answer.get("NextShardIterator")
            yield shard_id, records

    def batches(self, source: StreamSource, *, whole_only: bool) -> Iterator[dict[str, Any]]:
        """The next batch of each shard, while there is one (`whole_only`: only full batches)."""
        while self.waiting and (len(self.waiting) >= source.batch_size or not whole_only):
            shard_id = self.waiting[0][0]
            records = [record for shard, record in self.waiting if shard == shard_id][: source.batch_size]
            start = datetime.fromtimestamp(records[0]["dynamodb"]["ApproximateCreationDateTime"], UTC)
            end = start + timedelta(minutes=1)
            yield {
                "Records": records,
                "window": {"start": f"{start:%Y-%m-%dT%H:%M:00Z}", "end": f"{end:%Y-%m-%dT%H:%M:00Z}"},
                "state": {},
                "shardId": shard_id,
                "eventSourceARN": self._arn,
                "isFinalInvokeForWindow": False,
                "isWindowTerminatedEarly": False,
            }

    def taken(self, event: Mapping[str, Any], failed_sequence: str | None) -> None:
        """The function took `event`'s records before the one it reported as failed (None: all of them)."""
        failed_at = float("inf") if failed_sequence is None else int(failed_sequence)
        sequences = (record["dynamodb"]["SequenceNumber"] for record in event["Records"])
        taken = {sequence for sequence in sequences if int(sequence) < failed_at}
        self.waiting = [
            (shard, record)
            for shard, record in self.waiting
            if shard != event["shardId"] or record["dynamodb"]["SequenceNumber"] not in taken
        ]


class DeliveredMessages:
    """SQS's part for messages a harness hands to a function itself: their DeleteMessageBatch is answered as
    SQS answers it, and remembered (the census still records the call, so the role must grant it)."""

    def __init__(self) -> None:
        self.deleted: set[str] = set()

    def attach(self, client: Any) -> None:
        key = f"delivered-messages-{id(self)}"
        events = client.meta.events
        events.register("before-parameter-build.sqs.DeleteMessageBatch", self._note, unique_id=f"{key}-note")
        events.register("before-call.sqs.DeleteMessageBatch", self._answer, unique_id=f"{key}-answer")

    @staticmethod
    def _note(params: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["delivered_deletes"] = list(params.get("Entries", []))

    def _answer(self, context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        entries = context.pop("delivered_deletes", [])
        self.deleted.update(entry["ReceiptHandle"] for entry in entries)
        return answered(200), {"Successful": [{"Id": entry["Id"]} for entry in entries], "Failed": []}


class SimulatedClock:
    """The functions' clock (`metering.retrying.CLOCK`) where waiting passes in simulated time: a backoff
    costs the replay nothing, and a retry budget still runs out after as much waiting as it would on AWS."""

    def __init__(self) -> None:
        self.waited = 0.0

    def now(self) -> float:
        return time.monotonic() + self.waited

    def sleep(self, seconds: float) -> None:
        self.waited += seconds

    def wall(self) -> float:
        """Wall time that moves only with simulated waits, from a fixed instant: a claim's `claimedAt` (a
        number whose stored size depends on its digits) is the same in every replay."""
        return datetime(2026, 1, 1, tzinfo=UTC).timestamp() + self.waited


@contextmanager
def simulated_waits() -> Iterator[SimulatedClock]:
    """The functions wait on a `SimulatedClock` inside the block."""
    clock = SimulatedClock()
    with mock.patch.multiple(retrying.CLOCK, now=clock.now, sleep=clock.sleep, wall=clock.wall):
        yield clock


class SimulatedCrash(BaseException):
    """The function's process dies mid-invocation: nothing it would have returned or caught survives."""


class FaultInjector:
    """Makes a share of the functions' DynamoDB and S3 calls fail: throttling and server errors (the call
    never lands), a time-out after a write took effect (the caller sees a failure, the table has the
    change), and crashes that kill the invocation (no call of the crashed process lands until it restarts)."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.random = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self.failed_requests: list[str] = []
        """The requests made to fail since the harness last cleared this (what each one names)."""
        self._lock = threading.Lock()
        self._crashed = False

    def restart(self) -> None:
        with self._lock:
            self._crashed = False

    def attach(self, client: Any) -> None:
        """Fail this client's calls; attaching it again changes nothing (each invocation attaches its own)."""
        service = client.meta.service_model.service_id.hyphenize()
        key = f"fault-injector-{id(self)}-{service}"
        client.meta.events.register(f"before-call.{service}", self._before_call, unique_id=f"{key}-before")
        client.meta.events.register(f"after-call.{service}", self._after_call, unique_id=f"{key}-after")

    def _before_call(
        self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> tuple[AWSResponse, dict[str, Any]] | None:
        with self._lock:
            if self._crashed:
                raise SimulatedCrash(f"{model.name} after the crash")
            draw = self.random.random()
            if draw >= self.rate:
                return None
            body = params.get("body", b"")
            request = f"{params.get('url_path', '')} {body.decode() if isinstance(body, bytes) else body}"
            self.failed_requests.append(request)
            share = draw / self.rate
            if share < 0.1:
                self.injected["crash"] += 1
                self._crashed = True
                raise SimulatedCrash(model.name)
            if share < 0.45:
                self.injected["throttling"] += 1
                dynamodb = model.service_model.service_name == "dynamodb"
                code, status = ("ThrottlingException", 400) if dynamodb else ("SlowDown", 503)
                return answered(status), {"Error": {"Code": code, "Message": "injected"}}
            if share < 0.8 or model.name not in WRITES:
                self.injected["server error"] += 1
                return answered(500), {"Error": {"Code": "InternalServerError", "Message": "injected"}}
        context["fail_after_write"] = True
        return None

    def _after_call(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        if context.pop("fail_after_write", False):
            with self._lock:
                self.injected["timeout after write"] += 1
            raise ReadTimeoutError(endpoint_url=f"injected after {model.name}")
