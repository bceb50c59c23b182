"""Benchmark what metering costs, as AWS bills it, across the regimes a customer base produces (SPEC §6).

`bench_simulate.py` measures one month of about thirty accounts replayed in full batches. This replays the
scenarios of `scripts/regimes.py` (30, 300 and 3,000 accounts per 40,000 events; with `--large` also
10,000 accounts, a 100,000-contact claim-checked rename and a burst of 5,000 events a second) through the
real handlers on embedded moto (`metering simulate`), each with full batches and with live-traffic batches
of 10 where it applies, and the same events through SPEC §6's naive recorder (`metering_testbench.naive`).
Both are measured by the same capacity meter (`metering_tools.capacity`), which charges every DynamoDB call
the read and write units of the item sizes involved.

For each regime it prints `name: value` lines: distinct activations, DynamoDB cost per activation in
write-unit equivalents with writes and reads itemised by code path, RecordActivity invocations per 1,000
events, the largest item written more than once, the naive recorder's cost and the ratio, and an estimate of
US dollars per million events at the list prices of one region (every price in `PRICES`), with Lambda
GB-seconds from the measured handler durations and CloudWatch Logs from the bytes the handlers log. It
measures and never asserts: timings depend on the machine, and on moto answering in-process.
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING, Any

from botocore.client import BaseClient
from metering_testbench.naive import NaiveRun, replay_naive
from metering_tools import capacity
from metering_tools.local_stack import LocalStack
from metering_tools.simulate import SimulationOptions, simulate
from metering_tools.template import functions, load_template
from metering_tools.testkit import FUNCTIONS_DIR

if TYPE_CHECKING:
    from scripts import bench_simulate, regimes
else:  # run as `python scripts/bench_regimes.py`: its folder is first on sys.path
    import bench_simulate
    import regimes


# ---- prices: one table, one region ----


@dataclass(frozen=True, slots=True)
class ListPrices:
    """On-demand list prices in US dollars for one region, without free tiers. Taken by hand from the AWS
    pricing pages; check them there before quoting a figure: everything priced with them is an estimate."""

    region: str
    eventbridge_per_event: float
    """Custom events put on a bus, per 64 KB chunk."""
    sqs_per_request: float
    """Standard queue requests, per 64 KB chunk."""
    lambda_per_request: float
    lambda_per_gb_second: float
    """arm64, the template's architecture."""
    dynamodb_per_write_unit: float
    """On-demand write request units."""
    dynamodb_per_read_unit: float
    """On-demand read request units."""
    logs_per_ingested_gb: float
    """CloudWatch Logs, standard class."""


PRICES = ListPrices(
    region="eu-central-1",
    eventbridge_per_event=1.00 / 1e6,
    sqs_per_request=0.40 / 1e6,
    lambda_per_request=0.20 / 1e6,
    lambda_per_gb_second=0.0000133334,
    dynamodb_per_write_unit=0.7625 / 1e6,
    dynamodb_per_read_unit=0.1525 / 1e6,
    logs_per_ingested_gb=0.63,
)
SQS_MESSAGES_PER_REQUEST = 10
"""Lambda's poller receives, and deletes, up to 10 messages per request."""
PLATFORM_LOG_BYTES_PER_INVOCATION = 260
"""Lambda's START, END and REPORT lines of one invocation."""
EMF_LOG_BYTES_PER_INVOCATION = 1_500
"""One EMF metrics document per invocation (about 25 metrics with their definitions), which `simulate`
disables; estimated, not measured."""
BYTES_PER_GB = 1024**3
SEED = 20261001


# ---- what one replay cost, measured around `simulate` ----


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A function of the template: its name in `simulate`'s stats, its handler file and memory."""

    name: str
    app: Path
    memory_mb: int


