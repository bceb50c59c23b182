"""Period seals: one close state item per period, for every account at once (how far its close has got)."""

from __future__ import annotations

from datetime import datetime

from metering.model import PeriodSeal
from metering.rules import utc_iso
from metering.store.codec import Item, instant, number_value, string_value, text
from metering.store.keys import CLOSE_PK, close_key
from metering.store.table import Conflict, Table


class PeriodSeals:
    def __init__(self, table: Table) -> None:
        self._table = table

    def read_since(self, period: str, *, consistent: bool = True) -> dict[str, PeriodSeal]:
        """The seal of every period from `period` on that has one; one small partition, about 100
        bytes a month. Consistent unless the reader only shows what it finds (a seal is then seen late)."""
        return {
            seal.period: seal
            for page in self._table.query(
                KeyConditionExpression="pk = :pk AND sk >= :since",
                ExpressionAttributeValues={":pk": string_value(CLOSE_PK), ":since": string_value(period)},
                ConsistentRead=consistent,
            )
            for seal in map(decode_seal, page.get("Items", []))
        }

    def open(self, period: str) -> PeriodSeal:
        """Make sure the close job knows the period has activity; the seal already there if it does."""
        outcome = self._table.create({**close_key(period), "period": string_value(period)})
        return decode_seal(outcome.item) if isinstance(outcome, Conflict) else PeriodSeal(period)

    def seal(self, period: str, through: datetime, fenced_at: datetime) -> PeriodSeal:
        """Seal every account's period whose close instant is at or before `through` (never moves back).
        Invoices may be computed from `fenced_at` on: no recording that saw the period open still runs."""
        outcome = self._table.write(
            Key=close_key(period),
            UpdateExpression="SET #period = :period, closedThrough = :through, fencedAt = :fenced",
            ConditionExpression="attribute_not_exists(closedThrough) OR closedThrough < :through",
            ExpressionAttributeNames={"#period": "period"},
            ExpressionAttributeValues={
                ":period": string_value(period),
                ":through": string_value(utc_iso(through)),
                ":fenced": string_value(utc_iso(fenced_at)),
            },
            ReturnValues="ALL_NEW",
        )
        return decode_seal(outcome.item)

    def save_cursor(self, period: str, cursor: str) -> None:
        self._table.call(
            self._table.client.update_item,
            TableName=self._table.name,
            Key=close_key(period),
            UpdateExpression="SET #cursor = :cursor",
            ExpressionAttributeNames={"#cursor": "cursor"},
            ExpressionAttributeValues={":cursor": string_value(cursor)},
        )

    def finish_enumeration(self, period: str, through: datetime, *, complete: bool) -> None:
        """Every account whose close instant is at or before `through` has been handed over."""
        self._table.call(
            self._table.client.update_item,
            TableName=self._table.name,
            Key=close_key(period),
            UpdateExpression="SET enumeratedThrough = :through"
            + (", complete = :complete" if complete else "")
            + " REMOVE #cursor",
            ExpressionAttributeNames={"#cursor": "cursor"},
            ExpressionAttributeValues={
                ":through": string_value(utc_iso(through)),
                **({":complete": number_value(1)} if complete else {}),
            },
        )

    def incomplete(self) -> list[PeriodSeal]:
        """Periods with activity whose close has not finished for every account."""
        return [
            decode_seal(item)
            for page in self._table.query(
                KeyConditionExpression="pk = :pk",
                FilterExpression="attribute_not_exists(complete)",
                ExpressionAttributeValues={":pk": string_value(CLOSE_PK)},
                ConsistentRead=True,
            )
            for item in page.get("Items", [])
        ]


def decode_seal(item: Item) -> PeriodSeal:
    return PeriodSeal(
        period=text(item, "sk"),
        closed_through=instant(item, "closedThrough"),
        fenced_at=instant(item, "fencedAt"),
        enumerated_through=instant(item, "enumeratedThrough"),
        cursor=text(item, "cursor") or None,
        complete="complete" in item,
    )
