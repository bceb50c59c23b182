"""Batch invariance (SPEC §1, "Order, not batching, decides"): the report of a month is a function of its
events and their delivery order, never of batch boundaries, batch sizes or SQS redelivery.

Hypothesis writes small months as EventBridge archives (JSON lines, as `events/sample-month.jsonl`): a few
accounts in different time zones, mid-month plan, add-on, billing-cycle and time-zone changes, every kind of
contact activity (renames with contact lists large enough to cross the usage alerts and go over allowance),
duplicates, events of the next month, late and invalid events. Each month is replayed through `simulate` one
event per batch, then split into batches Hypothesis draws, with and without redelivery; every section of the
report but `stats` must be identical. Months that once differed (the defects this property guards against,
hand-checked, and any month Hypothesis finds) are kept under `tests/events/invariance/` with their expected
report, and replayed in every batching by `test_a_kept_month_reports_what_was_checked_in_every_batching`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metering.events import DETAIL_TYPES
from metering_tools.simulate import SimulationOptions, simulate

from tests.helpers import EVENTS_DIR, iso, utc

INVARIANCE_DIR = EVENTS_DIR / "invariance"
COMPARED = ("invoices", "usage", "alerts", "rejected", "late")
NOW = utc("2026-12-03T00:00:00Z")
"""After every period a generated month can reach (September to November, in any zone) has closed."""
MAX_BATCH_SIZE = 1000

ACCOUNT_IDS = ("acc-a", "acc-b", "acc-c", "acc-d")
ZONES = ("UTC", "Europe/Berlin", "America/Los_Angeles", "Pacific/Kiritimati", "Asia/Kolkata")
CONTACT_POOL = tuple(f"c{number:02d}" for number in range(1, 65))
"""Small enough that counts cross 80 % and 100 % of a `start` allowance (50 plus a few add-ons)."""
FIRST_PLANS = ("start", "start", "start", "start", "grow", "legacy")
PLANS = ("start", "start", "grow", "legacy", "expand")
ACTIVITY_TYPES = (*(name for name in DETAIL_TYPES if name != "Subscription Changed"), "Status Renamed")
"""Every activity, renames twice as often: they cross the thresholds in one event."""
RENAMED_COLUMN_SIZES = (55, 45, 30, 12, 3)
ANCHORS = {
    "month start": utc("2026-10-01T00:00:00Z"),
    "mid-month": utc("2026-10-15T12:00:00Z"),
    "month end": utc("2026-11-01T00:00:00Z"),
    "next month": utc("2026-11-12T00:00:00Z"),
}
"""Where activity happens: the two month edges (within the reach of every zone), and inside the months."""
EDGE_REACH = 15 * 3600
WITHIN_MONTH = 12 * 86400
LATE_FROM = utc("2026-11-02T00:00:00Z")
"""Past October's close instant in every zone (the end in UTC-12 plus 6 h grace is 1 November 18:00)."""


# ---- the months Hypothesis writes ----


@dataclass(frozen=True, slots=True)
class Envelope:
    """One line of the archive before it is written: its bus time decides its place in delivery order."""

    time: datetime
    detail_type: str
    detail: dict[str, Any]
    event_id: str = ""

    def line(self, event_id: str) -> str:
        document = {
            "version": "0",
            "id": event_id,
            "detail-type": self.detail_type,
            "source": "crm",
            "account": "123456789012",
            "time": iso(self.time),
            "region": "eu-central-1",
            "resources": [],
            "detail": self.detail,
        }
        return json.dumps(document, separators=(",", ":"))


def local_text(instant: datetime, zone_name: str) -> str:
    """`occurredAt` as the CRM writes it: ISO 8601 in the account's zone, with milliseconds and offset."""
    text = instant.astimezone(ZoneInfo(zone_name)).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Profile:
    """What a month concentrates on: where its events happen, how late they reach the bus, how many."""

    anchors: tuple[str, ...]
    """Anchor names, repeated to weigh them."""
    delays: tuple[str, ...]
    change_delays: tuple[str, ...]
    changes: int
    activities: tuple[int, int]


