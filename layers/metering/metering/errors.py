"""One mapping from AWS errors to what they mean for the caller: retry later, or a fault to surface."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from metering.model import ServiceMisconfigured, StoreUnavailable

RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "InternalServerError",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionInProgressException",
        "KMSThrottlingException",
    }
)
"""Codes a later retry can succeed with (throttling, server faults); anything else the caller cannot fix."""


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def classify(exc: ClientError | BotoCoreError, service: str, operation: str, resource: str) -> Exception:
    """The exception a failed call becomes: `StoreUnavailable` (retry) for throttling, server errors and
    network trouble (connection failures, time-outs); `ServiceMisconfigured` for everything a retry cannot
    fix (access denied, missing resources, invalid requests, missing credentials or region)."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in RETRYABLE_CODES or status >= 500:
            return StoreUnavailable(f"{service} {operation}: {code or status}")
        message = str(exc.response.get("Error", {}).get("Message", ""))
        return ServiceMisconfigured(service, operation, resource, code or str(status), message[:300])
    if isinstance(exc, ConnectionError | HTTPClientError):
        return StoreUnavailable(f"{service} {operation} unreachable: {exc}")
    return ServiceMisconfigured(service, operation, resource, type(exc).__name__, str(exc)[:300])
