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

Re-uploads of the same pixels: a share of the photos is uploaded again with exactly the same bytes
and colour, to the same key (a new version) or to a new key, right behind the first upload (before
its job has finished); while the run goes on, a second wave uploads some photos whose jobs have
succeeded again, to the same key, to a new key, and to a new key in another colour. Each distinct (content,
colour) must be paid for with one succeeded run: ``runs_per_distinct_content=1.00``. The test keeps
its own record of every version's SHA-256, so identity is judged independently of the pipeline.

Doubtful results: a share of the runs (``OUTPUT_FAULT_RATE`` each) come back unchanged, blank,
cropped or with a halo (the local Runflow's output faults), and the stack runs with
``QualityGate=hold``. No faulted run's result or renditions may appear under the results prefix
(``doubtful_published=0``); a job held for review (``needs_review``) is settled, neither lost nor
finished: ``held=`` counts them, ``false_holds=`` those whose run had no fault. An upload of the
same pixels and colour as a held job waits for the person's decision (``received`` with
``CONTENT_IN_FLIGHT``, to reuse the approved result): settled too, ``waiting_on_review=``.

Size: ``BACKDROP_CHAOS_UPLOADS`` per mode (default 150; ``make chaos N=2000`` for the large run).
The time to converge is a figure, not a limit; the bound below only stops a hung run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from backdrop.colours import Colour, parse_colour
from backdrop.jobs import TERMINAL
from backdrop.signatures import sign
from backdrop_local import iamcheck
from backdrop_local.aws import scan_items
from backdrop_local.runflow import FaultSettings
from backdrop_local.stack import RUNFLOW_API_KEY, LocalStack, StackOptions
from tests.support.images import encoded

REVIEW_EVENT = "Job Needs Review"
UPLOADS = int(os.environ.get("BACKDROP_CHAOS_UPLOADS", "150"))
# Only against a hang: a healthy run converges in a fraction of this (see the figure it prints).
HANG_LIMIT_S = max(float(os.environ.get("BACKDROP_CHAOS_HANG_S", "900")), UPLOADS * 4.0)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(HANG_LIMIT_S + UPLOADS * 0.5 + 300)]
REUPLOAD_SHARE = 0.06  # objects uploaded again (another colour) while the first version is in flight
# Photos uploaded again with the same bytes and colour, right behind the first upload (half to the
# same key, half to a new key), and the share of finished photos uploaded again in the second wave.
SAME_BYTES_SHARE = 0.15
LATER_SHARE = 0.1
LATER_COLOUR = "#FF8800"  # the second wave's new-colour uploads: no plan item uses it
# Runs are listed this long after their creation: past the stack's create settle window (10 s below),
# so a job whose create answer was lost sees an empty list when a second create would have been sent.
LIST_LAG_S = 12.0
OUTPUT_FAULT_RATE = 0.03  # each of the four doubtful results (unchanged, blank, cropped, halo)
# Held for a person: the convergence wait's resting states are the terminal ones and needs_review.
RESTING = frozenset({*TERMINAL, "needs_review"})


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
        output_unchanged=OUTPUT_FAULT_RATE,
        output_blank=OUTPUT_FAULT_RATE,
        output_cropped=OUTPUT_FAULT_RATE,
        output_halo=OUTPUT_FAULT_RATE,
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


@dataclass
class Uploads:
    """Every object version put, with the SHA-256 of the bytes put: the test's own record of each
    version's content, independent of what the pipeline records."""

    s3: Any
    bucket: str
    newest: dict[str, str] = field(default_factory=dict)  # key -> version id of its newest upload
    digests: dict[tuple[str, str], str] = field(default_factory=dict)  # (key, version id) -> SHA-256
    put_at: dict[tuple[str, str], float] = field(default_factory=dict)  # (key, version id) -> epoch s

    def put(self, key: str, body: bytes, meta: dict[str, str]) -> tuple[str, str]:
        answer = self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata=meta)
        version = (key, answer["VersionId"])
        self.newest[key] = answer["VersionId"]
        self.digests[version] = hashlib.sha256(body).hexdigest()
        self.put_at[version] = time.time()
        return version

    def content(self, job: dict[str, Any]) -> tuple[str, Colour]:
        """What a job's result is of: the bytes of its version and its colour."""
        return self.digests[(job["source_key"], job["source_version_id"])], parse_colour(job["color"])


