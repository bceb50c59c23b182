"""Fault injection through `simulate`: with a tenth of the DynamoDB and S3 calls failing (throttling, server
errors, time-outs after the write took effect, crashed invocations), every record redelivered as SQS would and
every killed close run again, the month bills exactly what the fault-free replay bills."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from metering_tools.simulate import SimulationOptions, simulate

from tests.helpers import contact_event, contact_ids, iso, status_renamed, subscription_changed, utc

pytestmark = pytest.mark.slow

NOW = datetime(2026, 11, 2, tzinfo=UTC)
BILLED_SECTIONS = ("invoices", "usage", "alerts", "late")
SEEDS = (1, 7, 2026)
BUCKET = "crm-claim-checks"
RENAME_KEY = "renames/acc-start/st-9.txt"


def _month() -> list[dict[str, Any]]:
    """Four accounts over October 2026: a start plan far over its allowance (60 contacts touched twice, then a
    1,100-contact rename through a claim-check, fanned out in two chunks), a grow plan with add-ons under its
    allowance, a legacy plan, an account without subscription, and two events arriving after the close."""
    events = [
        subscription_changed("acc-start", "start", "2026-09-20T08:00:00Z", timezone="Europe/Berlin"),
        subscription_changed("acc-grow", "grow", "2026-09-20T08:00:00Z", addon_contacts=50),
        subscription_changed("acc-legacy", "legacy", "2026-09-20T08:00:00Z"),
    ]
    start = utc("2026-10-01T08:00:00Z")
    for touch, detail_type in enumerate(("Contact Created", "Note Added")):
        for index, contact_id in enumerate(contact_ids("s", 60)):
            at = iso(start + timedelta(days=touch * 10, minutes=index * 7))
            events.append(contact_event("acc-start", contact_id, at, detail_type=detail_type))
    for account, count in (("acc-grow", 240), ("acc-legacy", 30), ("acc-nosub", 20)):
        for index, contact_id in enumerate(contact_ids("c", count)):
            events.append(contact_event(account, contact_id, iso(start + timedelta(hours=index, minutes=3))))
    events.append(status_renamed("acc-start", "2026-10-25T09:00:00Z", claim_check=(BUCKET, RENAME_KEY)))
    for contact_id in ("late-1", "late-2"):
        events.append(
            contact_event("acc-grow", contact_id, "2026-10-31T20:00:00Z", delivered_at="2026-11-01T07:30:00Z")
        )
    return sorted(events, key=lambda event: (event["time"], event["id"]))


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("faults")
    path = folder / "month.jsonl"
    path.write_text("".join(json.dumps(event) + "\n" for event in _month()), encoding="utf-8")
    rename = folder / "month.objects" / RENAME_KEY
    rename.parent.mkdir(parents=True)
    rename.write_text("\n".join(contact_ids("r", 1100)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fault_free(month: Path) -> dict[str, Any]:
    return simulate(SimulationOptions(events_path=month, now=NOW))


def test_the_fault_free_month_bills_what_the_rules_say(fault_free: dict[str, Any]) -> None:
    # Given the month replayed without faults
    # Then only the start plan is billed: 60 + 1,100 active contacts over an allowance of 50
    assert [
        (row["accountId"], row["activeContacts"], row["amountCents"]) for row in fault_free["invoices"]
    ] == [("acc-start", 1160, 1110 * 25)]
    assert [(row["accountId"], row["activeContacts"]) for row in fault_free["usage"]] == [
        ("acc-grow", 240),
        ("acc-legacy", 30),
        ("acc-nosub", 20),
        ("acc-start", 1160),
    ]
    assert [row["eventId"] for row in fault_free["late"]] == sorted(
        row["eventId"] for row in fault_free["late"]
    )
    assert len(fault_free["late"]) == 2


@pytest.mark.parametrize("seed", SEEDS)
def test_a_month_replayed_with_ten_percent_faults_bills_exactly_what_a_fault_free_replay_bills(
    month: Path, fault_free: dict[str, Any], seed: int
) -> None:
    # Given the fault-free report of a month
    # When the same month is replayed with 10 % of the functions' DynamoDB and S3 calls failing
    faulty = simulate(SimulationOptions(events_path=month, now=NOW, fault_rate=0.1, fault_seed=seed))
    # Then faults of every kind were injected, and invoices, usage, alerts and late events are identical
    injected = faulty["stats"]["faults"]
    assert {"crash", "server error", "throttling", "timeout after write"} <= set(injected)
    assert sum(injected.values()) > 100
    for section in BILLED_SECTIONS:
        assert faulty[section] == fault_free[section], section
