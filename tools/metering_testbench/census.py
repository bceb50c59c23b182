"""The census's verdict on each role, which only a test needs: calls not granted, grants no call used (less
those AWS uses in the function's name, with reasons), calls a Condition bears on; one stack or many."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from metering_tools.roles import S3_OBJECT_ACTIONS, Call, describe, evaluate, matches, ungranted_calls
from metering_tools.template import FunctionConfig, functions, target

if TYPE_CHECKING:
    from metering_tools.roles import Census, Decision, FunctionPolicy, RoleGuard, StackRoles


def conditional_calls(policy: FunctionPolicy, calls: Iterable[Call]) -> list[Decision]:
    """The granted calls on which a statement's Condition bears (reported, since it is not evaluated)."""
    return [d for d in (evaluate(policy, call) for call in sorted(set(calls))) if d.allowed and d.conditions]


@dataclass(frozen=True, slots=True, order=True)
class Grant:
    """One (action, resource) pair an Allow statement grants, as written (wildcards included)."""

    sid: str
    action: str
    resource: str

    def used_by(self, call: Call) -> bool:
        return matches(self.action, call.action, ignore_case=True) and matches(self.resource, call.resource)


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
    return ("/" in resource.split(":::", 1)[-1]) == (name in S3_OBJECT_ACTIONS)  # object ARN, object action


def unused_grants(policy: FunctionPolicy, calls: Iterable[Call], on_behalf: Iterable[Call]) -> list[Grant]:
    used = set(calls) | set(on_behalf)  # AWS's uses on the function's behalf: see ON_BEHALF_USES
    statements = {statement.sid: statement for statement in policy.statements}
    return [
        grant
        for grant in granted_pairs(policy)
        if not any(statements[grant.sid].covers(call) and grant.used_by(call) for call in used)
    ]


DESTINATION_ACTIONS = {
    "SQS": "sqs:SendMessage",
    "SNS": "sns:Publish",
    "EventBridge": "events:PutEvents",
    "Lambda": "lambda:InvokeFunction",
}


def _runtime_logs(function: FunctionConfig, roles: StackRoles) -> Iterator[tuple[str, Any]]:
    name = function.log_group or {"Fn::Sub": f"/aws/lambda/${{{function.logical_id}}}"}
    pattern = "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:${Name}:*"
    arn = {"Fn::Sub": [pattern, {"Name": name}]}  # a log group's Arn attribute, also for `Ref` of one
    yield from (("logs:CreateLogStream", arn), ("logs:PutLogEvents", arn))


def _event_source_queues(function: FunctionConfig, roles: StackRoles) -> Iterator[tuple[str, Any]]:
    for queue in function.sources:
        for action in ("ReceiveMessage", "DeleteMessage", "GetQueueAttributes", "ChangeMessageVisibility"):
            yield f"sqs:{action}", {"Fn::GetAtt": [queue, "Arn"]}


def _failure_destinations(function: FunctionConfig, roles: StackRoles) -> Iterator[tuple[str, Any]]:
    yield from _destinations(function.async_destinations)


def _event_source_streams(function: FunctionConfig, roles: StackRoles) -> Iterator[tuple[str, Any]]:
    if (stream := function.stream) is not None:
        for action in ("DescribeStream", "GetRecords", "GetShardIterator", "ListStreams"):
            yield f"dynamodb:{action}", stream.stream
        yield from _destinations([stream.on_failure])


def _destinations(destinations: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, Any]]:
    typed = (d for d in destinations if d.get("Type") in DESTINATION_ACTIONS and "Destination" in d)
    return ((DESTINATION_ACTIONS[d["Type"]], d["Destination"]) for d in typed)


def _keys_of_encrypted_topics(function: FunctionConfig, roles: StackRoles) -> Iterator[tuple[str, Any]]:
    for logical_id, resource in roles.resolver.template["Resources"].items():
        key = resource.get("Properties", {}).get("KmsMasterKeyId")
        if resource["Type"] == "AWS::SNS::Topic" and key is not None:
            topic = roles.resolver.resolve({"Ref": logical_id}, f"Resources.{logical_id}")
            if evaluate(roles.policies[function.name], Call("sns:Publish", topic)).allowed:
                named = target(key)  # a key's Ref is its id, not the ARN the grant names
                arn = {"Fn::GetAtt": [named[0], "Arn"]} if named is not None and named[1] is None else key
                yield from (("kms:GenerateDataKey", arn), ("kms:Decrypt", arn))


def _buckets_of_read_objects(function: FunctionConfig, roles: StackRoles) -> Iterator[tuple[str, Any]]:
    for grant in granted_pairs(roles.policies[function.name]):
        object_arn = grant.resource.startswith("arn:") and "/" in grant.resource
        if object_arn and matches(grant.action, "s3:GetObject", ignore_case=True):
            yield "s3:ListBucket", grant.resource.split("/", 1)[0]


