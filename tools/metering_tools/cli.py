"""`metering`: the operator's command line (replay a month, explain a charge, show usage and invoices, serve
the Usage API of a replayed month locally)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

LOST_MESSAGES = 3
"""Exit status of a replay that dead-lettered messages it did not redrive: its report is incomplete."""
ISSUER_KEY_HELP = "the local issuer's signing key (created if missing)"
PLAN_PRICES_HELP = "the stack's PlanPrices, e.g. start=2900,grow=5900 (monthly cents)"
FAULTS_HELP = "share of DynamoDB and S3 calls to fail"


def _instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("needs an offset or Z, e.g. 2026-11-01T12:00:00Z")
    return parsed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metering", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    simulate = commands.add_parser("simulate", help="replay EventBridge envelopes through the functions")
    explain = commands.add_parser("explain", help="list a period's active contacts and what made each active")
    usage = commands.add_parser(
        "usage", help="an account's period (default: the open one): usage, projection, the cheapest way out"
    )
    invoices = commands.add_parser("invoices", help="the invoices stored for a period, with their amounts")
    serve = commands.add_parser(
        "serve", help="replay a month as simulate does, then serve the Usage API on 127.0.0.1 (local tokens)"
    )
    token = commands.add_parser("token", help="a bearer token for the local Usage API (metering serve)")
    rejected = commands.add_parser("rejected", help="list or replay rejected events")
    for replay in (simulate, serve):
        replay.add_argument(
            "events", type=Path, help="JSON lines, one EventBridge envelope each, in delivery order"
        )
        replay.add_argument("--now", type=_instant, required=True, help="the instant of the final close run")
        replay.add_argument("--grace-hours", type=float, help="hours after a period's end before it closes")
    simulate.add_argument("--default-timezone", help="time zone of accounts without one (default UTC)")
    simulate.add_argument(
        "--endpoint-url",
        help="use this AWS endpoint instead of embedded moto (AWS_ENDPOINT_URL_<SERVICE> still wins for its "
        "service); there the functions run with your credentials, their template roles are not enforced "
        "as they are on embedded moto",
    )
    simulate.add_argument("--batch-size", type=int, help="records per RecordActivity invocation")
    simulate.add_argument("--objects-dir", type=Path, help="claim-check objects (default EVENTS.objects/)")
    simulate.add_argument("--claim-check-bucket", default="crm-claim-checks", help="bucket the events name")
    simulate.add_argument("--format", choices=("json", "table"), default="json")
    simulate.add_argument("--inject-faults", type=float, default=0.0, metavar="RATE", help=FAULTS_HELP)
    simulate.add_argument("--fault-seed", type=int, default=0, help="seed of the injected faults")
    rejected.add_argument("action", choices=("list", "replay"))  # first: argparse lists missing ones in order
    for on_table in (explain, usage, invoices, rejected):
        on_table.add_argument("--table", required=True, help="the metering table (stack output TableName)")
    for reader in (explain, usage):
        reader.add_argument("--default-timezone", default="UTC", help="the stack's DefaultTimezone")
        reader.add_argument("--grace-hours", type=float, default=6, help="the stack's GraceHours")
        reader.add_argument("--plan-prices", default="", help=PLAN_PRICES_HELP)
        reader.add_argument("--account", required=True)
    explain.add_argument("--period", required=True, help="YYYY-MM")
    usage.add_argument("--period", help="YYYY-MM (default: the period open now in the account's zone)")
    invoices.add_argument("--period", required=True, help="YYYY-MM")
    invoices.add_argument("--account", help="only this account's invoice")
    invoices.add_argument("--endpoint-url", help="a DynamoDB endpoint (DynamoDB Local, moto)")
    invoices.add_argument("--format", choices=("json", "table"), default="json")
    serve.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    for issuing in (serve, token):
        issuing.add_argument("--issuer-key", type=Path, required=True, metavar="FILE", help=ISSUER_KEY_HELP)
    holder = token.add_mutually_exclusive_group(required=True)
    holder.add_argument("--account", help="a customer token for this account")
    holder.add_argument("--all-accounts", action="store_true", help="a staff token for every account")
    token.add_argument(
        "--expires-in", type=int, metavar="SECONDS", help="lifetime, negative for an expired token (3600)"
    )
    token.add_argument("--scope", help="replaces the scope the token would carry (space-separated)")
    token.add_argument("--audience", help="replaces the local API's audience")
    rejected.add_argument("--month", required=True, help="YYYY-MM the events were received in")
    rejected.add_argument("--event-id", help="replay: the rejected event")
    rejected.add_argument("--queue-url", help="replay: the activity queue (stack output ActivityQueueUrl)")
    rejected.add_argument("--corrected", type=Path, help="replay: a file with the corrected envelope")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"simulate": _simulate, "invoices": _invoices, "serve": _serve, "token": _token}
    return commands.get(args.command, _operate)(args)


def _print_json(output: object) -> None:
    print(json.dumps(output, indent=2))


def _simulate(args: argparse.Namespace) -> int:
    from metering_tools.simulate import SimulationOptions, simulate  # noqa: PLC0415 - keeps --help fast

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
            fault_rate=args.inject_faults,
            fault_seed=args.fault_seed,
        )
    )
    if args.format == "table":
        from metering_tools.operations import print_table  # noqa: PLC0415 - rich only for tables

        print_table(report)
    else:
        _print_json(report)
    return LOST_MESSAGES if any(not letter["redriven"] for letter in report["stats"]["deadLettered"]) else 0


def _operate(args: argparse.Namespace) -> int:
    from metering_tools import operations  # noqa: PLC0415 - keeps --help fast

    store = operations.open_store(args.table)
    output: object
    if args.command in {"usage", "explain"}:
        from metering.model import PeriodRef  # noqa: PLC0415
        from metering.outlook import parse_plan_prices  # noqa: PLC0415
        from metering.usage_view import ReadSettings  # noqa: PLC0415

        grace = timedelta(hours=args.grace_hours)
        settings = ReadSettings(args.default_timezone, grace, parse_plan_prices(args.plan_prices))
        now = datetime.now(UTC)
        if args.command == "usage":
            output = operations.usage(store, args.account, args.period, now, settings)
        else:
            output = operations.explain(store, PeriodRef(args.account, args.period), now, settings)
    elif args.action == "list":
        output = operations.list_rejected(store, args.month)
    else:
        if not (args.event_id and args.queue_url):
            raise SystemExit("replay needs --event-id and --queue-url")
        corrected = args.corrected.read_text(encoding="utf-8").strip() if args.corrected else None
        operations.replay_rejected(store, args.month, args.event_id, args.queue_url, corrected)
        output = {"replayed": args.event_id}
    _print_json(output)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from metering_tools.serving import StopRequested, serve  # noqa: PLC0415 - keeps --help fast

    try:
        serve(args.events, args.now, args.issuer_key, args.grace_hours, args.port)
    except StopRequested as signal_name:
        print(f"metering serve: {signal_name} before the replay finished; nothing served", file=sys.stderr)
    return 0


def _token(args: argparse.Namespace) -> int:
    from metering_tools import tokens  # noqa: PLC0415 - keeps --help fast

    expires_in = tokens.DEFAULT_LIFETIME_SECONDS if args.expires_in is None else args.expires_in
    audience = tokens.AUDIENCE if args.audience is None else args.audience
    # with --all-accounts there is no --account: a staff token
    request = tokens.TokenRequest(args.account, expires_in, args.scope, audience)
    print(tokens.mint(tokens.issuer_key(args.issuer_key), request))
    return 0


def _invoices(args: argparse.Namespace) -> int:
    from metering_tools import operations  # noqa: PLC0415 - keeps --help fast

    store = operations.open_store(args.table, args.endpoint_url)
    rows = list(operations.invoices(store, args.period, args.account))
    if args.format == "table":
        operations.wide_console().print(operations.invoice_table(rows))
    else:
        _print_json(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
