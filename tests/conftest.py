"""Hermetic test setup: fake credentials, region and the functions' settings are set here, before any test
module (and so any handler) is imported; every end-to-end test gets its own moto stack built from
`template.yaml` by `metering_tools.local_stack.provision`, and runs each function as its template role.

The functions' variables are the ones the template sets, resolved for a stand-in stack until a test
provisions its own; only the settings below deviate from the template, each for its reason."""

from __future__ import annotations

import os

from metering_tools.local_stack import LocalStack, function_environment
from metering_tools.template import load_template
from metering_tools.testkit import ACCOUNT, REGION

from tests.aws_env import FAKE_AWS

TEMPLATE = load_template()
TEST_SETTINGS = {
    # one invocation at a time: no recording can still be writing when a close counts (a test sets 60)
    "RECORDER_TIMEOUT_SECONDS": "0",
    "USAGE_ALERT_TOPIC_ARN": "",  # optional SNS copy of usage alerts: off unless a test creates the topic
    "POWERTOOLS_METRICS_NAMESPACE": "Metering/test",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
    "POWERTOOLS_TRACE_DISABLED": "true",
}
STAND_IN = LocalStack.named("unit", "metering-unit-claim-checks", TEMPLATE, region=REGION, account_id=ACCOUNT)
"""Names for the handler modules imported before a test provisions a stack (unit tests, collection)."""

HERMETIC_ENVIRONMENT = {**FAKE_AWS, **function_environment(STAND_IN, TEMPLATE), **TEST_SETTINGS}
os.environ.update(HERMETIC_ENVIRONMENT)
for _variable in [name for name in os.environ if name.startswith("AWS_ENDPOINT_URL")]:
    os.environ.pop(_variable)
for _variable in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
    os.environ.pop(_variable, None)

# ruff: noqa: E402 - the environment above must be in place before these imports
import uuid
from collections.abc import Iterator

import pytest
from metering import aws
from metering_tools.local_stack import provision
from metering_tools.roles import FunctionIdentities, RoleGuard, StackRoles, stack_roles
from metering_tools.testkit import simulated_waits
from moto import mock_aws

from tests.harness import Metering


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    """A fresh moto copy of the stack's stateful resources, with unique names, and the functions'
    environment pointing at it; the functions' backoff waits pass in simulated time."""
    with mock_aws(), simulated_waits():
        aws.reset_clients()
        suffix = uuid.uuid4().hex[:10]
        local = provision(f"test-{suffix}", f"metering-claims-{suffix}", TEMPLATE)
        for name, value in local.environment(TEMPLATE).items():
            monkeypatch.setenv(name, value)
        yield local
        aws.reset_clients()


@pytest.fixture
def roles(stack: LocalStack) -> StackRoles:
    """Each function's role from the template, resolved for `stack`."""
    return stack_roles(TEMPLATE, stack)


@pytest.fixture
def identities(roles: StackRoles, stack: LocalStack) -> Iterator[FunctionIdentities]:
    """One identity per function, created before IAM authentication is turned on, then enforced."""
    created = FunctionIdentities.create(roles.policies, region=roles.stack.region, prefix=stack.table_name)
    with created.enforced():
        yield created


@pytest.fixture
def metering(stack: LocalStack, roles: StackRoles, identities: FunctionIdentities) -> Iterator[Metering]:
    """The three functions, cold-started against `stack`, each invoked as its template role with IAM
    enforcement on for the whole test, and a queue capturing what they publish. At teardown it fails if a
    function made a call its role does not grant."""
    with Metering.running(stack, TEMPLATE, RoleGuard(roles, identities)) as running:
        yield running
