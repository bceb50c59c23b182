"""Benchmark the close path at the scale of a real customer base: N billed accounts whose October is due.

ClosePeriods runs through its real handler on embedded moto and enumerates every billed account shard by
shard, page by page; its SendMessageBatch calls are answered at botocore's `before-call` (their bodies go to
a file, not to memory), so the peak memory traced is the function's own and not moto's queue. Then every
close request is handed to the real InvoiceAccount handler in batches of the template's batch size.

It prints, for each function: invocations, wall seconds, peak traced memory (tracemalloc: Python
allocations of the handler, moto's answers included for the DynamoDB reads), and the calls made by
operation. It measures and never asserts: timings depend on the machine and on moto answering in-process.

    python scripts/bench_close.py                      # 10,000 accounts
    python scripts/bench_close.py --accounts 100000    # the scale of `make bench-large`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.awsrequest import AWSResponse
from metering import aws
from metering.fields import PlanName
from metering.retrying import RetryBudget
from metering.rules import Subscription
from metering.store import MeteringStore
from metering_tools.embedded_moto import embedded_aws
from metering_tools.local_stack import function_environment, provision
from metering_tools.template import load_template
from metering_tools.testkit import REGION, LocalFunction, answered, local_functions, sqs_event

PERIOD = "2026-10"
AS_OF = "2026-11-02T00:00:00Z"
"""After October's close instant in every zone the contract allows."""
PLANS: tuple[PlanName, ...] = ("start", "grow", "expand", "scale", "legacy")


class CloseRequestSink:
    """Answers ClosePeriods' SendMessageBatch calls locally and appends their bodies to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sent = 0
        self._file = path.open("w", encoding="utf-8")

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-call.sqs.SendMessageBatch", self._answer)

    def _answer(self, params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        entries = json.loads(params["body"])["Entries"]
        for entry in entries:
            self._file.write(entry["MessageBody"] + "\n")
        self.sent += len(entries)
        successful = [
            {"Id": entry["Id"], "MessageId": str(uuid.uuid4()), "MD5OfMessageBody": ""} for entry in entries
        ]
        return answered(200), {"Successful": successful, "Failed": []}

    def close(self) -> None:
        self._file.close()


def seed_accounts(store: MeteringStore, accounts: int) -> None:
    """One subscription per account, effective before October, every plan and a spread of zones."""
    zones = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", None)
    changes = [
        Subscription(
            account_id=f"acc-{number:07d}",
            effective_at=datetime(2026, 9, 1, tzinfo=UTC),
            event_id=f"sub-{number:07d}",
            plan=PLANS[number % len(PLANS)],
            billing_cycle="monthly",
            addon_contacts=0,
            timezone=zones[number % len(zones)],
        )
        for number in range(accounts)
    ]
    for start in range(0, len(changes), 1000):
        store.subscriptions.save(changes[start : start + 1000], RetryBudget.single_try())
    store.seals.open(PERIOD)


def requests_in_batches(path: Path, size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            batch.append(line.rstrip("\n"))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def traced(call: Callable[[], int]) -> tuple[int, float, float, int]:
    """(result, wall seconds, CPU seconds, peak bytes traced) of `call()`."""
    tracemalloc.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        result = call()
    finally:
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, seconds, cpu, peak


def print_lines(lines: list[tuple[str, str]]) -> None:
    """To the terminal: the handlers' own output (EMF metrics) is discarded."""
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name + ':':<{width + 1}} {value}", file=sys.__stdout__)
    print(file=sys.__stdout__, flush=True)


def close_all(closer: LocalFunction, sink: CloseRequestSink) -> None:
    """ClosePeriods as the scheduler runs it, and again each time a run hands over."""
    aws.reset_clients()
    sink.attach(aws.sqs())
    lambda_client: Any = aws.lambda_()  # botocore's stubs type hooks as returning None; this one answers
    lambda_client.meta.events.register("before-call.lambda.Invoke", _handover_accepted)
    close_periods = closer.cold_start()
    before = aws.DYNAMODB_REQUESTS.snapshot()[0].copy()

    def runs() -> int:
        invocations, handed_over = 0, True
        while handed_over:
            invocations += 1
            handed_over = close_periods.handler({"scheduledTime": AS_OF}, closer.context())["handedOver"]
        return invocations

    invocations, seconds, cpu, peak = traced(runs)
    sink.close()
    print_lines(
        [
            ("ClosePeriods invocations", f"{invocations} (timeout {closer.config.timeout_seconds} s each)"),
            ("ClosePeriods seconds", f"{seconds:.1f} wall (the fence is waited for), {cpu:.1f} CPU"),
            ("ClosePeriods peak traced memory", f"{peak / 2**20:.1f} MiB"),
            ("close requests sent", f"{sink.sent:,}"),
            ("ClosePeriods DynamoDB calls", str(dict(aws.DYNAMODB_REQUESTS.snapshot()[0] - before))),
        ]
    )


def _handover_accepted(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
    """Lambda accepts the asynchronous self-invocation; the loop in `close_all` plays the next run."""
    return answered(202), {"StatusCode": 202}


def invoice_all(invoicer: LocalFunction, requests: Path, periods: int) -> None:
    """Every close request handed to InvoiceAccount in batches of its event source mapping."""
    invoice_account = invoicer.cold_start()
    ((close_queue, source),) = invoicer.config.sources.items()
    before = aws.DYNAMODB_REQUESTS.snapshot()[0].copy()
    failures: list[str] = []

    def batches() -> int:
        handled = 0
        for batch in requests_in_batches(requests, source.batch_size):
            event = sqs_event(batch, queue_arn=invoicer.queue_arns[close_queue])
            response = invoice_account.handler(event, invoicer.context())
            failures.extend(item["itemIdentifier"] for item in response.get("batchItemFailures", []))
            handled += 1
        return handled

    invocations, seconds, cpu, peak = traced(batches)
    print_lines(
        [
            ("InvoiceAccount invocations", f"{invocations:,} (batches of {source.batch_size})"),
            (
                "InvoiceAccount seconds",
                f"{seconds:.1f} wall, {cpu / max(periods, 1) * 1000:.2f} ms CPU per period",
            ),
            ("InvoiceAccount peak traced memory", f"{peak / 2**20:.1f} MiB"),
            ("InvoiceAccount DynamoDB calls", str(dict(aws.DYNAMODB_REQUESTS.snapshot()[0] - before))),
            ("close requests failed", str(len(failures))),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=10_000)
    args = parser.parse_args(argv)
    template = load_template()
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    with (
        embedded_aws(REGION),
        tempfile.TemporaryDirectory(prefix="bench-close-") as folder,
        open(os.devnull, "w") as discarded,
        contextlib.redirect_stdout(discarded),
    ):
        suffix = uuid.uuid4().hex[:8]
        stack = provision(f"bench-{suffix}", f"bench-claims-{suffix}", template)
        os.environ.update(function_environment(stack, template))
        os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
        functions = local_functions(stack, template)
        started = time.perf_counter()
        seed_accounts(MeteringStore(stack.table_name, aws.dynamodb()), args.accounts)
        print_lines(
            [("billed accounts seeded", f"{args.accounts:,} in {time.perf_counter() - started:.0f} s")]
        )
        sink = CloseRequestSink(Path(folder) / "close-requests.jsonl")
        close_all(functions["ClosePeriods"], sink)
        invoice_all(functions["InvoiceAccount"], sink.path, sink.sent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
