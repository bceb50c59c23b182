"""`--format table`: the simulate report as readable tables (rich)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from metering_tools.operations import euros


def invoice_table(rows: Iterable[Mapping[str, Any]]) -> Table:
    """One line per invoice (SPEC §3 fields), the amount in cents and in euros."""
    table = Table(title="Overusage invoices")
    numeric = ("allowance", "active", "over", "cents", "EUR")
    for column in ("account", "period", "plan", "cycle", *numeric):
        table.add_column(column, justify="right" if column in numeric else "left")
    for row in rows:
        table.add_row(
            row["accountId"],
            row["period"],
            row["plan"],
            row["billingCycle"],
            str(row["allowance"]),
            str(row["activeContacts"]),
            str(row["overusageContacts"]),
            str(row["amountCents"]),
            euros(row["amountCents"]),
        )
    return table


def wide_console() -> Console:
    return Console(width=max(Console().width, 120))


def print_table(report: dict[str, Any], console: Console | None = None) -> None:
    """Invoices, usage, alerts, rejected and late events, and the request counts, one table each."""
    console = console or wide_console()
    console.print(invoice_table(report["invoices"]))

    usage = Table(title="Usage")
    for column in ("account", "period", "active contacts", "closed"):
        usage.add_column(column)
    for row in report["usage"]:
        usage.add_row(
            row["accountId"], row["period"], str(row["activeContacts"]), "yes" if row["closed"] else "no"
        )
    console.print(usage)

    alerts = Table(title="Usage alerts")
    for column in ("account", "period", "threshold", "allowance"):
        alerts.add_column(column)
    for row in report["alerts"]:
        alerts.add_row(row["accountId"], row["period"], f"{row['thresholdPercent']} %", str(row["allowance"]))
    console.print(alerts)

    problems = Table(title="Rejected and late events")
    for column in ("event", "kind", "detail"):
        problems.add_column(column)
    for row in report["rejected"]:
        problems.add_row(row["eventId"], "rejected", row["reason"])
    for row in report["late"]:
        problems.add_row(row["eventId"], "late", f"{row['accountId']} {row['period']}")
    for row in report["stats"]["deadLettered"]:
        fate = "redriven" if row["redriven"] else "lost: not in this report"
        problems.add_row(row["messageId"], "dead-lettered", f"{row['queue']}, {fate}")
    console.print(problems)

    stats = report["stats"]
    console.print(
        f"events {stats['events']}  invocations {stats['invocations']}\n"
        f"DynamoDB calls {stats['dynamodb']}\nDynamoDB items {stats['dynamodbItems']}\n"
        f"receives per message: max {stats['receives']['max']}, median {stats['receives']['median']}"
    )
