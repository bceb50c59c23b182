"""Configuration, read once from the environment at cold start into typed models that fail fast."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from metering.fields import PlanName, TimezoneName
from metering.outlook import parse_plan_prices

if TYPE_CHECKING:
    from metering.alert_rules import AlertChannels


def _split_csv(value: object) -> object:
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


Percentages = Annotated[tuple[Annotated[int, Field(gt=0, le=1000)], ...], BeforeValidator(_split_csv)]


FRAME_ANCESTOR_PATTERN = (
    r"^(https://(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|http://(localhost|127\.0\.0\.1))(:[0-9]{1,5})?$"
)
"""An origin a CSP `frame-ancestors` may name: https (any subdomain with `*.`), or http on loopback for a CRM
developer's machine; nothing that could end the directive or add another."""
FrameAncestors = Annotated[
    tuple[Annotated[str, Field(pattern=FRAME_ANCESTOR_PATTERN)], ...], BeforeValidator(_split_csv)
]


def _plan_prices(value: object) -> object:
    return parse_plan_prices(value) if isinstance(value, str) else value


PlanPrices = Annotated[dict[PlanName, Annotated[int, Field(ge=0)]], BeforeValidator(_plan_prices)]


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    table_name: str = Field(alias="TABLE_NAME", min_length=3)
    default_timezone: TimezoneName = Field(alias="DEFAULT_TIMEZONE", default="UTC")
    grace_hours: float = Field(alias="GRACE_HOURS", default=6, ge=0, le=72)
    attempt_timeout_seconds: int = Field(alias="ATTEMPT_TIMEOUT_SECONDS", default=900, ge=0)
    """After this long an invocation is certainly over (the function timeout): its work may be taken over."""

    @property
    def grace(self) -> timedelta:
        return timedelta(hours=self.grace_hours)

    @classmethod
    def from_env(cls) -> Self:
        """Read the process environment; a missing required variable raises at import, not mid-batch."""
        return cls.model_validate(dict(os.environ))


class RecorderSettings(_Settings):
    """RecordActivity: where activations, fan-out chunks and alerts go."""

    activity_queue_url: str = Field(alias="ACTIVITY_QUEUE_URL", min_length=1)
    fanout_queue_url: str = Field(alias="FANOUT_QUEUE_URL", min_length=1)
    event_bus_name: str = Field(alias="EVENT_BUS_NAME", min_length=1)
    alert_thresholds: Percentages = Field(alias="ALERT_THRESHOLDS", default=(80, 100))
    claim_check_bucket: str = Field(alias="CLAIM_CHECK_BUCKET", default="")
    usage_alert_topic_arn: str = Field(alias="USAGE_ALERT_TOPIC_ARN", default="")
    write_concurrency: int = Field(alias="WRITE_CONCURRENCY", default=8, ge=1, le=64)
    """Conditional contact writes in flight at once: network round trips overlap, DynamoDB does the rest."""

    @property
    def alert_channels(self) -> AlertChannels:
        # only RecordActivity publishes alerts: the other cold starts skip the event models alerting brings
        from metering.alert_rules import AlertChannels  # noqa: PLC0415

        return AlertChannels(self.event_bus_name, self.usage_alert_topic_arn)


class _AfterRecording(_Settings):
    recorder_timeout_seconds: int = Field(alias="RECORDER_TIMEOUT_SECONDS", ge=0)
    """RecordActivity's timeout: after a seal, counts wait this long (and a margin) for writes in flight."""


class CloseSettings(_AfterRecording):
    """ClosePeriods: seals due periods and hands each billed account to InvoiceAccount."""

    close_queue_url: str = Field(alias="CLOSE_QUEUE_URL", min_length=1)


class InvoiceSettings(_AfterRecording):
    """InvoiceAccount: counts a sealed period, stores and publishes its invoice."""

    event_bus_name: str = Field(alias="EVENT_BUS_NAME", min_length=1)


class CounterSettings(_Settings):
    """CountContacts: keeps the contact counter of each large period from the table's stream."""


class ApiSettings(_Settings):
    """UsageApi: reads usage, contacts, invoices and alerts for the callers its JWT authorizer let through."""

    plan_prices: PlanPrices = Field(alias="PLAN_PRICES", default_factory=dict)
    """Monthly plan prices in cents (`start=2900,grow=5900`) for the upgrade advice; none: unpriced."""
    account_claim: str = Field(alias="ACCOUNT_CLAIM", default="account_id", min_length=1)
    """The JWT claim naming a customer token's account."""
    cursor_secret_arn: str = Field(alias="CURSOR_SECRET_ARN", min_length=1)
    """The secret whose value signs page cursors (read once per container, at the first page)."""
    page_frame_ancestors: FrameAncestors = Field(alias="PAGE_FRAME_ANCESTORS", default=())
    """Origins that may frame the usage page (its CSP `frame-ancestors`); none: no site may."""
