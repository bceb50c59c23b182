"""A local copy of the stack, named forward from its stage as `template.yaml` names it, so `simulate`, the
tests and the role checks can never drift from the stack: `provision` creates the stateful resources the
functions call, and `LocalStack.resolver` gives every other resource of the template the name and ARN it
would have in this stack, for the functions' environment and their roles."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.exceptions import ClientError

from metering_tools.template import NO_VALUE, Resolver, functions, load_template, references

TABLE = "MeteringTable"
QUEUES = ("ActivityQueue", "FanOutQueue", "CloseQueue")
BUS = "EventBus"
CURSOR_SECRET = "UsageApiCursorSecret"
CREATED = (TABLE, BUS, *QUEUES, CURSOR_SECRET)
PROVISIONED = frozenset({*CREATED, "EventBusName", "ClaimCheckBucketName"})
"""What a local copy names itself: the resources `provision` creates and the parameters naming them."""
NAME_PROPERTIES: Mapping[str, str | None] = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::Events::EventBus": "Name",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::Serverless::Function": "FunctionName",
    "AWS::IAM::Role": "RoleName",
    "AWS::KMS::Key": None,
    "AWS::SecretsManager::Secret": "Name",
}
"""The resource types the functions' roles and environment may name, and the property holding the name."""


@dataclass(frozen=True, slots=True)
class Arns:
    """ARNs of named resources in one account and region (an ARN given stays as it is): the one builder for
    local values and the census."""

    region: str
    account_id: str
    partition: str = "aws"

    def _in(self, service: str, resource: str) -> str:
        return f"arn:{self.partition}:{service}:{self.region}:{self.account_id}:{resource}"

    def table(self, name: str) -> str:
        return name if name.startswith("arn:") else self._in("dynamodb", f"table/{name}")

    def queue(self, url_or_name: str) -> str:
        """From a queue URL (whose path names its account), a name or an ARN."""
        if "://" not in url_or_name:
            return url_or_name if url_or_name.startswith("arn:") else self._in("sqs", url_or_name)
        account, name = urlparse(url_or_name).path.strip("/").split("/")[-2:]
        return f"arn:{self.partition}:sqs:{self.region}:{account}:{name}"

    def bus(self, name: str | None) -> str:
        name = name or "default"
        return name if name.startswith("arn:") else self._in("events", f"event-bus/{name}")

    def bucket(self, bucket: str, key: str | None = None) -> str:
        return f"arn:{self.partition}:s3:::{bucket}" + (f"/{key}" if key is not None else "")

    def function(self, name: str, qualifier: str | None = None) -> str:
        """From a function's name, partial ARN (`account:function:name`) or ARN, with its qualifier."""
        if not name.startswith("arn:"):
            partial_arn = name if ":function:" in name else f"{self.account_id}:function:{name}"
            name = f"arn:{self.partition}:lambda:{self.region}:{partial_arn}"
        return f"{name}:{qualifier}" if qualifier else name

    def secret(self, name: str) -> str:
        """From a secret's name, which IAM sees with a random suffix (`-??????`), or its ARN."""
        return name if name.startswith("arn:") else self._in("secretsmanager", f"secret:{name}-??????")

    def values(self, kind: str, name: str) -> tuple[str, dict[str, str]]:
        """(what `Ref` returns, the `GetAtt` attributes) of a resource of this type with this name."""
        match kind:
            case "AWS::DynamoDB::Table":
                return name, {"Arn": self.table(name), "StreamArn": f"{self.table(name)}/stream/local"}
            case "AWS::SQS::Queue":
                url = f"https://sqs.{self.region}.amazonaws.com/{self.account_id}/{name}"
                return url, {"Arn": self.queue(name), "QueueName": name}
            case "AWS::Events::EventBus":
                return name, {"Arn": self.bus(name), "Name": name}
            case "AWS::Logs::LogGroup":
                return name, {"Arn": self._in("logs", f"log-group:{name}:*")}
            case "AWS::SNS::Topic":
                return self._in("sns", name), {"TopicArn": self._in("sns", name), "TopicName": name}
            case "AWS::KMS::Key":
                key_id = str(uuid.uuid5(uuid.NAMESPACE_URL, name))
                return key_id, {"Arn": self._in("kms", f"key/{key_id}"), "KeyId": key_id}
            case "AWS::IAM::Role":
                return name, {"Arn": f"arn:{self.partition}:iam::{self.account_id}:role/{name}"}
            case "AWS::SecretsManager::Secret":  # a created secret's ARN ends in a random suffix: it is given
                arn = name if name.startswith("arn:") else self._in("secretsmanager", f"secret:{name}")
                return arn, {"Id": arn}
        return name, {"Arn": self.function(name)}


