"""Operator commands over a deployed table, credentials and region from the usual AWS environment; and the
rich tables of `--format table` (the simulate report, the invoices)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import boto3
from metering import gateways
from metering.aws import CLIENT_CONFIG
from metering.model import PeriodRef
from metering.store import MeteringStore
from metering.store.invoices import decode_invoice
from metering.store.keys import invoice_key
from metering.usage_view import InvoiceView, ReadSettings, read_usage
from pydantic.alias_generators import to_camel
from rich.console import Console
from rich.table import Column, Table


def usage(
    store: MeteringStore, account_id: str, period: str | None, now: datetime, settings: ReadSettings
) -> dict[str, Any]:
    """What the account sees of a period (default: the open one), as the Usage API shows it."""
    return read_usage(store, account_id, period, now, settings).model_dump(mode="json", by_alias=True)


def explain(store: MeteringStore, ref: PeriodRef, now: datetime, settings: ReadSettings) -> dict[str, Any]:
    """Why a period was billed what it was: its usage and every active contact with the first event that made
    it active, oldest first (a record's fields in camelCase, as the Usage API names them)."""
    contacts = sorted(store.contacts.records(ref), key=lambda c: (c.first_occurred_at, c.contact_id))
    return {
        **usage(store, ref.account_id, ref.period, now, settings),
        "contacts": [{to_camel(name): value for name, value in asdict(c).items()} for c in contacts],
    }


def open_store(table_name: str, endpoint_url: str | None = None) -> MeteringStore:
    """The table on AWS, or at `endpoint_url` (DynamoDB Local, a moto server)."""
    if endpoint_url is None:
        return MeteringStore(table_name)
    client = boto3.client("dynamodb", endpoint_url=endpoint_url, config=CLIENT_CONFIG)
    return MeteringStore(table_name, client)


def invoices(store: MeteringStore, period: str, account_id: str | None = None) -> Iterator[dict[str, Any]]:
    """The invoices stored for a period (or one account's), sorted by account, as the Usage API lists them
    with the amount in euros beside the cents. Only accounts with a subscription can have one, so without an
    account it reads the subscription shards and then each such account's invoice key (never the contacts)."""
    subscriptions = store.subscriptions
    pages = (page for shard in subscriptions.shards() for page in subscriptions.shard_pages(shard, None))
    accounts = (
        [account_id] if account_id is not None else sorted({c.account_id for page in pages for c in page})
    )
    found = store.table.batch_get(invoice_key(PeriodRef(account, period)) for account in accounts)
    for invoice in sorted(map(decode_invoice, found), key=lambda i: i.ref.account_id):
        row = InvoiceView.of(invoice).model_dump(mode="json", by_alias=True)
        yield {**row, "amountEur": euros(invoice.lines.amount_cents)}


def euros(cents: int) -> str:
    """Integer cents as a euro amount with two decimals (`325` -> `3.25`), in integer arithmetic only."""
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole}.{rest:02d}"


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


def _table(title: str, columns: Sequence[str | Column], rows: Iterable[Sequence[str]]) -> Table:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*row)
    return table


def invoice_table(rows: Iterable[Mapping[str, Any]]) -> Table:
    """One line per invoice (SPEC §3 fields), the amount in cents and in euros."""
    numeric = [Column(name, justify="right") for name in ("allowance", "active", "over", "cents", "EUR")]
    texts = ("accountId", "period", "plan", "billingCycle")
    counts = ("allowance", "activeContacts", "overusageContacts", "amountCents")
    lines = (
        [*(row[n] for n in texts), *(str(row[n]) for n in counts), euros(row["amountCents"])] for row in rows
    )
    return _table("Overusage invoices", ("account", "period", "plan", "cycle", *numeric), lines)


def wide_console() -> Console:
    return Console(width=max(Console().width, 120))


def print_table(report: dict[str, Any]) -> None:
    """`metering simulate --format table`: invoices, usage, alerts, rejected and late events, the counts."""
    console = wide_console()
    stats = report["stats"]
    console.print(invoice_table(report["invoices"]))
    usage_rows = [
        (r["accountId"], r["period"], str(r["activeContacts"]), "yes" if r["closed"] else "no")
        for r in report["usage"]
    ]
    console.print(_table("Usage", ("account", "period", "active contacts", "closed"), usage_rows))
    alerts = [
        (r["accountId"], r["period"], f"{r['thresholdPercent']} %", str(r["allowance"]))
        for r in report["alerts"]
    ]
    console.print(_table("Usage alerts", ("account", "period", "threshold", "allowance"), alerts))
    problems = [(r["eventId"], "rejected", r["reason"]) for r in report["rejected"]]
    problems += [(r["eventId"], "late", f"{r['accountId']} {r['period']}") for r in report["late"]]
    for r in stats["deadLettered"]:
        fate = "redriven" if r["redriven"] else "lost: not in this report"
        problems.append((r["messageId"], "dead-lettered", f"{r['queue']}, {fate}"))
    console.print(_table("Rejected and late events", ("event", "kind", "detail"), problems))
    console.print(
        f"events {stats['events']}  invocations {stats['invocations']}\n"
        f"DynamoDB calls {stats['dynamodb']}\nDynamoDB items {stats['dynamodbItems']}\n"
        f"receives per message: max {stats['receives']['max']}, median {stats['receives']['median']}"
    )
