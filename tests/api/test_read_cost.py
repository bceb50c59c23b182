"""What each route reads, in read request units as AWS bills them (`metering_tools.capacity`, from item
sizes): a contacts page of 100 at most 2 RRU wherever it starts, whatever the period's size; an invoice page
one Query of the account's listing; a small usage view at most 4 RRU."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from metering_tools.capacity import CapacityMeter

from tests.api.conftest import UsageApiClient, customer
from tests.harness import Metering
from tests.helpers import contact_events, contact_ids, subscription_changed

ACCOUNT = "acc-cost"


def read_units(api: UsageApiClient, path: str, query: str = "") -> tuple[float, dict[str, Any]]:
    """The read units of one request, and its answer's body."""
    api.meter = CapacityMeter()
    answer = api.get(path, query, token=customer(ACCOUNT))
    assert answer.status == 200, answer
    return sum(api.meter.stats()["readUnits"].values()), answer.json


@pytest.mark.slow
def test_a_contacts_page_of_100_costs_at_most_2_read_units(metering: Metering, api: UsageApiClient) -> None:
    # Given a period of 450 active contacts (UUID event ids, as EventBridge gives them)
    metering.record_events(contact_events(ACCOUNT, contact_ids("con", 450), "2026-10-05T09:00:00Z"))

    # When its pages of 100 are read one after the other
    costs: list[float] = []
    cursor: str | None = None
    while True:
        query = "period=2026-10&limit=100" + (f"&cursor={quote(cursor)}" if cursor else "")
        units, page = read_units(api, f"/v1/accounts/{ACCOUNT}/contacts", query)
        costs.append(units)
        cursor = page["nextCursor"]
        if cursor is None:
            break

    # Then each page costs at most 2 RRU (one eventually consistent Query of its 100 items), the last less
    assert len(costs) == 5
    assert max(costs) <= 2.0, costs
    assert costs[-1] <= 1.0, costs


@pytest.mark.slow
def test_the_other_routes_read_a_few_small_items(metering: Metering, api: UsageApiClient) -> None:
    # Given an account on start with 45 active contacts in its open period, past its 80 % threshold
    metering.record_events([subscription_changed(ACCOUNT, "start", "2026-09-01T00:00:00Z")])
    metering.record_events(contact_events(ACCOUNT, contact_ids("con", 45), "2026-11-01T12:00:00Z"))

    # When each route is read
    usage, _ = read_units(api, f"/v1/accounts/{ACCOUNT}/usage")
    invoices, _ = read_units(api, f"/v1/accounts/{ACCOUNT}/invoices")
    alerts, body = read_units(api, f"/v1/accounts/{ACCOUNT}/alerts")
    openapi, _ = read_units(api, "/v1/openapi.json")

    # Then a usage view costs at most 4 RRU (SPEC §6), the listing and alerts a unit or two, the document none
    assert usage <= 4.0
    assert invoices <= 0.5
    assert alerts <= 1.0
    assert openapi == 0
    assert [alert["thresholdPercent"] for alert in body["alerts"]] == [80]
