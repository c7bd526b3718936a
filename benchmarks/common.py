"""What every benchmark shares: where the built functions are, Lambda's layout, figures and lines.

Each figure is printed as one ``BENCH <kind> name=value ...`` line. Timings that drift with the
machine's load are always printed next to a reference measured in the same run.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / ".aws-sam" / "build"
LAYER = BUILD / "CoreLayer" / "python"
TEMPLATE = ROOT / "template.yaml"
REGION = "us-east-1"
FUNCTIONS = ("SubmitFunction", "CallbackFunction", "CopyFunction", "ReconcileFunction")


def require_build() -> None:
    for path in (LAYER, *(BUILD / name for name in FUNCTIONS)):
        if not path.is_dir():
            raise SystemExit(f"{path} is missing: run `make build` first")


def bench_line(kind: str, **pairs: Any) -> str:
    """``BENCH kind a=1 b=2.5``: floats to a sensible precision, no spaces inside values."""
    parts = [f"BENCH {kind}"]
    for name, value in pairs.items():
        if isinstance(value, float):
            text = f"{value:.4f}" if abs(value) < 0.01 and value != 0 else f"{value:.3g}"
            if abs(value) >= 1000:
                text = f"{value:.0f}"
            elif abs(value) >= 10 and "e" not in text:
                text = f"{value:.1f}"
        else:
            text = str(value)
        parts.append(f"{name}={text.replace(' ', '_')}")
    return " ".join(parts)


def emit(kind: str, **pairs: Any) -> None:
    print(bench_line(kind, **pairs), flush=True)


def note(text: str) -> None:
    """Progress for the reader, on stderr so that stdout holds only BENCH lines."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def percentile(samples: Sequence[float], percent: float) -> float:
    """Nearest rank, as the local Runflow's stats compute it."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(percent * len(ordered) / 100) - 1)]


def median(samples: Iterable[float]) -> float:
    return float(statistics.median(list(samples)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def runtime_packages(target: Path) -> Path:
    """What the managed runtime ships besides the standard library (boto3 and its dependencies)."""
    from backdrop_local.lambdas import runtime_dir

    return runtime_dir(target)


def lambda_copy(target: Path, functions: Sequence[str] = FUNCTIONS) -> Path:
    """The function folders and the layer exactly as ``sam build`` made them: the layer with the
    bytecode its build compiled, the functions without any (Lambda's ``/var/task`` and ``/opt`` are
    read-only, so what is not shipped compiled is compiled again at every cold start, as here)."""
    shutil.copytree(LAYER, target / "opt" / "python", dirs_exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in functions:
        shutil.copytree(BUILD / name, target / "task" / name, ignore=ignore, dirs_exist_ok=True)
    return target


@dataclass(frozen=True)
class FunctionConfig:
    """A function's deployment settings as the template states them."""

    name: str
    memory_mb: int
    architecture: str
    runtime: str
    timeout: int
    tracing: str
    environment: dict[str, str]
    handler: str


def function_configs(stack_name: str = "backdrop") -> dict[str, FunctionConfig]:
    from backdrop_local.template import Template

    template = Template(TEMPLATE, stack_name=stack_name, region=REGION)
    for queue in template.resources_of_type("AWS::SQS::Queue"):  # Ref of a queue is its URL
        template.override_ref(
            queue, f"https://sqs.{REGION}.amazonaws.com/123456789012/{template.physical_id(queue)}"
        )
    globals_ = template.doc.get("Globals", {}).get("Function", {})
    configs: dict[str, FunctionConfig] = {}
    for name in template.functions():
        props = template.resource(name)["Properties"]
        spec = template.function(name)
        architectures = props.get("Architectures", globals_.get("Architectures", ["x86_64"]))
        configs[name] = FunctionConfig(
            name=name,
            memory_mb=int(template.evaluate(props.get("MemorySize", globals_.get("MemorySize", 128)))),
            architecture=str(architectures[0]),
            runtime=str(props.get("Runtime", globals_.get("Runtime"))),
            timeout=spec.timeout,
            tracing=str(template.evaluate(props.get("Tracing", globals_.get("Tracing", "PassThrough")))),
            environment=spec.environment,
            handler=spec.handler,
        )
    return configs


def lambda_environment(config: FunctionConfig, task_root: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The variables Lambda sets for a function, plus the template's own."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(task_root),
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{config.runtime}",
        "AWS_LAMBDA_FUNCTION_NAME": config.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_SESSION_TOKEN": "bench",
        **config.environment,
        **extra,
    }
    return env
