"""The functions' IAM roles from `template.yaml`, enforced locally: each handler runs on moto with credentials
of its own role (`RoleGuard`), and a census records the authorizations every call it makes needs, resource
ARNs included, so what runs clean here would be allowed in an AWS account.

The two checks overlap on purpose and each catches what the other cannot: moto refuses an action the role does
not grant as the call is made (so the handler meets the refusal as it would on AWS), but it checks resources
only for SQS and S3; the census checks every call's resource ARN against the resolved policy, Deny statements
and conditions included, but only after the fact. `metering_testbench.census` adds what only a test needs:
grants no call used, and the uses AWS makes of a role on the function's behalf."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cache
from threading import Lock
from typing import Any, Literal

import boto3
import botocore.loaders
import botocore.session
from metering import aws

from metering_tools.local_stack import Arns, LocalStack
from metering_tools.template import Resolver, UnsupportedTemplateError, functions

type Handler = Callable[..., Any]

POLICY_VERSION = "2012-10-17"


# ---- policies ----


@dataclass(frozen=True, slots=True)
class Statement:
    """One resolved policy statement; `condition` is kept as the template states it."""

    sid: str
    effect: Literal["Allow", "Deny"]
    actions: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    condition: Mapping[str, Any] | None = field(default=None, hash=False)

    @classmethod
    def parse(cls, document: Mapping[str, Any], index: int) -> Statement:
        effect = document["Effect"]
        if effect not in {"Allow", "Deny"} or {"NotAction", "NotResource"} & set(document):
            raise UnsupportedTemplateError(
                f"statement {index}: only Allow or Deny of Action on Resource is read"
            )
        return cls(
            sid=str(document.get("Sid", f"#{index}")),
            effect=effect,
            actions=_strings(document.get("Action")),
            resources=_strings(document.get("Resource")),
            condition=document.get("Condition"),
        )

    def covers_action(self, action: str) -> bool:
        return any(matches(pattern, action, ignore_case=True) for pattern in self.actions)

    def covers(self, call: Call) -> bool:
        return self.covers_action(call.action) and any(matches(p, call.resource) for p in self.resources)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (str(value),) if isinstance(value, str) else tuple(str(item) for item in value)


@cache
def _pattern(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
    return re.compile(body, re.IGNORECASE if ignore_case else 0)


def matches(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcard matching: `*` any run of characters, `?` one; actions ignore case, ARNs do not."""
    return _pattern(pattern, ignore_case).fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class FunctionPolicy:
    """A function's role with its inline policies resolved for one local stack."""

    function: str
    statements: tuple[Statement, ...]

    @classmethod
    def of(cls, function: str, documents: Mapping[str, Mapping[str, Any]]) -> FunctionPolicy:
        listed = [document.get("Statement", []) for document in documents.values()]
        raw = [
            item
            for statements in listed
            for item in (statements if isinstance(statements, list) else [statements])
        ]
        return cls(function, tuple(Statement.parse(statement, index) for index, statement in enumerate(raw)))


def function_policies(template: Mapping[str, Any], resolver: Resolver) -> dict[str, FunctionPolicy]:
    """Each function's role, its inline policies resolved against a local stack."""
    policies: dict[str, FunctionPolicy] = {}
    for name, function in functions(template).items():
        properties = template["Resources"][function.role_id].get("Properties", {})
        if properties.get("ManagedPolicyArns") or properties.get("PermissionsBoundary"):
            raise UnsupportedTemplateError(
                f"{function.role_id}: managed policies and boundaries are not resolved"
            )
        where = f"Resources.{function.role_id}.Properties.Policies"
        documents = {
            str(resolver.resolve(policy["PolicyName"], where)): resolver.resolve(
                policy["PolicyDocument"], where
            )
            for policy in properties.get("Policies", [])
        }
        policies[name] = FunctionPolicy.of(name, documents)
    return policies


@dataclass(frozen=True, slots=True)
class StackRoles:
    """The roles of one local stack: the stack, the resolver of its references, each function's policy."""

    stack: LocalStack
    resolver: Resolver
    policies: Mapping[str, FunctionPolicy]


def stack_roles(template: Mapping[str, Any], stack: LocalStack) -> StackRoles:
    resolver = stack.resolver(template)
    return StackRoles(stack, resolver, function_policies(template, resolver))


# ---- from an API call to the IAM authorizations it needs ----


@dataclass(frozen=True, slots=True, order=True)
class Call:
    """One authorization an API call needs: the IAM action and the ARN it is checked on."""

    action: str
    resource: str


