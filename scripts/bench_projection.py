"""How far each projection of an open period is off, on a generated three-month history.

Three consecutive months of the sample generator (`generate_sample_month.py`, the same roster of
accounts) give each account's contacts and when each became active. For the last month, the count reached
by day 10 and by day 20 is projected to the month's end with the straight line (`linear_projection`) and
with the previous month's shape (`shaped_projection`, what the Usage API uses where the previous period
was closed), the very functions the API calls, and compared with the count the month really ends with.
Prints the mean and the worst absolute error per method and day, as a share of the final count and in
contacts. Measures, never asserts.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from metering.outlook import PeriodShape, Projection, linear_projection, shaped_projection
from metering.rules import month_end, previous_period

if TYPE_CHECKING:
    from scripts import generate_sample_month as sample_month
else:  # run as `python scripts/bench_projection.py`: its folder is first on sys.path
    import generate_sample_month as sample_month

SUBSCRIPTION_CHANGED = "Subscription Changed"
DAYS = (10, 20)
METHODS = ("linear", "previous period's shape")


def activations(month: sample_month.Month) -> dict[str, dict[str, datetime]]:
    """When each contact of each account first became active in the month (in the account's zone)."""
    zones = {account.account_id: account.zone for account in month.accounts}
    first: dict[str, dict[str, datetime]] = defaultdict(dict)
    for _, _, envelope in month.planned:
        detail = envelope["detail"]
        if envelope["detail-type"] == SUBSCRIPTION_CHANGED or not isinstance(detail, dict):
            continue
        account_id = str(detail.get("accountId"))
        occurred = _instant(detail.get("occurredAt"))
        if account_id not in zones or occurred is None:
            continue
        if _period(occurred, zones[account_id]) != month.period:
            continue
        for contact_id in _contacts(detail, month.objects):
            known = first[account_id].get(contact_id)
            if known is None or occurred < known:
                first[account_id][contact_id] = occurred
    return first


def _instant(text: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def _period(instant: datetime, zone: ZoneInfo) -> str:
    return instant.astimezone(zone).strftime("%Y-%m")


def _contacts(detail: dict[str, Any], objects: dict[str, str]) -> Iterable[str]:
    if isinstance(detail.get("contactId"), str):
        yield detail["contactId"]
    if isinstance(detail.get("contactIds"), list):
        yield from (contact for contact in detail["contactIds"] if isinstance(contact, str))
    reference = detail.get("contactIdsObject")
    if isinstance(reference, dict) and reference.get("key") in objects:
        yield from objects[reference["key"]].split()


def bounds(period: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    return month_end(previous_period(period), zone), month_end(period, zone)


def projections(
    months: Sequence[sample_month.Month], min_contacts: int
) -> dict[tuple[int, str], list[tuple[int, int]]]:
    """(day, method) -> [(projected, final)] over every account of the last month with `min_contacts`."""
    previous, last = months[-2], months[-1]
    before, now_active = activations(previous), activations(last)
    results: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
    for account in last.accounts:
        times = sorted(now_active.get(account.account_id, {}).values())
        if len(times) < min_contacts:
            continue
        start, end = bounds(last.period, account.zone)
        earlier_start, earlier_end = bounds(previous.period, account.zone)
        shape = PeriodShape.of(list(before.get(account.account_id, {}).values()), earlier_start, earlier_end)
        for day in DAYS:
            now = start + timedelta(days=day)
            so_far = sum(1 for at in times if at < now)
            made: tuple[Projection, ...] = (
                linear_projection(so_far, start, end, now),
                shaped_projection(so_far, start, end, now, shape),
            )
            for method, projection in zip(METHODS, made, strict=True):
                results[(day, method)].append((projection.active_contacts, len(times)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=12_000, help="events per generated month")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--last-month", default="2026-10", help="YYYY-MM: the month projected")
    parser.add_argument("--min-contacts", type=int, default=20, help="accounts with at least this many")
    args = parser.parse_args(argv)
    year, month_number = map(int, args.last_month.split("-"))
    months = []
    for offset in (2, 1, 0):
        index = year * 12 + month_number - 1 - offset
        months.append(sample_month.build_month(args.events, args.seed + offset, index // 12, index % 12 + 1))
    results = projections(months, args.min_contacts)
    accounts = len(results[(DAYS[0], METHODS[0])])
    periods = ", ".join(month.period for month in months)
    print(f"history: {periods}; {accounts} accounts with {args.min_contacts}+ contacts")
    print(f"{'projected from':<16}{'method':<26}{'mean error':>14}{'worst error':>14}")
    for day in DAYS:
        for method in METHODS:
            errors = [(abs(p - f), abs(p - f) / f) for p, f in results[(day, method)]]
            mean = sum(share for _, share in errors) / len(errors)
            worst = max(share for _, share in errors)
            mean_contacts = sum(off for off, _ in errors) / len(errors)
            print(f"{'day ' + str(day):<16}{method:<26}{mean:>8.1%} ({mean_contacts:>4.0f}){worst:>14.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
