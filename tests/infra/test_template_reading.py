"""Reading a template as CloudFormation creates it (`metering_tools.template`): short tags read in
CloudFormation's long form, loops expanded, literal map lookups resolved, local nested applications inlined.
Every other check of tests/infra reads the template through it, so a construct it gets wrong would hide from
all of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from metering_tools.template import (
    UnsupportedTemplateError,
    expand,
    inline_applications,
    load_template,
    parse_template,
    references,
)

from tests.helpers import REPO_ROOT

LANGUAGE_EXTENSIONS = {"AWSTemplateFormatVersion": "2010-09-09", "Transform": "AWS::LanguageExtensions"}
MONITORING = REPO_ROOT / "monitoring" / "template.yaml"


def with_resources(resources: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return LANGUAGE_EXTENSIONS | sections | {"Resources": resources}


def written(path: Path, template: dict[str, Any]) -> Path:
    """`template` written to `path` (JSON, which YAML reads as it is)."""
    path.write_text(json.dumps(template), encoding="utf-8")
    return path


def test_short_tags_are_read_in_cloudformations_long_form(tmp_path: Path) -> None:
    # Given a template written with short tags, `!GetAtt` in both of its forms
    path = tmp_path / "template.yaml"
    path.write_text(
        """
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
  KeepAll: !And [!Condition IsProd, !Not [!Equals [!Ref Stage, ""]]]
Resources:
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub "metering-${Stage}-queue"
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt DLQ.Arn
      Tags:
        - Value: !GetAtt [DLQ, QueueName]
        - Value: !If [IsProd, !FindInMap [Slugs, !Ref Stage, Name], !Ref AWS::NoValue]
