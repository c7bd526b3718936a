"""What AWS charges Backdrop per 1,000 images, from the figures measured in the same run.

- Lambda: GB-seconds and requests of submit, callback and copy (one invocation each per image:
  no batching assumed) on the template's memory size and architecture. An invocation's billed
  duration is its own CPU time, slowed to the share of a vCPU its memory size buys (a full one
  at 1,769 MB), plus the time it waited on its peers in the warm benchmark (the local stand-ins
  for AWS's and Runflow's latency); plus the measured cold start ``COLD_STARTS_PER_1000`` times
  per function.
- SQS, DynamoDB (on-demand), S3, EventBridge: the requests moto answered per image during the
  throughput burst. S3's notification (an SQS send) happens inside moto and is added; the
  customer's own upload is not counted. A jobs-table write is billed once for the item and once
  for every index holding it (all four indexes project all attributes), so it costs
  ``ceil(item KB)`` x (1 + ``JOB_INDEXES_PER_WRITE``) write units.
- HTTP API: one request per callback.
Prices: us-east-1, on-demand, without free tiers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from benchmarks.common import FunctionConfig, emit

PRICES = {
    "lambda_gb_s_x86_64": 0.0000166667,
    "lambda_gb_s_arm64": 0.0000133334,
    "lambda_request": 0.20 / 1e6,
    "sqs_request": 0.40 / 1e6,
    "dynamodb_write_unit": 0.625 / 1e6,
    "dynamodb_read_unit": 0.125 / 1e6,
    "s3_put_class": 0.005 / 1000,
    "s3_get_class": 0.0004 / 1000,
    "http_api_request": 1.00 / 1e6,
    "eventbridge_event": 1.00 / 1e6,
    "xray_trace": 5.00 / 1e6,
}
RUNFLOW_USD_PER_1000 = 120.0
VCPU_MB = 1769
COLD_STARTS_PER_1000 = 10
JOB_INDEXES_PER_WRITE = 3
TRACES_PER_IMAGE = 3  # submit, callback and copy invocations, when Tracing is Active


@dataclass(frozen=True)
class Invocation:
    cpu_ms: float
    wall_ms: float


def lambda_cost(
    configs: Mapping[str, FunctionConfig],
    invocations: Mapping[str, Invocation],
    cold_ms: Mapping[str, float],
    architecture: str,
) -> tuple[float, float]:
    """(USD per image, GB-seconds per image) for the functions an image passes through."""
    price = PRICES[f"lambda_gb_s_{architecture}"]
    usd = gb_s = 0.0
    for name, run in invocations.items():
        memory = configs[name].memory_mb
        slowdown = max(1.0, VCPU_MB / memory)
        billed_ms = float(math.ceil(run.cpu_ms * slowdown + max(0.0, run.wall_ms - run.cpu_ms)))
        billed_ms += cold_ms.get(name, 0.0) * slowdown * COLD_STARTS_PER_1000 / 1000
        seconds = billed_ms / 1000 * memory / 1024
        gb_s += seconds
        usd += seconds * price + PRICES["lambda_request"]
    return usd, gb_s


def request_cost(requests: Mapping[str, float], job_item_kb: float) -> dict[str, float]:
    """USD per image by service, from the requests per image moto answered."""
    sqs = sum(v for k, v in requests.items() if k.startswith("sqs:")) + 1  # + S3's notification
    writes = reads = 0.0
    for kind, count in requests.items():
        if kind.startswith("dynamodb:write:"):
            units = math.ceil(job_item_kb) * (1 + JOB_INDEXES_PER_WRITE) if kind.endswith("JobsTable") else 1
            writes += count * units
        elif kind.startswith("dynamodb:read:"):
            reads += count
    s3_put = max(0.0, requests.get("s3:PUT", 0.0) - 1)  # the customer's own upload is theirs
    return {
        "sqs": sqs * PRICES["sqs_request"],
        "dynamodb": writes * PRICES["dynamodb_write_unit"] + reads * PRICES["dynamodb_read_unit"],
        "s3": s3_put * PRICES["s3_put_class"] + requests.get("s3:GET", 0.0) * PRICES["s3_get_class"],
        "http_api": PRICES["http_api_request"],
        "events": requests.get("events:PutEvents", 0.0) * PRICES["eventbridge_event"],
    }


def report(
    configs: Mapping[str, FunctionConfig],
    invocations: Mapping[str, Invocation],
    cold_ms: Mapping[str, float],
    requests: Mapping[str, float],
    job_item_kb: float,
) -> None:
    architecture = configs["SubmitFunction"].architecture
    lambda_usd, gb_s = lambda_cost(configs, invocations, cold_ms, architecture)
    other_arch = "arm64" if architecture == "x86_64" else "x86_64"
    other_usd, _ = lambda_cost(configs, invocations, cold_ms, other_arch)
    parts = request_cost(requests, job_item_kb)
    tracing = configs["SubmitFunction"].tracing
    xray = TRACES_PER_IMAGE * PRICES["xray_trace"] if tracing == "Active" else 0.0
    total = lambda_usd + sum(parts.values()) + xray
    per_1000 = {name: usd * 1000 for name, usd in parts.items()}
    emit(
        "cost",
        usd_per_1000_images=round(total * 1000, 4),
        target_usd=0.05,
        runflow_usd_per_1000=RUNFLOW_USD_PER_1000,
        share_of_runflow=f"{total * 1000 / RUNFLOW_USD_PER_1000:.5%}",
        lambda_usd=round(lambda_usd * 1000, 5),
        lambda_gb_s_per_image=round(gb_s, 5),
        architecture=architecture,
        memory_mb="/".join(str(configs[n].memory_mb) for n in invocations),
        **{f"{name}_usd": round(value, 5) for name, value in per_1000.items()},
        xray_usd=round(xray * 1000, 5),
        tracing=tracing,
        **{f"lambda_usd_if_{other_arch}": round(other_usd * 1000, 5)},
        job_item_kb=round(job_item_kb, 2),
    )
    emit(
        "cost_prices",
        **{name: f"{price:.10g}" for name, price in PRICES.items()},
        vcpu_mb=VCPU_MB,
        cold_starts_per_1000=COLD_STARTS_PER_1000,
        job_indexes_per_write=JOB_INDEXES_PER_WRITE,
    )
