"""Issue 7 §2, errors classified, not all transient: RecordActivity run on moto with the template's own role.

A refusal a retry cannot fix (access denied, an invalid request, a missing table, a claim-check object the
role may not read or decrypt) fails the invocation, so Lambda's Errors alarm fires on the first one and SQS
keeps the batch; it is logged with its call and counted as `ConfigurationErrors`. Throttling stays a partial
batch failure of the records it hit. A claim-check object that does not exist is the event's fault."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from metering.errors import ServiceMisconfigured
from metering.observability import logger, metrics
from metering_tools.local_stack import LocalStack
from metering_tools.roles import (
    Call,
    FunctionIdentities,
    FunctionPolicy,
    StackRoles,
    evaluate,
    moto_policy_document,
    stack_roles,
)
from metering_tools.template import load_template

from tests.harness import Metering
from tests.helpers import contact_events, contact_ids, failed_ids, load_event, redelivery, sqs_event

TEMPLATE = load_template()
FUNCTION = "RecordActivity"
OCTOBER = "2026-10"
OCCURRED_AT = "2026-10-05T10:00:00Z"
SURFACED = "service refused a call: configuration or code fault"
PRODUCER_KEY = "arn:aws:kms:eu-central-1:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab"
KMS_DENIED = (
    "User: arn:aws:sts::123456789012:assumed-role/metering-prod-RecordActivityRole/record-activity is not "
    f"authorized to perform: kms:Decrypt on resource: {PRODUCER_KEY} because no identity-based policy "
    "allows the kms:Decrypt action"
)


# ---- the role, and what the invocations tell the operator ----


def deploy_role_policy(identities: FunctionIdentities, policy: FunctionPolicy) -> None:
    """Replace RecordActivity's role policy, as a deployment would; moto reads it again on every request."""
    role_name = identities.role_arns[FUNCTION].rsplit("/", 1)[-1]
    identities.harness_session.client("iam").put_role_policy(
        RoleName=role_name, PolicyName=FUNCTION, PolicyDocument=json.dumps(moto_policy_document(policy))
    )


def without_action(policy: FunctionPolicy, action: str) -> FunctionPolicy:
    """The policy with one grant left out, as a template edit could leave it."""
    statements = tuple(
        dataclasses.replace(statement, actions=tuple(a for a in statement.actions if a != action))
        for statement in policy.statements
    )
    return dataclasses.replace(policy, statements=statements)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Telemetry:
    """The EMF metrics the invocations flushed to stdout, and the error records they logged."""

    capsys: pytest.CaptureFixture[str]
    log: _Records

    def metrics(self) -> dict[str, float]:
        """Each metric flushed since the last call, its values summed over the invocations."""
        totals: dict[str, float] = {}
        for line in self.capsys.readouterr().out.splitlines():
            if not (line.startswith("{") and '"_aws"' in line):
                continue
            document = json.loads(line)
            for block in document["_aws"]["CloudWatchMetrics"]:
                for metric in block["Metrics"]:
                    value = document[metric["Name"]]
                    totals[metric["Name"]] = totals.get(metric["Name"], 0) + (
                        sum(value) if isinstance(value, list) else value
                    )
        return totals

    def surfaced(self) -> list[dict[str, Any]]:
        """The configuration faults logged, with the call each broke."""
        return [
            {name: getattr(record, name) for name in ("service", "operation", "resource", "code")}
            for record in self.log.records
            if record.getMessage() == SURFACED and record.levelno == logging.ERROR
        ]


@pytest.fixture
def telemetry(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Telemetry]:
    """Powertools metrics switched on (the suite switches them off, and reads the switch at each flush) and
    the service's log records collected."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    metrics.clear_metrics()
    records = _Records()
    service_logger = logging.getLogger(logger.name)
    service_logger.addHandler(records)
    capsys.readouterr()
    yield Telemetry(capsys, records)
    service_logger.removeHandler(records)
    metrics.clear_metrics()


# ---- answers AWS gives that moto does not ----


@dataclass
class InjectedAnswer:
    """A botocore `before-call` hook answering a call as AWS would refuse it (no retry by botocore, as when
    its retries are spent), for the calls `applies` picks, while `active`."""

    code: str
    status: int
    message: str
    applies: Callable[[dict[str, Any]], bool] = field(default=lambda request: True)
    active: bool = True

    def __call__(self, params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if not (self.active and self.applies(params)):
            return None
        error = {"Code": self.code, "Message": self.message}
        return AWSResponse("https://injected.invalid", self.status, HTTPHeaders(), None), {
            "Error": error,
            "ResponseMetadata": {"HTTPStatusCode": self.status},
        }


def contact_writes_of(account_id: str) -> Callable[[dict[str, Any]], bool]:
    """PutItem requests writing an item of this account's periods."""

    def applies(request: dict[str, Any]) -> bool:
        item = json.loads(request["body"]).get("Item", {})
        return str(item.get("pk", {}).get("S", "")).startswith(f"{account_id}#")

    return applies


