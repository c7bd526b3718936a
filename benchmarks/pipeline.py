"""The whole local stack under a burst of uploads, with the local Runflow's processing instant.

Three figures, each from a fresh ``LocalStack`` (moto, the local Runflow, the HTTP API, the event
source pollers and the built functions in their own worker processes, on this machine's cores):

- ``throughput``: a burst of uploads after a warm-up; images per second from the first upload to
  the last job finished, and the CPU time all function workers used, per image;
- ``callback_answer``: how long Backdrop took to answer each callback, as the local Runflow
  measured it (each delivery's ``response_time_ms``), while copies of 50 MB outputs are in flight;
- ``callback_to_result``: from the callback being answered (the delivery's ``completed_at``) to
  the job being finished with its result written (the job's ``completed_at``).

Jobs are seen finishing through the completion events the stack routes to a queue, so the
benchmark never scans the table while it is under load.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import emit, note, percentile, require_build
from benchmarks.moto_counting import CountingMotoServer
from benchmarks.procstat import all_workers, cpu_ns
from benchmarks.warm import sample_jpeg

MB = 1024 * 1024


@dataclass
class Finished:
    job_id: str
    run_id: str
    status: str
    completed_at: str
    key: str


@dataclass
class Burst:
    images: int
    seconds: float
    cpu_ms: float
    stack_cpu_ms: float
    finished: list[Finished]
    requests: Counter[str]
    deliveries: dict[str, dict[str, Any]]
    job_item_kb: float = 0.0
    # Milliseconds each job spent in each stage (see ``phases``), for finding what bounds throughput.
    phases: dict[str, list[float]] = field(default_factory=dict)


def item_size(item: dict[str, Any]) -> int:
    """A DynamoDB item's size as DynamoDB bills it (names plus values), from its wire format."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: dict[str, Any]) -> int:
    (kind, inner), *_ = value.items()
    if kind in ("S", "B"):
        return len(str(inner).encode())
    if kind == "N":
        return len(str(inner)) // 2 + 2
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(len(k.encode()) + 1 + _value_size(v) for k, v in inner.items())
    return sum(len(str(v).encode()) for v in inner)


