"""DynamoDB attribute values to and from Python values; the short attribute names of hot items.

Contact items are read by the period count (a Query bills the bytes it reads), so their attributes have
one-letter names: `e` first event id, `t` its detail-type, `o` when it occurred, `x` expiry (TTL)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

Item = dict[str, Any]

FIRST_EVENT = "e"
FIRST_TYPE = "t"
FIRST_OCCURRED = "o"
EXPIRES = "x"


def string_value(value: str) -> dict[str, str]:
    return {"S": value}


def number_value(value: int) -> dict[str, str]:
    return {"N": str(value)}


def string_set(values: set[str] | frozenset[str]) -> dict[str, list[str]]:
    return {"SS": sorted(values)}


def epoch(instant: datetime) -> dict[str, str]:
    return number_value(int(instant.timestamp()))


def text(item: Item, name: str, default: str = "") -> str:
    value = item.get(name)
    return str(value["S"]) if value else default


def number(item: Item, name: str, default: int = 0) -> int:
    value = item.get(name)
    return int(value["N"]) if value else default


def strings(item: Item, name: str) -> frozenset[str]:
    value = item.get(name)
    return frozenset(value["SS"]) if value else frozenset()


def instant(item: Item, name: str) -> datetime | None:
    value = text(item, name)
    return datetime.fromisoformat(value) if value else None
