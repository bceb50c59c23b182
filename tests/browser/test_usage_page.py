"""The usage page the CRM embeds (issue 20), in headless Chromium against `metering serve` on the tier's month
(`tests/browser/month.py`): both languages, the API's own numbers for each account, paging, the CSV download,
one account's token never showing another's data, each state a customer meets, keyboard use, and axe-core with
no serious or critical violation."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.conftest import OpenPage, Served, UsagePageView
from tests.browser.month import (
    ACCOUNTS,
    AT_LIMIT,
    CLOSED_PERIOD,
    LEGACY,
    NO_SUBSCRIPTION,
    OPEN_PERIOD,
    OVER,
    WITHIN,
)
from tests.helpers import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]

AXE = Path(__file__).with_name("vendor") / "axe-core-4.14.1" / "axe.min.js"
"""axe-core 4.14.1 from its npm package, unchanged (sha256 as its sri-history.json lists it)."""
AXE_SHA256 = "sha256-KTSJmUUM3yhJqOcLeRL8LahahJ2jnA0NU5T1HUqe2Vw="
BLOCKING_IMPACTS = {"serious", "critical"}
AXE_VIEWS = ("far over", "closed and invoiced", "at allowance", "legacy", "expired token")
SCREENSHOTS_VARIABLE = "USAGE_PAGE_SCREENSHOTS"
"""A folder to write the README's screenshots to (`make screenshots`: docs/images)."""
CATALOGUES = REPO_ROOT / "layers" / "metering" / "metering" / "usage_page"
DAY_SECONDS = 86_400
Tokens = Callable[[str], str]


def message(language: str, key: str) -> str:
    entry = json.loads((CATALOGUES / f"{language}.json").read_text(encoding="utf-8"))[key]
    return str(entry if isinstance(entry, str) else entry["other"])


def api_usage(served: Served, token: str, account_id: str, period: str | None = None) -> dict[str, Any]:
    reply = served.call(f"/v1/accounts/{account_id}/usage" + (f"?period={period}" if period else ""), token)
    assert reply.status == 200, reply.body
    usage: dict[str, Any] = reply.json()
    return usage


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def routes(view: UsagePageView) -> list[str]:
    """The API routes the page called, by name and query parameter names (`contacts?limit&period`)."""
    called = []
    for url in view.api_requests:
        path, _, query = url.partition("?")
        names = sorted(part.split("=")[0] for part in query.split("&") if part)
        called.append(path.rsplit("/", 1)[-1] + ("?" + "&".join(names) if names else ""))
    return sorted(called)


# ---- both languages ----


@pytest.mark.parametrize(
    ("lang", "heading", "meter", "overusage"),
    [
        ("de", "Aktive Kontakte", "2.345 von 250 aktiven Kontakten", "2.095 Aktive Kontakte: 523,75 €"),
        ("en", "Active contacts", "2,345 of 250 active contacts", "2,095 active contacts: €523.75"),
    ],
)
def test_the_page_loads_in_german_and_english_and_drops_the_token_from_its_address(
    open_usage_page: OpenPage, tokens: Tokens, lang: str, heading: str, meter: str, overusage: str
) -> None:
    # Given acc-over's token and the language the CRM asks for
    # When the CRM opens the page with both in the fragment
    view = open_usage_page(tokens(OVER), lang)

    # Then the page speaks that language with its numbers and money formatted for it
    assert view.page.evaluate("document.documentElement.lang") == lang
    assert view.text("h1") == heading
    assert view.text("#meter-label") == meter
    assert view.text('[data-fact="overusage"]') == overusage
    assert view.page.title() == message(lang, "page.title")
    # And the token is no longer in its address, and nothing went wrong
    assert view.page.evaluate("location.href") == view.page.url
    assert "#" not in view.page.url
    assert "token" not in view.page.url
    assert view.console_errors == []


@pytest.mark.parametrize(("locale", "heading"), [("de-AT", "Aktive Kontakte"), ("fr-FR", "Active contacts")])
def test_without_a_language_in_its_address_the_page_follows_the_browser_else_english(
    open_usage_page: OpenPage, tokens: Tokens, locale: str, heading: str
) -> None:
    # Given a browser set to Austrian German, or to French (no catalogue)
    # When the page is opened without lang
    view = open_usage_page(tokens(OVER), locale=locale)

    # Then it is German for the first, English for the second
    assert view.text("h1") == heading


# ---- the API's own numbers ----


