"""Cold starts: every built function in a fresh process, as Lambda starts it, against the floor.

A cold start here is the whole process: the interpreter, importing the handler module (Lambda's
init) and building the clients the first invocation builds. The floor is the same process doing
only ``import boto3, httpx`` and building the same clients. Both run with Lambda's layout (the
function folder, the layer as ``sam build`` made it, then the runtime's own packages) and, as on
Lambda's read-only file system, without compiled files kept from an earlier start. Runs of the
function and of its floor alternate, so that a change in the machine's load hits both.

    .venv/bin/python -m benchmarks.cold_start --runs 7
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    FUNCTIONS,
    emit,
    function_configs,
    lambda_copy,
    lambda_environment,
    median,
    note,
    require_build,
    runtime_packages,
)

CHILD = Path(__file__).with_name("coldstart_child.py")

# The clients each function's first ordinary invocation builds (see coldstart_child.py).
CLIENTS: dict[str, tuple[str, ...]] = {
    "SubmitFunction": ("s3", "presign_s3", "dynamodb", "idempotency", "secrets", "http"),
    "CallbackFunction": ("dynamodb", "sqs", "secrets"),
    "CopyFunction": ("dynamodb", "s3", "events", "http"),
    "ReconcileFunction": ("dynamodb", "s3", "presign_s3", "sqs", "events", "secrets", "http"),
}
CHILD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Start:
    wall_ms: float
    phases: dict[str, Any]


def run_once(mode: str, paths: list[Path], env: dict[str, str], clients: tuple[str, ...]) -> Start:
    command = [sys.executable, "-I", "-S", "-B", str(CHILD), "--mode", mode, "--clients", ",".join(clients)]
    for path in paths:
        command += ["--path", str(path)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    wall = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"cold start ({mode}) failed:\n{done.stderr[-3000:]}")
    return Start(wall, json.loads(done.stdout.strip().splitlines()[-1]))


# A sampled invocation's trace header, as Lambda sets it when tracing is Active.
SAMPLED = {"_X_AMZN_TRACE_ID": "Root=1-67890abc-0123456789abcdef01234567;Parent=0123456789abcdef;Sampled=1"}


def measure(runs: int, functions: tuple[str, ...] = FUNCTIONS) -> dict[str, dict[str, float]]:
    """Medians per function: the cold start, its floor, their ratio (the median of the ratios of
    adjacent runs, so that load that changes during the run cancels), and the cold start of a
    first invocation that X-Ray samples (what turning tracing on costs)."""
    require_build()
    configs = function_configs()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="backdrop-coldstart-") as tmp:
        root = lambda_copy(Path(tmp), functions)
        runtime = runtime_packages(Path(tmp) / "runtime")
        layer = root / "opt" / "python"
        runs_of: dict[str, dict[str, list[Start]]] = {
            f: {"fn": [], "floor": [], "traced": []} for f in functions
        }
        for attempt in range(runs + 1):  # the first round fills the page cache and is not counted
            for name in functions:
                task = root / "task" / name
                env = lambda_environment(configs[name], task, {})
                clients = ("tracing", *CLIENTS[name])
                # The traced start (what turning tracing on costs) is sampled every other round.
                order = ("fn", "floor", "traced") if attempt % 2 else ("floor", "fn")
                for kind in order:
                    if kind == "floor":
                        start = run_once("floor", [layer, runtime], env, clients)
                    else:
                        extra = SAMPLED if kind == "traced" else {}
                        start = run_once("function", [task, layer, runtime], {**env, **extra}, clients)
                    if attempt:
                        runs_of[name][kind].append(start)
        for name in functions:
            fn, floor, traced = (runs_of[name][k] for k in ("fn", "floor", "traced"))
            results[name] = {
                "ms": median(s.wall_ms for s in fn),
                "floor_ms": median(s.wall_ms for s in floor),
                "ratio": median(a.wall_ms / b.wall_ms for a, b in zip(fn, floor, strict=True)),
                "import_ms": median(s.phases["import_ms"] for s in fn),
                "clients_ms": median(s.phases["clients_ms"] for s in fn),
                "xray": float(any(s.phases["xray_loaded"] for s in fn)),
                "traced_ms": median(s.wall_ms for s in traced),
                "traced_ratio": median(s.wall_ms for s in traced) / median(s.wall_ms for s in floor),
            }
    return results


def report(results: dict[str, dict[str, float]]) -> None:
    for name, figures in results.items():
        emit(
            "cold_start",
            function=name,
            ms=figures["ms"],
            floor_ms=figures["floor_ms"],
            ratio=round(figures["ratio"], 2),
            target_ratio=1.2,
            import_ms=figures["import_ms"],
            clients_ms=figures["clients_ms"],
            xray_sdk_loaded=bool(figures["xray"]),
            traced_ms=figures["traced_ms"],
            traced_ratio=round(figures["traced_ratio"], 2),
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--function", action="append", choices=FUNCTIONS)
    args = parser.parse_args()
    note(f"cold starts: {args.runs} runs of each function and its floor")
    report(measure(args.runs, tuple(args.function or FUNCTIONS)))


if __name__ == "__main__":
    main()