@dataclass(frozen=True, slots=True)
class LocalStack:
    """One local copy of the stack: its stage, where it is, and what `provision` created for it."""

    stage: str
    claim_check_bucket: str
    region: str
    account_id: str
    names: Mapping[str, str]
    """Logical id -> the name the template gives it in this stage, for the resources `provision` creates."""
    queue_urls: Mapping[str, str] = field(default_factory=dict)
    """Logical id -> URL of each created queue (its endpoint's own form)."""
    cursor_secret_arn: str = ""
    """The created cursor key's ARN (empty: named as the template names it, never created)."""
    parameters: Mapping[str, str] = field(default_factory=dict)
    """Values of further parameters this copy deploys with (the others take their defaults)."""

    @classmethod
    def named(
        cls,
        stage: str,
        claim_check_bucket: str,
        template: Mapping[str, Any] | None = None,
        *,
        region: str | None = None,
        account_id: str = "123456789012",
    ) -> LocalStack:
        """The stack as the template names it for `stage`, before (or without) creating anything."""
        region = region or boto3.session.Session().region_name
        if not region:
            raise ValueError("no region: pass one, or set AWS_DEFAULT_REGION")
        stack = cls(stage, claim_check_bucket, region, account_id, {})
        names = stack._names(template or load_template())
        return replace(stack, names={logical_id: names[logical_id] for logical_id in CREATED})

    @property
    def table_name(self) -> str:
        return self.names[TABLE]

    @property
    def event_bus_name(self) -> str:
        return self.names[BUS]

    @property
    def activity_queue_url(self) -> str:
        return self.queue_url("ActivityQueue")

    @property
    def fanout_queue_url(self) -> str:
        return self.queue_url("FanOutQueue")

    @property
    def close_queue_url(self) -> str:
        return self.queue_url("CloseQueue")

    def queue_url(self, logical_id: str) -> str:
        return (
            self.queue_urls.get(logical_id) or self.arns.values("AWS::SQS::Queue", self.names[logical_id])[0]
        )

    @property
    def arns(self) -> Arns:
        return Arns(self.region, self.account_id)

    def _naming(self, template: Mapping[str, Any]) -> Resolver:
        """The parameters this copy deploys with: its stage, its bus passed as an existing bus (as the CRM's
        production bus is), its claim-check bucket; and its pseudo parameters."""
        name, bus = f"metering-{self.stage}", self.names.get(BUS) or f"metering-{self.stage}"
        parameters = {"EventBusName": bus, "ClaimCheckBucketName": self.claim_check_bucket}
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": self.arns.partition,
            "AWS::StackName": name,
            "AWS::StackId": f"arn:{self.arns.partition}:cloudformation:{self.region}:{self.account_id}:stack/"
            f"{name}/{uuid.uuid5(uuid.NAMESPACE_URL, name)}",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": NO_VALUE,
        }
        return Resolver(template, {**self.parameters, "Stage": self.stage, **parameters}, pseudo=pseudo)

    def _names(self, template: Mapping[str, Any]) -> dict[str, str]:
        """Every resource the functions' roles and environment may name, named as the template names it."""
        naming, names = self._naming(template), dict(self.names)
        for logical_id, resource in template["Resources"].items():
            if resource["Type"] in NAME_PROPERTIES and logical_id not in names:
                declared = resource.get("Properties", {}).get(NAME_PROPERTIES[resource["Type"]] or "")
                default = f"metering-{self.stage}-{logical_id}"  # CloudFormation's, less its random suffix
                names[logical_id] = default if declared is None else str(naming.resolve(declared, logical_id))
        return names

    def resolver(self, template: Mapping[str, Any] | None = None) -> Resolver:
        """Every reference the functions' environment and roles may make, resolved for this copy: what
        `provision` created, and for the others plausible names and ARNs in the same account and region (the
        bus passed in also stands for the template's own `EventBus`)."""
        template = template or load_template()
        naming, names = self._naming(template), self._names(template)
        if self.cursor_secret_arn:
            names[CURSOR_SECRET] = self.cursor_secret_arn
        refs: dict[str, Any] = {}
        attributes: dict[str, dict[str, str]] = {}
        for logical_id, name in names.items():
            kind = template["Resources"][logical_id]["Type"]
            refs[logical_id], attributes[logical_id] = self.arns.values(kind, name)
        refs.update(self.queue_urls)
        return Resolver(template, naming.parameters, pseudo=naming.pseudo, refs=refs, attributes=attributes)

    def environment(self, template: Mapping[str, Any] | None = None) -> dict[str, str]:
        """The functions' variables that name this copy's own resources (the table, the queues, the bus, the
        claim-check bucket, the cursor key): the ones a local copy must point elsewhere."""
        template = template or load_template()
        variables = [item for config in functions(template).values() for item in config.environment.items()]
        names = {name for name, value in variables if references(value) & PROVISIONED}
        resolved = function_environment(self, template)
        return {name: resolved[name] for name in sorted(names)}


