"""Local resources built from `template.yaml`, so `simulate` and the tests can never drift from the stack."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.exceptions import ClientError

from metering_tools import templates
from metering_tools.roles import (
    CURSOR_SECRET,
    PROVISIONED_PARAMETERS,
    PROVISIONED_RESOURCES,
    TemplateResolver,
    local_resources,
)


def _stack_root() -> Path:
    """The folder of the stack's own files (template.yaml, monitoring/, functions/): package `metering_stack`,
    which pyproject.toml maps to the checkout in an editable install and which a wheel carries a copy of."""
    spec = importlib.util.find_spec("metering_stack")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "template.yaml").is_file():
            return Path(location)
    raise ModuleNotFoundError("no metering_stack with a template.yaml: install the project (make setup)")


STACK_ROOT = _stack_root()
TEMPLATE_PATH = STACK_ROOT / "template.yaml"


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
    """The template as CloudFormation creates it (loops expanded, the monitoring application inlined), with
    the short names of the intrinsic functions (`Sub`, `GetAtt "Resource.Attribute"`)."""
    return templates.read(path, parse_template)


def parse_template(path: Path) -> dict[str, Any]:
    """The template as written: loops and applications as they are."""
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
    if "StreamSpecification" in properties:
        definition["StreamSpecification"] = {"StreamEnabled": True, **properties["StreamSpecification"]}
    return definition


@dataclass(frozen=True, slots=True)
class LocalStack:
    """Names and URLs of one local copy of the stack's stateful resources."""

    table_name: str
    fanout_queue_url: str
    close_queue_url: str
    event_bus_name: str
    claim_check_bucket: str
    activity_queue_url: str
    cursor_secret_arn: str = ""
    """The Usage API's cursor key (empty: named as the template names it, never created)."""

    def environment(self, template: Mapping[str, Any] | None = None) -> dict[str, str]:
        """The functions' variables that name this stack's resources (the table, the queues, the bus, the
        claim-check bucket), as the template sets them: the ones a local copy must point elsewhere."""
        template = template or load_template()
        provisioned = set(PROVISIONED_RESOURCES) | set(PROVISIONED_PARAMETERS)
        names = {
            name
            for config in function_configs(template).values()
            for name, value in config.environment.items()
            if _references(value) & provisioned
        }
        resolved = function_environment(self, template)
        return {name: resolved[name] for name in sorted(names)}


def provision(name: str, claim_check_bucket: str, template: dict[str, Any] | None = None) -> LocalStack:
    """Create the table (with TTL), the activity, fan-out and close queues, the bus, the claim-check bucket
    and the Usage API's cursor key, generated as the template generates it (the activity queue's messages are
    handed to RecordActivity by the harness, as the event source mapping does; the function deletes the ones
    it settles early). If a step fails, what the earlier steps created is removed before the error is raised:
    a shared endpoint keeps nothing of a stack that never existed."""
    template = template or load_template()
    undo: list[Callable[[], object]] = []
    try:
        dynamodb = boto3.client("dynamodb")
        dynamodb.create_table(**table_definition(template, name))
        undo.append(partial(dynamodb.delete_table, TableName=name))
        dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        ttl = template["Resources"]["MeteringTable"]["Properties"]["TimeToLiveSpecification"]
        dynamodb.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
        )
        sqs = boto3.client("sqs")
        queues: dict[str, str] = {}
        for kind in ("activity", "fanout", "close"):
            url = sqs.create_queue(QueueName=f"{name}-{kind}", Attributes={"VisibilityTimeout": "360"})[
                "QueueUrl"
            ]
            undo.append(partial(sqs.delete_queue, QueueUrl=url))
            queues[kind] = url
        events = boto3.client("events")
        events.create_event_bus(Name=name)
        undo.append(partial(events.delete_event_bus, Name=name))
        boto3.client("s3").create_bucket(
            Bucket=claim_check_bucket,
            CreateBucketConfiguration={"LocationConstraint": boto3.session.Session().region_name},  # type: ignore[typeddict-item]
        )
        undo.append(partial(_empty_and_delete_bucket, boto3.client("s3"), claim_check_bucket))
        secrets = boto3.client("secretsmanager")
        generated = template["Resources"][CURSOR_SECRET]["Properties"]["GenerateSecretString"]
        cursor_secret_arn = secrets.create_secret(
            Name=f"{name}-usage-api-cursor-key",
            SecretString=secrets.get_random_password(**generated)["RandomPassword"],
        )["ARN"]
    except BaseException:
        for step in reversed(undo):
            _ignore_missing(step)
        raise
    return LocalStack(
        name,
        queues["fanout"],
        queues["close"],
        name,
        claim_check_bucket,
        queues["activity"],
        cursor_secret_arn,
    )


