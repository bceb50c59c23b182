"""What the harness and `simulate` read from `template.yaml` instead of restating it (issue 7 §3): batch
sizes, batching windows, timeouts, receive limits, retries and the functions' environment, checked against
SAM's own translation of the template (Globals merged into each function, an event source mapping per SQS
event)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import boto3
import pytest
from metering_testbench.moto_deploy import S3Location, point_code_at, resolve_language_extensions
from metering_tools.local_stack import LocalStack, function_environment
from metering_tools.template import Resolver, functions, load_template, parameter_values, target
from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]

TEMPLATE = load_template()
REGION = "eu-central-1"
_NAMED = LocalStack.named("test-config", "crm-claim-checks", TEMPLATE, region=REGION)
STACK = dataclasses.replace(_NAMED, names={**_NAMED.names, "EventBus": "crm-bus"})
"""A local stack deployed with the CRM's bus (`EventBusName: crm-bus`) and a claim-check bucket."""
PARAMETERS = {"Stage": "dev"}
DEFAULTS = Resolver(TEMPLATE)
"""The template's parameter defaults, for the translated template's references to them."""


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    """The template as CloudFormation receives it from SAM's transform, for the default parameters."""
    template = resolve_language_extensions(load_template(), PARAMETERS)
    point_code_at(template, S3Location("bucket", "package.zip"))
    translator = Translator(None, Parser(), plugins=[], boto_session=boto3.Session(region_name=REGION))
    resources: dict[str, Any] = translator.translate(
        template, parameter_values=dict(PARAMETERS), get_managed_policy_map=dict
    )["Resources"]
    return resources


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
    configs = functions(TEMPLATE)

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
    configs = functions(TEMPLATE)

    # Then each SQS source is one event source mapping of its function: same queue, batch size and batching
    # window (parameter defaults resolved), and its receive limit is its queue's redrive policy
    for config in configs.values():
        sources = {
            consumed[0]: mapping
            for mapping in of_function(resources, "AWS::Lambda::EventSourceMapping", config.logical_id)
            if (consumed := target(mapping["EventSourceArn"])) is not None
            and resources[consumed[0]]["Type"] == "AWS::SQS::Queue"
        }
        expected = {
            queue: (
                DEFAULTS.number(mapping["BatchSize"]),
                DEFAULTS.number(mapping.get("MaximumBatchingWindowInSeconds", 0)),
                resources[queue]["Properties"]["RedrivePolicy"]["maxReceiveCount"],
            )
            for queue, mapping in sources.items()
        }
        read = {
            queue: (source.batch_size, source.batching_window_seconds, source.max_receive_count)
            for queue, source in config.sources.items()
        }
        assert read == expected, config.name
    [stream] = [
        mapping
        for mapping in of_function(resources, "AWS::Lambda::EventSourceMapping", "CountContactsFunction")
        if target(mapping["EventSourceArn"]) == ("MeteringTable", "StreamArn")
    ]
    source = configs["CountContacts"].stream
    assert source is not None
    assert source.batch_size == DEFAULTS.number(stream["BatchSize"])
    patterns = [json.loads(entry["Pattern"]) for entry in stream["FilterCriteria"]["Filters"]]
    assert patterns == list(source.patterns)
    activity = configs["RecordActivity"].sources["ActivityQueue"]
    defaults = parameter_values(TEMPLATE)
    assert (activity.batch_size, activity.batching_window_seconds) == (
        int(defaults["ActivityBatchSize"]),
        int(defaults["ActivityBatchWindowSeconds"]),
    )


def test_the_environment_resolves_for_a_local_stack_and_names_its_resources() -> None:
    # Given a local stack, with the CRM's bus and a claim-check bucket
    # When the functions' environment is resolved for it
    environment = function_environment(STACK, TEMPLATE)

    # Then every variable of every function has its value for that stack, from the parameter defaults and
    # the stack's resources (named as the template names them for its stage)
    names = {name for config in functions(TEMPLATE).values() for name in config.environment}
    assert set(environment) == names
    assert environment["TABLE_NAME"] == STACK.table_name
    assert environment["FANOUT_QUEUE_URL"] == STACK.fanout_queue_url
    assert environment["EVENT_BUS_NAME"] == "crm-bus"
    assert environment["GRACE_HOURS"] == parameter_values(TEMPLATE)["GraceHours"]
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
