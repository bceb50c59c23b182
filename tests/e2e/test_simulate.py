"""`metering simulate` (SPEC §4): a small month replayed through the real handlers, reported in the contract's
shape and order."""

from __future__ import annotations

import json
from typing import Any

from metering_tools.simulate import SimulationOptions, simulate

from tests.helpers import EVENTS_DIR, utc

INVOICE_KEYS = [
    "accountId",
    "period",
    "plan",
    "billingCycle",
    "includedContacts",
    "addonContacts",
    "allowance",
    "activeContacts",
    "overusageContacts",
    "unitPriceCents",
    "amountCents",
    "currency",
]


def run(file_name: str, now: str, **options: Any) -> dict[str, Any]:
    return simulate(SimulationOptions(events_path=EVENTS_DIR / file_name, now=utc(now), **options))


def test_simulate_reports_a_month_with_exactly_the_keys_shapes_and_order_of_spec_section_4() -> None:
    # Given a month of 21 envelopes: a Berlin account on start over its allowance (every detail-type,
    # an inline and a claim-check rename, both sides of the Berlin month edge, a late event delivered
    # twice), a legacy account, an account without subscription, and three invalid events (one twice)
    events_file = "month.jsonl"
    lines = (EVENTS_DIR / events_file).read_text(encoding="utf-8").splitlines()

    # When it is replayed up to mid-November
    report = run(events_file, "2026-11-15T00:00:00Z")

    # Then the report has exactly the sections of SPEC §4 and is plain JSON
    assert list(report) == ["invoices", "usage", "alerts", "rejected", "late", "stats"]
    assert json.loads(json.dumps(report)) == report
    # And October in Berlin is billed on start: 61 active, 11 over, 275 cents
    assert report["invoices"] == [
        {
            "accountId": "acc-berlin",
            "period": "2026-10",
            "plan": "start",
            "billingCycle": "monthly",
            "includedContacts": 50,
            "addonContacts": 0,
            "allowance": 50,
            "activeContacts": 61,
            "overusageContacts": 11,
            "unitPriceCents": 25,
            "amountCents": 275,
            "currency": "EUR",
        }
    ]
    assert [list(invoice) for invoice in report["invoices"]] == [INVOICE_KEYS]
    # And every account and period with activity is listed, closed only where its close instant has passed
    assert report["usage"] == [
        {"accountId": "acc-berlin", "period": "2026-10", "activeContacts": 61, "closed": True},
        {"accountId": "acc-berlin", "period": "2026-11", "activeContacts": 2, "closed": False},
        {"accountId": "acc-legacy", "period": "2026-10", "activeContacts": 2, "closed": True},
        {"accountId": "acc-nosub", "period": "2026-10", "activeContacts": 1, "closed": True},
        {"accountId": "acc-nosub", "period": "2026-11", "activeContacts": 1, "closed": False},
    ]
    assert report["alerts"] == [
        {"accountId": "acc-berlin", "period": "2026-10", "thresholdPercent": 80, "allowance": 50},
        {"accountId": "acc-berlin", "period": "2026-10", "thresholdPercent": 100, "allowance": 50},
    ]
    # And each rejected and late event is named once, however often it was delivered
    assert [row["eventId"] for row in report["rejected"]] == [
        "bad-contact-id",
        "bad-detail-type",
        "bad-naive-time",
    ]
    assert all(list(row) == ["eventId", "reason"] and row["reason"] for row in report["rejected"])
    reasons = {row["eventId"]: row["reason"] for row in report["rejected"]}
    assert "detail.contactId" in reasons["bad-contact-id"]
    assert "unknown detail-type" in reasons["bad-detail-type"]
    assert "detail.occurredAt" in reasons["bad-naive-time"]
    assert report["late"] == [{"eventId": "late-berlin-b099", "accountId": "acc-berlin", "period": "2026-10"}]

    # And stats count the events, the DynamoDB calls and items by operation, and the invocations by function
    stats = report["stats"]
    # (and, beyond the contract's four, the capacity units AWS would bill for those calls, by item size)
    assert list(stats) == ["events", "dynamodb", "dynamodbItems", "invocations", "capacity"]
    assert {"writeUnits", "readUnits", "byPath", "writeUnitEquivalents"} <= set(stats["capacity"])
    assert stats["capacity"]["writeUnitEquivalents"] > 0
    assert stats["events"] == len(lines) == 21
    assert set(stats["dynamodbItems"]) == set(stats["dynamodb"])
    for section in ("dynamodb", "dynamodbItems", "invocations"):
        assert all(
            isinstance(name, str) and type(count) is int and count >= 0
            for name, count in stats[section].items()
        )
        assert list(stats[section]) == sorted(stats[section])
    assert {"BatchGetItem", "PutItem", "UpdateItem", "Query"} <= set(stats["dynamodb"])
    assert set(stats["invocations"]) == {"RecordActivity", "ClosePeriods", "InvoiceAccount"}
    assert all(count > 0 for count in stats["invocations"].values())


def test_simulate_lists_are_sorted_as_spec_section_4_says() -> None:
    # Given the month's report
    report = run("month.jsonl", "2026-11-15T00:00:00Z")
    # When its lists are checked against the order SPEC §4 prescribes
    # Then each is sorted by account, period, then threshold or event id
    assert report["invoices"] == sorted(report["invoices"], key=lambda row: (row["accountId"], row["period"]))
    assert report["usage"] == sorted(report["usage"], key=lambda row: (row["accountId"], row["period"]))
    assert report["alerts"] == sorted(
        report["alerts"], key=lambda row: (row["accountId"], row["period"], row["thresholdPercent"])
    )
    assert report["rejected"] == sorted(report["rejected"], key=lambda row: row["eventId"])
    assert report["late"] == sorted(
        report["late"], key=lambda row: (row["accountId"], row["period"], row["eventId"])
    )


def test_simulate_runs_the_close_at_each_close_instant_before_later_events() -> None:
    # Given an account on start with 60 October contacts, and an upgrade to scale effective 20 October that is
    # only put on the bus on 3 November, after October's close instant (1 November 06:00 UTC)
    # When the three envelopes are replayed up to 10 November
    report = run("retroactive_upgrade.jsonl", "2026-11-10T00:00:00Z")
    # Then October was closed and billed as of its close instant, on start (10 over, 250 cents),
    # before the upgrade was processed (SPEC §4: the job runs before later events are processed)
    assert [(row["plan"], row["activeContacts"], row["amountCents"]) for row in report["invoices"]] == [
        ("start", 60, 250)
    ]