# API operations (`<service>:<Operation>`) whose IAM action is not named after them: batch forms need the
# single action, S3 reads and lists need GetObject and ListBucket. One table for the census and for moto's
# policies.
OPERATION_ACTIONS: Mapping[str, tuple[str, ...]] = {
    "sqs:SendMessageBatch": ("sqs:SendMessage",),
    "sqs:DeleteMessageBatch": ("sqs:DeleteMessage",),
    "sqs:ChangeMessageVisibilityBatch": ("sqs:ChangeMessageVisibility",),
    "sns:PublishBatch": ("sns:Publish",),
    "s3:HeadObject": ("s3:GetObject",),
    "s3:ListObjects": ("s3:ListBucket",),
    "s3:ListObjectsV2": ("s3:ListBucket",),
    "s3:HeadBucket": ("s3:ListBucket",),
    "lambda:Invoke": ("lambda:InvokeFunction",),
    "lambda:InvokeAsync": ("lambda:InvokeFunction",),
    "lambda:InvokeWithResponseStream": ("lambda:InvokeFunction",),
}
# S3 actions checked on an object ARN (bucket/key); the others on the bucket ARN.
S3_OBJECT_ACTIONS = frozenset(
    {"GetObject", "GetObjectVersion", "PutObject", "DeleteObject", "DeleteObjectVersion", "RestoreObject"}
    | {"GetObjectAcl", "PutObjectAcl", "GetObjectTagging", "PutObjectTagging", "AbortMultipartUpload"}
    | {"ListMultipartUploadParts"}
)


def calls_of(service: str, operation: str, params: Mapping[str, Any], arns: Arns) -> list[Call]:
    """The IAM authorizations one API call needs; an operation not mapped here needs `<service>:<Operation>`
    on `*` (for the census to report, never to pass silently)."""
    checked = f"{service}:{operation}"
    actions = OPERATION_ACTIONS.get(checked, (checked,))
    match service:
        case "dynamodb":
            return _dynamodb_calls(operation, params, arns)
        case "sqs":
            queue = params.get("QueueUrl") or params.get("QueueName")
            return [Call(action, arns.queue(str(queue)) if queue else "*") for action in actions]
        case "events" if operation == "PutEvents":
            buses = dict.fromkeys(arns.bus(entry.get("EventBusName")) for entry in params.get("Entries", []))
            return [Call("events:PutEvents", bus) for bus in buses]
        case "sns":
            topic = params.get("TopicArn") or params.get("TargetArn")
            return [Call(action, str(topic) if topic else "*") for action in actions]
        case "s3" if "Bucket" in params:
            key = params.get("Key")
            return [Call(action, arns.bucket(str(params["Bucket"]), key)) for action in actions]
        case "lambda" if "FunctionName" in params:
            function = arns.function(str(params["FunctionName"]), params.get("Qualifier"))
            return [Call(action, function) for action in actions]
        case "secretsmanager" if "SecretId" in params:
            return [Call(action, arns.secret(str(params["SecretId"]))) for action in actions]
    return [Call(action, "*") for action in actions]


def _dynamodb_calls(operation: str, params: Mapping[str, Any], arns: Arns) -> list[Call]:
    if operation in {"BatchGetItem", "BatchWriteItem"}:
        return [Call(f"dynamodb:{operation}", arns.table(table)) for table in params.get("RequestItems", {})]
    table = params.get("TableName")
    if not table:
        return [Call(f"dynamodb:{operation}", "*")]
    index = (
        f"/index/{params['IndexName']}" if params.get("IndexName") else ""
    )  # IAM checks an index's own ARN
    return [Call(f"dynamodb:{operation}", arns.table(str(table)) + index)]


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


# ---- one identity per function on moto ----