""",
        encoding="utf-8",
    )
    # When it is read
    template = parse_template(path)
    # Then every intrinsic function is in the one form every reader sees
    assert template["Conditions"] == {
        "IsProd": {"Fn::Equals": [{"Ref": "Stage"}, "prod"]},
        "KeepAll": {
            "Fn::And": [{"Condition": "IsProd"}, {"Fn::Not": [{"Fn::Equals": [{"Ref": "Stage"}, ""]}]}]
        },
    }
    assert template["Resources"]["Queue"]["Properties"] == {
        "QueueName": {"Fn::Sub": "metering-${Stage}-queue"},
        "RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": ["DLQ", "Arn"]}},
        "Tags": [
            {"Value": {"Fn::GetAtt": ["DLQ", "QueueName"]}},
            {
                "Value": {
                    "Fn::If": [
                        "IsProd",
                        {"Fn::FindInMap": ["Slugs", {"Ref": "Stage"}, "Name"]},
                        {"Ref": "AWS::NoValue"},
                    ]
                }
            },
        ],
    }


def test_a_loop_in_a_loop_names_and_fills_one_resource_per_pair() -> None:
    # Given a loop over functions holding a loop over metrics, naming both in keys, strings and Refs
    alarm = {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmName": {"Fn::Sub": "metering-${Stage}-&{Function}-${Metric}"},
            "MetricName": {"Ref": "Metric"},
            "Dimensions": [{"Name": "FunctionName", "Value": {"Fn::Sub": "${${Function}Name}"}}],
        },
    }
    inner = {
        "Fn::ForEach::Metrics": ["Metric", ["Errors", "Throttles"], {"${Function}${Metric}Alarm": alarm}]
    }
    template = with_resources({"Fn::ForEach::Functions": ["Function", ["Record", "Close-Run"], inner]})
    # When it is expanded
    resources = expand(template)["Resources"]
    # Then there is one alarm per pair, `&{}` keeping only alphanumerics, `Ref Metric` the metric itself
    assert sorted(resources) == [
        "Close-RunErrorsAlarm",
        "Close-RunThrottlesAlarm",
        "RecordErrorsAlarm",
        "RecordThrottlesAlarm",
    ]
    assert resources["Close-RunThrottlesAlarm"]["Properties"] == {
        "AlarmName": {"Fn::Sub": "metering-${Stage}-CloseRun-Throttles"},
        "MetricName": "Throttles",
        "Dimensions": [{"Name": "FunctionName", "Value": {"Fn::Sub": "${Close-RunName}"}}],
    }


def test_map_lookups_of_literal_keys_become_their_values_and_literal_sub_variables_are_written_in() -> None:
    # Given a loop whose resources look their names up in a mapping, through a Sub variable
    mappings = {"Queues": {"FanOut": {"Slug": "fanout"}, "Close": {"Slug": "close"}}}
    queue = {
        "Type": "AWS::SQS::Queue",
        "Properties": {
            "QueueName": {
                "Fn::Sub": [
                    "metering-${Stage}-${Slug}",
                    {"Slug": {"Fn::FindInMap": ["Queues", {"Ref": "Q"}, "Slug"]}},
                ]
            },
            "RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": [{"Fn::Sub": "${Q}DLQ"}, "Arn"]}},
        },
    }
    template = with_resources(
        {"Fn::ForEach::Queues": ["Q", ["FanOut", "Close"], {"${Q}Queue": queue}]}, Mappings=mappings
    )
    # When it is expanded
    properties = expand(template)["Resources"]["FanOutQueue"]["Properties"]
    # Then it reads as if written out by hand, in the loader's form of each function
    assert properties == {
        "QueueName": {"Fn::Sub": "metering-${Stage}-fanout"},
        "RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": ["FanOutDLQ", "Arn"]}},
    }


@pytest.mark.parametrize(
    ("resources", "refusal"),
    [
        ({"Fn::ForEach::Q": ["Q", {"Ref": "QueueNames"}, {"${Q}": {}}]}, "only a literal list of strings"),
        ({"Fn::ForEach::Q": ["Q", ["A", "A"], {"${Q}Queue": {}}]}, r"\['AQueue'\] defined twice"),
        ({"Q": {"Properties": {"Fn::ForEach::Tags": ["T", ["a"], {"${T}": "x"}]}}}, "Fn::ForEach inside"),
    ],
    ids=["collection from a parameter", "two items, one name", "loop inside a resource"],
)
def test_a_loop_this_reader_cannot_expand_is_refused(resources: dict[str, Any], refusal: str) -> None:
    with pytest.raises(UnsupportedTemplateError, match=refusal):
        expand(with_resources(resources))


def test_an_application_is_replaced_by_its_resources_wired_to_what_the_parent_passes(tmp_path: Path) -> None:
    # Given a parent passing a queue's name to a nested application, and referring to its output
    nested = {
        "Parameters": {"QueueName": {"Type": "String"}, "Stage": {"Type": "String", "Default": "dev"}},
        "Resources": {
            "QueueAlarm": {
                "Type": "AWS::CloudWatch::Alarm",
                "Properties": {
                    "AlarmName": {"Fn::Sub": "metering-${Stage}-${QueueName}-alarm"},
                    "Dimensions": [{"Name": "QueueName", "Value": {"Ref": "QueueName"}}],
                },
            }
        },
        "Outputs": {"AlarmName": {"Value": {"Ref": "QueueAlarm"}}},
    }
    application = {
        "Location": "nested.yaml",
        "Parameters": {"QueueName": {"Fn::GetAtt": ["Queue", "QueueName"]}},
    }
    parent = {
        "Resources": {
            "Queue": {"Type": "AWS::SQS::Queue"},
            "Monitoring": {"Type": "AWS::Serverless::Application", "Properties": application},
        },
        "Outputs": {"Url": {"Value": {"Fn::Sub": "https://console/#alarm=${Monitoring.Outputs.AlarmName}"}}},
    }
    written(tmp_path / "nested.yaml", nested)
    # When the application is inlined
    inlined = inline_applications(parent, tmp_path)
    # Then its resources stand in the parent, reading the parent's values, defaults where nothing is passed
    assert sorted(inlined["Resources"]) == ["Queue", "QueueAlarm"]
    assert inlined["Resources"]["QueueAlarm"]["Properties"] == {
        "AlarmName": {"Fn::Sub": "metering-dev-${Queue.QueueName}-alarm"},
        "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["Queue", "QueueName"]}}],
    }
    # And the parent's reference to its output is the output's value
    assert inlined["Outputs"]["Url"] == {"Value": {"Fn::Sub": "https://console/#alarm=${QueueAlarm}"}}


@pytest.mark.parametrize(
    ("passed", "refusal"),
    [({}, r"does not pass \['QueueName'\]"), ({"QueueName": "q", "Colour": "red"}, r"passes \['Colour'\]")],
    ids=["a parameter missing", "an unknown parameter"],
)
def test_an_application_passed_other_parameters_than_its_template_declares_is_refused(
    tmp_path: Path, passed: dict[str, Any], refusal: str
) -> None:
    nested = {"Parameters": {"QueueName": {"Type": "String"}}, "Resources": {}}
    application = {
        "Type": "AWS::Serverless::Application",
        "Properties": {"Location": "n.yaml", "Parameters": passed},
    }
    written(tmp_path / "n.yaml", nested)
    with pytest.raises(UnsupportedTemplateError, match=refusal):
        inline_applications({"Resources": {"App": application}}, tmp_path)


def test_the_monitoring_application_is_what_the_root_template_inlines() -> None:
    # Given the root template as read for the checks
    resources = load_template()["Resources"]
    # Then no application is left, and the monitoring template's alarms, topic and dashboard are in it
    assert not [name for name, r in resources.items() if r["Type"] == "AWS::Serverless::Application"]
    alarms = {name for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert len(alarms) == 28
    assert {"OperatorTopic", "OperatorTopicKey", "Dashboard"} <= resources.keys()
    # And the dashboard's alarm widget lists every alarm, so a new alarm row shows on the dashboard too
    assert alarms <= references(resources["Dashboard"]["Properties"]["DashboardBody"])


def test_every_monitoring_parameter_is_passed_by_the_root_template() -> None:
    # Given the monitoring template's parameters and what the root's Monitoring application passes
    declared = expand(parse_template(MONITORING))["Parameters"]
    passed = parse_template(REPO_ROOT / "template.yaml")["Resources"]["Monitoring"]["Properties"][
        "Parameters"
    ]
    # Then every one is passed explicitly: a default in the nested template would drift from the root's
    assert set(passed) == set(declared)
    assert not [name for name, spec in declared.items() if "Default" in spec]
