"""Generate a realistic month of CRM EventBridge envelopes (JSON lines) for `metering simulate`.

Why: billing previews, demos and benchmarks need a month that looks like production and whose outcome is
known in advance. The file holds ten accounts on every plan (monthly and yearly, add-ons, a mid-month
upgrade, a legacy plan, an account without any subscription) in three time zones, contacts touched about
three times each by all six activity types, a claim-checked status rename of 2,500 contacts, events at both
edges of the month, a few events that must be rejected, a few late ones and the start of the next month.

Output: `--out` (one envelope per line, in delivery order, `time` never decreasing) and the claim-check
objects under `<out without .jsonl>.objects/<key>`, the folder `simulate` uploads to the claim-check bucket.
Everything comes from one seeded `random.Random`, so a seed always gives the same bytes. A summary of what
the replay must report (active contacts, allowance, overusage per account) is printed on stderr.
"""

from __future__ import annotations

import argparse
import calendar
import json
import random
import shutil
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

DEFAULT_EVENTS = 12_000
DEFAULT_OUT = Path("events/sample-month.jsonl")
BUCKET = "crm-claim-checks"
AWS_ACCOUNT = "123456789012"
REGION = "eu-central-1"
BERLIN = "Europe/Berlin"
CLAIM_CHECK_CONTACTS = 2_500
LATE_EVENTS = 5
NEXT_MONTH_EVENTS = 12
BAD_EVENT_SHARE = 0.002
MAX_BUS_DELAY_SECONDS = 290

CREATED = "Contact Created"
STATUS_CHANGED = "Contact Status Changed"
MESSAGE_SENT = "Message Sent"
NOTE_ADDED = "Note Added"
PROPERTY_CHANGED = "Contact Property Changed"
STATUS_RENAMED = "Status Renamed"
SUBSCRIPTION_CHANGED = "Subscription Changed"

INCLUDED_CONTACTS = {"start": 50, "grow": 250, "expand": 500, "scale": 2000, "legacy": 0}
OVERUSAGE_CENTS = 25
TOUCH_WEIGHTS = {MESSAGE_SENT: 0.35, STATUS_CHANGED: 0.25, NOTE_ADDED: 0.2, PROPERTY_CHANGED: 0.2}
STATUSES = ("st-new", "st-contacted", "st-meeting", "st-offer", "st-won", "st-lost")
PROPERTY_KEYS = ("phone", "company", "lead_score", "city", "custom.budget", "custom.source", "birthday")
RENAMES = (("Neu", "Eingang"), ("Contacted", "In touch"), ("Offer sent", "Proposal"), ("Won", "Customer"))

Json = dict[str, object]


@dataclass(frozen=True, slots=True)
class Account:
    """One CRM account of the sample: its subscription and how many contacts it works with in the month."""

    account_id: str
    plan: str | None  # None: the account never had a subscription
    cycle: str
    addons: int
    timezone: str | None  # None: the subscription names no zone (the deployment default, UTC)
    base_active: int  # distinct active contacts at the default --events
    upgrade_to: str | None = None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone or "UTC")

    @property
    def final_plan(self) -> str | None:
        return self.upgrade_to or self.plan


ROSTER: tuple[Account, ...] = (
    Account("acct-start-berlin", "start", "monthly", 0, BERLIN, 70),
    Account("acct-grow-monthly", "grow", "monthly", 0, BERLIN, 300),
    Account("acct-grow-yearly-nyc", "grow", "yearly", 0, "America/New_York", 270),
    Account("acct-expand", "expand", "monthly", 0, BERLIN, 480),
    Account("acct-scale", "scale", "yearly", 0, BERLIN, 1900),
    Account("acct-legacy", "legacy", "monthly", 0, BERLIN, 400),
    Account("acct-grow-addons", "grow", "monthly", 100, BERLIN, 365),
    Account("acct-upgrade", "start", "monthly", 0, BERLIN, 200, upgrade_to="grow"),
    Account("acct-start-utc", "start", "yearly", 0, None, 45),
    Account("acct-no-subscription", None, "monthly", 0, None, 60),
)
SCALE_ACCOUNT = "acct-scale"
LATE_ACCOUNTS = (
    "acct-start-berlin",
    "acct-grow-monthly",
    "acct-grow-yearly-nyc",
    "acct-expand",
    "acct-start-utc",
)


