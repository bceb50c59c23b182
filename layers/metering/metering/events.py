"""The EventBridge contract (SPEC §2) as pydantic models: an envelope per detail-type, a union over them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, model_validator

from metering.fields import BillingCycle, Id, IsoInstant, PlanName, TimezoneName

MAX_INLINE_CONTACT_IDS = 1000
MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_ADDON_CONTACTS = 1_000_000_000
"""Far beyond any purchase: it keeps every allowance and threshold an exact integer in every store."""
MAX_SOURCE_EVENT_ID_LENGTH = 256
FAN_OUT_SUFFIX = "{id}#part{index:04d}"
"""Id of a chunk of a large `Status Renamed`, derived from the original event id."""
MAX_EVENT_ID_LENGTH = MAX_SOURCE_EVENT_ID_LENGTH + len("#part0000")
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}(#part[0-9]{4})?$"
"""Envelope ids: the id alphabet (EventBridge uses UUIDs), plus the suffix of a fan-out chunk."""


class _Detail(BaseModel):
    """Fields every detail carries; unknown fields are ignored, values are never coerced."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True, populate_by_name=True)

    account_id: Id = Field(alias="accountId")
    occurred_at: IsoInstant = Field(alias="occurredAt", strict=False)


class _ContactDetail(_Detail):
    contact_id: Id = Field(alias="contactId")


class ContactCreatedDetail(_ContactDetail):
    origin: Literal["manual", "funnel"]
    funnel_id: Id | None = Field(default=None, alias="funnelId")


class ContactStatusChangedDetail(_ContactDetail):
    from_status_id: Id | None = Field(default=None, alias="fromStatusId")
    to_status_id: Id = Field(alias="toStatusId")


class MessageSentDetail(_ContactDetail):
    channel: Literal["email", "whatsapp"]
    message_id: Id = Field(alias="messageId")


class NoteAddedDetail(_ContactDetail):
    note_id: Id = Field(alias="noteId")


class ContactPropertyChangedDetail(_ContactDetail):
    property_key: Id = Field(alias="propertyKey")
    change: Literal["created", "updated"]


class ClaimCheck(BaseModel):
    """An S3 object of newline-separated contact ids, for columns too large to inline."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    bucket: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class StatusRenamedDetail(_Detail):
    status_id: Id = Field(alias="statusId")
    old_name: Annotated[str, StringConstraints(max_length=256)] = Field(alias="oldName")
    new_name: Annotated[str, StringConstraints(max_length=256)] = Field(alias="newName")
    contact_ids: tuple[Id, ...] | None = Field(
        default=None, alias="contactIds", max_length=MAX_INLINE_CONTACT_IDS, strict=False
    )
    contact_ids_object: ClaimCheck | None = Field(default=None, alias="contactIdsObject")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> StatusRenamedDetail:
        if (self.contact_ids is None) == (self.contact_ids_object is None):
            raise ValueError("exactly one of contactIds or contactIdsObject is required")
        return self


class SubscriptionChangedDetail(_Detail):
    plan: PlanName
    billing_cycle: BillingCycle = Field(alias="billingCycle")
    addon_contacts: Annotated[int, Field(ge=0, le=MAX_ADDON_CONTACTS)] = Field(alias="addonContacts")
    timezone: TimezoneName | None = None


class _Envelope(BaseModel):
    """The EventBridge envelope; `account`, `region`, `resources` are optional (moto omits them)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    version: str = "0"
    id: Annotated[str, StringConstraints(pattern=EVENT_ID_PATTERN, strict=True)]
    source: Annotated[str, StringConstraints(min_length=1, max_length=256, strict=True)]
    account: str | None = None
    time: IsoInstant
    region: str | None = None
    resources: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_from_the_future(self) -> _Envelope:
        detail: _Detail = getattr(self, "detail")  # noqa: B009 - every concrete envelope declares it
        if detail.occurred_at - self.time > MAX_CLOCK_SKEW:
            raise ValueError("occurredAt is more than 5 minutes after the envelope time")
        return self

    @property
    def account_id(self) -> str:
        detail: _Detail = getattr(self, "detail")  # noqa: B009
        return detail.account_id

    @property
    def occurred_at(self) -> datetime:
        detail: _Detail = getattr(self, "detail")  # noqa: B009
        return detail.occurred_at


class ContactCreated(_Envelope):
    detail_type: Literal["Contact Created"] = Field(alias="detail-type")
    detail: ContactCreatedDetail


class ContactStatusChanged(_Envelope):
    detail_type: Literal["Contact Status Changed"] = Field(alias="detail-type")
    detail: ContactStatusChangedDetail


class MessageSent(_Envelope):
    detail_type: Literal["Message Sent"] = Field(alias="detail-type")
    detail: MessageSentDetail


class NoteAdded(_Envelope):
    detail_type: Literal["Note Added"] = Field(alias="detail-type")
    detail: NoteAddedDetail


class ContactPropertyChanged(_Envelope):
    detail_type: Literal["Contact Property Changed"] = Field(alias="detail-type")
    detail: ContactPropertyChangedDetail


class StatusRenamed(_Envelope):
    detail_type: Literal["Status Renamed"] = Field(alias="detail-type")
    detail: StatusRenamedDetail


class SubscriptionChanged(_Envelope):
    detail_type: Literal["Subscription Changed"] = Field(alias="detail-type")
    detail: SubscriptionChangedDetail


ContactEvent = ContactCreated | ContactStatusChanged | MessageSent | NoteAdded | ContactPropertyChanged
"""Events that activate exactly one contact."""

CrmEvent = Annotated[ContactEvent | StatusRenamed | SubscriptionChanged, Field(discriminator="detail_type")]

CRM_EVENT = TypeAdapter[CrmEvent](CrmEvent)

DETAIL_TYPES: tuple[str, ...] = (
    "Contact Created",
    "Contact Status Changed",
    "Message Sent",
    "Note Added",
    "Contact Property Changed",
    "Status Renamed",
    "Subscription Changed",
)
