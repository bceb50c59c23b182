"""Hermetic test setup: fake credentials, region and the functions' settings are set here, before any test
module (and so any handler) is imported; every end-to-end test gets its own moto stack built from
`template.yaml` by `metering_tools.provisioning.provision`."""

from __future__ import annotations

import os

from tests.aws_env import FAKE_AWS

HERMETIC_ENVIRONMENT = {
    **FAKE_AWS,
    # the functions' settings (metering.settings); names of the stack's resources are set per test
    "TABLE_NAME": "metering-unit",
    "FANOUT_QUEUE_URL": "https://sqs.eu-central-1.amazonaws.com/123456789012/metering-unit-fanout",
    "CLOSE_QUEUE_URL": "https://sqs.eu-central-1.amazonaws.com/123456789012/metering-unit-close",
    "EVENT_BUS_NAME": "metering-unit",
    "CLAIM_CHECK_BUCKET": "metering-unit-claim-checks",
    "DEFAULT_TIMEZONE": "UTC",
    "GRACE_HOURS": "6",
    "ALERT_THRESHOLDS": "80,100",
    "ATTEMPT_TIMEOUT_SECONDS": "60",
    # one invocation at a time: no recording can still be writing when a close counts (a test sets 60)
    "RECORDER_TIMEOUT_SECONDS": "0",
    "USAGE_ALERT_TOPIC_ARN": "",  # optional SNS copy of usage alerts: off unless a test sets it
    "POWERTOOLS_SERVICE_NAME": "metering",
    "POWERTOOLS_METRICS_NAMESPACE": "Metering/test",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
    "POWERTOOLS_TRACE_DISABLED": "true",
}
os.environ.update(HERMETIC_ENVIRONMENT)
for _variable in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
    os.environ.pop(_variable, None)

# ruff: noqa: E402 - the environment above must be in place before these imports
import uuid
from collections.abc import Iterator

import pytest
from metering import aws
from metering_tools.provisioning import LocalStack, provision
from moto import mock_aws

from tests.harness import Handlers, Metering, add_capture_queue


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    """A fresh moto copy of the stack's stateful resources, with unique names, and the functions'
    environment pointing at it."""
    with mock_aws():
        aws.reset_clients()
        suffix = uuid.uuid4().hex[:10]
        local = provision(f"metering-test-{suffix}", f"metering-claims-{suffix}")
        for name, value in local.environment().items():
            monkeypatch.setenv(name, value)
        yield local
        aws.reset_clients()


@pytest.fixture
def metering(stack: LocalStack) -> Metering:
    """The three functions, cold-started against `stack`, and a queue capturing what they publish."""
    return Metering(stack, Handlers.cold_start(), add_capture_queue(stack))
