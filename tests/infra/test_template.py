"""The stack's invariants, read from `template.yaml`: every queue and function is watched, every role is its
function's own and least-privilege, the rule reads exactly the contract's events, the table is protected.

`sam validate --lint`, `cfn-lint` and checkov (`make lint`) check the template's form; these check what this
project promises about it (README, docs/design.md, docs/runbook.md)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from metering.events import DETAIL_TYPES
from metering.store.codec import EXPIRES
from metering_tools.provisioning import load_template

from tests.helpers import REPO_ROOT

TEMPLATE = load_template()
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
GLOBAL_FUNCTION = TEMPLATE["Globals"]["Function"]
OPERATOR_TOPIC = {"Ref": "OperatorTopic"}

# Resources that may name "*" (or a pattern with "*") as a policy statement's Resource, and why AWS needs it.
WILDCARD_RESOURCE_ALLOWED = {
    # A key policy is attached to its key: its Resource is always "*", which means "this key" (AWS KMS rejects
    # any other value). So every statement of an AWS::KMS::Key's KeyPolicy names "*".
    "AWS::KMS::Key": {"*"},
    # RecordActivity reads claim-check objects of the one configured bucket: an S3 object ARN is a key
    # pattern, and the keys are chosen by the CRM. ListBucket is on the bucket ARN itself (no wildcard).
    "AWS::IAM::Role": {"arn:${AWS::Partition}:s3:::${ClaimCheckBucketName}/*"},
}
# Allow statements that may have a wildcard action, by (resource type, Sid), and why.
WILDCARD_ACTION_ALLOWED = {
    # The default key policy: the account (root) administers the key, so IAM policies can grant its use and
    # the key never becomes unmanageable. It lives only in key policies; no role gets kms:* (checked below).
    ("AWS::KMS::Key", "AccountAdministersKey"),
}


# ---- reading the template ----


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {name: resource for name, resource in RESOURCES.items() if resource["Type"] == kind}


def properties(name: str) -> dict[str, Any]:
    props: dict[str, Any] = RESOURCES[name].get("Properties", {})
    return props


def get_att(value: Any) -> tuple[str, str] | None:
    """(resource, attribute) of `!GetAtt X.Attr` (either form), else None."""
    if isinstance(value, dict) and set(value) == {"GetAtt"}:
        target = value["GetAtt"]
        resource, attribute = target.split(".", 1) if isinstance(target, str) else target
        return resource, attribute
    return None


def branches(value: Any) -> Iterator[Any]:
    """Every value a template value can take: both branches of `!If`, none for `AWS::NoValue`."""
    if isinstance(value, dict) and set(value) == {"If"}:
        _, when_true, when_false = value["If"]
        yield from branches(when_true)
        yield from branches(when_false)
    elif value != {"Ref": "AWS::NoValue"}:
        yield value


def as_list(value: Any) -> list[Any]:
    return [item for entry in (value if isinstance(value, list) else [value]) for item in branches(entry)]


def text(value: Any) -> str:
    """A plain or `!Sub` string (for wildcard checks); other intrinsics are rendered as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"Sub"} and isinstance(value["Sub"], str):
        return str(value["Sub"])
    return json.dumps(value, sort_keys=True)


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [statement for entry in as_list(document["Statement"]) for statement in branches(entry)]


POLICY_DOCUMENT_TYPES = {
    "AWS::IAM::Policy",
    "AWS::IAM::ManagedPolicy",
    "AWS::SQS::QueuePolicy",
    "AWS::SNS::TopicPolicy",
    "AWS::S3::BucketPolicy",
}


