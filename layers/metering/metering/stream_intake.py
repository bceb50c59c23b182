"""The boundary of CountContacts: a DynamoDB stream batch as Lambda delivers it with a tumbling window (which
adds the shard the batch comes from), reduced to the new contacts it reports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from metering.counting import StreamedContact
from metering.store.keys import CONTACT_PREFIX, ref_from_pk


class _Keys(BaseModel):
    model_config = ConfigDict(frozen=True)

    pk: dict[str, str]
    sk: dict[str, str]


class _Change(BaseModel):
    model_config = ConfigDict(frozen=True)

    keys: _Keys = Field(alias="Keys")
    sequence_number: str = Field(alias="SequenceNumber", pattern=r"^[0-9]{1,40}$")
    created_at: float = Field(alias="ApproximateCreationDateTime", ge=0)


class StreamRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    event_name: str = Field(alias="eventName")
    change: _Change = Field(alias="dynamodb")


class StreamBatch(BaseModel):
    """One invocation's records and the shard (lane) they come from, in the shard's order."""

    model_config = ConfigDict(frozen=True)

    shard_id: str = Field(alias="shardId", min_length=1)
    records: list[StreamRecord] = Field(alias="Records", default_factory=list)

    @classmethod
    def parse(cls, event: dict[str, Any]) -> StreamBatch:
        return cls.model_validate(event)

    def new_contacts(self) -> list[StreamedContact]:
        """The contact items the batch reports as inserted (the mapping's filter passes nothing else; any
        other record is no contact's first activity and counts for nothing)."""
        return [
            StreamedContact(
                ref=ref_from_pk(record.change.keys.pk["S"]),
                contact_id=record.change.keys.sk["S"].removeprefix(CONTACT_PREFIX),
                sequence=int(record.change.sequence_number),
                created_at=datetime.fromtimestamp(int(record.change.created_at), UTC),
            )
            for record in self.records
            if record.event_name == "INSERT"
            and record.change.keys.sk.get("S", "").startswith(CONTACT_PREFIX)
            and "#" in record.change.keys.pk.get("S", "")
        ]


def stream_response(failed_sequence: int | None) -> dict[str, Any]:
    """The tumbling-window response: no state is kept between invocations, and the first record whose period
    must be retried (Lambda checkpoints before it and delivers the rest again)."""
    failures = [] if failed_sequence is None else [{"itemIdentifier": str(failed_sequence)}]
    return {"state": {}, "batchItemFailures": failures}
