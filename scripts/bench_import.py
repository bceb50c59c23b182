"""Cold import time of each handler module relative to `import boto3` alone (SPEC §6 target: <= 1.25).

Each figure is the median of fresh interpreter runs, timed inside the interpreter around the import only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from metering_tools.local_stack import LocalStack, function_environment
from metering_tools.template import functions

REPO = Path(__file__).resolve().parents[1]
HANDLERS = tuple(config.code_folder for config in functions().values())
"""Every function of the template, by its folder under `functions/`."""
BENCH_STACK = LocalStack.named("bench", "", region="eu-central-1")
ENVIRONMENT = {"AWS_DEFAULT_REGION": "eu-central-1", **function_environment(BENCH_STACK)}
"""What the functions read at import, as the template sets it for a stack of stage `bench`."""
TIMER = """
import sys, time
sys.path[:0] = {paths!r}
start = time.perf_counter()
{statement}
print(time.perf_counter() - start)
"""


def cold_import_seconds(statement: str, runs: int) -> float:
    """Median seconds of `statement` in `runs` fresh interpreters (no bytecode writes, warm disk cache)."""
    code = TIMER.format(paths=[str(REPO / "layers" / "metering"), str(REPO)], statement=statement)
    samples = [
        float(
            subprocess.run(
                [sys.executable, "-c", code],
                env={**os.environ, **ENVIRONMENT},
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        for _ in range(runs)
    ]
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    baseline = cold_import_seconds("import boto3", runs)
    print(f"python: {sys.version.split()[0]}  runs per figure: {runs}")
    print(f"import boto3: {baseline * 1000:.1f} ms")
    for name in HANDLERS:
        seconds = cold_import_seconds(f"import functions.{name}.app", runs)
        print(
            f"import functions.{name}.app: {seconds * 1000:.1f} ms  ratio to boto3: {seconds / baseline:.2f}"
        )


if __name__ == "__main__":
    main()
