"""``make bench``: every benchmark in one run, one ``BENCH`` line per figure on stdout.

Order: cold starts (fresh processes), warm invocations (one image at a time), the whole local
stack (a burst with instant processing; callbacks during 50 MB copies), output copies against the
naive peer (separate processes), content identity (a photo's SHA-256, streamed and from S3's
checksum), then the cost, computed from what was measured before it.
Progress goes to stderr. Every part is bounded in time; the whole run takes a few minutes.

    .venv/bin/python -m benchmarks.bench [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import cold_start, cost, identity, pipeline, warm
from benchmarks.common import emit, function_configs, note

COPY_SCRIPT = Path(__file__).with_name("copy_memory.py")
COPY_SIZES_MB = (1, 20, 200)
COPY_TIMEOUT_S = 300.0
BIG_COPY_MB = 50


def copy_figures(size_mb: int, peer: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, str(COPY_SCRIPT), "--mb", str(size_mb), "--peer", peer, "--json"],
        capture_output=True,
        text=True,
        timeout=COPY_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"copy benchmark ({peer}, {size_mb} MB) failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def copies() -> None:
    for size in COPY_SIZES_MB:
        note(f"copy of a {size} MB output: Backdrop's streaming copy and the naive peer")
        ours, naive = copy_figures(size, "backdrop"), copy_figures(size, "naive")
        emit(
            "copy",
            size_mb=size,
            peak_extra_rss_mb=ours["peak_extra_rss_mb"],
            mb_per_s=ours["mb_per_s"],
            naive_peak_extra_rss_mb=naive["peak_extra_rss_mb"],
            naive_mb_per_s=naive["mb_per_s"],
            speed_ratio=round(ours["mb_per_s"] / naive["mb_per_s"], 2),
            memory_ratio=round(ours["peak_extra_rss_mb"] / max(naive["peak_extra_rss_mb"], 0.1), 3),
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer samples, for a smoke test")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    began = time.monotonic()
    runs, images, burst, big = (3, 15, 40, 6) if args.quick else (7, 60, 150, 20)

    note(f"cold starts: {runs} runs of each function and of its floor")
    cold = cold_start.measure(runs)
    cold_start.report(cold)

    note(f"warm invocations: {images} images through submit, callback and copy")
    measured = warm.run(images)
    warm.report(measured)

    flow = pipeline.throughput(burst, 12, 240.0)
    pipeline.report_throughput(flow)
    pipeline.report_callbacks(pipeline.with_big_copies(big, 4, BIG_COPY_MB, 240.0), BIG_COPY_MB)

    copies()

    repeats = 3 if args.quick else 9
    identity.report(identity.measure(repeats), repeats)

    configs = function_configs()
    invocations = {
        name: cost.Invocation(
            cpu_ms=warm.percentile(samples.cpu_ms, 50), wall_ms=warm.percentile(samples.wall_ms, 50)
        )
        for name, samples in measured.samples.items()
    }
    requests = {kind: count / flow.images for kind, count in flow.requests.items()}
    cost.report(configs, invocations, {n: c["ms"] for n, c in cold.items()}, requests, flow.job_item_kb)
    note(f"done in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
