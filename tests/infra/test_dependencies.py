"""The tests run on exactly what is deployed: the layer's requirements.txt is the lock of every runtime
package (docs/dependencies.md), and this interpreter has each at the lock's version.

Offline checks of the installed venv; `python3 scripts/lock_runtime.py --check` asks PyPI whether the lock is
still the closure of the runtime requirements (layers/metering/requirements.in)."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement

from scripts.lock_runtime import LOCK_PATH, normalized_name, read_lock, runtime_requirements

LOCK = read_lock()


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_every_locked_package_is_installed_at_its_pin() -> None:
    # Given the lock the layer is built from
    # When the test interpreter's installed versions are read
    installed = {name: installed_version(name) for name in LOCK}
    # Then each is the version deployed
    assert installed == LOCK


def test_the_lock_ships_the_time_zone_database() -> None:
    # Given the lock the layer is built from
    # When it is read
    # Then it pins tzdata, so periods never depend on the runtime image's /usr/share/zoneinfo
    assert "tzdata" in LOCK, f"{LOCK_PATH.name} must pin tzdata"


def test_the_runtime_requirements_accept_the_pins() -> None:
    # Given the runtime packages requirements.in names, with their allowed ranges
    requirements = [Requirement(text) for text in runtime_requirements()]
    # When each is looked up in the lock
    pins = [(requirement, LOCK.get(normalized_name(requirement.name))) for requirement in requirements]
    # Then each is pinned, within its range
    outside = {
        str(requirement): pin for requirement, pin in pins if pin is None or pin not in requirement.specifier
    }
    assert outside == {}
