"""Read units and warm handler time of each Usage API route (SPEC §7), for a 50-contact period and a
500,000-contact one.

A short month is replayed through the functions as `metering simulate` does (two billed accounts; October
closed, so both have a period shape and one an invoice), then one account's open November is filled to
`--contacts` contact items (written straight into embedded moto: half a million events would take an hour to
replay) and CountContacts reads the table's stream as its event source mapping does, so the large period is
counted as on AWS. Every request then goes through the local gateway of `metering serve` (the authorizer's
checks, payload 2.0) to the UsageApi handler, as its template role, with the capacity meter on its DynamoDB
client: read units as AWS bills them (`metering_tools.capacity`). Prints one line per route and period size.
Measures, never asserts: timings depend on the machine, and on moto answering in-process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metering import aws
from metering.rules import utc_iso
from metering.store.codec import EXPIRES, FIRST_EVENT, FIRST_OCCURRED, FIRST_TYPE
from metering_tools.capacity import CapacityMeter
from metering_tools.serving import FUNCTION, Gateway, IncomingRequest, route_table
from metering_tools.simulate import Simulation, SimulationOptions, simulate
from metering_tools.template import functions, load_template
from metering_tools.testkit import ACCOUNT, REGION

if TYPE_CHECKING:
    from scripts.bench_regimes import BYTES_PER_GB, PRICES, template_functions
else:  # run as `python scripts/bench_api.py`: its folder is first on sys.path
    from bench_regimes import BYTES_PER_GB, PRICES, template_functions
from metering_tools.tokens import LocalAuthorizer, TokenRequest, issuer_key, mint

HTTP_API_PER_REQUEST = 1.20 / 1e6
"""API Gateway HTTP API requests in eu-central-1 (first 300 million a month), a list price: check it before
quoting."""
LOG_BYTES_PER_VIEW = 260 + 1_500 + 350
"""Lambda's START/END/REPORT lines, one EMF metrics document, one access-log line: estimated, not measured."""
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
SMALL, LARGE = "acct-api-small", "acct-api-large"
SMALL_CONTACTS = 50
RECORDED_LARGE = 200
"""Contacts of the large period recorded through RecordActivity (and counted from the stream) before the
rest are written straight into the table: its counter starts as it would on AWS, early."""


