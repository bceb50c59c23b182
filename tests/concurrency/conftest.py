"""A real moto server process on loopback for the multi-process tests (DynamoDB requests applied one at a
time, as DynamoDB applies the writes to one item, see `serial_moto_server`): one server per module, a
fresh copy of the stack's resources (built from `template.yaml` by `provision`) per test, and the
environment the functions read, pointing at that server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from metering_tools.provisioning import LocalStack, provision

from tests.aws_env import FAKE_AWS
from tests.harness import add_capture_queue

HOST = "127.0.0.1"
START_ATTEMPTS = 3
READY_POLLS = 100
POLL_INTERVAL_SECONDS = 0.1
POLL_TIMEOUT_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 5.0

LOCAL_AWS = {
    **FAKE_AWS,
    "NO_PROXY": HOST,  # the server is on loopback: botocore must not send its requests to a proxy
    "no_proxy": HOST,
}
FUNCTION_SETTINGS = {
    "ALERT_THRESHOLDS": "80,100",
    "ATTEMPT_TIMEOUT_SECONDS": "60",
    # RecordActivity's timeout as the close functions see it: a close counts a period only this long (plus a
    # margin) after its seal. The recorders here finish each batch within seconds.
    "RECORDER_TIMEOUT_SECONDS": "10",
    "DEFAULT_TIMEZONE": "UTC",
    "GRACE_HOURS": "6",
    "USAGE_ALERT_TOPIC_ARN": "",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_SERVICE_NAME": "metering",
    "POWERTOOLS_METRICS_NAMESPACE": "Metering/concurrency",
    # CONCURRENCY_TEST_LOG_LEVEL=WARNING shows why records were retried (on stdout: run with -s)
    "POWERTOOLS_LOG_LEVEL": os.environ.get("CONCURRENCY_TEST_LOG_LEVEL", "CRITICAL"),
    "POWERTOOLS_TRACE_DISABLED": "true",
}


SERVER_SCRIPT = Path(__file__).with_name("serial_moto_server.py")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Loopback only: never through a proxy the environment may name."""


def _answers(endpoint: str) -> bool:
    try:
        with _DIRECT.open(f"{endpoint}/moto-api/", timeout=POLL_TIMEOUT_SECONDS) as response:
            return int(response.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, urllib.error.URLError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """The moto server on a free loopback port, answering; stopped (terminate, then kill) at the end."""
    for _ in range(START_ATTEMPTS):
        port = _free_port()
        endpoint = f"http://{HOST}:{port}"
        process = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), HOST, str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **LOCAL_AWS},
        )
        try:
            for _ in range(READY_POLLS):
                if process.poll() is not None:
                    break  # the port was taken between probing and binding: try another one
                if _answers(endpoint):
                    yield endpoint
                    return
                time.sleep(POLL_INTERVAL_SECONDS)
        finally:
            _stop(process)
    pytest.fail(f"{SERVER_SCRIPT.name} did not answer after {START_ATTEMPTS} starts (needs moto[server])")


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
    stack = provision(f"metering-conc-{suffix}", f"metering-conc-claims-{suffix}")
    capture = add_capture_queue(stack)
    environment = {
        **LOCAL_AWS,
        **FUNCTION_SETTINGS,
        **stack.environment(),
        "AWS_ENDPOINT_URL": moto_endpoint,
    }
    return ServerStack(moto_endpoint, stack, capture, environment)
