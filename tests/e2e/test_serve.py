"""`metering serve` and `metering token` (SPEC §7, "Local"): a recorded month replayed and served on a free
loopback port, every route called over HTTP with tokens the local issuer printed, the authorizer's refusals,
and a clean stop on SIGTERM and on SIGINT (Ctrl-C)."""

from __future__ import annotations

import csv
import io
import select
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import DIRECT, EVENTS_DIR, Reply, metering_command

pytestmark = pytest.mark.slow

MONTH = EVENTS_DIR / "month.jsonl"
"""acc-berlin on start (50 contacts) in Europe/Berlin: October invoiced for 61 active, 11 over, 275 cents;
acc-legacy on legacy: recorded, never billed."""
NOW = "2026-11-15T00:00:00Z"
ACCOUNT = "acc-berlin"
OTHER_ACCOUNT = "acc-legacy"
READY_TIMEOUT_SECONDS = 180.0
STOP_TIMEOUT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 30.0


def token(issuer_key: Path, *arguments: str) -> str:
    """A token printed by `metering token`."""
    printed = subprocess.run(
        metering_command("token", "--issuer-key", str(issuer_key), *arguments),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return printed.stdout.strip()


@dataclass(slots=True)
class Served:
    """A running `metering serve` and the way to call it."""

    process: subprocess.Popen[str]
    url: str
    issuer_key: Path
    log: Path

    def call(
        self, path: str, bearer: str | None = None, *, accept: str | None = None, method: str = "GET"
    ) -> Reply:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        request = urllib.request.Request(f"{self.url}{path}", headers=headers, method=method)
        try:
            with DIRECT.open(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
                return Reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as refused:
            return Reply(refused.code, refused.headers, refused.read())

    def stop(self, signal_number: int) -> tuple[int, str]:
        """Send the signal; the exit status and whatever else the server printed on stdout."""
        self.process.send_signal(signal_number)
        remaining_stdout, _ = self.process.communicate(timeout=STOP_TIMEOUT_SECONDS)
        return self.process.returncode, remaining_stdout


@pytest.fixture(scope="module")
def issuer_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("issuer") / "issuer-key.pem"


def start(issuer_key: Path, log: Path) -> Served:
    """`metering serve` on the month, port 0 (the server takes a free one); returns once it listens."""
    with log.open("w", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            metering_command(
                "serve", str(MONTH), "--now", NOW, "--port", "0", "--issuer-key", str(issuer_key)
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    started = time.monotonic()
    ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT_SECONDS)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("listening on http://127.0.0.1:"):
        process.kill()
        process.wait()
        waited = time.monotonic() - started
        pytest.fail(
            f"no listening line after {waited:.0f} s, got {line!r}; stderr:\n{log.read_text()[-4000:]}"
        )
    return Served(process, line.removeprefix("listening on ").strip(), issuer_key, log)


@pytest.fixture(scope="module")
def served(issuer_key: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the route tests; stopped with SIGTERM at the end, which must exit cleanly."""
    server = start(issuer_key, tmp_path_factory.mktemp("serve") / "stderr.log")
    try:
        yield server
    finally:
        if server.process.poll() is None:
            status, printed = server.stop(signal.SIGTERM)
            assert (status, printed) == (0, ""), server.log.read_text()[-4000:]


@pytest.fixture(scope="module")
def customer(served: Served) -> str:
    return token(served.issuer_key, "--account", ACCOUNT)


def test_a_customer_reads_its_closed_period_exactly_as_invoiced(served: Served, customer: str) -> None:
    # Given the month replayed and served, and a customer token for acc-berlin from `metering token`
    # When the customer asks for October
    reply = served.call(f"/v1/accounts/{ACCOUNT}/usage?period=2026-10", customer)

    # Then it reads the closed period exactly as invoiced: start in Berlin, 61 active, 11 over, 275 cents
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    usage = reply.json()
    assert (usage["accountId"], usage["period"], usage["timezone"]) == (ACCOUNT, "2026-10", "Europe/Berlin")
    assert usage["closed"] is True
    assert usage["subscription"]["plan"] == "start"
    assert (usage["allowance"], usage["activeContacts"]) == (50, 61)
    assert usage["overusage"]["contacts"] == 11
    assert usage["overusage"]["amountCents"] == 275
    assert usage["invoice"]["amountCents"] == 275
    assert usage["invoice"]["overusageContacts"] == 11


def test_contacts_come_in_pages_as_json_and_as_csv_with_a_link_to_the_next(
    served: Served, customer: str
) -> None:
    # Given the 61 active contacts of acc-berlin's October
    path = f"/v1/accounts/{ACCOUNT}/contacts?period=2026-10&limit=50"

    # When the customer reads them in pages of 50, as JSON, then the first page as CSV
    first = served.call(path, customer)
    second = served.call(f"{path}&cursor={first.json()['nextCursor']}", customer)
    as_csv = served.call(path, customer, accept="text/csv")

    # Then JSON gives 50 then 11, each with the first event that made it active, no cursor after the last
    assert (first.status, second.status) == (200, 200)
    contacts = first.json()["contacts"] + second.json()["contacts"]
    assert len(contacts) == 61
    assert len({contact["contactId"] for contact in contacts}) == 61
    assert {"contactId", "detailType", "eventId", "occurredAt"} <= set(contacts[0])
    assert second.json().get("nextCursor") is None
    # And CSV gives the same first page with an RFC 8288 link to the next one
    assert as_csv.status == 200, as_csv.body
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert 'rel="next"' in as_csv.headers["link"]
    rows = list(csv.DictReader(io.StringIO(as_csv.body.decode("utf-8"))))
    assert [row["contactId"] for row in rows] == [
        contact["contactId"] for contact in first.json()["contacts"]
    ]


def test_invoices_and_alerts_of_the_account(served: Served, customer: str) -> None:
    # Given acc-berlin, invoiced for October after crossing 80 % and 100 % of its 50 contacts
    # When the customer lists its invoices and October's alerts
    invoices = served.call(f"/v1/accounts/{ACCOUNT}/invoices", customer)
    alerts = served.call(f"/v1/accounts/{ACCOUNT}/alerts?period=2026-10", customer)

    # Then the invoice has SPEC §3's fields and when it was issued
    assert invoices.status == 200, invoices.body
    [invoice] = invoices.json()["invoices"]
    assert (invoice["period"], invoice["amountCents"], invoice["currency"]) == ("2026-10", 275, "EUR")
    assert invoice["issuedAt"]
    # And both thresholds were reached at the allowance of 50
    assert alerts.status == 200, alerts.body
    reached = alerts.json()["alerts"]
    assert [(alert["thresholdPercent"], alert["allowance"]) for alert in reached] == [(80, 50), (100, 50)]
    assert all(alert["reachedAt"] for alert in reached)


def test_the_openapi_document_names_every_route(served: Served, customer: str) -> None:
    # When the OpenAPI document is asked for
    reply = served.call("/v1/openapi.json", customer)

    # Then it is OpenAPI 3 and names the five routes
    assert reply.status == 200, reply.body
    document = reply.json()
    assert document["openapi"].startswith("3.")
    assert {
        "/v1/accounts/{accountId}/usage",
        "/v1/accounts/{accountId}/contacts",
        "/v1/accounts/{accountId}/invoices",
        "/v1/accounts/{accountId}/alerts",
        "/v1/openapi.json",
    } <= set(document["paths"])


def test_a_staff_token_reads_any_account_and_a_customer_token_only_its_own(
    served: Served, customer: str
) -> None:
    # Given a staff token and acc-berlin's customer token
    staff = token(served.issuer_key, "--all-accounts")

    # When each asks for acc-legacy's October
    as_staff = served.call(f"/v1/accounts/{OTHER_ACCOUNT}/usage?period=2026-10", staff)
    as_customer = served.call(f"/v1/accounts/{OTHER_ACCOUNT}/usage?period=2026-10", customer)
    unknown = served.call("/v1/accounts/acc-nobody/usage?period=2026-10", customer)

    # Then staff reads it (legacy: not billed); the customer gets 403 as a problem, with none of its data,
    # whether or not the other account exists
    assert as_staff.status == 200, as_staff.body
    assert (as_staff.json()["accountId"], as_staff.json()["billed"]) == (OTHER_ACCOUNT, False)
    for refused in (as_customer, unknown):
        assert refused.status == 403, refused.body
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["status"] == 403
    assert OTHER_ACCOUNT.encode() not in as_customer.body


def test_a_token_without_a_read_scope_is_refused_by_the_authorizer_with_api_gateways_403(
    served: Served,
) -> None:
    # Given a token for acc-berlin whose scope is neither of the routes' read scopes
    unscoped = token(served.issuer_key, "--account", ACCOUNT, "--scope", "openid profile")

    # When it reads the usage, then API Gateway's own 403 comes back, not the function's problem
    reply = served.call(f"/v1/accounts/{ACCOUNT}/usage?period=2026-10", unscoped)
    assert (reply.status, reply.json()) == (403, {"message": "Forbidden"})


def test_the_function_answers_an_unknown_route_and_another_method_with_problems(
    served: Served, customer: str
) -> None:
    # When a valid token calls a route the API does not have, and POSTs to one it has
    unknown_route = served.call(f"/v1/accounts/{ACCOUNT}/everything", customer)
    posted = served.call(f"/v1/accounts/{ACCOUNT}/usage", customer, method="POST")

    # Then both reach the function through the $default route: 404 and 405 as problems
    assert (unknown_route.status, posted.status) == (404, 405)
    for reply in (unknown_route, posted):
        assert reply.headers["content-type"].startswith("application/problem+json")
        assert reply.json()["status"] == reply.status


def test_the_authorizer_refuses_bad_tokens_with_api_gateways_401(served: Served, tmp_path: Path) -> None:
    # Given an expired token, one for another audience, one from another issuer key, one whose claims were
    # altered after signing (another account, the signature of acc-berlin's), and no token at all
    valid = token(served.issuer_key, "--account", ACCOUNT)
    header, _, signature = valid.split(".")
    altered_payload = token(served.issuer_key, "--account", OTHER_ACCOUNT).split(".")[1]
    bad_tokens = {
        "expired": token(served.issuer_key, "--account", ACCOUNT, "--expires-in", "-60"),
        "wrong audience": token(served.issuer_key, "--account", ACCOUNT, "--audience", "another-api"),
        "another issuer key": token(tmp_path / "stranger.pem", "--account", ACCOUNT),
        "wrong signature": f"{header}.{altered_payload}.{signature}",
        "no token": None,
    }

    # When each calls the usage route
    replies = {
        name: served.call(f"/v1/accounts/{ACCOUNT}/usage?period=2026-10", bad)
        for name, bad in bad_tokens.items()
    }

    # Then every one gets API Gateway's own 401, never the function's answer
    assert {name: (reply.status, reply.json()) for name, reply in replies.items()} == {
        name: (401, {"message": "Unauthorized"}) for name in bad_tokens
    }


def test_serve_stops_cleanly_on_ctrl_c(issuer_key: Path, tmp_path: Path) -> None:
    # Given a second server on the same month, answering
    server = start(issuer_key, tmp_path / "stderr.log")
    assert server.call("/v1/openapi.json", token(issuer_key, "--all-accounts")).status == 200

    # When it gets SIGINT, as from Ctrl-C
    status, printed = server.stop(signal.SIGINT)

    # Then it exits with status 0, having printed nothing but its listening line, and no traceback
    assert (status, printed) == (0, "")
    assert "Traceback" not in server.log.read_text()
