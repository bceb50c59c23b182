"""The account's invoice listing, written by InvoiceAccount beside each invoice it stores: one entry per
issued invoice with its SPEC §3 fields and `issuedAt`, the same whatever a close request's redeliveries do."""

from __future__ import annotations

from typing import Any

import boto3
from metering.store.keys import invoices_pk

from tests.harness import Metering
from tests.helpers import contact_events, contact_ids, subscription_changed

ACCOUNT = "acc-listed"
CLOSE_REQUEST = {"accountId": ACCOUNT, "period": "2026-10", "asOf": "2026-11-01T06:00:00Z"}


def listing(metering: Metering) -> list[dict[str, Any]]:
    return [item for item in metering.scan_items() if item["pk"]["S"] == invoices_pk(ACCOUNT)]


def over_allowance_in_october(metering: Metering) -> None:
    metering.record_events([subscription_changed(ACCOUNT, "start", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events(ACCOUNT, contact_ids("con", 53), "2026-10-05T09:00:00Z"))


def test_an_issued_invoice_is_listed_once_with_its_fields(metering: Metering) -> None:
    # Given an account 3 contacts over its allowance in October
    over_allowance_in_october(metering)

    # When October closes, and its close request is delivered twice more
    metering.close("2026-11-01T06:00:00Z")
    [entry] = listing(metering)
    metering.invoice_requests([CLOSE_REQUEST, CLOSE_REQUEST])

    # Then the listing holds one entry, unchanged, keyed by the period, with the invoice's fields (not the
    # lease, nor the shape the next period is projected by)
    assert listing(metering) == [entry]
    [invoice] = metering.invoice_items()
    assert entry["sk"] == {"S": "2026-10"}
    assert {name: value for name, value in entry.items() if name not in {"pk", "sk"}} == {
        name: value
        for name, value in invoice.items()
        if name not in {"pk", "sk", "publishingAt", "publishedAt", "shape"}
    }
    assert (entry["overusageContacts"], entry["amountCents"], entry["issuedAt"]) == (
        {"N": "3"},
        {"N": "75"},
        {"S": "2026-11-01T06:00:00.000000Z"},
    )


def test_an_entry_lost_between_the_two_writes_is_written_by_the_redelivery(metering: Metering) -> None:
    # Given October invoiced, and its listing entry gone as if InvoiceAccount had stopped after the invoice
    over_allowance_in_october(metering)
    metering.close("2026-11-01T06:00:00Z")
    [entry] = listing(metering)
    boto3.client("dynamodb").delete_item(
        TableName=metering.stack.table_name, Key={"pk": entry["pk"], "sk": entry["sk"]}
    )

    # When the close request is delivered again
    metering.invoice_requests([CLOSE_REQUEST])

    # Then the entry is back as it was, and the invoice was not issued again
    assert listing(metering) == [entry]
    assert len(metering.invoice_items()) == 1
    assert len(metering.events_published("Overusage Invoice Issued")) == 1


def test_a_period_without_overusage_lists_nothing(metering: Metering) -> None:
    # Given an account within its allowance in October
    metering.record_events([subscription_changed(ACCOUNT, "grow", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events(ACCOUNT, contact_ids("con", 53), "2026-10-05T09:00:00Z"))
    # When October closes
    metering.close("2026-11-01T06:00:00Z")
    # Then neither an invoice nor a listing entry is written
    assert (metering.invoice_items(), listing(metering)) == ([], [])
