"""Data access for the metering table: one module per item family on one `Table` primitive.

Domain code receives a `MeteringStore` and sees only the values of `metering.model`; every key format is in
`metering.store.keys`, every DynamoDB call goes through `metering.store.table.Table`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from metering.model import AlertRecord, Invoice, PeriodRef
from metering.store.alerts import Alerts
from metering.store.closing import CloseStates, Invoices, decode_invoice
from metering.store.contacts import Contacts
from metering.store.keys import ALERTS_SK, alerts_key, invoice_key, key_of
from metering.store.rejections import Rejections
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
        self.alerts = Alerts(self.table)
        self.subscriptions = Subscriptions(self.table)
        self.close_states = CloseStates(self.table)
        self.invoices = Invoices(self.table)
        self.rejections = Rejections(self.table)

    def period_outcome(self, ref: PeriodRef) -> tuple[dict[int, AlertRecord], Invoice | None]:
        """The alerts claimed in a period and its invoice, in one eventually consistent BatchGetItem."""
        claims: dict[int, AlertRecord] = {}
        invoice: Invoice | None = None
        for item in self.table.batch_get([alerts_key(ref), invoice_key(ref)]):
            if key_of(item)[1] == ALERTS_SK:
                claims = self.alerts.decode(item)[1]
            else:
                invoice = decode_invoice(item)
        return claims, invoice