def template_functions(template: Mapping[str, Any]) -> list[FunctionSpec]:
    """Every function of the template; its memory is its own `MemorySize`, else the Globals' (which
    `FunctionConfig` does not carry)."""
    default_memory = int(template["Globals"]["Function"]["MemorySize"])
    return [
        FunctionSpec(
            config.name,
            FUNCTIONS_DIR / config.code_folder / "app.py",
            int(template["Resources"][config.logical_id]["Properties"].get("MemorySize", default_memory)),
        )
        for config in functions(template).values()
    ]


class HandlerClock:
    """Wall time of each invocation of every function's `handler` (the template's `Handler: app.handler`),
    found by its code object through `sys.monitoring`: the harness needs no hook, and other code pays only
    one callback per code object. Time the capacity meter spends inside the call is left out."""

    TOOL = sys.monitoring.PROFILER_ID

    def __init__(self, functions: Sequence[FunctionSpec]) -> None:
        self._names = {str(spec.app): spec.name for spec in functions}
        self.durations: defaultdict[str, list[float]] = defaultdict(list)
        self.excluded: Callable[[], float] = lambda: 0.0
        self._handlers: set[CodeType] = set()
        self._running: list[tuple[str, float, float]] = []

    @contextmanager
    def running(self) -> Iterator[None]:
        monitoring = sys.monitoring
        events = monitoring.events
        monitoring.use_tool_id(self.TOOL, "bench_regimes")
        try:
            monitoring.register_callback(self.TOOL, events.PY_START, self._started)
            monitoring.register_callback(self.TOOL, events.PY_RETURN, self._returned)
            monitoring.register_callback(self.TOOL, events.PY_UNWIND, self._unwound)
            monitoring.set_events(self.TOOL, events.PY_START | events.PY_UNWIND)
            yield
        finally:
            monitoring.set_events(self.TOOL, 0)
            for event in (events.PY_START, events.PY_RETURN, events.PY_UNWIND):
                monitoring.register_callback(self.TOOL, event, None)
            monitoring.free_tool_id(self.TOOL)

    def _started(self, code: CodeType, _offset: int) -> object:
        name = self._names.get(code.co_filename) if code.co_name == "handler" else None
        if name is None:
            return sys.monitoring.DISABLE
        self._handlers.add(code)
        sys.monitoring.set_local_events(self.TOOL, code, sys.monitoring.events.PY_RETURN)
        self._running.append((name, time.perf_counter(), self.excluded()))
        return None

    def _returned(self, code: CodeType, _offset: int, _value: object) -> None:
        self._stopped()

    def _unwound(self, code: CodeType, _offset: int, _exception: BaseException) -> None:
        if code in self._handlers:
            self._stopped()

    def _stopped(self) -> None:
        name, started, excluded_before = self._running.pop()
        self.durations[name].append(time.perf_counter() - started - (self.excluded() - excluded_before))


