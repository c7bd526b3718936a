"""Every run outcome Runflow's contract allows, through the whole local stack over real HTTP: the
local Runflow produces it (by a fault setting), and the job ends the way an operator expects.

The stack's Runflow processes instantly here: these tests are about what happens after a run."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest

from backdrop.jobs import TERMINAL
from backdrop.signatures import sign
from backdrop_local.aws import scan_items
from backdrop_local.runflow import FaultSettings
from backdrop_local.stack import RUNFLOW_API_KEY, LocalStack, StackOptions
from tests.support.images import solid

_names = count()


@pytest.fixture(scope="module")
def stack(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    options = StackOptions(
        stack_name="outcomes-stack",
        state_dir=tmp_path_factory.mktemp("outcomes"),
        reconcile_every_seconds=2.0,
        reconcile_min_age_seconds=5,
        runflow_callback_delays=(0.2, 0.4),
        # Every test uploads the same photo under its own faults: each upload must make its run.
        parameter_overrides={"ReuseResults": "false"},
    )
    with LocalStack(options) as running:
        yield running


@pytest.fixture(autouse=True)
def instant(stack: LocalStack) -> Iterator[None]:
    assert stack.runflow is not None
    stack.runflow.set_faults(FaultSettings(processing="instant"))
    yield
    stack.runflow.set_faults(FaultSettings(processing="instant"))


def faults(stack: LocalStack, **settings: Any) -> None:
    assert stack.runflow is not None
    stack.runflow.set_faults(FaultSettings(processing="instant", **settings))


def photo() -> bytes:
    return solid("JPEG", (48, 32), (120, 60, 30))


def upload(stack: LocalStack, **metadata: str) -> str:
    assert stack.resources is not None
    key = f"uploads/outcomes/{next(_names):03d}.jpg"
    stack.s3().put_object(Bucket=stack.resources.uploads_bucket, Key=key, Body=photo(), Metadata=metadata)
    return key


def job_of(stack: LocalStack, key: str) -> dict[str, Any] | None:
    assert stack.resources is not None
    found = [j for j in scan_items(stack.dynamodb(), stack.resources.jobs_table) if j["source_key"] == key]
    return found[0] if found else None


def finished(stack: LocalStack, key: str, timeout: float = 120.0) -> dict[str, Any]:
    """The job once terminal (a long bound against a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        job = job_of(stack, key)
        if job is not None and job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"{key} not finished: {job}"
        time.sleep(0.3)


def run_object(stack: LocalStack, run_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(
        f"{stack.info['runflow_url']}/v1/runs/{run_id}",
        headers={"Authorization": f"Bearer {RUNFLOW_API_KEY}"},
    ).json()
    return answer


def deliveries(stack: LocalStack, run_id: str) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = httpx.get(
        f"{stack.info['runflow_url']}/v1/runs/{run_id}/callback",
        headers={"Authorization": f"Bearer {RUNFLOW_API_KEY}"},
    ).json()
    return answer


@pytest.mark.parametrize("spelling", ["canceled", "cancelled"])
def test_canceled_run_ends_the_job_canceled(stack: LocalStack, spelling: str) -> None:
    faults(stack, outcome_canceled=1.0, cancel_spelling=spelling)
    job = finished(stack, upload(stack))
    assert job["status"] == "canceled" and job["run_status"] == "canceled"
    assert job["error_code"] == spelling.upper() and job["error_message"]
    payload = deliveries(stack, job["run_id"])[0]["payload"]
    assert payload["event"] == "run.cancelled" and payload["status"] == spelling


def test_partial_success_copies_the_outputs_there_are(stack: LocalStack) -> None:
    assert stack.resources is not None
    faults(stack, outcome_partial=1.0, outputs_per_run=3)
    key = upload(stack)
    job = finished(stack, key)
    assert job["status"] == "succeeded" and job["run_status"] == "partial_succeeded"
    folder = "results/" + key.removeprefix("uploads/")
    assert job["result_keys"] == [f"{folder}/result.png", f"{folder}/result-2.png"]
    for result in job["result_keys"]:
        stack.s3().head_object(Bucket=stack.resources.results_bucket, Key=result)


def test_several_outputs_each_get_a_key(stack: LocalStack) -> None:
    faults(stack, outputs_per_run=3)
    key = upload(stack)
    job = finished(stack, key)
    folder = "results/" + key.removeprefix("uploads/")
    assert job["result_keys"] == [f"{folder}/result.png", f"{folder}/result-2.png", f"{folder}/result-3.png"]


# --- every upload its own result (the layout) ------------------------------------------------


def put(stack: LocalStack, key: str, image_format: str, colour: str) -> str:
    """Upload a photo of its own (bytes no other upload has) in that format; returns its version id."""
    assert stack.resources is not None
    answer = stack.s3().put_object(
        Bucket=stack.resources.uploads_bucket,
        Key=key,
        Body=solid(image_format, (48, 32), (120, 60, next(_names) % 256)),
        Metadata={"background-color": colour},
    )
    return str(answer["VersionId"])


def finished_version(stack: LocalStack, key: str, version: str, timeout: float = 120.0) -> dict[str, Any]:
    """The job of that version of the object once terminal (a bound against a hang)."""
    assert stack.resources is not None
    deadline = time.monotonic() + timeout
    while True:
        jobs = scan_items(stack.dynamodb(), stack.resources.jobs_table)
        found = [j for j in jobs if j["source_key"] == key and j.get("source_version_id") == version]
        if found and found[0]["status"] in TERMINAL:
            return found[0]
        assert time.monotonic() < deadline, f"{key} {version} not finished: {found}"
        time.sleep(0.3)


def stored(stack: LocalStack, folder: str) -> dict[str, str]:
    """Result key → the source key its metadata names, for every result under ``folder``."""
    assert stack.resources is not None
    s3, bucket = stack.s3(), stack.resources.results_bucket
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=folder).get("Contents", [])
    return {o["Key"]: s3.head_object(Bucket=bucket, Key=o["Key"])["Metadata"]["source-key"] for o in listed}


def test_same_name_with_another_extension_keeps_its_own_result(stack: LocalStack) -> None:
    folder = f"layout/{next(_names):03d}"
    jpg, png = f"uploads/{folder}/red.jpg", f"uploads/{folder}/red.png"
    versions = {jpg: put(stack, jpg, "JPEG", "#FF0000"), png: put(stack, png, "PNG", "#0000FF")}
    jobs = {key: finished_version(stack, key, version) for key, version in versions.items()}
    assert [jobs[k]["status"] for k in (jpg, png)] == ["succeeded", "succeeded"]
    assert jobs[jpg]["result_keys"] == [f"results/{folder}/red.jpg/result.png"]
    assert jobs[png]["result_keys"] == [f"results/{folder}/red.png/result.png"]
    assert stored(stack, f"results/{folder}/") == {
        f"results/{folder}/red.jpg/result.png": jpg,
        f"results/{folder}/red.png/result.png": png,
    }


def test_second_output_never_meets_a_source_named_like_it_nor_deletes_its_result(stack: LocalStack) -> None:
    folder = f"layout/{next(_names):03d}"
    pair, pair_2 = f"uploads/{folder}/pair.jpg", f"uploads/{folder}/pair-2.jpg"
    faults(stack, outputs_per_run=2)
    first = finished_version(stack, pair, put(stack, pair, "JPEG", "#FFFFFF"))
    assert first["result_keys"] == [
        f"results/{folder}/pair.jpg/result.png",
        f"results/{folder}/pair.jpg/result-2.png",
    ]
    faults(stack)
    other = finished_version(stack, pair_2, put(stack, pair_2, "JPEG", "#000000"))
    assert other["status"] == "succeeded" and other["result_keys"] == [
        f"results/{folder}/pair-2.jpg/result.png"
    ]
    # A later version of pair.jpg with one output: its own second output goes, nothing else.
    later = finished_version(stack, pair, put(stack, pair, "JPEG", "#F1F1F1"))
    assert later["status"] == "succeeded" and later["result_keys"] == [
        f"results/{folder}/pair.jpg/result.png"
    ]
    assert stored(stack, f"results/{folder}/") == {
        f"results/{folder}/pair.jpg/result.png": pair,
        f"results/{folder}/pair-2.jpg/result.png": pair_2,
    }
    still = job_of(stack, pair_2)  # still succeeded, and its result is still there (above)
    assert (
        still is not None and still["status"] == "succeeded" and still["result_keys"] == other["result_keys"]
    )


@pytest.mark.parametrize("envelope", [0.0, 1.0], ids=["output-null", "output-error-envelope"])
def test_failed_run_records_runflows_reason_either_way(stack: LocalStack, envelope: float) -> None:
    faults(stack, processing_failure=1.0, failure_output_envelope=envelope)
    job = finished(stack, upload(stack))
    assert job["status"] == "failed" and job["error_code"] == "PROCESSING_FAILED"
    assert job["error_message"] == "the model failed to process the image"
    payload = deliveries(stack, job["run_id"])[0]["payload"]
    assert (payload["output"] is None) == (envelope == 0.0)


@pytest.mark.parametrize("status", ["timed_out", "expired"])
def test_terminal_status_backdrop_does_not_know_ends_the_job_at_once(stack: LocalStack, status: str) -> None:
    faults(stack, **{f"outcome_{status}": 1.0})
    job = finished(stack, upload(stack))
    assert job["status"] == "failed" and job["run_status"] == status
    assert job["error_code"] == status.upper()


def test_success_reported_without_outputs_is_read_back_then_copied(stack: LocalStack) -> None:
    faults(stack, outcome_no_outputs=1.0)
    job = finished(stack, upload(stack))
    assert job["status"] == "succeeded" and len(job["result_keys"]) == 1
    assert deliveries(stack, job["run_id"])[0]["payload"]["output"]["outputs"] == []


def test_dispatching_runs_are_waited_for(stack: LocalStack) -> None:
    # The run stays dispatching until the test lets it go (the worker reads the delay as it is
    # currently set): seen there, whatever the machine's speed, and only then released.
    faults(stack, dispatch_delay_s=3600.0)
    key = upload(stack)
    deadline = time.monotonic() + 60
    while True:
        job = job_of(stack, key)
        if job and job.get("run_id") and run_object(stack, job["run_id"])["status_code"] == "dispatching":
            break
        assert time.monotonic() < deadline, f"the run was never seen dispatching: {job}"
        time.sleep(0.2)
    assert job["status"] == "submitted"  # waiting on the run, not failed or given up
    faults(stack)  # dispatched now
    assert finished(stack, key)["status"] == "succeeded"


@pytest.mark.parametrize("headers", ["none", "retry_after", "x_ratelimit", "both"])
def test_rate_limited_creates_back_off_and_get_through(stack: LocalStack, headers: str) -> None:
    assert stack.runflow is not None
    before = stack.runflow.stats()["create_rate_limited"]
    faults(stack, create_429=1.0, rate_limit_headers=headers, retry_after_s=1.0)
    key = upload(stack)
    deadline = time.monotonic() + 60
    while stack.runflow.stats()["create_rate_limited"] < before + 2:  # refused at least twice
        assert time.monotonic() < deadline, "Runflow never saw the rate-limited creates"
        time.sleep(0.2)
    job = job_of(stack, key)
    assert job is not None and job["status"] == "received" and not job.get("run_id")
    faults(stack)  # the limit lifts
    done = finished(stack, key)
    assert done["status"] == "succeeded"
    assert stack.runflow.stats()["runs_by_status"]["succeeded"] >= 1


def test_lost_create_answers_with_keys_ignored_bill_one_run(stack: LocalStack) -> None:
    assert stack.runflow is not None
    faults(stack, create_answer_reset=1.0, idempotency_keys="ignore")
    key = upload(stack)
    deadline = time.monotonic() + 60
    while job_of(stack, key) is None or not job_of(stack, key).get("run_id"):  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the lost create was never adopted"
        time.sleep(0.2)
    faults(stack, idempotency_keys="ignore")
    job = finished(stack, key)
    runs = httpx.get(
        f"{stack.info['runflow_url']}/v1/runs",
        params={"q": f"client_ref:'{job['job_id']}'"},
        headers={"Authorization": f"Bearer {RUNFLOW_API_KEY}"},
    ).json()["items"]
    assert job["status"] == "succeeded" and [r["id"] for r in runs] == [job["run_id"]]


def test_signed_callback_carrying_another_jobs_run_is_refused(stack: LocalStack) -> None:
    # Seen: a job held in ``received`` by 429s got a correctly signed callback that named it in
    # metadata but carried another finished job's run and output; it ended with that image.
    assert stack.runflow is not None
    other = finished(stack, upload(stack))
    assert other["status"] == "succeeded"
    before = stack.runflow.stats()["create_rate_limited"]
    faults(stack, create_429=1.0)
    key = upload(stack)
    deadline = time.monotonic() + 60
    while stack.runflow.stats()["create_rate_limited"] <= before or job_of(stack, key) is None:
        assert time.monotonic() < deadline, "the upload's create was never refused"
        time.sleep(0.2)
    waiting = job_of(stack, key)
    assert waiting is not None and waiting["status"] == "received" and not waiting.get("run_id")
    # The other run's own callback as Runflow sent it, re-addressed and signed with the org's secret.
    payload = deliveries(stack, other["run_id"])[0]["payload"]
    payload["metadata"]["job_id"] = waiting["job_id"]
    body = json.dumps(payload).encode()
    answer = httpx.post(
        stack.info["callback_url"],
        content=body,
        headers={"Runflow-Signature": sign(body, stack.callback_secret), "Content-Type": "application/json"},
    )
    assert answer.status_code == 200 and answer.json()["result"] == "run_refused"
    job = job_of(stack, key)
    assert job is not None and job["status"] == "received"
    assert not job.get("run_id") and not job.get("output_urls") and not job.get("result_keys")
    # Counted: the callback function's metrics, as CloudWatch would receive them (EMF in its log).
    log = (Path(stack.info["logs_dir"]) / "CallbackFunction.log").read_text(errors="replace")
    refused = [json.loads(line) for line in log.splitlines() if '"AdoptionsRefused"' in line]
    assert refused and refused[-1]["AdoptionsRefused"] in (1.0, [1.0])


# ---------------------------------------------------------------------- versions, as S3 names them
def jobs_of(stack: LocalStack, key: str) -> list[dict[str, Any]]:
    assert stack.resources is not None
    return [j for j in scan_items(stack.dynamodb(), stack.resources.jobs_table) if j["source_key"] == key]


def terminal_job(stack: LocalStack, key: str, version_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The job of that version of the key, once terminal (a bound against a hang)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [j for j in jobs_of(stack, key) if j.get("source_version_id") == version_id]
        if found and found[0]["status"] in TERMINAL:
            return found[0]
        assert time.monotonic() < deadline, f"no finished job for {key} version {version_id}: {found}"
        time.sleep(0.3)


def test_identical_reupload_is_a_new_version_and_a_new_job(stack: LocalStack) -> None:
    assert stack.resources is not None
    key = upload(stack)
    first = finished(stack, key)
    assert first["status"] == "succeeded"
    again = stack.s3().put_object(Bucket=stack.resources.uploads_bucket, Key=key, Body=photo())
    assert again["VersionId"] != first["source_version_id"]  # same bytes, same ETag, a new version
    second = terminal_job(stack, key, again["VersionId"])
    assert second["job_id"] != first["job_id"] and second["status"] == "succeeded"


def test_a_notification_for_a_version_no_longer_the_newest_gets_a_superseded_job(stack: LocalStack) -> None:
    """S3 does not deliver in order: the notification of version 1 arrives after version 2 was
    stored. It is held back here on a queue of its own, then delivered as S3 would."""
    assert stack.resources is not None
    s3, sqs, bucket = stack.s3(), stack.sqs(), stack.resources.uploads_bucket
    key = f"uploads/outcomes/late-{next(_names):03d}.jpg"
    saved = s3.get_bucket_notification_configuration(Bucket=bucket)
    saved.pop("ResponseMetadata", None)
    late = sqs.create_queue(QueueName=f"outcomes-late-{next(_names)}")["QueueUrl"]
    late_arn = sqs.get_queue_attributes(QueueUrl=late, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aside = [{**c, "QueueArn": late_arn} for c in saved["QueueConfigurations"]]
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": aside}
    )
    try:
        v1 = s3.put_object(Bucket=bucket, Key=key, Body=photo())["VersionId"]
    finally:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=saved)
    v2 = s3.put_object(Bucket=bucket, Key=key, Body=photo())["VersionId"]
    held: list[str] = []
    deadline = time.monotonic() + 30
    while not held:  # moto queued it before put_object returned
        assert time.monotonic() < deadline, "version 1's notification never reached the side queue"
        for message in sqs.receive_message(QueueUrl=late, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        ):
            if "Records" in json.loads(message["Body"]):
                held.append(message["Body"])
    [notification] = held
    assert json.loads(notification)["Records"][0]["s3"]["object"]["versionId"] == v1
    sqs.send_message(QueueUrl=stack.resources.queue_url, MessageBody=notification)

    older, newer = terminal_job(stack, key, v1), terminal_job(stack, key, v2)
    assert newer["status"] == "succeeded"
    assert older["status"] == "superseded" and older["error_code"] == "SUPERSEDED"
    assert older["superseded_by"] == newer["job_id"] and not older.get("run_id")  # never billed
