"""`template.yaml` as a CloudFormation template that moto's CloudFormation can create.

CloudFormation runs the template's transforms in order before it creates anything: AWS::LanguageExtensions,
then AWS::Serverless-2016-10-31. Here the first is resolved for the constructs this template uses, the second
is samtranslator (what CloudFormation and SAM CLI run), and the resource types moto cannot create, or must
not run without Docker, are dropped with their reason, so a deployment test says what it does not cover."""

from __future__ import annotations

import copy
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import yaml
from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]
from samtranslator.yaml_helper import intrinsics_multi_constructor  # type: ignore[import-untyped]

from metering_tools import templates
from metering_tools.provisioning import TEMPLATE_PATH
from metering_tools.templates import LANGUAGE_EXTENSIONS, UnsupportedTemplateError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


# Resource types left out of the moto deployment, and why. Resources that refer to one of them are left out
# too (see `adapt_for_moto`).
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
        " says (metering_tools.provisioning)"
    ),
    "AWS::Logs::MetricFilter": "moto's CloudFormation cannot create it",
}
# Resource types whose Ref moto resolves differently from CloudFormation, and the attribute that holds what
# CloudFormation's Ref returns: their Refs are rewritten to that attribute.
MOTO_REF_AS_ATTRIBUTE: dict[str, str] = {
    "AWS::Events::EventBus": "Name",  # moto 5 resolves the Ref to its bus object, not the bus name
}
DELETION_POLICIES = {"Delete", "Retain", "RetainExceptOnCreate", "Snapshot"}
# Language-extension functions this module does not resolve (the loaders expand the template's own loops, see
# `templates`; one left in the template is not resolved); a template using one fails loudly here instead of
# deploying something CloudFormation would not.
UNRESOLVED_EXTENSIONS = ("Fn::ForEach::", "Fn::Length", "Fn::ToJsonString")


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


class _IntrinsicsLoader(yaml.SafeLoader):
    """Reads `!Ref`, `!If`, ... into their long form (`Ref`, `Fn::If`), as CloudFormation does."""


_IntrinsicsLoader.add_multi_constructor("!", intrinsics_multi_constructor)


def load_sam_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template in CloudFormation's JSON form, which samtranslator and moto expect, loops expanded and the
    monitoring application inlined (moto creates its resources in the one stack)."""
    return templates.read(path, _parse)


def _parse(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        template: dict[str, Any] = yaml.load(stream, Loader=_IntrinsicsLoader)
    return template


def upload_placeholder_package(s3: S3Client, bucket: str) -> S3Location:
    """Uploads an empty zip as every function's and the layer's code: moto stores the code and never runs
    it here, so building the real packages would only cost time."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w"):
        pass
    location = S3Location(bucket, "metering/placeholder.zip")
    s3.put_object(Bucket=bucket, Key=location.key, Body=archive.getvalue())
    return location


def moto_template(
    parameters: Mapping[str, str], package: S3Location, region: str, path: Path = TEMPLATE_PATH
) -> MotoTemplate:
    """The stack for `parameters` as moto can create it: both transforms applied, what moto lacks left out."""
    template = resolve_language_extensions(load_sam_template(path), parameters)
    point_code_at(template, package)
    translator = Translator(None, Parser(), plugins=[], boto_session=boto3.Session(region_name=region))
    translated: dict[str, Any] = translator.translate(
        template,
        parameter_values=dict(parameters),
        get_managed_policy_map=dict,  # no AWS managed policy by name: every role is the template's own
    )
    return adapt_for_moto(translated)


def resolve_language_extensions(template: dict[str, Any], parameters: Mapping[str, str]) -> dict[str, Any]:
    """A copy of the template with AWS::LanguageExtensions applied: `Fn::If` in DeletionPolicy and
    UpdateReplacePolicy decided for these parameters. Any other language extension raises."""
    resolved = copy.deepcopy(template)
    transforms = templates.transforms(resolved)
    if LANGUAGE_EXTENSIONS not in transforms:
        return resolved
    for location, key, value in templates.walk(resolved, "template"):
        if key.startswith(UNRESOLVED_EXTENSIONS) or (key == "Fn::FindInMap" and len(value) > 3):
            raise UnsupportedTemplateError(f"{key} at {location} is not resolved by {__name__}")
    values = _parameter_values(resolved, parameters)
    for name, resource in resolved["Resources"].items():
        for attribute in ("DeletionPolicy", "UpdateReplacePolicy"):
            if attribute in resource:
                resource[attribute] = _policy(resource[attribute], resolved, values, f"{name}.{attribute}")
    resolved["Transform"] = [transform for transform in transforms if transform != LANGUAGE_EXTENSIONS]
    return resolved


def point_code_at(template: dict[str, Any], package: S3Location) -> None:
    """Replaces local CodeUri and ContentUri paths with the uploaded package, as `sam package` does:
    samtranslator accepts only S3 locations."""
    s3_uri = {"Bucket": package.bucket, "Key": package.key}
    artifact_properties = {
        "AWS::Serverless::Function": "CodeUri",
        "AWS::Serverless::LayerVersion": "ContentUri",
    }
    for resource in template["Resources"].values():
        artifact = artifact_properties.get(resource["Type"])
        if artifact and isinstance(resource.get("Properties", {}).get(artifact), str):
            resource["Properties"][artifact] = s3_uri