def _parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class Pipeline:
    """One local stack, started with instant processing padded to ``output_bytes``."""

    def __init__(self, output_bytes: int, *, copy_concurrency: int = 2, submit_concurrency: int = 2) -> None:
        from backdrop_local.runflow import FaultSettings
        from backdrop_local.stack import LocalStack, StackOptions

        require_build()
        self._state = Path(tempfile.mkdtemp(prefix="backdrop-pipeline-"))
        options = StackOptions(
            stack_name=f"bench-{uuid.uuid4().hex[:6]}",
            state_dir=self._state,
            reconcile_every_seconds=3600.0,  # the reconciler has nothing to do in a burst
            runflow_faults=FaultSettings(processing="instant", instant_output_bytes=output_bytes),
            runflow_workers=4,
            submit_concurrency=submit_concurrency,
            copy_concurrency=copy_concurrency,
            log_level="WARNING",
        )
        self.stack = LocalStack(options)
        self.moto = CountingMotoServer()
        self.stack.moto = self.moto  # type: ignore[assignment]  # same start/stop/endpoint_url
        self._body = sample_jpeg()
        self._seen = 0

    def __enter__(self) -> Pipeline:
        self.stack.__enter__()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.__exit__(*exc)

    def upload(self, keys: list[str], threads: int = 4) -> None:
        resources = self.stack.resources
        assert resources is not None
        s3 = self.stack.s3()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(
                pool.map(
                    lambda k: s3.put_object(Bucket=resources.uploads_bucket, Key=k, Body=self._body), keys
                )
            )

    def wait_finished(self, count: int, timeout: float) -> list[Finished]:
        """The next ``count`` completion events (jobs finished), in the order they arrive."""
        resources = self.stack.resources
        assert resources is not None
        sqs = self.stack.sqs()
        done: list[Finished] = []
        deadline = time.monotonic() + timeout
        while len(done) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(done)} of {count} jobs finished within {timeout:.0f} s")
            messages = sqs.receive_message(
                QueueUrl=resources.events_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", [])
            for message in messages:
                event = json.loads(message["Body"])
                detail = event.get("detail", event)
                done.append(
                    Finished(
                        job_id=detail["job_id"],
                        run_id=detail.get("run_id") or "",
                        status=detail["status"],
                        completed_at=detail["completed_at"],
                        key=detail["source"]["key"],
                    )
                )
            if messages:
                sqs.delete_message_batch(
                    QueueUrl=resources.events_queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
                    ],
                )
        return done

    def keys(self, count: int, label: str) -> list[str]:
        resources = self.stack.resources
        assert resources is not None
        first = self._seen
        self._seen += count
        return [f"{resources.upload_prefix}{label}/{i:05d}.jpg" for i in range(first, first + count)]

    def burst(self, images: int, label: str, timeout: float) -> Burst:
        before = {pid: cpu_ns(pid) for pid in all_workers()}
        stack_before = cpu_ns(os.getpid())
        counts = self.moto.counts()
        started = time.monotonic()
        started_at = time.time()
        self.upload(self.keys(images, label))
        finished = self.wait_finished(images, timeout)
        seconds = time.monotonic() - started
        after = {pid: cpu_ns(pid) for pid in all_workers()}
        stack_cpu = (cpu_ns(os.getpid()) - stack_before) / 1e6
        cpu = sum(after[pid] - before.get(pid, 0) for pid in after) / 1e6
        requests = self.moto.counts()
        requests.subtract(counts)
        deliveries = self.deliveries(finished)
        return Burst(
            images,
            seconds,
            cpu,
            stack_cpu,
            finished,
            +requests,
            deliveries,
            self.job_item_kb(),
            self.phases(finished, deliveries, started_at),
        )

    def phases(
        self, finished: list[Finished], deliveries: dict[str, dict[str, Any]], started_at: float
    ) -> dict[str, list[float]]:
        """Where each job's time went, from the jobs table's and the local Runflow's timestamps:
        ``queued`` (burst start to job created: waiting for a submit worker), ``submit`` (created to
        run created), ``runflow`` (to the run finished), ``callback`` (to its delivery answered) and
        ``copy`` (to the result written and the job finished)."""
        resources = self.stack.resources
        assert resources is not None
        ddb = self.stack.dynamodb()
        stages: dict[str, list[float]] = {
            name: [] for name in ("queued", "submit", "runflow", "callback", "copy")
        }
        with self.runflow_client() as http:
            for job in finished:
                delivery = deliveries.get(job.run_id)
                if job.status != "succeeded" or delivery is None:
                    continue
                item = ddb.get_item(TableName=resources.jobs_table, Key={"job_id": {"S": job.job_id}})["Item"]
                run = http.get(f"/v1/runs/{job.run_id}").json()
                marks = [
                    started_at,
                    _parse(item["created_at"]["S"]),
                    _parse(item["submitted_at"]["S"]),
                    _parse(run["completed_at"]),
                    _parse(delivery["completed_at"]),
                    _parse(item["completed_at"]["S"]),
                ]
                for name, begin, end in zip(stages, marks, marks[1:], strict=False):
                    stages[name].append((end - begin) * 1000)
        return stages

    def runflow_client(self) -> httpx.Client:
        """An HTTP client for the local Runflow's API, with the stack's API key."""
        from backdrop_local.stack import RUNFLOW_API_KEY

        assert self.stack.runflow is not None
        return httpx.Client(
            base_url=self.stack.runflow.url, headers={"Authorization": f"Bearer {RUNFLOW_API_KEY}"}
        )

    def job_item_kb(self, sample: int = 20) -> float:
        """The largest finished job item among a few, in DynamoDB's own size units (KB)."""
        resources = self.stack.resources
        assert resources is not None
        items = self.stack.dynamodb().scan(TableName=resources.jobs_table, Limit=sample).get("Items", [])
        return max((item_size(item) for item in items), default=0) / 1024

    def deliveries(self, finished: list[Finished]) -> dict[str, dict[str, Any]]:
        """Each run's successful callback delivery, as the local Runflow recorded it."""
        found: dict[str, dict[str, Any]] = {}
        with self.runflow_client() as http:
            for job in finished:
                if not job.run_id:
                    continue
                for delivery in http.get(f"/v1/runs/{job.run_id}/callback").json():
                    attempts = [a for a in delivery["attempts"] if a.get("status_code") == 200]
                    if attempts and delivery.get("completed_at"):
                        found[job.run_id] = {"answer_ms": attempts[0]["response_time_ms"], **delivery}
                        break
        return found


