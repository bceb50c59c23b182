"""Months of CRM events in the regimes a real customer base produces, for the cost benchmark (SPEC §6).

`make bench`'s sample month has about thirty accounts; cost per activation must hold for many small accounts
and a few large ones, for live-traffic batches of about ten, and for one hot account. Each scenario here
plans a month with the sample month generator's own building blocks (`scripts/generate_sample_month.py`:
accounts, subscriptions effective before the month, contacts touched about three times by the five
single-contact detail types, claim-checked renames), so every envelope has the same shape and is valid per
the contract, and `expectations` of the plan still says what a correct replay counts. Everything comes from
one seeded `random.Random`: a scenario and a seed always give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from scripts import generate_sample_month as sample_month
else:  # imported by a script run as `python scripts/...`: its folder is first on sys.path
    import generate_sample_month as sample_month

Month = sample_month.Month
Account = sample_month.Account

YEAR, MONTH = 2026, 10
MONTH_EVENTS = 40_000
TOUCHES_PER_CONTACT = 3
RENAME_SHARE = 0.002
"""Inline `Status Renamed` events per event of a many-accounts month."""
LEGACY_SHARE = 0.10
UNSUBSCRIBED_SHARE = 0.05
ADDON_SHARE = 0.15
YEARLY_SHARE = 0.25
ACCOUNT_SIZE_SIGMA = 1.6
"""Spread of the log-normal active-contact counts: most accounts small, a few carry much of the month."""
FIT_SIGMA = 0.35
"""How far an account's plan sits from its usage (some over their allowance, most within it)."""
PLAN_STEPS = (("start", 50), ("grow", 250), ("expand", 500), ("scale", 2000))
TIMEZONES: tuple[tuple[str | None, float], ...] = (
    ("Europe/Berlin", 0.45),
    (None, 0.20),
    ("Europe/London", 0.15),
    ("America/New_York", 0.12),
    ("Asia/Tokyo", 0.08),
)
HOT_RENAME_CONTACTS = 100_000
HOT_ACCOUNT_CONTACTS = 1_000
BURST_EVENTS_PER_SECOND = 5_000
BURST_SECONDS = 3
BUS_DELAY_SECONDS = (0.2, 1.5)
CREATED_FIRST_SHARE = 0.35
"""Contacts whose first touch creates them, as in the sample month."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A month to generate, and the SQS batch sizes to replay it with (None: the template's, full)."""

    name: str
    description: str
    plan: Callable[[int], sample_month.Month]
    batch_sizes: tuple[int | None, ...]

    def generate(self, seed: int, out: Path) -> sample_month.Month:
        """Write the envelopes (and claim-check objects beside them) to `out`; returns the plan."""
        month = self.plan(seed)
        sample_month.write_month(month, out)
        return month


# ---- many accounts ----


def account_sizes(rng: Random, accounts: int, contacts: int) -> list[int]:
    """Active contacts per account: at least one each, the rest shared by log-normal weights, so most
    accounts are small and a few are large; the sizes add up to `contacts`."""
    weights = [rng.lognormvariate(0.0, ACCOUNT_SIZE_SIGMA) for _ in range(accounts)]
    spare = max(0, contacts - accounts)
    shares = [spare * weight / sum(weights) for weight in weights]
    sizes = [1 + math.floor(share) for share in shares]
    by_remainder = sorted(range(accounts), key=lambda index: shares[index] - math.floor(shares[index]))
    for index in by_remainder[len(by_remainder) - (accounts + spare - sum(sizes)) :]:
        sizes[index] += 1
    return sizes


def fitting_plan(rng: Random, active: int) -> tuple[str, int]:
    """The plan (and add-on contacts) an account of `active` contacts plausibly bought: the smallest whose
    allowance covers a need near its usage, with add-ons above `scale` and sometimes below it."""
    need = active * rng.lognormvariate(0.0, FIT_SIGMA)
    for plan, included in PLAN_STEPS:
        if need <= included:
            addons = round(included * rng.uniform(0.1, 0.5), -1) if rng.random() < ADDON_SHARE else 0
            return plan, int(addons)
    return "scale", int(math.ceil((need - 2000) / 100) * 100)


def roster(rng: Random, sizes: list[int]) -> tuple[sample_month.Account, ...]:
    """Accounts of the given sizes on plausible plans: about 10 % legacy, 5 % without a subscription, a
    quarter yearly, in a few time zones."""
    zones, zone_weights = zip(*TIMEZONES, strict=True)
    accounts = []
    for number, active in enumerate(sizes):
        draw = rng.random()
        timezone = rng.choices(zones, weights=zone_weights)[0]
        cycle = "yearly" if rng.random() < YEARLY_SHARE else "monthly"
        if draw < UNSUBSCRIBED_SHARE:
            plan, addons, timezone = None, 0, None
        elif draw < UNSUBSCRIBED_SHARE + LEGACY_SHARE:
            plan, addons = "legacy", 0
        else:
            plan, addons = fitting_plan(rng, active)
        accounts.append(Account(f"acct-{number:05d}", plan, cycle, addons, timezone, active))
    return tuple(accounts)


