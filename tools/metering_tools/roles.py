"""The functions' IAM roles from `template.yaml`, enforced locally: each handler runs on moto with credentials
of its own role, and a census checks every call it makes against that role (and every grant against use).

moto authorizes actions but, except for SQS and S3, not resources, so the census is what checks ARNs.

Typical use, after `provision` and with IAM authentication still off:

    roles = stack_roles(load_template(), stack)
    identities = FunctionIdentities.create(
        roles.policies, region=roles.resources.region, prefix=stack.table_name
    )
    census = Census(roles.resources.region, roles.resources.account_id)
    census.attach(identities)
    with identities.enforced():
        with identities.activate("InvoiceAccount"):
            handler(event, context)
    tally.add(roles, census)  # one CensusTally for the whole tier; tally.findings() at its end
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from threading import Lock
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

import boto3
import botocore.loaders
import botocore.session
from botocore.exceptions import ClientError
from metering import aws

type Handler = Callable[..., Any]

NO_VALUE: Any = object()
"""What `!Ref AWS::NoValue` resolves to: the list item or mapping key holding it is dropped."""

POLICY_VERSION = "2012-10-17"


class UnresolvableReference(ValueError):
    """A template value names something the local stack has no value for."""


# ---- the template's functions and roles ----


@dataclass(frozen=True, slots=True)
class FunctionRole:
    """A function of the template and the role it runs with."""

    name: str
    function_id: str
    role_id: str


def function_roles(template: Mapping[str, Any]) -> dict[str, FunctionRole]:
    """Each function by short name (`RecordActivityFunction` -> `RecordActivity`) with its `Role`."""
    roles: dict[str, FunctionRole] = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] not in {"AWS::Serverless::Function", "AWS::Lambda::Function"}:
            continue
        target = _get_att_target(resource.get("Properties", {}).get("Role"))
        if target is None or target[1] != "Arn":
            raise UnresolvableReference(f"{logical_id}: its Role is not `!GetAtt <Role>.Arn`")
        role_id = target[0]
        if template["Resources"].get(role_id, {}).get("Type") != "AWS::IAM::Role":
            raise UnresolvableReference(
                f"{logical_id}: Role {role_id} is not an AWS::IAM::Role of the template"
            )
        name = logical_id.removesuffix("Function")
        roles[name] = FunctionRole(name, logical_id, role_id)
    return roles


def _get_att_target(value: Any) -> tuple[str, str] | None:
    if isinstance(value, Mapping) and len(value) == 1:
        (key, target), *_ = value.items()
        if key in {"GetAtt", "Fn::GetAtt"}:
            resource, attribute = target.split(".", 1) if isinstance(target, str) else target
            return str(resource), str(attribute)
    return None


# ---- local values of the template's references ----


class LocalStackLike(Protocol):
    """What `metering_tools.provisioning.LocalStack` provides: the resources `provision` created."""

    @property
    def table_name(self) -> str: ...
    @property
    def fanout_queue_url(self) -> str: ...
    @property
    def close_queue_url(self) -> str: ...
    @property
    def event_bus_name(self) -> str: ...
    @property
    def claim_check_bucket(self) -> str: ...
    @property
    def activity_queue_url(self) -> str: ...
    @property
    def cursor_secret_arn(self) -> str: ...


@dataclass(frozen=True, slots=True)
class LocalResources:
    """The values a template's references take for one local stack."""

    region: str
    account_id: str
    stack_name: str
    parameters: Mapping[str, str]
    conditions: Mapping[str, bool] = field(default_factory=dict)
    refs: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    partition: str = "aws"

    def pseudo_parameters(self) -> dict[str, Any]:
        return {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": self.partition,
            "AWS::StackName": self.stack_name,
            "AWS::StackId": f"arn:{self.partition}:cloudformation:{self.region}:{self.account_id}:stack/"
            f"{self.stack_name}/{uuid.uuid5(uuid.NAMESPACE_URL, self.stack_name)}",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": NO_VALUE,
        }


# Which template parameter or resource each `LocalStack` attribute stands for. The bus is passed as an
# existing bus (EventBusName), as the CRM's production bus is; EventBus gets the same ARN for `!If CreateBus`.
PROVISIONED_PARAMETERS = {"EventBusName": "event_bus_name", "ClaimCheckBucketName": "claim_check_bucket"}
CURSOR_SECRET = "UsageApiCursorSecret"
PROVISIONED_RESOURCES = {
    "MeteringTable": "table_name",
    "ActivityQueue": "activity_queue_url",
    "FanOutQueue": "fanout_queue_url",
    "CloseQueue": "close_queue_url",
    "EventBus": "event_bus_name",
    CURSOR_SECRET: "cursor_secret_arn",
}
# The template names every resource after its table (`metering-${Stage}...`): the parameters under which
# the template's table name is the local table's name make every other name follow the local stack's.
NAMING_RESOURCE = "MeteringTable"

NAME_PROPERTIES: Mapping[str, str | None] = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::Events::EventBus": "Name",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::IAM::Role": "RoleName",
    "AWS::KMS::Key": None,
    "AWS::SecretsManager::Secret": "Name",
}


def local_resources(
    template: Mapping[str, Any],
    stack: LocalStackLike,
    *,
    region: str | None = None,
    account_id: str | None = None,
) -> LocalResources:
    """The local value of every reference the roles may make: the resources `provision` created, and
    plausible ARNs in the same account and region for the others (log groups, keys, topics, the activity
    queue, DLQs, the functions), named as the template names them for the local stack."""
    account_id = account_id or urlparse(stack.fanout_queue_url).path.strip("/").split("/")[-2]
    region = region or _region_of_queue_url(stack.fanout_queue_url) or boto3.session.Session().region_name
    if not region:
        raise UnresolvableReference("no region: pass one, or set AWS_DEFAULT_REGION")
    parameters = {
        name: str(declaration.get("Default", ""))
        for name, declaration in template.get("Parameters", {}).items()
    }
    parameters.update(_naming_parameters(template, stack.table_name))
    parameters.update(
        {
            name: getattr(stack, attribute)
            for name, attribute in PROVISIONED_PARAMETERS.items()
            if name in parameters
        }
    )
    base = LocalResources(region, account_id, stack.table_name, parameters)
    conditions = TemplateResolver(template, base).conditions()
    naming = TemplateResolver(
        template, LocalResources(region, account_id, stack.table_name, parameters, conditions)
    )
    refs: dict[str, str] = {}
    attributes: dict[str, dict[str, str]] = {}
    for logical_id, resource in template["Resources"].items():
        kind = resource["Type"]
        if kind not in NAME_PROPERTIES:
            continue
        attribute = PROVISIONED_RESOURCES.get(logical_id)
        provisioned = str(getattr(stack, attribute)) if attribute else ""
        if provisioned:
            name = provisioned.rstrip("/").rsplit("/", 1)[-1] if kind == "AWS::SQS::Queue" else provisioned
        else:
            name = _declared_name(naming, logical_id, resource, stack.table_name)
        refs[logical_id], attributes[logical_id] = _reference_values(kind, name, base)
        if provisioned and kind == "AWS::SQS::Queue":
            refs[logical_id] = provisioned
    return LocalResources(region, account_id, stack.table_name, parameters, conditions, refs, attributes)