class ByteCount(io.TextIOBase):
    """A text stream that keeps nothing but the number of UTF-8 bytes written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.bytes += len(text.encode())
        return len(text)


HANDLER_LOGS = ByteCount()
"""Where the handlers' stdout and stderr go during replays. One stream for the whole process: the functions'
logger binds the stream it first sees, at the first cold start."""


@dataclass(slots=True)
class OutboundRequests:
    """SQS sends (and deletes) and EventBridge entries of every client in this process once `listen` ran: the
    functions' fan-out chunks, close requests, the records a large batch deletes as it goes, alerts and
    invoices (the harness itself sends none). Each function runs with clients of its own role's session, so
    the count wraps botocore's one entry point for API calls."""

    sqs_requests: int = 0
    sqs_messages: int = 0
    published_events: int = 0
    listening: bool = False

    def listen(self) -> None:
        if self.listening:
            return
        self.listening = True
        make_api_call = getattr(BaseClient, "_make_api_call")  # noqa: B009 - private to botocore's stubs

        def counted(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
            self.seen(operation, params)
            return make_api_call(client, operation, params)

        setattr(BaseClient, "_make_api_call", counted)  # noqa: B010 - private to botocore's stubs

    def seen(self, operation: str, params: dict[str, Any]) -> None:
        if operation == "SendMessage":
            self.sqs_requests += 1
            self.sqs_messages += 1
        elif operation == "SendMessageBatch":
            self.sqs_requests += 1
            self.sqs_messages += len(params.get("Entries", []))
        elif operation == "DeleteMessageBatch":
            self.sqs_requests += 1
        elif operation == "PutEvents":
            self.published_events += len(params.get("Entries", []))

    def snapshot(self) -> tuple[int, int, int]:
        return self.sqs_requests, self.sqs_messages, self.published_events


OUTBOUND = OutboundRequests()


@dataclass(slots=True)
class Replay:
    """One `simulate` run and what was measured around it."""

    report: dict[str, Any]
    seconds: float
    durations: dict[str, list[float]]
    log_bytes: int
    sqs_requests: int
    sqs_messages: int
    published_events: int


def replay(events_path: Path, batch_size: int | None, functions: Sequence[FunctionSpec]) -> Replay:
    clock = HandlerClock(functions)

    def on_stack(stack: LocalStack) -> None:
        meter = capacity.shared_meter(stack.table_name)
        clock.excluded = lambda: meter.seconds
        OUTBOUND.listen()

    logged_before, outbound_before = HANDLER_LOGS.bytes, OUTBOUND.snapshot()
    options = SimulationOptions(events_path=events_path, now=regimes.NOW, batch_size=batch_size)
    saved_stderr, sys.stderr = sys.stderr, HANDLER_LOGS
    started = time.perf_counter()
    try:
        with clock.running():
            report = simulate(options, on_stack=on_stack)
    finally:
        sys.stderr = saved_stderr
    seconds = time.perf_counter() - started
    requests, messages, published = (
        after - before for after, before in zip(OUTBOUND.snapshot(), outbound_before, strict=True)
    )
    return Replay(
        report,
        seconds,
        dict(clock.durations),
        HANDLER_LOGS.bytes - logged_before,
        requests,
        messages,
        published,
    )


# ---- money ----


@dataclass(frozen=True, slots=True)
class Bill:
    """US dollars of one replay, by line."""

    lines: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.lines.values())


def estimate_bill(run: Replay, functions: Sequence[FunctionSpec], prices: ListPrices = PRICES) -> Bill:
    stats = run.report["stats"]
    events = int(stats["events"])
    invocations = sum(int(count) for count in stats["invocations"].values())
    capacity_stats = stats["capacity"]
    memory = {spec.name: spec.memory_mb for spec in functions}
    gb_seconds = sum(
        math.ceil(seconds * 1000) / 1000 * memory[name] / 1024
        for name, durations in run.durations.items()
        for seconds in durations
    )
    sqs_requests = (
        events + run.sqs_requests + 2 * math.ceil((events + run.sqs_messages) / SQS_MESSAGES_PER_REQUEST)
    )
    log_bytes = run.log_bytes + invocations * (
        PLATFORM_LOG_BYTES_PER_INVOCATION + EMF_LOG_BYTES_PER_INVOCATION
    )
    return Bill(
        {
            "EventBridge events": (events + run.published_events) * prices.eventbridge_per_event,
            "SQS requests": sqs_requests * prices.sqs_per_request,
            "Lambda requests": invocations * prices.lambda_per_request,
            "Lambda GB-seconds": gb_seconds * prices.lambda_per_gb_second,
            "DynamoDB writes": sum(capacity_stats["writeUnits"].values()) * prices.dynamodb_per_write_unit,
            "DynamoDB reads": sum(capacity_stats["readUnits"].values()) * prices.dynamodb_per_read_unit,
            "CloudWatch Logs ingestion": log_bytes / BYTES_PER_GB * prices.logs_per_ingested_gb,
        }
    )


# ---- figures ----


def activations_of(report: Mapping[str, Any]) -> int:
    return sum(int(row["activeContacts"]) for row in report["usage"])


def per_activation(units: Mapping[str, Mapping[str, float]], kind: str, activations: int) -> str:
    rows = sorted(
        ((path, values[kind]) for path, values in units.items() if values[kind]), key=lambda row: -row[1]
    )
    return ", ".join(f"{path} {value / max(activations, 1):.3f}" for path, value in rows) or "none"


