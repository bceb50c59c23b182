"""AWS clients, built once per process (per Lambda container) and shared by every call."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 6},
    connect_timeout=3,
    read_timeout=10,
    max_pool_connections=16,
)


@cache
def dynamodb() -> DynamoDBClient:
    return boto3.client("dynamodb", config=CLIENT_CONFIG)


@cache
def sqs() -> SQSClient:
    return boto3.client("sqs", config=CLIENT_CONFIG)


@cache
def events() -> EventBridgeClient:
    return boto3.client("events", config=CLIENT_CONFIG)


@cache
def s3() -> S3Client:
    return boto3.client("s3", config=CLIENT_CONFIG)


def reset_clients() -> None:
    """Forget the cached clients, so the next call builds them against the current environment."""
    for factory in (dynamodb, sqs, events, s3):
        factory.cache_clear()
