"""Fault-injection suite: the whole local stack with every fault on at once, proving that nothing is
lost and nothing is billed twice. Prints one line of figures.

Faults: 429 and 5xx on run creation, runs created whose answer is lost (504), dropped, duplicated
and delayed callbacks, failing output URLs, processing failures, duplicated S3 events, the callback
function dying mid-copy (after it verified the signature and moved the job to ``copying``), and
one restart of the local Runflow's callback sender in the middle. Forged, tampered and unsigned
callbacks are sent throughout.

Size: ``BACKDROP_CHAOS_UPLOADS`` (default 200; ``make chaos N=2000`` for the large run).
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from backdrop.jobs import TERMINAL
from backdrop.signatures import sign
from backdrop_local.aws import scan_items
from backdrop_local.runflow import FaultSettings
from backdrop_local.stack import RUNFLOW_API_KEY, LocalStack, StackOptions

UPLOADS = int(os.environ.get("BACKDROP_CHAOS_UPLOADS", "200"))
CONVERGE_LIMIT_S = max(240.0, UPLOADS * 1.2)
# Bounded, but by the size asked for: uploading and converging both grow with it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(CONVERGE_LIMIT_S + UPLOADS * 0.3 + 120)]
FAULTS = FaultSettings(
    create_429=0.15,
    create_5xx=0.1,
    create_answer_lost=0.05,
    callback_drop=0.15,
    callback_duplicate=0.15,
    callback_delay_s=0.5,
    output_fetch_error=0.1,
    processing_failure=0.05,
)


def photo(rng: random.Random, fmt: str) -> bytes:
    """A small 'product shot': a coloured shape on a light, slightly graded background."""
    width, height = 120, 96
    image = Image.new("RGB", (width, height), (232, 232, 228))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        shade = 236 - y // 8
        draw.line([(0, y), (width, y)], fill=(shade, shade, shade - 3))
    colour = (rng.randrange(40, 200), rng.randrange(20, 120), rng.randrange(20, 120))
    draw.ellipse([30, 18, 90, 80], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def plan_uploads(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """Mixed valid and invalid uploads, each with the outcome a user would expect."""
    plan: list[dict[str, Any]] = []
    for i in range(count):
        roll = rng.random()
        key = f"uploads/chaos/{i:05d}"
        if roll < 0.70:
            fmt, ext = rng.choice([("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")])
            meta = rng.choice([{}, {"background-color": "#1E90FF"}, {"background-color": "241,241,241"}])
            plan.append({"key": f"{key}.{ext}", "body": photo(rng, fmt), "meta": meta, "expect": "processed"})
        elif roll < 0.78:
            plan.append({"key": f"{key}.jpg", "body": b"", "meta": {}, "expect": "rejected:EMPTY_OBJECT"})
        elif roll < 0.86:
            plan.append(
                {
                    "key": f"{key}.png",
                    "body": b"not an image at all\n",
                    "meta": {},
                    "expect": "rejected:UNSUPPORTED_TYPE",
                }
            )
        elif roll < 0.94:
            plan.append(
                {
                    "key": f"{key}.jpg",
                    "body": photo(rng, "JPEG"),
                    "meta": {"background-color": "300,0,0"},
                    "expect": "rejected:INVALID_COLOR",
                }
            )
        else:
            truncated = photo(rng, "JPEG")[:200]  # passes the magic-byte check, cannot be decoded
            plan.append({"key": f"{key}.jpg", "body": truncated, "meta": {}, "expect": "failed"})
    return plan


def scan_jobs(stack: LocalStack) -> list[dict[str, Any]]:
    assert stack.resources is not None
    return scan_items(stack.dynamodb(), stack.resources.jobs_table)


def duplicate_notification(stack: LocalStack, key: str, head: dict[str, Any]) -> None:
    """S3 delivers at least once: send the same object-created event a second time."""
    assert stack.resources is not None
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": stack.resources.uploads_bucket},
            "object": {
                "key": key,
                "size": head["ContentLength"],
                "eTag": head["ETag"].strip('"'),
                "versionId": head.get("VersionId"),
            },
        },
    }
    stack.sqs().send_message(
        QueueUrl=stack.resources.queue_url, MessageBody=json.dumps({"Records": [record]})
    )


def hostile_callbacks(stack: LocalStack, http: httpx.Client, jobs: list[dict[str, Any]]) -> Counter[int]:
    """Forged, tampered-replay and unsigned callbacks aimed at real jobs; returns answer codes."""
    answers: Counter[int] = Counter()
    callback_url, runflow = stack.info["callback_url"], stack.info["runflow_url"]
    for job in jobs:
        body = json.dumps(
            {
                "event": "run.failed",
                "run_id": job.get("run_id") or "x",
                "status": "failed",
                "output": None,
                "metadata": {"job_id": job["job_id"]},
            }
        ).encode()
        answers[
            http.post(callback_url, content=body, headers={"Content-Type": "application/json"}).status_code
        ] += 1
        answers[
            http.post(
                callback_url,
                content=body,
                headers={"Runflow-Signature": "ab" * 32, "Content-Type": "application/json"},
            ).status_code
        ] += 1
        if job.get("run_id"):
            deliveries = http.get(
                f"{runflow}/v1/runs/{job['run_id']}/callback",
                headers={"Authorization": f"Bearer {RUNFLOW_API_KEY}"},
            ).json()
            for delivery in deliveries[:1]:
                original = delivery["payload_bytes"]
                # The signature Runflow sent with the original body, replayed over a changed body.
                signature = sign(original.encode(), stack.callback_secret)
                tampered = original.replace('"succeeded"', '"canceled"').replace('"failed"', '"canceled"')
                answers[
                    http.post(
                        callback_url,
                        content=tampered.encode(),
                        headers={"Runflow-Signature": signature, "Content-Type": "application/json"},
                    ).status_code
                ] += 1
    return answers


def test_nothing_lost_nothing_billed_twice(tmp_path: Path, report_figures: Callable[[str], None]) -> None:
    rng = random.Random(20261124)
    options = StackOptions(
        stack_name="chaos-stack",
        state_dir=tmp_path / "state",
        reconcile_every_seconds=3.0,
        reconcile_min_age_seconds=8,
        visibility_timeout_seconds=6,
        submit_concurrency=3,
        callback_concurrency=4,
        runflow_workers=2,
        runflow_faults=FAULTS,
        runflow_seed=7,
        crash_mid_copy_rate=0.1,
        fault_seed=7,
        log_level="INFO",
    )
    plan = plan_uploads(rng, UPLOADS)
    started = time.monotonic()
    with LocalStack(options) as stack, httpx.Client(timeout=30) as http:
        assert stack.resources is not None and stack.runflow is not None
        s3 = stack.s3()
        upload_times: dict[str, float] = {}
        for index, item in enumerate(plan):
            s3.put_object(
                Bucket=stack.resources.uploads_bucket,
                Key=item["key"],
                Body=item["body"],
                Metadata=item["meta"],
            )
            upload_times[item["key"]] = time.monotonic()
            if rng.random() < 0.15:
                head = s3.head_object(Bucket=stack.resources.uploads_bucket, Key=item["key"])
                duplicate_notification(stack, item["key"], head)
            if index == len(plan) // 2:
                stack.runflow.restart_callback_sender()

        # Converge: every job terminal (the reconciler recovers what callbacks did not deliver).
        expected_jobs = len(plan)
        converged_at: float | None = None
        hostile: Counter[int] = Counter()
        while time.monotonic() - started < CONVERGE_LIMIT_S:
            jobs = scan_jobs(stack)
            if not hostile and len(jobs) >= expected_jobs // 2:
                hostile = hostile_callbacks(stack, http, jobs[:10])
            if len(jobs) == expected_jobs and all(j["status"] in TERMINAL for j in jobs):
                converged_at = time.monotonic()
                break
            time.sleep(1.0)
        jobs = scan_jobs(stack)
        statuses = Counter(j["status"] for j in jobs)
        assert converged_at is not None, (
            f"not converged in {CONVERGE_LIMIT_S:.0f}s: {dict(statuses)}, {len(jobs)} jobs"
        )

        stack.runflow.set_faults(FaultSettings())  # read outputs back without injected errors
        by_key = {j["source_key"]: j for j in jobs}
        assert len(by_key) == len(jobs) == len(plan), "one job per upload"
        results = lost = 0
        submitted_uploads = 0
        for item in plan:
            job = by_key[item["key"]]
            expect = item["expect"]
            assert job["status"] in TERMINAL
            if job["status"] != "succeeded":
                assert job.get("error_code") and job.get("error_message"), job
            if expect.startswith("rejected:"):
                assert job["status"] == "rejected" and job["error_code"] == expect.split(":", 1)[1], job
                continue
            submitted_uploads += 1
            if expect == "failed":
                # Undecodable; unless the injected processing failure struck first, which is just as final.
                assert job["status"] == "failed" and job["error_code"] in (
                    "INPUT_UNREADABLE",
                    "PROCESSING_FAILED",
                ), job
                continue
            if job["status"] == "failed" and job["error_code"] == "PROCESSING_FAILED":
                continue  # Runflow said so (injected); recorded with Runflow's reason
            if job["status"] != "succeeded":
                lost += 1
                continue
            [result_key] = job["result_keys"]
            stored = s3.get_object(Bucket=stack.resources.results_bucket, Key=result_key)["Body"].read()
            run = http.get(
                f"{stack.info['runflow_url']}/v1/runs/{job['run_id']}",
                headers={"Authorization": f"Bearer {RUNFLOW_API_KEY}"},
            ).json()
            produced = http.get(run["output"]["outputs"][0]["url"]).content
            assert stored == produced, f"result of {item['key']} differs from what Runflow produced"
            results += 1
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=stack.resources.results_bucket)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        assert len(keys) == len(set(keys)) == results, "exactly one result object per succeeded upload"

        stats = stack.runflow.stats()
        runs_per_upload = stats["runs_created"] / submitted_uploads
        duplicate_runs = stats["runs_created"] - submitted_uploads
        # Had any forged or tampered callback been accepted, its job would have ended failed with
        # RUN_FAILED (the forged bodies carry no failure code) or canceled.
        assert not [j for j in jobs if j.get("error_code") == "RUN_FAILED" or j["status"] == "canceled"]
        max_converge = converged_at - started
        logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "state" / "logs").glob("*.log"))
        figures = (
            f"CHAOS uploads={len(plan)} submitted={submitted_uploads} results={results} lost={lost} "
            f"duplicate_runs={duplicate_runs} runs_per_upload={runs_per_upload:.2f} "
            f"statuses={dict(statuses)} hostile_answers={dict(hostile)} "
            f"callbacks_sent={stats.get('callbacks_sent')} answers_lost={stats.get('create_answers_lost')} "
            f"runs_adopted={logs.count('Adopted the run an earlier attempt created')} "
            f"max_time_to_converge_s={max_converge:.1f}"
        )
        print("\n" + figures)
        report_figures(figures)
        # Secrets never reach the logs, whatever happened.
        assert stack.callback_secret not in logs and RUNFLOW_API_KEY not in logs
        assert lost == 0
        assert duplicate_runs == 0 and runs_per_upload == 1.0
        assert hostile and set(hostile) == {401}, f"hostile callbacks answered {dict(hostile)}"
