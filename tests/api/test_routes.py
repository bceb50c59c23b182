"""SPEC §7 route by route, through the UsageApi handler on a recorded month: usage, contacts (JSON and CSV
pages, followed to the end), invoices newest first, alerts, and the OpenAPI document."""

from __future__ import annotations

import csv
import io
import re
from typing import Any
from urllib.parse import quote

import pytest

from tests.api.conftest import (
    BIG,
    OCTOBER_CONTACTS,
    OCTOBER_TYPES,
    SMALL,
    Answer,
    UsageApiClient,
    customer,
    staff,
)
from tests.harness import Metering
from tests.helpers import INVOICE_KEYS

pytestmark = pytest.mark.slow

INVOICE_FIELDS = {*INVOICE_KEYS, "issuedAt"}
LINK = re.compile(r'^<\?([^>]*)>; rel="next"$')


def contacts_path(account_id: str) -> str:
    return f"/v1/accounts/{account_id}/contacts"


def follow_json_pages(api: UsageApiClient, path: str, query: str, **options: Any) -> list[dict[str, Any]]:
    """Every page of a listing, following `nextCursor` until there is none."""
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        answer = api.get(path, query + (f"&cursor={quote(cursor)}" if cursor else ""), **options)
        assert answer.status == 200, answer.text
        pages.append(answer.json)
        cursor = answer.json["nextCursor"]
        if cursor is None:
            return pages


def test_usage_of_a_closed_period_shows_exactly_what_was_invoiced(
    recorded: Metering, api: UsageApiClient
) -> None:
    # Given October recorded and closed: 130 active contacts of BIG on start (50)
    # When BIG's customer token asks for October's usage
    answer = api.get(f"/v1/accounts/{BIG}/usage", "period=2026-10", token=customer(BIG))

    # Then it is the closed period's view, in the names of SPEC §7, with the invoice as it was issued
    assert answer.status == 200
    assert answer.content_type == "application/json"
    usage = answer.json
    assert (usage["accountId"], usage["period"], usage["closed"], usage["activeContacts"]) == (
        BIG,
        "2026-10",
        True,
        130,
    )
    assert (usage["periodStart"], usage["periodEnd"], usage["closesAt"]) == (
        "2026-10-01T00:00:00Z",
        "2026-11-01T00:00:00Z",
        "2026-11-01T06:00:00Z",
    )
    assert usage["subscription"] == {
        "plan": "start",
        "billingCycle": "monthly",
        "includedContacts": 50,
        "addonContacts": 0,
    }
    assert (usage["billed"], usage["allowance"], usage["overusage"]) == (
        True,
        50,
        {"contacts": 80, "amountCents": 2000},
    )
    [published] = [
        detail
        for detail in recorded.events_published("Overusage Invoice Issued")
        if detail["period"] == "2026-10"
    ]
    assert usage["invoice"] == {name: published[name] for name in INVOICE_FIELDS}
    assert [(alert["thresholdPercent"], alert["allowance"]) for alert in usage["alerts"]] == [
        (80, 50),
        (100, 50),
    ]
    assert usage["projection"]["method"] == "closed"


def test_usage_without_a_period_is_the_period_open_now(recorded: Metering, api: UsageApiClient) -> None:
    # Given 12 contacts of BIG recorded on 1 November, and the API's clock at 2 November
    # When BIG's customer token asks for its usage without a period
    usage = api.get(f"/v1/accounts/{BIG}/usage", token=customer(BIG)).json

    # Then it is November's, open, counted so far, projected to the month's end
    assert (usage["period"], usage["closed"], usage["activeContacts"], usage["invoice"]) == (
        "2026-11",
        False,
        12,
        None,
    )
    assert usage["projection"]["activeContacts"] >= 12
    assert usage["projection"]["method"]


def test_contacts_come_in_pages_that_together_list_each_active_contact_once(
    recorded: Metering, api: UsageApiClient
) -> None:
    # Given October's 130 active contacts of BIG
    # When its customer follows the contacts pages of 50 to the end
    pages = follow_json_pages(api, contacts_path(BIG), "period=2026-10&limit=50", token=customer(BIG))

    # Then the pages hold 50, 50 and 30 contacts in contact-id order, each once; only the last has no cursor
    assert [len(page["contacts"]) for page in pages] == [50, 50, 30]
    listed = [contact for page in pages for contact in page["contacts"]]
    assert [contact["contactId"] for contact in listed] == OCTOBER_CONTACTS
    # And each with the first event that made it active
    for index, contact in enumerate(listed):
        assert contact["detailType"] == OCTOBER_TYPES[index % 3]
        assert contact["eventId"] == f"evt-{contact['contactId']}"
        assert contact["occurredAt"].startswith("2026-10-")
    assert {(page["accountId"], page["period"]) for page in pages} == {(BIG, "2026-10")}