def roster(scale: float) -> tuple[Account, ...]:
    """The accounts of a month `scale` times the default size: more copies of the roster (suffixed -02,
    -03, ...) rather than bigger accounts, so each account stays as plausible as at the default size."""
    copies = max(1, round(scale))
    factor = scale / copies
    return tuple(
        replace(
            account,
            account_id=account.account_id + (f"-{copy:02d}" if copy > 1 else ""),
            base_active=max(1, round(account.base_active * factor)),
        )
        for copy in range(1, copies + 1)
        for account in ROSTER
    )


@dataclass(slots=True)
class Month:
    """The month being generated: envelopes planned so far, claim-check objects and the expected counts."""

    rng: random.Random
    year: int
    month: int
    accounts: tuple[Account, ...]
    rename_contacts: int = CLAIM_CHECK_CONTACTS
    planned: list[tuple[datetime, int, Json]] = field(default_factory=list)
    objects: dict[str, str] = field(default_factory=dict)
    expected: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def period(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def next_month(self) -> tuple[int, int]:
        return (self.year + 1, 1) if self.month == 12 else (self.year, self.month + 1)

    @property
    def previous_month(self) -> tuple[int, int]:
        return (self.year - 1, 12) if self.month == 1 else (self.year, self.month - 1)

    def account(self, account_id: str) -> Account:
        return next(account for account in self.accounts if account.account_id == account_id)

    def hex_id(self, prefix: str, bits: int = 48) -> str:
        return f"{prefix}{self.rng.getrandbits(bits):0{bits // 4}x}"

    def add(self, detail_type: str, detail: Json, time: datetime, kind: str) -> str:
        """Plan one envelope; returns its id."""
        event_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        envelope: Json = {
            "version": "0",
            "id": event_id,
            "detail-type": detail_type,
            "source": "crm",
            "account": AWS_ACCOUNT,
            "time": time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": [],
            "detail": detail,
        }
        self.planned.append((time.astimezone(UTC).replace(microsecond=0), len(self.planned), envelope))
        self.kinds[kind] += 1
        return event_id


# ---- time ----


def stamp(instant: datetime, account: Account) -> str:
    """`occurredAt` as the CRM writes it: the account's local time with its offset, or `Z` for UTC."""
    text = instant.isoformat(timespec="milliseconds")
    return text if account.timezone else text.replace("+00:00", "Z")


def bus_time(rng: random.Random, occurred: datetime) -> datetime:
    """When EventBridge got the event: seconds to minutes later; rarely a CRM clock a little ahead."""
    if rng.random() < 0.003:
        return occurred - timedelta(seconds=rng.uniform(10, 120))
    return occurred + timedelta(seconds=min(MAX_BUS_DELAY_SECONDS, 2 + rng.expovariate(1 / 25)))


def working_instant(rng: random.Random, zone: ZoneInfo, year: int, month: int) -> datetime:
    """A moment of the month in `zone`, weighted to weekdays and business hours."""
    days = calendar.monthrange(year, month)[1]
    while True:
        day = rng.randint(1, days)
        if date(year, month, day).weekday() < 5 or rng.random() < 0.3:
            break
    hour = rng.randint(8, 17) if rng.random() < 0.8 else rng.randint(0, 23)
    return local(rng, zone, date(year, month, day), hour)


def local(rng: random.Random, zone: ZoneInfo, day: date, hour: int) -> datetime:
    """A random moment within one local hour of a day."""
    minute, second, milli = rng.randint(0, 59), rng.randint(0, 59), rng.randint(0, 999)
    return datetime(day.year, day.month, day.day, hour, minute, second, milli * 1000, tzinfo=zone)


def month_end_evening(rng: random.Random, zone: ZoneInfo, year: int, month: int) -> datetime:
    """Late on the last evening of the month, local time (the edge the time zone decides)."""
    return local(rng, zone, date(year, month, calendar.monthrange(year, month)[1]), rng.choice((22, 23)))


# ---- details ----


def _created(month: Month, detail: Json) -> None:
    detail["origin"] = "funnel" if month.rng.random() < 0.45 else "manual"
    if detail["origin"] == "funnel" and month.rng.random() < 0.7:
        detail["funnelId"] = f"funnel-{month.rng.randint(1, 12)}"


def _status_changed(month: Month, detail: Json) -> None:
    start, end = month.rng.sample(STATUSES, 2)
    if month.rng.random() < 0.8:
        detail["fromStatusId"] = start
    detail["toStatusId"] = end


def _message_sent(month: Month, detail: Json) -> None:
    detail["channel"] = "email" if month.rng.random() < 0.7 else "whatsapp"
    detail["messageId"] = month.hex_id("msg_", 64)


def _note_added(month: Month, detail: Json) -> None:
    detail["noteId"] = month.hex_id("note_")


def _property_changed(month: Month, detail: Json) -> None:
    detail["propertyKey"] = month.rng.choice(PROPERTY_KEYS)
    detail["change"] = "created" if month.rng.random() < 0.25 else "updated"


DETAIL_FIELDS: dict[str, Callable[[Month, Json], None]] = {
    CREATED: _created,
    STATUS_CHANGED: _status_changed,
    MESSAGE_SENT: _message_sent,
    NOTE_ADDED: _note_added,
    PROPERTY_CHANGED: _property_changed,
}


def contact_detail(month: Month, account: Account, contact_id: str, detail_type: str, at: datetime) -> Json:
    detail: Json = {
        "accountId": account.account_id,
        "contactId": contact_id,
        "occurredAt": stamp(at, account),
    }
    DETAIL_FIELDS[detail_type](month, detail)
    return detail


def touch(
    month: Month, account: Account, contact_id: str, detail_type: str, at: datetime, *, kind: str = "activity"
) -> str:
    """One valid, on-time activity event for a contact."""
    detail = contact_detail(month, account, contact_id, detail_type, at)
    return month.add(detail_type, detail, bus_time(month.rng, at), kind)


# ---- the month's parts ----


def subscriptions(month: Month) -> None:
    """Each subscribed account's plan, taking effect in the previous month; the upgrade mid-month."""
    year, previous = month.previous_month
    for account in month.accounts:
        if account.plan is None:
            continue
        at = working_instant(month.rng, account.zone, year, previous).replace(day=month.rng.randint(1, 20))
        subscribe(month, account, account.plan, at)
        if account.upgrade_to:
            upgrade_at = local(month.rng, account.zone, date(month.year, month.month, 15), 10)
            subscribe(month, account, account.upgrade_to, upgrade_at)


def subscribe(month: Month, account: Account, plan: str, at: datetime) -> None:
    detail: Json = {
        "accountId": account.account_id,
        "occurredAt": stamp(at, account),
        "plan": plan,
        "billingCycle": account.cycle,
        "addonContacts": account.addons,
    }
    if account.timezone:
        detail["timezone"] = account.timezone
    month.add(SUBSCRIPTION_CHANGED, detail, bus_time(month.rng, at), "subscription")


def contact_pools(month: Month) -> dict[str, list[str]]:
    """The contacts each account works with this month (each gets at least one touch)."""
    return {account.account_id: unique_ids(month, account.base_active) for account in month.accounts}


def unique_ids(month: Month, count: int) -> list[str]:
    ids: dict[str, None] = {}
    while len(ids) < count:
        ids[month.hex_id("ct_")] = None
    return list(ids)


def touch_counts(month: Month, contacts: int, touches: int) -> list[int]:
    """Touches per contact: one each, the rest spread unevenly (a few contacts get many)."""
    counts = [1] * contacts
    weights = [month.rng.expovariate(1.0) for _ in range(contacts)]
    for index in month.rng.choices(range(contacts), weights=weights, k=max(0, touches - contacts)):
        counts[index] += 1
    return counts


def activity(month: Month, pools: dict[str, list[str]], touches: int) -> None:
    """Every contact of every pool touched `touch_counts` times over the month; a few on its last evening."""
    flat = [(account, contact) for account in month.accounts for contact in pools[account.account_id]]
    for (account, contact_id), count in zip(flat, touch_counts(month, len(flat), touches), strict=True):
        instants = [working_instant(month.rng, account.zone, month.year, month.month) for _ in range(count)]
        if month.rng.random() < 0.01:
            instants[0] = month_end_evening(month.rng, account.zone, month.year, month.month)
        kinds = month.rng.choices(list(TOUCH_WEIGHTS), weights=list(TOUCH_WEIGHTS.values()), k=count)
        if month.rng.random() < 0.35:
            kinds[0] = CREATED
        for at, detail_type in zip(sorted(instants), kinds, strict=True):
            touch(month, account, contact_id, detail_type, at)
        month.expected[(account.account_id, month.period)].add(contact_id)


def inline_renames(month: Month, pools: dict[str, list[str]]) -> None:
    """One renamed status column per account, its (already active) contacts listed inline."""
    for account in month.accounts:
        pool = pools[account.account_id]
        members = month.rng.sample(pool, min(len(pool), month.rng.randint(8, 150), 1000))
        at = working_instant(month.rng, account.zone, month.year, month.month)
        rename(month, account, at, month.rng.choice(STATUSES), {"contactIds": members})


def rename(month: Month, account: Account, at: datetime, status_id: str, contacts: Json) -> str:
    old, new = month.rng.choice(RENAMES)
    detail: Json = {
        "accountId": account.account_id,
        "statusId": status_id,
        "occurredAt": stamp(at, account),
        "oldName": old,
        "newName": new,
        **contacts,
    }
    return month.add(STATUS_RENAMED, detail, bus_time(month.rng, at), "rename")


def claim_checked_rename(month: Month, pools: dict[str, list[str]]) -> None:
    """The scale account renames a column of 2,500 contacts (by default): too many to inline, so it names an
    S3 object."""
    account = month.account(SCALE_ACCOUNT)
    pool = pools[SCALE_ACCOUNT]
    extra = unique_ids(month, max(700, month.rename_contacts + 100 - len(pool)))
    members = month.rng.sample(pool + extra, month.rename_contacts)
    status_id = month.hex_id("st-col-", 32)
    key = f"renames/{SCALE_ACCOUNT}/{status_id}.txt"
    month.objects[key] = "\n".join(members) + "\n"
    at = local(month.rng, account.zone, date(month.year, month.month, 20), 11)
    rename(month, account, at, status_id, {"contactIdsObject": {"bucket": BUCKET, "key": key}})
    month.expected[(SCALE_ACCOUNT, month.period)].update(members)


def next_month_events(month: Month, pools: dict[str, list[str]]) -> None:
    """The first hours of the next month: half just after local midnight, half in the morning."""
    year, nxt = month.next_month
    period = f"{year:04d}-{nxt:02d}"
    for index in range(NEXT_MONTH_EVENTS):
        account = month.accounts[index % len(month.accounts)]
        hour = month.rng.choice((0, 1)) if index % 2 == 0 else month.rng.randint(6, 9)
        at = local(month.rng, account.zone, date(year, nxt, 1), hour)
        contact_id = month.rng.choice(pools[account.account_id])
        touch(month, account, contact_id, month.rng.choice(list(TOUCH_WEIGHTS)), at, kind="next-month")
        month.expected[(account.account_id, period)].add(contact_id)


def late_events(month: Month) -> None:
    """Events of this month the bus delivers on the 1st afternoon, past every account's close (end + 6 h)."""
    year, nxt = month.next_month
    delivered = datetime(year, nxt, 1, 16, tzinfo=UTC)
    for index, account_id in enumerate(LATE_ACCOUNTS):
        account = month.account(account_id)
        at = month_end_evening(month.rng, account.zone, month.year, month.month)
        detail_type = month.rng.choice(list(TOUCH_WEIGHTS))
        detail = contact_detail(month, account, month.hex_id("ct_late_"), detail_type, at)
        month.add(detail_type, detail, delivered + timedelta(minutes=37 * index + 3), kind="late")


def bad_events(month: Month, count: int) -> None:
    """Events the recorder must reject, one kind after another, at random moments of the month."""
    makers: Sequence[Callable[[Month, Account, datetime], tuple[str, Json, datetime]]] = (
        _bad_contact_id,
        _missing_contact_id,
        _unknown_detail_type,
        _naive_occurred_at,
        _missing_claim_check,
        _from_the_future,
    )
    for index in range(count):
        account = month.rng.choice(month.accounts)
        at = working_instant(month.rng, account.zone, month.year, month.month)
        detail_type, detail, time = makers[index % len(makers)](month, account, at)
        month.add(detail_type, detail, time, kind="rejected")


def _bad_contact_id(month: Month, account: Account, at: datetime) -> tuple[str, Json, datetime]:
    detail = contact_detail(month, account, month.hex_id("ct_") + "#1", MESSAGE_SENT, at)
    return MESSAGE_SENT, detail, bus_time(month.rng, at)


def _missing_contact_id(month: Month, account: Account, at: datetime) -> tuple[str, Json, datetime]:
    detail = contact_detail(month, account, "", NOTE_ADDED, at)
    del detail["contactId"]
    return NOTE_ADDED, detail, bus_time(month.rng, at)


def _unknown_detail_type(month: Month, account: Account, at: datetime) -> tuple[str, Json, datetime]:
    detail = contact_detail(month, account, month.hex_id("ct_bad_"), NOTE_ADDED, at)
    return "Contact Deleted", detail, bus_time(month.rng, at)


def _naive_occurred_at(month: Month, account: Account, at: datetime) -> tuple[str, Json, datetime]:
    detail = contact_detail(month, account, month.hex_id("ct_bad_"), STATUS_CHANGED, at)
    detail["occurredAt"] = at.replace(tzinfo=None).isoformat(timespec="seconds")
    return STATUS_CHANGED, detail, bus_time(month.rng, at)


def _missing_claim_check(month: Month, account: Account, at: datetime) -> tuple[str, Json, datetime]:
    key = f"renames/{account.account_id}/{month.hex_id('missing-', 32)}.txt"
    detail: Json = {
        "accountId": account.account_id,
        "statusId": month.rng.choice(STATUSES),
        "occurredAt": stamp(at, account),
        "oldName": "Lead",
        "newName": "Prospect",
        "contactIdsObject": {"bucket": BUCKET, "key": key},
    }
    return STATUS_RENAMED, detail, bus_time(month.rng, at)


def _from_the_future(month: Month, account: Account, at: datetime) -> tuple[str, Json, datetime]:
    detail = contact_detail(month, account, month.hex_id("ct_bad_"), PROPERTY_CHANGED, at)
    return PROPERTY_CHANGED, detail, at - timedelta(minutes=month.rng.randint(10, 90))


# ---- the whole month ----


def build_month(
    events: int, seed: int, year: int, month_number: int, rename_contacts: int = CLAIM_CHECK_CONTACTS
) -> Month:
    """Plan every envelope of the month, sized so the file has about `events` lines."""
    month = Month(random.Random(seed), year, month_number, roster(events / DEFAULT_EVENTS), rename_contacts)
    bad = max(6, round(events * BAD_EVENT_SHARE))
    subscriptions(month)
    pools = contact_pools(month)
    inline_renames(month, pools)
    claim_checked_rename(month, pools)
    next_month_events(month, pools)
    late_events(month)
    bad_events(month, bad)
    activity(month, pools, events - len(month.planned))
    return month


def write_month(month: Month, out: Path) -> None:
    """The envelopes in delivery order, then the claim-check objects beside them (replacing old ones)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as stream:
        for _, _, envelope in sorted(month.planned, key=lambda planned: (planned[0], planned[1])):
            stream.write(json.dumps(envelope, separators=(",", ":")) + "\n")
    objects_dir = objects_dir_of(out)
    if objects_dir.exists():
        shutil.rmtree(objects_dir)
    for key, body in month.objects.items():
        path = objects_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")


def objects_dir_of(out: Path) -> Path:
    return out.with_suffix(".objects")


@dataclass(frozen=True, slots=True)
class Expected:
    """What a correct replay reports for one account and period."""

    account: Account
    period: str
    active: int
    billed: bool  # an overusage invoice is due if over > 0
    allowance: int

    @property
    def over(self) -> int:
        return max(0, self.active - self.allowance) if self.billed else 0

    @property
    def amount_cents(self) -> int:
        return self.over * OVERUSAGE_CENTS


def expectations(month: Month) -> list[Expected]:
    """Usage of every account and period, by account in roster order; the month's periods are billed."""
    rows = []
    for account in month.accounts:
        plan = account.final_plan
        allowance = INCLUDED_CONTACTS[plan] + account.addons if plan else 0
        for (account_id, period), contacts in sorted(month.expected.items()):
            if account_id == account.account_id:
                billed = period == month.period and plan not in {None, "legacy"}
                rows.append(Expected(account, period, len(contacts), billed, allowance))
    return rows


def summary_lines(month: Month) -> list[str]:
    """The expectations as a table, with the envelope counts by kind and the invoice total."""
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(month.kinds.items()))
    header = ("account", "period", "plan (end)", "active", "allowance", "over", "EUR")
    lines = [
        f"{len(month.planned)} envelopes: {kinds}",
        "{:<24} {:<8} {:<16} {:>6} {:>9} {:>5} {:>8}".format(*header),
    ]
    rows = expectations(month)
    for row in rows:
        plan = row.account.final_plan
        label = f"{plan}/{row.account.cycle}" if plan else "(none: unbilled)"
        allowance = str(row.allowance) if row.billed else "-"
        lines.append(
            f"{row.account.account_id:<24} {row.period:<8} {label:<16} {row.active:>6} {allowance:>9} "
            f"{row.over:>5} {row.amount_cents / 100:>8.2f}"
        )
    invoiced = [row for row in rows if row.amount_cents]
    total = sum(row.amount_cents for row in invoiced) / 100
    lines.append(f"expected: {len(invoiced)} overusage invoices, EUR {total:.2f} in all")
    return lines


def generate(
    events: int,
    seed: int,
    year: int,
    month_number: int,
    out: Path,
    *,
    rename_contacts: int = CLAIM_CHECK_CONTACTS,
) -> Month:
    month = build_month(events, seed, year, month_number, rename_contacts)
    write_month(month, out)
    return month


def _month(value: str) -> tuple[int, int]:
    try:
        parsed = datetime.strptime(value, "%Y-%m")
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected YYYY-MM, e.g. 2026-10") from exc
    return parsed.year, parsed.month


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="about this many lines")
    parser.add_argument("--seed", type=int, default=202610, help="random seed (same seed, same file)")
    parser.add_argument("--month", type=_month, default=(2026, 10), help="the billing month, YYYY-MM")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON-lines file to write")
    parser.add_argument(
        "--rename-contacts", type=int, default=CLAIM_CHECK_CONTACTS, help="size of the claim-checked rename"
    )
    args = parser.parse_args(argv)
    year, month_number = args.month
    month = generate(
        args.events, args.seed, year, month_number, args.out, rename_contacts=args.rename_contacts
    )
    print(f"wrote {args.out} and {objects_dir_of(args.out)}/", file=sys.stderr)
    print("\n".join(summary_lines(month)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