def policy_statements() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(resource name, resource type, statement) of every permission policy defined in the template: roles'
    inline policies, managed and standalone policies, key policies and resource policies. Trust policies
    (who may assume a role) are checked on their own."""
    for name, resource in RESOURCES.items():
        kind, props = resource["Type"], resource.get("Properties", {})
        documents: list[dict[str, Any]] = []
        if kind == "AWS::IAM::Role":
            documents = [policy["PolicyDocument"] for policy in props.get("Policies", [])]
        elif kind in POLICY_DOCUMENT_TYPES:
            documents = [props["PolicyDocument"]]
        elif kind == "AWS::KMS::Key":
            documents = [props["KeyPolicy"]]
        elif kind == "AWS::Events::EventBusPolicy":
            documents = [{"Statement": props["Statement"]}]
        for document in documents:
            for statement in statements(document):
                yield name, kind, statement


def functions() -> dict[str, dict[str, Any]]:
    return resources("AWS::Serverless::Function")


def function_setting(name: str, key: str) -> Any:
    return properties(name).get(key, GLOBAL_FUNCTION.get(key))


def alarms_on(namespace: str, metric: str, dimension: str, value: Any) -> list[str]:
    """Alarms on `metric` of `namespace` for one dimension value that notify the operator topic."""
    return [
        name
        for name, alarm in resources("AWS::CloudWatch::Alarm").items()
        if alarm["Properties"]["Namespace"] == namespace
        and alarm["Properties"]["MetricName"] == metric
        and {"Name": dimension, "Value": value} in alarm["Properties"].get("Dimensions", [])
        and OPERATOR_TOPIC in alarm["Properties"].get("AlarmActions", [])
    ]


QUEUES = resources("AWS::SQS::Queue")
DLQS = sorted(name for name in QUEUES if name.endswith("DLQ"))
WORK_QUEUES = sorted(name for name in QUEUES if not name.endswith("DLQ"))


def test_the_template_has_what_the_checks_below_are_about() -> None:
    assert sorted(functions()) == [
        "ClosePeriodsFunction",
        "CountContactsFunction",
        "InvoiceAccountFunction",
        "RecordActivityFunction",
        "UsageApiFunction",
    ]
    assert WORK_QUEUES == ["ActivityQueue", "CloseQueue", "FanOutQueue"]
    assert DLQS == ["ActivityDLQ", "CloseDLQ", "CounterDLQ", "FanOutDLQ", "RuleTargetDLQ", "ScheduleDLQ"]


# ---- the stream ----


def test_the_counters_read_every_new_contact_of_the_stream_and_never_skip_one() -> None:
    # Given the table's stream and CountContacts' mapping on it
    stream = properties("MeteringTable")["StreamSpecification"]
    [mapping] = [
        event["Properties"]
        for event in properties("CountContactsFunction")["Events"].values()
        if event["Type"] == "DynamoDB"
    ]
    # Then the stream carries keys (all a counter needs), and the mapping reads it from its oldest record
    assert stream == {"StreamViewType": "KEYS_ONLY"}
    assert mapping["Stream"] == {"GetAtt": "MeteringTable.StreamArn"}
    assert mapping["StartingPosition"] == "TRIM_HORIZON"
    # And a failed batch is retried until it succeeds, one batch per shard at a time, in order
    assert mapping["MaximumRetryAttempts"] == -1
    assert mapping["ParallelizationFactor"] == 1
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # And the tumbling window that gives each batch its shard id is on, and a counter trails by under 60 s
    assert mapping["TumblingWindowInSeconds"] > 0
    assert mapping["MaximumBatchingWindowInSeconds"] <= 30
    # And its filter passes exactly the insertion of contact items
    [pattern] = [json.loads(entry["Pattern"]) for entry in mapping["FilterCriteria"]["Filters"]]
    assert pattern == {"eventName": ["INSERT"], "dynamodb": {"Keys": {"sk": {"S": [{"prefix": "contact#"}]}}}}
    # And what expires from the stream before it is counted is recorded on an alarmed queue
    assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == {"GetAtt": "CounterDLQ.Arn"}


# ---- queues ----


@pytest.mark.parametrize("queue", WORK_QUEUES)
def test_every_work_queue_redrives_to_its_dead_letter_queue(queue: str) -> None:
    policy = properties(queue)["RedrivePolicy"]
    target = get_att(policy["deadLetterTargetArn"])
    assert target is not None
    assert target[0] in DLQS
    assert target[1] == "Arn"
    assert 1 <= policy["maxReceiveCount"] <= 10
    # a message kept longer on the DLQ than on the queue, so nothing expires before an operator sees it
    assert properties(target[0])["MessageRetentionPeriod"] >= properties(queue)["MessageRetentionPeriod"]


def test_no_two_work_queues_share_a_dead_letter_queue() -> None:
    targets = [get_att(properties(queue)["RedrivePolicy"]["deadLetterTargetArn"]) for queue in WORK_QUEUES]
    assert len(set(targets)) == len(targets)


@pytest.mark.parametrize("dlq", DLQS)
def test_every_dead_letter_queue_is_used_and_alarmed(dlq: str) -> None:
    # Then something dead-letters into it (a redrive policy, a rule target, a schedule or a destination)
    users = [
        name
        for name, resource in RESOURCES.items()
        if resource["Type"] not in {"AWS::SQS::QueuePolicy", "AWS::CloudWatch::Alarm"}
        and f'"{dlq}.Arn"' in json.dumps(resource.get("Properties", {}))
    ]
    assert users, f"{dlq} receives nothing"
    # And an alarm tells the operator as soon as a message is on it
    [alarm] = alarms_on(
        "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", {"GetAtt": f"{dlq}.QueueName"}
    )
    assert properties(alarm)["Threshold"] == 0
    assert properties(alarm)["ComparisonOperator"] == "GreaterThanThreshold"


@pytest.mark.parametrize("queue", sorted(QUEUES))
def test_every_queue_is_encrypted_at_rest(queue: str) -> None:
    props = properties(queue)
    assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props


@pytest.mark.parametrize(
    ("function", "event"),
    [
        (name, event)
        for name, function in functions().items()
        for event, source in function["Properties"].get("Events", {}).items()
        if source["Type"] == "SQS"
    ],
)
def test_queues_feeding_a_function_outlast_its_timeout_and_report_partial_failures(
    function: str, event: str
) -> None:
    source = properties(function)["Events"][event]["Properties"]
    queue = get_att(source["Queue"])
    assert queue is not None
    # AWS: a visibility timeout of at least six times the function timeout, or records are redelivered
    # while a retried invocation still holds them
    assert properties(queue[0])["VisibilityTimeout"] >= 6 * function_setting(function, "Timeout")
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_a_write_attempt_counts_as_over_before_its_records_are_redelivered() -> None:
    # The repair and the alert hand-over treat an attempt older than ATTEMPT_TIMEOUT_SECONDS as no longer
    # running (docs/design.md): that must be at least the function's timeout, and shorter than the time SQS
    # waits before it redelivers a failed record
    variables = properties("RecordActivityFunction")["Environment"]["Variables"]
    attempt_timeout = int(variables["ATTEMPT_TIMEOUT_SECONDS"])
    assert attempt_timeout >= function_setting("RecordActivityFunction", "Timeout")
    for queue in ("ActivityQueue", "FanOutQueue"):
        assert attempt_timeout < properties(queue)["VisibilityTimeout"]


# ---- functions ----


@pytest.mark.parametrize("function", sorted(functions()))
def test_every_function_has_an_errors_and_a_throttles_alarm(function: str) -> None:
    assert len(alarms_on("AWS/Lambda", "Errors", "FunctionName", {"Ref": function})) == 1
    assert len(alarms_on("AWS/Lambda", "Throttles", "FunctionName", {"Ref": function})) == 1


@pytest.mark.parametrize("function", sorted(functions()))
def test_every_function_logs_to_its_own_log_group_with_a_retention(function: str) -> None:
    log_group = properties(function)["LoggingConfig"]["LogGroup"]
    assert log_group == {"Ref": function.removesuffix("Function") + "LogGroup"}
    group = RESOURCES[log_group["Ref"]]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    # the name Lambda would give it, so nothing else creates a second, unretained group
    assert group["Properties"]["LogGroupName"] == {
        "Sub": "/aws/lambda/" + properties(function)["FunctionName"]["Sub"]
    }


def test_no_two_functions_share_a_log_group() -> None:
    groups = [json.dumps(properties(name)["LoggingConfig"]["LogGroup"]) for name in functions()]
    assert len(set(groups)) == len(groups)


def test_functions_run_python_3_13_on_arm64() -> None:
    assert GLOBAL_FUNCTION["Runtime"] == "python3.13"
    assert GLOBAL_FUNCTION["Architectures"] == ["arm64"]
    for name in functions():
        assert function_setting(name, "Runtime") == "python3.13"
        assert function_setting(name, "Architectures") == ["arm64"]
    layer = properties("MeteringLayer")
    assert layer["CompatibleRuntimes"] == ["python3.13"]
    assert layer["CompatibleArchitectures"] == ["arm64"]
    assert RESOURCES["MeteringLayer"]["Metadata"]["BuildArchitecture"] == "arm64"


# ---- roles and policies ----


@pytest.mark.parametrize("function", sorted(functions()))
def test_every_function_has_its_own_role(function: str) -> None:
    role = function.removesuffix("Function") + "Role"
    assert properties(function)["Role"] == {"GetAtt": f"{role}.Arn"}
    assert RESOURCES[role]["Type"] == "AWS::IAM::Role"
    [trust] = statements(properties(role)["AssumeRolePolicyDocument"])
    assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    # And its role writes logs only to its own log group
    [logs] = [
        s for s in statements(properties(role)["Policies"][0]["PolicyDocument"]) if s.get("Sid") == "Logs"
    ]
    assert logs["Resource"] == {"GetAtt": function.removesuffix("Function") + "LogGroup.Arn"}


def test_no_two_functions_share_a_role_and_no_other_resource_uses_a_function_role() -> None:
    roles = [json.dumps(properties(name)["Role"], sort_keys=True) for name in functions()]
    assert len(set(roles)) == len(roles)
    function_roles = {name.removesuffix("Function") + "Role" for name in functions()}
    for name, resource in RESOURCES.items():
        if resource["Type"] == "AWS::Serverless::Function":
            continue
        for role in function_roles:
            assert f'"{role}.Arn"' not in json.dumps(resource.get("Properties", {})), (name, role)


def test_no_policy_allows_a_wildcard_action() -> None:
    offending = []
    for name, kind, statement in policy_statements():
        if statement["Effect"] != "Allow":
            continue  # a Deny (e.g. of any SQS action without TLS) may be as broad as it likes
        for action in as_list(statement["Action"]):
            if "*" in action and (kind, statement.get("Sid")) not in WILDCARD_ACTION_ALLOWED:
                offending.append((name, statement.get("Sid"), action))
    assert offending == []


def test_the_allowed_key_administration_statement_is_the_default_key_policy_only() -> None:
    for name, kind, statement in policy_statements():
        if (kind, statement.get("Sid")) in WILDCARD_ACTION_ALLOWED:
            assert statement["Principal"] == {
                "AWS": {"Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
            }
            assert statement["Action"] == "kms:*", name
    role_actions = [
        action
        for _, kind, statement in policy_statements()
        if kind in {"AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}
        for action in as_list(statement["Action"])
    ]
    assert not any(action.startswith("kms:") and "*" in action for action in role_actions)


def test_no_policy_names_a_wildcard_resource_outside_the_allow_list() -> None:
    offending = []
    for name, kind, statement in policy_statements():
        if statement["Effect"] != "Allow":
            continue
        for resource in as_list(statement.get("Resource", [])):
            if "*" in text(resource) and text(resource) not in WILDCARD_RESOURCE_ALLOWED.get(kind, set()):
                offending.append((name, statement.get("Sid"), text(resource)))
    assert offending == []


def test_no_policy_allows_anyone() -> None:
    for name, _, statement in policy_statements():
        if statement["Effect"] == "Allow":
            assert statement.get("Principal") not in ("*", {"AWS": "*"}), name


def test_service_principals_in_resource_policies_are_bound_to_this_stack() -> None:
    # A service principal (events, cloudwatch) may act only for this stack's rule or this account
    for name, _, statement in policy_statements():
        principal = statement.get("Principal")
        if statement["Effect"] == "Allow" and isinstance(principal, dict) and "Service" in principal:
            assert statement.get("Condition"), (name, statement.get("Sid"))


# ---- event ingestion ----


def test_the_activity_rule_reads_exactly_the_contracts_seven_detail_types_from_the_crm_source() -> None:
    pattern = properties("ActivityRule")["EventPattern"]
    assert set(pattern) == {"source", "detail-type"}
    assert pattern["source"] == [{"Ref": "EventSource"}]
    assert len(pattern["detail-type"]) == 7
    assert set(pattern["detail-type"]) == set(DETAIL_TYPES)


def test_the_activity_rule_delivers_to_the_activity_queue_with_a_dead_letter_queue() -> None:
    [target] = properties("ActivityRule")["Targets"]
    assert target["Arn"] == {"GetAtt": "ActivityQueue.Arn"}
    assert target["DeadLetterConfig"]["Arn"] == {"GetAtt": "RuleTargetDLQ.Arn"}


def test_the_producer_account_may_only_put_the_crms_events_on_a_bus_this_stack_created() -> None:
    # Given the parameter: empty (no policy) or an AWS account id
    parameter = TEMPLATE["Parameters"]["ProducerAccountId"]
    assert parameter["Default"] == ""
    pattern = re.compile(parameter["AllowedPattern"])
    assert [bool(pattern.fullmatch(value)) for value in ("", "210987654321", "21098765432", "acc-1")] == [
        True,
        True,
        False,
        False,
    ]
    # Then the policy exists only for a bus this stack creates and a producer account that is set
    policy = RESOURCES["ProducerBusPolicy"]
    assert policy["Type"] == "AWS::Events::EventBusPolicy"
    conditions = TEMPLATE["Conditions"]
    assert conditions[policy["Condition"]] == {
        "And": [{"Condition": "CreateBus"}, {"Condition": "HasProducerAccount"}]
    }
    assert conditions["HasProducerAccount"] == {"Not": [{"Equals": [{"Ref": "ProducerAccountId"}, ""]}]}
    assert conditions["CreateBus"] == {"Equals": [{"Ref": "EventBusName"}, ""]}
    # And it lets that account put events, with the CRM's source only (never `metering`), on that bus
    assert policy["Properties"]["EventBusName"] == {"Ref": "EventBus"}
    statement = policy["Properties"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"AWS": {"Sub": "arn:${AWS::Partition}:iam::${ProducerAccountId}:root"}}
    assert statement["Action"] == "events:PutEvents"
    assert statement["Resource"] == {"GetAtt": "EventBus.Arn"}
    assert statement["Condition"] == {
        "ForAllValues:StringEquals": {"events:source": [{"Ref": "EventSource"}]}
    }


# ---- storage and encryption ----


def test_the_table_is_on_demand_recoverable_encrypted_expiring_and_has_no_index() -> None:
    table = RESOURCES["MeteringTable"]
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    # the attribute the store writes the expiry to (one letter: the period count reads contact items)
    assert props["TimeToLiveSpecification"] == {"AttributeName": EXPIRES, "Enabled": True}
    retained_in_prod_only = {"If": ["KeepData", "Retain", "Delete"]}  # per stage: tests/infra/test_deploy.py
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == (retained_in_prod_only,) * 2
    # an index would double every contact write it projects; the close job reads the subscription shards
    assert "GlobalSecondaryIndexes" not in props


@pytest.mark.parametrize("topic", sorted(resources("AWS::SNS::Topic")))
def test_every_topic_is_encrypted_with_a_rotated_key_of_this_stack(topic: str) -> None:
    key = properties(topic)["KmsMasterKeyId"]
    assert RESOURCES[key["Ref"]]["Type"] == "AWS::KMS::Key"
    assert properties(key["Ref"])["EnableKeyRotation"] is True


# ---- checkov ----


def test_every_checkov_skip_says_why() -> None:
    # `.checkov.yaml` skips checks that do not apply; each skip carries its reason as a comment
    lines = (Path(REPO_ROOT) / ".checkov.yaml").read_text(encoding="utf-8").splitlines()
    skips = [line for line in lines if re.match(r"^\s*-\s*CKV", line)]
    assert skips
    for line in skips:
        check, _, reason = line.partition("#")
        assert len(reason.strip()) >= 20, f"no reason for {check.strip()}"