def claim_check_rename(stack: LocalStack, name: str) -> tuple[dict[str, Any], str]:
    """A `Status Renamed` from `tests/events/errors/<name>` pointing into the stack's bucket, and its key."""
    event = load_event(f"errors/{name}", detail={"contactIdsObject": {"bucket": stack.claim_check_bucket}})
    return event, event["detail"]["contactIdsObject"]["key"]


def upload_claim_check(stack: LocalStack, key: str, ids: list[str]) -> None:
    boto3.client("s3").put_object(
        Bucket=stack.claim_check_bucket, Key=key, Body=("\n".join(ids) + "\n").encode()
    )


# ---- (a) a table the role may not write ----


def test_a_table_the_role_may_not_write_fails_the_invocation_and_the_redelivery_after_the_fix_counts_once(
    metering: Metering,
    stack: LocalStack,
    roles: StackRoles,
    identities: FunctionIdentities,
    telemetry: Telemetry,
) -> None:
    # Given RecordActivity's role deployed without dynamodb:PutItem, and three new contacts in one batch
    granted = roles.policies[FUNCTION]
    deploy_role_policy(identities, without_action(granted, "dynamodb:PutItem"))
    batch = sqs_event(contact_events("acc-denied", contact_ids("con", 3), OCCURRED_AT))

    # When RecordActivity runs the batch
    with identities.activate(FUNCTION), pytest.raises(ServiceMisconfigured) as surfaced:
        metering.record(batch)

    # Then the invocation fails (Errors alarm; SQS keeps the whole batch, then moves it to the DLQ), naming
    # the refused call; it is logged with its operation and resource and counted once as ConfigurationErrors
    call = {"service": "dynamodb", "operation": "PutItem", "resource": stack.table_name}
    assert {name: getattr(surfaced.value, name) for name in call} == call
    assert telemetry.surfaced() == [{**call, "code": surfaced.value.code}]
    assert telemetry.metrics()["ConfigurationErrors"] == 1
    # And nothing was counted
    assert metering.active_contacts("acc-denied", OCTOBER) == 0

    # When the grant is deployed again and SQS redelivers the batch
    deploy_role_policy(identities, granted)
    with identities.activate(FUNCTION):
        response = metering.record(redelivery(batch))

    # Then every event is counted exactly once, and nothing more is surfaced
    assert failed_ids(response) == []
    assert metering.counts("acc-denied", OCTOBER) == (3, set(contact_ids("con", 3)))
    assert "ConfigurationErrors" not in telemetry.metrics()
    assert len(telemetry.surfaced()) == 1


# ---- (b) throttling ----


def test_throttled_contact_writes_fail_only_their_records_and_are_not_surfaced(
    metering: Metering, identities: FunctionIdentities, telemetry: Telemetry
) -> None:
    # Given DynamoDB throttling every contact write of one account (botocore's retries spent)
    throttling = InjectedAnswer(
        "ProvisionedThroughputExceededException",
        400,
        "The level of configured provisioned throughput for the table was exceeded.",
        applies=contact_writes_of("acc-throttled"),
    )
    identities.register("before-call.dynamodb.PutItem", throttling)
    throttled = contact_events("acc-throttled", contact_ids("con", 2), OCCURRED_AT)
    batch = sqs_event([*throttled, *contact_events("acc-spared", contact_ids("con", 2), OCCURRED_AT)])
    throttled_ids = [record["messageId"] for record in batch["Records"][:2]]

    # When RecordActivity runs the batch
    with identities.activate(FUNCTION):
        response = metering.record(batch)

    # Then it returns normally with a partial batch failure of exactly the throttled account's records: the
    # other account is counted, nothing is surfaced
    assert sorted(failed_ids(response)) == sorted(throttled_ids)
    assert metering.active_contacts("acc-spared", OCTOBER) == 2
    assert metering.active_contacts("acc-throttled", OCTOBER) == 0
    totals = telemetry.metrics()
    assert totals["RecordsRetried"] == 2
    assert "ConfigurationErrors" not in totals
    assert telemetry.surfaced() == []

    # When the throttling ends and SQS redelivers the failed records
    throttling.active = False
    with identities.activate(FUNCTION):
        response = metering.record(redelivery(batch, throttled_ids))

    # Then they are counted
    assert failed_ids(response) == []
    assert metering.active_contacts("acc-throttled", OCTOBER) == 2