def function_environment(stack: LocalStack, template: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Every variable the template sets on the functions, resolved for this local stack: what the functions
    would read deployed as it. One process runs them all here, so a name two functions set must have one
    value."""
    template = template or load_template()
    resolver = stack.resolver(template)
    environment: dict[str, str] = {}
    for config in functions(template).values():
        for name, value in config.environment.items():
            resolved = str(resolver.resolve(value, f"{config.name}.Environment.Variables.{name}"))
            if environment.setdefault(name, resolved) != resolved:
                raise ValueError(f"{name} is {environment[name]!r} in one function, {resolved!r} in another")
    return environment


def table_definition(template: Mapping[str, Any], table_name: str) -> dict[str, Any]:
    """CreateTable arguments for the template's MeteringTable, under another name."""
    properties = template["Resources"][TABLE]["Properties"]
    definition = {key: properties[key] for key in ("BillingMode", "AttributeDefinitions", "KeySchema")}
    if "StreamSpecification" in properties:
        definition["StreamSpecification"] = {"StreamEnabled": True, **properties["StreamSpecification"]}
    return {"TableName": table_name, **definition}


def provision(stage: str, claim_check_bucket: str, template: Mapping[str, Any] | None = None) -> LocalStack:
    """Create the table (with TTL), the activity, fan-out and close queues, the bus, the claim-check bucket
    and the Usage API's cursor key (generated as the template does), named as the template names them for
    `stage` (the harness hands the activity queue's messages to RecordActivity, as the event source mapping
    does). A failed step first removes what earlier ones created: a shared endpoint keeps nothing of it."""
    template = template or load_template()
    stack = LocalStack.named(stage, claim_check_bucket, template)
    undo: list[Callable[[], object]] = []
    try:
        dynamodb = boto3.client("dynamodb")
        dynamodb.create_table(**table_definition(template, stack.table_name))
        undo.append(partial(dynamodb.delete_table, TableName=stack.table_name))
        dynamodb.get_waiter("table_exists").wait(
            TableName=stack.table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
        ttl = template["Resources"][TABLE]["Properties"]["TimeToLiveSpecification"]
        dynamodb.update_time_to_live(
            TableName=stack.table_name,
            TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
        )
        sqs = boto3.client("sqs")
        urls: dict[str, str] = {}
        for queue in QUEUES:
            created = sqs.create_queue(QueueName=stack.names[queue], Attributes={"VisibilityTimeout": "360"})
            urls[queue] = created["QueueUrl"]
            undo.append(partial(sqs.delete_queue, QueueUrl=urls[queue]))
        events = boto3.client("events")
        events.create_event_bus(Name=stack.event_bus_name)
        undo.append(partial(events.delete_event_bus, Name=stack.event_bus_name))
        s3 = boto3.client("s3")
        s3.create_bucket(
            Bucket=claim_check_bucket,
            CreateBucketConfiguration={"LocationConstraint": stack.region},  # type: ignore[typeddict-item]
        )
        undo.append(partial(_empty_and_delete_bucket, s3, claim_check_bucket))
        secrets = boto3.client("secretsmanager")
        generated = template["Resources"][CURSOR_SECRET]["Properties"]["GenerateSecretString"]
        password = secrets.get_random_password(**generated)["RandomPassword"]
        secret = secrets.create_secret(Name=stack.names[CURSOR_SECRET], SecretString=password)
    except BaseException:
        for step in reversed(undo):
            _ignore_missing(step)
        raise
    account_id = urlparse(urls["ActivityQueue"]).path.strip("/").split("/")[-2]
    return replace(stack, account_id=account_id, queue_urls=urls, cursor_secret_arn=secret["ARN"])


def tear_down(stack: LocalStack) -> None:
    """Remove a stack made by `provision` (used against a shared endpoint; embedded moto just goes away).
    A resource already gone is skipped, so a teardown after a failure removes whatever is left."""
    dynamodb, sqs, s3 = boto3.client("dynamodb"), boto3.client("sqs"), boto3.client("s3")
    _ignore_missing(lambda: dynamodb.delete_table(TableName=stack.table_name))
    for url in stack.queue_urls.values():
        _ignore_missing(partial(sqs.delete_queue, QueueUrl=url))
    _ignore_missing(lambda: boto3.client("events").delete_event_bus(Name=stack.event_bus_name))
    _ignore_missing(lambda: _empty_and_delete_bucket(s3, stack.claim_check_bucket))
    if secret_arn := stack.cursor_secret_arn:
        secrets = boto3.client("secretsmanager")
        _ignore_missing(lambda: secrets.delete_secret(SecretId=secret_arn, ForceDeleteWithoutRecovery=True))


def _empty_and_delete_bucket(s3: Any, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=entry["Key"])
    s3.delete_bucket(Bucket=bucket)


MISSING_CODES = frozenset(
    {"ResourceNotFoundException", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
    | {"NoSuchBucket", "404"}
)


def _ignore_missing(step: Callable[[], object]) -> None:
    try:
        step()
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code", "")) not in MISSING_CODES:
            raise