def tear_down(stack: LocalStack) -> None:
    """Remove a stack made by `provision` (used against a shared endpoint; embedded moto just goes away).
    A resource already gone is skipped, so a teardown after a failure removes whatever is left."""
    dynamodb, sqs, s3 = boto3.client("dynamodb"), boto3.client("sqs"), boto3.client("s3")
    _ignore_missing(lambda: dynamodb.delete_table(TableName=stack.table_name))
    for url in (stack.activity_queue_url, stack.fanout_queue_url, stack.close_queue_url):
        _ignore_missing(partial(sqs.delete_queue, QueueUrl=url))
    _ignore_missing(lambda: boto3.client("events").delete_event_bus(Name=stack.event_bus_name))
    _ignore_missing(lambda: _empty_and_delete_bucket(s3, stack.claim_check_bucket))
    if stack.cursor_secret_arn:
        _ignore_missing(
            lambda: boto3.client("secretsmanager").delete_secret(
                SecretId=stack.cursor_secret_arn, ForceDeleteWithoutRecovery=True
            )
        )


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


# ---- what the template configures for the functions: read here, never restated ----

LAMBDA_DEFAULT_TIMEOUT_SECONDS = 3
SQS_EVENT_DEFAULT_BATCH_SIZE = 10
STREAM_EVENT_DEFAULT_BATCH_SIZE = 100
LAMBDA_DEFAULT_ASYNC_RETRY_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class QueueSource:
    """One SQS event of a function: how Lambda batches its queue, and how many receives the queue's redrive
    policy allows before a message moves to its dead-letter queue (None: no redrive policy)."""

    event: str
    queue: str
    batch_size: int
    batching_window_seconds: int
    max_receive_count: int | None


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    """What `template.yaml` configures for one function, its Globals included."""

    name: str
    logical_id: str
    code_folder: str
    """The folder under `functions/` of its CodeUri."""
    timeout_seconds: int
    environment: Mapping[str, Any]
    """Variable name -> the template's value, a literal or an intrinsic (see `function_environment`)."""
    sources: Mapping[str, QueueSource]
    """Its SQS events, by the logical id of their queue."""
    stream: StreamSource | None
    """Its DynamoDB stream event, if it has one."""
    async_retry_attempts: int
    """Lambda's retries of a failed asynchronous invocation (the scheduler's), after the first attempt."""


def function_configs(template: Mapping[str, Any] | None = None) -> dict[str, FunctionConfig]:
    """Each `AWS::Serverless::Function` by short name (`RecordActivityFunction` -> `RecordActivity`)."""
    template = template or load_template()
    defaults = template.get("Globals", {}).get("Function", {})
    configs: dict[str, FunctionConfig] = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        properties = resource["Properties"]
        name = logical_id.removesuffix("Function")
        sources = [
            _queue_source(template, event_name, event["Properties"])
            for event_name, event in properties.get("Events", {}).items()
            if event["Type"] == "SQS"
        ]
        configs[name] = FunctionConfig(
            name=name,
            logical_id=logical_id,
            code_folder=Path(str(properties["CodeUri"])).name,
            timeout_seconds=_number(
                template, properties.get("Timeout", defaults.get("Timeout", LAMBDA_DEFAULT_TIMEOUT_SECONDS))
            ),
            environment={
                **defaults.get("Environment", {}).get("Variables", {}),
                **properties.get("Environment", {}).get("Variables", {}),
            },
            sources={source.queue: source for source in sources},
            stream=next(
                (
                    _stream_source(template, event["Properties"])
                    for event in properties.get("Events", {}).values()
                    if event["Type"] == "DynamoDB"
                ),
                None,
            ),
            async_retry_attempts=_number(
                template,
                properties.get("EventInvokeConfig", {}).get(
                    "MaximumRetryAttempts", LAMBDA_DEFAULT_ASYNC_RETRY_ATTEMPTS
                ),
            ),
        )
    return configs