def _naming_parameters(template: Mapping[str, Any], table_name: str) -> dict[str, str]:
    """The parameter values under which the template's table name (`!Sub "metering-${Stage}"`) is the local
    table's name: `metering-test-1a2b` gives Stage `test-1a2b`."""
    declared = template["Resources"][NAMING_RESOURCE]["Properties"][NAME_PROPERTIES["AWS::DynamoDB::Table"]]
    text = declared.get("Sub") if isinstance(declared, Mapping) else declared
    if not isinstance(text, str):
        raise UnresolvableReference(f"{NAMING_RESOURCE}: its name is not a plain `!Sub` text: {declared!r}")
    pattern, named = "", set()
    for index, part in enumerate(_SUB_VARIABLE.split(text)):
        if index % 2 == 0:
            pattern += re.escape(part)
        elif part in template.get("Parameters", {}) and part.isidentifier():
            pattern += f"(?P={part})" if part in named else f"(?P<{part}>.+)"
            named.add(part)
        else:
            raise UnresolvableReference(f"{NAMING_RESOURCE}: its name uses ${{{part}}}, not a parameter")
    match = re.fullmatch(pattern, table_name)
    if match is None:
        raise UnresolvableReference(
            f"the local table {table_name!r} is not named as the template names it ({text}), so the other "
            "resources' names cannot follow it"
        )
    return match.groupdict()


def _region_of_queue_url(url: str) -> str | None:
    host = urlparse(url).hostname or ""
    match = re.fullmatch(
        r"sqs\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?|([a-z0-9-]+)\.queue\.amazonaws\.com", host
    )
    return (match.group(1) or match.group(3)) if match else None


def _declared_name(
    resolver: TemplateResolver, logical_id: str, resource: Mapping[str, Any], stack_name: str
) -> str:
    name_property = NAME_PROPERTIES[resource["Type"]]
    declared = resource.get("Properties", {}).get(name_property) if name_property else None
    if declared is None:
        return f"{stack_name}-{logical_id}"
    return str(resolver.resolve(declared, f"Resources.{logical_id}.Properties.{name_property}"))


def _reference_values(kind: str, name: str, at: LocalResources) -> tuple[str, dict[str, str]]:
    """(what `!Ref` returns, the `!GetAtt` attributes) of a resource of this type with this name."""
    p, r, a = at.partition, at.region, at.account_id
    match kind:
        case "AWS::DynamoDB::Table":
            arn = f"arn:{p}:dynamodb:{r}:{a}:table/{name}"
            return name, {"Arn": arn, "StreamArn": f"{arn}/stream/local"}
        case "AWS::SQS::Queue":
            arn = f"arn:{p}:sqs:{r}:{a}:{name}"
            return f"https://sqs.{r}.amazonaws.com/{a}/{name}", {"Arn": arn, "QueueName": name}
        case "AWS::Events::EventBus":
            return name, {"Arn": f"arn:{p}:events:{r}:{a}:event-bus/{name}", "Name": name}
        case "AWS::Logs::LogGroup":
            return name, {"Arn": f"arn:{p}:logs:{r}:{a}:log-group:{name}:*"}
        case "AWS::SNS::Topic":
            arn = f"arn:{p}:sns:{r}:{a}:{name}"
            return arn, {"TopicArn": arn, "TopicName": name}
        case "AWS::KMS::Key":
            key_id = str(uuid.uuid5(uuid.NAMESPACE_URL, name))
            return key_id, {"Arn": f"arn:{p}:kms:{r}:{a}:key/{key_id}", "KeyId": key_id}
        case "AWS::IAM::Role":
            return name, {"Arn": f"arn:{p}:iam::{a}:role/{name}"}
        case "AWS::SecretsManager::Secret":  # a created secret's ARN ends in a random suffix: it is given
            arn = name if name.startswith("arn:") else f"arn:{p}:secretsmanager:{r}:{a}:secret:{name}"
            return arn, {"Id": arn}
        case _:
            return name, {"Arn": f"arn:{p}:lambda:{r}:{a}:function:{name}"}


# ---- resolving the template's intrinsic functions ----

