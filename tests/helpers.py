"""Test helpers: events from `tests/events/*.json`, redeliveries and partial-batch responses, a moto server in
a process of its own. The SQS events and the Lambda context the handlers get are `metering_tools.testkit`'s,
shared with `simulate`."""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from metering.rules import Subscription
from metering_tools import testkit

REPO_ROOT = Path(__file__).resolve().parents[1]
EVENTS_DIR = Path(__file__).resolve().parent / "events"
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
"""An invoice's fields in SPEC §3's order."""

DELETE = object()
"""An override value that removes the field from the loaded event."""

CONTACT_EVENT_FILES = {
    "Contact Created": "contact_created.json",
    "Contact Status Changed": "contact_status_changed.json",
    "Message Sent": "message_sent.json",
    "Note Added": "note_added.json",
    "Contact Property Changed": "contact_property_changed.json",
}


# ---- events ----


def deep_update(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `overrides` into `base` in place: dicts merge, `DELETE` removes, anything else replaces."""
    for key, value in overrides.items():
        if value is DELETE:
            base.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def event_text(name: str) -> str:
    """The raw text of an event file (for bodies that must stay byte-exact, e.g. duplicated keys)."""
    return (EVENTS_DIR / name).read_text(encoding="utf-8")


def load_event(name: str, /, **overrides: Any) -> dict[str, Any]:
    """An EventBridge envelope from `tests/events/<name>`, deep-updated with `overrides`.

    `detail-type` cannot be a keyword, so pass it as `**{"detail-type": ...}`."""
    return deep_update(json.loads(event_text(name)), overrides)


def subscription(
    plan: str = "grow",
    effective_at: str = "2026-09-01T00:00:00Z",
    *,
    addons: int = 0,
    cycle: str = "monthly",
    event_id: str = "sub-1",
    timezone: str | None = None,
    frozen: frozenset[str] = frozenset(),
) -> Subscription:
    """A `Subscription Changed` as stored, for account `acc-1` unless the test needs no other."""
    return Subscription(
        account_id="acc-1",
        effective_at=utc(effective_at),
        event_id=event_id,
        plan=plan,  # type: ignore[arg-type]
        billing_cycle=cycle,  # type: ignore[arg-type]
        addon_contacts=addons,
        timezone=timezone,
        frozen_periods=frozen,
    )


def utc(text: str) -> datetime:
    """`2026-10-05T10:00:00Z` as an aware datetime."""
    return datetime.fromisoformat(text)


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _event_id(*parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(str(part) for part in parts)))


def contact_event(
    account_id: str,
    contact_id: str,
    occurred_at: str,
    *,
    detail_type: str = "Contact Created",
    event_id: str | None = None,
    delivered_at: str | None = None,
) -> dict[str, Any]:
    """A single-contact activity event; the bus time is 5 seconds after `occurred_at` unless given."""
    return load_event(
        CONTACT_EVENT_FILES[detail_type],
        id=event_id or _event_id(detail_type, account_id, contact_id, occurred_at),
        time=delivered_at or iso(utc(occurred_at) + timedelta(seconds=5)),
        detail={"accountId": account_id, "contactId": contact_id, "occurredAt": occurred_at},
    )


def contact_events(
    account_id: str, contact_ids: Iterable[str], occurred_at: str, **options: Any
) -> list[dict[str, Any]]:
    return [contact_event(account_id, contact_id, occurred_at, **options) for contact_id in contact_ids]


def status_renamed(
    account_id: str,
    occurred_at: str,
    *,
    contact_ids: Sequence[str] | None = None,
    claim_check: tuple[str, str] | None = None,
    event_id: str | None = None,
    delivered_at: str | None = None,
) -> dict[str, Any]:
    """A `Status Renamed` with inline contact ids or a claim-check object (bucket, key)."""
    source: dict[str, Any]
    if claim_check is not None:
        name, (bucket, key) = "status_renamed_claim_check.json", claim_check
        source = {"contactIdsObject": {"bucket": bucket, "key": key}}
    else:
        name, source = "status_renamed.json", {"contactIds": list(contact_ids or ())}
    return load_event(
        name,
        id=event_id or _event_id("Status Renamed", account_id, occurred_at, claim_check, contact_ids),
        time=delivered_at or iso(utc(occurred_at) + timedelta(seconds=5)),
        detail={"accountId": account_id, "occurredAt": occurred_at, **source},
    )


def subscription_changed(
    account_id: str,
    plan: str,
    effective_at: str,
    *,
    billing_cycle: str = "monthly",
    addon_contacts: int = 0,
    timezone: str | None = None,
    event_id: str | None = None,
    delivered_at: str | None = None,
) -> dict[str, Any]:
    return load_event(
        "subscription_changed.json",
        id=event_id or _event_id("Subscription Changed", account_id, plan, effective_at),
        time=delivered_at or iso(utc(effective_at) + timedelta(seconds=5)),
        detail={
            "accountId": account_id,
            "occurredAt": effective_at,
            "plan": plan,
            "billingCycle": billing_cycle,
            "addonContacts": addon_contacts,
            "timezone": timezone if timezone is not None else DELETE,
        },
    )


def contact_ids(prefix: str, count: int, start: int = 1) -> list[str]:
    """`con-0001`, `con-0002`, ... (sortable, valid ids)."""
    return [f"{prefix}-{number:04d}" for number in range(start, start + count)]


# ---- SQS redelivery ----


def redelivery(event: Mapping[str, Any], message_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """The same messages delivered again (same message ids and bodies, receive count + 1); only
    `message_ids` when given, as SQS redelivers just the records a partial-batch response failed."""
    wanted = None if message_ids is None else set(message_ids)
    records = []
    for record in event["Records"]:
        if wanted is None or record["messageId"] in wanted:
            again = copy.deepcopy(record)
            count = int(again["attributes"]["ApproximateReceiveCount"]) + 1
            again["attributes"]["ApproximateReceiveCount"] = str(count)
            records.append(again)
    return {"Records": records}


def failed_ids(response: Mapping[str, Any]) -> list[str]:
    """The message ids a partial-batch response asks SQS to redeliver."""
    return [item["itemIdentifier"] for item in response.get("batchItemFailures", [])]


# ---- a moto server of its own ----

LOOPBACK = "127.0.0.1"
MOTO_SERVER_SCRIPT = Path(__file__).resolve().parent / "concurrency" / "serial_moto_server.py"
"""moto's server with DynamoDB requests applied one at a time, as DynamoDB applies the writes to one item."""
START_ATTEMPTS = 3
READY_POLLS = 100
POLL_INTERVAL_SECONDS = 0.1
POLL_TIMEOUT_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 5.0

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Loopback only: never through a proxy the environment may name."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _answers(endpoint: str) -> bool:
    try:
        with _DIRECT.open(f"{endpoint}/moto-api/", timeout=POLL_TIMEOUT_SECONDS) as response:
            return int(response.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, urllib.error.URLError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


@contextmanager
def moto_server_process(environment: Mapping[str, str]) -> Iterator[str]:
    """A moto server (`MOTO_SERVER_SCRIPT`) in its own process, state and all, on a free loopback port: its
    endpoint once it answers. Stopped at the end (terminate, then kill)."""
    for _ in range(START_ATTEMPTS):
        port = _free_port()
        endpoint = f"http://{LOOPBACK}:{port}"
        process = subprocess.Popen(
            [sys.executable, str(MOTO_SERVER_SCRIPT), LOOPBACK, str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(environment),
        )
        try:
            for _ in range(READY_POLLS):
                if process.poll() is not None:
                    break  # the port was taken between probing and binding: try another one
                if _answers(endpoint):
                    yield endpoint
                    return
                time.sleep(POLL_INTERVAL_SECONDS)
        finally:
            _stop(process)
    pytest.fail(
        f"{MOTO_SERVER_SCRIPT.name} did not answer after {START_ATTEMPTS} starts (needs moto[server])"
    )


# tests/concurrency/test_server_concurrency.py imports these from here; they are `testkit`'s
ACCOUNT, REGION = testkit.ACCOUNT, testkit.REGION
FakeLambdaContext, load_handler = testkit.LambdaContext, testkit.cold_start
sqs_event, sqs_record = testkit.sqs_event, testkit.sqs_record


# ---- a running `metering serve`, called over HTTP ----

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Loopback only: never through a proxy the environment may name."""


def metering_command(*arguments: str) -> list[str]:
    """The `metering` command line of this interpreter (the checkout's package, whatever PATH holds)."""
    return [sys.executable, "-m", "metering_tools.cli", *arguments]


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer of `metering serve`: status, headers and body."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def is_access_denied(error: ClientError) -> bool:
    """True for AWS's refusals; moto answers JSON-protocol services with an XML body botocore reads as
    code "403", so the message is looked at too."""
    details = error.response.get("Error", {})
    code, message = str(details.get("Code", "")), str(details.get("Message", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"AccessDenied", "AccessDeniedException"} or (status == 403 and "AccessDenied" in message)