def _units(units: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:,.1f}" for name, value in sorted(units.items())) or "none"


@dataclass(frozen=True, slots=True)
class Measured:
    """One regime: a scenario replayed with one batch size, beside the naive recorder on the same events."""

    scenario: regimes.Scenario
    batch_size: int | None
    run: Replay
    naive: NaiveRun

    @property
    def name(self) -> str:
        batches = "full batches" if self.batch_size is None else f"batches of {self.batch_size}"
        return f"{self.scenario.name}, {batches}"

    @property
    def events(self) -> int:
        return int(self.run.report["stats"]["events"])

    @property
    def activations(self) -> int:
        return activations_of(self.run.report)

    @property
    def cost(self) -> float:
        """DynamoDB write-unit equivalents per distinct activation."""
        equivalents = float(self.run.report["stats"]["capacity"]["writeUnitEquivalents"])
        return equivalents / max(self.activations, 1)

    @property
    def naive_cost(self) -> float:
        return float(self.naive.capacity["writeUnitEquivalents"]) / max(self.naive.activations, 1)

    @property
    def invocations_per_1000(self) -> float:
        return (
            1000 * int(self.run.report["stats"]["invocations"].get("RecordActivity", 0)) / max(self.events, 1)
        )

    @property
    def largest_repeated(self) -> dict[str, Any] | None:
        largest: dict[str, Any] | None = self.run.report["stats"]["capacity"]["largestRepeatedlyWrittenItem"]
        return largest


def regime_figures(regime: Measured, month: Any, functions: Sequence[FunctionSpec]) -> list[tuple[str, str]]:
    cost = regime.run.report["stats"]["capacity"]
    activations = regime.activations
    largest = regime.largest_repeated
    mismatches = bench_simulate.usage_mismatches(regime.run.report, month)
    bill = estimate_bill(regime.run, functions)
    per_million = 1e6 / max(regime.events, 1)
    durations = ", ".join(
        f"{name} {1000 * sum(values) / len(values):.0f} ms x {len(values)}"
        for name, values in sorted(regime.run.durations.items())
    )
    logged = PLATFORM_LOG_BYTES_PER_INVOCATION + EMF_LOG_BYTES_PER_INVOCATION
    lines = [
        ("regime", regime.name),
        ("events", f"{regime.events} ({regime.scenario.description})"),
        ("simulate wall seconds", f"{regime.run.seconds:.1f}"),
        ("distinct activations", str(activations)),
        (
            "usage equals the generator's plan",
            "yes" if not mismatches else "NO: " + "; ".join(mismatches[:5]),
        ),
        ("cost per distinct activation (WRU equivalents, from item sizes)", f"{regime.cost:.3f}"),
        ("writes per activation by path (WRU)", per_activation(cost["byPath"], "writeUnits", activations)),
        ("reads per activation by path (RRU)", per_activation(cost["byPath"], "readUnits", activations)),
        ("write units by operation", _units(cost["writeUnits"])),
        ("read units by operation", _units(cost["readUnits"])),
        ("RecordActivity invocations per 1,000 events", f"{regime.invocations_per_1000:.2f}"),
        (
            "largest item written repeatedly (bytes)",
            f"{largest['bytes']} ({largest['path']}, {largest['writes']} writes)" if largest else "none",
        ),
        (
            "naive cost per distinct activation (WRU equivalents)",
            f"{regime.naive_cost:.3f} ({regime.naive.activations} activations)",
        ),
        ("cost relative to naive", f"{regime.cost / regime.naive_cost:.2f}" if regime.naive_cost else "n/a"),
        (
            f"USD per million events, estimate at {PRICES.region} list prices",
            f"{bill.total * per_million:.2f}",
        ),
        *((f"  {line}", f"{amount * per_million:.3f}") for line, amount in bill.lines.items()),
        ("handler time per invocation (embedded moto, meter excluded)", durations or "none"),
        ("bytes the handlers logged", f"{regime.run.log_bytes} (+ {logged} estimated per invocation)"),
    ]
    if "unmeteredCalls" in cost:
        lines.append(("DynamoDB calls the meter could not size", _units(cost["unmeteredCalls"])))
    return lines


