"""The value types of the contract (SPEC §2): ids, plans, time zones and instants.

Kept apart from the event models so that the functions which never parse a CRM event (ClosePeriods,
InvoiceAccount) do not build those models at cold start."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, strict=True)]
"""Every identifier of the contract: account, contact, status, message, note, funnel."""

PlanName = Literal["start", "grow", "expand", "scale", "legacy"]
BillingCycle = Literal["monthly", "yearly"]


def _known_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name


def _iso_text(value: object) -> object:
    if not isinstance(value, str) or not ISO_INSTANT.match(value):
        raise ValueError("must be an ISO 8601 date and time text with an offset or Z")
    return value


def _within_billing_era(value: datetime) -> datetime:
    if not EARLIEST_INSTANT <= value < LATEST_INSTANT:
        raise ValueError(f"must lie between {EARLIEST_INSTANT.year} and {LATEST_INSTANT.year - 1}")
    return value


ISO_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(3000, 1, 1, tzinfo=UTC)
IsoInstant = Annotated[AwareDatetime, BeforeValidator(_iso_text), AfterValidator(_within_billing_era)]
"""A point in time as the contract writes it: ISO 8601 text with an offset (numbers are refused)."""

TimezoneName = Annotated[str, StringConstraints(max_length=64, strict=True), AfterValidator(_known_timezone)]