@pytest.mark.parametrize("account_id", ACCOUNTS)
def test_the_meter_amounts_and_advice_are_the_apis_numbers(
    open_usage_page: OpenPage, served: Served, tokens: Tokens, account_id: str
) -> None:
    # Given an account's token, and the API's answer for its open period with that same token
    token = tokens(account_id)
    usage = api_usage(served, token, account_id)
    assert usage["period"] == OPEN_PERIOD

    # When the page is opened with it
    view = open_usage_page(token, "en")

    # Then it made exactly the three calls of a view: the usage, the first contacts page, the invoices
    assert routes(view) == ["contacts?limit&period", "invoices?limit", "usage"]
    # And the meter is the API's count against the API's allowance (no meter without a billed allowance)
    active, allowance = usage["activeContacts"], usage["allowance"]
    metered = usage["billed"] and allowance > 0
    meter = view.page.locator("#meter")
    if metered:
        assert view.values("#meter-label") == [active, allowance]
        assert meter.get_attribute("role") == "meter"
        assert meter.get_attribute("aria-valuenow") == str(active)
        assert meter.get_attribute("aria-valuemax") == str(max(active, allowance))
        assert meter.get_attribute("aria-valuetext") == f"{active:,} of {allowance:,} active contacts"
    else:
        assert view.values("#meter-label") == [active]
        expect(meter).to_be_hidden()
    # And the days left are counted from the API's asOf to the period's end
    left = math.ceil((instant(usage["periodEnd"]) - instant(usage["asOf"])).total_seconds() / DAY_SECONDS)
    assert view.values('[data-fact="days-left"]') == [left]
    # And overusage so far, the projection and the advice are the API's cents, cheapest first
    if usage["billed"]:
        assert view.values('[data-fact="overusage"]') == [
            usage["overusage"]["contacts"],
            usage["overusage"]["amountCents"],
        ]
        projection = usage["projection"]
        assert view.values('[data-fact="projection"]') == [
            projection["activeContacts"],
            projection["overusageContacts"],
            projection["amountCents"],
        ]
    assert_advice(view, usage["advice"])
    assert len(view.page.locator("#alerts li").all()) == max(1, len(usage["alerts"]))
    assert view.console_errors == []


def assert_advice(view: UsagePageView, advice: dict[str, Any] | None) -> None:
    if advice is None:
        expect(view.page.locator("#advice")).to_be_hidden()
        return
    items = view.page.locator("#advice-options li")
    assert [item.get_attribute("data-option") for item in items.all()] == [
        option["option"] for option in advice["options"]
    ]
    for item, option in zip(items.all(), advice["options"], strict=True):
        values = [int(value) for value in item.locator("data").evaluate_all("els => els.map(e => e.value)")]
        if option["costCents"] is not None:
            assert option["costCents"] in values
    assert "is-cheapest" in (items.first.get_attribute("class") or "")
    if advice["savesCents"] > 0:
        assert items.first.locator(".badge data").get_attribute("value") == str(advice["savesCents"])


def test_a_closed_and_invoiced_month_shows_exactly_what_was_invoiced(
    open_usage_page: OpenPage, served: Served, tokens: Tokens
) -> None:
    # Given acc-over's page, and the API's October (closed, invoiced for 50 contacts over: 1,250 cents)
    token = tokens(OVER)
    october = api_usage(served, token, OVER, CLOSED_PERIOD)
    invoice = october["invoice"]
    assert (october["closed"], invoice["amountCents"]) == (True, 1250)
    view = open_usage_page(token, "de")
    view.api_requests.clear()

    # When the customer picks October
    view.page.select_option("#period", CLOSED_PERIOD)
    expect(view.page.locator("#contacts-caption")).to_have_text("Aktive Kontakte im Oktober 2026")
    view.settle()

    # Then the page asked for October's usage and contacts only, and shows the invoice's own numbers
    assert routes(view) == ["contacts?limit&period", "usage?period"]
    assert all(f"period={CLOSED_PERIOD}" in url for url in view.api_requests)
    notice = view.text("#notices")
    assert notice.startswith("Dieser Zeitraum ist abgeschlossen und wurde am 01.11.2026 abgerechnet")
    assert view.values("#notices") == [invoice["overusageContacts"], invoice["amountCents"]]
    assert view.values('[data-fact="overusage"]') == [invoice["overusageContacts"], invoice["amountCents"]]
    assert view.text('[data-fact="status"]') == "Abgeschlossen"
    # And nothing is projected or advised for a closed period; its meter is the invoiced count
    assert view.page.locator('[data-fact="projection"]').count() == 0
    expect(view.page.locator("#advice")).to_be_hidden()
    assert view.values("#meter-label") == [invoice["activeContacts"], invoice["allowance"]]
    # And the invoice is in the account's invoices, with the same amount
    row = view.page.locator(f'#invoices tr[data-period="{CLOSED_PERIOD}"]')
    assert [int(v) for v in row.locator("data").evaluate_all("els => els.map(e => e.value)")] == [
        invoice["activeContacts"],
        invoice["overusageContacts"],
        invoice["amountCents"],
    ]