INTRINSICS = frozenset(
    {"Ref", "GetAtt", "Sub", "If", "Join", "Select", "Split", "Base64", "Cidr", "FindInMap", "GetAZs"}
    | {"ImportValue", "Length", "ToJsonString", "Transform", "Equals", "And", "Or", "Not"}
)
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class TemplateResolver:
    """Evaluates `!Ref`, `!GetAtt`, `!Sub`, `!If`, `!Join` and `!Select` against local values; anything else,
    or a name without a local value, raises `UnresolvableReference` naming where it occurs."""

    def __init__(self, template: Mapping[str, Any], resources: LocalResources) -> None:
        self.template = template
        self.resources = resources

    def conditions(self) -> dict[str, bool]:
        """The truth of each of the template's Conditions, from the parameter values."""
        declared: Mapping[str, Any] = self.template.get("Conditions", {})
        known: dict[str, bool] = {}

        def truth(name: str) -> bool:
            if name not in known:
                if name not in declared:
                    raise UnresolvableReference(f"unknown condition {name}")
                known[name] = self._condition(declared[name], f"Conditions.{name}", truth)
            return known[name]

        return {name: truth(name) for name in declared}

    def _condition(self, expression: Any, where: str, truth: Callable[[str], bool]) -> bool:
        if not (isinstance(expression, Mapping) and len(expression) == 1):
            raise UnresolvableReference(f"{where}: not a condition function: {expression!r}")
        (key, argument), *_ = expression.items()
        match key.removeprefix("Fn::"):
            case "Equals":
                left, right = (self.resolve(value, where) for value in argument)
                return str(left) == str(right)
            case "Not":
                return not self._condition(argument[0], where, truth)
            case "And":
                return all(self._condition(item, where, truth) for item in argument)
            case "Or":
                return any(self._condition(item, where, truth) for item in argument)
            case "Condition":
                return truth(str(argument))
        raise UnresolvableReference(f"{where}: unsupported condition function {key}")

    def resolve(self, value: Any, where: str) -> Any:
        if isinstance(value, list):
            items = (self.resolve(item, f"{where}[{index}]") for index, item in enumerate(value))
            return [item for item in items if item is not NO_VALUE]
        if isinstance(value, Mapping):
            if len(value) == 1:
                (key, argument), *_ = value.items()
                function = key.removeprefix("Fn::")
                if key.startswith("Fn::") or function in INTRINSICS:
                    return self._intrinsic(function, argument, f"{where}.{key}")
            resolved = {key: self.resolve(item, f"{where}.{key}") for key, item in value.items()}
            return {key: item for key, item in resolved.items() if item is not NO_VALUE}
        return value

    def _intrinsic(self, function: str, argument: Any, where: str) -> Any:
        match function:
            case "Ref":
                return self._ref(str(argument), where)
            case "GetAtt":
                resource, attribute = argument.split(".", 1) if isinstance(argument, str) else argument
                return self._get_att(str(resource), str(attribute), where)
            case "Sub":
                return self._sub(argument, where)
            case "If":
                condition, if_true, if_false = argument
                if condition not in self.resources.conditions:
                    raise UnresolvableReference(f"{where}: no truth value for condition {condition}")
                chosen = if_true if self.resources.conditions[condition] else if_false
                return self.resolve(chosen, where)
            case "Join":
                separator, items = argument
                return str(separator).join(str(item) for item in self.resolve(items, where))
            case "Select":
                index, items = argument
                return self.resolve(items, where)[int(self.resolve(index, where))]
        raise UnresolvableReference(f"{where}: unsupported intrinsic function {function}")

    def _ref(self, name: str, where: str) -> Any:
        pseudo = self.resources.pseudo_parameters()
        if name in pseudo:
            return pseudo[name]
        if name in self.resources.parameters:
            return self.resources.parameters[name]
        if name in self.resources.refs:
            return self.resources.refs[name]
        raise UnresolvableReference(f"{where}: no local value for !Ref {name}{self._kind(name)}")

    def _get_att(self, resource: str, attribute: str, where: str) -> str:
        value = self.resources.attributes.get(resource, {}).get(attribute)
        if value is None:
            raise UnresolvableReference(
                f"{where}: no local value for !GetAtt {resource}.{attribute}{self._kind(resource)}"
            )
        return value

    def _kind(self, logical_id: str) -> str:
        kind = self.template.get("Resources", {}).get(logical_id, {}).get("Type")
        return f" (a {kind})" if kind else ""

    def _sub(self, argument: Any, where: str) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        values = {name: self.resolve(value, f"{where}.{name}") for name, value in variables.items()}

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in values:
                return str(values[name])
            if "." in name and not name.startswith("AWS::"):
                resource, attribute = name.split(".", 1)
                return self._get_att(resource, attribute, where)
            return str(self._ref(name, where))

        return _SUB_VARIABLE.sub(substitute, text)


# ---- policies ----


@dataclass(frozen=True, slots=True)
class Statement:
    """One resolved policy statement; `condition` is kept as the template states it."""

    sid: str
    effect: Literal["Allow", "Deny"]
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    not_resources: tuple[str, ...] = ()
    condition: Mapping[str, Any] | None = field(default=None, hash=False)

    @classmethod
    def parse(cls, document: Mapping[str, Any], index: int) -> Statement:
        effect = document["Effect"]
        if effect not in {"Allow", "Deny"}:
            raise ValueError(f"statement {index}: Effect {effect!r}")
        return cls(
            sid=str(document.get("Sid", f"#{index}")),
            effect=effect,
            actions=_strings(document.get("Action")),
            not_actions=_strings(document.get("NotAction")),
            resources=_strings(document.get("Resource")),
            not_resources=_strings(document.get("NotResource")),
            condition=document.get("Condition"),
        )

    def covers_action(self, action: str) -> bool:
        if self.not_actions:
            return not any(_matches(pattern, action, ignore_case=True) for pattern in self.not_actions)
        return any(_matches(pattern, action, ignore_case=True) for pattern in self.actions)

    def covers_resource(self, resource: str) -> bool:
        if self.not_resources:
            return not any(_matches(pattern, resource) for pattern in self.not_resources)
        return any(_matches(pattern, resource) for pattern in self.resources)

    def covers(self, call: Call) -> bool:
        return self.covers_action(call.action) and self.covers_resource(call.resource)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (str(value),) if isinstance(value, str) else tuple(str(item) for item in value)


