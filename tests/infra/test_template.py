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
from metering_tools.template import (
    FunctionConfig,
    Resolver,
    functions,
    load_template,
    parameter_values,
    target,
    walk,
)

from tests.helpers import REPO_ROOT

TEMPLATE = load_template()
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
GLOBAL_FUNCTION = TEMPLATE["Globals"]["Function"]
FUNCTIONS: dict[str, FunctionConfig] = functions(TEMPLATE)
"""The stack's functions as the template layer reads them (Globals merged), by short name."""
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
# References (`target`, `walk`), the functions (`functions`) and resolved values (`Resolver`) come from the
# template layer (`metering_tools.template`). What is kept here reads no intrinsic function: `statements` and
# `strings` look at every value a policy may hold under any parameters (whichever `Fn::If` branch holds it,
# the text of a `Fn::Sub` as written), which the layer, resolving one deployment, does not offer; and
# `function_setting` reads Runtime and Architectures, which `FunctionConfig` does not carry.


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {name: resource for name, resource in RESOURCES.items() if resource["Type"] == kind}


def properties(name: str) -> dict[str, Any]:
    props: dict[str, Any] = RESOURCES[name].get("Properties", {})
    return props


def targets(value: Any) -> set[tuple[str, str | None]]:
    """Every (resource, attribute) a `Ref` (attribute None) or `Fn::GetAtt` below `value` names."""
    return {named for _, key, item in walk(value, "") if (named := target({key: item})) is not None}


def mappings(value: Any) -> Iterator[dict[str, Any]]:
    """`value` and every mapping below it."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from mappings(item)
    elif isinstance(value, list):
        for item in value:
            yield from mappings(item)


def strings(value: Any) -> list[str]:
    """Every string a template value holds, in any branch it may take (a `Fn::Sub` text as written): a
    wildcard in any of them is a wildcard in some deployment."""
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [string for item in items for string in strings(item)]


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement of a policy document, whichever condition includes it."""
    return [mapping for mapping in mappings(document["Statement"]) if "Effect" in mapping]


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