DELAYS = {
    "prompt": (0, 120),
    "skewed": (-300, -1),
    "hours": (3600, 30 * 3600),
    "days": (2 * 86400, 4 * 86400),
}
"""Bus time minus `occurredAt`: promptly, a little before it (clock skew within the 5 minutes allowed),
hours later (late for the zones furthest east), days later (late everywhere)."""
WHOLE_MONTH = Profile(
    anchors=("mid-month", "month end", "mid-month", "month end", "month start", "next month"),
    delays=("prompt", "prompt", "prompt", "skewed", "hours", "days"),
    change_delays=("prompt", "hours", "days"),
    changes=5,
    activities=(12, 40),
)
MONTH_EDGE = Profile(
    anchors=("month end", "month end", "month end", "mid-month"),
    delays=("prompt", "prompt", "skewed", "hours"),
    change_delays=("prompt", "hours"),
    changes=6,
    activities=(10, 36),
)
"""Most events within a day of the end of October, where zones disagree on the month and periods close
between deliveries: time-zone changes, seals and redeliveries meet there."""


@st.composite
def occurrences(draw: st.DrawFn, profile: Profile) -> datetime:
    """An instant near a month edge (where zones disagree on the month) or inside a month."""
    anchor = draw(st.sampled_from(profile.anchors))
    reach = WITHIN_MONTH if anchor in {"mid-month", "next month"} else EDGE_REACH
    return ANCHORS[anchor] + timedelta(seconds=draw(st.integers(-reach, reach)))


@st.composite
def bus_times(draw: st.DrawFn, occurred: datetime, delays: tuple[str, ...]) -> datetime:
    """When the event reached the bus, `occurred` plus a delay of one of the kinds of `DELAYS`."""
    low, high = DELAYS[draw(st.sampled_from(delays))]
    return occurred + timedelta(seconds=draw(st.integers(low, high)))


@st.composite
def subscription_details(
    draw: st.DrawFn, account_id: str, occurred: datetime, plans: tuple[str, ...] = PLANS
) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "accountId": account_id,
        "occurredAt": iso(occurred),
        "plan": draw(st.sampled_from(plans)),
        "billingCycle": draw(st.sampled_from(("monthly", "yearly"))),
        "addonContacts": draw(st.integers(0, 15).map(lambda n: 300 if n == 15 else n)),
    }
    zone_name = draw(st.one_of(st.sampled_from(ZONES), st.none()))
    if zone_name is not None:
        detail["timezone"] = zone_name
        detail["occurredAt"] = local_text(occurred, zone_name)
    return detail


@st.composite
def first_subscriptions(draw: st.DrawFn, account_id: str) -> Envelope:
    """The subscription an account starts the month with, in force since September."""
    occurred = utc("2026-09-01T08:00:00Z") + timedelta(minutes=draw(st.integers(0, 60)))
    detail = draw(subscription_details(account_id, occurred, FIRST_PLANS))
    return Envelope(occurred + timedelta(seconds=5), "Subscription Changed", detail)


@st.composite
def subscription_changes(draw: st.DrawFn, accounts: tuple[str, ...], profile: Profile) -> Envelope:
    """A mid-month change: an upgrade, a downgrade, add-ons, a billing cycle or a time zone; put on the bus
    when it takes effect, or hours or days later (retroactive)."""
    account_id = draw(st.sampled_from(accounts))
    occurred = draw(occurrences(profile))
    detail = draw(subscription_details(account_id, occurred))
    return Envelope(draw(bus_times(occurred, profile.change_delays)), "Subscription Changed", detail)


@st.composite
def columns(draw: st.DrawFn) -> list[str]:
    """The contacts of a renamed status column: a run of the pool (wrapping around), large or small."""
    start = draw(st.integers(0, len(CONTACT_POOL) - 1))
    size = draw(st.sampled_from(RENAMED_COLUMN_SIZES))
    return [CONTACT_POOL[(start + offset) % len(CONTACT_POOL)] for offset in range(size)]


