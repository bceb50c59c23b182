"""Time-zone rules are part of billing: a period is the month of an event in its account's time zone. They
come from the `tzdata` package in the layer, not from the runtime image's `/usr/share/zoneinfo`, so every zone
the contract accepts must resolve with the system database hidden (`PYTHONTZPATH` empty), as in an image
without it.

One fresh interpreter (this venv's) does it all: zoneinfo reads PYTHONTZPATH once, at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

LAYER = Path(__file__).resolve().parents[2] / "layers" / "metering"
WITHOUT_SYSTEM_DATABASE = """
import json, sys, zoneinfo
from datetime import datetime
from pydantic import TypeAdapter, ValidationError
from metering.fields import TimezoneName

zones = sorted(zoneinfo.available_timezones())
contract = TypeAdapter(TimezoneName)
unresolved, refused = [], []
for name in zones:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        unresolved.append(name)
    try:
        contract.validate_python(name)
    except ValidationError:
        refused.append(name)
offsets = {
    f"{name} {local}": datetime.fromisoformat(local).replace(tzinfo=zoneinfo.ZoneInfo(name)).isoformat()[-6:]
    for name, local in json.loads(sys.argv[1])
}
print(json.dumps({"tzpath": list(zoneinfo.TZPATH), "zones": zones, "unresolved": unresolved,
                  "refused": refused, "offsets": offsets}))
"""
# (zone, local time) -> UTC offset, around the transitions that decide which month an event falls in
KNOWN_OFFSETS = {
    ("Europe/Berlin", "2026-11-01T12:00:00"): "+01:00",
    ("Europe/Berlin", "2026-07-01T12:00:00"): "+02:00",
    # 2026-11-01 is the first Sunday of November: New York left daylight saving time at 02:00 that morning
    ("America/New_York", "2026-11-01T12:00:00"): "-05:00",
    ("America/New_York", "2026-10-31T12:00:00"): "-04:00",
    ("Asia/Kolkata", "2026-11-01T12:00:00"): "+05:30",
    ("Australia/Sydney", "2026-11-01T12:00:00"): "+11:00",
}


@pytest.fixture(scope="module")
def without_system_database() -> dict[str, Any]:
    """What zoneinfo and the contract make of every zone in a fresh interpreter that only has `tzdata`."""
    probes = json.dumps([list(probe) for probe in KNOWN_OFFSETS])
    completed = subprocess.run(
        [sys.executable, "-c", WITHOUT_SYSTEM_DATABASE, probes],
        env={**os.environ, "PYTHONTZPATH": "", "PYTHONPATH": str(LAYER)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def test_the_zones_come_from_the_tzdata_package(without_system_database: dict[str, Any]) -> None:
    # Given an interpreter whose zoneinfo search path is empty
    # When it lists the zones it knows
    zones = without_system_database["zones"]
    # Then no system folder was searched, and the list (read from tzdata) holds the IANA zones
    assert without_system_database["tzpath"] == []
    assert len(zones) > 400
    assert {"UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"} <= set(zones)


def test_every_zone_resolves_and_the_contract_accepts_it(without_system_database: dict[str, Any]) -> None:
    # Given every zone name tzdata ships, in an interpreter without the system database
    # When each is loaded with ZoneInfo and validated as the contract's TimezoneName
    # Then none fails either
    assert without_system_database["unresolved"] == []
    assert without_system_database["refused"] == []


def test_known_zones_have_their_offsets(without_system_database: dict[str, Any]) -> None:
    # Given local times on both sides of daylight-saving changes
    # When tzdata's rules give their UTC offsets
    offsets = without_system_database["offsets"]
    # Then they are the offsets these zones have on those days
    assert offsets == {f"{zone} {local}": offset for (zone, local), offset in KNOWN_OFFSETS.items()}
