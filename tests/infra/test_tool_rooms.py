"""The tools' one reader of the template and their two rooms (issue 19): only `metering_tools.template` loads
a template or reads its intrinsic functions, parameter defaults and list of functions, so a construct it gets
wrong is wrong everywhere alike and fixed once; what the operator installs (`metering_tools`) never needs
what tests and benchmarks use (`metering_testbench`), and the wheel carries the first only."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

THE_READER = REPO_ROOT / "tools" / "metering_tools" / "template.py"
READING = {
    "loads YAML": re.compile(r"yaml\.(safe_)?load\b|SafeLoader"),
    "reads an intrinsic function": re.compile(
        r'case \{"(Ref|Condition|Fn::\w+)"|\.get\("(Ref|Fn::\w+)"\)|\["(Ref|Fn::\w+)"\]'
        r'|== "Fn::|"Fn::\w+" in '
    ),
    "reads a parameter's default": re.compile(r'\["Default"\]|\.get\("Default"'),
    "lists the stack's functions": re.compile(r'removesuffix\("Function"\)|== "AWS::Serverless::Function"'),
}
"""Code that reads a template concept, by what it reads (building a value in long form is not reading it)."""


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO_ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("concept", READING)
def test_only_the_template_layer_reads_the_template(concept: str) -> None:
    # Given every Python file of the tools, the scripts and the tests but the reader and this check
    files = [p for p in python_files("tools", "scripts", "tests") if p not in {THE_READER, Path(__file__)}]

    # When each is searched for code that reads the concept
    readers = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if READING[concept].search(line)
    ]

    # Then none does: it goes through metering_tools.template
    assert readers == [], f"{concept} outside metering_tools.template:\n" + "\n".join(readers)


def test_the_operators_room_never_imports_the_test_room() -> None:
    # Given the operator's room
    # When its imports are read
    importers = [
        str(path.relative_to(REPO_ROOT))
        for path in python_files("tools/metering_tools")
        if re.search(r"^\s*(from|import) metering_testbench", path.read_text(encoding="utf-8"), re.MULTILINE)
    ]

    # Then none is of the test room
    assert importers == []


def test_the_wheel_carries_the_operators_room_only() -> None:
    # Given the packages pyproject.toml builds
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = project["tool"]["setuptools"]["packages"]

    # Then the operator's room is among them and the test room is not
    assert "metering_tools" in packages
    assert not any(package.startswith("metering_testbench") for package in packages)
