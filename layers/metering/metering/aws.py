"""AWS clients, built once per process (per Lambda container) and shared by every call, and the one mapping
from their errors to what they mean for the caller: retry later, or a fault to surface."""

from __future__ import annotations

from collections import Counter
from functools import cache
from threading import Lock
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
)

from metering.errors import ServiceMisconfigured, StoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 6},
    connect_timeout=3,
    read_timeout=10,
    max_pool_connections=16,
)


class DynamoDBRequests:
    """Counts DynamoDB calls and the items each touches, per operation, through botocore's event hooks:
    1 item for single-item calls, the keys or requests of batch and transaction calls, the scanned count
    of a Query or Scan. Items touched are the basis of the request-unit cost."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.items: Counter[str] = Counter()
        self._lock = Lock()

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.dynamodb", self._on_request)
        client.meta.events.register("after-call.dynamodb", self._on_response)

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        with self._lock:
            return Counter(self.calls), Counter(self.items)

    def _on_request(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self.calls[model.name] += 1
            self.items[model.name] += _items_requested(model.name, params)

    def _on_response(self, model: Any, parsed: dict[str, Any], **_: Any) -> None:
        if model.name in {"Query", "Scan"}:
            with self._lock:
                self.items[model.name] += int(parsed.get("ScannedCount", 0))


def _items_requested(operation: str, params: dict[str, Any]) -> int:
    if operation == "BatchGetItem":
        return sum(len(request.get("Keys", [])) for request in params.get("RequestItems", {}).values())
    if operation == "BatchWriteItem":
        return sum(len(requests) for requests in params.get("RequestItems", {}).values())
    if operation in {"TransactWriteItems", "TransactGetItems"}:
        return len(params.get("TransactItems", []))
    return 0 if operation in {"Query", "Scan"} else 1


DYNAMODB_REQUESTS = DynamoDBRequests()
"""Every DynamoDB request this process makes through `dynamodb()`; handlers emit it as metrics."""


@cache
def dynamodb() -> DynamoDBClient:
    client = boto3.client("dynamodb", config=CLIENT_CONFIG)
    DYNAMODB_REQUESTS.attach(client)
    return client


@cache
def sqs() -> SQSClient:
    return boto3.client("sqs", config=CLIENT_CONFIG)


@cache
def events() -> EventBridgeClient:
    return boto3.client("events", config=CLIENT_CONFIG)


@cache
def s3() -> S3Client:
    return boto3.client("s3", config=CLIENT_CONFIG)


@cache
def sns() -> SNSClient:
    return boto3.client("sns", config=CLIENT_CONFIG)


@cache
def lambda_() -> LambdaClient:
    return boto3.client("lambda", config=CLIENT_CONFIG)


@cache
def secretsmanager() -> SecretsManagerClient:
    return boto3.client("secretsmanager", config=CLIENT_CONFIG)


def reset_clients() -> None:
    """Forget the cached clients, so the next call builds them against the current environment."""
    for factory in (dynamodb, sqs, events, s3, sns, lambda_, secretsmanager):
        factory.cache_clear()


RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "BandwidthLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "PriorRequestNotComplete",
        "TransactionInProgressException",
        "InternalServerError",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
"""Codes a later retry can succeed with (throttling, server faults, time-outs), besides every code that names
throttling (`ThrottlingException`, `KMS.ThrottlingException`, SQS's `KmsThrottled`, ...); any other code is
one the caller cannot fix by retrying."""

TRANSIENT_BOTOCORE_ERRORS = (ConnectionError, HTTPClientError, IncompleteReadError)
"""Network trouble: connection failures, time-outs, a response body cut short."""


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def classify(exc: ClientError | BotoCoreError, service: str, operation: str, resource: str) -> Exception:
    """The exception a failed call becomes: `StoreUnavailable` (retry) for throttling, server errors and
    network trouble (connection failures, time-outs); `ServiceMisconfigured` for everything a retry cannot
    fix (access denied, missing resources, invalid requests, missing credentials or region)."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in RETRYABLE_CODES or "Throttl" in code or status == 429 or status >= 500:
            return StoreUnavailable(f"{service} {operation}: {code or status}")
        message = str(exc.response.get("Error", {}).get("Message", ""))
        return ServiceMisconfigured(service, operation, resource, code or str(status), message[:300])
    if isinstance(exc, TRANSIENT_BOTOCORE_ERRORS):
        return StoreUnavailable(f"{service} {operation} unreachable: {exc}")
    return ServiceMisconfigured(service, operation, resource, type(exc).__name__, str(exc)[:300])
