"""One mapping from AWS errors to what they mean for the caller: retry later, or a fault to surface."""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
)

from metering.model import ServiceMisconfigured, StoreUnavailable

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