@dataclass
class SameBytes:
    """Uploads of a photo's exact bytes again; ``(original, copy)`` version pairs."""

    same_key: list[tuple[tuple[str, str], tuple[str, str]]] = field(default_factory=list)
    new_key: list[tuple[tuple[str, str], tuple[str, str]]] = field(default_factory=list)
    new_colour: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)  # the new keys, checked like the plan's

    def upload(
        self, uploads: Uploads, item: dict[str, Any], original: tuple[str, str], same_key: bool
    ) -> tuple[str, str]:
        if same_key:
            copy = uploads.put(item["key"], item["body"], item["meta"])
            self.same_key.append((original, copy))
            return copy
        again = {**item, "key": f"uploads/chaos/copy-{len(self.items):05d}-{item['key'].rsplit('/', 1)[1]}"}
        copy = uploads.put(again["key"], again["body"], again["meta"])
        self.new_key.append((original, copy))
        self.items.append(again)
        return copy

    def upload_in_new_colour(self, uploads: Uploads, item: dict[str, Any]) -> tuple[str, str]:
        again = {
            **item,
            "key": f"uploads/chaos/colour-{self.new_colour:05d}-{item['key'].rsplit('/', 1)[1]}",
            "meta": {"background-color": LATER_COLOUR},
        }
        self.items.append(again)
        self.new_colour += 1
        return uploads.put(again["key"], again["body"], again["meta"])

    def in_flight(self, uploads: Uploads, by_version: dict[Any, dict[str, Any]]) -> int:
        """Copies put before the original's job had finished."""
        return sum(
            uploads.put_at[copy] < finished_at(by_version[original])
            for original, copy in self.same_key + self.new_key
        )


def finished_at(job: dict[str, Any]) -> float:
    return datetime.fromisoformat(job.get("completed_at") or job["updated_at"]).timestamp()


def runflow_runs(http: httpx.Client, runflow_url: str) -> list[dict[str, Any]]:
    """Every run the local Runflow recorded, through its run list (every page)."""
    runs: list[dict[str, Any]] = []
    params = {"limit": "500"}
    while True:
        page = http.get(
            f"{runflow_url}/v1/runs", params=params, headers={"Authorization": f"Bearer {RUNFLOW_API_KEY}"}
        ).json()
        runs.extend(page["items"])
        if not page.get("next"):
            return runs
        params = {"limit": "500", "pq": page["next"]}


