"""`template.yaml` as a CloudFormation template that moto's CloudFormation can create.

CloudFormation applies its transforms in order: AWS::LanguageExtensions (resolved here for what this template
uses), then AWS::Serverless-2016-10-31 (samtranslator, as CloudFormation runs it). What moto cannot create, or
must not run without Docker, is dropped with its reason, so a deployment test says what it does not cover."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from metering_tools.template import (
    LANGUAGE_EXTENSIONS,
    Resolver,
    UnsupportedTemplateError,
    load_template,
    references,
    substitute,
    transforms,
)
from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DROPPED_FOR_MOTO: dict[str, str] = {
    "AWS::Lambda::EventSourceMapping": (
        "moto would invoke the function for every message or stream record, and it runs functions only in"
        " Docker, which is not available; the handlers are tested without it (tests/e2e)"
    ),
    "AWS::Lambda::EventInvokeConfig": "moto's CloudFormation cannot create it",
    "AWS::Scheduler::Schedule": "moto's CloudFormation cannot create it (and would never fire it)",
    "AWS::SQS::QueuePolicy": "moto's CloudFormation cannot create it; moto does not enforce queue policies",
    "AWS::Events::EventBusPolicy": "moto's CloudFormation cannot create it; moto does not enforce it either",
    "AWS::CloudWatch::Alarm": "moto's CloudFormation cannot create it",
    "AWS::SNS::Subscription": "moto's CloudFormation cannot create it",
    "AWS::ApiGatewayV2::Api": (
        "moto's CloudFormation cannot create it; the Usage API is tested through its handler with the payload"
        " 2.0 events its JWT authorizer passes on (tests/api)"
    ),
    "AWS::ApiGatewayV2::Stage": "moto's CloudFormation cannot create it (nor the HTTP API it belongs to)",
    "AWS::SecretsManager::Secret": (
        "moto's CloudFormation cannot create it; the local stack generates the cursor key as the template"
        " says (metering_tools.local_stack)"
    ),
    "AWS::Logs::MetricFilter": "moto's CloudFormation cannot create it",
}
# moto 5 resolves these types' Ref unlike CloudFormation (a bus's is the bus object): Refs read the attribute.
MOTO_REF_AS_ATTRIBUTE: dict[str, str] = {"AWS::Events::EventBus": "Name"}
DELETION_POLICIES = {"Delete", "Retain", "RetainExceptOnCreate", "Snapshot"}
ARTIFACT_PROPERTY = {"AWS::Serverless::Function": "CodeUri", "AWS::Serverless::LayerVersion": "ContentUri"}
EMPTY_ZIP = b"PK\x05\x06" + bytes(18)  # a zip archive of no file: its end-of-central-directory record alone


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where the deployment package is, as `sam package` would have uploaded it."""

    bucket: str
    key: str


@dataclass(frozen=True, slots=True)
class MotoTemplate:
    """The CloudFormation template moto creates, and what was left out of it (logical id: reason)."""

    body: dict[str, Any]
    dropped: dict[str, str]

    def json(self) -> str:
        return json.dumps(self.body)


def upload_placeholder_package(s3: S3Client, bucket: str) -> S3Location:
    """An empty zip as every function's and the layer's code: moto stores code here, never runs it."""
    location = S3Location(bucket, "metering/placeholder.zip")
    s3.put_object(Bucket=bucket, Key=location.key, Body=EMPTY_ZIP)
    return location


def moto_template(parameters: Mapping[str, str], package: S3Location, region: str) -> MotoTemplate:
    """The stack for `parameters` as moto can create it: both transforms applied (no AWS managed policy is
    looked up by name: every role is the template's own), MOTO_REF_AS_ATTRIBUTE's Refs rewritten, and
    DROPPED_FOR_MOTO's types left out with all that refers to one (CloudFormation would reject it)."""
    template = resolve_language_extensions(load_template(), parameters)
    point_code_at(template, package)
    translator = Translator(None, Parser(), plugins=[], boto_session=boto3.Session(region_name=region))
    sam = translator.translate(template, parameter_values=dict(parameters), get_managed_policy_map=dict)
    as_attribute = {
        name: {"Fn::GetAtt": [name, MOTO_REF_AS_ATTRIBUTE[resource["Type"]]]}
        for name, resource in sam["Resources"].items()
        if resource["Type"] in MOTO_REF_AS_ATTRIBUTE
    }
    body: dict[str, Any] = substitute(sam, as_attribute)
    resources: dict[str, Any] = body["Resources"]
    dropped = {name: reason for name, r in resources.items() if (reason := DROPPED_FOR_MOTO.get(r["Type"]))}
    while dependents := {
        name: f"refers to {sorted(_dependencies(value) & dropped.keys())[0]}, which is left out"
        for section in (resources, body.get("Outputs", {}))
        for name, value in section.items()
        if name not in dropped and _dependencies(value) & dropped.keys()
    }:
        dropped.update(dependents)
    for section in ("Resources", "Outputs"):
        if section in body:
            body[section] = {name: value for name, value in body[section].items() if name not in dropped}
    return MotoTemplate(body, dropped)


def resolve_language_extensions(template: dict[str, Any], parameters: Mapping[str, str]) -> dict[str, Any]:
    """A copy of the template with AWS::LanguageExtensions applied: `Fn::If` in DeletionPolicy and
    UpdateReplacePolicy decided for these parameters (`template.expand` resolved the others, or raised)."""
    resolved = copy.deepcopy(template)
    declared = transforms(resolved)
    if LANGUAGE_EXTENSIONS not in declared:
        return resolved
    resolver = Resolver(resolved, parameters)
    for name, resource in resolved["Resources"].items():
        for attribute in [a for a in ("DeletionPolicy", "UpdateReplacePolicy") if a in resource]:
            where = f"{name}.{attribute}"
            resource[attribute] = policy = resolver.resolve(resource[attribute], where)
            if policy not in DELETION_POLICIES:
                raise UnsupportedTemplateError(f"{where}: {policy!r} is not a policy name")
    resolved["Transform"] = [transform for transform in declared if transform != LANGUAGE_EXTENSIONS]
    return resolved


def point_code_at(template: dict[str, Any], package: S3Location) -> None:
    """Points local CodeUri and ContentUri at the package, as `sam package` does (samtranslator wants S3)."""
    for resource in template["Resources"].values():
        artifact = ARTIFACT_PROPERTY.get(resource["Type"])
        if artifact and isinstance(resource.get("Properties", {}).get(artifact), str):
            resource["Properties"][artifact] = {"Bucket": package.bucket, "Key": package.key}


def _dependencies(value: Any) -> set[str]:
    depends_on = value.get("DependsOn", []) if isinstance(value, dict) else []
    return references(value) | set([depends_on] if isinstance(depends_on, str) else depends_on)
