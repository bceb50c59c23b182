"""Each function's role from `template.yaml`, enforced on moto and checked by the census
(`metering_tools.roles`, `metering_testbench.census`): resolution against a local stack, refusals with IAM
authentication on, identity switches that keep the registered hooks, the mapping of API calls to IAM
authorizations, the evaluator."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from metering import aws
from metering_testbench.census import (
    CensusTally,
    Grant,
    census_findings,
    conditional_calls,
    on_behalf_grants,
    unused_grants,
)
from metering_tools.local_stack import Arns, LocalStack
from metering_tools.roles import (
    Call,
    Census,
    FunctionIdentities,
    FunctionPolicy,
    RoleGuard,
    StackRoles,
    calls_of,
    evaluate,
    function_policies,
    moto_policy_document,
    stack_roles,
    ungranted_calls,
)
from metering_tools.template import UnsupportedTemplateError, functions, load_template

from tests.helpers import is_access_denied

TEMPLATE = load_template()
REGION = "eu-central-1"
ACCOUNT = "123456789012"
ARNS = Arns(REGION, ACCOUNT)
QUEUE_URL = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}"
OFFLINE_STACK = LocalStack.named(
    "test-offline", "metering-claims-offline", TEMPLATE, region=REGION, account_id=ACCOUNT
)
TABLE_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/metering-test-offline"
BUS_ARN = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/metering-test-offline"


def key(pk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": "summary"}}


def read_period(client: Any, table_name: str) -> None:
    """Query one period's items, as every function reads the table."""
    client.query(
        TableName=table_name,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "acc-1#2026-10"}},
    )


def caller() -> str:
    return str(boto3.client("sts").get_caller_identity()["Arn"])


# ---- policies resolved from the template ----


def test_each_function_runs_with_the_role_its_template_entry_names() -> None:
    # Given the template
    # When its functions' roles are read
    roles = functions(TEMPLATE)

    # Then each function has its own role
    assert {name: function.role_id for name, function in roles.items()} == {
        "RecordActivity": "RecordActivityRole",
        "ClosePeriods": "ClosePeriodsRole",
        "InvoiceAccount": "InvoiceAccountRole",
        "CountContacts": "CountContactsRole",
        "UsageApi": "UsageApiRole",
    }


def test_policies_resolve_to_the_local_stacks_arns() -> None:
    # Given a local stack
    # When the roles are resolved for it
    roles = stack_roles(TEMPLATE, OFFLINE_STACK)

    # Then every reference names a local resource in the stack's account and region, named as the template
    # names its resources for the stack's stage (`metering-${Stage}...`)
    assert roles.resolver.parameters["Stage"] == "test-offline"
    assert roles.resolver.refs["ClosePeriodsFunction"] == "metering-test-offline-close-periods"
    close_periods = {s.sid: s for s in roles.policies["ClosePeriods"].statements}
    assert close_periods["QueueCloses"].resources == (
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:metering-test-offline-close",
    )
    assert close_periods["OnFailureDestination"].resources == (
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:metering-test-offline-schedule-dlq",
    )
    assert close_periods["Logs"].resources == (
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/metering-test-offline-close-periods:*",
    )
    record_activity = {s.sid: s for s in roles.policies["RecordActivity"].statements}
    assert record_activity["Table"].resources == (TABLE_ARN,)
    assert record_activity["PublishAlerts"].resources == (BUS_ARN,)
    assert record_activity["ReadClaimChecks"].resources == (
        "arn:aws:s3:::metering-claims-offline",
        "arn:aws:s3:::metering-claims-offline/*",
    )
    assert record_activity["EncryptUsageAlerts"].condition == {
        "StringEquals": {"kms:ViaService": f"sns.{REGION}.amazonaws.com"}
    }
    resources = [r for p in roles.policies.values() for s in p.statements for r in s.resources]
    assert all(r.startswith("arn:aws:s3:::") or f":{REGION}:{ACCOUNT}:" in r for r in resources)
    assert not any("metering-dev" in r for r in resources)


