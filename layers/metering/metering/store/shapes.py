"""Period shapes: how a closed period filled, kept for projecting the account's next period (SPEC §7).

No item of its own: an invoiced period's shape is part of its invoice (written anyway), any other billed
period's goes onto the next period's alerts item, which the next period's usage view reads anyway. So a shape
costs an invoiced period no write and another period one, and a usage view no read."""

from __future__ import annotations

from typing import Any

from metering.model import PeriodRef
from metering.outlook import PeriodShape
from metering.store.codec import Item
from metering.store.keys import alerts_key
from metering.store.table import Table

SHAPE = "shape"
"""The invoice item's attribute: its period's active contacts at the end of each tenth of it."""
PREVIOUS_SHAPE = "previousShape"
"""The alerts item's attribute: the shape of the period before, when that one was not invoiced."""


def encoded(shape: PeriodShape) -> dict[str, Any]:
    return {"L": [{"N": str(point)} for point in shape.points]}


def decode_shape(item: Item, attribute: str) -> PeriodShape | None:
    value = item.get(attribute)
    return PeriodShape(tuple(int(point["N"]) for point in value["L"])) if value else None


class Shapes:
    def __init__(self, table: Table) -> None:
        self._table = table

    def save_for_next(self, next_period: PeriodRef, shape: PeriodShape) -> None:
        """Keep a closed, uninvoiced period's shape on the next period's alerts item (a close that runs again
        writes the same value)."""
        self._table.call(
            self._table.client.update_item,
            TableName=self._table.name,
            Key=alerts_key(next_period),
            UpdateExpression="SET #shape = :shape",
            ExpressionAttributeNames={"#shape": PREVIOUS_SHAPE},
            ExpressionAttributeValues={":shape": encoded(shape)},
        )
