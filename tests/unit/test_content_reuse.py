"""Reuse of earlier results: the same bytes in the same colour make one paid run.

Real job store, ledger, S3 and SQS on a moto server; Runflow is the stand-in, whose ``creates``
counts the runs Backdrop asked for. Each test hands the queued messages to the use cases itself."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from backdrop.callbacks import handle_callback
from backdrop.copying import handle_copy_request
from backdrop.errors import ErrorCode
from backdrop.jobs import Status
from backdrop.outcomes import Outcome, Result
from backdrop.queues import CopyRequest
from backdrop.reconciliation import reconcile
from backdrop.runs import OutputRef
from backdrop.signatures import sign
from backdrop.submission import submit_job, submit_upload
from backdrop.uploads import UploadRef
from backdrop_local.aws import Resources
from tests.support.images import solid
from tests.unit.world import OutputServer, World, build_world, metric_total


@pytest.fixture
def world(resources: Resources, output_server: OutputServer) -> World:
    output_server.files.clear()
    return build_world(resources, output_server, BACKDROP_REUSE_RESULTS="true")


def photo(colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    return solid("JPEG", (8, 6), colour)


def cutout(colour: tuple[int, int, int]) -> bytes:
    return solid("PNG", (6, 4), colour)


def upload(world: World, key: str, body: bytes | None = None, **meta: str) -> UploadRef:
    answer = world.put_upload(key, photo() if body is None else body, **meta)
    return UploadRef(world.resources.uploads_bucket, key, answer["VersionId"], answer["ETag"], None)


def callback(world: World, job_id: str, run_id: str, payload: dict[str, Any]) -> str:
    body = json.dumps({"run_id": run_id, "metadata": {"job_id": job_id, "attempt": "1"}, **payload}).encode()
    answer = handle_callback(body, sign(body, "whsec_current"), world.services)
    return str(answer.body["result"])


def run_succeeds(world: World, job_id: str, run_id: str, output: bytes) -> None:
    """Runflow finishes the run with one output; the callback and the copy worker do the rest."""
    url = world.outputs.serve(f"/{run_id}/0.png?X-Amz-Signature=s", output)
    world.runflow.finish(run_id, outputs=(OutputRef(url, "image/png"),))
    payload = {
        "event": "run.completed",
        "status": "succeeded",
        "output": {"outputs": [{"url": url, "content_type": "image/png"}]},
    }
    assert callback(world, job_id, run_id, payload) == "copy_queued"
    copy_all(world)


def run_fails(world: World, job_id: str, run_id: str) -> None:
    world.runflow.finish(run_id, status="failed", failure_code="INPUT_UNREADABLE", failure_message="bad")
    payload = {
        "event": "run.failed",
        "status": "failed",
        "output": {"error": {"code": "INPUT_UNREADABLE", "message": "bad bytes"}},
    }
    assert callback(world, job_id, run_id, payload) == "failed"


def copy_all(world: World) -> list[Result]:
    """Hand every queued copy request to the copy worker."""
    return [
        handle_copy_request(
            CopyRequest.parse(json.dumps(body)), world.services, deadline=time.monotonic() + 30
        )
        for body in world.copy_requests()
    ]


def woken(world: World) -> list[str]:
    """Drain the uploads queue: the job ids sent back to the submit function."""
    found: list[str] = []
    url = world.resources.queue_url
    while got := world.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in got:
            body = json.loads(message["Body"])
            if body.get("backdrop") == "submit_job":
                found.append(body["job_id"])
            world.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return found


def result_body(world: World, key: str) -> bytes:
    body: bytes = world.s3.get_object(Bucket=world.resources.results_bucket, Key=key)["Body"].read()
    return body


def first_success(world: World, key: str = "uploads/a.jpg", output: bytes | None = None) -> str:
    result = submit_upload(upload(world, key), world.services)
    assert result.outcome is Outcome.SUBMITTED and result.job_id and result.run_id
    run_succeeds(world, result.job_id, result.run_id, output or cutout((10, 20, 30)))
    assert world.job(result.job_id).status is Status.SUCCEEDED
    return result.job_id


def test_same_photo_under_another_key_reuses_the_result_without_a_run(world: World) -> None:
    earlier = first_success(world)
    result = submit_upload(upload(world, "uploads/b.jpg"), world.services)
    assert result.outcome is Outcome.COPY_QUEUED and world.runflow.creates == 1
    assert result.job_id
    job = world.job(result.job_id)
    assert job.status is Status.COPYING and job.reused_from == earlier and job.reserved_on is None
    (done,) = copy_all(world)
    assert done.outcome is Outcome.SUCCEEDED
    item = world.item(result.job_id)
    assert item["status"] == "succeeded" and item["reused_from"] == earlier and "run_id" not in item
    assert item["result_keys"] == ["results/b.jpg/result.png"]
    assert item["content_digest"] == world.item(earlier)["content_digest"]
    assert result_body(world, "results/b.jpg/result.png") == cutout((10, 20, 30))
    head = world.s3.head_object(Bucket=world.resources.results_bucket, Key="results/b.jpg/result.png")
    assert head["Metadata"]["job-id"] == result.job_id and head["Metadata"]["source-key"] == "uploads/b.jpg"
    assert head["ContentType"] == "image/png"
    assert world.services.budget.reserved() == 1
    assert metric_total("ResultsReused") == 1
    reused = [e["detail"] for e in world.events() if e["detail"]["job_id"] == result.job_id]
    assert reused and reused[0]["reused"] is True and reused[0]["reused_from"] == earlier


def test_same_bytes_uploaded_again_to_the_same_key_reuse_its_result(world: World) -> None:
    earlier = first_success(world)
    result = submit_upload(upload(world, "uploads/a.jpg"), world.services)
    assert result.outcome is Outcome.COPY_QUEUED and result.job_id and result.job_id != earlier
    assert [r.outcome for r in copy_all(world)] == [Outcome.SUCCEEDED]
    assert world.runflow.creates == 1 and world.job(result.job_id).reused_from == earlier
    assert result_body(world, "results/a.jpg/result.png") == cutout((10, 20, 30))
    head = world.s3.head_object(Bucket=world.resources.results_bucket, Key="results/a.jpg/result.png")
    assert head["Metadata"]["job-id"] == result.job_id


def test_another_colour_is_a_new_run(world: World) -> None:
    first_success(world)
    result = submit_upload(upload(world, "uploads/b.jpg", **{"background-color": "#000000"}), world.services)
    assert result.outcome is Outcome.SUBMITTED and world.runflow.creates == 2


def test_other_bytes_are_a_new_run(world: World) -> None:
    first_success(world)
    result = submit_upload(upload(world, "uploads/b.jpg", photo((1, 2, 3))), world.services)
    assert result.outcome is Outcome.SUBMITTED and world.runflow.creates == 2


def test_identical_upload_waits_for_the_run_in_flight_and_then_reuses_it(world: World) -> None:
    leader = submit_upload(upload(world, "uploads/a.jpg"), world.services)
    assert leader.job_id and leader.run_id
    follower = submit_upload(upload(world, "uploads/b.jpg"), world.services)
    assert follower.outcome is Outcome.WAITING and follower.job_id
    waiting = world.job(follower.job_id)
    assert waiting.status is Status.RECEIVED and waiting.error_code == ErrorCode.CONTENT_IN_FLIGHT
    assert waiting.error_message and leader.job_id in waiting.error_message
    assert world.runflow.creates == 1 and metric_total("ContentWaits") == 1

    run_succeeds(world, leader.job_id, leader.run_id, cutout((5, 5, 5)))
    assert woken(world) == [follower.job_id]
    assert submit_job(follower.job_id, world.services).outcome is Outcome.COPY_QUEUED
    copy_all(world)
    done = world.job(follower.job_id)
    assert done.status is Status.SUCCEEDED and done.reused_from == leader.job_id and done.error_code is None
    assert result_body(world, "results/b.jpg/result.png") == cutout((5, 5, 5))
    assert world.runflow.creates == 1


def test_when_the_leader_fails_exactly_one_waiter_runs_and_the_rest_reuse_it(world: World) -> None:
    leader = submit_upload(upload(world, "uploads/a.jpg"), world.services)
    assert leader.job_id and leader.run_id
    waiters = [submit_upload(upload(world, f"uploads/w{i}.jpg"), world.services) for i in range(3)]
    assert all(w.outcome is Outcome.WAITING for w in waiters)

    run_fails(world, leader.job_id, leader.run_id)
    assert world.job(leader.job_id).status is Status.FAILED
    sent_back = woken(world)
    assert sorted(sent_back) == sorted(str(w.job_id) for w in waiters)
    outcomes = [submit_job(job_id, world.services) for job_id in sent_back]
    assert sorted(o.outcome for o in outcomes) == [Outcome.SUBMITTED, Outcome.WAITING, Outcome.WAITING]
    assert world.runflow.creates == 2
    (runner,) = [o for o in outcomes if o.outcome is Outcome.SUBMITTED]
    assert runner.job_id and runner.run_id

    run_succeeds(world, runner.job_id, runner.run_id, cutout((7, 7, 7)))
    for job_id in woken(world):
        assert submit_job(job_id, world.services).outcome is Outcome.COPY_QUEUED
    copy_all(world)
    for w in waiters:
        assert w.job_id
        job = world.job(w.job_id)
        assert job.status is Status.SUCCEEDED
        assert job.reused_from == (None if w.job_id == runner.job_id else runner.job_id)
    assert world.runflow.creates == 2


def test_with_reuse_off_every_upload_runs_and_still_records_its_digest(
    resources: Resources, output_server: OutputServer
) -> None:
    world = build_world(resources, output_server, BACKDROP_REUSE_RESULTS="false")
    first = submit_upload(upload(world, "uploads/a.jpg"), world.services)
    second = submit_upload(upload(world, "uploads/b.jpg"), world.services)
    assert first.outcome is second.outcome is Outcome.SUBMITTED
    assert world.runflow.creates == 2
    assert first.job_id and second.job_id
    digest = world.item(first.job_id)["content_digest"]
    assert len(digest) == 64 and world.item(second.job_id)["content_digest"] == digest


def test_deleted_result_is_not_reused_a_new_run_makes_it_again(world: World) -> None:
    first_success(world)
    world.s3.delete_object(Bucket=world.resources.results_bucket, Key="results/a.jpg/result.png")
    result = submit_upload(upload(world, "uploads/b.jpg"), world.services)
    assert result.outcome is Outcome.SUBMITTED and world.runflow.creates == 2
    assert metric_total("ReuseFellBack") == 1


def test_result_vanishing_before_the_copy_falls_back_to_a_run(world: World) -> None:
    first_success(world)
    result = submit_upload(upload(world, "uploads/b.jpg"), world.services)
    assert result.outcome is Outcome.COPY_QUEUED and result.job_id
    world.s3.delete_object(Bucket=world.resources.results_bucket, Key="results/a.jpg/result.png")
    (fell_back,) = copy_all(world)
    assert fell_back.outcome is Outcome.WAITING
    job = world.job(result.job_id)
    assert job.status is Status.RECEIVED and job.reused_from is None
    assert woken(world) == [result.job_id]
    resumed = submit_job(result.job_id, world.services)
    assert resumed.outcome is Outcome.SUBMITTED and world.runflow.creates == 2
    assert metric_total("ReuseFellBack") == 1


def test_a_lease_whose_holder_never_ends_expires_at_the_run_deadline(world: World) -> None:
    leader = submit_upload(upload(world, "uploads/a.jpg"), world.services)
    assert leader.outcome is Outcome.SUBMITTED
    follower = submit_upload(upload(world, "uploads/b.jpg"), world.services)
    assert follower.outcome is Outcome.WAITING and follower.job_id
    world.clock.advance(world.services.settings.run_deadline_minutes * 60 + 1)
    assert submit_job(follower.job_id, world.services).outcome is Outcome.SUBMITTED
    assert world.runflow.creates == 2


def test_a_lost_wake_up_is_made_good_by_the_reconciler(world: World) -> None:
    leader = submit_upload(upload(world, "uploads/a.jpg"), world.services)
    follower = submit_upload(upload(world, "uploads/b.jpg"), world.services)
    assert leader.job_id and leader.run_id and follower.outcome is Outcome.WAITING and follower.job_id
    run_succeeds(world, leader.job_id, leader.run_id, cutout((9, 9, 9)))
    assert woken(world) == [follower.job_id]  # and lost: nobody hands it to the submit function
    world.clock.advance(world.services.settings.reconcile_min_age_seconds + 1)
    reconcile(world.services, deadline=time.monotonic() + 60)
    copy_all(world)
    done = world.job(follower.job_id)
    assert done.status is Status.SUCCEEDED and done.reused_from == leader.job_id
    assert world.runflow.creates == 1


def test_a_reuse_whose_copy_request_was_lost_is_queued_again_by_the_reconciler(world: World) -> None:
    earlier = first_success(world)
    result = submit_upload(upload(world, "uploads/b.jpg"), world.services)
    assert result.outcome is Outcome.COPY_QUEUED and result.job_id
    assert len(world.copy_requests()) == 1  # and lost
    world.clock.advance(world.services.settings.reconcile_min_age_seconds + 1)
    reconcile(world.services, deadline=time.monotonic() + 60)
    assert [r.outcome for r in copy_all(world)] == [Outcome.SUCCEEDED]
    assert world.job(result.job_id).reused_from == earlier and world.runflow.creates == 1