@st.composite
def activities(draw: st.DrawFn, accounts: tuple[str, ...], profile: Profile) -> Envelope:
    """Contact activity of any kind, on contacts of a small pool; the first account is the busiest."""
    account_id = draw(st.sampled_from((accounts[0], *accounts)))
    detail_type = draw(st.sampled_from(ACTIVITY_TYPES))
    occurred = draw(occurrences(profile))
    zone_name = draw(st.sampled_from(ZONES))
    detail: dict[str, Any] = {"accountId": account_id}
    if detail_type == "Status Renamed":
        detail["statusId"] = draw(st.sampled_from(("st-new", "st-contacted", "st-won")))
    else:
        detail["contactId"] = draw(st.sampled_from(CONTACT_POOL))
    detail["occurredAt"] = local_text(occurred, zone_name)
    number = draw(st.integers(1, 99))
    match detail_type:
        case "Contact Created":
            detail["origin"] = draw(st.sampled_from(("manual", "funnel")))
            if detail["origin"] == "funnel":
                detail["funnelId"] = f"fun-{number}"
        case "Contact Status Changed":
            if draw(st.booleans()):
                detail["fromStatusId"] = "st-new"
            detail["toStatusId"] = "st-contacted"
        case "Message Sent":
            detail["channel"] = draw(st.sampled_from(("email", "whatsapp")))
            detail["messageId"] = f"msg-{number}"
        case "Note Added":
            detail["noteId"] = f"note-{number}"
        case "Contact Property Changed":
            detail["propertyKey"] = draw(st.sampled_from(("phone", "email", "company")))
            detail["change"] = draw(st.sampled_from(("created", "updated")))
        case _:
            detail["oldName"], detail["newName"] = "Contacted", "In conversation"
            detail["contactIds"] = draw(columns())
    return Envelope(draw(bus_times(occurred, profile.delays)), detail_type, detail)


INVALID: dict[str, Callable[[Envelope], Envelope]] = {
    "contact id with a space": lambda e: Envelope(
        e.time, e.detail_type, {**e.detail, "contactId": "c 01", "contactIds": ["c01", "c 02"]}
    ),
    "occurredAt without offset": lambda e: Envelope(
        e.time, e.detail_type, {**e.detail, "occurredAt": iso(e.time).removesuffix("Z")}
    ),
    "unknown detail-type": lambda e: Envelope(e.time, "Contact Deleted", e.detail),
    "missing accountId": lambda e: Envelope(
        e.time, e.detail_type, {k: v for k, v in e.detail.items() if k != "accountId"}
    ),
    "occurredAt 10 minutes after time": lambda e: Envelope(
        e.time, e.detail_type, {**e.detail, "occurredAt": iso(e.time + timedelta(minutes=10))}
    ),
    "unknown plan": lambda e: Envelope(
        e.time,
        "Subscription Changed",
        {**e.detail, "plan": "platinum", "billingCycle": "monthly", "addonContacts": 0},
    ),
}


@st.composite
def invalid_events(draw: st.DrawFn, accounts: tuple[str, ...], profile: Profile) -> Envelope:
    """A schema violation of SPEC §2: rejected, never counted."""
    return INVALID[draw(st.sampled_from(sorted(INVALID)))](draw(activities(accounts, profile)))


@st.composite
def months(draw: st.DrawFn, profile: Profile = WHOLE_MONTH) -> list[str]:
    """A month as an archive: the envelopes in delivery order (non-decreasing bus time), with duplicates
    (the same line again, or the same event put on the bus again later) among them."""
    accounts = ACCOUNT_IDS[: draw(st.integers(2, 4))]
    planned = [draw(first_subscriptions(account)) for account in accounts if draw(st.integers(0, 5))]
    planned += draw(st.lists(subscription_changes(accounts, profile), max_size=profile.changes))
    fewest, most = profile.activities
    planned += draw(st.lists(activities(accounts, profile), min_size=fewest, max_size=most))
    planned += draw(st.lists(invalid_events(accounts, profile), max_size=3))
    identified = [(envelope, f"ev-{index:02d}") for index, envelope in enumerate(planned)]
    copies = draw(st.lists(st.tuples(st.integers(0, len(identified) - 1), st.integers(0, 3)), max_size=4))
    resent = draw(st.lists(st.tuples(st.integers(0, len(identified) - 1), st.integers(0, 86400)), max_size=2))
    # a copy is the same line, delivered right after the original or after others of the same second;
    # a resend is the same event (id, detail) put on the bus again later
    keyed = [
        (envelope.time, index, 0, envelope.line(event_id))
        for index, (envelope, event_id) in enumerate(identified)
    ]
    keyed += [
        (identified[index][0].time, index, rank + 1, identified[index][0].line(identified[index][1]))
        for index, rank in copies
    ]
    for index, later in resent:
        envelope, event_id = identified[index]
        again = Envelope(envelope.time + timedelta(seconds=later), envelope.detail_type, envelope.detail)
        keyed.append((again.time, len(identified) + index, 0, again.line(event_id)))
    return [line for *_, line in sorted(keyed)]


