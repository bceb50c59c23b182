"""Benchmark `metering simulate`: replay a generated month in-process, print its speed and cost figures.

It generates `--events` envelopes with `generate_sample_month.py` into a temporary folder, replays them
through the real handlers on embedded moto, and prints the figures of SPEC §6 as `name: value` lines:
wall seconds, events per second, RecordActivity invocations per 1,000 events, DynamoDB calls per event and
the DynamoDB cost per distinct activation in write-unit equivalents. It also says whether the replay's
usage equals what the generator planned. It measures and never asserts: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metering_tools.simulate import SimulationOptions, simulate

if TYPE_CHECKING:
    from scripts import generate_sample_month as generator
else:  # run as `python scripts/bench_simulate.py`: its folder is first on sys.path
    import generate_sample_month as generator

WRITE_ITEMS = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem")
READ_ITEMS = ("GetItem", "BatchGetItem", "Query", "Scan")
RRU_PER_READ_ITEM = 0.5
RRU_PER_WRU = 5


def write_units(items: Mapping[str, int]) -> int:
    """Write-request units: 1 per item written (failed conditions included; the functions issue no
    transaction)."""
    return sum(items.get(name, 0) for name in WRITE_ITEMS)


def read_units_as_writes(items: Mapping[str, int]) -> float:
    """Reads in write-unit equivalents: 0.5 RRU per item read (Query/Scan: per item scanned), 5 RRU a WRU."""
    return sum(items.get(name, 0) for name in READ_ITEMS) * RRU_PER_READ_ITEM / RRU_PER_WRU


def usage_mismatches(report: Mapping[str, Any], month: generator.Month) -> list[str]:
    """Accounts and periods whose replayed count differs from the generator's plan (empty: exact)."""
    planned = {(row.account.account_id, row.period): row.active for row in generator.expectations(month)}
    replayed = {(row["accountId"], row["period"]): row["activeContacts"] for row in report["usage"]}
    return [
        f"{account}/{period}: planned {planned.get(key, 0)}, got {replayed.get(key, 0)}"
        for key in sorted(planned.keys() | replayed.keys())
        if planned.get(key) != replayed.get(key)
        for account, period in [key]
    ]


def figures(report: Mapping[str, Any], seconds: float) -> list[tuple[str, str]]:
    stats = report["stats"]
    events = int(stats["events"])
    calls = sum(stats["dynamodb"].values())
    items: Mapping[str, int] = stats["dynamodbItems"]
    record_activity = int(stats["invocations"].get("RecordActivity", 0))
    activations = sum(int(row["activeContacts"]) for row in report["usage"])
    writes, reads = write_units(items), read_units_as_writes(items)
    amount = sum(int(invoice["amountCents"]) for invoice in report["invoices"]) / 100
    return [
        ("events", str(events)),
        ("simulate wall seconds", f"{seconds:.1f}"),
        ("events per second", f"{events / seconds:.0f}"),
        ("RecordActivity invocations", str(record_activity)),
        ("RecordActivity invocations per 1,000 events", f"{1000 * record_activity / max(events, 1):.2f}"),
        ("DynamoDB calls", str(calls)),
        ("DynamoDB calls per event", f"{calls / max(events, 1):.3f}"),
        ("DynamoDB calls by operation", _counts(stats["dynamodb"])),
        ("DynamoDB items by operation", _counts(items)),
        ("distinct activations", str(activations)),
        ("items written (WRU)", str(writes)),
        ("reads (WRU equivalents)", f"{reads:.1f}"),
        (
            "cost per distinct activation, one unit per item (WRU equivalents)",
            f"{(writes + reads) / max(activations, 1):.3f}",
        ),
        (
            "cost per distinct activation, from item sizes as AWS bills (WRU equivalents)",
            f"{stats['capacity']['writeUnitEquivalents'] / max(activations, 1):.3f}",
        ),
        ("invoices", f"{len(report['invoices'])} (EUR {amount:.2f})"),
        ("alerts", str(len(report["alerts"]))),
        ("rejected events", str(len(report["rejected"]))),
        ("late events", str(len(report["late"]))),
    ]


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items()))


def _instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("needs an offset or Z, e.g. 2026-11-02T00:00:00Z")
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=40_000, help="envelopes to generate (default 40000)")
    parser.add_argument("--seed", type=int, default=202610)
    parser.add_argument(
        "--now", type=_instant, default=datetime(2026, 11, 2, tzinfo=UTC), help="final close run"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as folder:
        events_path = Path(folder) / "month.jsonl"
        started = time.perf_counter()
        month = generator.generate(args.events, args.seed, 2026, 10, events_path)
        generated = time.perf_counter() - started
        started = time.perf_counter()
        report = simulate(SimulationOptions(events_path=events_path, now=args.now))
        seconds = time.perf_counter() - started
    mismatches = usage_mismatches(report, month)
    lines = [("generate seconds", f"{generated:.1f}"), *figures(report, seconds)]
    lines.append(
        ("usage equals the generator's plan", "yes" if not mismatches else "NO: " + "; ".join(mismatches))
    )
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name + ':':<{width + 1}} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
