"""Invoices: one item per account-period (with its period's shape), and its entry in the account's listing."""

from __future__ import annotations

from datetime import datetime

from metering.model import Invoice, PeriodRef, PublicationLease
from metering.outlook import PeriodShape
from metering.rules import InvoiceLines, utc_iso
from metering.store.codec import Item, number, number_value, string_value, text
from metering.store.keys import invoice_entry_key, invoice_key, ref_from_pk
from metering.store.shapes import SHAPE, encoded
from metering.store.table import Conflict, Table


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
            ExpressionAttributeValues={
                ":now": string_value(utc_iso(now)),
                ":stale": string_value(utc_iso(stale_before)),
            },
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
            ExpressionAttributeValues={":leasedAt": string_value(utc_iso(leased_at))},
        )

    def mark_published(self, ref: PeriodRef, published_at: datetime) -> None:
        self._table.call(
            self._table.client.update_item,
            TableName=self._table.name,
            Key=invoice_key(ref),
            UpdateExpression="SET publishedAt = if_not_exists(publishedAt, :at) REMOVE publishingAt",
            ExpressionAttributeValues={":at": string_value(utc_iso(published_at))},
        )


def invoice_attributes(invoice: Invoice) -> Item:
    """An invoice's attributes, as its item and its listing entry both hold them."""
    lines = invoice.lines
    return {
        "invoiceId": string_value(invoice.invoice_id),
        "plan": string_value(lines.plan),
        "billingCycle": string_value(lines.billing_cycle),
        "includedContacts": number_value(lines.included_contacts),
        "addonContacts": number_value(lines.addon_contacts),
        "allowance": number_value(lines.allowance),
        "activeContacts": number_value(lines.active_contacts),
        "overusageContacts": number_value(lines.overusage_contacts),
        "unitPriceCents": number_value(lines.unit_price_cents),
        "amountCents": number_value(lines.amount_cents),
        "currency": string_value(lines.currency),
        "issuedAt": string_value(invoice.issued_at),
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
