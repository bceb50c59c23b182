"""The usage page's files as UsageApi serves them (`metering.usage_page`): content types, the
Content-Security-Policy with the configured frame ancestors, revalidation by ETag, no file outside the page's
own, and its message catalogues: the same keys and placeholders in German and English, and exactly the keys
the page uses. The page in a browser: `tests/browser`."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
from metering.settings import ApiSettings
from metering.usage_page import PAGE_FILES, UsagePage
from pydantic import ValidationError

from tests.helpers import REPO_ROOT, load_event

PAGE_REQUEST = "api/page-request.json"
PLURAL_FORMS = {"one", "other"}
"""The plural categories of English and German cardinals (Intl.PluralRules)."""
KEY_LITERAL = re.compile(r"\"([a-z][a-zA-Z]*(?:\.[a-z][a-zA-Z]*)+)\"")
"""A message key as the scripts write it: a double-quoted dotted name (`"meter.ofAllowance"`)."""
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def page_request(path: str, **overrides: Any) -> dict[str, Any]:
    """`page-request.json` for `path` under /usage-page (empty: the page itself, routed without a slash)."""
    if path:
        overrides = {
            "routeKey": "GET /usage-page/{asset}",
            "rawPath": f"/usage-page/{path}",
            "pathParameters": {"asset": path},
            **overrides,
        }
    return load_event(PAGE_REQUEST, **overrides)


@pytest.fixture(scope="module")
def page() -> UsagePage:
    return UsagePage("custom:account_id", ("https://app.example-crm.com", "https://*.example-crm.com"))


def catalogue(language: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((PAGE_FILES / f"{language}.json").read_text(encoding="utf-8"))
    return loaded


def templates(entry: str | dict[str, str]) -> list[str]:
    return [entry] if isinstance(entry, str) else list(entry.values())


# ---- serving ----


def test_the_page_is_html_that_may_be_framed_only_by_the_configured_crm_origins(page: UsagePage) -> None:
    # Given the page configured with the CRM's origins and its account claim
    # When the browser asks for /usage-page/
    answer = page.answer(page_request(""))

    # Then it is the HTML page, revalidated on every view, under a CSP of its own origin only
    assert answer["statusCode"] == 200
    headers = answer["headers"]
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert (headers["x-content-type-options"], headers["referrer-policy"]) == ("nosniff", "no-referrer")
    directives = dict(directive.split(" ", 1) for directive in headers["content-security-policy"].split("; "))
    assert directives == {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self'",
        "connect-src": "'self'",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "https://app.example-crm.com https://*.example-crm.com",
    }
    # And it names the claim of the token that carries the account, and loads no inline script
    assert '<meta name="account-claim" content="custom:account_id">' in answer["body"]
    assert not re.search(r"<script(?![^>]*\bsrc=)", answer["body"])


def test_without_frame_ancestors_no_site_may_frame_the_page() -> None:
    # Given the page configured without CRM origins (the template's default)
    answer = UsagePage("account_id", ()).answer(page_request(""))

    # Then its CSP lets nobody frame it
    assert "frame-ancestors 'none'" in answer["headers"]["content-security-policy"]


@pytest.mark.parametrize(
    ("asset", "content_type"),
    [
        ("main.js", "text/javascript; charset=utf-8"),
        ("page.css", "text/css; charset=utf-8"),
        ("de.json", "application/json; charset=utf-8"),
        ("icon.svg", "image/svg+xml; charset=utf-8"),
    ],
)
def test_each_file_has_its_content_type_and_is_revalidated_by_its_etag(
    page: UsagePage, asset: str, content_type: str
) -> None:
    # When a file is fetched, then fetched again with the ETag the browser kept
    first = page.answer(page_request(asset))
    again = page.answer(page_request(asset, headers={"if-none-match": f"W/{first['headers']['etag']}"}))

    # Then the first answer is the file with its type; the second a 304 without a body
    assert (first["statusCode"], first["headers"]["content-type"]) == (200, content_type)
    assert first["body"] == (PAGE_FILES / asset).read_text(encoding="utf-8")
    assert (again["statusCode"], again["body"]) == (304, "")
    assert again["headers"]["etag"] == first["headers"]["etag"]


@pytest.mark.parametrize("asset", ["missing.js", "..", "__init__.py", "usage_api.py", "MAIN.JS", ""])
def test_a_name_that_is_not_a_file_of_the_page_is_a_404_problem(page: UsagePage, asset: str) -> None:
    # When a name that is not one of the page's files is asked for
    answer = page.answer(page_request(asset or "x", pathParameters={"asset": asset}))

    # Then the answer is the API's 404 problem, naming nothing
    assert answer["statusCode"] == 404
    assert answer["headers"]["content-type"] == "application/problem+json"
    assert json.loads(answer["body"])["status"] == 404


def test_the_page_without_its_trailing_slash_redirects_to_it_keeping_the_query(page: UsagePage) -> None:
    # When the page is asked for as /usage-page?lang=de (API Gateway routes it to the page's route)
    answer = page.answer(page_request("", rawPath="/usage-page", rawQueryString="lang=de"))

    # Then a permanent redirect to the folder, relative so it holds under any base path (the browser keeps the
    # fragment with the token across it)
    assert (answer["statusCode"], answer["headers"]["location"]) == (308, "usage-page/?lang=de")


def test_only_the_page_routes_are_the_pages() -> None:
    # Given requests routed by API Gateway, then only the page's two route keys are the page's
    assert UsagePage.serves(page_request(""))
    assert UsagePage.serves(page_request("main.js"))
    assert not UsagePage.serves(load_event("api/request.json"))


def test_frame_ancestors_are_origins_and_nothing_that_could_extend_the_policy() -> None:
    # Given the function's settings with CRM origins, then https origins and loopback are taken
    base = {"TABLE_NAME": "metering-dev", "CURSOR_SECRET_ARN": "arn"}
    settings = ApiSettings.model_validate(
        {**base, "PAGE_FRAME_ANCESTORS": "https://app.example-crm.com, https://*.crm.example:8443"}
    )
    assert settings.page_frame_ancestors == ("https://app.example-crm.com", "https://*.crm.example:8443")
    assert ApiSettings.model_validate(base).page_frame_ancestors == ()
    # And anything else fails at cold start
    for bad in ("https://a.example; script-src *", "*", "http://crm.example", "https://a.example/path"):
        with pytest.raises(ValidationError):
            ApiSettings.model_validate({**base, "PAGE_FRAME_ANCESTORS": bad})


def test_the_package_carries_every_file_of_the_page() -> None:
    # Given the package data pyproject.toml declares for the layer's package
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = project["tool"]["setuptools"]
    patterns = setuptools["package-data"]["metering.usage_page"]

    # Then the page's folder is a package of its own, and every file of it matches one of them (so
    # `pip install .` ships the page)
    assert "metering.usage_page" in setuptools["packages"]
    files = [path for path in PAGE_FILES.iterdir() if path.is_file()]
    assert files
    assert [path.name for path in files if not any(path.match(pattern) for pattern in patterns)] == []


# ---- the catalogues ----


def used_keys() -> set[str]:
    """Every message key the page uses: `data-i18n` in the HTML, dotted key literals in the scripts."""
    html = (PAGE_FILES / "index.html").read_text(encoding="utf-8")
    keys = set(re.findall(r'data-i18n="([^"]+)"', html))
    for script in PAGE_FILES.glob("*.js"):
        keys |= set(KEY_LITERAL.findall(script.read_text(encoding="utf-8")))
    return keys


def test_both_catalogues_have_the_same_keys_and_exactly_the_keys_the_page_uses() -> None:
    # Given the English and German catalogues and the keys the page's HTML and scripts use
    english, german = catalogue("en"), catalogue("de")
    used = used_keys()

    # Then no key is missing from either catalogue, none is used but in no catalogue, none is unused
    assert sorted(set(english) - set(german)) == [], "missing from de.json"
    assert sorted(set(german) - set(english)) == [], "missing from en.json"
    assert sorted(used - set(english)) == [], "used by the page but in no catalogue"
    assert sorted(set(english) - used) == [], "in the catalogues but used nowhere"


def test_each_message_has_the_same_placeholders_and_plural_forms_in_both_languages() -> None:
    english, german = catalogue("en"), catalogue("de")
    for key, entry in english.items():
        translated = german[key]
        # plural messages have a form for each category of both languages
        assert isinstance(entry, str) == isinstance(translated, str), key
        if not isinstance(entry, str):
            assert set(entry) == set(translated) == PLURAL_FORMS, key
        placeholders = {frozenset(PLACEHOLDER.findall(text)) for text in templates(entry)}
        assert {frozenset(PLACEHOLDER.findall(text)) for text in templates(translated)} == placeholders, key


def test_the_catalogues_use_the_help_centers_terms() -> None:
    # Given the seeds' terms: "Aktive Kontakte", "Kontingent", "Overusage", "Add-on"; "active contacts"
    german = " ".join(text for entry in catalogue("de").values() for text in templates(entry))
    english = " ".join(text for entry in catalogue("en").values() for text in templates(entry))

    # Then the page speaks them, and not synonyms the articles do not use
    for term in ("Aktive Kontakte", "Kontingent", "Overusage", "Add-on"):
        assert term in german, term
    for term in ("active contacts", "overusage", "add-on"):
        assert term in english, term
    assert "Überschreitung" not in german
    assert "overage" not in english.replace("overusage", "")