@dataclass(frozen=True, slots=True)
class StreamSource:
    """The DynamoDB stream event of a function: how Lambda batches the table's stream, and which records its
    filter passes (patterns of exact values and `prefix` rules, as the template writes them)."""

    batch_size: int
    patterns: tuple[Mapping[str, Any], ...]

    def passes(self, record: Mapping[str, Any]) -> bool:
        return not self.patterns or any(_matches(pattern, record) for pattern in self.patterns)


def _matches(pattern: Any, value: Any) -> bool:
    if isinstance(pattern, Mapping):
        return isinstance(value, Mapping) and all(
            name in value and _matches(rule, value[name]) for name, rule in pattern.items()
        )
    return any(
        value.startswith(rule["prefix"]) if isinstance(rule, Mapping) else value == rule for rule in pattern
    )


def _stream_source(template: Mapping[str, Any], properties: Mapping[str, Any]) -> StreamSource:
    filters = properties.get("FilterCriteria", {}).get("Filters", [])
    return StreamSource(
        batch_size=_number(template, properties.get("BatchSize", STREAM_EVENT_DEFAULT_BATCH_SIZE)),
        patterns=tuple(json.loads(entry["Pattern"]) for entry in filters),
    )


def _queue_source(template: Mapping[str, Any], event_name: str, properties: Mapping[str, Any]) -> QueueSource:
    queue = properties["Queue"]
    target = queue.get("GetAtt") if isinstance(queue, Mapping) else None
    if not isinstance(target, str) or not target.endswith(".Arn"):
        raise ValueError(f"SQS event {event_name}: its Queue is not `!GetAtt <Queue>.Arn`: {queue!r}")
    queue_id = target.removesuffix(".Arn")
    redrive = template["Resources"][queue_id]["Properties"].get("RedrivePolicy")
    return QueueSource(
        event=event_name,
        queue=queue_id,
        batch_size=_number(template, properties.get("BatchSize", SQS_EVENT_DEFAULT_BATCH_SIZE)),
        batching_window_seconds=_number(template, properties.get("MaximumBatchingWindowInSeconds", 0)),
        max_receive_count=_number(template, redrive["maxReceiveCount"]) if redrive else None,
    )


def _number(template: Mapping[str, Any], value: Any) -> int:
    """A literal, or `!Ref` of a parameter (its default)."""
    if isinstance(value, Mapping) and set(value) == {"Ref"}:
        return int(template["Parameters"][value["Ref"]]["Default"])
    return int(value)


def function_environment(stack: LocalStack, template: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Every variable the template sets on the functions, resolved for this local stack (its resources, the
    parameters' defaults): what the functions would read deployed as this stack. One process runs all three
    here, so a name two functions set must have one value."""
    template = template or load_template()
    resolver = TemplateResolver(template, local_resources(template, stack))
    environment: dict[str, str] = {}
    for config in function_configs(template).values():
        for name, value in config.environment.items():
            resolved = str(resolver.resolve(value, f"{config.name}.Environment.Variables.{name}"))
            if environment.setdefault(name, resolved) != resolved:
                raise ValueError(f"{name} is {environment[name]!r} in one function, {resolved!r} in another")
    return environment


def _references(value: Any) -> set[str]:
    """The parameters and resources a template value names (`!Ref`, `!GetAtt`, `${...}` of `!Sub`)."""
    if isinstance(value, list):
        return set().union(*(_references(item) for item in value))
    if not isinstance(value, Mapping):
        return set()
    if set(value) == {"Ref"}:
        return {str(value["Ref"])}
    if set(value) == {"GetAtt"}:
        target = value["GetAtt"]
        return {str(target.split(".", 1)[0] if isinstance(target, str) else target[0])}
    if set(value) == {"Sub"}:
        text, variables = (value["Sub"], {}) if isinstance(value["Sub"], str) else value["Sub"]
        named = {name.split(".", 1)[0] for name in re.findall(r"\$\{([^}!][^}]*)\}", text)}
        return (named - set(variables)) | _references(list(variables.values()))
    return _references(list(value.values()))