def test_a_local_stack_is_named_as_the_template_names_its_resources_for_the_stage() -> None:
    # Given a stage
    # When a local stack is named for it, before anything is created
    stack = LocalStack.named(
        "test-named", "metering-claims-named", TEMPLATE, region=REGION, account_id=ACCOUNT
    )

    # Then its table, queues, bus and cursor key carry the names the template gives them for that stage, and
    # the queue URLs and the roles' references follow those names
    assert dict(stack.names) == {
        "MeteringTable": "metering-test-named",
        "EventBus": "metering-test-named",
        "ActivityQueue": "metering-test-named-activity",
        "FanOutQueue": "metering-test-named-fanout",
        "CloseQueue": "metering-test-named-close",
        "UsageApiCursorSecret": "metering-test-named-usage-api-cursor-key",
    }
    assert (stack.table_name, stack.event_bus_name) == ("metering-test-named", "metering-test-named")
    assert stack.activity_queue_url == f"{QUEUE_URL}/metering-test-named-activity"
    assert stack.fanout_queue_url == f"{QUEUE_URL}/metering-test-named-fanout"
    assert stack.close_queue_url == f"{QUEUE_URL}/metering-test-named-close"
    resolver = stack.resolver(TEMPLATE)
    assert resolver.parameters["EventBusName"] == "metering-test-named"
    assert resolver.refs["MeteringTable"] == "metering-test-named"
    assert (
        resolver.attributes["CloseQueue"]["Arn"]
        == f"arn:aws:sqs:{REGION}:{ACCOUNT}:metering-test-named-close"
    )
    assert resolver.refs["UsageApiCursorSecret"] == (
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:metering-test-named-usage-api-cursor-key"
    )


def test_a_statement_behind_a_false_condition_is_dropped() -> None:
    # Given a local stack without a claim-check bucket (HasClaimCheckBucket is false)
    without_bucket = dataclasses.replace(OFFLINE_STACK, claim_check_bucket="")

    # When the roles are resolved for it
    policies = function_policies(TEMPLATE, without_bucket.resolver(TEMPLATE))

    # Then RecordActivity gets no S3 permission (the `!If` chose AWS::NoValue)
    assert "ReadClaimChecks" not in {s.sid for s in policies["RecordActivity"].statements}
    assert not any(a.startswith("s3:") for s in policies["RecordActivity"].statements for a in s.actions)


