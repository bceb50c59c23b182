"""The month the browser tier serves: one account for each state a customer meets on the usage page, written
as an EventBridge archive (JSON lines in delivery order) from the events of `tests/events/`.

As of `NOW` (20 November 2026, noon UTC) October is closed and invoiced, November open:

| account | subscription | October | November so far |
|---|---|---|---|
| `acc-over` | grow, monthly, Europe/Berlin | 300: invoiced 50 over, 1,250 cents | 2,345: far over its 250 |
| `acc-at-limit` | start, monthly, UTC | none | exactly its 50 |
| `acc-within` | expand, yearly, America/New_York | 90: closed, no overusage | 123 of 500 |
| `acc-legacy` | legacy | none | 30, not billed this way |
| `acc-nosub` | none | none | 12, no subscription yet |

acc-over's November is three CSV pages of the API and 94 pages of the usage page's contact list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import contact_event, contact_ids, status_renamed, subscription_changed

NOW = "2026-11-20T12:00:00Z"
OPEN_PERIOD = "2026-11"
CLOSED_PERIOD = "2026-10"
OVER = "acc-over"
AT_LIMIT = "acc-at-limit"
WITHIN = "acc-within"
LEGACY = "acc-legacy"
NO_SUBSCRIPTION = "acc-nosub"
ACCOUNTS = (OVER, AT_LIMIT, WITHIN, LEGACY, NO_SUBSCRIPTION)
RENAME_LIMIT = 1000
"""Contacts one inline `Status Renamed` may carry."""
DETAIL_TYPES = (
    "Contact Created",
    "Message Sent",
    "Note Added",
    "Contact Property Changed",
    "Contact Status Changed",
)


def _renames(account_id: str, ids: list[str], days: list[str]) -> Iterator[dict[str, Any]]:
    """The contacts made active by status renames on the given days, in chunks of at most 1,000."""
    chunk = -(-len(ids) // len(days))
    for number, day in enumerate(days):
        part = ids[number * chunk : (number + 1) * chunk]
        for start in range(0, len(part), RENAME_LIMIT):
            yield status_renamed(
                account_id,
                f"{day}T09:{start // RENAME_LIMIT:02d}:00Z",
                contact_ids=part[start : start + RENAME_LIMIT],
            )


def _one_by_one(account_id: str, ids: list[str], day: str) -> Iterator[dict[str, Any]]:
    """One event per contact, of each kind in turn, a minute apart."""
    for number, contact_id in enumerate(ids):
        detail_type = DETAIL_TYPES[number % len(DETAIL_TYPES)]
        at = f"{day}T{8 + number // 60:02d}:{number % 60:02d}:00Z"
        yield contact_event(account_id, contact_id, at, detail_type=detail_type)


def events() -> list[dict[str, Any]]:
    month = [
        subscription_changed(OVER, "grow", "2026-09-01T00:00:00Z", timezone="Europe/Berlin"),
        subscription_changed(AT_LIMIT, "start", "2026-09-01T00:00:00Z"),
        subscription_changed(
            WITHIN, "expand", "2026-09-01T00:00:00Z", billing_cycle="yearly", timezone="America/New_York"
        ),
        subscription_changed(LEGACY, "legacy", "2026-09-01T00:00:00Z"),
        *_renames(OVER, contact_ids("oct", 300), ["2026-10-02", "2026-10-08", "2026-10-14", "2026-10-21"]),
        *_renames(WITHIN, contact_ids("oct", 90), ["2026-10-06", "2026-10-16"]),
        *_one_by_one(OVER, contact_ids("a", 45), "2026-11-02"),
        *_renames(OVER, contact_ids("nov", 2300), ["2026-11-03", "2026-11-10", "2026-11-17"]),
        *_renames(AT_LIMIT, contact_ids("nov", 50), ["2026-11-05"]),
        *_one_by_one(WITHIN, contact_ids("a", 3), "2026-11-04"),
        *_renames(WITHIN, contact_ids("nov", 120), ["2026-11-09"]),
        *_renames(LEGACY, contact_ids("nov", 30), ["2026-11-06"]),
        *_one_by_one(NO_SUBSCRIPTION, contact_ids("a", 12), "2026-11-07"),
    ]
    return sorted(month, key=lambda event: (event["time"], event["id"]))


def write_month(path: Path) -> Path:
    path.write_text("".join(json.dumps(event) + "\n" for event in events()), encoding="utf-8")
    return path