def print_lines(lines: Sequence[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name + ':':<{width + 1}} {value}")
    print(flush=True)


SUMMARY_COLUMNS = (
    ("regime", 34),
    ("activations", 11),
    ("WRU-eq/act", 10),
    ("naive", 6),
    ("ratio", 6),
    ("RA inv/1k", 9),
    ("largest rep. item", 19),
    ("USD/M ev", 8),
    ("wall s", 7),
)


def print_summary(regimes_measured: Sequence[Measured], functions: Sequence[FunctionSpec]) -> None:
    print("summary:")
    print(
        "  "
        + " ".join(
            f"{name:<{width}}" if index == 0 else f"{name:>{width}}"
            for index, (name, width) in enumerate(SUMMARY_COLUMNS)
        )
    )
    for regime in regimes_measured:
        largest = regime.largest_repeated
        cells = (
            regime.name,
            f"{regime.activations:,}",
            f"{regime.cost:.3f}",
            f"{regime.naive_cost:.3f}",
            f"{regime.cost / regime.naive_cost:.2f}",
            f"{regime.invocations_per_1000:.2f}",
            f"{largest['bytes']} B {largest['path']}" if largest else "none",
            f"{estimate_bill(regime.run, functions).total * 1e6 / max(regime.events, 1):.2f}",
            f"{regime.run.seconds:.1f}",
        )
        print(
            "  "
            + " ".join(
                f"{cell:<{width}}" if index == 0 else f"{cell:>{width}}"
                for index, (cell, (_, width)) in enumerate(zip(cells, SUMMARY_COLUMNS, strict=True))
            )
        )


# ---- the suite ----


def executor(jobs: int) -> Executor:
    """Replays in `jobs` forked processes (each with its own moto, meter and handler clock), or one after
    the other in this process."""
    if jobs > 1:
        return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(max_workers=1)


def run_scenario(
    scenario: regimes.Scenario, seed: int, functions: Sequence[FunctionSpec], folder: Path, pool: Executor
) -> list[Measured]:
    """Generate the scenario's month, replay it with the naive recorder and with each batch size, print each
    regime's figures."""
    events_path = folder / (scenario.name.replace(" ", "-") + ".jsonl")
    month = scenario.generate(seed, events_path)
    naive = pool.submit(replay_naive, events_path)
    runs = [
        (batch_size, pool.submit(replay, events_path, batch_size, functions))
        for batch_size in scenario.batch_sizes
    ]
    measured = [Measured(scenario, batch_size, run.result(), naive.result()) for batch_size, run in runs]
    for regime in measured:
        print_lines(regime_figures(regime, month, functions))
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--large", action="store_true", help="also 10,000 accounts, the big rename and the burst"
    )
    parser.add_argument("--only", help="only the scenarios whose name contains this text")
    parser.add_argument("--jobs", type=int, default=1, help="replays run in parallel processes (default 1)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    template = load_template()
    functions = template_functions(template)
    log_level = template["Globals"]["Function"]["Environment"]["Variables"]["LOG_LEVEL"]
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", log_level)
    scenarios = regimes.default_scenarios() + (regimes.large_scenarios() if args.large else [])
    scenarios = [scenario for scenario in scenarios if not args.only or args.only in scenario.name]
    started = time.perf_counter()
    measured: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="bench-regimes-") as folder, executor(args.jobs) as pool:
        for scenario in scenarios:
            measured += run_scenario(scenario, args.seed, functions, Path(folder), pool)
    print_summary(measured, functions)
    print(f"\nevery USD figure is an estimate at {PRICES.region} list prices, without free tiers")
    print(f"total wall seconds: {time.perf_counter() - started:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
