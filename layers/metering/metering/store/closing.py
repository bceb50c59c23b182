"""Close states (one item per period, for every account at once) and invoices (one per account-period)."""

from __future__ import annotations

from datetime import datetime

from metering.model import CloseState, Invoice, PeriodRef, PublicationLease
from metering.outlook import PeriodShape
from metering.rules import InvoiceLines, utc_iso
from metering.store.codec import Item, instant, n, number, s, text
from metering.store.keys import CLOSE_PK, close_key, invoice_entry_key, invoice_key, ref_from_pk
from metering.store.shapes import SHAPE, encoded
from metering.store.table import Conflict, Table


class CloseStates:
    def __init__(self, table: Table) -> None:
        self._table = table

    def read_since(self, period: str, *, consistent: bool = True) -> dict[str, CloseState]:
        """The close state of every period from `period` on that has one; one small partition, about 100
        bytes a month. Consistent unless the reader only shows what it finds (a seal is then seen late)."""
        return {
            state.period: state
            for page in self._table.query(
                KeyConditionExpression="pk = :pk AND sk >= :since",
                ExpressionAttributeValues={":pk": s(CLOSE_PK), ":since": s(period)},
                ConsistentRead=consistent,
            )
            for state in map(decode_state, page.get("Items", []))
        }

    def open(self, period: str) -> CloseState:
        """Make sure the close job knows the period has activity; the state already there if it does."""
        outcome = self._table.create({**close_key(period), "period": s(period)})
        return decode_state(outcome.item) if isinstance(outcome, Conflict) else CloseState(period)

    def seal(self, period: str, through: datetime, fenced_at: datetime) -> CloseState:
        """Seal every account's period whose close instant is at or before `through` (never moves back).
        Invoices may be computed from `fenced_at` on: no recording that saw the period open still runs."""
        outcome = self._table.write(
            Key=close_key(period),
            UpdateExpression="SET #period = :period, closedThrough = :through, fencedAt = :fenced",
            ConditionExpression="attribute_not_exists(closedThrough) OR closedThrough < :through",
            ExpressionAttributeNames={"#period": "period"},
            ExpressionAttributeValues={
                ":period": s(period),
                ":through": s(utc_iso(through)),
                ":fenced": s(utc_iso(fenced_at)),
            },
            ReturnValues="ALL_NEW",
        )
        return decode_state(outcome.item)

    def save_cursor(self, period: str, cursor: str) -> None:
        self._table.call(
            self._table.client.update_item,
            TableName=self._table.name,
            Key=close_key(period),
            UpdateExpression="SET #cursor = :cursor",
            ExpressionAttributeNames={"#cursor": "cursor"},
            ExpressionAttributeValues={":cursor": s(cursor)},
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
                ":through": s(utc_iso(through)),
                **({":complete": n(1)} if complete else {}),
            },
        )

    def incomplete(self) -> list[CloseState]:
        """Periods with activity whose close has not finished for every account."""
        return [
            decode_state(item)
            for page in self._table.query(
                KeyConditionExpression="pk = :pk",
                FilterExpression="attribute_not_exists(complete)",
                ExpressionAttributeValues={":pk": s(CLOSE_PK)},
                ConsistentRead=True,
            )
            for item in page.get("Items", [])
        ]


def decode_state(item: Item) -> CloseState:
    return CloseState(
        period=text(item, "sk"),
        closed_through=instant(item, "closedThrough"),
        fenced_at=instant(item, "fencedAt"),
        enumerated_through=instant(item, "enumeratedThrough"),
        cursor=text(item, "cursor") or None,
        complete="complete" in item,
    )


