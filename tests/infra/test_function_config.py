"""What the harness and `simulate` read from `template.yaml` instead of restating it (issue 7 §3): batch
sizes, batching windows, timeouts, receive limits, retries and the functions' environment, checked against
SAM's own translation of the template (Globals merged into each function, an event source mapping per SQS
event)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from metering_tools.cloudformation import (
    S3Location,
    load_sam_template,
    point_code_at,
    resolve_language_extensions,
)
from metering_tools.provisioning import (
    LocalStack,
    function_configs,
    function_environment,
    load_template,
)
from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]

TEMPLATE = load_template()
REGION = "eu-central-1"
QUEUES = f"https://sqs.{REGION}.amazonaws.com/123456789012"
STACK = LocalStack(
    "metering-test-config",
    f"{QUEUES}/metering-test-config-fanout",
    f"{QUEUES}/metering-test-config-close",
    "crm-bus",
    "crm-claim-checks",
    f"{QUEUES}/metering-test-config-activity",
)
PARAMETERS = {"Stage": "dev"}


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    """The template as CloudFormation receives it from SAM's transform, for the default parameters."""
    template = resolve_language_extensions(load_sam_template(), PARAMETERS)
    point_code_at(template, S3Location("bucket", "package.zip"))
    translator = Translator(None, Parser(), plugins=[], boto_session=boto3.Session(region_name=REGION))
    resources: dict[str, Any] = translator.translate(
        template, parameter_values=dict(PARAMETERS), get_managed_policy_map=dict
    )["Resources"]
    return resources


def default(value: Any) -> int:
    """A literal, or the default of the parameter it refers to."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return int(TEMPLATE["Parameters"][value["Ref"]]["Default"])
    return int(value)


def of_function(resources: dict[str, Any], kind: str, function_id: str) -> list[dict[str, Any]]:
    return [
        resource["Properties"]
        for resource in resources.values()
        if resource["Type"] == kind and resource["Properties"]["FunctionName"] == {"Ref": function_id}
    ]


def test_timeouts_environment_names_and_retries_are_the_translated_functions(
    translated: dict[str, Any],
) -> None:
    # Given SAM's translation of the template
    resources = translated

    # When the functions' configuration is read from the template
    configs = function_configs(TEMPLATE)

    # Then each function has the timeout and the variable names of its translated Lambda function (Globals
    # merged), and the asynchronous retries of its invoke configuration (Lambda's default of 2 otherwise)
    assert set(configs) == {"RecordActivity", "ClosePeriods", "InvoiceAccount", "CountContacts", "UsageApi"}
    for config in configs.values():
        function = resources[config.logical_id]["Properties"]
        assert config.timeout_seconds == function["Timeout"], config.name
        assert set(config.environment) == set(function["Environment"]["Variables"]), config.name
        [invoke_config] = of_function(resources, "AWS::Lambda::EventInvokeConfig", config.logical_id) or [{}]
        assert config.async_retry_attempts == invoke_config.get("MaximumRetryAttempts", 2), config.name
    assert (configs["ClosePeriods"].timeout_seconds, configs["InvoiceAccount"].timeout_seconds) == (300, 60)


def test_batch_sizes_windows_and_receive_limits_are_the_event_source_mappings_and_redrive_policies(
    translated: dict[str, Any],
) -> None:
    # Given SAM's translation of the template
    resources = translated

    # When the functions' queues are read from the template
    configs = function_configs(TEMPLATE)

    # Then each SQS source is one event source mapping of its function: same queue, batch size and batching
    # window (parameter defaults resolved), and its receive limit is its queue's redrive policy
    for config in configs.values():
        mappings = [
            mapping
            for mapping in of_function(resources, "AWS::Lambda::EventSourceMapping", config.logical_id)
            if resources[mapping["EventSourceArn"]["Fn::GetAtt"][0]]["Type"] == "AWS::SQS::Queue"
        ]
        expected = {
            mapping["EventSourceArn"]["Fn::GetAtt"][0]: (
                default(mapping["BatchSize"]),
                default(mapping.get("MaximumBatchingWindowInSeconds", 0)),
                resources[mapping["EventSourceArn"]["Fn::GetAtt"][0]]["Properties"]["RedrivePolicy"][
                    "maxReceiveCount"
                ],
            )
            for mapping in mappings
        }
        read = {
            queue: (source.batch_size, source.batching_window_seconds, source.max_receive_count)
            for queue, source in config.sources.items()
        }
        assert read == expected, config.name
    [stream] = [
        mapping
        for mapping in of_function(resources, "AWS::Lambda::EventSourceMapping", "CountContactsFunction")
        if mapping["EventSourceArn"] == {"Fn::GetAtt": ["MeteringTable", "StreamArn"]}
    ]
    source = configs["CountContacts"].stream
    assert source is not None
    assert source.batch_size == default(stream["BatchSize"])
    patterns = [json.loads(entry["Pattern"]) for entry in stream["FilterCriteria"]["Filters"]]
    assert patterns == list(source.patterns)
    activity = configs["RecordActivity"].sources["ActivityQueue"]
    assert (activity.batch_size, activity.batching_window_seconds) == (
        int(TEMPLATE["Parameters"]["ActivityBatchSize"]["Default"]),
        int(TEMPLATE["Parameters"]["ActivityBatchWindowSeconds"]["Default"]),
    )


def test_the_environment_resolves_for_a_local_stack_and_names_its_resources() -> None:
    # Given a local stack, with the CRM's bus and a claim-check bucket
    # When the functions' environment is resolved for it
    environment = function_environment(STACK, TEMPLATE)

    # Then every variable of every function has its value for that stack, from the parameter defaults and
    # the stack's resources (named after its table as the template names them after its stage)
    names = {name for config in function_configs(TEMPLATE).values() for name in config.environment}
    assert set(environment) == names
    assert environment["TABLE_NAME"] == STACK.table_name
    assert environment["FANOUT_QUEUE_URL"] == STACK.fanout_queue_url
    assert environment["EVENT_BUS_NAME"] == "crm-bus"
    assert environment["GRACE_HOURS"] == str(TEMPLATE["Parameters"]["GraceHours"]["Default"])
    assert environment["POWERTOOLS_METRICS_NAMESPACE"] == "Metering/test-config"
    assert environment["USAGE_ALERT_TOPIC_ARN"] == (
        f"arn:aws:sns:{REGION}:123456789012:metering-test-config-usage-alerts"
    )
    # And the variables a local copy points at its own resources are those naming the stack's resources
    assert STACK.environment(TEMPLATE) == {
        "TABLE_NAME": STACK.table_name,
        "ACTIVITY_QUEUE_URL": STACK.activity_queue_url,
        "FANOUT_QUEUE_URL": STACK.fanout_queue_url,
        "CLOSE_QUEUE_URL": STACK.close_queue_url,
        "EVENT_BUS_NAME": "crm-bus",
        "CLAIM_CHECK_BUCKET": "crm-claim-checks",
        "CURSOR_SECRET_ARN": f"arn:aws:secretsmanager:{REGION}:123456789012:secret:"
        "metering-test-config-usage-api-cursor-key",
    }
