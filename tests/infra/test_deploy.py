"""The stack deployed: `template.yaml`, with both of its transforms applied, created in moto's CloudFormation.

It shows that the template deploys at all, that the activity rule takes the CRM's events and not the stack's
own publications, and that retention is a stage decision: a dev stack can be deleted and deployed again, a
prod stack keeps its table. What moto cannot create is left out, each with its reason (below)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError
from metering_testbench.moto_deploy import (
    DROPPED_FOR_MOTO,
    S3Location,
    moto_template,
    resolve_language_extensions,
    upload_placeholder_package,
)
from metering_tools.template import UnsupportedTemplateError, expand, load_template, parse_template
from moto import mock_aws

from tests.helpers import EVENTS_DIR, REGION

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef

DEV = {"Stage": "dev", "TableDeletionProtection": "false"}
PROD = {"Stage": "prod"}
ARTIFACTS_BUCKET = "metering-deployment-artifacts"

# What the moto deployment leaves out, by logical id; DROPPED_FOR_MOTO says why for each type.
LEFT_OUT_BY_TYPE = {
    "RecordActivityFunctionActivity": "AWS::Lambda::EventSourceMapping",
    "RecordActivityFunctionFanOut": "AWS::Lambda::EventSourceMapping",
    "InvoiceAccountFunctionClose": "AWS::Lambda::EventSourceMapping",
    "CountContactsFunctionNewContacts": "AWS::Lambda::EventSourceMapping",
    "ClosePeriodsFunctionEventInvokeConfig": "AWS::Lambda::EventInvokeConfig",
    "ClosePeriodsFunctionHourly": "AWS::Scheduler::Schedule",
    "ActivityQueuePolicy": "AWS::SQS::QueuePolicy",
    "RuleTargetDLQPolicy": "AWS::SQS::QueuePolicy",
    "InternalQueuesPolicy": "AWS::SQS::QueuePolicy",
    "ProducerBusPolicy": "AWS::Events::EventBusPolicy",
    "UsageAlertEmailSubscription": "AWS::SNS::Subscription",
    "OperatorAlarmEmailSubscription": "AWS::SNS::Subscription",
    "UsageHttpApi": "AWS::ApiGatewayV2::Api",
    "UsageHttpApiApiGatewayDefaultStage": "AWS::ApiGatewayV2::Stage",
    "UsageApiCursorSecret": "AWS::SecretsManager::Secret",
    "UsageApiThrottledRequests": "AWS::Logs::MetricFilter",
} | {
    name: "AWS::CloudWatch::Alarm"
    for name, resource in load_template()["Resources"].items()
    if resource["Type"] == "AWS::CloudWatch::Alarm"
}
# ... and what refers to something left out, which CloudFormation would reject.
LEFT_OUT_AS_DEPENDENT = {
    "Dashboard": "refers to ActivityDLQAlarm, which is left out",  # its alarm widget lists every alarm
    "DashboardUrl": "refers to Dashboard, which is left out",  # an output
    "UsageApiRole": "refers to UsageApiCursorSecret, which is left out",  # it may read the cursor key
    "UsageApiFunction": "refers to UsageApiCursorSecret, which is left out",  # its CURSOR_SECRET_ARN
    "UsageApiFunctionUnroutedPermission": "refers to UsageHttpApi, which is left out",  # API Gateway invokes
    "UsageApiUrl": "refers to UsageHttpApi, which is left out",  # an output
    "UsageApiFunctionArn": "refers to UsageApiFunction, which is left out",  # an output
}


@dataclass(frozen=True, slots=True)
class MotoCloudFormation:
    """moto's CloudFormation with a deployment package uploaded, as `sam deploy` has before it creates."""

    client: CloudFormationClient
    package: S3Location

    def deploy(self, stack: str, parameters: Mapping[str, str]) -> dict[str, str]:
        """Creates the stack and returns its outputs; moto must create every unconditional resource (it
        skips a type it does not know with a mere warning)."""
        template = moto_template(parameters, self.package, REGION)
        self.client.create_stack(
            StackName=stack,
            TemplateBody=template.json(),
            Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()],
            Capabilities=["CAPABILITY_IAM"],
        )
        [described] = self.client.describe_stacks(StackName=stack)["Stacks"]
        assert described["StackStatus"] == "CREATE_COMPLETE"
        resources = template.body["Resources"]
        unconditional = {name for name, resource in resources.items() if "Condition" not in resource}
        created = self.client.describe_stack_resources(StackName=stack)["StackResources"]
        # a skipped resource is listed without its logical id
        assert unconditional <= {resource.get("LogicalResourceId") for resource in created}
        return {output["OutputKey"]: output["OutputValue"] for output in described["Outputs"]}


