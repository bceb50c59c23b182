"""`metering invoices`: an operator lists the invoices stored for a period, in cents and in euros."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from metering_tools import cli
from metering_tools.local_stack import LocalStack
from moto.server import ThreadedMotoServer

from tests.harness import Metering
from tests.helpers import contact_ids, failed_ids, status_renamed, subscription_changed

OCTOBER = "2026-10"
CLOSE_DUE = "2026-11-01T06:00:00Z"
"""October's close instant in UTC (its end plus the 6 hours of grace)."""

ACCOUNTS = (
    # account, plan, cycle, add-ons, active contacts in October
    ("acc-over", "start", "monthly", 0, 63),
    ("acc-addons", "grow", "yearly", 10, 672),
    ("acc-within", "start", "monthly", 0, 50),
    ("acc-legacy", "legacy", "monthly", 0, 80),
)
"""Delivered in this order, which is not the order of their ids."""

EXPECTED = [
    # account, allowance, active, overusage, cents, euros
    ("acc-addons", 260, 672, 412, 10300, "103.00"),
    ("acc-over", 50, 63, 13, 325, "3.25"),
]


@pytest.fixture
def closed_october(metering: Metering) -> Metering:
    """Four accounts on start, grow with add-ons, start within its allowance and legacy, each with its
    October activity recorded, and October closed."""
    for account_id, plan, cycle, addons, active in ACCOUNTS:
        subscription = subscription_changed(
            account_id, plan, "2026-09-01T00:00:00Z", billing_cycle=cycle, addon_contacts=addons
        )
        rename = status_renamed(account_id, "2026-10-10T09:00:00Z", contact_ids=contact_ids("con", active))
        _, response = metering.record_events([subscription, rename])
        assert failed_ids(response) == []
    assert metering.close(CLOSE_DUE) == []
    return metering


@pytest.fixture
def moto_server() -> Iterator[str]:
    """An HTTP endpoint in this process, serving the same moto state as the test's stack."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> str:
    """Run `metering` with these arguments; its standard output."""
    capsys.readouterr()
    assert cli.main(list(arguments)) == 0
    return capsys.readouterr().out


def amounts(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    fields = ("accountId", "allowance", "activeContacts", "overusageContacts", "amountCents", "amountEur")
    return [tuple(row[field] for field in fields) for row in rows]


def test_invoices_lists_a_periods_invoices_by_account_with_cents_and_euros(
    closed_october: Metering, stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given October closed for two accounts over their allowance, one within it and one on legacy
    # When the operator lists October's invoices
    rows = json.loads(run(capsys, "invoices", "--table", stack.table_name, "--period", OCTOBER))
    # Then only the two accounts over their allowance are listed, sorted by account, with their amounts
    assert amounts(rows) == EXPECTED
    # And each row carries the invoice's fields as published, in integer cents, for October
    assert {row["period"] for row in rows} == {OCTOBER}
    assert {(row["unitPriceCents"], row["currency"]) for row in rows} == {(25, "EUR")}
    assert [(row["plan"], row["billingCycle"], row["addonContacts"]) for row in rows] == [
        ("grow", "yearly", 10),
        ("start", "monthly", 0),
    ]


def test_invoices_of_one_account_lists_only_that_accounts_invoice(
    closed_october: Metering, stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given October closed (as above)
    listing = ("invoices", "--table", stack.table_name, "--period", OCTOBER)
    # When the operator asks for one invoiced account, for an account within its allowance, and for a month
    # that was never invoiced
    over = json.loads(run(capsys, *listing, "--account", "acc-over"))
    within = json.loads(run(capsys, *listing, "--account", "acc-within"))
    september = json.loads(run(capsys, "invoices", "--table", stack.table_name, "--period", "2026-09"))
    # Then the first lists its invoice and the others nothing
    assert amounts(over) == [EXPECTED[1]]
    assert (within, september) == ([], [])


def test_invoices_as_a_table_shows_each_amount_in_cents_and_euros(
    closed_october: Metering, stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given October closed (as above)
    # When the operator asks for a table
    lines = run(
        capsys, "invoices", "--table", stack.table_name, "--period", OCTOBER, "--format", "table"
    ).splitlines()
    # Then there is one line per invoice, by account, each with its amount in cents and in euros
    rows = [line for line in lines if "acc-" in line]
    assert len(rows) == 2
    assert all(word in rows[0].split() for word in ("acc-addons", "10300", "103.00"))
    assert all(word in rows[1].split() for word in ("acc-over", "325", "3.25"))


def test_invoices_reads_the_table_at_the_endpoint_given(
    closed_october: Metering, stack: LocalStack, moto_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given October closed (as above), and the same table served over HTTP at a local endpoint
    # When the operator lists October's invoices from that endpoint
    rows = json.loads(
        run(
            capsys,
            *("invoices", "--table", stack.table_name, "--period", OCTOBER),
            *("--endpoint-url", moto_server),
        )
    )
    # Then it lists what the table holds there
    assert amounts(rows) == EXPECTED
