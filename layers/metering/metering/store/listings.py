"""Pages for the Usage API: a period's active contacts, and an account's invoices newest first.

Each page is one Query with `Limit` = the page size, eventually consistent (a page shows what is recorded; the
count in the usage view is the exact figure), starting after the position of the page before. A position is a
plain value (a contact id, a period), never a key: the keys stay in this package, and the caller signs the
position into its cursor.

The invoice listing (pk `{account}#invoices`, sk `{period}`) holds one entry per issued invoice, so listing an
account's invoices reads only months that have one."""

from __future__ import annotations

from dataclasses import dataclass

from metering.model import ContactRecord, Invoice, PeriodRef
from metering.store.codec import Item, string_value, text
from metering.store.contacts import Contacts
from metering.store.invoices import invoice_lines_of
from metering.store.keys import CONTACT_PREFIX, contact_key, invoice_entry_key, invoices_pk, key_of, period_pk
from metering.store.table import Table


@dataclass(frozen=True, slots=True)
class Page[T]:
    """One page of a listing, and the position the next page starts after (None: nothing follows). DynamoDB
    says more may follow whenever a page is full, so a full last page is followed by an empty one."""

    items: list[T]
    last: str | None


class Listings:
    def __init__(self, table: Table) -> None:
        self._table = table

    def contacts_page(self, ref: PeriodRef, limit: int, after: str | None) -> Page[ContactRecord]:
        """Up to `limit` active contacts of the period in contact-id order, after contact `after`."""
        response = self._first_page(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :contact)",
            ExpressionAttributeValues={
                ":pk": string_value(period_pk(ref)),
                ":contact": string_value(CONTACT_PREFIX),
            },
            Limit=limit,
            **({"ExclusiveStartKey": contact_key(ref, after)} if after is not None else {}),
        )
        records = [Contacts.decode(item)[1] for item in response.get("Items", [])]
        last = response.get("LastEvaluatedKey")
        return Page(records, key_of(last)[1].removeprefix(CONTACT_PREFIX) if last else None)

    def invoices_page(self, account_id: str, limit: int, after: str | None) -> Page[Invoice]:
        """Up to `limit` of the account's invoices, newest period first, after period `after`."""
        response = self._first_page(
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": string_value(invoices_pk(account_id))},
            ScanIndexForward=False,
            Limit=limit,
            **(
                {"ExclusiveStartKey": invoice_entry_key(PeriodRef(account_id, after))}
                if after is not None
                else {}
            ),
        )
        invoices = [decode_entry(account_id, item) for item in response.get("Items", [])]
        last = response.get("LastEvaluatedKey")
        return Page(invoices, key_of(last)[1] if last else None)

    def _first_page(self, **request: object) -> Item:
        return next(self._table.query(ConsistentRead=False, **request))


def decode_entry(account_id: str, item: Item) -> Invoice:
    return Invoice(
        ref=PeriodRef(account_id, key_of(item)[1]),
        issued_at=text(item, "issuedAt"),
        lines=invoice_lines_of(item),
    )
