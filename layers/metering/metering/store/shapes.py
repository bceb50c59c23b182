"""Period shapes: how a closed period filled, kept for projecting the account's next period (SPEC §7)."""

from __future__ import annotations

from metering.model import PeriodRef
from metering.outlook import PeriodShape
from metering.rules import month_end, zone
from metering.store.codec import EXPIRES, Item, epoch
from metering.store.contacts import CONTACT_RETENTION
from metering.store.keys import shape_key
from metering.store.table import Table

POINTS = "p"


class Shapes:
    def __init__(self, table: Table) -> None:
        self._table = table

    def save(self, ref: PeriodRef, shape: PeriodShape) -> None:
        """Keep a closed period's shape (a close that runs again writes the same item)."""
        self._table.call(
            self._table.client.put_item,
            TableName=self._table.name,
            Item={
                **shape_key(ref),
                POINTS: {"L": [{"N": str(point)} for point in shape.points]},
                EXPIRES: epoch(month_end(ref.period, zone("UTC")) + CONTACT_RETENTION),
            },
        )


def decode_shape(item: Item) -> PeriodShape:
    return PeriodShape(tuple(int(point["N"]) for point in item.get(POINTS, {}).get("L", [])))