# ---- contacts: pages and the CSV download ----


def test_contacts_come_in_the_apis_pages_and_go_back_without_asking_again(
    open_usage_page: OpenPage, served: Served, tokens: Tokens
) -> None:
    # Given acc-over's 2,345 contacts of November, and the API's first two pages of 25 for the same token
    token = tokens(OVER)
    path = f"/v1/accounts/{OVER}/contacts?period={OPEN_PERIOD}&limit=25"
    first = served.call(path, token).json()
    second = served.call(f"{path}&cursor={first['nextCursor']}", token).json()
    view = open_usage_page(token, "en")

    def shown_ids() -> list[str]:
        return view.page.locator("#contacts tbody tr td:first-child").all_inner_texts()

    # Then the first page is the API's first page, each with the event that made it active
    assert shown_ids() == [contact["contactId"] for contact in first["contacts"]]
    assert view.text("#contacts tbody tr:first-child td:nth-child(2)") == "Contact created"
    assert view.text("#contacts-range") == "1 to 25 of 2,345"
    expect(view.page.locator("#contacts-previous")).to_be_disabled()

    # When the customer goes to the next page, then back
    view.api_requests.clear()
    view.page.click("#contacts-next")
    expect(view.page.locator("#contacts-range")).to_have_text("26 to 50 of 2,345")
    next_ids = shown_ids()
    view.page.click("#contacts-previous")
    expect(view.page.locator("#contacts-range")).to_have_text("1 to 25 of 2,345")

    # Then the next page is the API's second one (one request, with its cursor); going back asked for nothing
    assert next_ids == [contact["contactId"] for contact in second["contacts"]]
    assert routes(view) == ["contacts?cursor&limit&period"]
    assert view.console_errors == []


def api_csv(served: Served, token: str, account_id: str, period: str) -> tuple[str, int]:
    """The whole period as CSV, from the API's own CSV pages of 1,000 (header once), and how many pages."""
    path: str | None = f"/v1/accounts/{account_id}/contacts?period={period}&limit=1000"
    text, pages = "", 0
    while path is not None:
        reply = served.call(path, token, accept="text/csv")
        assert reply.status == 200, reply.body
        page = reply.body.decode("utf-8")
        text += page if pages == 0 else page.split("\r\n", 1)[1]
        pages += 1
        link = re.match(r"<\?([^>]*)>", reply.headers.get("link") or "")
        path = f"/v1/accounts/{account_id}/contacts?{link.group(1)}" if link else None
    return text, pages


def test_the_csv_download_is_every_contact_of_the_period_assembled_from_the_apis_pages(
    open_usage_page: OpenPage, served: Served, tokens: Tokens, tmp_path: Path
) -> None:
    # Given acc-over's November (2,345 contacts: three CSV pages of the API) and its page
    token = tokens(OVER)
    expected, pages = api_csv(served, token, OVER, OPEN_PERIOD)
    assert pages == 3
    view = open_usage_page(token, "en")
    view.api_requests.clear()

    # When the customer downloads all as CSV
    with view.page.expect_download() as started:
        view.page.click("#csv-download")
    download = started.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)

    # Then the file is the API's pages joined, one header, every contact once, named for account and period
    assert download.suggested_filename == f"active-contacts-{OVER}-{OPEN_PERIOD}.csv"
    content = saved.read_bytes().decode("utf-8")
    assert content == expected
    rows = list(csv.DictReader(io.StringIO(content)))
    assert len(rows) == len({row["contactId"] for row in rows}) == 2345
    # And it took one request per page, and said when it was done
    assert routes(view) == ["contacts?cursor&limit&period"] * 2 + ["contacts?limit&period"]
    expect(view.page.locator("#csv-status")).to_have_text("Downloaded 2,345 contacts.")
    expect(view.page.locator("#csv-progress")).to_be_hidden()