# ---- (c) invalid requests and missing resources ----


def test_an_invalid_request_fails_the_invocation_and_is_surfaced(
    metering: Metering, stack: LocalStack, identities: FunctionIdentities, telemetry: Telemetry
) -> None:
    # Given DynamoDB refusing contact writes as invalid (a programming fault no retry fixes)
    identities.register(
        "before-call.dynamodb.PutItem",
        InjectedAnswer("ValidationException", 400, "Item size has exceeded the maximum allowed size"),
    )
    batch = sqs_event(contact_events("acc-invalid", contact_ids("con", 2), OCCURRED_AT))

    # When RecordActivity runs the batch
    with identities.activate(FUNCTION), pytest.raises(ServiceMisconfigured) as surfaced:
        metering.record(batch)

    # Then the invocation fails, logged with the call and code, and counted as ConfigurationErrors
    assert surfaced.value.code == "ValidationException"
    assert telemetry.surfaced() == [
        {
            "service": "dynamodb",
            "operation": "PutItem",
            "resource": stack.table_name,
            "code": "ValidationException",
        }
    ]
    assert telemetry.metrics()["ConfigurationErrors"] == 1


def test_a_table_that_does_not_exist_fails_the_invocation_and_is_surfaced(
    metering: Metering,
    stack: LocalStack,
    identities: FunctionIdentities,
    telemetry: Telemetry,
) -> None:
    # Given RecordActivity's table deleted under it (its role still grants the table's ARN, as on AWS)
    boto3.client("dynamodb").delete_table(TableName=stack.table_name)
    batch = sqs_event(contact_events("acc-lost", contact_ids("con", 1), OCCURRED_AT))

    # When RecordActivity runs a batch
    with identities.activate(FUNCTION), pytest.raises(ServiceMisconfigured) as surfaced:
        metering.record(batch)

    # Then the invocation fails on its first call to the table, surfaced and counted
    assert (surfaced.value.code, surfaced.value.resource) == ("ResourceNotFoundException", stack.table_name)
    assert [fault["code"] for fault in telemetry.surfaced()] == ["ResourceNotFoundException"]
    assert telemetry.metrics()["ConfigurationErrors"] == 1


# ---- (d) claim-check objects the role may not read or decrypt ----


def test_a_claim_check_object_the_role_may_not_read_fails_the_invocation_and_rejects_nothing(
    metering: Metering,
    stack: LocalStack,
    roles: StackRoles,
    identities: FunctionIdentities,
    telemetry: Telemetry,
) -> None:
    # Given a claim-check object, and RecordActivity's role deployed without s3:GetObject (moto refuses it)
    rename, key = claim_check_rename(stack, "status_renamed_encrypted_claim_check.json")
    upload_claim_check(stack, key, contact_ids("con", 3))
    granted = roles.policies[FUNCTION]
    deploy_role_policy(identities, without_action(granted, "s3:GetObject"))
    batch = sqs_event([rename])

    # When RecordActivity runs the rename
    with identities.activate(FUNCTION), pytest.raises(ServiceMisconfigured) as surfaced:
        metering.record(batch)

    # Then the invocation fails as a deployment fault, never as the event's: no rejection is stored
    assert (surfaced.value.service, surfaced.value.operation, surfaced.value.code) == (
        "s3",
        "GetObject",
        "AccessDenied",
    )
    assert surfaced.value.resource == f"s3://{stack.claim_check_bucket}/{key}"
    assert metering.rejections() == {}
    assert telemetry.metrics()["ConfigurationErrors"] == 1

    # When the grant is deployed again and SQS redelivers the rename
    deploy_role_policy(identities, granted)
    with identities.activate(FUNCTION):
        response = metering.record(redelivery(batch))

    # Then its contacts are counted
    assert failed_ids(response) == []
    assert metering.active_contacts("acc-encrypted", OCTOBER) == 3