def adapt_for_moto(template: dict[str, Any]) -> MotoTemplate:
    """Leaves out the resource types of DROPPED_FOR_MOTO, then every resource and output that refers to
    something left out (CloudFormation would reject the reference), and rewrites the Refs of
    MOTO_REF_AS_ATTRIBUTE."""
    resources: dict[str, Any] = template["Resources"]
    attribute_of = {
        name: MOTO_REF_AS_ATTRIBUTE[r["Type"]]
        for name, r in resources.items()
        if r["Type"] in MOTO_REF_AS_ATTRIBUTE
    }
    body: dict[str, Any] = _rewrite_refs(template, attribute_of)
    resources = body["Resources"]
    dropped = {
        name: DROPPED_FOR_MOTO[r["Type"]] for name, r in resources.items() if r["Type"] in DROPPED_FOR_MOTO
    }
    outputs: dict[str, Any] = body.get("Outputs", {})
    while True:
        dependents = {
            name: f"refers to {sorted(_references(value) & dropped.keys())[0]}, which is left out"
            for section in (resources, outputs)
            for name, value in section.items()
            if name not in dropped and _references(value) & dropped.keys()
        }
        if not dependents:
            break
        dropped.update(dependents)
    body["Resources"] = {name: value for name, value in resources.items() if name not in dropped}
    if outputs:
        body["Outputs"] = {name: value for name, value in outputs.items() if name not in dropped}
    return MotoTemplate(body, dropped)


def _rewrite_refs(value: Any, attribute_of: dict[str, str]) -> Any:
    """A copy of `value` whose `Ref X` and `${X}` read the attribute `attribute_of[X]` instead."""
    match value:
        case {"Ref": str(name)} if name in attribute_of:
            return {"Fn::GetAtt": [name, attribute_of[name]]}
        case {"Fn::Sub": str(text)}:
            return {"Fn::Sub": _sub_attributes(text, attribute_of)}
        case {"Fn::Sub": [str(text), variables]}:
            return {"Fn::Sub": [_sub_attributes(text, attribute_of), _rewrite_refs(variables, attribute_of)]}
        case dict():
            return {key: _rewrite_refs(item, attribute_of) for key, item in value.items()}
        case list():
            return [_rewrite_refs(item, attribute_of) for item in value]
    return value


def _sub_attributes(text: str, attribute_of: dict[str, str]) -> str:
    for name, attribute in attribute_of.items():
        text = text.replace(f"${{{name}}}", f"${{{name}.{attribute}}}")
    return text


def _references(value: Any) -> set[str]:
    """Names that `value` refers to through Ref, Fn::GetAtt, Fn::Sub or DependsOn."""
    names: set[str] = set()
    for _, key, item in templates.walk({"": value}, ""):
        if key == "Ref" and isinstance(item, str):
            names.add(item)
        elif key == "Fn::GetAtt":
            names.add(item[0] if isinstance(item, list) else item.split(".")[0])
        elif key == "Fn::Sub":
            text = item[0] if isinstance(item, list) else item
            names.update(part.split("}")[0].split(".")[0] for part in text.split("${")[1:])
        elif key == "DependsOn":
            names.update([item] if isinstance(item, str) else item)
    return names


def _parameter_values(template: dict[str, Any], parameters: Mapping[str, str]) -> dict[str, str]:
    """Every parameter's value for this deployment: the given one, else the template's default."""
    values = {
        name: str(spec["Default"]) for name, spec in template["Parameters"].items() if "Default" in spec
    }
    return values | dict(parameters)


def _policy(value: Any, template: dict[str, Any], parameters: dict[str, str], location: str) -> str:
    if isinstance(value, str) and value in DELETION_POLICIES:
        return value
    if isinstance(value, dict) and list(value) == ["Fn::If"]:
        condition, when_true, when_false = value["Fn::If"]
        chosen = when_true if _condition(condition, template, parameters) else when_false
        return _policy(chosen, template, parameters, location)
    raise UnsupportedTemplateError(f"{location}: {value!r} is not a policy name or an Fn::If of policy names")


def _condition(name: str, template: dict[str, Any], parameters: dict[str, str]) -> bool:
    return bool(_evaluate(template["Conditions"][name], template, parameters))


def _evaluate(value: Any, template: dict[str, Any], parameters: dict[str, str]) -> Any:
    """A condition's value, for the condition functions and parameter references conditions may use."""
    match value:
        case str():
            return value
        case {"Ref": str(name)} if name in parameters:
            return parameters[name]
        case {"Condition": str(name)}:
            return _condition(name, template, parameters)
        case {"Fn::Equals": [left, right]}:
            return _evaluate(left, template, parameters) == _evaluate(right, template, parameters)
        case {"Fn::Not": [operand]}:
            return not _evaluate(operand, template, parameters)
        case {"Fn::And": list(operands)}:
            return all(_evaluate(operand, template, parameters) for operand in operands)
        case {"Fn::Or": list(operands)}:
            return any(_evaluate(operand, template, parameters) for operand in operands)
    raise UnsupportedTemplateError(f"cannot evaluate {value!r} in a condition")