# ---- one account's token, one account's data ----


def test_a_token_for_one_account_never_shows_another_accounts_data(
    open_usage_page: OpenPage, served: Served, tokens: Tokens
) -> None:
    # Given the page opened with acc-legacy's token
    token = tokens(LEGACY)
    view = open_usage_page(token, "en")

    # Then every request it made was for acc-legacy, and nothing of acc-over is on it
    assert view.api_requests
    assert all(url.startswith(f"/v1/accounts/{LEGACY}/") for url in view.api_requests)
    assert OVER not in view.page.content()

    # When a script in the page forges a request for acc-over with the page's token
    forged = view.page.evaluate(
        """async ([url, token]) => {
            const response = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
            const type = response.headers.get("content-type");
            return { status: response.status, type, body: await response.text() };
        }""",
        [f"/v1/accounts/{OVER}/usage", token],
    )

    # Then the API refuses it with a 403 problem that holds none of acc-over's data
    assert forged["status"] == 403
    assert forged["type"].startswith("application/problem+json")
    assert "activeContacts" not in forged["body"]
    assert OVER not in forged["body"]


# ---- the states a customer meets ----


@pytest.mark.parametrize(
    ("account_id", "notice_key", "meter_shown"),
    [
        (NO_SUBSCRIPTION, "notice.noSubscription", False),
        (LEGACY, "notice.legacy", False),
        (AT_LIMIT, "notice.atAllowance", True),
        (OVER, "notice.overAllowance", True),
    ],
)
def test_each_state_of_the_open_period_says_what_it_means(
    open_usage_page: OpenPage, tokens: Tokens, account_id: str, notice_key: str, meter_shown: bool
) -> None:
    # Given an account without subscription, on legacy, exactly at its allowance, or far over it
    # When its page is opened in German
    view = open_usage_page(tokens(account_id), "de")

    # Then the notice of its state is shown, with its values filled in
    template = message("de", notice_key)
    opening = template.split("{", 1)[0]
    notice = view.text("#notices")
    assert notice.startswith(opening), notice
    assert "{" not in notice
    assert view.page.locator("#meter").is_visible() == meter_shown
    if account_id in (NO_SUBSCRIPTION, LEGACY):
        assert view.text('[data-fact="overusage"]') == message("de", "costs.notBilled")
    if account_id == AT_LIMIT:
        meter = view.page.locator("#meter")
        assert meter.get_attribute("aria-valuenow") == meter.get_attribute("aria-valuemax") == "50"
        assert "0,25 €" in notice


def test_a_closed_month_without_overusage_says_there_is_no_invoice(
    open_usage_page: OpenPage, tokens: Tokens
) -> None:
    # Given acc-within, whose October closed within its allowance
    view = open_usage_page(tokens(WITHIN), "en")

    # When the customer picks October
    view.page.select_option("#period", CLOSED_PERIOD)
    expect(view.page.locator("#notices")).to_have_text(message("en", "notice.closedNoOverusage"))

    # Then it shows the closed month's count and no overusage
    assert view.values("#meter-label") == [90, 500]
    assert view.values('[data-fact="overusage"]') == [0, 0]


def test_an_expired_token_says_so_once_and_asks_nothing_more(
    open_usage_page: OpenPage, served: Served
) -> None:
    # Given a token for acc-over that expired a minute ago
    expired = served.token("--account", OVER, "--expires-in", "-60")

    # When the page is opened with it
    view = open_usage_page(expired, "en")

    # Then it says the session ended, offers no retry, and shows no data
    expect(view.page.locator("#problem-text")).to_have_text(message("en", "problem.session"))
    expect(view.page.locator("#retry")).to_be_hidden()
    expect(view.page.locator("#content")).to_be_hidden()
    # And after its first two calls (usage and invoices, together) it asks nothing more
    view.page.wait_for_timeout(1500)
    assert routes(view) == ["invoices?limit", "usage"]


def test_without_a_token_the_page_asks_for_a_sign_in_and_calls_nothing(open_usage_page: OpenPage) -> None:
    view = open_usage_page(None, "de")
    expect(view.page.locator("#problem-text")).to_have_text(message("de", "problem.noToken"))
    assert view.api_requests == []


