"""A real moto server process on loopback for the multi-process tests (DynamoDB requests applied one at a
time, as DynamoDB applies the writes to one item, see `serial_moto_server`): one server per module, a
fresh copy of the stack's resources (built from `template.yaml` by `provision`) per test, and the
environment `template.yaml` gives the functions, resolved for that copy and pointing at that server. The
functions run here with the harness's credentials (the server enforces no IAM); the end-to-end tier runs
them as their roles."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from metering_tools.local_stack import LocalStack, function_environment, provision
from metering_tools.template import load_template

from tests.aws_env import FAKE_AWS
from tests.harness import add_capture_queue
from tests.helpers import LOOPBACK, moto_server_process

TEMPLATE = load_template()
LOCAL_AWS = {
    **FAKE_AWS,
    "NO_PROXY": LOOPBACK,  # the server is on loopback: botocore must not send its requests to a proxy
    "no_proxy": LOOPBACK,
}
DEPLOYED_OTHERWISE = {
    # RecordActivity's timeout as the close functions see it: a close counts a period only this long (plus a
    # margin) after its seal. The recorders here finish each batch within seconds.
    "RECORDER_TIMEOUT_SECONDS": "10",
    "USAGE_ALERT_TOPIC_ARN": "",  # no usage-alert topic on the server: alerts go to the bus only
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_METRICS_NAMESPACE": "Metering/concurrency",
    # CONCURRENCY_TEST_LOG_LEVEL=WARNING shows why records were retried (on stdout: run with -s)
    "POWERTOOLS_LOG_LEVEL": os.environ.get("CONCURRENCY_TEST_LOG_LEVEL", "CRITICAL"),
    "POWERTOOLS_TRACE_DISABLED": "true",
}
"""Where the functions here deviate from the environment the template gives them."""


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """The moto server on a free loopback port, answering; stopped (terminate, then kill) at the end."""
    with moto_server_process({**os.environ, **LOCAL_AWS}) as endpoint:
        yield endpoint


@dataclass(frozen=True)
class ServerStack:
    """One copy of the stack on the server, the environment the functions run with, and a queue that
    receives a copy of every event the functions publish on the bus."""

    endpoint: str
    stack: LocalStack
    capture_queue_url: str
    environment: dict[str, str]


@pytest.fixture
def server_stack(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> ServerStack:
    """A fresh copy of the stack (unique names) on the module's server; the test's own boto3 clients
    point at the server while it runs."""
    for name, value in {**LOCAL_AWS, "AWS_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(name, value)
    suffix = uuid.uuid4().hex[:10]
    stack = provision(f"conc-{suffix}", f"metering-conc-claims-{suffix}", TEMPLATE)
    capture = add_capture_queue(stack)
    environment = {
        **LOCAL_AWS,
        **function_environment(stack, TEMPLATE),
        **DEPLOYED_OTHERWISE,
        "AWS_ENDPOINT_URL": moto_endpoint,
    }
    return ServerStack(moto_endpoint, stack, capture, environment)
