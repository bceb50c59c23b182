"""Issue 7 §2: an AWS error becomes a retry (`StoreUnavailable`) only when a retry can succeed; everything
else is a fault to surface (`ServiceMisconfigured`), never retried quietly until the DLQ."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    ReadTimeoutError,
)
from metering.aws import classify
from metering.errors import ServiceMisconfigured, StoreUnavailable

TABLE = "metering-unit"


def client_error(code: str, status: int, message: str = "refused") -> ClientError:
    """The error botocore raises for this answer (the parts `classify` reads)."""
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutItem")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        pytest.param("ProvisionedThroughputExceededException", 400, id="dynamodb-throughput"),
        pytest.param("ThrottlingException", 400, id="throttling"),
        pytest.param("RequestLimitExceeded", 400, id="dynamodb-account-limit"),
        pytest.param("RequestThrottled", 400, id="sqs-throttled"),
        pytest.param("KmsThrottled", 400, id="sqs-kms-throttled"),
        pytest.param("KMS.ThrottlingException", 400, id="s3-kms-throttled"),
        pytest.param("Throttling", 400, id="sns-throttled"),
        pytest.param("TooManyRequestsException", 429, id="lambda-too-many-requests"),
        pytest.param("SlowDown", 503, id="s3-slow-down"),
        pytest.param("", 429, id="bare-429"),
        pytest.param("InternalServerError", 500, id="dynamodb-5xx"),
        pytest.param("InternalError", 500, id="s3-5xx"),
        pytest.param("ServiceUnavailable", 503, id="service-unavailable"),
        pytest.param("SomethingNew", 502, id="unknown-code-5xx"),
        pytest.param("RequestTimeout", 400, id="s3-request-timeout"),
        pytest.param("TransactionInProgressException", 400, id="transaction-in-progress"),
    ],
)
def test_throttling_server_errors_and_time_outs_are_retried(code: str, status: int) -> None:
    # Given an error a later attempt can get past
    error = client_error(code, status)

    # When it is classified
    classified = classify(error, "dynamodb", "PutItem", TABLE)

    # Then the caller retries (partial batch failure), nothing is surfaced
    assert isinstance(classified, StoreUnavailable)


@pytest.mark.parametrize(
    ("service", "code", "status"),
    [
        pytest.param("dynamodb", "AccessDeniedException", 400, id="dynamodb-access-denied"),
        pytest.param("dynamodb", "403", 403, id="access-denied-as-moto-answers-json-protocols"),
        pytest.param("dynamodb", "ValidationException", 400, id="dynamodb-validation"),
        pytest.param("dynamodb", "ResourceNotFoundException", 400, id="dynamodb-missing-table"),
        pytest.param("dynamodb", "UnrecognizedClientException", 400, id="bad-credentials"),
        pytest.param("sqs", "AWS.SimpleQueueService.NonExistentQueue", 400, id="sqs-missing-queue"),
        pytest.param("sqs", "KmsAccessDenied", 400, id="sqs-kms-denied"),
        pytest.param("events", "ResourceNotFoundException", 400, id="events-missing-bus"),
        pytest.param("s3", "AccessDenied", 403, id="s3-access-denied"),
        pytest.param("s3", "KMS.AccessDeniedException", 400, id="s3-kms-access-denied"),
        pytest.param("s3", "KMS.DisabledException", 400, id="s3-kms-key-disabled"),
        pytest.param("s3", "NoSuchBucket", 404, id="s3-missing-bucket"),
        pytest.param("sns", "AuthorizationError", 403, id="sns-not-authorized"),
        pytest.param("sns", "NotFound", 404, id="sns-missing-topic"),
        pytest.param("lambda", "ResourceNotFoundException", 404, id="lambda-missing-function"),
    ],
)
def test_refusals_a_retry_cannot_fix_are_surfaced_naming_the_call(
    service: str, code: str, status: int
) -> None:
    # Given an error that says the deployment or the code is wrong
    error = client_error(code, status, "User is not authorized to perform this action")

    # When it is classified
    classified = classify(error, service, "Call", "the-resource")

    # Then it is a configuration fault that names the call, its resource and the code
    assert isinstance(classified, ServiceMisconfigured)
    assert (classified.service, classified.operation, classified.resource, classified.code) == (
        service,
        "Call",
        "the-resource",
        code,
    )
    assert "not authorized" in str(classified)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(EndpointConnectionError(endpoint_url="https://dynamodb"), id="connection-failed"),
        pytest.param(ConnectTimeoutError(endpoint_url="https://dynamodb"), id="connect-timeout"),
        pytest.param(ReadTimeoutError(endpoint_url="https://dynamodb"), id="read-timeout"),
        pytest.param(IncompleteReadError(actual_bytes=10, expected_bytes=20), id="body-cut-short"),
    ],
)
def test_network_trouble_is_retried(error: BotoCoreError) -> None:
    # Given a call that never got a full answer
    # When it is classified
    # Then it is retried
    assert isinstance(classify(error, "s3", "GetObject", "s3://bucket/key"), StoreUnavailable)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(NoCredentialsError(), id="no-credentials"),
        pytest.param(NoRegionError(), id="no-region"),
        pytest.param(ParamValidationError(report="Key is too long"), id="invalid-parameters"),
    ],
)
def test_client_side_faults_are_surfaced(error: BotoCoreError) -> None:
    # Given a call botocore refused to make (a setup or programming fault)
    # When it is classified
    classified = classify(error, "dynamodb", "GetItem", TABLE)

    # Then it is surfaced, named by the botocore error
    assert isinstance(classified, ServiceMisconfigured)
    assert classified.code == type(error).__name__