def envelope(index: int, detail_type: str, detail: dict[str, Any], at: datetime) -> dict[str, Any]:
    return {
        "version": "0",
        "id": f"00000000-0000-4000-8000-{index:012d}",
        "detail-type": detail_type,
        "source": "crm",
        "account": ACCOUNT,
        "time": (at + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [],
        "detail": detail,
    }


def month_lines() -> Iterator[dict[str, Any]]:
    """Both accounts' subscriptions and an October each (the small one over its allowance), then November's
    first contacts: 50 for the small account, `RECORDED_LARGE` for the large one."""
    index = 0
    for account, plan in ((SMALL, "start"), (LARGE, "scale")):
        index += 1
        at = datetime(2026, 8, 20, tzinfo=UTC)
        detail = {"accountId": account, "occurredAt": utc_iso(at), "plan": plan, "billingCycle": "monthly"}
        yield envelope(index, "Subscription Changed", {**detail, "addonContacts": 0}, at)
    for period_start, counts in (
        (datetime(2026, 10, 2, 9, tzinfo=UTC), {SMALL: 80, LARGE: 300}),
        (datetime(2026, 11, 3, 9, tzinfo=UTC), {SMALL: SMALL_CONTACTS, LARGE: RECORDED_LARGE}),
    ):
        for account, count in counts.items():
            for number in range(count):
                index += 1
                at = period_start + timedelta(minutes=number)
                detail = {"accountId": account, "contactId": f"con-{number:07d}", "occurredAt": utc_iso(at)}
                yield envelope(index, "Note Added", {**detail, "noteId": f"note-{index}"}, at)


def fill_large_period(run: Simulation, contacts: int) -> None:
    """The large account's November grows to `contacts` contact items, written as RecordActivity writes them,
    straight into embedded moto's table; then CountContacts takes the stream."""
    from moto.dynamodb.models import dynamodb_backends  # noqa: PLC0415 - embedded moto only

    table = dynamodb_backends[ACCOUNT][REGION].get_table(run.stack.table_name)
    start = datetime(2026, 11, 4, tzinfo=UTC)
    expires = str(int(datetime(2027, 12, 5, tzinfo=UTC).timestamp()))
    for number in range(RECORDED_LARGE, contacts):
        occurred = utc_iso(start + timedelta(seconds=number))
        table.put_item(
            {
                "pk": {"S": f"{LARGE}#2026-11"},
                "sk": {"S": f"contact#con-{number:07d}"},
                FIRST_EVENT: {"S": f"evt-{number:09d}"},
                FIRST_TYPE: {"S": "Note Added"},
                FIRST_OCCURRED: {"S": occurred},
                EXPIRES: {"N": expires},
            }
        )
    run.follow_stream(whole_batches_only=False)


class MeteredApi:
    """The UsageApi function behind the local gateway, a fresh capacity meter on its client per request."""

    def __init__(self, run: Simulation, key_path: Path) -> None:
        template = load_template()
        key = issuer_key(key_path)
        self._run = run
        self._tokens = {account: mint(key, TokenRequest(account_id=account)) for account in (SMALL, LARGE)}
        self._gateway = Gateway(
            route_table(functions(template)[FUNCTION].routes),
            LocalAuthorizer.of(key),
            self._invoke,
        )
        self.meter = CapacityMeter()

    def _invoke(self, event: dict[str, Any]) -> Any:
        run, function = self._run, self._run.functions[FUNCTION]
        module = run.module(FUNCTION)

        def metered(event: dict[str, Any], context: Any) -> Any:
            self.meter.attach(aws.dynamodb())
            return module.handler(event, context)

        assert run.guard is not None
        try:
            return run.guard.invoke(FUNCTION, metered, event, function.context())
        finally:
            aws.reset_clients()

    def get(
        self, account: str, target: str, accept: str = "application/json"
    ) -> tuple[int, bytes, float, float]:
        """(status, body, read units, seconds) of one request."""
        self.meter = CapacityMeter()
        headers = [("authorization", f"Bearer {self._tokens[account]}"), ("accept", accept)]
        request = IncomingRequest("GET", target, headers, b"", "127.0.0.1")
        began = time.perf_counter()
        response, _ = self._gateway.handle(request)
        seconds = time.perf_counter() - began
        return response.status, response.body, sum(self.meter.stats()["readUnits"].values()), seconds


def routes(account: str, middle_cursor: str | None) -> list[tuple[str, str, str]]:
    """(label, request target, Accept) of every route, for one account."""
    base = f"/v1/accounts/{account}"
    listed = [
        ("usage, open period", f"{base}/usage", "application/json"),
        ("usage, closed period", f"{base}/usage?period=2026-10", "application/json"),
        ("contacts, first page of 100", f"{base}/contacts?period=2026-11&limit=100", "application/json"),
        ("contacts, page of 100 as CSV", f"{base}/contacts?period=2026-11&limit=100", "text/csv"),
        ("contacts, page of 1,000", f"{base}/contacts?period=2026-11&limit=1000", "application/json"),
        ("invoices", f"{base}/invoices", "application/json"),
        ("alerts", f"{base}/alerts?period=2026-11", "application/json"),
        ("openapi.json", "/v1/openapi.json", "application/json"),
    ]
    if middle_cursor:
        listed.insert(
            3, ("contacts, a later page of 100", f"{base}/contacts?{middle_cursor}", "application/json")
        )
    return listed


def measure(run: Simulation, contacts: int, repeats: int, key_path: Path) -> None:
    fill_large_period(run, contacts)
    run.module(FUNCTION).API.clock = lambda: NOW
    api = MeteredApi(run, key_path)
    out = sys.__stdout__ or sys.stdout
    print(f"{'route':<32}{'period':>16}{'status':>8}{'RRU':>8}{'warm ms (median)':>19}", file=out)
    for account, size in ((SMALL, SMALL_CONTACTS), (LARGE, contacts)):
        first_page = f"/v1/accounts/{account}/contacts?period=2026-11&limit=100"
        status, body, _, _ = api.get(account, first_page, "application/json")
        cursor = json.loads(body).get("nextCursor") if status == 200 else None
        middle = f"period=2026-11&limit=100&cursor={cursor}" if cursor else None
        warm_seconds = 0.0
        for label, target, accept in routes(account, middle):
            timings = []
            for _ in range(repeats):
                status, body, units, seconds = api.get(account, target, accept)
                timings.append(seconds)
            shown = f"{size:,} contacts"
            milliseconds = 1000 * statistics.median(timings[1:] or timings)
            if label == "usage, open period":
                warm_seconds = milliseconds / 1000
            print(f"{label:<32}{shown:>16}{status:>8}{units:>8.1f}{milliseconds:>19.1f}", file=out)
        _, body, units, _ = api.get(account, f"/v1/accounts/{account}/usage", "application/json")
        view = json.loads(body)
        print(
            f"  usage view of {account}: activeContacts {view['activeContacts']:,}, asOf {view['asOf']}, "
            f"projection {view['projection']['activeContacts']:,} ({view['projection']['method']})",
            file=out,
        )
        print(f"  USD per million usage views: {per_million_views(units, warm_seconds):.2f}", file=out)


def per_million_views(read_units: float, warm_seconds: float) -> float:
    """An estimate at `bench_regimes.PRICES` (eu-central-1 list prices) of a million usage views: the HTTP
    API, Lambda requests and GB-seconds at the function's memory and the measured warm time, the read units,
    and the logs."""
    [function] = [spec for spec in template_functions(load_template()) if spec.name == FUNCTION]
    memory_gb = function.memory_mb / 1024
    return 1e6 * (
        HTTP_API_PER_REQUEST
        + PRICES.lambda_per_request
        + memory_gb * warm_seconds * PRICES.lambda_per_gb_second
        + read_units * PRICES.dynamodb_per_read_unit
        + LOG_BYTES_PER_VIEW / BYTES_PER_GB * PRICES.logs_per_ingested_gb
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=500_000, help="contacts of the large period")
    parser.add_argument("--repeats", type=int, default=5, help="requests per route (the first is not timed)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "month.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in month_lines()), encoding="utf-8")
        began = time.perf_counter()
        simulate(
            SimulationOptions(events_path=path, now=datetime(2026, 11, 15, tzinfo=UTC)),
            after_replay=lambda run: measure(run, args.contacts, args.repeats, Path(scratch) / "issuer.pem"),
        )
        print(f"wall seconds: {time.perf_counter() - began:.0f}", file=sys.__stdout__ or sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
