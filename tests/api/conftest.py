"""The Usage API tier: payload 2.0 requests built from `tests/events/api/request.json`, sent to the UsageApi
function of a moto copy of the stack as its template role (`tests.harness.Metering`), on a recorded month."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

import pytest
from metering import aws
from metering.api_access import READ_ANY_ACCOUNT, READ_OWN_ACCOUNT
from metering_tools.capacity import CapacityMeter

from tests.harness import Metering
from tests.helpers import (
    contact_event,
    contact_events,
    contact_ids,
    load_event,
    subscription_changed,
)

REQUEST = "api/request.json"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.TOKEN-SIGNATURE-NEVER-LOGGED"
"""The bearer token of every request's Authorization header (as `request.json` has it): no answer, log line
or metric may carry it."""
NOW = datetime(2026, 11, 2, 9, tzinfo=UTC)
"""The API's clock in this tier: October is closed and invoiced, November open."""


@dataclass(frozen=True, slots=True)
class Token:
    """What the JWT authorizer passes on of a token it accepted: its scopes and claims."""

    scopes: tuple[str, ...]
    claims: Mapping[str, str] = field(default_factory=dict)


def customer(account_id: str) -> Token:
    return Token((READ_OWN_ACCOUNT,), {"account_id": account_id})


def staff() -> Token:
    return Token((READ_ANY_ACCOUNT,), {})


def scopeless(account_id: str) -> Token:
    """A token of the right issuer and audience for another API: no read scope."""
    return Token(("profile", "openid"), {"account_id": account_id})


@dataclass(frozen=True, slots=True)
class Answer:
    """What the function answered: status, headers (lower-case names) and body (JSON parsed when it is)."""

    status: int
    headers: Mapping[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def is_problem(self, status: int) -> bool:
        """An RFC 9457 problem with exactly this status and its four members."""
        if self.status != status or not self.content_type.startswith("application/problem+json"):
            return False
        body = self.json
        return {"type", "title", "status", "detail"} <= set(body) and body["status"] == status


def request(
    path: str,
    query: str = "",
    *,
    token: Token | None = None,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A payload 2.0 event as an HTTP API builds it from a client's request for `path` (percent-encoded as the
    client sends it): the path percent-decoded (and cut at a decoded `?`), the raw query string and its
    parameters decoded with repeated names joined by commas; the authorizer's claims and scopes of `token` (a
    customer of acc-1 if none). Headers given replace the file's (lower-case names, as API Gateway sends
    them)."""
    token = token or customer("acc-1")
    path = unquote(path).split("?", 1)[0]
    parameters: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        parameters[name] = f"{parameters[name]},{value}" if name in parameters else value
    event = load_event(
        REQUEST,
        rawPath=path,
        rawQueryString=query,
        requestContext={"http": {"method": method, "path": path}},
        headers=dict(headers or {}),
    )
    event["requestContext"]["authorizer"]["jwt"] = {
        "claims": {**event["requestContext"]["authorizer"]["jwt"]["claims"], **token.claims},
        "scopes": list(token.scopes),
    }
    if "account_id" not in token.claims:
        del event["requestContext"]["authorizer"]["jwt"]["claims"]["account_id"]
    if parameters:
        event["queryStringParameters"] = parameters
    return event


@dataclass
class UsageApiClient:
    """Calls the UsageApi function as API Gateway would, each call as its template role."""

    metering: Metering
    meter: CapacityMeter | None = None

    def send(self, event: Mapping[str, Any]) -> Answer:
        module = self.metering.modules["UsageApi"]
        function = self.metering.functions["UsageApi"]

        def handler(event: dict[str, Any], context: Any) -> Any:
            if self.meter is not None:
                self.meter.attach(aws.dynamodb())
            return module.handler(event, context)

        try:
            response = self.metering.guard.invoke("UsageApi", handler, dict(event), function.context())
        finally:
            aws.reset_clients()
        headers = {name.lower(): value for name, value in (response.get("headers") or {}).items()}
        return Answer(int(response["statusCode"]), headers, str(response.get("body", "")))

    def get(self, path: str, query: str = "", **options: Any) -> Answer:
        return self.send(request(path, query, **options))


@pytest.fixture
def api(metering: Metering, monkeypatch: pytest.MonkeyPatch) -> UsageApiClient:
    """The UsageApi function of the harness's stack, its clock at NOW."""
    monkeypatch.setattr(metering.modules["UsageApi"].API, "clock", lambda: NOW)
    return UsageApiClient(metering)


# ---- a recorded month ----

BIG = "acc-big"
"""On `start` (50 contacts) from July: 61 active contacts in August, 75 in September and 130 in October, all
invoiced; 12 in November so far."""
SMALL = "acc-small"
"""On `grow` (250): 7 active contacts in October."""
OCTOBER_CONTACTS = contact_ids("con", 130)
OCTOBER_TYPES = ("Contact Created", "Message Sent", "Note Added")
"""The detail-type of the event that made October contact number `index` active: OCTOBER_TYPES[index % 3]."""


@pytest.fixture
def recorded(metering: Metering) -> Metering:
    """The months of BIG and SMALL recorded and closed as the stack does it, up to NOW."""
    metering.record_events(
        [
            subscription_changed(BIG, "start", "2026-07-01T00:00:00Z"),
            subscription_changed(SMALL, "grow", "2026-07-01T00:00:00Z"),
        ]
    )
    for month, count in (("2026-08", 61), ("2026-09", 75)):
        metering.record_events(contact_events(BIG, contact_ids("old", count), f"{month}-10T09:00:00Z"))
    metering.close("2026-09-01T06:00:00Z")
    metering.close("2026-10-01T06:00:00Z")
    october = [
        contact_event(
            BIG,
            contact_id,
            f"2026-10-{1 + index % 28:02d}T{index % 24:02d}:00:00Z",
            detail_type=OCTOBER_TYPES[index % 3],
            event_id=f"evt-{contact_id}",
        )
        for index, contact_id in enumerate(OCTOBER_CONTACTS)
    ]
    metering.record_events(sorted(october, key=lambda event: event["time"]))
    metering.record_events(contact_events(SMALL, contact_ids("small", 7), "2026-10-05T12:00:00Z"))
    metering.close("2026-11-01T06:00:00Z")
    metering.record_events(contact_events(BIG, contact_ids("nov", 12), "2026-11-01T10:00:00Z"))
    return metering