@st.composite
def splits(draw: st.DrawFn, events: int) -> tuple[int, ...]:
    """Batch sizes, used in turn (small ones often: they move the boundaries most)."""
    size = st.one_of(st.integers(1, 8), st.integers(1, MAX_BATCH_SIZE))
    return tuple(draw(st.lists(size, min_size=1, max_size=max(1, min(6, events)))))


# ---- replay ----


def replay(
    lines: list[str], batch_sizes: tuple[int, ...] = (1,), redelivered: frozenset[int] = frozenset()
) -> dict[str, Any]:
    """The report of `lines` replayed up to `NOW`, without `stats` (the only section batching may change)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "month.jsonl"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        report = simulate(
            SimulationOptions(events_path=path, now=NOW, batch_sizes=batch_sizes, redelivered=redelivered)
        )
    return {section: report[section] for section in COMPARED}


PROPERTY_SETTINGS = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(month=months(), data=st.data())
def test_the_report_does_not_depend_on_batch_boundaries(month: list[str], data: st.DataObject) -> None:
    # Given a month, replayed one event per batch
    baseline = replay(month)
    # When it is replayed in batches of sizes Hypothesis draws
    batch_sizes = data.draw(splits(len(month)), label="batch_sizes")
    split = replay(month, batch_sizes)
    # Then invoices, usage, alerts, rejected and late events are the same
    assert split == baseline


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(month=months(), data=st.data())
def test_the_report_does_not_depend_on_redelivery(month: list[str], data: st.DataObject) -> None:
    # Given a month, replayed one event per batch
    baseline = replay(month)
    # When it is replayed in batches Hypothesis draws, some messages delivered a second time by SQS
    batch_sizes = data.draw(splits(len(month)), label="batch_sizes")
    redelivered = frozenset(data.draw(st.sets(st.integers(0, len(month) - 1)), label="redelivered"))
    again = replay(month, batch_sizes, redelivered)
    # Then invoices, usage, alerts, rejected and late events are the same
    assert again == baseline


KEPT_MONTHS = sorted(INVARIANCE_DIR.glob("*.jsonl"))
KEPT_BATCHINGS = {
    "one event per batch": ((1,), frozenset[int]()),
    "one batch": ((MAX_BATCH_SIZE,), frozenset[int]()),
    "uneven batches, every third line redelivered": ((7, 3, 40), frozenset(range(0, 1000, 3))),
}


@pytest.mark.parametrize("batching", KEPT_BATCHINGS, ids=list(KEPT_BATCHINGS))
@pytest.mark.parametrize("month", KEPT_MONTHS, ids=[path.stem for path in KEPT_MONTHS])
def test_a_kept_month_reports_what_was_checked_in_every_batching(month: Path, batching: str) -> None:
    # Given a month kept with its hand-checked report (`<month>.expected.json`)
    expected = json.loads(month.with_suffix(".expected.json").read_text(encoding="utf-8"))
    lines = month.read_text(encoding="utf-8").splitlines()
    # When it is replayed in this batching
    batch_sizes, redelivered = KEPT_BATCHINGS[batching]
    report = replay(lines, batch_sizes, frozenset(index for index in redelivered if index < len(lines)))
    # Then the report is the checked one
    assert report == expected