ADMINISTRATOR_POLICY = {
    "Version": POLICY_VERSION,
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
SESSION_SECONDS = 12 * 3600
_IDENTITY_EVENT = "metering-roles-identity"


class FunctionIdentities:
    """A boto3 session per function holding credentials of its role, and one for the harness itself.

    `activate(name)` makes the process's default session that function's, as Lambda's environment does.
    Outside it the default session is the harness's (allowed everything); `metering.aws`'s cached clients
    still belong to the last function, so harness code uses clients of its own."""

    def __init__(
        self, harness: boto3.Session, sessions: Mapping[str, boto3.Session], role_arns: Mapping[str, str]
    ):
        self.harness_session = harness
        self.role_arns = dict(role_arns)
        self._sessions = dict(sessions)
        for name, session in self._sessions.items():
            session.events.register(
                _IDENTITY_EVENT, lambda answer=name, **_: answer, unique_id=_IDENTITY_EVENT
            )

    @classmethod
    def create(
        cls, policies: Mapping[str, FunctionPolicy], *, region: str, prefix: str = "metering-local"
    ) -> FunctionIdentities:
        """Create the harness user and one role per function (its policy as `moto_policy_document`), and
        assume each role as the harness; IAM authentication must still be off. The roles trust the harness
        user, not lambda.amazonaws.com: the harness plays Lambda's part, and moto's trust check reads only
        `Principal.AWS`."""
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
        """Register a botocore event handler on every function's session (the cached clients are rebuilt: a
        client copies its session's handlers when it is built)."""
        self.register_per_function(event_name, lambda _: handler, unique_id)

    def register_per_function(
        self, event_name: str, handler_for: Callable[[str], Handler], unique_id: str | None = None
    ) -> None:
        for name, session in self._sessions.items():
            session.events.register(
                event_name, handler_for(name), unique_id=unique_id and f"{unique_id}:{name}"
            )
        aws.reset_clients()


_MODELS = botocore.loaders.create_loader()


def _session(**arguments: Any) -> boto3.Session:
    """A session of its own credentials sharing the process's service models, which are most of what the
    first clients of a new session cost."""
    core = botocore.session.get_session()
    core.register_component("data_loader", _MODELS)
    session = boto3.Session(botocore_session=core, **arguments)
    _MODELS.search_paths[:] = list(dict.fromkeys(_MODELS.search_paths))  # boto3 appends its own each time
    return session


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
        self.arns = Arns(region, account_id, partition)
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
        calls = calls_of(service, operation, params, self.arns)
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


# ---- each handler as its role ----


@dataclass
class _Activation:
    function: str
    holders: int
    scope: ExitStack


class RoleGuard:
    """Each handler run as the IAM role its `template.yaml` entry names, on moto with IAM authentication on,
    and the census of every call it makes: moto refuses an action the role does not grant, the census also
    reports the resources moto does not check. What runs clean here would be allowed in an AWS account.

    The default boto3 session is process-wide, as a Lambda container's environment is: one function at a
    time. Invocations of the same function share its activation (threads racing two containers); one function
    invoked inside another's invocation (a test interleaving them) runs as itself, and the outer one's
    clients are rebuilt as its own when it resumes. After an invocation `metering.aws` keeps the function's
    clients, as a warm container does, until another function runs."""

    def __init__(self, roles: StackRoles, identities: FunctionIdentities) -> None:
        """Guard with identities already created (`FunctionIdentities.create`); a census is attached."""
        self.roles = roles
        self.identities = identities
        self.census = Census(roles.stack.region, roles.stack.account_id)
        self.census.attach(identities)
        self._lock = threading.RLock()
        self._active: list[_Activation] = []

    @classmethod
    def install(cls, template: Mapping[str, Any], stack: LocalStack) -> RoleGuard:
        """One identity per function with its template role, and a census on each. Call it after `provision`
        and before `enforced()`: it creates IAM users and roles, which needs authentication still off."""
        roles = stack_roles(template, stack)
        return cls(
            roles, FunctionIdentities.create(roles.policies, region=stack.region, prefix=stack.table_name)
        )

    def enforced(self) -> AbstractContextManager[None]:
        """IAM authentication on; outside an invocation, calls are the harness's (allowed everything)."""
        return self.identities.enforced()

    @contextmanager
    def activated(self, function: str) -> Iterator[None]:
        """Run the block as `function` (see the class for invocations that overlap)."""
        with self._lock:
            if self._active and self._active[-1].function == function:
                self._active[-1].holders += 1
            else:
                exit_stack = ExitStack()
                exit_stack.enter_context(self.identities.activate(function))
                self._active.append(_Activation(function, 1, exit_stack))
        try:
            yield
        finally:
            with self._lock:
                activation = self._active[-1]
                activation.holders -= 1
                if activation.holders == 0:
                    self._active.pop()
                    activation.scope.close()
                    if self._active:
                        aws.reset_clients()

    def invoke(self, function: str, handler: Handler, event: Any, context: Any) -> Any:
        """Invoke a handler as `function` would be invoked by Lambda."""
        with self.activated(function):
            return handler(event, context)

    def ungranted(self) -> dict[str, list[Decision]]:
        """Per function, the calls its role does not grant (resource ARNs included)."""
        found = {
            name: ungranted_calls(policy, self.census.calls(name))
            for name, policy in self.roles.policies.items()
        }
        return {name: decisions for name, decisions in found.items() if decisions}

    def refusals(self) -> str:
        """The calls AWS would refuse, one line each under their function (empty when there are none)."""
        return "\n".join(
            line
            for name, decisions in self.ungranted().items()
            for line in (f"{name}:", *(f"  not granted: {describe(d)}" for d in decisions))
        )


def describe(decision: Decision) -> str:
    denied = f" (denied by {', '.join(decision.denied_by)})" if decision.denied_by else ""
    return f"{decision.call.action} on {decision.call.resource}{denied}"