def test_a_reference_without_a_local_value_fails_naming_it_and_where_it_is() -> None:
    # Given a role statement that names a resource the template does not have
    template = copy.deepcopy(TEMPLATE)
    statements = template["Resources"]["InvoiceAccountRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    statements["Statement"][1]["Resource"] = {"Fn::GetAtt": ["ArchiveTable", "Arn"]}

    # When it is resolved
    # Then the error names the reference and the statement
    with pytest.raises(
        UnsupportedTemplateError, match=r"Statement\[1\]\.Resource.*no value for GetAtt ArchiveTable\.Arn"
    ):
        function_policies(template, OFFLINE_STACK.resolver(template))


def test_an_intrinsic_function_it_does_not_know_fails() -> None:
    # Given a role statement with an import from another stack
    template = copy.deepcopy(TEMPLATE)
    statements = template["Resources"]["ClosePeriodsRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    statements["Statement"][2]["Resource"] = {"Fn::ImportValue": "shared-close-queue-arn"}

    # When it is resolved
    # Then it fails rather than guessing
    with pytest.raises(UnsupportedTemplateError, match="unsupported intrinsic function Fn::ImportValue"):
        function_policies(template, OFFLINE_STACK.resolver(template))


def test_the_moto_policy_keeps_the_actions_and_the_resources_moto_can_check() -> None:
    # Given the resolved roles
    policies = stack_roles(TEMPLATE, OFFLINE_STACK).policies

    # When they are put in the form moto enforces
    close_periods = moto_policy_document(policies["ClosePeriods"])["Statement"]
    record_activity = moto_policy_document(policies["RecordActivity"])["Statement"]

    # Then SQS keeps its queue ARNs and names the batch form moto checks; DynamoDB's resource is "*" (moto
    # authorizes it on "*"), and no Condition is left for moto to misread
    assert {
        "Effect": "Allow",
        "Action": ["sqs:SendMessage", "sqs:SendMessageBatch"],
        "Resource": [f"arn:aws:sqs:{REGION}:{ACCOUNT}:metering-test-offline-close"],
    } in close_periods
    dynamodb = [s for s in record_activity if any(a.startswith("dynamodb:") for a in s["Action"])]
    assert dynamodb
    assert all(statement["Resource"] == "*" for statement in dynamodb)
    assert "dynamodb:BatchGetItem" in dynamodb[0]["Action"]
    assert not any("Condition" in statement for statement in record_activity)


# ---- (a) enforcement on moto ----


def test_a_call_the_role_grants_succeeds_and_one_it_does_not_is_refused(
    stack: LocalStack, identities: FunctionIdentities
) -> None:
    # Given IAM authentication on and InvoiceAccount's identity active
    with identities.activate("InvoiceAccount"):
        # When it reads a period (dynamodb:Query, granted)
        read_period(aws.dynamodb(), stack.table_name)

        # Then it is served; and a BatchGetItem, which its role does not grant (a close path reading the
        # subscriptions with it would never issue an invoice on AWS), is refused as it would be in Lambda
        with pytest.raises(ClientError) as refused:
            aws.dynamodb().batch_get_item(
                RequestItems={stack.table_name: {"Keys": [key("acc-1#subscriptions")]}}
            )
    assert is_access_denied(refused.value)
    assert "dynamodb:BatchGetItem" in str(refused.value)


def test_moto_checks_queue_arns_and_the_batch_form_of_a_granted_action(
    stack: LocalStack, identities: FunctionIdentities
) -> None:
    # Given ClosePeriods' identity (sqs:SendMessage on the close queue only)
    with identities.activate("ClosePeriods"):
        # When it sends a batch to the close queue
        aws.sqs().send_message_batch(
            QueueUrl=stack.close_queue_url, Entries=[{"Id": "0", "MessageBody": "{}"}]
        )

        # Then that is served, and a message to the fan-out queue is refused
        with pytest.raises(ClientError) as refused:
            aws.sqs().send_message(QueueUrl=stack.fanout_queue_url, MessageBody="{}")
    assert is_access_denied(refused.value)


def test_the_harness_keeps_an_identity_allowed_everything(
    stack: LocalStack, identities: FunctionIdentities
) -> None:
    # Given IAM authentication on, outside any function's activation
    # When the harness reads the table and the queues with its default clients
    boto3.client("dynamodb").scan(TableName=stack.table_name)
    boto3.client("sqs").receive_message(QueueUrl=stack.fanout_queue_url)

    # Then it does so as the harness user, while the environment's fake credentials are refused
    assert caller().endswith(f":user/{stack.table_name}-harness")
    with pytest.raises(ClientError) as refused:
        boto3.Session(region_name=REGION).client("dynamodb").list_tables()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# ---- (b) switching identities ----


def test_switching_functions_rebuilds_clients_as_the_new_function_and_registered_hooks_still_fire(
    stack: LocalStack, identities: FunctionIdentities
) -> None:
    # Given a hook registered for every function's DynamoDB calls
    seen: list[str] = []
    identities.register("before-call.dynamodb", lambda model, **_: seen.append(model.name))

    # When RecordActivity runs twice, then InvoiceAccount, each reading a period
    with identities.activate("RecordActivity"):
        record_activity_client = aws.dynamodb()
        read_period(record_activity_client, stack.table_name)
        record_activity_caller = caller()
    with identities.activate("RecordActivity"):
        reused = aws.dynamodb()
    read_period(boto3.client("dynamodb"), stack.table_name)
    with identities.activate("InvoiceAccount"):
        invoice_account_client = aws.dynamodb()
        read_period(invoice_account_client, stack.table_name)
        invoice_account_caller = caller()

    # Then the same function keeps its clients, a switch rebuilds them with the new role, the hook fires for
    # both functions (not for the harness's read), and outside the activations the harness is the caller
    assert reused is record_activity_client
    assert invoice_account_client is not record_activity_client
    assert f":assumed-role/{stack.table_name}-RecordActivity/" in record_activity_caller
    assert f":assumed-role/{stack.table_name}-InvoiceAccount/" in invoice_account_caller
    assert seen == ["Query", "Query"]
    assert caller().endswith("-harness")


def test_clients_built_outside_an_activation_are_not_used_inside_one(
    stack: LocalStack, identities: FunctionIdentities
) -> None:
    # Given RecordActivity ran, then the cached clients were reset and rebuilt by harness code
    with identities.activate("RecordActivity"):
        aws.dynamodb()
    aws.reset_clients()
    harness_client = aws.dynamodb()

    # When RecordActivity runs again
    with identities.activate("RecordActivity"):
        client = aws.dynamodb()

    # Then it does not run with the harness's client
    assert client is not harness_client


# ---- (c) the census: API calls to IAM authorizations ----


@pytest.mark.parametrize(
    ("service", "operation", "params", "expected"),
    [
        pytest.param(
            "sqs",
            "SendMessageBatch",
            {"QueueUrl": f"{QUEUE_URL}/q-close", "Entries": [{"Id": "0", "MessageBody": "{}"}]},
            [Call("sqs:SendMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:q-close")],
            id="SendMessageBatch",
        ),
        pytest.param(
            "sqs",
            "DeleteMessageBatch",
            {"QueueUrl": f"{QUEUE_URL}/q-close", "Entries": [{"Id": "0", "ReceiptHandle": "r"}]},
            [Call("sqs:DeleteMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:q-close")],
            id="DeleteMessageBatch",
        ),
        pytest.param(
            "sqs",
            "ChangeMessageVisibilityBatch",
            {"QueueUrl": f"{QUEUE_URL}/q-fanout", "Entries": []},
            [Call("sqs:ChangeMessageVisibility", f"arn:aws:sqs:{REGION}:{ACCOUNT}:q-fanout")],
            id="ChangeMessageVisibilityBatch",
        ),
        pytest.param(
            "dynamodb",
            "BatchGetItem",
            {"RequestItems": {"metering-test-offline": {"Keys": []}, "other": {"Keys": []}}},
            [
                Call("dynamodb:BatchGetItem", TABLE_ARN),
                Call("dynamodb:BatchGetItem", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/other"),
            ],
            id="BatchGetItem",
        ),
        pytest.param(
            "dynamodb",
            "Query",
            {"TableName": "metering-test-offline", "IndexName": "OpenPeriods"},
            [Call("dynamodb:Query", f"{TABLE_ARN}/index/OpenPeriods")],
            id="Query on an index",
        ),
        pytest.param(
            "events",
            "PutEvents",
            {
                "Entries": [
                    {"EventBusName": "metering-test-offline", "Detail": "{}"},
                    {"Detail": "{}"},
                    {"EventBusName": BUS_ARN, "Detail": "{}"},
                ]
            },
            [
                Call("events:PutEvents", BUS_ARN),
                Call("events:PutEvents", f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/default"),
            ],
            id="PutEvents",
        ),
        pytest.param(
            "s3",
            "HeadObject",
            {"Bucket": "claims", "Key": "renames/a.txt"},
            [Call("s3:GetObject", "arn:aws:s3:::claims/renames/a.txt")],
            id="HeadObject",
        ),
        pytest.param(
            "s3",
            "GetObject",
            {"Bucket": "claims", "Key": "renames/a.txt"},
            [Call("s3:GetObject", "arn:aws:s3:::claims/renames/a.txt")],
            id="GetObject",
        ),
        pytest.param(
            "lambda",
            "Invoke",
            {"FunctionName": "metering-test-offline-close-periods", "InvocationType": "Event"},
            [
                Call(
                    "lambda:InvokeFunction",
                    f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:metering-test-offline-close-periods",
                )
            ],
            id="Invoke",
        ),
        pytest.param(
            "sns",
            "Publish",
            {"TopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts", "Message": "m"},
            [Call("sns:Publish", f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts")],
            id="Publish",
        ),
        pytest.param(
            "secretsmanager",
            "GetSecretValue",
            {"SecretId": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:cursor-key-AbCdEf"},
            [
                Call(
                    "secretsmanager:GetSecretValue",
                    f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:cursor-key-AbCdEf",
                )
            ],
            id="GetSecretValue by ARN",
        ),
        pytest.param(
            "secretsmanager",
            "GetSecretValue",
            {"SecretId": "cursor-key"},
            [
                Call(
                    "secretsmanager:GetSecretValue",
                    f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:cursor-key-??????",
                )
            ],
            id="GetSecretValue by name",
        ),
    ],
)
def test_each_call_maps_to_the_iam_actions_and_resources_it_needs(
    service: str, operation: str, params: dict[str, Any], expected: list[Call]
) -> None:
    # Given an API call's parameters
    # When it is mapped to IAM authorizations
    calls = calls_of(service, operation, params, ARNS)

    # Then batch forms need their single action, and each resource ARN comes from the parameters
    assert calls == expected


def test_the_census_records_each_functions_calls_through_its_own_session(
    stack: LocalStack, roles: StackRoles, identities: FunctionIdentities
) -> None:
    # Given a census attached to the identities
    census = Census(roles.stack.region, roles.stack.account_id)
    census.attach(identities)

    # When ClosePeriods queues a close, InvoiceAccount reads a period, and the harness reads the queue
    with identities.activate("ClosePeriods"):
        aws.sqs().send_message_batch(
            QueueUrl=stack.close_queue_url, Entries=[{"Id": "0", "MessageBody": "{}"}]
        )
    with identities.activate("InvoiceAccount"):
        read_period(aws.dynamodb(), stack.table_name)
    boto3.client("sqs").receive_message(QueueUrl=stack.close_queue_url)

    # Then each function's calls are recorded under its name with their ARNs, the harness's are not, and
    # each role grants what its function did
    close_queue = Call("sqs:SendMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:{stack.table_name}-close")
    read = Call("dynamodb:Query", roles.resolver.attributes["MeteringTable"]["Arn"])
    assert census.calls("ClosePeriods") == {close_queue: 1}
    assert census.calls("InvoiceAccount") == {read: 1}
    assert census.operations("ClosePeriods") == {"sqs:SendMessageBatch": 1}
    assert census.functions == ["ClosePeriods", "InvoiceAccount"]
    findings = census_findings(roles, census)
    assert findings["ClosePeriods"].ungranted == []
    assert findings["InvoiceAccount"].ungranted == []
    assert findings["RecordActivity"].ungranted == []


# ---- (d) the evaluator ----


def test_a_query_on_an_index_is_not_granted_by_a_grant_on_the_table() -> None:
    # Given InvoiceAccount's policy (dynamodb:Query on the table's ARN)
    policy = stack_roles(TEMPLATE, OFFLINE_STACK).policies["InvoiceAccount"]
    on_index = Call("dynamodb:Query", f"{TABLE_ARN}/index/OpenPeriods")
    on_table = Call("dynamodb:Query", TABLE_ARN)

    # When both queries are evaluated
    refused = ungranted_calls(policy, [on_index, on_table])

    # Then only the one on the index is reported, and the table one is granted by the Table statement
    assert [decision.call for decision in refused] == [on_index]
    assert evaluate(policy, on_table).allowed_by == ("Table",)


def test_unused_grants_are_reported_less_those_aws_uses_on_the_functions_behalf() -> None:
    # Given InvoiceAccount's calls on a close path that makes no Query
    roles = stack_roles(TEMPLATE, OFFLINE_STACK)
    calls = [
        Call("dynamodb:PutItem", TABLE_ARN),
        Call("dynamodb:UpdateItem", TABLE_ARN),
        Call("events:PutEvents", BUS_ARN),
    ]

    # When its unused grants are listed
    reasons = on_behalf_grants(roles)["InvoiceAccount"]
    unused = unused_grants(roles.policies["InvoiceAccount"], calls, reasons)

    # Then the Query grant is reported; the log and close-queue grants are not (the Lambda runtime and the
    # SQS event source mapping use them), and each of those carries its reason
    assert unused == [Grant("Table", "dynamodb:Query", TABLE_ARN)]
    close_queue = f"arn:aws:sqs:{REGION}:{ACCOUNT}:metering-test-offline-close"
    assert "event source mapping" in reasons[Call("sqs:ReceiveMessage", close_queue)]
    assert "runtime" in next(why for call, why in reasons.items() if call.action == "logs:PutLogEvents")


def test_the_census_flags_a_close_path_its_role_would_refuse_on_aws() -> None:
    # Given InvoiceAccount's calls on a close path that seals (UpdateItem), reads the subscriptions with
    # BatchGetItem, stores the invoice (PutItem) and publishes it (PutEvents)
    roles = stack_roles(TEMPLATE, OFFLINE_STACK)
    census = Census(REGION, ACCOUNT)
    table = OFFLINE_STACK.table_name
    census.record("InvoiceAccount", "dynamodb", "UpdateItem", {"TableName": table, "Key": key("a#2026-10")})
    census.record("InvoiceAccount", "dynamodb", "BatchGetItem", {"RequestItems": {table: {"Keys": []}}})
    census.record("InvoiceAccount", "dynamodb", "PutItem", {"TableName": table, "Item": key("a#2026-10")})
    census.record("InvoiceAccount", "events", "PutEvents", {"Entries": [{"EventBusName": table}]})

    # When the census is checked against the role
    findings = census_findings(roles, census)["InvoiceAccount"]

    # Then BatchGetItem is not granted (no invoice would be issued on AWS), and Query is granted but never
    # used
    assert [d.call for d in findings.ungranted] == [Call("dynamodb:BatchGetItem", TABLE_ARN)]
    assert findings.unused == [Grant("Table", "dynamodb:Query", TABLE_ARN)]
    assert "not granted: dynamodb:BatchGetItem on " + TABLE_ARN in findings.describe()


def invoice_account_guard(stack: LocalStack, *dynamodb_calls: tuple[str, dict[str, Any]]) -> RoleGuard:
    """A role guard over `stack` (no identity created: nothing runs on moto) whose census holds
    InvoiceAccount making these DynamoDB calls, and publishing on its bus."""
    guard = RoleGuard(
        stack_roles(TEMPLATE, stack), FunctionIdentities(boto3.Session(region_name=REGION), {}, {})
    )
    for operation, params in dynamodb_calls:
        guard.census.record("InvoiceAccount", "dynamodb", operation, params)
    guard.census.record(
        "InvoiceAccount", "events", "PutEvents", {"Entries": [{"EventBusName": stack.event_bus_name}]}
    )
    return guard


def test_a_tally_over_stacks_counts_a_grant_used_if_any_stack_used_it() -> None:
    # Given two local stacks with their own names: in the first InvoiceAccount sealed a period and was
    # refused a BatchGetItem, in the second it queried
    first = OFFLINE_STACK
    second = LocalStack.named(
        "test-other", "metering-claims-other", TEMPLATE, region=REGION, account_id=ACCOUNT
    )
    tally = CensusTally()
    tally.add(
        invoice_account_guard(
            first,
            ("UpdateItem", {"TableName": first.table_name}),
            ("BatchGetItem", {"RequestItems": {first.table_name: {"Keys": []}}}),
        )
    )
    tally.add(invoice_account_guard(second, ("Query", {"TableName": second.table_name})))

    # When the tally's findings are read
    findings = tally.findings()["InvoiceAccount"]

    # Then the refusal is reported once with the stack's name generalised, and only the grant no stack used
    # (PutItem) is unused
    assert [d.call for d in findings.ungranted] == [
        Call("dynamodb:BatchGetItem", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/<stack>")
    ]
    assert [(g.sid, g.action) for g in findings.unused] == [("Table", "dynamodb:PutItem")]


def test_grants_aws_uses_for_record_activity_carry_their_reasons() -> None:
    # Given RecordActivity's role (an encrypted usage-alert topic, a claim-check bucket)
    roles = stack_roles(TEMPLATE, OFFLINE_STACK)
    policy = roles.policies["RecordActivity"]

    # When it made every call its code makes, and nothing else
    calls = [
        *(Call(f"dynamodb:{a}", TABLE_ARN) for a in ("PutItem", "UpdateItem", "Query")),
        *(Call(f"dynamodb:{a}", TABLE_ARN) for a in ("BatchGetItem", "BatchWriteItem")),
        Call("sqs:SendMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:metering-test-offline-fanout"),
        Call("sns:Publish", f"arn:aws:sns:{REGION}:{ACCOUNT}:metering-test-offline-usage-alerts"),
        Call("events:PutEvents", BUS_ARN),
        Call("s3:GetObject", "arn:aws:s3:::metering-claims-offline/renames/a.txt"),
    ]

    # Then nothing is unused: the topic's key (used by SNS), s3:ListBucket (checked by S3 for a missing
    # object) and the consumed queues are AWS's uses; a Condition bears on no call the function makes
    assert unused_grants(policy, calls, on_behalf_grants(roles)["RecordActivity"]) == []
    assert conditional_calls(policy, calls) == []


def test_the_evaluator_applies_wildcards_explicit_denies_and_reports_conditions() -> None:
    # Given a policy with wildcards, a Deny and a conditional grant
    policy = FunctionPolicy.of(
        "Example",
        {
            "example": {
                "Statement": [
                    {
                        "Sid": "Read",
                        "Effect": "Allow",
                        "Action": "dynamodb:Get*",
                        "Resource": "arn:aws:dynamodb:*:table/t?",
                    },
                    {
                        "Sid": "NotT2",
                        "Effect": "Deny",
                        "Action": "dynamodb:GetItem",
                        "Resource": "*:table/t2",
                    },
                    {
                        "Sid": "Key",
                        "Effect": "Allow",
                        "Action": "kms:Decrypt",
                        "Resource": "*",
                        "Condition": {"StringEquals": {"kms:ViaService": "sns.eu-central-1.amazonaws.com"}},
                    },
                ]
            }
        },
    )
    table = "arn:aws:dynamodb:eu-central-1:123456789012:table"
    get_t1 = Call("dynamodb:getitem", f"{table}/t1")
    get_t2 = Call("dynamodb:GetItem", f"{table}/t2")
    get_t10 = Call("dynamodb:GetItem", f"{table}/t10")
    put_t1 = Call("dynamodb:PutItem", f"{table}/t1")
    send = Call("sqs:SendMessage", "arn:aws:sqs:eu-central-1:123456789012:q")
    decrypt = Call("kms:Decrypt", "arn:aws:kms:eu-central-1:123456789012:key/k")

    # When calls are evaluated
    # Then actions match case-insensitively with `*`, `?` matches one character, a Deny wins, an action no
    # statement names is not granted, and a conditional grant allows with its condition reported
    assert evaluate(policy, get_t1).allowed
    assert evaluate(policy, get_t2).denied_by == ("NotT2",)
    assert {d.call for d in ungranted_calls(policy, [get_t1, get_t2, put_t1, get_t10, send])} == {
        get_t2,
        get_t10,
        put_t1,
        send,
    }
    assert [d.conditions for d in conditional_calls(policy, [decrypt])] == [
        ('Allow Key: {"StringEquals": {"kms:ViaService": "sns.eu-central-1.amazonaws.com"}}',)
    ]


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param({"Effect": "Allow", "NotAction": "dynamodb:*", "Resource": "*"}, id="NotAction"),
        pytest.param(
            {"Effect": "Allow", "Action": "sqs:*", "NotResource": "arn:aws:sqs:*:*:q"}, id="NotResource"
        ),
    ],
)
def test_a_statement_the_evaluator_does_not_read_fails(statement: dict[str, Any]) -> None:
    # Given a policy statement of a form the evaluator does not read
    # When the policy is read
    # Then it fails rather than evaluating it as something else
    with pytest.raises(UnsupportedTemplateError, match="only Allow or Deny of Action on Resource"):
        FunctionPolicy.of("Example", {"example": {"Statement": [statement]}})