def function_setting(function: FunctionConfig, key: str) -> Any:
    return properties(function.logical_id).get(key, GLOBAL_FUNCTION.get(key))


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
    assert sorted(function.logical_id for function in FUNCTIONS.values()) == [
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
    assert target(mapping["Stream"]) == ("MeteringTable", "StreamArn")
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
    assert target(mapping["DestinationConfig"]["OnFailure"]["Destination"]) == ("CounterDLQ", "Arn")


# ---- queues ----


@pytest.mark.parametrize("queue", WORK_QUEUES)
def test_every_work_queue_redrives_to_its_dead_letter_queue(queue: str) -> None:
    policy = properties(queue)["RedrivePolicy"]
    dead_letters = target(policy["deadLetterTargetArn"])
    assert dead_letters is not None
    assert dead_letters[0] in DLQS
    assert dead_letters[1] == "Arn"
    assert 1 <= policy["maxReceiveCount"] <= 10
    # a message kept longer on the DLQ than on the queue, so nothing expires before an operator sees it
    dlq_retention = properties(dead_letters[0])["MessageRetentionPeriod"]
    assert dlq_retention >= properties(queue)["MessageRetentionPeriod"]


def test_no_two_work_queues_share_a_dead_letter_queue() -> None:
    dlqs = [target(properties(queue)["RedrivePolicy"]["deadLetterTargetArn"]) for queue in WORK_QUEUES]
    assert len(set(dlqs)) == len(dlqs)


@pytest.mark.parametrize("dlq", DLQS)
def test_every_dead_letter_queue_is_used_and_alarmed(dlq: str) -> None:
    # Then something dead-letters into it (a redrive policy, a rule target, a schedule or a destination)
    users = [
        name
        for name, resource in RESOURCES.items()
        if resource["Type"] not in {"AWS::SQS::QueuePolicy", "AWS::CloudWatch::Alarm"}
        and (dlq, "Arn") in targets(resource.get("Properties", {}))
    ]
    assert users, f"{dlq} receives nothing"
    # And an alarm tells the operator as soon as a message is on it
    [alarm] = alarms_on(
        "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", {"Fn::GetAtt": [dlq, "QueueName"]}
    )
    assert properties(alarm)["Threshold"] == 0
    assert properties(alarm)["ComparisonOperator"] == "GreaterThanThreshold"


@pytest.mark.parametrize("queue", sorted(QUEUES))
def test_every_queue_is_encrypted_at_rest(queue: str) -> None:
    props = properties(queue)
    assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props


@pytest.mark.parametrize(
    ("function", "queue"),
    [(name, queue) for name, function in FUNCTIONS.items() for queue in function.sources],
)
def test_queues_feeding_a_function_outlast_its_timeout_and_report_partial_failures(
    function: str, queue: str
) -> None:
    config = FUNCTIONS[function]
    event = properties(config.logical_id)["Events"][config.sources[queue].event]["Properties"]
    # AWS: a visibility timeout of at least six times the function timeout, or records are redelivered
    # while a retried invocation still holds them
    assert properties(queue)["VisibilityTimeout"] >= 6 * config.timeout_seconds
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_a_write_attempt_counts_as_over_before_its_records_are_redelivered() -> None:
    # The repair and the alert hand-over treat an attempt older than ATTEMPT_TIMEOUT_SECONDS as no longer
    # running (docs/design.md): that must be at least the function's timeout, and shorter than the time SQS
    # waits before it redelivers a failed record
    record_activity = FUNCTIONS["RecordActivity"]
    attempt_timeout = int(record_activity.environment["ATTEMPT_TIMEOUT_SECONDS"])
    assert attempt_timeout >= record_activity.timeout_seconds
    for queue in ("ActivityQueue", "FanOutQueue"):
        assert attempt_timeout < properties(queue)["VisibilityTimeout"]


# ---- functions ----


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_function_has_an_errors_and_a_throttles_alarm(function: str) -> None:
    name = {"Ref": FUNCTIONS[function].logical_id}
    assert len(alarms_on("AWS/Lambda", "Errors", "FunctionName", name)) == 1
    assert len(alarms_on("AWS/Lambda", "Throttles", "FunctionName", name)) == 1


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_function_logs_to_its_own_log_group_with_a_retention(function: str) -> None:
    config = FUNCTIONS[function]
    assert target(config.log_group) == (f"{function}LogGroup", None)
    group = RESOURCES[f"{function}LogGroup"]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert target(group["Properties"]["RetentionInDays"]) == ("LogRetentionDays", None)
    # the name Lambda would give it, so nothing else creates a second, unretained group
    named = Resolver(TEMPLATE, {"Stage": "dev"})
    function_name = named.resolve(properties(config.logical_id)["FunctionName"])
    assert named.resolve(group["Properties"]["LogGroupName"]) == f"/aws/lambda/{function_name}"


def test_no_two_functions_share_a_log_group() -> None:
    groups = [json.dumps(function.log_group, sort_keys=True) for function in FUNCTIONS.values()]
    assert len(set(groups)) == len(groups)


def test_functions_run_python_3_13_on_arm64() -> None:
    assert GLOBAL_FUNCTION["Runtime"] == "python3.13"
    assert GLOBAL_FUNCTION["Architectures"] == ["arm64"]
    for function in FUNCTIONS.values():
        assert function_setting(function, "Runtime") == "python3.13"
        assert function_setting(function, "Architectures") == ["arm64"]
    layer = properties("MeteringLayer")
    assert layer["CompatibleRuntimes"] == ["python3.13"]
    assert layer["CompatibleArchitectures"] == ["arm64"]
    assert RESOURCES["MeteringLayer"]["Metadata"]["BuildArchitecture"] == "arm64"


# ---- roles and policies ----


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_function_has_its_own_role(function: str) -> None:
    # the template layer reads the role of `Role: !GetAtt <Role>.Arn` (an AWS::IAM::Role of the template)
    role = FUNCTIONS[function].role_id
    assert role == f"{function}Role"
    [trust] = statements(properties(role)["AssumeRolePolicyDocument"])
    assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    # And its role writes logs only to its own log group
    [logs] = [
        s for s in statements(properties(role)["Policies"][0]["PolicyDocument"]) if s.get("Sid") == "Logs"
    ]
    assert target(logs["Resource"]) == (f"{function}LogGroup", "Arn")


def test_no_two_functions_share_a_role_and_no_other_resource_uses_a_function_role() -> None:
    roles = [function.role_id for function in FUNCTIONS.values()]
    assert len(set(roles)) == len(roles)
    function_ids = {function.logical_id for function in FUNCTIONS.values()}
    for name, resource in RESOURCES.items():
        if name in function_ids:
            continue
        for role in roles:
            assert (role, "Arn") not in targets(resource.get("Properties", {})), (name, role)


def test_no_policy_allows_a_wildcard_action() -> None:
    offending = []
    for name, kind, statement in policy_statements():
        if statement["Effect"] != "Allow":
            continue  # a Deny (e.g. of any SQS action without TLS) may be as broad as it likes
        for action in strings(statement["Action"]):
            if "*" in action and (kind, statement.get("Sid")) not in WILDCARD_ACTION_ALLOWED:
                offending.append((name, statement.get("Sid"), action))
    assert offending == []


def test_the_allowed_key_administration_statement_is_the_default_key_policy_only() -> None:
    for name, kind, statement in policy_statements():
        if (kind, statement.get("Sid")) in WILDCARD_ACTION_ALLOWED:
            assert statement["Principal"] == {
                "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
            }
            assert statement["Action"] == "kms:*", name
    role_actions = [
        action
        for _, kind, statement in policy_statements()
        if kind in {"AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}
        for action in strings(statement["Action"])
    ]
    assert not any(action.startswith("kms:") and "*" in action for action in role_actions)


def test_no_policy_names_a_wildcard_resource_outside_the_allow_list() -> None:
    offending = []
    for name, kind, statement in policy_statements():
        if statement["Effect"] != "Allow":
            continue
        for resource in strings(statement.get("Resource", [])):
            if "*" in resource and resource not in WILDCARD_RESOURCE_ALLOWED.get(kind, set()):
                offending.append((name, statement.get("Sid"), resource))
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
    [rule_target] = properties("ActivityRule")["Targets"]
    assert target(rule_target["Arn"]) == ("ActivityQueue", "Arn")
    assert target(rule_target["DeadLetterConfig"]["Arn"]) == ("RuleTargetDLQ", "Arn")


def test_the_producer_account_may_only_put_the_crms_events_on_a_bus_this_stack_created() -> None:
    # Given the parameter: empty (no policy) or an AWS account id
    parameter = TEMPLATE["Parameters"]["ProducerAccountId"]
    assert parameter_values(TEMPLATE)["ProducerAccountId"] == ""
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
        "Fn::And": [{"Condition": "CreateBus"}, {"Condition": "HasProducerAccount"}]
    }
    assert conditions["HasProducerAccount"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ProducerAccountId"}, ""]}]
    }
    assert conditions["CreateBus"] == {"Fn::Equals": [{"Ref": "EventBusName"}, ""]}
    # And it lets that account put events, with the CRM's source only (never `metering`), on that bus
    assert target(policy["Properties"]["EventBusName"]) == ("EventBus", None)
    statement = policy["Properties"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {
        "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${ProducerAccountId}:root"}
    }
    assert statement["Action"] == "events:PutEvents"
    assert target(statement["Resource"]) == ("EventBus", "Arn")
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
    retained_in_prod_only = {
        "Fn::If": ["KeepData", "Retain", "Delete"]
    }  # per stage: tests/infra/test_deploy.py
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == (retained_in_prod_only,) * 2
    # an index would double every contact write it projects; the close job reads the subscription shards
    assert "GlobalSecondaryIndexes" not in props


@pytest.mark.parametrize("topic", sorted(resources("AWS::SNS::Topic")))
def test_every_topic_is_encrypted_with_a_rotated_key_of_this_stack(topic: str) -> None:
    key = target(properties(topic)["KmsMasterKeyId"])
    assert key is not None
    assert RESOURCES[key[0]]["Type"] == "AWS::KMS::Key"
    assert properties(key[0])["EnableKeyRotation"] is True


# ---- checkov ----


def test_every_checkov_skip_says_why() -> None:
    # `.checkov.yaml` skips checks that do not apply; each skip carries its reason as a comment
    lines = (Path(REPO_ROOT) / ".checkov.yaml").read_text(encoding="utf-8").splitlines()
    skips = [line for line in lines if re.match(r"^\s*-\s*CKV", line)]
    assert skips
    for line in skips:
        check, _, reason = line.partition("#")
        assert len(reason.strip()) >= 20, f"no reason for {check.strip()}"
