"""Fault-injection suite: the whole local stack with every fault on at once, proving that nothing is
lost, nothing is billed twice and the newest version of an object always wins. Runs once with
Runflow honouring ``Idempotency-Key`` on single runs and once with it ignoring the key, and prints
one line of figures per mode.

Faults: 429 and 5xx on run creation, runs created whose answer is lost (504) or whose connection
is reset, a run list that lags behind creates (``LIST_LAG_S``, longer than the settle window, so
an empty list after a lost answer proves nothing), dropped, duplicated and delayed callbacks,
failing output URLs, processing failures, duplicated S3 events, the copy function dying mid-copy
(after it took the result lease and began streaming), and one restart of the local Runflow's
callback sender in the middle. Some objects are uploaded again while their first version is in
flight. Forged, tampered and unsigned callbacks are sent throughout.

Size: ``BACKDROP_CHAOS_UPLOADS`` per mode (default 150; ``make chaos N=2000`` for the large run).
The time to converge is a figure, not a limit; the bound below only stops a hung run.
"""

from __future__ import annotations

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
from backdrop_local import iamcheck
from backdrop_local.aws import scan_items
from backdrop_local.runflow import FaultSettings
from backdrop_local.stack import RUNFLOW_API_KEY, LocalStack, StackOptions
from tests.support.images import encoded

UPLOADS = int(os.environ.get("BACKDROP_CHAOS_UPLOADS", "150"))
# Only against a hang: a healthy run converges in a fraction of this (see the figure it prints).
HANG_LIMIT_S = max(float(os.environ.get("BACKDROP_CHAOS_HANG_S", "900")), UPLOADS * 4.0)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(HANG_LIMIT_S + UPLOADS * 0.5 + 300)]
REUPLOAD_SHARE = 0.06  # objects uploaded again (another colour) while the first version is in flight
# Runs are listed this long after their creation: past the stack's create settle window (10 s below),
# so a job whose create answer was lost sees an empty list when a second create would have been sent.
LIST_LAG_S = 12.0