def throughput(images: int, warmup: int, timeout: float) -> Burst:
    with Pipeline(0) as pipeline:
        note(f"throughput: warm-up of {warmup} images")
        pipeline.upload(pipeline.keys(warmup, "warmup"))
        pipeline.wait_finished(warmup, timeout)
        note(f"throughput: burst of {images} images")
        return pipeline.burst(images, "burst", timeout)


def with_big_copies(images: int, warmup: int, output_mb: int, timeout: float) -> Burst:
    with Pipeline(output_mb * MB) as pipeline:
        note(f"callbacks during {output_mb} MB copies: warm-up of {warmup} images")
        pipeline.upload(pipeline.keys(warmup, "warmup"))
        pipeline.wait_finished(warmup, timeout)
        note(f"callbacks during {output_mb} MB copies: {images} images")
        return pipeline.burst(images, "big", timeout)


def report_throughput(burst: Burst) -> None:
    failed = [f for f in burst.finished if f.status != "succeeded"]
    cores = os.cpu_count() or 1
    per_image = (burst.cpu_ms + burst.stack_cpu_ms) / burst.images
    emit(
        "throughput",
        images_per_s=burst.images / burst.seconds,
        backdrop_cpu_ms_per_image=burst.cpu_ms / burst.images,
        # moto, the local Runflow, the HTTP API and the event sources: one Python process
        stack_cpu_ms_per_image=burst.stack_cpu_ms / burst.images,
        # What this machine's cores could do if Backdrop and the local stack had them to themselves,
        # and how busy the machine was (other tenants included) while the burst ran.
        cpu_bound_images_per_s=cores * 1000 / per_image,
        load_avg_1m=os.getloadavg()[0],
        cores=cores,
        images=burst.images,
        seconds=burst.seconds,
        not_succeeded=len(failed),
        target_images_per_s=20,
    )
    emit(
        "throughput_phases",
        **{
            f"{name}_{label}_ms": percentile(samples, rank)
            for name, samples in burst.phases.items()
            for label, rank in (("p50", 50), ("p90", 90))
        },
        jobs=len(next(iter(burst.phases.values()), [])),
    )


def report_callbacks(burst: Burst, output_mb: int) -> None:
    answers = [float(d["answer_ms"]) for d in burst.deliveries.values()]
    emit(
        "callback_answer",
        p50_ms=percentile(answers, 50),
        p99_ms=percentile(answers, 99),
        max_ms=max(answers) if answers else float("nan"),
        with_copy_mb=output_mb,
        callbacks=len(answers),
        target_p99_ms=1000,
    )
    gaps = [
        (_parse(job.completed_at) - _parse(burst.deliveries[job.run_id]["completed_at"])) * 1000
        for job in burst.finished
        if job.run_id in burst.deliveries and job.status == "succeeded"
    ]
    emit(
        "callback_to_result",
        p50_ms=percentile(gaps, 50),
        p99_ms=percentile(gaps, 99),
        with_copy_mb=output_mb,
        jobs=len(gaps),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--big-images", type=int, default=16)
    parser.add_argument("--big-mb", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args()
    burst = throughput(args.images, 12, args.timeout)
    report_throughput(burst)
    print(json.dumps({k: v / burst.images for k, v in burst.requests.items()}, indent=1), flush=True)
    report_callbacks(with_big_copies(args.big_images, 4, args.big_mb, args.timeout), args.big_mb)


if __name__ == "__main__":
    main()
