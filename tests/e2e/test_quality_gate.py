"""The quality gate on the local stack, over real HTTP, with QualityGate=hold: photos go in through
the S3 API, the local Runflow makes the results with its model (and, for doubtful ones, its output
faults), and the copy function (as `sam build` built it) judges each result. A good one is
published; a doubtful one waits in ``needs_review`` with nothing under the results prefix until a
review request on the copy queue approves it (exactly the held bytes are published) or rejects it.
With QualityGate=flag the doubtful result is published and marked."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backdrop.queues import Decision, ReviewRequest
from backdrop_local.aws import scan_items
from backdrop_local.stack import LocalStack, StackOptions

ROOT = Path(__file__).resolve().parents[2]
THUMB = json.dumps({"thumb": "thumbnail"})


@pytest.fixture(scope="module")
def stack(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    options = StackOptions(
        stack_name="gate-stack",
        state_dir=tmp_path_factory.mktemp("gate"),
        reconcile_every_seconds=3.0,
        reconcile_min_age_seconds=10,
        runflow_callback_delays=(0.2, 0.4),
        parameter_overrides={"QualityGate": "hold", "Renditions": THUMB, "ReuseResults": "false"},
    )
    with LocalStack(options) as running:
        yield running


@pytest.fixture(autouse=True)
def model(stack: LocalStack) -> Iterator[None]:
    faults(stack)
    yield
    faults(stack)


def faults(stack: LocalStack, **settings: Any) -> None:
    """The local Runflow's settings, through its own HTTP control: the model's own results, and
    the output faults named."""
    answer = httpx.post(
        f"{stack.info['runflow_url']}/_emulator/faults", json={"processing": "real", **settings}
    )
    assert answer.status_code == 200, answer.text


def runs_created(stack: LocalStack) -> int:
    return int(httpx.get(f"{stack.info['runflow_url']}/_emulator/stats").json()["runs_created"])


def put(stack: LocalStack, key: str, sample: str) -> str:
    assert stack.resources is not None
    body = (ROOT / "samples" / sample).read_bytes()
    return str(stack.s3().put_object(Bucket=stack.resources.uploads_bucket, Key=key, Body=body)["VersionId"])


def job_of(
    stack: LocalStack, version: str, statuses: tuple[str, ...], timeout: float = 240.0
) -> dict[str, Any]:
    """The job of an upload version once it is in one of ``statuses``."""
    assert stack.resources is not None
    deadline = time.monotonic() + timeout
    while True:
        found = {
            str(j["source_version_id"]): j for j in scan_items(stack.dynamodb(), stack.resources.jobs_table)
        }
        job = found.get(version)
        if job is not None and job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job and job["status"]
        time.sleep(0.5)


def objects(stack: LocalStack, prefix: str) -> dict[str, bytes]:
    assert stack.resources is not None
    bucket = stack.resources.results_bucket
    listed = stack.s3().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: stack.s3().get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def events_of(stack: LocalStack, job_id: str, wanted: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The events the stack's bus delivered for one job (EventBridge envelopes), once ``wanted`` came."""
    sqs, url = stack.sqs(), stack.info["events_queue_url"]
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(found) < wanted and time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        ):
            event = json.loads(message["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            if event["detail"]["job_id"] == job_id:
                found.append(event)
    return found


def decide(stack: LocalStack, job_id: str, decision: Decision, note: str | None = None) -> None:
    assert stack.resources is not None
    body = ReviewRequest(job_id, decision, "e2e-reviewer", note).body()
    stack.sqs().send_message(QueueUrl=stack.resources.copy_queue_url, MessageBody=body)


def test_a_good_photo_is_published_and_nothing_is_held(stack: LocalStack) -> None:
    job = job_of(
        stack, put(stack, "uploads/gate/bottle.jpg", "bottle.jpg"), ("succeeded", "needs_review", "failed")
    )
    assert job["status"] == "succeeded", job.get("quality")
    assert job["quality"]["verdict"] == "pass"
    folder = "results/gate/bottle.jpg/"
    assert job["result_keys"] == [folder + "result.png", folder + "rendition-thumb.webp"]
    assert set(objects(stack, folder)) == set(job["result_keys"])
    assert objects(stack, f"review/{job['job_id']}/") == {}
    (event,) = events_of(stack, job["job_id"], 1)
    assert event["detail-type"] == "Job Succeeded" and event["detail"]["quality"]["verdict"] == "pass"


def test_a_doubtful_result_waits_for_review_and_approve_publishes_exactly_what_was_held(
    stack: LocalStack,
) -> None:
    faults(stack, output_blank=1.0)
    version = put(stack, "uploads/gate/sneaker.jpg", "sneaker.jpg")
    held = job_of(stack, version, ("needs_review", "succeeded", "failed"))
    job_id = held["job_id"]
    assert held["status"] == "needs_review"
    assert any(r.startswith("nothing found") for r in held["quality"]["reasons"]), held["quality"]
    held_keys = [f"review/{job_id}/result.png", f"review/{job_id}/rendition-thumb.webp"]
    assert held["held_keys"] == held_keys and "result_keys" not in held
    assert held["renditions"]["thumb"]["key"] == held_keys[1]
    assert objects(stack, "results/gate/sneaker.jpg/") == {}  # nothing published
    held_bytes = objects(stack, f"review/{job_id}/")
    assert set(held_bytes) == set(held_keys)
    (event,) = events_of(stack, job_id, 1)
    assert event["detail-type"] == "Job Needs Review"
    assert event["detail"]["held_keys"] == held_keys and event["detail"]["quality"]["verdict"] == "doubt"
    runs = runs_created(stack)

    decide(stack, job_id, Decision.APPROVE)
    done = job_of(stack, version, ("succeeded", "superseded", "failed"), timeout=60)
    assert done["status"] == "succeeded"
    folder = "results/gate/sneaker.jpg/"
    published = [folder + "result.png", folder + "rendition-thumb.webp"]
    assert done["result_keys"] == published and "held_keys" not in done
    assert done["renditions"]["thumb"]["key"] == published[1]
    assert done["review"]["decision"] == "approve" and done["review"]["reviewer"] == "e2e-reviewer"
    files = objects(stack, folder)
    assert [files[key] for key in published] == [held_bytes[key] for key in held_keys]  # byte for byte
    assert objects(stack, f"review/{job_id}/") == {} and runs_created(stack) == runs
    (event,) = events_of(stack, job_id, 1)
    assert event["detail-type"] == "Job Succeeded"
    assert (
        event["detail"]["review"]["decision"] == "approve"
        and event["detail"]["quality"]["verdict"] == "doubt"
    )


def test_reject_ends_the_job_rejected_with_the_note(stack: LocalStack) -> None:
    faults(stack, output_cropped=1.0)
    version = put(stack, "uploads/gate/coffee.webp", "coffee.webp")
    held = job_of(stack, version, ("needs_review", "succeeded", "failed"))
    assert held["status"] == "needs_review", held.get("quality")
    job_id = held["job_id"]
    assert objects(stack, f"review/{job_id}/") != {}
    events_of(stack, job_id, 1)
    decide(stack, job_id, Decision.REJECT, "half the cup is missing")
    done = job_of(stack, version, ("rejected", "succeeded", "failed"), timeout=60)
    assert done["status"] == "rejected"
    assert (done["error_code"], done["error_message"]) == ("REJECTED_BY_REVIEW", "half the cup is missing")
    assert done["review"]["decision"] == "reject" and done["review"]["note"] == "half the cup is missing"
    assert objects(stack, f"review/{job_id}/") == {} and objects(stack, "results/gate/coffee.webp/") == {}
    (event,) = events_of(stack, job_id, 1)
    assert event["detail-type"] == "Job Rejected"
    assert event["detail"]["error"] == {"code": "REJECTED_BY_REVIEW", "message": "half the cup is missing"}


def test_flag_publishes_a_doubtful_result_and_marks_it(stack: LocalStack) -> None:
    stack.update_parameters({"QualityGate": "flag"})
    try:
        faults(stack, output_blank=1.0)
        version = put(stack, "uploads/gate/flagged/rocket.jpg", "rocket.jpg")
        job = job_of(stack, version, ("succeeded", "needs_review", "failed"))
        assert job["status"] == "succeeded" and job["quality"]["verdict"] == "doubt"
        assert "held_keys" not in job
        assert set(objects(stack, "results/gate/flagged/rocket.jpg/")) == set(job["result_keys"])
        (event,) = events_of(stack, job["job_id"], 1)
        assert event["detail-type"] == "Job Succeeded" and event["detail"]["quality"]["verdict"] == "doubt"
    finally:
        stack.update_parameters({"QualityGate": "hold"})