def faults(idempotency: str) -> FaultSettings:
    return FaultSettings(
        create_429=0.15,
        create_5xx=0.1,
        create_answer_lost=0.05,
        create_answer_reset=0.03,
        callback_drop=0.15,
        callback_duplicate=0.15,
        callback_delay_s=0.5,
        output_fetch_error=0.1,
        processing_failure=0.05,
        idempotency_keys=idempotency,  # type: ignore[arg-type]
        list_lag_s=LIST_LAG_S,
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
    return encoded(image, fmt)


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


def drain_events(stack: LocalStack) -> list[dict[str, Any]]:
    """Completion events the stack's bus delivered to the local events queue since the last drain."""
    sqs = stack.sqs()
    found: list[dict[str, Any]] = []
    while got := sqs.receive_message(
        QueueUrl=stack.info["events_queue_url"], MaxNumberOfMessages=10, WaitTimeSeconds=1
    ).get("Messages", []):
        for message in got:
            found.append(json.loads(message["Body"]))
            sqs.delete_message(
                QueueUrl=stack.info["events_queue_url"], ReceiptHandle=message["ReceiptHandle"]
            )
    return found


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


@pytest.mark.parametrize("idempotency", ["honour", "ignore"])
def test_nothing_lost_nothing_billed_twice(
    tmp_path: Path, report_figures: Callable[[str], None], idempotency: str
) -> None:
    rng = random.Random(20261124)
    options = StackOptions(
        stack_name=f"chaos-{idempotency}",
        state_dir=tmp_path / "state",
        reconcile_every_seconds=3.0,
        reconcile_min_age_seconds=8,
        visibility_timeout_seconds=6,
        create_settle_seconds=10.0,
        submit_concurrency=3,
        copy_concurrency=2,
        callback_concurrency=4,
        runflow_workers=2,
        runflow_faults=faults(idempotency),
        runflow_seed=7,
        crash_mid_copy_rate=0.1,
        fault_seed=7,
        log_level="INFO",
        # Every run is reserved against the daily budget as in production, but the budget must not
        # hold jobs here (holding is tested on its own): the template's 500 a day would stop N=2000.
        parameter_overrides={"DailyRunBudget": str(UPLOADS * 3)},
    )
    plan = plan_uploads(rng, UPLOADS)
    started = time.monotonic()
    with LocalStack(options) as stack, httpx.Client(timeout=30) as http:
        assert stack.resources is not None and stack.runflow is not None
        s3 = stack.s3()
        bucket = stack.resources.uploads_bucket
        newest: dict[str, str] = {}  # key -> version id of its newest upload
        uploaded: set[tuple[str, str]] = set()  # every (key, version id) put
        second_versions: set[str] = set()
        pending: list[tuple[int, str]] = []  # (upload index it is due at, key)

        def upload_again(key: str) -> None:
            # A second version of the object, in another colour, while the first may be in flight.
            again = s3.put_object(
                Bucket=bucket, Key=key, Body=photo(rng, "PNG"), Metadata={"background-color": "#00AA00"}
            )
            newest[key] = again["VersionId"]
            uploaded.add((key, again["VersionId"]))
            second_versions.add(key)

        for index, item in enumerate(plan):
            put = s3.put_object(Bucket=bucket, Key=item["key"], Body=item["body"], Metadata=item["meta"])
            newest[item["key"]] = put["VersionId"]
            uploaded.add((item["key"], put["VersionId"]))
            if rng.random() < 0.15:
                head = s3.head_object(Bucket=bucket, Key=item["key"])
                duplicate_notification(stack, item["key"], head)
            if item["expect"] == "processed" and rng.random() < REUPLOAD_SHARE:
                pending.append((index + rng.randrange(1, 6), item["key"]))
            while pending and pending[0][0] <= index:
                upload_again(pending.pop(0)[1])
            if index == len(plan) // 2:
                stack.runflow.restart_callback_sender()
        for _due, key in pending:
            upload_again(key)

        # Completion events are counted as they come (a queue left to grow makes every SQS call
        # on it slower in moto), and checked once the run is over.
        events: Counter[str] = Counter()
        deliveries: dict[str, list[str]] = {}  # event_id -> EventBridge ids of its deliveries

        def collect_events() -> None:
            for event in drain_events(stack):
                events[event["detail"]["event_id"]] += 1
                deliveries.setdefault(event["detail"]["event_id"], []).append(event["id"])

        # Converge: every job terminal (the reconciler recovers what callbacks did not deliver).
        converged_at: float | None = None
        hostile: Counter[int] = Counter()
        while time.monotonic() - started < HANG_LIMIT_S:
            collect_events()
            jobs = scan_jobs(stack)
            if not hostile and len(jobs) >= len(plan) // 2:
                hostile = hostile_callbacks(stack, http, jobs[:10])
            seen = {(j["source_key"], j.get("source_version_id")) for j in jobs}
            if seen >= uploaded and all(j["status"] in TERMINAL for j in jobs):
                converged_at = time.monotonic()
                break
            time.sleep(1.0 + len(jobs) / 1000)  # each scan reads the whole table: poll less as it grows
        jobs = scan_jobs(stack)
        statuses = Counter(j["status"] for j in jobs)
        # Notifications name their version (as S3's do): every version put has a job, an older one
        # whose notification came after the newer upload ends superseded.
        missing = uploaded - {(j["source_key"], j.get("source_version_id")) for j in jobs}
        assert converged_at is not None, (
            f"hung: not converged in {HANG_LIMIT_S:.0f}s: {dict(statuses)}; no job for {sorted(missing)[:5]}"
        )

        stack.runflow.set_faults(FaultSettings())  # read outputs back without injected errors
        by_version = {(j["source_key"], j.get("source_version_id")): j for j in jobs}
        assert len(by_version) == len(jobs), "one job per object version"
        results = lost = 0
        processed = 0
        for item in plan:
            key = item["key"]
            job = by_version[(key, newest[key])]  # the newest version's job decides the outcome
            expect = item["expect"]
            assert job["status"] in TERMINAL
            if job["status"] != "succeeded":
                assert job.get("error_code") and job.get("error_message"), job
            if expect.startswith("rejected:"):
                assert job["status"] == "rejected" and job["error_code"] == expect.split(":", 1)[1], job
                continue
            processed += 1
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
            stored = s3.get_object(Bucket=stack.resources.results_bucket, Key=result_key)
            assert stored["Metadata"]["source-version"] == newest[key], f"{key}: an older version won"
            run = http.get(
                f"{stack.info['runflow_url']}/v1/runs/{job['run_id']}",
                headers={"Authorization": f"Bearer {RUNFLOW_API_KEY}"},
            ).json()
            produced = http.get(run["output"]["outputs"][0]["url"]).content
            assert stored["Body"].read() == produced, f"result of {key} differs from what Runflow produced"
            results += 1
        older = [j for j in jobs if j.get("source_version_id") != newest[j["source_key"]]]
        # An older version ends superseded, or succeeded before the newer one replaced its result.
        assert all(j["status"] in ("superseded", "succeeded", "failed") for j in older), older
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=stack.resources.results_bucket)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        assert len(keys) == len(set(keys)) == results, "exactly one result object per succeeded upload"

        # Completion events: exactly one per finished job. One whose publish failed is republished by
        # the reconciler a minute later, so stragglers are waited for (bounded against a hang).
        wait_until = time.monotonic() + 180
        while True:
            collect_events()
            if len(events) >= len(jobs) or time.monotonic() > wait_until:
                break
        events_per_job = sum(events.values()) / len(jobs)
        assert set(events) == {f"{j['job_id']}:{j.get('attempt', 1)}" for j in jobs}, (
            "a job without its event"
        )

        stats = stack.runflow.stats()
        with_runs = [j for j in jobs if j.get("run_id")]
        billed = stats["runs_created"]
        duplicate_runs = billed - len({j["run_id"] for j in with_runs})
        runs_per_upload = billed / len(with_runs)
        # Had any forged or tampered callback been accepted, its job would have ended failed with
        # RUN_FAILED (the forged bodies carry no failure code) or canceled.
        assert not [j for j in jobs if j.get("error_code") == "RUN_FAILED" or j["status"] == "canceled"]
        logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "state" / "logs").glob("*.log"))
        answer_ms = stats["callback_answer_ms"]
        figures = (
            f"CHAOS uploads={len(plan)} submitted={len(with_runs)} results={results} lost={lost} "
            f"duplicate_runs={duplicate_runs} runs_per_upload={runs_per_upload:.2f} "
            f"statuses={dict(statuses)} hostile_answers={dict(hostile)} "
            f"callbacks_sent={stats.get('callbacks_sent')} answers_lost={stats.get('create_answers_lost')} "
            f"runs_adopted={logs.count('Adopted the run an earlier attempt created')} "
            f"max_time_to_converge_s={converged_at - started:.1f} "
            f"idempotency={idempotency} callback_answer_p99_ms={answer_ms['p99']} "
            f"answers_reset={stats.get('create_answers_reset')} second_versions={len(second_versions)} "
            f"superseded={statuses.get('superseded', 0)} callback_answer_p50_ms={answer_ms['p50']} "
            f"events_per_job={events_per_job:.2f} list_lag_s={LIST_LAG_S:g}"
        )
        print("\n" + figures)
        report_figures(figures)
        # Secrets never reach the logs, whatever happened.
        assert stack.callback_secret not in logs and RUNFLOW_API_KEY not in logs
        assert lost == 0
        assert duplicate_runs == 0 and runs_per_upload == 1.0
        twice = {k: v for k, v in deliveries.items() if len(v) > 1}
        assert events_per_job == 1.0, f"events per finished job: {events_per_job}; sent twice: {twice}"
        assert hostile and set(hostile) == {401}, f"hostile callbacks answered {dict(hostile)}"
    # Every AWS call each function made in the run, judged against its role in the template.
    iam = iamcheck.check([stack.iam_dir])
    iam_lines = iam.lines(show_unused=False)
    print("\n".join(iam_lines))
    report_figures(f"{iam_lines[0]} idempotency={idempotency}")
    assert iam.calls > 0 and not iam.denied, "\n".join(iam_lines)