def test_an_unreachable_api_says_so_and_the_retry_button_loads_the_page(
    open_usage_page: OpenPage, tokens: Tokens
) -> None:
    # Given the API unreachable from the browser (every connection to it refused)
    def refuse(route: Route) -> None:
        route.abort("connectionrefused")

    def cut_off(page: Page) -> None:
        page.route("**/v1/**", refuse)

    view = open_usage_page(tokens(OVER), "en", before=cut_off)

    # Then the page says the service cannot be reached and offers to try again
    expect(view.page.locator("#problem-text")).to_have_text(message("en", "problem.unreachable"))
    retry = view.page.locator("#retry")
    expect(retry).to_be_visible()
    expect(view.page.locator("#content")).to_be_hidden()

    # When the API is back and the customer presses the retry button from the keyboard
    view.page.unroute("**/v1/**", refuse)
    retry.focus()
    view.page.keyboard.press("Enter")

    # Then the page loads
    expect(view.page.locator("#content")).to_be_visible()
    expect(view.page.locator("#problem")).to_be_hidden()
    assert view.values("#meter-label") == [2345, 250]


def test_the_page_works_from_the_keyboard_alone(open_usage_page: OpenPage, tokens: Tokens) -> None:
    # Given acc-over's page
    view = open_usage_page(tokens(OVER), "en")

    # When the customer tabs through it
    reached = []
    for _ in range(12):
        view.page.keyboard.press("Tab")
        reached.append(view.page.evaluate("document.activeElement.id"))

    # Then the period, the pager and the download are reached in reading order (the disabled previous
    # button is skipped)
    controls = [control for control in reached if control]
    assert controls[:3] == ["period", "contacts-next", "csv-download"]

    # When the customer presses Enter on the next page, then picks October with the arrow keys
    view.page.focus("#contacts-next")
    view.page.keyboard.press("Enter")
    expect(view.page.locator("#contacts-range")).to_have_text("26 to 50 of 2,345")
    view.page.focus("#period")
    view.page.keyboard.press("ArrowDown")

    # Then both happened
    expect(view.page.locator("#contacts-caption")).to_have_text("Active contacts in October 2026")


# ---- accessibility ----


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's violations of the page as it is (every rule of its default set)."""
    page.evaluate(AXE.read_text(encoding="utf-8"))
    violations: list[dict[str, Any]] = page.evaluate(
        """async () => {
            const results = await axe.run(document, { resultTypes: ["violations"] });
            return results.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")),
            }));
        }"""
    )
    return violations


def open_view(view_name: str, open_usage_page: OpenPage, served: Served, tokens: Tokens, lang: str) -> Page:
    if view_name == "expired token":
        return open_usage_page(served.token("--account", OVER, "--expires-in", "-60"), lang).page
    account_id = {"far over": OVER, "closed and invoiced": OVER, "at allowance": AT_LIMIT, "legacy": LEGACY}[
        view_name
    ]
    view = open_usage_page(tokens(account_id), lang)
    if view_name == "closed and invoiced":
        view.page.select_option("#period", CLOSED_PERIOD)
        expect(view.page.locator('[data-fact="status"]')).to_be_visible()
    return view.page


@pytest.mark.parametrize("lang", ["en", "de"])
@pytest.mark.parametrize("view_name", AXE_VIEWS)
def test_axe_core_finds_no_serious_or_critical_violation(
    open_usage_page: OpenPage, served: Served, tokens: Tokens, view_name: str, lang: str
) -> None:
    # Given one of the page's main views in one language
    page = open_view(view_name, open_usage_page, served, tokens, lang)

    # When axe-core checks it in the browser
    violations = axe_violations(page)

    # Then nothing is serious or critical (anything milder is listed in the failure message too)
    blocking = [violation for violation in violations if violation["impact"] in BLOCKING_IMPACTS]
    assert blocking == [], json.dumps(violations, indent=1)


def test_axe_core_is_the_pinned_release() -> None:
    digest = base64.b64encode(hashlib.sha256(AXE.read_bytes()).digest()).decode()
    assert f"sha256-{digest}" == AXE_SHA256


# ---- screenshots for the README ----


def test_screenshots_of_both_languages(open_usage_page: OpenPage, tokens: Tokens, tmp_path: Path) -> None:
    # Given acc-over's page in each language (far over its allowance: meter, advice, alerts, invoices)
    folder = Path(os.environ.get(SCREENSHOTS_VARIABLE) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    for lang in ("en", "de"):
        view = open_usage_page(tokens(OVER), lang)
        # When it is captured above the contacts
        path = folder / f"usage-page-{lang}.png"
        view.page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": 960, "height": 900})

        # Then a PNG of it exists
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