def producing_job(job: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The job whose run made this job's result: itself, or the one it reused (transitively)."""
    seen = {job["job_id"]}
    while not job.get("run_id"):
        assert job.get("reused_from") in by_id, f"{job['job_id']} succeeded with neither a run nor a reuse"
        job = by_id[job["reused_from"]]
        assert job["job_id"] not in seen, f"reuse cycle through {job['job_id']}"
        seen.add(job["job_id"])
    return job


def published_runs(s3: Any, bucket: str, keys: list[str], by_id: dict[str, dict[str, Any]]) -> set[str]:
    """The runs whose pixels are under the results prefix: each object's own metadata names the job
    that wrote it (and its run); a reused result is the pixels of the run of the job it reused."""
    runs: set[str] = set()
    for key in keys:
        metadata = s3.head_object(Bucket=bucket, Key=key)["Metadata"]
        if metadata.get("run-id"):
            runs.add(metadata["run-id"])
        writer = by_id.get(metadata.get("job-id", ""))
        if writer is not None:
            runs.add(producing_job(writer, by_id)["run_id"])
    return runs


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
        parameter_overrides={"DailyRunBudget": str(UPLOADS * 3), "QualityGate": "hold"},
    )
    plan = plan_uploads(rng, UPLOADS)
    started = time.monotonic()
    with LocalStack(options) as stack, httpx.Client(timeout=30) as http:
        assert stack.resources is not None and stack.runflow is not None
        s3 = stack.s3()
        bucket = stack.resources.uploads_bucket
        uploads = Uploads(s3, bucket)
        newest = uploads.newest  # key -> version id of its newest upload
        second_versions: set[str] = set()
        same_bytes = SameBytes()
        pending: list[tuple[int, Callable[[], object]]] = []  # (upload index it is due at, the upload)

        def upload_again(key: str) -> None:
            # A second version of the object, in another colour, while the first may be in flight.
            uploads.put(key, photo(rng, "PNG"), {"background-color": "#00AA00"})
            second_versions.add(key)

        for index, item in enumerate(plan):
            first = uploads.put(item["key"], item["body"], item["meta"])
            if rng.random() < 0.15:
                head = s3.head_object(Bucket=bucket, Key=item["key"])
                duplicate_notification(stack, item["key"], head)
            roll = rng.random() if item["expect"] == "processed" else 1.0
            if roll < REUPLOAD_SHARE:
                pending.append((index + rng.randrange(1, 6), partial(upload_again, item["key"])))
            elif roll < REUPLOAD_SHARE + SAME_BYTES_SHARE:
                # The same bytes and colour again, within three uploads of the first: its job has
                # not finished (counted below), and identical uploads in flight must make one run.
                same_key = rng.random() < 0.5
                pending.append(
                    (index + rng.randrange(0, 3), partial(same_bytes.upload, uploads, item, first, same_key))
                )
            pending.sort(key=lambda due: due[0])
            while pending and pending[0][0] <= index:
                pending.pop(0)[1]()
            if index == len(plan) // 2:
                stack.runflow.restart_callback_sender()
        for _due, upload in pending:
            upload()

        # Completion events are counted as they come (a queue left to grow makes every SQS call
        # on it slower in moto), and checked once the run is over.
        events: Counter[str] = Counter()
        deliveries: dict[str, list[str]] = {}  # event_id -> EventBridge ids of its deliveries

        review_events: Counter[str] = Counter()  # job id -> "Job Needs Review" events

        def collect_events() -> None:
            for event in drain_events(stack):
                if event["detail-type"] == REVIEW_EVENT:
                    review_events[event["detail"]["job_id"]] += 1
                    continue
                events[event["detail"]["event_id"]] += 1
                deliveries.setdefault(event["detail"]["event_id"], []).append(event["id"])

        hostile: Counter[int] = Counter()

        later: list[tuple[str, str]] = []  # versions put by the second wave
        processed_planned = sum(item["expect"] == "processed" for item in plan)

        def second_wave(jobs: list[dict[str, Any]]) -> None:
            """Finished photos uploaded again (results there to be reused), and the same bytes in a
            colour no job had (which must run), while the rest of the run goes on: once there are
            twice as many finished photos to choose from as it uploads (or nothing is left open)."""
            if later:
                return
            by_version = {(j["source_key"], j.get("source_version_id")): j for j in jobs}
            finished = [
                item
                for item in plan
                if item["key"] not in second_versions
                and by_version.get((item["key"], newest[item["key"]]), {}).get("status") == "succeeded"
            ]
            wanted = min(len(finished), max(3, round(processed_planned * LATER_SHARE)))
            if len(finished) < 2 * wanted and not settled(jobs):
                return
            for n, item in enumerate(rng.sample(finished, wanted)):
                if n % 3 == 2:
                    later.append(same_bytes.upload_in_new_colour(uploads, item))
                else:
                    original = (item["key"], newest[item["key"]])
                    later.append(same_bytes.upload(uploads, item, original, n % 3 == 0))

        def settled(jobs: list[dict[str, Any]]) -> bool:
            """Every job terminal, held for review, or waiting for the review of the same pixels."""
            held = {uploads.content(j) for j in jobs if j["status"] == "needs_review"}
            return all(j["status"] in RESTING or waits_on_review(j, held) for j in jobs)

        def waits_on_review(job: dict[str, Any], held: set[tuple[str, Colour]]) -> bool:
            return (
                job["status"] == "received"
                and job.get("error_code") == "CONTENT_IN_FLIGHT"
                and uploads.content(job) in held
            )

        def converge() -> float | None:
            """Until every job is terminal or held for review (the reconciler recovers what callbacks
            did not deliver)."""
            nonlocal hostile
            while time.monotonic() - started < HANG_LIMIT_S:
                collect_events()
                jobs = scan_jobs(stack)
                if not hostile and len(jobs) >= len(plan) // 2:
                    hostile = hostile_callbacks(stack, http, jobs[:10])
                second_wave(jobs)
                seen = {(j["source_key"], j.get("source_version_id")) for j in jobs}
                if seen >= set(uploads.digests) and settled(jobs):
                    return time.monotonic()
                time.sleep(1.0 + len(jobs) / 1000)  # each scan reads the whole table: poll less as it grows
            return None

        def hung() -> str:
            jobs = scan_jobs(stack)
            # Notifications name their version (as S3's do): every version put has a job, an older
            # one whose notification came after the newer upload ends superseded.
            missing = set(uploads.digests) - {(j["source_key"], j.get("source_version_id")) for j in jobs}
            statuses = dict(Counter(j["status"] for j in jobs))
            return f"hung: not converged in {HANG_LIMIT_S:.0f}s: {statuses}; no job for {sorted(missing)[:5]}"

        converged_at = converge()
        assert converged_at is not None, hung()
        jobs = scan_jobs(stack)
        statuses = Counter(j["status"] for j in jobs)
        held_contents = {uploads.content(j) for j in jobs if j["status"] == "needs_review"}
        waiting_on_review = [j for j in jobs if waits_on_review(j, held_contents)]

        stack.runflow.set_faults(FaultSettings())  # read outputs back without injected errors
        by_version = {(j["source_key"], j.get("source_version_id")): j for j in jobs}
        by_id = {j["job_id"]: j for j in jobs}
        assert len(by_version) == len(jobs), "one job per object version"
        results = lost = 0
        processed = 0
        unrecorded: list[str] = []  # succeeded jobs that do not record their pixels' digest
        for item in plan + same_bytes.items:
            key = item["key"]
            job = by_version[(key, newest[key])]  # the newest version's job decides the outcome
            expect = item["expect"]
            if job in waiting_on_review:
                continue  # settled: it reuses the held result once a person approved it
            assert job["status"] in RESTING
            if job["status"] not in ("succeeded", "needs_review"):
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
            if job["status"] == "needs_review":
                # Held, not lost: nothing of it under the results prefix, its result waits elsewhere.
                assert not job.get("result_keys") and job.get("held_keys") and job.get("quality"), job
                continue
            if job["status"] != "succeeded":
                lost += 1
                continue
            [result_key] = job["result_keys"]
            stored = s3.get_object(Bucket=stack.resources.results_bucket, Key=result_key)
            assert stored["Metadata"]["source-version"] == newest[key], f"{key}: an older version won"
            # The job records what its pixels are, and a reused result is of the same pixels and colour.
            if job.get("content_digest") != uploads.digests[(key, newest[key])]:
                unrecorded.append(job["job_id"])
            origin = producing_job(job, by_id)
            assert uploads.content(origin) == uploads.content(job), f"{key}: reused from {origin['job_id']}"
            run = http.get(
                f"{stack.info['runflow_url']}/v1/runs/{origin['run_id']}",
                headers={"Authorization": f"Bearer {RUNFLOW_API_KEY}"},
            ).json()
            produced = http.get(run["output"]["outputs"][0]["url"]).content
            assert stored["Body"].read() == produced, f"result of {key} differs from what Runflow produced"
            results += 1
        older = [j for j in jobs if j.get("source_version_id") != newest[j["source_key"]]]
        # An older version ends superseded, or succeeded before the newer one replaced its result.
        # (or is held for review: a person decides, and approval finds the newer version).
        assert all(
            j["status"] in ("superseded", "succeeded", "failed", "needs_review") or j in waiting_on_review
            for j in older
        ), older
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=stack.resources.results_bucket, Prefix=stack.resources.results_prefix
        )
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        assert len(keys) == len(set(keys)) == results, "exactly one result object per succeeded upload"
        # Doubtful results: the runs an output fault struck, and what of theirs was published.
        faulted = stack.runflow.output_faults()
        published = published_runs(s3, stack.resources.results_bucket, keys, by_id)
        doubtful_published = sorted(set(faulted) & published)
        held = [j for j in jobs if j["status"] == "needs_review"]
        false_holds = [j["job_id"] for j in held if j.get("run_id") not in faulted]

        finished = [j for j in jobs if j["status"] in TERMINAL]
        # Completion events: exactly one per finished job. One whose publish failed is republished by
        # the reconciler a minute later, so stragglers are waited for (bounded against a hang).
        wait_until = time.monotonic() + 180
        while True:
            collect_events()
            if (
                len(events) >= len(finished) and len(review_events) >= len(held)
            ) or time.monotonic() > wait_until:
                break
        events_per_job = sum(events.values()) / len(finished)
        assert set(events) == {f"{j['job_id']}:{j.get('attempt', 1)}" for j in finished}, (
            "a job without its event"
        )
        assert review_events == Counter({j["job_id"]: 1 for j in held}), "one needs-review event per held job"

        stats = stack.runflow.stats()
        with_runs = [j for j in jobs if j.get("run_id")]
        billed = stats["runs_created"]
        duplicate_runs = billed - len({j["run_id"] for j in with_runs})
        runs_per_upload = billed / len(with_runs)
        # Paid for: each run Runflow records as succeeded, by the content (the bytes of its job's
        # version, as this test recorded them) and colour it was run for. A content whose run failed
        # and that was run again is not paid twice: counted apart, in reruns_after_failure.
        runs = runflow_runs(http, stack.info["runflow_url"])
        assert len(runs) == billed, f"Runflow lists {len(runs)} runs and counts {billed}"
        paid: Counter[tuple[str, Colour]] = Counter()
        failed_contents: Counter[tuple[str, Colour]] = Counter()
        for run in runs:
            digest, _ = uploads.content(by_id[run["metadata"]["job_id"]])
            colour = Colour(
                run["input"]["color_red"], run["input"]["color_green"], run["input"]["color_blue"]
            )
            if run["status_code"] == "succeeded":
                paid[(digest, colour)] += 1
            elif run["status_code"] == "failed":
                failed_contents[(digest, colour)] += 1
        ended = {uploads.content(j) for j in jobs if j["status"] == "succeeded"}
        assert ended <= set(paid), "a job succeeded with pixels no run made"
        runs_per_distinct_content = sum(paid.values()) / len(paid)
        paid_twice = sorted(
            j["job_id"] for j in jobs if j.get("run_id") and paid.get(uploads.content(j), 0) > 1
        )
        reused = [j for j in jobs if j.get("reused_from")]
        later_time_to_result = max(
            (finished_at(by_version[v]) - uploads.put_at[v] for v in later), default=0.0
        )
        assert not [j for j in reused if j.get("run_id") or j["status"] != "succeeded"], "a reuse made a run"
        # Had any forged or tampered callback been accepted, its job would have ended failed with
        # RUN_FAILED (the forged bodies carry no failure code) or canceled.
        assert not [j for j in jobs if j.get("error_code") == "RUN_FAILED" or j["status"] == "canceled"]
        logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "state" / "logs").glob("*.log"))
        answer_ms = stats["callback_answer_ms"]
        figures = (
            f"CHAOS uploads={len(plan) + len(same_bytes.items)} submitted={len(with_runs)} "
            f"results={results} lost={lost} "
            f"duplicate_runs={duplicate_runs} runs_per_upload={runs_per_upload:.2f} "
            f"statuses={dict(statuses)} hostile_answers={dict(hostile)} "
            f"callbacks_sent={stats.get('callbacks_sent')} answers_lost={stats.get('create_answers_lost')} "
            f"runs_adopted={logs.count('Adopted the run an earlier attempt created')} "
            f"max_time_to_converge_s={converged_at - started:.1f} "
            f"idempotency={idempotency} callback_answer_p99_ms={answer_ms['p99']} "
            f"answers_reset={stats.get('create_answers_reset')} second_versions={len(second_versions)} "
            f"superseded={statuses.get('superseded', 0)} callback_answer_p50_ms={answer_ms['p50']} "
            f"events_per_job={events_per_job:.2f} list_lag_s={LIST_LAG_S:g} "
            f"runs_per_distinct_content={runs_per_distinct_content:.2f} runs_succeeded={sum(paid.values())} "
            f"distinct_contents={len(paid)} reused={len(reused)} "
            f"reuploads_same_key={len(same_bytes.same_key)} reuploads_new_key={len(same_bytes.new_key)} "
            f"reuploads_in_flight={same_bytes.in_flight(uploads, by_version)} "
            f"new_colour_uploads={same_bytes.new_colour} runs_failed={sum(failed_contents.values())} "
            f"reruns_after_failure={len(set(paid) & set(failed_contents))} "
            f"later_uploads={len(later)} later_time_to_result_s={later_time_to_result:.1f} "
            f"output_faults={len(faulted)} doubtful_published={len(doubtful_published)} "
            f"held={len(held)} false_holds={len(false_holds)} waiting_on_review={len(waiting_on_review)}"
        )
        print("\n" + figures)
        report_figures(figures)
        # Secrets never reach the logs, whatever happened.
        assert stack.callback_secret not in logs and RUNFLOW_API_KEY not in logs
        assert lost == 0
        assert not doubtful_published, (
            f"doubtful results published (QualityGate=hold): runs {doubtful_published}"
        )
        assert duplicate_runs == 0 and runs_per_upload == 1.0
        assert runs_per_distinct_content == 1.0, f"the same pixels paid for twice, by jobs {paid_twice}"
        assert not unrecorded, f"succeeded jobs without the SHA-256 of their bytes: {unrecorded}"
        twice = {k: v for k, v in deliveries.items() if len(v) > 1}
        assert events_per_job == 1.0, f"events per finished job: {events_per_job}; sent twice: {twice}"
        assert hostile and set(hostile) == {401}, f"hostile callbacks answered {dict(hostile)}"
    # Every AWS call each function made in the run, judged against its role in the template.
    iam = iamcheck.check([stack.iam_dir])
    iam_lines = iam.lines(show_unused=False)
    print("\n".join(iam_lines))
    report_figures(f"{iam_lines[0]} idempotency={idempotency}")
    assert iam.calls > 0 and not iam.denied, "\n".join(iam_lines)