class Invoices:
    def __init__(self, table: Table) -> None:
        self._table = table

    def save(self, invoice: Invoice, shape: PeriodShape | None = None) -> Invoice:
        """Store the invoice once (with its period's shape, for projecting the next period); a second attempt
        gets the one stored first. Then put its entry in the account's invoice listing, from the invoice
        stored first: every attempt writes the same entry, so the put needs no condition, and an attempt that
        failed between the two writes is completed by the next."""
        shaped = {SHAPE: encoded(shape)} if shape is not None else {}
        outcome = self._table.create({**invoice_key(invoice.ref), **invoice_attributes(invoice), **shaped})
        stored = decode_invoice(outcome.item) if isinstance(outcome, Conflict) else invoice
        self._table.call(self._table.client.put_item, TableName=self._table.name, Item=invoice_entry(stored))
        return stored

    def claim_publication(self, ref: PeriodRef, now: datetime, stale_before: datetime) -> PublicationLease:
        """Take the lease to publish an invoice, unless it is published or another caller's lease (newer
        than `stale_before`) holds."""
        outcome = self._table.write(
            Key=invoice_key(ref),
            UpdateExpression="SET publishingAt = :now",
            ConditionExpression="attribute_exists(pk) AND attribute_not_exists(publishedAt) "
            "AND (attribute_not_exists(publishingAt) OR publishingAt < :stale)",
            ExpressionAttributeValues={":now": s(utc_iso(now)), ":stale": s(utc_iso(stale_before))},
        )
        if isinstance(outcome, Conflict):
            return PublicationLease.PUBLISHED if "publishedAt" in outcome.item else PublicationLease.BUSY
        return PublicationLease.CLAIMED

    def release_publication(self, ref: PeriodRef, leased_at: datetime) -> None:
        """Give the lease back after a failed publication, so the next delivery need not wait it out."""
        self._table.write(
            Key=invoice_key(ref),
            UpdateExpression="REMOVE publishingAt",
            ConditionExpression="publishingAt = :leasedAt",
            ExpressionAttributeValues={":leasedAt": s(utc_iso(leased_at))},
        )

    def mark_published(self, ref: PeriodRef, published_at: datetime) -> None:
        self._table.call(
            self._table.client.update_item,
            TableName=self._table.name,
            Key=invoice_key(ref),
            UpdateExpression="SET publishedAt = if_not_exists(publishedAt, :at) REMOVE publishingAt",
            ExpressionAttributeValues={":at": s(utc_iso(published_at))},
        )


def invoice_attributes(invoice: Invoice) -> Item:
    """An invoice's attributes, as its item and its listing entry both hold them."""
    lines = invoice.lines
    return {
        "invoiceId": s(invoice.invoice_id),
        "plan": s(lines.plan),
        "billingCycle": s(lines.billing_cycle),
        "includedContacts": n(lines.included_contacts),
        "addonContacts": n(lines.addon_contacts),
        "allowance": n(lines.allowance),
        "activeContacts": n(lines.active_contacts),
        "overusageContacts": n(lines.overusage_contacts),
        "unitPriceCents": n(lines.unit_price_cents),
        "amountCents": n(lines.amount_cents),
        "currency": s(lines.currency),
        "issuedAt": s(invoice.issued_at),
    }


def invoice_entry(invoice: Invoice) -> Item:
    """The entry of an invoice in its account's invoice listing (`metering.store.listings`)."""
    return {**invoice_entry_key(invoice.ref), **invoice_attributes(invoice)}


def invoice_lines_of(item: Item) -> InvoiceLines:
    return InvoiceLines(
        plan=text(item, "plan"),  # type: ignore[arg-type]
        billing_cycle=text(item, "billingCycle"),  # type: ignore[arg-type]
        included_contacts=number(item, "includedContacts"),
        addon_contacts=number(item, "addonContacts"),
        allowance=number(item, "allowance"),
        active_contacts=number(item, "activeContacts"),
        overusage_contacts=number(item, "overusageContacts"),
        unit_price_cents=number(item, "unitPriceCents"),
        amount_cents=number(item, "amountCents"),
        currency=text(item, "currency"),
    )


def decode_invoice(item: Item) -> Invoice:
    return Invoice(
        ref=ref_from_pk(text(item, "pk")), issued_at=text(item, "issuedAt"), lines=invoice_lines_of(item)
    )
