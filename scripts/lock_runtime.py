"""Writes the lock of the functions' runtime packages, `layers/metering/requirements.txt`.

The lock is the full closure of `layers/metering/requirements.in` (the functions' runtime packages, with
ranges), every package pinned with `==`.
`sam build` installs it into the layer and `make setup` installs the test venv constrained by it, so the tests
run on exactly the versions that are deployed. pip's own resolver computes it (only PyPI is needed) for
python3.13 on Linux arm64, what Lambda runs, and on x86_64, where the tests run: the two must agree.

Pins already in the lock are kept unless named with `--upgrade` (`:all:` releases every pin), so adding a
dependency or re-running never moves a version by surprise. `--check` writes nothing and fails when the lock
is not what this script would write. How to upgrade: docs/dependencies.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK_PATH = REPO / "layers" / "metering" / "requirements.txt"
REQUIREMENTS_PATH = REPO / "layers" / "metering" / "requirements.in"
PYTHON_VERSION = "3.13"
# The wheel tags each side accepts. Lambda's python3.13 runs on Amazon Linux 2023 (glibc 2.34): these are the
# tags `sam build` asks pip for. The tests' x86_64 hosts may be older, so that side takes manylinux2014 (glibc
# 2.17) and older. pip widens "manylinux2014" to every older tag itself, not "manylinux_2_NN", hence the list.
PLATFORMS = {
    "arm64 (Lambda)": ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_34_aarch64"),
    "x86_64 (tests)": ("manylinux2014_x86_64",),
}
RELEASE_EVERY_PIN = ":all:"
LOCK_HEADER = """\
# The functions' runtime packages: the closure of requirements.in beside this file, each pinned,
# for python3.13 on Linux arm64 (Lambda) and x86_64 (tests). `sam build` installs this file into the layer;
# `make setup` installs the test venv constrained by it. Written by scripts/lock_runtime.py (`make lock`):
# see docs/dependencies.md before editing by hand.
"""
PIN_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)$")


def normalized_name(name: str) -> str:
    """The name as PyPI compares names (PEP 503): `Typing_Extensions` and `typing-extensions` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK_PATH) -> dict[str, str]:
    """The lock's pins by normalized name; any line that is not a comment must be an exact `name==version`."""
    pins: dict[str, str] = {}
    for number, raw_line in enumerate(path.read_text().splitlines(), start=1):
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN_LINE.match(line)
        if match is None:
            raise ValueError(f"{path.name}:{number}: {raw_line!r} is not an exact pin (name==version)")
        pins[normalized_name(match["name"])] = match["version"]
    return pins


def render_lock(pins: dict[str, str]) -> str:
    return LOCK_HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


def runtime_requirements(path: Path = REQUIREMENTS_PATH) -> list[str]:
    """The requirement lines of requirements.in, comments and blank lines left out."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def resolve(
    requirements: list[str], kept_pins: dict[str, str], wheel_tags: tuple[str, ...]
) -> dict[str, str]:
    """What pip would install for `requirements` on a Linux taking `wheel_tags`, holding `kept_pins` (never
    installs anything: a dry run into an empty target, wheels only, as `sam build` installs them)."""
    with tempfile.TemporaryDirectory() as scratch:
        constraints = Path(scratch) / "constraints.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in kept_pins.items()))
        report = Path(scratch) / "report.json"
        command = [
            sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
            "--target", str(Path(scratch) / "target"), "--report", str(report),
            "--only-binary=:all:", *(f"--platform={tag}" for tag in wheel_tags),
            "--python-version", PYTHON_VERSION, "--implementation", "cp",
            "--constraint", str(constraints), *requirements,
        ]  # fmt: skip
        pip = subprocess.run(command, check=False, capture_output=True, text=True)
        if pip.returncode != 0:
            sys.exit(
                f"{pip.stdout}{pip.stderr}\npip could not resolve {requirements} for {wheel_tags} with the "
                "kept pins; release the packages in conflict with --upgrade NAME (docs/dependencies.md)"
            )
        installed = json.loads(report.read_text())["install"]
    return {normalized_name(item["metadata"]["name"]): item["metadata"]["version"] for item in installed}


def locked_closure(kept_pins: dict[str, str]) -> dict[str, str]:
    """The closure resolved on every platform of PLATFORMS, which must all agree."""
    requirements = runtime_requirements()
    resolutions = {label: resolve(requirements, kept_pins, tags) for label, tags in PLATFORMS.items()}
    first_label, first = next(iter(resolutions.items()))
    for label, closure in resolutions.items():
        if closure != first:
            differences = sorted(set(closure.items()) ^ set(first.items()))
            sys.exit(f"the closure differs between {first_label} and {label}: {differences}")
    return first


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """One line per package added, removed or moved, for whoever reviews the lock's diff."""
    return [
        f"{name}: {before.get(name, '(new)')} -> {after.get(name, '(removed)')}"
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--upgrade",
        nargs="+",
        default=[],
        metavar="NAME",
        help=f"packages whose pins are released for their newest allowed versions ({RELEASE_EVERY_PIN}: all)",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; fail if the lock would change")
    arguments = parser.parse_args()
    current = read_lock() if LOCK_PATH.exists() else {}
    named = {normalized_name(name) for name in arguments.upgrade if name != RELEASE_EVERY_PIN}
    released = set(current) if RELEASE_EVERY_PIN in arguments.upgrade else named
    locked = locked_closure({name: version for name, version in current.items() if name not in released})
    for line in changes(current, locked):
        print(line)
    for name in sorted(named & current.keys() & locked.keys()):
        if current[name] == locked[name]:
            print(f"{name} stays at {locked[name]}: the newest version that fits the other pins")
    lock_text = render_lock(locked)
    lock_name = LOCK_PATH.relative_to(REPO)
    # an unchanged lock is not rewritten: its timestamp would make `make setup` reinstall the venv
    if (LOCK_PATH.read_text() if LOCK_PATH.exists() else "") == lock_text:
        print(f"{lock_name} is up to date")
    elif arguments.check:
        sys.exit(f"{lock_name} would change: run this without --check to write it")
    else:
        LOCK_PATH.write_text(lock_text)
        print(f"wrote {lock_name}")


if __name__ == "__main__":
    main()