@cache
def _pattern(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
    return re.compile(body, re.IGNORECASE if ignore_case else 0)


def _matches(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcard matching: `*` any run of characters, `?` one; actions ignore case, ARNs do not."""
    return _pattern(pattern, ignore_case).fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class FunctionPolicy:
    """A function's role with its inline policies resolved for one local stack."""

    function: str
    role_id: str
    documents: Mapping[str, Mapping[str, Any]]
    statements: tuple[Statement, ...]

    @classmethod
    def of(cls, function: str, role_id: str, documents: Mapping[str, Mapping[str, Any]]) -> FunctionPolicy:
        raw = [
            statement
            for document in documents.values()
            for statement in _as_list(document.get("Statement", []))
        ]
        statements = tuple(Statement.parse(statement, index) for index, statement in enumerate(raw))
        return cls(function, role_id, documents, statements)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def function_policies(template: Mapping[str, Any], resources: LocalResources) -> dict[str, FunctionPolicy]:
    """Each function's role, its inline policies resolved against the local stack."""
    resolver = TemplateResolver(template, resources)
    policies: dict[str, FunctionPolicy] = {}
    for name, role in function_roles(template).items():
        properties = template["Resources"][role.role_id].get("Properties", {})
        if properties.get("ManagedPolicyArns") or properties.get("PermissionsBoundary"):
            raise UnresolvableReference(f"{role.role_id}: managed policies and boundaries cannot be resolved")
        documents: dict[str, Mapping[str, Any]] = {}
        for index, policy in enumerate(properties.get("Policies", [])):
            where = f"Resources.{role.role_id}.Properties.Policies[{index}]"
            documents[str(resolver.resolve(policy["PolicyName"], where))] = resolver.resolve(
                policy["PolicyDocument"], f"{where}.PolicyDocument"
            )
        policies[name] = FunctionPolicy.of(name, role.role_id, documents)
    return policies


# ---- from an API call to the IAM authorizations it needs ----


@dataclass(frozen=True, slots=True, order=True)
class Call:
    """One authorization an API call needs: the IAM action and the ARN it is checked on."""

    action: str
    resource: str


# API operations (`<service>:<Operation>`) whose IAM action is not named after them: batch forms need the
# single action, S3 reads and lists need GetObject and ListBucket, and a transaction needs the action of
# each of its items' kinds (TRANSACTION_ITEM_ACTIONS). One table for the census and for moto's policies.
OPERATION_ACTIONS: Mapping[str, tuple[str, ...]] = {
    "sqs:SendMessageBatch": ("sqs:SendMessage",),
    "sqs:DeleteMessageBatch": ("sqs:DeleteMessage",),
    "sqs:ChangeMessageVisibilityBatch": ("sqs:ChangeMessageVisibility",),
    "sns:PublishBatch": ("sns:Publish",),
    "s3:HeadObject": ("s3:GetObject",),
    "s3:ListObjects": ("s3:ListBucket",),
    "s3:ListObjectsV2": ("s3:ListBucket",),
    "s3:HeadBucket": ("s3:ListBucket",),
    "dynamodb:TransactWriteItems": (
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:ConditionCheckItem",
    ),
    "dynamodb:TransactGetItems": ("dynamodb:GetItem",),
    "lambda:Invoke": ("lambda:InvokeFunction",),
    "lambda:InvokeAsync": ("lambda:InvokeFunction",),
    "lambda:InvokeWithResponseStream": ("lambda:InvokeFunction",),
}
TRANSACTION_ITEM_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Get": "dynamodb:GetItem",
}
# S3 actions checked on an object ARN (bucket/key); the others on the bucket ARN.
S3_OBJECT_ACTIONS = frozenset(
    {"GetObject", "GetObjectVersion", "PutObject", "DeleteObject", "DeleteObjectVersion", "RestoreObject"}
    | {"GetObjectAcl", "PutObjectAcl", "GetObjectTagging", "PutObjectTagging", "AbortMultipartUpload"}
    | {"ListMultipartUploadParts"}
)


@dataclass(frozen=True, slots=True)
class Place:
    """Where calls are made: the ARNs of named resources are built in this account and region."""

    region: str
    account_id: str
    partition: str = "aws"

    def table(self, name: str) -> str:
        if name.startswith("arn:"):
            return name
        return f"arn:{self.partition}:dynamodb:{self.region}:{self.account_id}:table/{name}"

    def queue(self, url_or_name: str) -> str:
        if url_or_name.startswith("arn:"):
            return url_or_name
        if "://" not in url_or_name:
            return f"arn:{self.partition}:sqs:{self.region}:{self.account_id}:{url_or_name}"
        account, name = urlparse(url_or_name).path.strip("/").split("/")[-2:]
        region = _region_of_queue_url(url_or_name) or self.region
        return f"arn:{self.partition}:sqs:{region}:{account}:{name}"

    def bus(self, name: str | None) -> str:
        name = name or "default"
        if name.startswith("arn:"):
            return name
        return f"arn:{self.partition}:events:{self.region}:{self.account_id}:event-bus/{name}"

    def bucket(self, bucket: str, key: str | None = None) -> str:
        return f"arn:{self.partition}:s3:::{bucket}" + (f"/{key}" if key is not None else "")

    def function(self, name: str, qualifier: str | None = None) -> str:
        """A function's ARN from its name, partial ARN (`account:function:name`) or ARN; its qualifier."""
        if not name.startswith("arn:"):
            partial = name if ":function:" in name else f"{self.account_id}:function:{name}"
            name = f"arn:{self.partition}:lambda:{self.region}:{partial}"
        return f"{name}:{qualifier}" if qualifier else name

    def secret(self, secret_id: str) -> str:
        """A secret's ARN from its ARN, or from its name (which IAM sees with a random suffix: `-??????`)."""
        if secret_id.startswith("arn:"):
            return secret_id
        return (
            f"arn:{self.partition}:secretsmanager:{self.region}:{self.account_id}:secret:{secret_id}-??????"
        )

    def key(self, key_id: str) -> str:
        if key_id.startswith("arn:"):
            return key_id
        path = key_id if key_id.startswith("alias/") else f"key/{key_id}"
        return f"arn:{self.partition}:kms:{self.region}:{self.account_id}:{path}"


KEY_PARAMETERS: Mapping[str, tuple[str, Callable[[Place, str], str]]] = {
    "kms": ("KeyId", Place.key),
    "secretsmanager": ("SecretId", Place.secret),
}
"""The parameter naming the key or secret a call uses, and how its ARN is made from it."""


def calls_of(service: str, operation: str, params: Mapping[str, Any], place: Place) -> list[Call]:
    """The IAM authorizations one API call needs; an operation not mapped here needs `<service>:<Operation>`
    on `*` (for the census to report, never to pass silently)."""
    checked = f"{service}:{operation}"
    actions = OPERATION_ACTIONS.get(checked, (checked,))
    match service:
        case "dynamodb":
            return _dynamodb_calls(operation, params, place)
        case "sqs":
            queue = params.get("QueueUrl") or params.get("QueueName")
            return [Call(action, place.queue(str(queue)) if queue else "*") for action in actions]
        case "events" if operation == "PutEvents":
            buses = dict.fromkeys(place.bus(entry.get("EventBusName")) for entry in params.get("Entries", []))
            return [Call("events:PutEvents", bus) for bus in buses]
        case "events" if "EventBusName" in params:
            return [Call(action, place.bus(str(params["EventBusName"]))) for action in actions]
        case "sns":
            topic = params.get("TopicArn") or params.get("TargetArn")
            return [Call(action, str(topic) if topic else "*") for action in actions]
        case "s3" if "Bucket" in params:
            key = params.get("Key")
            return [Call(action, place.bucket(str(params["Bucket"]), key)) for action in actions]
        case "lambda" if "FunctionName" in params:
            function = place.function(str(params["FunctionName"]), params.get("Qualifier"))
            return [Call(action, function) for action in actions]
        case "kms" | "secretsmanager" if KEY_PARAMETERS[service][0] in params:
            parameter, arn_of = KEY_PARAMETERS[service]
            return [Call(action, arn_of(place, str(params[parameter]))) for action in actions]
    return [Call(action, "*") for action in actions]


def _dynamodb_calls(operation: str, params: Mapping[str, Any], place: Place) -> list[Call]:
    if operation in {"BatchGetItem", "BatchWriteItem"}:
        return [Call(f"dynamodb:{operation}", place.table(table)) for table in params.get("RequestItems", {})]
    if operation in {"TransactWriteItems", "TransactGetItems"}:
        calls: dict[Call, None] = {}
        for item in params.get("TransactItems", []):
            for kind, request in item.items():
                calls[Call(TRANSACTION_ITEM_ACTIONS[kind], place.table(request["TableName"]))] = None
        return list(calls)
    table = params.get("TableName") or params.get("ResourceArn")
    if not table:
        return [Call(f"dynamodb:{operation}", "*")]
    resource = place.table(str(table))
    if params.get("IndexName"):
        resource += f"/index/{params['IndexName']}"
    return [Call(f"dynamodb:{operation}", resource)]


# ---- the policy as moto can enforce it ----

# moto authorizes these services' calls on the resource's ARN; every other service's on "*" whatever the
# policy says (moto/core/responses.py `call_action`), so their statements are widened to "*" for moto and
# the census checks their resources instead.
MOTO_RESOURCE_AWARE_SERVICES = frozenset({"sqs", "s3"})
# moto names S3 calls by the IAM action they need (HeadObject as s3:GetObject); the other services by the
# operation, so a grant of sqs:SendMessage must also name sqs:SendMessageBatch for moto.
MOTO_CHECKS_IAM_ACTIONS = frozenset({"s3"})


def moto_policy_document(policy: FunctionPolicy) -> dict[str, Any]:
    """The policy moto can enforce with the same actions: per service, the operation names moto checks for
    batch forms added, resources kept where moto checks them and widened to "*" elsewhere. Conditions are
    left out: moto has no request context for them (an absent key counts as satisfied), the census reports
    them. Deny statements moto would apply to the wrong resources are left to the census."""
    statements: list[dict[str, Any]] = []
    for statement in policy.statements:
        if statement.not_actions:
            if statement.effect == "Allow":
                statements.append(
                    {"Effect": "Allow", "NotAction": list(statement.not_actions), "Resource": "*"}
                )
            continue
        by_service: dict[str, list[str]] = {}
        for action in statement.actions:
            by_service.setdefault(action.split(":", 1)[0].lower(), []).append(action)
        for service, actions in sorted(by_service.items()):
            faithful = service in MOTO_RESOURCE_AWARE_SERVICES and bool(statement.resources)
            if statement.effect == "Deny" and not faithful and statement.resources != ("*",):
                continue
            granted = Statement(statement.sid, statement.effect, tuple(actions))
            aliases = [
                checked
                for checked, needed in OPERATION_ACTIONS.items()
                if checked.startswith(f"{service}:")
                and service not in MOTO_CHECKS_IAM_ACTIONS
                and any(granted.covers_action(action) for action in needed)
            ]
            statements.append(
                {
                    "Effect": statement.effect,
                    "Action": sorted(set(actions) | set(aliases)),
                    "Resource": list(statement.resources) if faithful else "*",
                }
            )
    return {"Version": POLICY_VERSION, "Statement": statements}


def is_access_denied(error: ClientError) -> bool:
    """True for AWS's refusals; moto answers JSON-protocol services with an XML body botocore reads as
    code "403", so the message is looked at too."""
    details = error.response.get("Error", {})
    code, message = str(details.get("Code", "")), str(details.get("Message", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"AccessDenied", "AccessDeniedException"} or (status == 403 and "AccessDenied" in message)


# ---- one identity per function on moto ----

ADMINISTRATOR_POLICY = {
    "Version": POLICY_VERSION,
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
SESSION_SECONDS = 12 * 3600
_IDENTITY_EVENT = "metering-roles-identity"


class FunctionIdentities:
    """A boto3 session per function holding credentials of its role, and one for the harness itself.

    `activate(name)` makes the process's default session that function's, as Lambda's environment does,
    and rebuilds `metering.aws`'s cached clients when they were built under another identity. Outside it the
    default session is the harness's (allowed everything), so the harness's own calls keep working; but
    `metering.aws`'s cached clients still belong to the last function, so harness code uses clients of its
    own. The default session is process-wide: one activation at a time, as the harness invokes."""

    def __init__(
        self, harness: boto3.Session, sessions: Mapping[str, boto3.Session], role_arns: Mapping[str, str]
    ):
        self.harness_session = harness
        self.role_arns = dict(role_arns)
        self._sessions = dict(sessions)
        for name, session in self._sessions.items():
            session.events.register(_IDENTITY_EVENT, _identity_marker(name), unique_id=_IDENTITY_EVENT)

    @classmethod
    def create(
        cls, policies: Mapping[str, FunctionPolicy], *, region: str, prefix: str = "metering-local"
    ) -> FunctionIdentities:
        """Create the harness user and one role per function (its policy as `moto_policy_document`), and
        assume each role as the harness. Call it with IAM authentication still off.

        The roles trust the harness user rather than lambda.amazonaws.com: here the harness plays Lambda's
        part in assuming the role, and moto cannot evaluate a service principal (its trust check reads only
        `Principal.AWS` and fails on a Service-only statement)."""
        iam = boto3.client("iam", region_name=region)
        user = f"{prefix}-harness"[:64]
        user_arn = iam.create_user(UserName=user)["User"]["Arn"]
        iam.put_user_policy(
            UserName=user, PolicyName="harness", PolicyDocument=json.dumps(ADMINISTRATOR_POLICY)
        )
        key = iam.create_access_key(UserName=user)["AccessKey"]
        harness = _session(
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            region_name=region,
        )
        trust = {
            "Version": POLICY_VERSION,
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": user_arn}, "Action": "sts:AssumeRole"}],
        }
        sts = harness.client("sts")
        sessions: dict[str, boto3.Session] = {}
        role_arns: dict[str, str] = {}
        for name, policy in policies.items():
            role = f"{prefix}-{name}"[:64]
            role_arns[name] = iam.create_role(
                RoleName=role, AssumeRolePolicyDocument=json.dumps(trust), MaxSessionDuration=SESSION_SECONDS
            )["Role"]["Arn"]
            iam.put_role_policy(
                RoleName=role, PolicyName=name, PolicyDocument=json.dumps(moto_policy_document(policy))
            )
            credentials = sts.assume_role(
                RoleArn=role_arns[name], RoleSessionName=name, DurationSeconds=SESSION_SECONDS
            )["Credentials"]
            sessions[name] = _session(
                aws_access_key_id=credentials["AccessKeyId"],
                aws_secret_access_key=credentials["SecretAccessKey"],
                aws_session_token=credentials["SessionToken"],
                region_name=region,
            )
        return cls(harness, sessions, role_arns)

    @property
    def functions(self) -> list[str]:
        return list(self._sessions)

    def session(self, function: str) -> boto3.Session:
        if function not in self._sessions:
            raise KeyError(f"no identity for function {function!r}; known: {', '.join(self._sessions)}")
        return self._sessions[function]

    @contextmanager
    def enforced(self) -> Iterator[None]:
        """moto's IAM authentication on, the harness's session as the default one; both undone on exit."""
        from moto.core.authorization import enable_iam_authentication  # noqa: PLC0415 - development dependency

        previous = boto3.DEFAULT_SESSION
        boto3.DEFAULT_SESSION = self.harness_session
        try:
            with enable_iam_authentication():
                yield
        finally:
            boto3.DEFAULT_SESSION = previous
            aws.reset_clients()

    @contextmanager
    def activate(self, function: str) -> Iterator[boto3.Session]:
        """Run the block as `function`: its session is the default one, and `metering.aws`'s clients are
        rebuilt only if one of them was built under another identity (another function, or the harness)."""
        session = self.session(function)
        previous = boto3.DEFAULT_SESSION
        boto3.DEFAULT_SESSION = session
        try:
            if any(_identity_of(client) != function for client in _cached_clients()):
                aws.reset_clients()
            yield session
        finally:
            boto3.DEFAULT_SESSION = previous

    def register(self, event_name: str, handler: Handler, unique_id: str | None = None) -> None:
        """Register a botocore event handler on every function's session. A client copies its session's
        handlers when it is built, so the cached clients are rebuilt at their next use."""
        self.register_per_function(event_name, lambda _: handler, unique_id)

    def register_per_function(
        self, event_name: str, handler_for: Callable[[str], Handler], unique_id: str | None = None
    ) -> None:
        """Register on each function's session the handler `handler_for(function)` gives."""
        for name, session in self._sessions.items():
            session.events.register(
                event_name, handler_for(name), unique_id=unique_id and f"{unique_id}:{name}"
            )
        aws.reset_clients()


_MODELS = botocore.loaders.create_loader()


def _session(**arguments: Any) -> boto3.Session:
    """A session of its own credentials that shares the process's service models: loading them is most of
    what the first clients of a new session cost, and every test creates four sessions."""
    core = botocore.session.get_session()
    core.register_component("data_loader", _MODELS)
    session = boto3.Session(botocore_session=core, **arguments)
    _MODELS.search_paths[:] = list(dict.fromkeys(_MODELS.search_paths))  # boto3 appends its own each time
    return session


def _identity_marker(function: str) -> Handler:
    def marker(**_: Any) -> str:
        return function

    return marker


def _identity_of(client: Any) -> str | None:
    answers = client.meta.events.emit(_IDENTITY_EVENT)
    return next((str(answer) for _, answer in answers if answer is not None), None)


def _cached_clients() -> Iterator[Any]:
    """The clients `metering.aws` holds now: every cached factory of that module that has built one."""
    for factory in vars(aws).values():
        if callable(getattr(factory, "cache_info", None)) and factory.cache_info().currsize:
            yield factory()


# ---- the census ----


class Census:
    """Records, per function, the IAM authorizations of every API call its clients make (botocore's
    `before-parameter-build` hook, so once per call whatever the retries)."""

    def __init__(self, region: str, account_id: str, partition: str = "aws") -> None:
        self.place = Place(region, account_id, partition)
        self._calls: dict[str, Counter[Call]] = {}
        self._operations: dict[str, Counter[str]] = {}
        self._lock = Lock()

    def attach(self, identities: FunctionIdentities) -> None:
        identities.register_per_function("before-parameter-build", self.recorder, unique_id="metering-census")

    def recorder(self, function: str) -> Handler:
        def record(model: Any, params: Mapping[str, Any], **_: Any) -> None:
            self.record(function, model.service_model.signing_name, model.name, params)

        return record

    def record(self, function: str, service: str, operation: str, params: Mapping[str, Any]) -> None:
        calls = calls_of(service, operation, params, self.place)
        with self._lock:
            self._calls.setdefault(function, Counter()).update(calls)
            self._operations.setdefault(function, Counter())[f"{service}:{operation}"] += 1

    def calls(self, function: str) -> Counter[Call]:
        with self._lock:
            return Counter(self._calls.get(function, Counter()))

    def operations(self, function: str) -> Counter[str]:
        with self._lock:
            return Counter(self._operations.get(function, Counter()))

    @property
    def functions(self) -> list[str]:
        with self._lock:
            return sorted(self._calls)


# ---- evaluating calls against a policy ----


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a policy grants a call, by which statements, and the conditions that were not evaluated."""

    call: Call
    allowed: bool
    allowed_by: tuple[str, ...] = ()
    denied_by: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()


def evaluate(policy: FunctionPolicy, call: Call) -> Decision:
    """IAM's rule for one identity policy: an explicit Deny wins, else some Allow must cover the call.
    Conditions are reported, not evaluated: a conditional Allow counts as allowing, a conditional Deny as
    not denying."""
    covering = [statement for statement in policy.statements if statement.covers(call)]
    allows = [s.sid for s in covering if s.effect == "Allow"]
    denies = [s.sid for s in covering if s.effect == "Deny" and not s.condition]
    conditions = tuple(
        f"{s.effect} {s.sid}: {json.dumps(s.condition, sort_keys=True)}" for s in covering if s.condition
    )
    return Decision(call, bool(allows) and not denies, tuple(allows), tuple(denies), conditions)


def ungranted_calls(policy: FunctionPolicy, calls: Iterable[Call]) -> list[Decision]:
    """The calls the policy does not grant (each with the statements that denied it, if any)."""
    return [decision for call in sorted(set(calls)) if not (decision := evaluate(policy, call)).allowed]


def conditional_calls(policy: FunctionPolicy, calls: Iterable[Call]) -> list[Decision]:
    """The granted calls on which a statement's Condition bears (reported, since it is not evaluated)."""
    return [
        decision
        for call in sorted(set(calls))
        if (decision := evaluate(policy, call)).allowed and decision.conditions
    ]


@dataclass(frozen=True, slots=True, order=True)
class Grant:
    """One (action, resource) pair an Allow statement grants, as written (wildcards included)."""

    sid: str
    action: str
    resource: str


def granted_pairs(policy: FunctionPolicy) -> list[Grant]:
    """Every action x resource pair of the Allow statements, less the pairs whose resource the action is
    never checked on (an S3 object action on a bucket ARN, a bucket action on an object ARN)."""
    return [
        Grant(statement.sid, action, resource)
        for statement in policy.statements
        if statement.effect == "Allow"
        for action in statement.actions or ("*",)
        for resource in statement.resources or ("*",)
        if _applies(action, resource)
    ]


def _applies(action: str, resource: str) -> bool:
    service, _, name = action.partition(":")
    if service.lower() != "s3" or "*" in name or "?" in name or not resource.startswith("arn:"):
        return True
    is_object = "/" in resource.split(":::", 1)[-1]
    return is_object == (name in S3_OBJECT_ACTIONS)


def unused_grants(
    policy: FunctionPolicy, calls: Iterable[Call], on_behalf: Mapping[Call, str] | None = None
) -> list[Grant]:
    """The granted pairs no call used, less those AWS uses on the function's behalf (`on_behalf`, with the
    reason for each; see ON_BEHALF_USES)."""
    used = set(calls) | set(on_behalf or {})
    statements = {statement.sid: statement for statement in policy.statements}
    return [
        grant
        for grant in granted_pairs(policy)
        if not any(
            statements[grant.sid].covers(call)
            and _matches(grant.action, call.action, ignore_case=True)
            and _matches(grant.resource, call.resource)
            for call in used
        )
    ]


# ---- grants AWS uses on the function's behalf, with their reasons ----


@dataclass(frozen=True, slots=True)
class FunctionContext:
    """What a locator of on-behalf uses reads: the template's function, its resolved policy, a resolver."""

    template: Mapping[str, Any]
    role: FunctionRole
    policy: FunctionPolicy
    resolver: TemplateResolver

    @property
    def properties(self) -> Mapping[str, Any]:
        properties: Mapping[str, Any] = self.template["Resources"][self.role.function_id].get(
            "Properties", {}
        )
        return properties


@dataclass(frozen=True, slots=True)
class OnBehalfUse:
    """Grants a function's role holds for AWS to use in its name: where they are, and why."""

    reason: str
    locate: Callable[[FunctionContext], Iterable[tuple[str, Any]]]


def _runtime_logs(context: FunctionContext) -> Iterator[tuple[str, Any]]:
    log_group = context.properties.get("LoggingConfig", {}).get("LogGroup")
    if isinstance(log_group, Mapping) and set(log_group) == {"Ref"}:
        arn: Any = {"GetAtt": f"{log_group['Ref']}.Arn"}
    else:
        name = log_group or {"Sub": f"/aws/lambda/${{{context.role.function_id}}}"}
        arn = {
            "Sub": [
                "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:${Name}:*",
                {"Name": name},
            ]
        }
    yield from (("logs:CreateLogStream", arn), ("logs:PutLogEvents", arn))


EVENT_SOURCE_MAPPING_ACTIONS = (
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:ChangeMessageVisibility",
)


def _event_source_queues(context: FunctionContext) -> Iterator[tuple[str, Any]]:
    for event in context.properties.get("Events", {}).values():
        if event.get("Type") == "SQS":
            yield from ((action, event["Properties"]["Queue"]) for action in EVENT_SOURCE_MAPPING_ACTIONS)


STREAM_MAPPING_ACTIONS = (
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
    "dynamodb:ListStreams",
)


def _event_source_streams(context: FunctionContext) -> Iterator[tuple[str, Any]]:
    for event in context.properties.get("Events", {}).values():
        if event.get("Type") != "DynamoDB":
            continue
        yield from ((action, event["Properties"]["Stream"]) for action in STREAM_MAPPING_ACTIONS)
        destination = event["Properties"].get("DestinationConfig", {}).get("OnFailure", {})
        if destination.get("Type") in DESTINATION_ACTIONS and "Destination" in destination:
            yield DESTINATION_ACTIONS[destination["Type"]], destination["Destination"]


DESTINATION_ACTIONS = {
    "SQS": "sqs:SendMessage",
    "SNS": "sns:Publish",
    "EventBridge": "events:PutEvents",
    "Lambda": "lambda:InvokeFunction",
}


def _failure_destinations(context: FunctionContext) -> Iterator[tuple[str, Any]]:
    destinations = context.properties.get("EventInvokeConfig", {}).get("DestinationConfig", {})
    for destination in destinations.values():
        if destination.get("Type") in DESTINATION_ACTIONS and "Destination" in destination:
            yield DESTINATION_ACTIONS[destination["Type"]], destination["Destination"]


def _keys_of_encrypted_topics(context: FunctionContext) -> Iterator[tuple[str, Any]]:
    published = [
        grant.resource
        for grant in granted_pairs(context.policy)
        if _matches(grant.action, "sns:Publish", ignore_case=True)
    ]
    for logical_id, resource in context.template["Resources"].items():
        key = resource.get("Properties", {}).get("KmsMasterKeyId")
        if resource["Type"] != "AWS::SNS::Topic" or key is None:
            continue
        topic = context.resolver.resolve({"Ref": logical_id}, f"Resources.{logical_id}")
        if any(_matches(pattern, topic) for pattern in published):
            arn = {"GetAtt": f"{key['Ref']}.Arn"} if isinstance(key, Mapping) and set(key) == {"Ref"} else key
            yield from (("kms:GenerateDataKey", arn), ("kms:Decrypt", arn))


def _buckets_of_read_objects(context: FunctionContext) -> Iterator[tuple[str, Any]]:
    for grant in granted_pairs(context.policy):
        if _matches(grant.action, "s3:GetObject", ignore_case=True) and grant.resource.startswith("arn:"):
            bucket = grant.resource.split("/", 1)[0]
            if bucket != grant.resource:
                yield "s3:ListBucket", bucket


ON_BEHALF_USES: tuple[OnBehalfUse, ...] = (
    OnBehalfUse(
        "The Lambda runtime creates the function's log streams and writes its logs with the function's role.",
        _runtime_logs,
    ),
    OnBehalfUse(
        "The SQS event source mapping receives, deletes and extends the visibility of the function's "
        "messages and reads its queue's attributes, with the function's role.",
        _event_source_queues,
    ),
    OnBehalfUse(
        "Lambda sends the record of a failed asynchronous invocation to the OnFailure destination with "
        "the function's role.",
        _failure_destinations,
    ),
    OnBehalfUse(
        "The DynamoDB stream event source mapping reads the table's stream with the function's role, and "
        "sends what expired unprocessed to its OnFailure destination with it.",
        _event_source_streams,
    ),
    OnBehalfUse(
        "SNS generates and decrypts the data key of an encrypted topic with the publisher's permissions "
        "when the function publishes to it (kms:ViaService SNS).",
        _keys_of_encrypted_topics,
    ),
    OnBehalfUse(
        "S3 checks s3:ListBucket when GetObject finds no object, answering 404 NoSuchKey instead of 403 "
        "AccessDenied; the function never lists the bucket itself.",
        _buckets_of_read_objects,
    ),
)


def on_behalf_grants(
    template: Mapping[str, Any], resources: LocalResources, policies: Mapping[str, FunctionPolicy]
) -> dict[str, dict[Call, str]]:
    """Per function, the (action, ARN) pairs AWS uses in its name, each with its reason."""
    resolver = TemplateResolver(template, resources)
    grants: dict[str, dict[Call, str]] = {}
    for name, role in function_roles(template).items():
        context = FunctionContext(template, role, policies[name], resolver)
        grants[name] = {
            Call(
                action, str(resolver.resolve(value, f"{role.function_id} ({use.locate.__name__})"))
            ): use.reason
            for use in ON_BEHALF_USES
            for action, value in use.locate(context)
        }
    return grants


# ---- all of it for one stack ----


@dataclass(frozen=True, slots=True)
class StackRoles:
    """The roles of one local stack: local values, each function's resolved policy, its on-behalf grants."""

    resources: LocalResources
    policies: Mapping[str, FunctionPolicy]
    on_behalf: Mapping[str, Mapping[Call, str]]


def stack_roles(
    template: Mapping[str, Any],
    stack: LocalStackLike,
    *,
    region: str | None = None,
    account_id: str | None = None,
) -> StackRoles:
    resources = local_resources(template, stack, region=region, account_id=account_id)
    policies = function_policies(template, resources)
    return StackRoles(resources, policies, on_behalf_grants(template, resources, policies))


@dataclass(frozen=True, slots=True)
class Findings:
    """What the census found for one function: calls its role does not grant, grants it never used (and
    AWS does not use for it), and granted calls a Condition bears on."""

    function: str
    ungranted: Sequence[Decision]
    unused: Sequence[Grant]
    conditional: Sequence[Decision]

    @property
    def clean(self) -> bool:
        return not self.ungranted and not self.unused

    def describe(self) -> str:
        """The findings as lines an assertion message can show."""
        lines = [f"{self.function}:"]
        lines += [
            f"  not granted: {d.call.action} on {d.call.resource}"
            + (f" (denied by {', '.join(d.denied_by)})" if d.denied_by else "")
            for d in self.ungranted
        ]
        lines += [f"  never used: {g.action} on {g.resource} (statement {g.sid})" for g in self.unused]
        lines += [
            f"  granted subject to a condition not evaluated: {d.call.action} on {d.call.resource}: "
            + "; ".join(d.conditions)
            for d in self.conditional
        ]
        return "\n".join(lines)


def census_findings(roles: StackRoles, census: Census) -> dict[str, Findings]:
    """The census's findings for every function of the template (a function never invoked uses nothing)."""
    findings: dict[str, Findings] = {}
    for name, policy in roles.policies.items():
        calls = list(census.calls(name))
        findings[name] = Findings(
            name,
            ungranted_calls(policy, calls),
            unused_grants(policy, calls, roles.on_behalf[name]),
            conditional_calls(policy, calls),
        )
    return findings


type GrantIdentity = tuple[str, str, int]
"""A grant as the template states it (statement, action, position of its resource): the same in any stack."""


def _identity(policy: FunctionPolicy, grant: Grant) -> GrantIdentity:
    statement = next(s for s in policy.statements if s.sid == grant.sid)
    position = statement.resources.index(grant.resource) if grant.resource in statement.resources else 0
    return grant.sid, grant.action.lower(), position


class CensusTally:
    """The census over many local stacks (the end-to-end tier makes one per test, each with its own ARNs):
    calls a role does not grant are collected from every stack, the stack's name shown as `<stack>`; a grant
    is unused only if no stack used it (and AWS does not use it for the function)."""

    def __init__(self) -> None:
        self._ungranted: dict[str, dict[Call, Decision]] = {}
        self._conditional: dict[str, dict[Call, Decision]] = {}
        self._unused: dict[str, dict[GrantIdentity, Grant]] = {}
        self._used: dict[str, set[GrantIdentity]] = {}
        self._lock = Lock()

    def add(self, roles: StackRoles, census: Census) -> None:
        stack = roles.resources.stack_name
        for name, found in census_findings(roles, census).items():
            policy = roles.policies[name]
            unused = {_identity(policy, grant) for grant in found.unused}
            with self._lock:
                for grant in granted_pairs(policy):
                    identity = _identity(policy, grant)
                    if identity in unused:
                        self._unused.setdefault(name, {}).setdefault(identity, grant)
                    else:
                        self._used.setdefault(name, set()).add(identity)
                for kept, decisions in (
                    (self._ungranted, found.ungranted),
                    (self._conditional, found.conditional),
                ):
                    for decision in decisions:
                        call = Call(decision.call.action, decision.call.resource.replace(stack, "<stack>"))
                        kept.setdefault(name, {}).setdefault(call, replace(decision, call=call))

    def findings(self) -> dict[str, Findings]:
        with self._lock:
            functions = sorted(set(self._unused) | set(self._used) | set(self._ungranted))
            return {
                name: Findings(
                    name,
                    [self._ungranted.get(name, {})[call] for call in sorted(self._ungranted.get(name, {}))],
                    [
                        grant
                        for identity, grant in sorted(self._unused.get(name, {}).items())
                        if identity not in self._used.get(name, set())
                    ],
                    list(self._conditional.get(name, {}).values()),
                )
                for name in functions
            }
