"""Data access for the metering table: one module per item family on one `Table` primitive.

Domain code receives a `MeteringStore` and sees only the values of `metering.model`; every key format is in
`metering.store.keys`, every DynamoDB call goes through `metering.store.table.Table`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from metering.model import AlertRecord, ContactRecord, PeriodRef
from metering.store.alerts import Alerts
from metering.store.closing import CloseStates, Invoices
from metering.store.contacts import Contacts
from metering.store.keys import ALERTS_SK, key_of
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

    def read_periods(
        self, contacts: Iterable[tuple[PeriodRef, str]], alert_refs: Iterable[PeriodRef]
    ) -> tuple[dict[tuple[PeriodRef, str], ContactRecord], dict[PeriodRef, dict[int, AlertRecord]]]:
        """Which of `contacts` are active, and the alerts claimed in `alert_refs`, in as few BatchGetItem
        calls as the 100-key limit allows (eventually consistent: a stale miss is settled by the conditional
        write that follows it)."""
        keys = [self.contacts.key(ref, contact_id) for ref, contact_id in contacts]
        keys += [self.alerts.key(ref) for ref in alert_refs]
        active: dict[tuple[PeriodRef, str], ContactRecord] = {}
        alerts: dict[PeriodRef, dict[int, AlertRecord]] = {}
        for item in self.table.batch_get(keys):
            if key_of(item)[1] == ALERTS_SK:
                ref, claimed = self.alerts.decode(item)
                alerts[ref] = claimed
            else:
                ref, record = self.contacts.decode(item)
                active[(ref, record.contact_id)] = record
        return active, alerts
