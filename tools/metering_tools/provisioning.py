"""Local resources built from `template.yaml`, so `simulate` and the tests can never drift from the stack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO_ROOT / "template.yaml"


class _CloudFormationLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (`!Ref`, `!Sub`, ...) as plain values."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]


_CloudFormationLoader.add_multi_constructor("!", _tag)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        document: dict[str, Any] = yaml.load(stream, Loader=_CloudFormationLoader)
    return document


def table_definition(template: dict[str, Any], table_name: str) -> dict[str, Any]:
    """CreateTable arguments for the template's MeteringTable, under another name."""
    properties = template["Resources"]["MeteringTable"]["Properties"]
    definition: dict[str, Any] = {
        "TableName": table_name,
        "BillingMode": properties["BillingMode"],
        "AttributeDefinitions": properties["AttributeDefinitions"],
        "KeySchema": properties["KeySchema"],
    }
    if "GlobalSecondaryIndexes" in properties:
        definition["GlobalSecondaryIndexes"] = properties["GlobalSecondaryIndexes"]
    return definition


@dataclass(frozen=True, slots=True)
class LocalStack:
    """Names and URLs of one local copy of the stack's stateful resources."""

    table_name: str
    fanout_queue_url: str
    close_queue_url: str
    event_bus_name: str
    claim_check_bucket: str

    def environment(self) -> dict[str, str]:
        """The functions' environment variables, as the template sets them."""
        return {
            "TABLE_NAME": self.table_name,
            "FANOUT_QUEUE_URL": self.fanout_queue_url,
            "CLOSE_QUEUE_URL": self.close_queue_url,
            "EVENT_BUS_NAME": self.event_bus_name,
            "CLAIM_CHECK_BUCKET": self.claim_check_bucket,
        }


def template_default(template: dict[str, Any], parameter: str) -> str:
    return str(template["Parameters"][parameter]["Default"])


def provision(name: str, claim_check_bucket: str, template: dict[str, Any] | None = None) -> LocalStack:
    """Create the table (with TTL), the fan-out and close queues, the bus and the claim-check bucket."""
    template = template or load_template()
    dynamodb = boto3.client("dynamodb")
    dynamodb.create_table(**table_definition(template, name))
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    ttl = template["Resources"]["MeteringTable"]["Properties"]["TimeToLiveSpecification"]
    dynamodb.update_time_to_live(
        TableName=name,
        TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
    )
    sqs = boto3.client("sqs")
    queues = {
        kind: sqs.create_queue(QueueName=f"{name}-{kind}", Attributes={"VisibilityTimeout": "360"})[
            "QueueUrl"
        ]
        for kind in ("fanout", "close")
    }
    boto3.client("events").create_event_bus(Name=name)
    boto3.client("s3").create_bucket(
        Bucket=claim_check_bucket,
        CreateBucketConfiguration={"LocationConstraint": boto3.session.Session().region_name},  # type: ignore[typeddict-item]
    )
    return LocalStack(name, queues["fanout"], queues["close"], name, claim_check_bucket)


def tear_down(stack: LocalStack) -> None:
    """Remove a stack made by `provision` (used against a shared endpoint; embedded moto just goes away)."""
    boto3.client("dynamodb").delete_table(TableName=stack.table_name)
    sqs = boto3.client("sqs")
    for url in (stack.fanout_queue_url, stack.close_queue_url):
        sqs.delete_queue(QueueUrl=url)
    boto3.client("events").delete_event_bus(Name=stack.event_bus_name)
    s3 = boto3.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.claim_check_bucket):
        for entry in page.get("Contents", []):
            s3.delete_object(Bucket=stack.claim_check_bucket, Key=entry["Key"])
    s3.delete_bucket(Bucket=stack.claim_check_bucket)