def inline_renames(month: sample_month.Month, pools: dict[str, list[str]], count: int) -> None:
    """`count` renamed status columns (fewer when fewer accounts have ten contacts), each listing a tenth
    to two fifths of its account's (already active) contacts inline."""
    eligible = [account for account in month.accounts if len(pools[account.account_id]) >= 10]
    chosen = month.rng.sample(eligible, min(count, len(eligible)))
    for account in chosen:
        pool = pools[account.account_id]
        members = month.rng.sample(pool, min(1000, max(5, round(len(pool) * month.rng.uniform(0.1, 0.4)))))
        at = sample_month.working_instant(month.rng, account.zone, month.year, month.month)
        sample_month.rename(
            month, account, at, month.rng.choice(sample_month.STATUSES), {"contactIds": members}
        )


def many_accounts(accounts: int, events: int = MONTH_EVENTS) -> Callable[[int], sample_month.Month]:
    """About `events` envelopes over `accounts` accounts of skewed sizes: every subscribed account's
    `Subscription Changed` (effective in the previous month), a few inline renames, and activity that
    touches each active contact about three times."""

    def plan(seed: int) -> sample_month.Month:
        rng = Random(seed)
        renames = max(3, round(events * RENAME_SHARE))
        subscriptions = round(accounts * (1 - UNSUBSCRIBED_SHARE))
        touches = events - subscriptions - renames
        sizes = account_sizes(rng, accounts, max(accounts, touches // TOUCHES_PER_CONTACT))
        month = Month(rng, YEAR, MONTH, roster(rng, sizes))
        sample_month.subscriptions(month)
        pools = sample_month.contact_pools(month)
        inline_renames(month, pools, renames)
        sample_month.activity(month, pools, max(events - len(month.planned), sum(sizes)))
        return month

    return plan


# ---- one hot account ----


def hot_rename(contacts: int = HOT_RENAME_CONTACTS) -> Callable[[int], sample_month.Month]:
    """One scale account working with a thousand contacts (three touches each) renames a status column
    of `contacts` contacts, named by a claim-check object: the fan-out path at its largest."""

    def plan(seed: int) -> sample_month.Month:
        account = Account(
            sample_month.SCALE_ACCOUNT, "scale", "monthly", 0, "Europe/Berlin", HOT_ACCOUNT_CONTACTS
        )
        month = Month(Random(seed), YEAR, MONTH, (account,), rename_contacts=contacts)
        sample_month.subscriptions(month)
        pools = sample_month.contact_pools(month)
        sample_month.claim_checked_rename(month, pools)
        sample_month.activity(month, pools, HOT_ACCOUNT_CONTACTS * TOUCHES_PER_CONTACT)
        return month

    return plan


def burst(
    events_per_second: int = BURST_EVENTS_PER_SECOND, seconds: int = BURST_SECONDS
) -> Callable[[int], sample_month.Month]:
    """One scale account sends `events_per_second` events a second for `seconds` seconds (a bulk import,
    a campaign): each contact touched three times within the burst, bus times within a second or two."""

    def plan(seed: int) -> sample_month.Month:
        rng = Random(seed)
        events = events_per_second * seconds
        account = Account("acct-burst", "scale", "monthly", 0, "Europe/Berlin", events // TOUCHES_PER_CONTACT)
        month = Month(rng, YEAR, MONTH, (account,))
        sample_month.subscriptions(month)
        pools = sample_month.contact_pools(month)
        start = datetime(YEAR, MONTH, 14, 10, 0, tzinfo=account.zone)
        touches = sorted(
            (rng.uniform(0, seconds), contact_id)
            for contact_id in pools[account.account_id]
            for _ in range(TOUCHES_PER_CONTACT)
        )
        kinds = list(sample_month.TOUCH_WEIGHTS)
        weights = list(sample_month.TOUCH_WEIGHTS.values())
        touched: set[str] = set()
        for offset, contact_id in touches:
            at = start + timedelta(seconds=offset)
            created = contact_id not in touched and rng.random() < CREATED_FIRST_SHARE
            detail_type = sample_month.CREATED if created else rng.choices(kinds, weights=weights)[0]
            touched.add(contact_id)
            detail = sample_month.contact_detail(month, account, contact_id, detail_type, at)
            month.add(detail_type, detail, at + timedelta(seconds=rng.uniform(*BUS_DELAY_SECONDS)), "burst")
        month.expected[(account.account_id, month.period)].update(pools[account.account_id])
        return month

    return plan


# ---- the suites ----

NOW = datetime(2026, 11, 2, tzinfo=UTC)
"""The final close run of every scenario: after every account's October closed, in every zone."""
FULL_AND_LIVE = (None, 10)


def default_scenarios() -> list[Scenario]:
    """30, 300 and 3,000 accounts per 40,000 events, each with full batches and batches of 10."""
    return [
        Scenario(
            f"{accounts} accounts", f"{MONTH_EVENTS:,} events over {accounts:,} accounts", plan, FULL_AND_LIVE
        )
        for accounts, plan in ((count, many_accounts(count)) for count in (30, 300, 3_000))
    ]


def large_scenarios() -> list[Scenario]:
    """10,000 accounts, a 100,000-contact rename, and a burst of 5,000 events a second."""
    return [
        Scenario(
            "10000 accounts",
            f"{MONTH_EVENTS:,} events over 10,000 accounts",
            many_accounts(10_000),
            FULL_AND_LIVE,
        ),
        Scenario(
            "hot rename",
            f"one account renames a column of {HOT_RENAME_CONTACTS:,} contacts (claim-check)",
            hot_rename(),
            (None,),
        ),
        Scenario(
            "burst",
            f"one account sends {BURST_EVENTS_PER_SECOND:,} events a second for {BURST_SECONDS} s",
            burst(),
            (10,),
        ),
    ]
