"""Operator commands over a deployed table: explain a charge, show an account's usage, list invoices,
list and replay rejected events. Credentials and region come from the usual AWS environment."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import boto3
from metering import gateways
from metering.aws import CLIENT_CONFIG
from metering.model import Invoice, PeriodRef
from metering.store import MeteringStore
from metering.store.closing import decode_invoice
from metering.store.keys import invoice_key
from metering.usage_view import InvoiceView, ReadSettings, read_usage

if TYPE_CHECKING:
    from rich.console import Console


def usage(
    store: MeteringStore, account_id: str, period: str | None, now: datetime, settings: ReadSettings
) -> dict[str, Any]:
    """What the account sees of a period (default: the open one), as the Usage API shows it."""
    return read_usage(store, account_id, period, now, settings).model_dump(mode="json", by_alias=True)


def explain(store: MeteringStore, ref: PeriodRef, now: datetime, settings: ReadSettings) -> dict[str, Any]:
    """Why a period was billed what it was: its usage (count, closed, invoice) and every active contact with
    the first event that made it active (type, id, time), oldest first."""
    contacts = sorted(store.contacts.records(ref), key=lambda c: (c.first_occurred_at, c.contact_id))
    return {
        **usage(store, ref.account_id, ref.period, now, settings),
        "contacts": [
            {
                "contactId": c.contact_id,
                "firstEventId": c.first_event_id,
                "firstDetailType": c.first_detail_type,
                "firstOccurredAt": c.first_occurred_at,
            }
            for c in contacts
        ],
    }


def open_store(table_name: str, endpoint_url: str | None = None) -> MeteringStore:
    """The table on AWS (credentials and region from the usual environment), or at `endpoint_url` (DynamoDB
    Local, a moto server)."""
    if endpoint_url is None:
        return MeteringStore(table_name)
    client = boto3.client("dynamodb", endpoint_url=endpoint_url, config=CLIENT_CONFIG)
    return MeteringStore(table_name, client)


def invoices(store: MeteringStore, period: str, account_id: str | None = None) -> Iterator[dict[str, Any]]:
    """The invoices stored for a period (or one account's), sorted by account. Only accounts with a
    subscription can have one, so without an account it reads the subscription shards and then each such
    account's invoice key (never the contacts)."""
    accounts = (
        [account_id]
        if account_id is not None
        else sorted(
            {
                change.account_id
                for shard in store.subscriptions.shards()
                for page in store.subscriptions.shard_pages(shard, None)
                for change in page
            }
        )
    )
    found = store.table.batch_get(invoice_key(PeriodRef(account, period)) for account in accounts)
    for invoice in sorted(map(decode_invoice, found), key=lambda i: i.ref.account_id):
        yield _invoice_row(invoice)


def _invoice_row(invoice: Invoice) -> dict[str, Any]:
    """An invoice as the Usage API lists it (`InvoiceView`), with its amount in euros beside the cents."""
    row = InvoiceView.of(invoice).model_dump(mode="json", by_alias=True)
    return {**row, "amountEur": euros(invoice.lines.amount_cents)}


def euros(cents: int) -> str:
    """Integer cents as a euro amount with two decimals (`325` -> `3.25`), in integer arithmetic only."""
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole}.{rest:02d}"


def print_invoices(rows: Iterable[dict[str, Any]], console: Console | None = None) -> None:
    """`metering invoices --format table`: one line per invoice, amounts in cents and in euros."""
    from metering_tools.tables import invoice_table, wide_console  # noqa: PLC0415 - rich only for tables

    (console or wide_console()).print(invoice_table(rows))


def list_rejected(store: MeteringStore, month: str) -> list[dict[str, str]]:
    """Events rejected in a month (by time of receipt), with their reasons."""
    return [
        {"eventId": r.event_id, "reason": r.reason, "receivedAt": r.received_at}
        for r in store.rejections.received_in(month)
    ]


def replay_rejected(
    store: MeteringStore, month: str, event_id: str, queue_url: str, corrected_body: str | None = None
) -> str:
    """Send a rejected event (as stored, or corrected by the operator) back to the activity queue with its
    original id, and forget the rejection. Recording is idempotent, so a replay counts at most once."""
    stored = {r.event_id: r.raw for r in store.rejections.received_in(month)}
    if event_id not in stored:
        raise LookupError(f"no rejected event {event_id!r} in {month}")
    body = corrected_body if corrected_body is not None else stored[event_id]
    gateways.send_messages(queue_url, [body])
    store.rejections.delete(month, event_id)
    return body