@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param(("AccessDenied", 403, KMS_DENIED), id="sse-kms-decrypt-not-allowed"),
        pytest.param(("KMS.AccessDeniedException", 403, KMS_DENIED), id="kms-access-denied"),
        pytest.param(("KMS.DisabledException", 400, f"{PRODUCER_KEY} is disabled."), id="kms-key-disabled"),
    ],
)
def test_a_claim_check_object_the_role_may_not_decrypt_fails_the_invocation_and_rejects_nothing(
    metering: Metering,
    stack: LocalStack,
    identities: FunctionIdentities,
    telemetry: Telemetry,
    refusal: tuple[str, int, str],
) -> None:
    """moto does not authorize the KMS use of SSE-KMS reads, so S3's answer to a GetObject whose key the role
    may not use (or that is disabled) is injected by a `before-call` hook on s3 GetObject."""
    # Given an uploaded claim-check object that S3 cannot decrypt for RecordActivity
    rename, key = claim_check_rename(stack, "status_renamed_encrypted_claim_check.json")
    upload_claim_check(stack, key, contact_ids("con", 3))
    kms_refusal = InjectedAnswer(*refusal)
    identities.register("before-call.s3.GetObject", kms_refusal)
    batch = sqs_event([rename])

    # When RecordActivity runs the rename
    with identities.activate(FUNCTION), pytest.raises(ServiceMisconfigured) as surfaced:
        metering.record(batch)

    # Then the invocation fails, surfaced with the KMS refusal, and no rejection is stored
    assert (surfaced.value.operation, surfaced.value.code) == ("GetObject", kms_refusal.code)
    assert "kms" in str(surfaced.value).lower()
    assert [fault["code"] for fault in telemetry.surfaced()] == [kms_refusal.code]
    assert telemetry.metrics()["ConfigurationErrors"] == 1
    assert metering.rejections() == {}

    # When the key policy is fixed and SQS redelivers the rename
    kms_refusal.active = False
    with identities.activate(FUNCTION):
        response = metering.record(redelivery(batch))

    # Then its contacts are counted
    assert failed_ids(response) == []
    assert metering.active_contacts("acc-encrypted", OCTOBER) == 3


def test_a_configured_claim_check_key_lets_the_role_decrypt_with_that_key_only_through_s3(
    stack: LocalStack, roles: StackRoles
) -> None:
    # Given the template deployed with ClaimCheckKmsKeyArn naming a producer's key
    deployed = dataclasses.replace(stack, parameters={"ClaimCheckKmsKeyArn": PRODUCER_KEY})

    # When RecordActivity's role is resolved for the stack
    policy = stack_roles(TEMPLATE, deployed).policies[FUNCTION]

    # Then it may decrypt with that key, when S3 asks for it, and with no other key; without the parameter
    # the role has no such grant
    decision = evaluate(policy, Call("kms:Decrypt", PRODUCER_KEY))
    assert decision.allowed_by == ("DecryptClaimChecks",)
    region = roles.stack.region
    assert decision.conditions == (
        'Allow DecryptClaimChecks: {"StringEquals": {"kms:ViaService": "s3.' + region + '.amazonaws.com"}}',
    )
    assert not evaluate(
        policy, Call("kms:Decrypt", PRODUCER_KEY.replace("210987654321", "111122223333"))
    ).allowed
    assert "DecryptClaimChecks" not in {s.sid for s in roles.policies[FUNCTION].statements}


# ---- (e) a claim-check object that does not exist ----


def test_a_missing_claim_check_object_is_rejected_with_its_reason_and_the_batch_succeeds(
    metering: Metering, stack: LocalStack, identities: FunctionIdentities, telemetry: Telemetry
) -> None:
    # Given a rename whose claim-check object was never uploaded (the role may list the bucket: S3 says 404)
    rename, key = claim_check_rename(stack, "status_renamed_missing_claim_check.json")

    # When RecordActivity runs it
    with identities.activate(FUNCTION):
        _, response = metering.record_events([rename])

    # Then the batch succeeds, and the event is rejected with a reason naming the object
    assert failed_ids(response) == []
    reason = metering.rejections()[rename["id"]]["reason"]
    assert "does not exist" in reason
    assert key in reason
    totals = telemetry.metrics()
    assert totals["RejectedEvents"] == 1
    assert "ConfigurationErrors" not in totals
    assert telemetry.surfaced() == []
