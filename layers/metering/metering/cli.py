"""`metering`: the operator's command line (replay a month, check counts)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path


def _instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("needs an offset or Z, e.g. 2026-11-01T12:00:00Z")
    return parsed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metering", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    simulate = commands.add_parser("simulate", help="replay EventBridge envelopes through the functions")
    simulate.add_argument(
        "events", type=Path, help="JSON lines, one EventBridge envelope each, in delivery order"
    )
    simulate.add_argument("--now", type=_instant, required=True, help="the instant of the final close run")
    simulate.add_argument("--grace-hours", type=float, help="hours after a period's end before it closes")
    simulate.add_argument("--default-timezone", help="time zone of accounts without one (default UTC)")
    simulate.add_argument("--endpoint-url", help="use this AWS endpoint instead of embedded moto")
    simulate.add_argument("--batch-size", type=int, help="records per RecordActivity invocation")
    simulate.add_argument("--objects-dir", type=Path, help="claim-check objects (default EVENTS.objects/)")
    simulate.add_argument("--claim-check-bucket", default="crm-claim-checks", help="bucket the events name")
    simulate.add_argument("--format", choices=("json", "table"), default="json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "simulate":
        from metering.simulate import SimulationOptions, simulate  # noqa: PLC0415 - keeps --help fast

        report = simulate(
            SimulationOptions(
                events_path=args.events,
                now=args.now,
                grace_hours=args.grace_hours,
                default_timezone=args.default_timezone,
                endpoint_url=args.endpoint_url,
                batch_size=args.batch_size,
                objects_dir=args.objects_dir,
                claim_check_bucket=args.claim_check_bucket,
            )
        )
        if args.format == "table":
            from metering.report import print_table  # noqa: PLC0415 - rich only for tables

            print_table(report)
        else:
            json.dump(report, sys.stdout, indent=2)
            sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
