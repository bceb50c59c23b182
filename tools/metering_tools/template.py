"""`template.yaml` read once, for every tool that needs it: one loader, one expansion, one resolver of the
intrinsic functions, one list of the stack's functions.

The loader reads short tags into the one form CloudFormation's JSON, samtranslator and moto use (`{"Ref": x}`,
`{"Fn::GetAtt": [resource, attribute]}`, `{"Fn::Sub": text}`); loops, literal `Mappings` lookups and local
nested applications are expanded, so every reader sees each resource as CloudFormation creates it. What is
not resolved here raises `UnsupportedTemplateError`: teach it here rather than guess in one of the callers."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def _stack_root() -> Path:
    """The folder of template.yaml, monitoring/ and functions/: package `metering_stack`, the checkout itself
    in an editable install, a copy in a wheel (pyproject.toml)."""
    spec = importlib.util.find_spec("metering_stack")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "template.yaml").is_file():
            return Path(location)
    raise ModuleNotFoundError("no metering_stack with a template.yaml: install the project (make setup)")


STACK_ROOT = _stack_root()
TEMPLATE_PATH = STACK_ROOT / "template.yaml"
LANGUAGE_EXTENSIONS = "AWS::LanguageExtensions"
FOR_EACH = "Fn::ForEach::"
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")

NO_VALUE: Any = object()
"""What `!Ref AWS::NoValue` resolves to: the list item or mapping key holding it is dropped."""


class UnsupportedTemplateError(ValueError):
    """The template uses a construct this module does not resolve, or names something without a value."""


# ---- reading ----
class _Loader(yaml.SafeLoader):
    """Reads `!Ref`, `!GetAtt`, `!Sub`, ... as `{"Ref": ...}`, `{"Fn::GetAtt": [...]}`, `{"Fn::Sub": ...}`."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    function = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        return {function: value.split(".", 1) if suffix == "GetAtt" else value}
    if isinstance(node, yaml.SequenceNode):
        return {function: loader.construct_sequence(node, deep=True)}
    return {function: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]


_Loader.add_multi_constructor("!", _tag)


def parse_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template as written: loops and applications as they are."""
    document: dict[str, Any] = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    return document


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template as CloudFormation creates it: loops expanded, the monitoring application inlined."""
    return inline_applications(expand(parse_template(path)), path.parent)


def transforms(template: Mapping[str, Any]) -> list[str]:
    """The template's transforms, in order (one may be written as a plain string)."""
    declared = template.get("Transform", [])
    return [declared] if isinstance(declared, str) else list(declared)


def expand(template: dict[str, Any]) -> dict[str, Any]:
    """A copy with the `AWS::LanguageExtensions` loops expanded and `Fn::FindInMap` of literal keys looked up
    (then `Fn::Sub` variables that became literal are written into their string)."""
    expanded = copy.deepcopy(template)
    if LANGUAGE_EXTENSIONS in transforms(expanded):
        for section in ("Conditions", "Resources", "Outputs"):
            if section in expanded:
                expanded[section] = _expand_loops(expanded[section], f"template.{section}")
    folded: dict[str, Any] = _fold(expanded, expanded.get("Mappings", {}))
    for location, key, value in walk(folded, "template"):
        if key in ("Fn::Length", "Fn::ToJsonString") or (key == "Fn::FindInMap" and len(value) > 3):
            raise UnsupportedTemplateError(f"{key} at {location} is not resolved here")
    return folded


