"""submit_upload, branch by branch: what Runflow saw (runs billed) and what the jobs table holds.

The job store, S3 and SQS are the real ones on a moto server; Runflow is a stand-in with its
documented Idempotency-Key semantics (honoured, or ignored as the single-run route may do)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from botocore.exceptions import ClientError

from backdrop.callbacks import handle_callback
from backdrop.jobs import Status
from backdrop.outcomes import Outcome, Result, RetryLater
from backdrop.runs import OutputRef, RunRequest, RunResult
from backdrop.signatures import sign
from backdrop.submission import submit_job, submit_upload
from backdrop.uploads import UploadRef
from backdrop_local.aws import Resources
from tests.support.images import solid
from tests.unit.world import OutputServer, World, build_world, metric_total


def upload(
    world: World, key: str = "uploads/shoes/red.jpg", body: bytes | None = None, **meta: str
) -> UploadRef:
    """Put an object and return the notification S3 would send for it."""
    answer = world.put_upload(key, solid() if body is None else body, **meta)
    return UploadRef(world.resources.uploads_bucket, key, answer.get("VersionId"), answer["ETag"], None)


def only_job(world: World) -> dict[str, object]:
    items = world.ddb.scan(TableName=world.resources.jobs_table)["Items"]
    assert len(items) == 1, items
    return world.item(items[0]["job_id"]["S"])


def job_count(world: World) -> int:
    return int(world.ddb.scan(TableName=world.resources.jobs_table, Select="COUNT")["Count"])


# --- not a job ----------------------------------------------------------------------------------


def test_object_outside_the_upload_prefix_is_ignored(world: World) -> None:
    result = submit_upload(upload(world, "elsewhere/red.jpg"), world.services)
    assert result.outcome is Outcome.IGNORED and result.detail == "outside the upload prefix"
    assert job_count(world) == 0 and world.runflow.creates == 0


def test_object_in_another_bucket_is_ignored(world: World) -> None:
    ref = UploadRef("someone-elses-bucket", "uploads/red.jpg", None, '"x"', 10)
    assert submit_upload(ref, world.services).outcome is Outcome.IGNORED
    assert job_count(world) == 0 and world.runflow.creates == 0


def test_folder_marker_is_ignored(world: World) -> None:
    result = submit_upload(upload(world, "uploads/shoes/", b""), world.services)
    assert result.outcome is Outcome.IGNORED and result.detail == "folder marker"
    assert job_count(world) == 0


def test_object_deleted_before_it_was_read_is_ignored(world: World) -> None:
    ref = upload(world)
    world.s3.delete_object(Bucket=ref.bucket, Key=ref.key, VersionId=ref.version_id)
    result = submit_upload(ref, world.services)
    assert result.outcome is Outcome.IGNORED and result.detail == "object no longer exists"
    assert job_count(world) == 0 and world.runflow.creates == 0


def test_other_s3_errors_are_raised_for_a_retry_and_claim_nothing(world: World) -> None:
    missing_bucket = "backdrop-no-such-bucket"
    world.services.settings = replace(world.services.settings, uploads_bucket=missing_bucket)
    with pytest.raises(ClientError) as raised:
        submit_upload(UploadRef(missing_bucket, "uploads/red.jpg", None, '"x"', 10), world.services)
    assert raised.value.response["Error"]["Code"] == "NoSuchBucket"
    assert job_count(world) == 0 and world.runflow.creates == 0


# --- rejected: recorded, never sent to Runflow --------------------------------------------------


@pytest.mark.parametrize(
    ("key", "body", "meta", "code", "in_message"),
    [
        ("uploads/empty.jpg", b"", {}, "EMPTY_OBJECT", "0 bytes"),
        ("uploads/text.png", b"just some text, not an image", {}, "UNSUPPORTED_TYPE", "6a 75 73 74"),
        ("uploads/odd/../escape.jpg", None, {}, "UNSUPPORTED_KEY", "'..'"),
        ("uploads/blue.jpg", None, {"background-color": "blue"}, "INVALID_COLOR", "'blue'"),
        ("uploads/range.jpg", None, {"background-color": "256,0,0"}, "INVALID_COLOR", "outside 0..255"),
    ],
)
def test_bad_uploads_are_rejected_with_a_reason(
    world: World, key: str, body: bytes | None, meta: dict[str, str], code: str, in_message: str
) -> None:
    result = submit_upload(upload(world, key, body, **meta), world.services)
    assert result.outcome is Outcome.REJECTED
    job = only_job(world)
    assert job["status"] == "rejected" and job["error_code"] == code
    assert in_message in str(job["error_message"])
    assert "open_shard" not in job and int(job["expires_at"]) > 0  # type: ignore[call-overload]
    assert world.runflow.creates == 0
    assert metric_total("JobsRejected") == 1


def test_too_large_is_rejected_by_size_alone(world: World) -> None:
    world.services.settings = replace(world.services.settings, max_input_bytes=100)
    result = submit_upload(upload(world, body=solid(size=(64, 64))), world.services)
    assert result.outcome is Outcome.REJECTED
    job = only_job(world)
    assert job["error_code"] == "TOO_LARGE" and "100-byte limit" in str(job["error_message"])
    assert world.runflow.creates == 0


def retried(world: World) -> Result:
    """An operator's retry of the only job: a new attempt at received, then the submit path's turn."""
    job = world.job(str(only_job(world)["job_id"]))
    assert world.store.begin_retry(job, include_rejected=True).moved
    return submit_job(job.job_id, world.services)


def test_retry_of_a_rejected_upload_applies_the_rules_again(world: World) -> None:
    world.services.settings = replace(world.services.settings, max_input_bytes=100)
    submit_upload(upload(world, body=solid(size=(64, 64))), world.services)

    # Still over the limit: rejected again by its size, attempt 2 recorded, nothing billed.
    assert retried(world).outcome is Outcome.REJECTED
    job = only_job(world)
    assert (job["status"], job["error_code"], job["attempt"]) == ("rejected", "TOO_LARGE", 2)
    assert world.runflow.creates == 0

    # The limit raised: the same bytes pass now and get exactly one run.
    world.services.settings = replace(world.services.settings, max_input_bytes=52_428_800)
    assert retried(world).outcome is Outcome.SUBMITTED
    job = only_job(world)
    assert (job["status"], job["attempt"]) == ("submitted", 3)
    assert world.runflow.creates == 1


def test_retry_of_an_upload_that_is_not_an_image_is_rejected_again(world: World) -> None:
    submit_upload(upload(world, "uploads/notes.jpg", b"%PDF-1.7 not a photo"), world.services)
    assert retried(world).outcome is Outcome.REJECTED
    job = only_job(world)
    assert (job["error_code"], job["attempt"]) == ("UNSUPPORTED_TYPE", 2)
    assert world.runflow.creates == 0


def test_invalid_colour_is_recorded_as_given(world: World) -> None:
    submit_upload(upload(world, **{"background-color": "#12345G"}), world.services)
    job = only_job(world)
    assert job["color"] == "#12345G" and job["color_source"] == "metadata"


# --- submitted ----------------------------------------------------------------------------------


def test_upload_becomes_one_run_with_the_recorded_identity(world: World) -> None:
    ref = upload(world, **{"background-color": "#1E90FF"})
    result = submit_upload(ref, world.services)
    assert result.outcome is Outcome.SUBMITTED
    job = only_job(world)
    assert job["status"] == "submitted" and job["run_id"] == result.run_id
    assert job["source_version_id"] == ref.version_id and job["source_etag"] == ref.etag.strip('"')
    assert job["color"] == "30,144,255" and job["color_source"] == "metadata"
    assert job["attempt"] == 1 and "create_pending_since" not in job
    assert world.runflow.billed == 1
    (run,) = world.runflow.runs.values()
    assert run.request.client_ref == job["job_id"]
    assert (run.request.red, run.request.green, run.request.blue) == (30, 144, 255)
    assert run.request.metadata["job_id"] == job["job_id"]
    assert run.request.callback_url == "https://hooks.example.com/runflow/callback"
    assert f"versionId={ref.version_id}" in run.request.image_url
    assert metric_total("JobsSubmitted") == 1


def test_default_colour_when_the_object_names_none(world: World) -> None:
    submit_upload(upload(world), world.services)
    job = only_job(world)
    assert job["color"] == "255,255,255" and job["color_source"] == "default"


def test_repeated_notification_never_bills_a_second_run(world: World) -> None:
    ref = upload(world)
    first = submit_upload(ref, world.services)
    again = submit_upload(ref, world.services)
    assert again.outcome is Outcome.ALREADY_DONE and again.run_id == first.run_id
    assert world.runflow.creates == 1 and world.runflow.billed == 1
    assert metric_total("DuplicateEvents") == 1


def test_runflow_refusal_fails_the_job_with_its_reason(world: World) -> None:
    world.runflow.create_faults = ["rejected"]
    result = submit_upload(upload(world), world.services)
    assert result.outcome is Outcome.FAILED
    job = only_job(world)
    assert job["status"] == "failed" and job["error_code"] == "INSUFFICIENT_CREDIT"
    assert "create_pending_since" not in job and world.runflow.billed == 0


def test_runflow_unavailable_leaves_the_job_open_and_the_next_attempt_creates_at_once(world: World) -> None:
    ref = upload(world)
    world.runflow.create_faults = ["unavailable"]
    with pytest.raises(RetryLater):
        submit_upload(ref, world.services)
    job = only_job(world)
    assert job["status"] == "received" and job["error_code"] == "RUNFLOW_UNAVAILABLE"
    assert "create_pending_since" not in job  # nothing was created: no need to wait
    assert world.runflow.billed == 0
    result = submit_upload(ref, world.services)
    assert result.outcome is Outcome.SUBMITTED and world.runflow.billed == 1


# --- never billed twice, whatever Runflow does with Idempotency-Key -----------------------------


@pytest.mark.parametrize("idempotency", ["honour", "ignore"])
def test_lost_answer_is_adopted_by_looking_the_run_up(world: World, idempotency: str) -> None:
    world.runflow.idempotency = idempotency
    world.runflow.create_faults = ["answer_lost"]
    result = submit_upload(upload(world), world.services)
    assert result.outcome is Outcome.SUBMITTED
    (run_id,) = world.runflow.runs
    assert result.run_id == run_id and only_job(world)["run_id"] == run_id
    assert world.runflow.creates == 1 and metric_total("RunsAdopted") == 1


def test_lost_answer_with_keys_ignored_and_an_empty_list_never_creates_again(world: World) -> None:
    # Seen: the create's answer was lost, Idempotency-Key was ignored, and the run list stayed empty
    # past the settle window (it lags behind creates); a second create was sent and billed.
    world.runflow.idempotency = "ignore"
    ref = upload(world)
    world.runflow.create_faults = ["answer_lost"]
    world.runflow.list_faults = ["empty"] * 20
    with pytest.raises(RetryLater):
        submit_upload(ref, world.services)
    job = only_job(world)
    assert job["status"] == "received" and job["create_pending_since"]
    assert job["error_code"] == "RUNFLOW_CREATE_UNKNOWN"
    world.clock.advance(30)  # inside the settle window: looked up, and retried soon
    with pytest.raises(RetryLater, match="may still be in flight"):
        submit_upload(ref, world.services)
    for _ in range(3):  # past it: the list is still empty, which proves nothing
        world.clock.advance(600)
        result = submit_upload(ref, world.services)
        assert result.outcome is Outcome.WAITING and "callback" in result.detail
    assert world.runflow.creates == 1 and world.runflow.billed == 1
    assert only_job(world)["status"] == "received"
    # The run's callback, checked against Runflow, completes the job with that one run.
    (run_id,) = world.runflow.runs
    world.runflow.finish(run_id, outputs=(OutputRef("https://cdn.runflow.io/o/red.png"),))
    body = json.dumps(
        {
            "event": "run.completed",
            "run_id": run_id,
            "status": "succeeded",
            "output": None,
            "metadata": {"job_id": job["job_id"], "attempt": "1"},
        }
    ).encode()
    assert handle_callback(body, sign(body, "whsec_current"), world.services).body["result"] == "copy_queued"
    job = only_job(world)
    assert job["status"] == "copying" and job["run_id"] == run_id and "create_pending_since" not in job
    assert world.runflow.creates == 1


def test_second_delivery_while_a_create_is_pending_never_creates(world: World) -> None:
    ref = upload(world)
    world.runflow.create_faults = ["answer_lost"]
    world.runflow.list_faults = ["empty"] * 4
    with pytest.raises(RetryLater):
        submit_upload(ref, world.services)
    for _ in range(3):
        with pytest.raises(RetryLater, match="may still be in flight"):
            submit_upload(ref, world.services)
    assert world.runflow.creates == 1


def test_lookup_unavailable_is_retried_and_then_adopts(world: World) -> None:
    ref = upload(world)
    world.runflow.create_faults = ["answer_lost"]
    world.runflow.list_faults = ["unavailable"]
    with pytest.raises(RetryLater, match="cannot look the run up"):
        submit_upload(ref, world.services)
    result = submit_upload(ref, world.services)  # the run is listed now: adopted before any create
    assert result.outcome is Outcome.SUBMITTED
    assert world.runflow.creates == 1 and world.runflow.billed == 1


def test_conflict_on_a_reused_key_adopts_the_run_the_key_made(world: World) -> None:
    ref = upload(world)
    original = world.runflow.create_run

    def key_used_before(request: RunRequest, *, idempotency_key: str) -> RunResult:
        # The key already made a run, with another body (an earlier create presigned another URL).
        world.runflow.create_run = original  # type: ignore[method-assign]
        original(
            replace(request, image_url="https://earlier.example/red.jpg"), idempotency_key=idempotency_key
        )
        return original(request, idempotency_key=idempotency_key)

    world.runflow.create_run = key_used_before  # type: ignore[method-assign]
    # Runflow answers 409, and the run the key made is found and adopted.
    result = submit_upload(ref, world.services)
    (run_id,) = world.runflow.runs
    assert result.outcome is Outcome.SUBMITTED and result.run_id == run_id
    assert world.runflow.creates == 2 and world.runflow.billed == 1
    assert metric_total("CreateOutcomesUnknown") == 1 and metric_total("RunsAdopted") == 1


def test_lookup_refused_leaves_the_job_open_and_never_creates_again(world: World) -> None:
    ref = upload(world)
    world.runflow.create_faults = ["answer_lost"]
    world.runflow.list_faults = ["refused"] * 3
    result = submit_upload(ref, world.services)
    assert result.outcome is Outcome.WAITING
    job = only_job(world)
    assert job["status"] == "received" and job["error_code"] == "RUN_LOOKUP_REFUSED"
    for _ in range(2):
        world.clock.advance(3600)
        assert submit_upload(ref, world.services).outcome is Outcome.WAITING
    assert world.runflow.creates == 1


def test_two_runs_listed_adopts_the_oldest_and_counts_the_duplicate(world: World) -> None:
    world.runflow.idempotency = "ignore"
    ref = upload(world)
    world.runflow.create_faults = ["answer_lost"]
    world.runflow.list_faults = ["empty"]
    with pytest.raises(RetryLater):
        submit_upload(ref, world.services)
    (first,) = world.runflow.runs.values()
    world.clock.advance(5)  # a second create slipped through elsewhere, later
    world.runflow.create_run(first.request, idempotency_key=first.request.client_ref)
    world.clock.advance(120)
    result = submit_upload(ref, world.services)
    assert result.outcome is Outcome.SUBMITTED and result.run_id == first.run.run_id
    assert metric_total("DuplicateRuns") == 1 and world.runflow.creates == 2


# --- the job moved on meanwhile ------------------------------------------------------------------


def test_callback_overtaking_the_submit(world: World) -> None:
    ref = upload(world)
    original = world.runflow.create_run

    def create_then_callback(request: object, *, idempotency_key: str) -> RunResult:
        run = original(request, idempotency_key=idempotency_key)  # type: ignore[arg-type]
        # The run finished and its callback was recorded before create_run returned to us.
        world.store.try_transition(
            idempotency_key, Status.COPYING, changes={"run_id": run.run_id, "run_status": "succeeded"}
        )
        return run

    world.runflow.create_run = create_then_callback  # type: ignore[method-assign]
    result = submit_upload(ref, world.services)
    assert result.outcome is Outcome.ALREADY_DONE and result.run_id
    job = only_job(world)
    assert job["status"] == "copying" and job["run_id"] == result.run_id
    assert world.runflow.billed == 1


def test_claim_refused_because_another_delivery_won(world: World) -> None:
    ref = upload(world)
    other = submit_upload(ref, world.services)  # another delivery of the same upload, elsewhere
    assert other.job_id is not None
    world.store.try_transition(other.job_id, Status.COPYING, changes={"run_id": other.run_id})
    result = submit_upload(ref, world.services)
    assert result.outcome is Outcome.ALREADY_DONE and result.detail == "job is copying"
    assert world.runflow.creates == 1


# --- the newest version wins, before a cent is spent --------------------------------------------


def test_version_overwritten_before_submission_is_superseded_without_a_run(world: World) -> None:
    old = upload(world, **{"background-color": "#FFFFFF"})
    new = upload(world, **{"background-color": "#000000"})
    result = submit_upload(old, world.services)
    assert result.outcome is Outcome.SUPERSEDED
    job = only_job(world)
    assert job["status"] == "superseded" and job["source_version_id"] == old.version_id
    newer = submit_upload(new, world.services)
    assert job["superseded_by"] == newer.job_id and newer.outcome is Outcome.SUBMITTED
    assert world.runflow.billed == 1


def test_object_deleted_after_the_version_was_notified(world: World) -> None:
    ref = upload(world)
    world.s3.delete_object(Bucket=ref.bucket, Key=ref.key)  # a delete marker: no current version
    result = submit_upload(ref, world.services)
    assert result.outcome is Outcome.SUPERSEDED
    job = only_job(world)
    assert job["error_code"] == "SOURCE_DELETED" and "superseded_by" not in job
    assert world.runflow.creates == 0


# --- colour rules and requested colours ---------------------------------------------------------


def test_prefix_rule_chooses_the_colour_and_is_recorded(
    resources: Resources, output_server: OutputServer
) -> None:
    world = build_world(
        resources,
        output_server,
        BACKDROP_COLOR_RULES='{"uploads/amazon/": "#FFFFFF", "uploads/brand/": "241,241,241"}',
    )
    submit_upload(upload(world, "uploads/brand/shoe.jpg"), world.services)
    job = only_job(world)
    assert job["color"] == "241,241,241" and job["color_source"] == "rule:uploads/brand/"
    (run,) = world.runflow.runs.values()
    assert (run.request.red, run.request.green, run.request.blue) == (241, 241, 241)


def test_requested_colour_makes_its_own_job_of_the_same_version(world: World) -> None:
    ref = upload(world, **{"background-color": "#000000"})
    first = submit_upload(ref, world.services)
    again = submit_upload(ref, world.services, colour="#FF0000")
    assert again.outcome is Outcome.SUBMITTED and again.job_id != first.job_id
    item = world.item(str(again.job_id))
    assert item["color"] == "255,0,0" and item["color_source"] == "override"
    assert item["source_version_id"] == world.item(str(first.job_id))["source_version_id"]
    assert submit_upload(ref, world.services, colour="255,0,0").outcome is Outcome.ALREADY_DONE
    assert world.runflow.billed == 2


def test_requested_colour_that_is_no_colour_is_ignored(world: World) -> None:
    result = submit_upload(upload(world), world.services, colour="sky")
    assert result.outcome is Outcome.IGNORED and job_count(world) == 0