def test_contacts_as_csv_link_to_their_next_page_until_the_last(
    recorded: Metering, api: UsageApiClient
) -> None:
    # Given October's 130 active contacts of BIG
    # When billing staff ask for them as CSV, 40 a page, following each RFC 8288 Link
    rows: list[list[str]] = []
    query: str | None = "period=2026-10&limit=40"
    pages = 0
    while query is not None:
        answer = api.get(contacts_path(BIG), query, token=staff(), headers={"accept": "text/csv"})
        assert answer.status == 200
        assert answer.content_type.startswith("text/csv")
        header, *body = list(csv.reader(io.StringIO(answer.text)))
        assert header == ["contactId", "detailType", "eventId", "occurredAt"]
        rows += body
        pages += 1
        link = LINK.fullmatch(answer.headers.get("link", ""))
        query = link.group(1) if link else None

    # Then the CSV pages hold the same contacts as the JSON ones, each once, and the last has no Link
    assert pages == 4
    assert [row[0] for row in rows] == OCTOBER_CONTACTS
    assert all(row[2] == f"evt-{row[0]}" for row in rows)


def test_invoices_are_listed_newest_period_first_page_by_page(
    recorded: Metering, api: UsageApiClient
) -> None:
    # Given BIG invoiced for August, September and October
    # When its customer lists its invoices, one a page
    pages = follow_json_pages(api, f"/v1/accounts/{BIG}/invoices", "limit=1", token=customer(BIG))
    whole = api.get(f"/v1/accounts/{BIG}/invoices", token=customer(BIG)).json

    # Then October comes first, then September, then August (DynamoDB may end a listing whose last page was
    # full with an empty page)
    listed = [invoice for page in pages for invoice in page["invoices"]]
    assert [invoice["period"] for invoice in listed] == ["2026-10", "2026-09", "2026-08"]
    assert [len(page["invoices"]) for page in pages] in ([1, 1, 1], [1, 1, 1, 0])
    # And each is the invoice as issued: SPEC §3 fields plus issuedAt, amounts in cents
    published = {detail["period"]: detail for detail in recorded.events_published("Overusage Invoice Issued")}
    for invoice in listed:
        assert set(invoice) == INVOICE_FIELDS
        assert invoice == {name: published[invoice["period"]][name] for name in INVOICE_FIELDS}
    assert [invoice["amountCents"] for invoice in listed] == [2000, 625, 275]
    # And one page of the default size holds them all, with no cursor
    assert ([invoice["period"] for invoice in whole["invoices"]], whole["nextCursor"]) == (
        ["2026-10", "2026-09", "2026-08"],
        None,
    )


def test_an_account_without_invoices_lists_none(recorded: Metering, api: UsageApiClient) -> None:
    answer = api.get(f"/v1/accounts/{SMALL}/invoices", token=customer(SMALL))
    assert answer.json == {"accountId": SMALL, "invoices": [], "nextCursor": None}


def test_alerts_of_a_period_name_each_threshold_reached(recorded: Metering, api: UsageApiClient) -> None:
    # Given BIG reached 80 % and 100 % of its 50 contacts in October, and no threshold yet in November
    # When its customer asks for October's alerts and for the open period's
    october = api.get(f"/v1/accounts/{BIG}/alerts", "period=2026-10", token=customer(BIG)).json
    now = api.get(f"/v1/accounts/{BIG}/alerts", token=customer(BIG)).json

    # Then October lists both thresholds with the allowance and when each was reached, November none
    assert [(a["thresholdPercent"], a["allowance"]) for a in october["alerts"]] == [(80, 50), (100, 50)]
    assert all(alert["reachedAt"].startswith("2026-10-") for alert in october["alerts"])
    assert (october["period"], now["period"], now["alerts"]) == ("2026-10", "2026-11", [])


def test_the_openapi_document_lists_every_route_with_the_models_that_validate_it(
    recorded: Metering, api: UsageApiClient
) -> None:
    # When a customer token asks for the OpenAPI document
    answer: Answer = api.get("/v1/openapi.json", token=customer(SMALL))

    # Then it is OpenAPI 3 and lists every route, each a GET with its query parameters
    document = answer.json
    assert answer.status == 200
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/v1/accounts/{accountId}/usage",
        "/v1/accounts/{accountId}/contacts",
        "/v1/accounts/{accountId}/invoices",
        "/v1/accounts/{accountId}/alerts",
        "/v1/openapi.json",
    }
    parameters = {
        path: sorted(parameter["name"] for parameter in item["get"].get("parameters", []))
        for path, item in document["paths"].items()
    }
    assert parameters["/v1/accounts/{accountId}/contacts"] == ["accountId", "cursor", "limit", "period"]
    assert parameters["/v1/accounts/{accountId}/invoices"] == ["accountId", "cursor", "limit"]
    # And its schemas are the response models, its errors problems, its security a bearer JWT
    schemas = document["components"]["schemas"]
    assert {"UsageView", "ContactsPage", "InvoicesPage", "AlertsView", "ProblemView"} <= set(schemas)
    assert {"activeContacts", "asOf", "projection", "advice", "invoice"} <= set(
        schemas["UsageView"]["properties"]
    )
    usage_responses = document["paths"]["/v1/accounts/{accountId}/usage"]["get"]["responses"]
    assert "422" not in usage_responses
    assert "application/problem+json" in usage_responses["403"]["content"]
    assert document["components"]["securitySchemes"]["jwt"]["scheme"] == "bearer"
