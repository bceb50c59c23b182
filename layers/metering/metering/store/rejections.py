"""Rejected events, by the month they were received in, with their reason and raw body for replay."""

from __future__ import annotations

from collections.abc import Sequence

from metering.model import Rejection
from metering.store.codec import string_value, text
from metering.store.keys import key, rejected_pk
from metering.store.table import Table


class Rejections:
    def __init__(self, table: Table) -> None:
        self._table = table

    def save(self, rejections: Sequence[Rejection]) -> None:
        """Store rejected events by id (a redelivery overwrites the same item)."""
        self._table.batch_put(
            {
                **key(rejected_pk(rejection.received_at[:7]), rejection.event_id),
                "eventId": string_value(rejection.event_id),
                "reason": string_value(rejection.reason),
                "raw": string_value(rejection.raw),
                "receivedAt": string_value(rejection.received_at),
            }
            for rejection in rejections
        )

    def received_in(self, month: str) -> list[Rejection]:
        return [
            Rejection(
                text(item, "eventId"), text(item, "reason"), text(item, "raw"), text(item, "receivedAt")
            )
            for page in self._table.query(
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": string_value(rejected_pk(month))},
            )
            for item in page.get("Items", [])
        ]

    def delete(self, month: str, event_id: str) -> None:
        self._table.call(
            self._table.client.delete_item, TableName=self._table.name, Key=key(rejected_pk(month), event_id)
        )
