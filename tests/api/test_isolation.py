"""Tenant isolation through the UsageApi handler: a customer token reads its own account only, whatever the id
looks like (case, `#`, percent-encoding); a staff token reads any; a token without the scope none; a cursor
works only where it was issued; and no answer, log line or metric carries another account's id or data, or
the token."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from metering.fields import ID_PATTERN
from metering.observability import logger

from tests.api.conftest import (
    BIG,
    SMALL,
    TOKEN,
    Answer,
    Token,
    UsageApiClient,
    customer,
    scopeless,
    staff,
)
from tests.harness import Metering
from tests.helpers import contact_events, contact_ids

VICTIM = "victim-7Qz"
"""An account with data of its own, which no token but its own or a staff one may see any byte of."""
VICTIM_CONTACTS = contact_ids("secret", 3)
ROUTES = ("usage", "contacts?period=2026-10", "invoices", "alerts")
_ID = re.compile(ID_PATTERN)


@pytest.fixture
def victim(metering: Metering) -> Metering:
    metering.record_events(contact_events(VICTIM, VICTIM_CONTACTS, "2026-10-07T08:00:00Z"))
    return metering


# ---- the account a request names, as a client writes it in the path ----

account_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,12}\Z")


def _encoded_everywhere(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


Variant = Callable[[str], str]
VARIANTS: dict[str, Variant] = {
    "same": lambda text: quote(text, safe=""),
    "case swapped": lambda text: quote(text.swapcase(), safe=""),
    "with #": lambda text: quote(f"{text}#2026-10", safe=""),
    "percent-encoded": _encoded_everywhere,
    "percent-encoded, lower-case hex": lambda text: _encoded_everywhere(text).lower(),
    "encoded twice": lambda text: _encoded_everywhere(text).replace("%", "%25"),
    "with a NUL": lambda text: quote(text + "\x00", safe=""),
    "victim": lambda _: VICTIM,
}
"""Each variant is the path segment a client sends for an account id, percent-encoded as it chooses."""


def expected_status(token: Token, segment: str) -> int:
    """The oracle: no read scope 403; an id that breaks the pattern once the gateway has decoded the path 400;
    a staff token 200; a customer token 200 for its own account exactly, else 403."""
    if not set(token.scopes) & {"metering/usage.read", "metering/usage.read.all"}:
        return 403
    account_id = unquote(segment)
    if not _ID.fullmatch(account_id):
        return 400
    if "metering/usage.read.all" in token.scopes or account_id == token.claims.get("account_id"):
        return 200
    return 403


def assert_isolated(answer: Answer, status: int, readable: str | None) -> None:
    """The answer has the oracle's status; a 200 is the readable account's, anything else a problem; the
    victim's data shows only in the victim's own answer."""
    assert answer.status == status, answer
    if status == 200:
        assert answer.json["accountId"] == readable
    else:
        assert answer.is_problem(status), answer
    if readable != VICTIM:
        assert VICTIM not in answer.text
        assert not any(contact in answer.text for contact in VICTIM_CONTACTS)
    assert TOKEN not in answer.text


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    claim=account_ids,
    other=account_ids,
    variant=st.sampled_from(sorted(VARIANTS)),
    of_own=st.booleans(),
    route=st.sampled_from(ROUTES),
    kind=st.sampled_from(["customer", "staff", "scopeless"]),
)
@example(claim="acc-1", other="acc-2", variant="same", of_own=True, route="usage", kind="customer")
@example(
    claim="acc-1",
    other="acc-2",
    variant="same",
    of_own=False,
    route="contacts?period=2026-10",
    kind="customer",
)
@example(claim="acc-1", other="acc-2", variant="case swapped", of_own=True, route="invoices", kind="customer")
@example(
    claim="acc-1", other="acc-2", variant="percent-encoded", of_own=True, route="alerts", kind="customer"
)
@example(claim="acc-1", other="acc-2", variant="encoded twice", of_own=True, route="usage", kind="customer")
@example(
    claim="acc-1",
    other="acc-2",
    variant="with #",
    of_own=True,
    route="contacts?period=2026-10",
    kind="customer",
)
@example(claim="acc-1", other="acc-2", variant="with a NUL", of_own=True, route="usage", kind="customer")
@example(
    claim="acc-1",
    other="acc-2",
    variant="victim",
    of_own=False,
    route="contacts?period=2026-10",
    kind="customer",
)
@example(
    claim="acc-1",
    other="acc-2",
    variant="victim",
    of_own=False,
    route="contacts?period=2026-10",
    kind="staff",
)
@example(claim="acc-1", other="acc-2", variant="same", of_own=True, route="usage", kind="scopeless")
def test_a_token_reads_only_what_its_scope_and_claim_allow(
    victim: Metering,
    api: UsageApiClient,
    claim: str,
    other: str,
    variant: str,
    of_own: bool,
    route: str,
    kind: str,
) -> None:
    # Given a token of one kind for account `claim`, and a request naming a variant of its own id or another's
    token = {"customer": customer(claim), "staff": staff(), "scopeless": scopeless(claim)}[kind]
    segment = VARIANTS[variant](claim if of_own else other)
    name, _, query = route.partition("?")

    # When it asks the route
    answer = api.get(f"/v1/accounts/{segment}/{name}", query, token=token)

    # Then it gets what the oracle says, and sees no account but the one it may read
    status = expected_status(token, segment)
    event(f"{kind} {variant}: {status}")
    assert_isolated(answer, status, unquote(segment) if status == 200 else None)


def test_a_customer_reads_its_own_account_under_any_encoding_of_its_id(
    victim: Metering, api: UsageApiClient
) -> None:
    # Given the victim's own token
    token = customer(VICTIM)
    # When it names its account plainly and with every character percent-encoded (upper or lower hex)
    plain = api.get(f"/v1/accounts/{VICTIM}/contacts", "period=2026-10", token=token)
    encoded = api.get(f"/v1/accounts/{_encoded_everywhere(VICTIM)}/contacts", "period=2026-10", token=token)
    lower = api.get(
        f"/v1/accounts/{_encoded_everywhere(VICTIM).lower()}/contacts", "period=2026-10", token=token
    )
    # Then it reads the same page each time
    assert plain.status == encoded.status == lower.status == 200
    assert [c["contactId"] for c in plain.json["contacts"]] == VICTIM_CONTACTS
    assert plain.json == encoded.json == lower.json


def test_another_account_is_refused_alike_whether_or_not_it_exists(
    victim: Metering, api: UsageApiClient
) -> None:
    # Given a customer token of acc-1, the victim with data and an account that has never been seen
    token = customer("acc-1")
    for route, query in (("usage", ""), ("contacts", "period=2026-10"), ("invoices", ""), ("alerts", "")):
        # When it asks for each
        existing = api.get(f"/v1/accounts/{VICTIM}/{route}", query, token=token)
        unknown = api.get(f"/v1/accounts/never-seen-1/{route}", query, token=token)
        # Then both answers are the same 403, byte for byte
        assert existing.is_problem(403)
        assert (existing.status, existing.headers, existing.text) == (
            unknown.status,
            unknown.headers,
            unknown.text,
        )


# ---- cursors ----


@pytest.fixture
def cursor_of_big(recorded: Metering, api: UsageApiClient) -> str:
    """The cursor of the first October contacts page of BIG, as a staff token got it."""
    first = api.get(f"/v1/accounts/{BIG}/contacts", "period=2026-10&limit=10", token=staff()).json
    assert first["nextCursor"]
    return str(first["nextCursor"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "path", "query"),
    [
        ("another account", f"/v1/accounts/{SMALL}/contacts", "period=2026-10&limit=10"),
        ("another period", f"/v1/accounts/{BIG}/contacts", "period=2026-09&limit=10"),
        ("another route", f"/v1/accounts/{BIG}/invoices", "limit=10"),
    ],
)
def test_a_cursor_replayed_elsewhere_is_refused(
    cursor_of_big: str, api: UsageApiClient, where: str, path: str, query: str
) -> None:
    # Given a cursor of BIG's October contacts
    # When a staff token, which may read everything, replays it on another account, period or route
    answer = api.get(path, f"{query}&cursor={cursor_of_big}", token=staff())
    # Then it is refused as a bad cursor, and nothing of the page is shown
    assert answer.is_problem(400), where
    assert answer.json["type"].endswith(":invalid-cursor")
    assert "con-" not in answer.text


@pytest.mark.slow
def test_an_altered_or_cut_cursor_is_refused(cursor_of_big: str, api: UsageApiClient) -> None:
    # Given a cursor of BIG's October contacts, and copies with one character changed or cut short
    flipped = [
        cursor_of_big[:index] + ("A" if cursor_of_big[index] != "A" else "B") + cursor_of_big[index + 1 :]
        for index in range(0, len(cursor_of_big), 7)
    ]
    cut = [cursor_of_big[:-1], cursor_of_big[:10], cursor_of_big + "A"]
    path, query = f"/v1/accounts/{BIG}/contacts", "period=2026-10&limit=10"
    # When each is used where the cursor was issued
    answers = [api.get(path, f"{query}&cursor={cursor}", token=staff()) for cursor in flipped + cut]
    # Then every one is refused, while the cursor itself still works
    assert all(answer.is_problem(400) for answer in answers)
    assert api.get(path, f"{query}&cursor={cursor_of_big}", token=staff()).status == 200


# ---- what leaves the function: answers, log lines, metrics ----


@pytest.mark.slow
def test_no_answer_log_line_or_metric_carries_the_token_or_another_accounts_data(
    recorded: Metering,
    api: UsageApiClient,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given metrics flushed as on AWS, the function's logger at its most verbose and library logs captured
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    level = logger.log_level
    logger.setLevel("DEBUG")
    caplog.set_level("INFO")
    capfd.readouterr()

    # When SMALL's customer reads its own account on every route, tries BIG's on every route, and sends
    # malformed requests, a bad cursor and an unknown route
    token = customer(SMALL)
    answers = []
    for route, query in (
        ("usage", ""),
        ("contacts", "period=2026-10"),
        ("invoices", ""),
        ("alerts", "period=2026-10"),
    ):
        answers.append(api.get(f"/v1/accounts/{SMALL}/{route}", query, token=token))
        answers.append(api.get(f"/v1/accounts/{BIG}/{route}", query, token=token))
    answers += [
        api.get(f"/v1/accounts/{SMALL}/contacts", "period=2026-10&cursor=AAAA", token=token),
        api.get(f"/v1/accounts/{SMALL}/usage", "period=2026-13", token=token),
        api.get(f"/v1/accounts/{BIG}/nothing", token=token),
        api.get(f"/v1/accounts/{SMALL}/usage", token=scopeless(SMALL)),
    ]
    logger.setLevel(level)
    output = capfd.readouterr()
    lines = [*output.out.splitlines(), *output.err.splitlines(), *caplog.messages]

    # Then SMALL got its own data and 403s for BIG's, and none of the answers shows BIG's id or contacts
    assert [answer.status for answer in answers[:8]] == [200, 403] * 4
    for answer in answers:
        assert BIG not in answer.text
        assert not any(f"con-{n:04d}" in answer.text for n in range(1, 131))
        assert TOKEN not in answer.text
    # And metrics were written (one EMF record per invocation), per route, with no account as a dimension
    metrics = [json.loads(line) for line in output.out.splitlines() if line.startswith('{"_aws"')]
    assert len(metrics) == len(answers)
    names = {
        metric["Name"] for record in metrics for metric in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    }
    assert {
        "ApiRequests_usage",
        "ApiRequests_contacts",
        "ApiRequests_invoices",
        "ApiRequests_alerts",
    } <= names
    assert {"ApiClientErrors_usage", "ApiRequests_unmatched"} <= names
    assert all(record["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]] for record in metrics)
    # And no log line or metric carries the token, the Authorization header, or BIG's id or data
    for line in lines:
        assert TOKEN not in line
        assert "Bearer" not in line
        assert BIG not in line
        assert "con-0001" not in line