ON_BEHALF_USES: dict[Callable[[FunctionConfig, StackRoles], Iterable[tuple[str, Any]]], str] = {
    _runtime_logs: (
        "The Lambda runtime creates the function's log streams and writes its logs with the function's role."
    ),
    _event_source_queues: (
        "The SQS event source mapping receives, deletes and extends the visibility of the function's "
        "messages and reads its queue's attributes, with the function's role."
    ),
    _failure_destinations: (
        "Lambda sends the record of a failed asynchronous invocation to the OnFailure destination with "
        "the function's role."
    ),
    _event_source_streams: (
        "The DynamoDB stream event source mapping reads the table's stream with the function's role, and "
        "sends what expired unprocessed to its OnFailure destination with it."
    ),
    _keys_of_encrypted_topics: (
        "SNS generates and decrypts the data key of an encrypted topic with the publisher's permissions "
        "when the function publishes to it (kms:ViaService SNS)."
    ),
    _buckets_of_read_objects: (
        "S3 checks s3:ListBucket when GetObject finds no object, answering 404 NoSuchKey instead of 403 "
        "AccessDenied; the function never lists the bucket itself."
    ),
}
"""Grants a role holds for AWS to use in its function's name: their (action, resource) locator, and why."""


def on_behalf_grants(roles: StackRoles) -> dict[str, dict[Call, str]]:
    resolve = roles.resolver.resolve
    return {
        name: {
            Call(action, str(resolve(value, f"{function.logical_id} ({locate.__name__})"))): reason
            for locate, reason in ON_BEHALF_USES.items()
            for action, value in locate(function, roles)
        }
        for name, function in functions(roles.resolver.template).items()
    }


@dataclass(frozen=True, slots=True)
class Findings:
    function: str
    ungranted: Sequence[Decision]
    unused: Sequence[Grant]
    conditional: Sequence[Decision]

    def describe(self) -> str:
        lines = [f"{self.function}:"] + [f"  not granted: {describe(d)}" for d in self.ungranted]
        lines += [f"  never used: {g.action} on {g.resource} (statement {g.sid})" for g in self.unused]
        conditional = [f"{describe(d)}: {'; '.join(d.conditions)}" for d in self.conditional]
        lines += [f"  granted subject to a condition not evaluated: {call}" for call in conditional]
        return "\n".join(lines)


def census_findings(roles: StackRoles, census: Census) -> dict[str, Findings]:
    """The census's findings for every function of the template (a function never invoked uses nothing)."""
    on_behalf = on_behalf_grants(roles)
    found: dict[str, Findings] = {}
    for name, policy in roles.policies.items():
        calls = list(census.calls(name))
        unused = unused_grants(policy, calls, on_behalf[name])
        found[name] = Findings(name, ungranted_calls(policy, calls), unused, conditional_calls(policy, calls))
    return found


def _identity(policy: FunctionPolicy, grant: Grant) -> tuple[str, str, int]:
    """A grant as the template states it (statement, action, resource position): the same in any stack."""
    resources = next(s.resources for s in policy.statements if s.sid == grant.sid)
    position = resources.index(grant.resource) if grant.resource in resources else 0
    return grant.sid, grant.action.lower(), position


class CensusTally:
    """The census over many local stacks (the end-to-end tier makes one per test, each with its own ARNs):
    calls not granted from every stack, its name shown as `<stack>`; a grant is unused if no stack used it."""

    def __init__(self) -> None:
        self._calls: dict[str, dict[Call, Decision]] = defaultdict(dict)  # not granted, or under a Condition
        self._unused: dict[str, dict[tuple[str, str, int], Grant]] = defaultdict(dict)
        self._used: dict[str, set[tuple[str, str, int]]] = defaultdict(set)

    def add(self, guard: RoleGuard) -> None:
        stack = f"metering-{guard.roles.stack.stage}"
        for name, found in census_findings(guard.roles, guard.census).items():
            policy = guard.roles.policies[name]
            unused = {_identity(policy, grant): grant for grant in found.unused}
            self._unused[name] = unused | self._unused[name]  # shown with the first stack's ARN
            self._used[name] |= {_identity(policy, grant) for grant in granted_pairs(policy)} - unused.keys()
            for decision in (*found.ungranted, *found.conditional):
                call = Call(decision.call.action, decision.call.resource.replace(stack, "<stack>"))
                self._calls[name].setdefault(call, replace(decision, call=call))

    def findings(self) -> dict[str, Findings]:
        return {
            name: Findings(
                name,
                sorted((d for d in self._calls[name].values() if not d.allowed), key=lambda d: d.call),
                [g for key, g in sorted(self._unused[name].items()) if key not in self._used[name]],
                [d for d in self._calls[name].values() if d.allowed],
            )
            for name in sorted(self._used)
        }
