"""Parsing an SQS message: its body becomes a typed event, or a rejection that says precisely what is wrong.

Bodies from the activity queue are CRM envelopes (SPEC §2). Bodies from the fan-out queue are chunks of a
large `Status Renamed` that this system wrote itself, with the context the original event was placed in."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from metering.events import CRM_EVENT, MAX_EVENT_ID_LENGTH, CrmEvent, StatusRenamed
from metering.fields import BillingCycle, Id, PlanName, TimezoneName
from metering.model import Rejection
from metering.rules import Subscription, utc_iso

MAX_RAW_BYTES = 64 * 1024
MAX_REASON_PROBLEMS = 3
MAX_REASON_LENGTH = 480


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One SQS message as a function sees it: its id (for partial-batch failure), its body, and for
    the recorder whether it came from the fan-out queue, which delivery this is (a later one follows a
    failure) and the receipt handle that deletes it."""

    message_id: str
    body: str
    from_fan_out: bool = False
    attempt: int = 1
    receipt_handle: str = ""

    @classmethod
    def of_sqs(cls, record: Mapping[str, Any], fan_out_queue_name: str = "") -> InboundRecord:
        """From a record of an SQS event, the one place that reads its fields. Powertools' `SQSRecord` reads
        the same fields, but importing it imports every event class of its package at cold start (38
        modules, about 17 ms)."""
        queue_arn = str(record.get("eventSourceARN", ""))
        return cls(
            message_id=record["messageId"],
            body=record["body"],
            from_fan_out=bool(fan_out_queue_name) and queue_arn.endswith(f":{fan_out_queue_name}"),
            attempt=int(record.get("attributes", {}).get("ApproximateReceiveCount", 1)),
            receipt_handle=record.get("receiptHandle", ""),
        )


class SubscriptionSnapshot(BaseModel):
    """A subscription as a fan-out chunk carries it: the one the original event was placed with."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    account_id: Id = Field(alias="accountId")
    effective_at: AwareDatetime = Field(alias="effectiveAt")
    event_id: str = Field(alias="eventId", max_length=MAX_EVENT_ID_LENGTH)
    plan: PlanName
    billing_cycle: BillingCycle = Field(alias="billingCycle")
    addon_contacts: int = Field(alias="addonContacts", ge=0)
    timezone: TimezoneName | None = None

    @classmethod
    def of(cls, subscription: Subscription) -> SubscriptionSnapshot:
        return cls(
            account_id=subscription.account_id,
            effective_at=subscription.effective_at,
            event_id=subscription.event_id,
            plan=subscription.plan,
            billing_cycle=subscription.billing_cycle,
            addon_contacts=subscription.addon_contacts,
            timezone=subscription.timezone,
        )

    def subscription(self) -> Subscription:
        return Subscription(
            account_id=self.account_id,
            effective_at=self.effective_at.astimezone(UTC),
            event_id=self.event_id,
            plan=self.plan,
            billing_cycle=self.billing_cycle,
            addon_contacts=self.addon_contacts,
            timezone=self.timezone,
        )


class FanOutContext(BaseModel):
    """Where the original event of a chunk was placed when it was delivered: its period, when that period
    closes for the account, and the subscription its alerts are raised with."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    original_event_id: str = Field(alias="originalEventId", max_length=MAX_EVENT_ID_LENGTH)
    period: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
    close_instant: AwareDatetime = Field(alias="closeInstant")
    subscription: SubscriptionSnapshot | None = None


class FanOutChunk(BaseModel):
    """Up to 1,000 contacts of a large `Status Renamed`, with the context of the original event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event: StatusRenamed
    context: FanOutContext


def parse_record(record: InboundRecord) -> CrmEvent | FanOutChunk | Rejection:
    """Parse one SQS body into a typed event (or chunk), or a rejection with its reason."""
    try:
        document = json.loads(record.body, object_pairs_hook=_reject_duplicate_keys)
    except DuplicatedKey as exc:
        return _rejection(record, _event_id_of(json.loads(record.body)), str(exc))
    except (ValueError, RecursionError) as exc:
        return _rejection(record, None, f"body is not a JSON object: {exc}")
    if not isinstance(document, dict):
        return _rejection(record, None, "body is not a JSON object")
    try:
        if record.from_fan_out:
            return FanOutChunk.model_validate(document)
        return CRM_EVENT.validate_python(document)
    except ValidationError as exc:
        return _rejection(record, _event_id_of(document), describe_validation_error(exc))


def describe_validation_error(exc: ValidationError) -> str:
    """`detail.contactId: String should match pattern ...; ...` without echoing the offending values."""
    problems: list[str] = []
    errors = exc.errors(include_url=False, include_input=False)
    for error in errors[:MAX_REASON_PROBLEMS]:
        location = ".".join(str(part) for part in error["loc"][1:] if part not in {"function-after"})
        if error["type"] == "union_tag_invalid":
            problems.append("unknown detail-type")
        elif error["type"] == "union_tag_not_found":
            problems.append("detail-type is missing")
        else:
            problems.append(f"{location or 'event'}: {error['msg']}")
    if len(errors) > MAX_REASON_PROBLEMS:
        problems.append(f"and {len(errors) - MAX_REASON_PROBLEMS} more")
    return "; ".join(problems)


class DuplicatedKey(ValueError):
    """A JSON object names the same key twice: which value counts would be a guess."""


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise DuplicatedKey(f"duplicated key {key[:64]!r}")
        document[key] = value
    return document


def _event_id_of(document: object) -> str | None:
    if isinstance(document, dict):
        event_id = document.get("id")
        if isinstance(event_id, str) and _usable_as_key(event_id):
            return event_id
    return None


def _usable_as_key(event_id: str) -> bool:
    """Whether a rejected event's own id can key its record: printable, valid UTF-8, within the key size."""
    try:
        size = len(event_id.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return event_id.isprintable() and 0 < size <= MAX_EVENT_ID_LENGTH


def _rejection(record: InboundRecord, event_id: str | None, reason: str) -> Rejection:
    return rejection_now(event_id or f"sqs:{record.message_id}", reason, record.body)


def rejection_now(event_id: str, reason: str, raw: str) -> Rejection:
    """A rejection received now: the reason bounded, the raw body kept up to `MAX_RAW_BYTES`."""
    return Rejection(event_id, short_reason(reason), raw[:MAX_RAW_BYTES], utc_iso(datetime.now(UTC)))


def short_reason(reason: str) -> str:
    """Reasons are for people: bounded, whatever the input was."""
    return reason if len(reason) <= MAX_REASON_LENGTH else reason[: MAX_REASON_LENGTH - 1] + "…"
