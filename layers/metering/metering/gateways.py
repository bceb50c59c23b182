"""S3, SQS, EventBridge, SNS, Lambda and Secrets Manager access: claim-check objects and secrets in; fan-out
and close messages, events, notifications and hand-overs out. Errors are classified once
(`metering.aws.classify`): retry, or surface."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from metering import aws
from metering.aws import classify, error_code
from metering.errors import ClaimCheckInvalid, StoreUnavailable
from metering.fields import ID_PATTERN

PUBLISHED_SOURCE = "metering"
PUT_EVENTS_LIMIT = 10
SEND_BATCH_LIMIT = 10
SEND_BATCH_BYTES = 240_000

_ID = re.compile(ID_PATTERN)


def read_claim_check(bucket: str, key: str, *, max_bytes: int = 64 * 1024 * 1024) -> list[str]:
    """The contact ids of a claim-check object, one per line. A missing object or bad content rejects the
    event; an object this function may not read (access denied, a KMS key it may not use) or a missing
    bucket is a deployment fault, never the event's (`ServiceMisconfigured`)."""
    try:
        response = aws.s3().get_object(Bucket=bucket, Key=key)
        if int(response.get("ContentLength", 0)) > max_bytes:
            raise ClaimCheckInvalid(f"claim-check object is larger than {max_bytes} bytes")
        body = response["Body"].read()
    except ClientError as exc:
        if error_code(exc) in {"NoSuchKey", "404"}:
            raise ClaimCheckInvalid(
                f"claim-check object s3://{bucket}/{key[:100]} does not exist ({error_code(exc)})"
            ) from exc
        raise classify(exc, "s3", "GetObject", f"s3://{bucket}/{key[:100]}") from exc
    except BotoCoreError as exc:
        raise classify(exc, "s3", "GetObject", f"s3://{bucket}/{key[:100]}") from exc
    try:
        lines = body.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ClaimCheckInvalid("claim-check object is not UTF-8 text") from exc
    ids = [line.strip() for line in lines if line.strip()]
    for line_number, contact_id in enumerate(ids, start=1):
        if not _ID.fullmatch(contact_id):
            raise ClaimCheckInvalid(f"claim-check object holds an invalid contact id on line {line_number}")
    return ids


def send_messages(queue_url: str, bodies: Sequence[str]) -> None:
    """Send message bodies in SendMessageBatch calls (10 entries, under the 256 KB request limit)."""
    batch: list[str] = []
    size = 0
    for body in bodies:
        if batch and (len(batch) == SEND_BATCH_LIMIT or size + len(body) > SEND_BATCH_BYTES):
            _send_batch(queue_url, batch)
            batch, size = [], 0
        batch.append(body)
        size += len(body)
    if batch:
        _send_batch(queue_url, batch)


def _send_batch(queue_url: str, bodies: list[str], attempts: int = 3) -> None:
    """Send one batch; entries SQS refuses are resent, and still refused ones fail the caller."""
    pending = bodies
    for _ in range(attempts):
        entries: Any = [{"Id": str(index), "MessageBody": body} for index, body in enumerate(pending)]
        try:
            response = aws.sqs().send_message_batch(QueueUrl=queue_url, Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, "sqs", "SendMessageBatch", queue_url) from exc
        pending = [pending[int(entry["Id"])] for entry in response.get("Failed", [])]
        if not pending:
            return
    raise StoreUnavailable(f"SQS refused {len(pending)} messages")


def delete_messages(queue_url: str, receipt_handles: Sequence[str]) -> set[str]:
    """Delete received messages (DeleteMessageBatch, 10 a call); returns the receipt handles deleted. One
    that SQS refuses (its visibility timeout passed) or a call that fails is not deleted: it stays with the
    event source mapping, which deletes or redelivers it after the invocation, so nothing is lost."""
    deleted: set[str] = set()
    for offset in range(0, len(receipt_handles), SEND_BATCH_LIMIT):
        chunk = receipt_handles[offset : offset + SEND_BATCH_LIMIT]
        entries: Any = [{"Id": str(index), "ReceiptHandle": handle} for index, handle in enumerate(chunk)]
        try:
            response = aws.sqs().delete_message_batch(QueueUrl=queue_url, Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            failure = classify(exc, "sqs", "DeleteMessageBatch", queue_url)
            if isinstance(failure, StoreUnavailable):
                continue
            raise failure from exc
        deleted.update(chunk[int(entry["Id"])] for entry in response.get("Successful", []))
    return deleted


def publish(bus_name: str, detail_type: str, details: Iterable[dict[str, Any]]) -> None:
    """Put events on the bus, 10 per call; any entry the bus refuses fails the call (the caller retries)."""
    entries: list[Any] = [
        {
            "Source": PUBLISHED_SOURCE,
            "DetailType": detail_type,
            "Detail": json.dumps(detail),
            "EventBusName": bus_name,
        }
        for detail in details
    ]
    for offset in range(0, len(entries), PUT_EVENTS_LIMIT):
        try:
            response = aws.events().put_events(Entries=entries[offset : offset + PUT_EVENTS_LIMIT])
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, "events", "PutEvents", bus_name) from exc
        if response.get("FailedEntryCount", 0):
            raise StoreUnavailable(f"EventBridge refused {response['FailedEntryCount']} entries")


def notify(topic_arn: str, subject: str, message: str, attributes: dict[str, str | int]) -> None:
    """Publish a human-readable notification (e-mail subscribers read it as is); the attributes let a
    subscription filter, e.g. on one account."""
    message_attributes: Any = {
        name: {"DataType": "Number", "StringValue": str(value)}
        if isinstance(value, int)
        else {"DataType": "String", "StringValue": value}
        for name, value in attributes.items()
    }
    try:
        aws.sns().publish(
            TopicArn=topic_arn, Subject=subject[:100], Message=message, MessageAttributes=message_attributes
        )
    except (ClientError, BotoCoreError) as exc:
        raise classify(exc, "sns", "Publish", topic_arn) from exc


def invoke_async(function_arn: str, payload: str) -> None:
    """Start another invocation of a function (a run handing over the rest of its work to a fresh one)."""
    try:
        aws.lambda_().invoke(FunctionName=function_arn, InvocationType="Event", Payload=payload)
    except (ClientError, BotoCoreError) as exc:
        raise classify(exc, "lambda", "Invoke", function_arn) from exc


def read_secret(secret_arn: str) -> str:
    """The current value of a Secrets Manager secret (a string secret)."""
    try:
        return aws.secretsmanager().get_secret_value(SecretId=secret_arn)["SecretString"]
    except (ClientError, BotoCoreError) as exc:
        raise classify(exc, "secretsmanager", "GetSecretValue", secret_arn) from exc