def inline_applications(template: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy in which every `AWS::Serverless::Application` with a local `Location` is replaced by its
    template's resources (parameters replaced by what the parent passes, else their defaults), and the
    parent's references to its outputs by their values."""
    inlined = copy.deepcopy(template)
    resources: dict[str, Any] = inlined["Resources"]
    outputs: dict[str, Any] = {}
    for name, application in list(resources.items()):
        location = application.get("Properties", {}).get("Location")
        if application["Type"] != "AWS::Serverless::Application" or not isinstance(location, str):
            continue
        if "Condition" in application:
            raise UnsupportedTemplateError(f"the condition of application {name} is not resolved here")
        nested = load_template(base / location)
        passed, declared = application["Properties"].get("Parameters", {}), nested.get("Parameters", {})
        if unknown := sorted(set(passed) - set(declared)):
            raise UnsupportedTemplateError(f"{name} passes {unknown}, which its template does not declare")
        defaults = {parameter: spec["Default"] for parameter, spec in declared.items() if "Default" in spec}
        if missing := sorted(set(declared) - set(defaults | passed)):
            raise UnsupportedTemplateError(f"{name} does not pass {missing}, which have no default")
        nested = substitute(nested, defaults | passed)
        del resources[name]
        for section in ("Mappings", "Conditions", "Resources"):
            _merge(inlined.setdefault(section, {}), nested.get(section, {}), f"{name}.{section}")
        for output, declaration in nested.get("Outputs", {}).items():
            outputs[f"{name}.Outputs.{output}"] = declaration["Value"]
    return substitute(inlined, outputs) if outputs else inlined


def _expand_loops(section: dict[str, Any], location: str) -> dict[str, Any]:
    expanded: dict[str, Any] = {}
    for key, value in section.items():
        if not key.startswith(FOR_EACH):
            _merge(expanded, {key: value}, location)
            continue
        identifier, collection, fragment = value
        if not isinstance(collection, list) or not all(isinstance(item, str) for item in collection):
            raise UnsupportedTemplateError(
                f"{key} at {location}: only a literal list of strings is expanded here"
            )
        for item in collection:
            _merge(expanded, _expand_loops(_instantiate(fragment, identifier, item), location), location)
    for inner, key, _ in walk(expanded, location):
        if key.startswith(FOR_EACH):
            raise UnsupportedTemplateError(f"Fn::ForEach inside {inner} is not expanded here")
    return expanded


def _instantiate(value: Any, identifier: str, item: str) -> Any:
    """The loop's fragment for one item: `${identifier}` and `&{identifier}` (alphanumerics only) in every key
    and string, and `Ref identifier`, replaced."""
    match value:
        case {"Ref": str(name)} if name == identifier:
            return item
        case str():
            alphanumeric = re.sub(r"[^A-Za-z0-9]", "", item)
            return value.replace(f"${{{identifier}}}", item).replace(f"&{{{identifier}}}", alphanumeric)
        case dict():
            return {
                _instantiate(key, identifier, item): _instantiate(inner, identifier, item)
                for key, inner in value.items()
            }
        case list():
            return [_instantiate(inner, identifier, item) for inner in value]
    return value


def _fold(value: Any, mappings: dict[str, Any]) -> Any:
    """`value` with literal map lookups replaced by their values, `Fn::GetAtt` of a literal `Fn::Sub` name
    written as the name, and literal `Fn::Sub` variables written into their string."""
    match value:
        case {"Fn::FindInMap": [str(name), str(top), str(second)]}:
            try:
                return mappings[name][top][second]
            except KeyError as missing:
                raise UnsupportedTemplateError(f"no {missing} in mapping {name} for {top}.{second}") from None
        case {"Fn::GetAtt": [{"Fn::Sub": str(name)}, str(attribute)]} if not _PLACEHOLDER.search(name):
            return {"Fn::GetAtt": [name, attribute]}
        case {"Fn::Sub": [str(text), dict(variables)]}:
            folded = {name: _fold(inner, mappings) for name, inner in variables.items()}
            literal = {name: inner for name, inner in folded.items() if isinstance(inner, str)}
            text = _PLACEHOLDER.sub(lambda m: literal.get(m[1], m[0]), text)
            remaining = {name: inner for name, inner in folded.items() if name not in literal}
            return {"Fn::Sub": [text, remaining] if remaining else text}
        case dict():
            return {key: _fold(inner, mappings) for key, inner in value.items()}
        case list():
            return [_fold(inner, mappings) for inner in value]
    return value


def substitute(value: Any, values: dict[str, Any]) -> Any:
    """`value` with `Ref name`, `Fn::GetAtt name` and `${name}` of each name in `values` replaced by its
    value."""
    match value:
        case {"Ref": str(name)} if name in values:
            return copy.deepcopy(values[name])
        case {"Fn::GetAtt": [str(), str()] as named} if ".".join(named) in values:
            return copy.deepcopy(values[".".join(named)])
        case {"Fn::Sub": str(text)}:
            if (whole := _PLACEHOLDER.fullmatch(text)) and whole[1] in values:
                return copy.deepcopy(values[whole[1]])
            return {"Fn::Sub": _PLACEHOLDER.sub(lambda m: _placeholder(m[1], m[0], values), text)}
        case {"Fn::Sub": [str(text), dict(variables)]}:
            own = {name: substitute(inner, values) for name, inner in variables.items()}
            outer = {name: inner for name, inner in values.items() if name not in variables}
            return {"Fn::Sub": [_PLACEHOLDER.sub(lambda m: _placeholder(m[1], m[0], outer), text), own]}
        case dict():
            return {key: substitute(inner, values) for key, inner in value.items()}
        case list():
            return [substitute(inner, values) for inner in value]
    return value


def _placeholder(name: str, original: str, values: dict[str, Any]) -> str:
    """What `${name}` becomes inside a `Fn::Sub` string when `name` stands for `values[name]`."""
    if name not in values:
        return original
    if isinstance(values[name], str | int):
        return str(values[name])
    named = target(values[name])
    if named is None:
        raise UnsupportedTemplateError(
            f"${{{name}}} stands for {values[name]!r}, which a Sub string cannot hold"
        )
    resource, attribute = named
    return f"${{{resource}.{attribute}}}" if attribute else f"${{{resource}}}"


def _merge(into: dict[str, Any], entries: dict[str, Any], location: str) -> None:
    if clashes := sorted(set(into) & set(entries)):
        raise UnsupportedTemplateError(f"{location}: {clashes} defined twice")
    into.update(entries)


def walk(value: Any, location: str) -> Iterator[tuple[str, str, Any]]:
    """(location, key, value) of every mapping entry below `value`."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield location, key, item
            yield from walk(item, f"{location}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{location}[{index}]")


# ---- references ----
def target(value: Any) -> tuple[str, str | None] | None:
    """(resource, None) for `Ref resource`, (resource, attribute) for `Fn::GetAtt [resource, attribute]`."""
    match value:
        case {"Ref": str(name)}:
            return name, None
        case {"Fn::GetAtt": [str(resource), str(attribute)]}:
            return resource, attribute
    return None


def references(value: Any) -> set[str]:
    """The parameters and resources a value names: `Ref`, `Fn::GetAtt` and the `${...}` of `Fn::Sub` (less
    its own variables and `${!escaped}` text)."""
    match value:
        case list():
            return set().union(*(references(item) for item in value))
        case {"Fn::Sub": str(text)}:
            return _sub_names(text)
        case {"Fn::Sub": [str(text), dict(variables)]}:
            return (_sub_names(text) - set(variables)) | references(list(variables.values()))
        case dict() if (named := target(value)) is not None:
            return {named[0]}
        case dict():
            return references(list(value.values()))
    return set()


def _sub_names(text: str) -> set[str]:
    return {name.split(".", 1)[0] for name in _PLACEHOLDER.findall(text) if not name.startswith("!")}


# ---- resolving ----
def parameter_values(template: Mapping[str, Any], given: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every parameter's value: the given one, else its default (without either it is left out: a reference
    to it raises)."""
    declared: Mapping[str, Any] = template.get("Parameters", {})
    defaults = {name: str(spec["Default"]) for name, spec in declared.items() if "Default" in spec}
    return defaults | dict(given or {})


class Resolver:
    """Evaluates the intrinsic functions of `_INTRINSICS` against parameter values and, where given, pseudo
    parameters and resources; anything else, or a name without a value, raises naming where it occurs."""

    def __init__(
        self,
        template: Mapping[str, Any],
        parameters: Mapping[str, str] | None = None,
        *,
        pseudo: Mapping[str, Any] | None = None,
        refs: Mapping[str, Any] | None = None,
        attributes: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.template = template
        self.parameters = parameter_values(template, parameters)
        self.pseudo = dict(pseudo or {})
        self.refs = dict(refs or {})
        self.attributes = dict(attributes or {})
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        """The truth of one of the template's Conditions."""
        if name not in self._conditions:
            declared = self.template.get("Conditions", {})
            if name not in declared:
                raise UnsupportedTemplateError(f"unknown condition {name}")
            self._conditions[name] = bool(self.resolve(declared[name], f"Conditions.{name}"))
        return self._conditions[name]

    def number(self, value: Any, where: str = "") -> int:
        return int(self.resolve(value, where))

    def resolve(self, value: Any, where: str = "template") -> Any:
        if isinstance(value, list):
            items = (self.resolve(item, f"{where}[{index}]") for index, item in enumerate(value))
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(value, Mapping):
            return value
        if len(value) == 1:
            [(function, argument)] = value.items()
            if function in _INTRINSICS:
                return _INTRINSICS[function](self, argument, f"{where}.{function}")
            if function.startswith("Fn::"):
                raise UnsupportedTemplateError(f"{where}: unsupported intrinsic function {function}")
        resolved = {key: self.resolve(item, f"{where}.{key}") for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not NO_VALUE}

    def ref(self, name: str, where: str) -> Any:
        for values in (self.pseudo, self.parameters, self.refs):
            if name in values:
                return values[name]
        raise UnsupportedTemplateError(f"{where}: no value for Ref {name}{self._kind(name)}")

    def get_att(self, resource: str, attribute: str, where: str) -> str:
        if (value := self.attributes.get(resource, {}).get(attribute)) is None:
            raise UnsupportedTemplateError(
                f"{where}: no value for GetAtt {resource}.{attribute}{self._kind(resource)}"
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
                return self.get_att(resource, attribute, where)
            return str(self.ref(name, where))

        return _PLACEHOLDER.sub(substitute, text)


_INTRINSICS: dict[str, Any] = {
    "Ref": lambda r, a, w: r.ref(str(a), w),
    "Fn::GetAtt": lambda r, a, w: r.get_att(str(a[0]), str(a[1]), w),
    "Fn::Sub": Resolver._sub,
    "Fn::If": lambda r, a, w: r.resolve(a[1] if r.condition(a[0]) else a[2], w),
    "Condition": lambda r, a, w: r.condition(str(a)),
    "Fn::Join": lambda r, a, w: str(a[0]).join(str(item) for item in r.resolve(a[1], w)),
    "Fn::Select": lambda r, a, w: r.resolve(a[1], w)[int(r.resolve(a[0], w))],
    "Fn::Equals": lambda r, a, w: str(r.resolve(a[0], w)) == str(r.resolve(a[1], w)),
    "Fn::Not": lambda r, a, w: not r.resolve(a[0], w),
    "Fn::And": lambda r, a, w: all(r.resolve(item, w) for item in a),
    "Fn::Or": lambda r, a, w: any(r.resolve(item, w) for item in a),
}


# ---- the stack's functions (with the defaults of Lambda, its event sources and SAM) ----
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
class StreamSource:
    """The DynamoDB stream event of a function: how Lambda batches the table's stream, which records its
    filter passes (patterns of exact values and `prefix` rules), and where what fails for good goes."""

    stream: Any
    batch_size: int
    patterns: tuple[Mapping[str, Any], ...]
    on_failure: Mapping[str, Any]

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


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """One `HttpApi` event: its method (`ANY`) and path (None: the `$default` route), whether the API's JWT
    authorizer checks it (`Auth.Authorizer: NONE` turns it off), and the scopes a token must carry one of."""

    method: str
    path: str | None
    authorized: bool
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    """What `template.yaml` configures for one function, its Globals included."""

    name: str
    """The logical id without `Function` (`RecordActivityFunction` -> `RecordActivity`)."""
    logical_id: str
    role_id: str
    code_folder: str
    """The folder under `functions/` of its CodeUri."""
    timeout_seconds: int
    memory_mb: int
    environment: Mapping[str, Any]
    """Variable name -> the template's value, a literal or an intrinsic."""
    log_group: Any
    """Its `LoggingConfig.LogGroup`, or None for Lambda's default group."""
    sources: Mapping[str, QueueSource]
    """Its SQS events, by the logical id of their queue."""
    stream: StreamSource | None
    routes: tuple[ApiRoute, ...]
    async_retry_attempts: int
    """Lambda's retries of a failed asynchronous invocation (the scheduler's), after the first attempt."""
    async_destinations: tuple[Mapping[str, Any], ...]
    """`EventInvokeConfig.DestinationConfig` entries (each with `Type` and `Destination`)."""


def functions(template: Mapping[str, Any] | None = None) -> dict[str, FunctionConfig]:
    """Each `AWS::Serverless::Function` of the template by its short name."""
    template = template or load_template()
    resolver = Resolver(template)
    defaults = template.get("Globals", {}).get("Function", {})
    configs: dict[str, FunctionConfig] = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        properties = {**defaults, **resource["Properties"]}
        events: defaultdict[str, dict[str, Any]] = defaultdict(dict)  # type -> event name -> its properties
        for event_name, event in properties.get("Events", {}).items():
            events[event["Type"]][event_name] = event.get("Properties", {})
        queues = [_queue_source(resolver, *event) for event in events["SQS"].items()]
        invoke = properties.get("EventInvokeConfig", {})
        configs[logical_id.removesuffix("Function")] = FunctionConfig(
            name=logical_id.removesuffix("Function"),
            logical_id=logical_id,
            role_id=_role_of(template, logical_id, properties.get("Role")),
            code_folder=Path(str(properties["CodeUri"])).name,
            timeout_seconds=resolver.number(properties.get("Timeout", 3)),
            memory_mb=resolver.number(properties.get("MemorySize", 128)),
            environment={
                **defaults.get("Environment", {}).get("Variables", {}),
                **resource["Properties"].get("Environment", {}).get("Variables", {}),
            },
            log_group=properties.get("LoggingConfig", {}).get("LogGroup"),
            sources={source.queue: source for source in queues},
            stream=next((_stream_source(resolver, event) for event in events["DynamoDB"].values()), None),
            routes=tuple(_route(template, event) for event in events["HttpApi"].values()),
            async_retry_attempts=resolver.number(invoke.get("MaximumRetryAttempts", 2)),
            async_destinations=tuple(invoke.get("DestinationConfig", {}).values()),
        )
    return configs


def _role_of(template: Mapping[str, Any], function_id: str, role: Any) -> str:
    named = target(role)
    if named is None or named[1] != "Arn":
        raise UnsupportedTemplateError(f"{function_id}: its Role is not `!GetAtt <Role>.Arn`")
    if template["Resources"].get(named[0], {}).get("Type") != "AWS::IAM::Role":
        raise UnsupportedTemplateError(
            f"{function_id}: Role {named[0]} is not an AWS::IAM::Role of the template"
        )
    return named[0]


def _queue_source(resolver: Resolver, event_name: str, properties: Mapping[str, Any]) -> QueueSource:
    named = target(properties.get("Queue"))
    if named is None or named[1] != "Arn":
        raise UnsupportedTemplateError(f"SQS event {event_name}: its Queue is not `!GetAtt <Queue>.Arn`")
    redrive = resolver.template["Resources"][named[0]]["Properties"].get("RedrivePolicy")
    return QueueSource(
        event=event_name,
        queue=named[0],
        batch_size=resolver.number(properties.get("BatchSize", 10)),
        batching_window_seconds=resolver.number(properties.get("MaximumBatchingWindowInSeconds", 0)),
        max_receive_count=resolver.number(redrive["maxReceiveCount"]) if redrive else None,
    )


def _stream_source(resolver: Resolver, properties: Mapping[str, Any]) -> StreamSource:
    filters = properties.get("FilterCriteria", {}).get("Filters", [])
    return StreamSource(
        stream=properties["Stream"],
        batch_size=resolver.number(properties.get("BatchSize", 100)),
        patterns=tuple(json.loads(entry["Pattern"]) for entry in filters),
        on_failure=properties.get("DestinationConfig", {}).get("OnFailure", {}),
    )


def _route(template: Mapping[str, Any], properties: Mapping[str, Any]) -> ApiRoute:
    api = target(properties.get("ApiId"))
    api_auth = template["Resources"][api[0]]["Properties"].get("Auth", {}) if api else {}
    auth = properties.get("Auth", {})
    authorizer_name = auth.get("Authorizer", api_auth.get("DefaultAuthorizer"))
    authorizer = api_auth.get("Authorizers", {}).get(authorizer_name, {})
    path = properties.get("Path")
    return ApiRoute(
        method=str(properties.get("Method", "ANY")).upper(),
        path=None if path is None else str(path),
        authorized=authorizer_name not in (None, "NONE"),
        scopes=frozenset(auth.get("AuthorizationScopes", authorizer.get("AuthorizationScopes", []))),
    )
