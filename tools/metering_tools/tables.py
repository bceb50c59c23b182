"""`--format table`: the simulate report as readable tables (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _euros(cents: int) -> str:
    return f"EUR {cents // 100}.{cents % 100:02d}"


def print_table(report: dict[str, Any], console: Console | None = None) -> None:
    """Invoices, usage, alerts, rejected and late events, and the request counts, one table each."""
    console = console or Console(width=max(Console().width, 120))
    invoices = Table(title="Overusage invoices")
    for column in ("account", "period", "plan", "cycle", "allowance", "active", "over", "amount"):
        invoices.add_column(
            column, justify="right" if column in {"allowance", "active", "over", "amount"} else "left"
        )
    for row in report["invoices"]:
        invoices.add_row(
            row["accountId"],
            row["period"],
            row["plan"],
            row["billingCycle"],
            str(row["allowance"]),
            str(row["activeContacts"]),
            str(row["overusageContacts"]),
            _euros(row["amountCents"]),
        )
    console.print(invoices)

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
    console.print(problems)

    stats = report["stats"]
    console.print(
        f"events {stats['events']}  invocations {stats['invocations']}\n"
        f"DynamoDB calls {stats['dynamodb']}\nDynamoDB items {stats['dynamodbItems']}"
    )