@pytest.fixture
def cloudformation() -> Iterator[MotoCloudFormation]:
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(
            Bucket=ARTIFACTS_BUCKET,
            CreateBucketConfiguration={"LocationConstraint": REGION},  # type: ignore[typeddict-item]
        )
        package = upload_placeholder_package(s3, ARTIFACTS_BUCKET)
        yield MotoCloudFormation(boto3.client("cloudformation", region_name=REGION), package)


def table_names() -> list[str]:
    return boto3.client("dynamodb", region_name=REGION).list_tables()["TableNames"]


def put_event(bus: str, envelope: dict[str, Any]) -> None:
    entry: PutEventsRequestEntryTypeDef = {
        "EventBusName": bus,
        "Source": envelope["source"],
        "DetailType": envelope["detail-type"],
        "Detail": json.dumps(envelope["detail"]),
        "Resources": envelope["resources"],
    }
    response = boto3.client("events", region_name=REGION).put_events(Entries=[entry])
    assert response["FailedEntryCount"] == 0


# ---- retention by stage ----


@pytest.mark.parametrize(("stage", "policy"), [("dev", "Delete"), ("staging", "Delete"), ("prod", "Retain")])
def test_only_prod_keeps_the_table_when_its_stack_is_deleted(stage: str, policy: str) -> None:
    # When AWS::LanguageExtensions decides the table's policies for the stage
    table = resolve_language_extensions(load_template(), {"Stage": stage})["Resources"]["MeteringTable"]
    # Then prod retains the table and its data, dev and staging delete it with their stack
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == (policy, policy)
    # And the table keeps its fixed name, which the tools and runbook use
    assert table["Properties"]["TableName"] == {"Fn::Sub": "metering-${Stage}"}


def test_a_language_extension_not_resolved_here_is_refused() -> None:
    # Given the template as written with an Fn::Length, which a later change may add
    template = parse_template()
    template["Resources"]["MeteringTable"]["Properties"]["TableClass"] = {"Fn::Length": [1, 2]}
    # When it is read as CloudFormation creates it, then it is refused, naming the construct and where it is
    with pytest.raises(UnsupportedTemplateError, match=r"Fn::Length at template\.Resources\.MeteringTable"):
        expand(template)


# ---- the deployment ----


def test_moto_leaves_out_exactly_these_resources(cloudformation: MotoCloudFormation) -> None:
    # When the dev stack is prepared for moto
    template = moto_template(DEV, cloudformation.package, REGION)
    # Then only what moto cannot create or must not run is left out, each with its reason
    by_type = {name: DROPPED_FOR_MOTO[kind] for name, kind in LEFT_OUT_BY_TYPE.items()}
    assert template.dropped == by_type | LEFT_OUT_AS_DEPENDENT
    assert all(reason.strip() for reason in template.dropped.values())


def test_the_activity_rule_takes_crm_events_not_the_stacks_own(cloudformation: MotoCloudFormation) -> None:
    # Given the dev stack, deployed
    outputs = cloudformation.deploy("metering-dev", DEV)
    contact_created = json.loads((EVENTS_DIR / "contact_created.json").read_text(encoding="utf-8"))
    # When the CRM puts a Contact Created event on the bus, and the same event arrives with source `metering`
    put_event(outputs["EventBusName"], contact_created)
    put_event(outputs["EventBusName"], contact_created | {"source": "metering"})
    # Then only the CRM's event reaches the activity queue, as its EventBridge envelope
    sqs = boto3.client("sqs", region_name=REGION)
    received = sqs.receive_message(QueueUrl=outputs["ActivityQueueUrl"], MaxNumberOfMessages=10)
    [message] = received["Messages"]
    envelope = json.loads(message["Body"])
    assert (envelope["source"], envelope["detail-type"]) == ("crm", "Contact Created")
    assert envelope["detail"] == contact_created["detail"]


def test_a_dev_stack_deploys_again_after_it_is_deleted(cloudformation: MotoCloudFormation) -> None:
    # Given the dev stack, deployed and deleted
    cloudformation.deploy("metering-dev", DEV)
    cloudformation.client.delete_stack(StackName="metering-dev")
    # Then its table went with it
    assert "metering-dev" not in table_names()
    # And the stack deploys again, with a new table of the same name
    outputs = cloudformation.deploy("metering-dev", DEV)
    assert outputs["TableName"] == "metering-dev"
    assert "metering-dev" in table_names()


def test_a_prod_stack_keeps_its_table_so_it_cannot_be_created_again_over_it(
    cloudformation: MotoCloudFormation,
) -> None:
    # Given the prod stack, deployed and deleted
    cloudformation.deploy("metering-prod", PROD)
    cloudformation.client.delete_stack(StackName="metering-prod")
    # Then its table is still there
    assert "metering-prod" in table_names()
    # And a new stack cannot create its table over the retained one (moto's answer is not well-formed XML)
    with pytest.raises((ClientError, ResponseParserError), match="Table already exists: metering-prod"):
        cloudformation.deploy("metering-prod", PROD)
