"""Data access for the metering table: one module per item family on one `Table` primitive.

Domain code receives a `MeteringStore` and sees only the values of `metering.model`; every key format is in
`metering.store.keys`, every DynamoDB call goes through `metering.store.table.Table`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from metering.model import AlertRecord, Invoice, PeriodRef
from metering.outlook import PeriodShape
from metering.store.alerts import Alerts
from metering.store.contacts import Contacts
from metering.store.counters import ContactCounter, Counters, decode_counter
from metering.store.invoices import Invoices, decode_invoice
from metering.store.keys import (
    ALERTS_SK,
    COUNTER_SK,
    alerts_key,
    counter_key,
    invoice_key,
    key_of,
    period_pk,
)
from metering.store.listings import Listings
from metering.store.rejections import Rejections
from metering.store.seals import PeriodSeals
from metering.store.shapes import PREVIOUS_SHAPE, SHAPE, Shapes, decode_shape
from metering.store.subscriptions import Subscriptions
from metering.store.table import WRITE_THREADS, Table

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class MeteringStore:
    """The item families of the metering table, sharing one client and one writer pool."""

    def __init__(
        self, table_name: str, client: DynamoDBClient | None = None, write_concurrency: int = WRITE_THREADS
    ) -> None:
        self.table = Table(table_name, client, write_concurrency)
        self.contacts = Contacts(self.table)
        self.counters = Counters(self.table)
        self.shapes = Shapes(self.table)
        self.alerts = Alerts(self.table)
        self.subscriptions = Subscriptions(self.table)
        self.seals = PeriodSeals(self.table)
        self.invoices = Invoices(self.table)
        self.rejections = Rejections(self.table)
        self.listings = Listings(self.table)

    def period_outcome(
        self, ref: PeriodRef, *, with_invoice: bool, shape_of: PeriodRef | None = None
    ) -> PeriodOutcome:
        """The alerts claimed in a period, its contact counter, (when it may have one) its invoice and (when
        asked) the shape of the period before, in one eventually consistent BatchGetItem: half a read unit
        per item. A previous period's shape is on its invoice, or (not invoiced) on this period's alerts
        item."""
        outcome = PeriodOutcome()
        keys = [alerts_key(ref), counter_key(ref)]
        keys += [invoice_key(ref)] if with_invoice else []
        keys += [invoice_key(shape_of)] if shape_of else []
        for item in self.table.batch_get(keys):
            pk, sort_key = key_of(item)
            if sort_key == ALERTS_SK:
                outcome.claims = self.alerts.decode(item)[1]
                outcome.previous_shape = outcome.previous_shape or decode_shape(item, PREVIOUS_SHAPE)
            elif sort_key == COUNTER_SK:
                outcome.counter = decode_counter(item)
            elif pk == period_pk(ref):
                outcome.invoice = decode_invoice(item)
            else:
                outcome.previous_shape = decode_shape(item, SHAPE) or outcome.previous_shape
        return outcome


@dataclass(slots=True)
class PeriodOutcome:
    """What a period has come to so far, beside its contacts."""

    claims: dict[int, AlertRecord] = field(default_factory=dict)
    counter: ContactCounter | None = None
    invoice: Invoice | None = None
    previous_shape: PeriodShape | None = None
