"""A template read as CloudFormation will create it: `Fn::ForEach` loops expanded, lookups of literal keys in
`Mappings` replaced by their values, and local nested applications (`AWS::Serverless::Application` with a
template path) inlined into their parent, so checks and moto see every resource with its references resolved.

The functions take a template as a YAML loader produced it, in either form of the intrinsic functions (`Sub`
or `Fn::Sub`, `GetAtt` or `Fn::GetAtt`), and keep the form they were given."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LANGUAGE_EXTENSIONS = "AWS::LanguageExtensions"
FOR_EACH = "Fn::ForEach::"
EXPANDED_SECTIONS = ("Conditions", "Resources", "Outputs")
MERGED_SECTIONS = ("Mappings", "Conditions", "Resources")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9:._]+)\}")


class UnsupportedTemplateError(ValueError):
    """The template uses a construct this module does not resolve: teach it, rather than deploy a guess."""


def read(path: Path, parse: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """The template at `path` (parsed by `parse`) expanded, with its local nested applications inlined."""
    return inline_applications(expand(parse(path)), path.parent, lambda nested: read(nested, parse))


def expand(template: dict[str, Any]) -> dict[str, Any]:
    """A copy with the `AWS::LanguageExtensions` loops expanded and `Fn::FindInMap` of literal keys looked up
    (then `Fn::Sub` variables that became literal are written into their string)."""
    expanded = copy.deepcopy(template)
    if LANGUAGE_EXTENSIONS in transforms(expanded):
        for section in EXPANDED_SECTIONS:
            if section in expanded:
                expanded[section] = _expand_loops(expanded[section], f"template.{section}")
    folded: dict[str, Any] = _fold(expanded, expanded.get("Mappings", {}))
    return folded


def inline_applications(
    template: dict[str, Any], base: Path, load: Callable[[Path], dict[str, Any]]
) -> dict[str, Any]:
    """A copy in which every `AWS::Serverless::Application` with a local `Location` is replaced by the
    resources of its template, their parameters replaced by the values the parent passes, and the parent's
    references to the application's outputs replaced by the outputs' values."""
    inlined = copy.deepcopy(template)
    resources: dict[str, Any] = inlined["Resources"]
    applications = {
        name: resource
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Serverless::Application"
        and isinstance(resource["Properties"].get("Location"), str)
    }
    outputs: dict[str, Any] = {}
    for name, application in applications.items():
        if "Condition" in application:
            raise UnsupportedTemplateError(f"the condition of application {name} is not resolved here")
        nested = load(base / application["Properties"]["Location"])
        arguments = _arguments(nested, application["Properties"].get("Parameters", {}), name)
        nested = _substitute_references(nested, arguments)
        del resources[name]
        for section in MERGED_SECTIONS:
            _merge(inlined.setdefault(section, {}), nested.get(section, {}), f"{name}.{section}")
        for output, declared in nested.get("Outputs", {}).items():
            outputs[f"{name}.Outputs.{output}"] = declared["Value"]
    return _substitute_references(inlined, outputs) if outputs else inlined


def transforms(template: dict[str, Any]) -> list[str]:
    """The template's transforms, in order (one may be written as a plain string)."""
    transforms = template.get("Transform", [])
    return [transforms] if isinstance(transforms, str) else list(transforms)


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
    """`value` with literal map lookups replaced by their values, and literal `Fn::Sub` variables written
    into their string."""
    match _call(value):
        case ("FindInMap", _, [str(name), str(top), str(second)]):
            try:
                return mappings[name][top][second]
            except KeyError as missing:
                raise UnsupportedTemplateError(f"no {missing} in mapping {name} for {top}.{second}") from None
        case ("GetAtt", function, [named, str(attribute)]) if isinstance(
            resource := _literal_sub(named), str
        ):
            return {
                function: [resource, attribute] if function.startswith("Fn::") else f"{resource}.{attribute}"
            }
        case ("Sub", function, [str(text), dict(variables)]):
            folded = {name: _fold(inner, mappings) for name, inner in variables.items()}
            literal = {name: inner for name, inner in folded.items() if isinstance(inner, str)}
            text = _PLACEHOLDER.sub(lambda m: literal.get(m[1], m[0]), text)
            remaining = {name: inner for name, inner in folded.items() if name not in literal}
            return {function: [text, remaining] if remaining else text}
    if isinstance(value, dict):
        return {key: _fold(inner, mappings) for key, inner in value.items()}
    if isinstance(value, list):
        return [_fold(inner, mappings) for inner in value]
    return value


def _literal_sub(value: Any) -> str | None:
    """The string of an `Fn::Sub` without placeholders (a loop's resource name), else None."""
    match _call(value):
        case ("Sub", _, str(text)) if not _PLACEHOLDER.search(text):
            return text
    return None


def _arguments(nested: dict[str, Any], passed: dict[str, Any], application: str) -> dict[str, Any]:
    """Each parameter of the nested template: the value the parent passes, else its default."""
    declared: dict[str, Any] = nested.get("Parameters", {})
    if unknown := sorted(set(passed) - set(declared)):
        raise UnsupportedTemplateError(f"{application} passes {unknown}, which its template does not declare")
    arguments = {name: spec["Default"] for name, spec in declared.items() if "Default" in spec} | passed
    if missing := sorted(set(declared) - set(arguments)):
        raise UnsupportedTemplateError(f"{application} does not pass {missing}, which have no default")
    return arguments


def _substitute_references(value: Any, values: dict[str, Any]) -> Any:
    """`value` with `Ref name`, `GetAtt name` and `${name}` of each name in `values` replaced by its value."""
    match _call(value):
        case ("Ref", _, str(name)) if name in values:
            return copy.deepcopy(values[name])
        case ("GetAtt", _, target) if _dotted(target) in values:
            return copy.deepcopy(values[_dotted(target)])
        case ("Sub", function, str(text)):
            if (whole := _PLACEHOLDER.fullmatch(text)) and whole[1] in values:
                return copy.deepcopy(values[whole[1]])
            return {function: _PLACEHOLDER.sub(lambda m: _placeholder(m[1], m[0], values), text)}
        case ("Sub", function, [str(text), dict(variables)]):
            own = {name: _substitute_references(inner, values) for name, inner in variables.items()}
            outer = {name: inner for name, inner in values.items() if name not in variables}
            return {function: [_PLACEHOLDER.sub(lambda m: _placeholder(m[1], m[0], outer), text), own]}
    if isinstance(value, dict):
        return {key: _substitute_references(inner, values) for key, inner in value.items()}
    if isinstance(value, list):
        return [_substitute_references(inner, values) for inner in value]
    return value


def _call(value: Any) -> tuple[str, str, Any] | None:
    """(function, key as written, argument) when `value` is an intrinsic function call in either form."""
    if isinstance(value, dict) and len(value) == 1:
        [(key, argument)] = value.items()
        return key.removeprefix("Fn::"), key, argument
    return None


def _placeholder(name: str, original: str, values: dict[str, Any]) -> str:
    """What `${name}` becomes inside a `Fn::Sub` string when `name` stands for `values[name]`."""
    if name not in values:
        return original
    if isinstance(values[name], str | int):
        return str(values[name])
    match _call(values[name]):
        case ("Ref", _, str(target)):
            return f"${{{target}}}"
        case ("GetAtt", _, target):
            return f"${{{_dotted(target)}}}"
    raise UnsupportedTemplateError(f"${{{name}}} stands for {values[name]!r}, which a Sub string cannot hold")


def _dotted(target: Any) -> str:
    return target if isinstance(target, str) else ".".join(target)


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
