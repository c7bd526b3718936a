"""The reconciler: every open job either moves on or ends saying why, and nothing is billed twice.
Real jobs table and copy queue on a moto server; Runflow is the stand-in; the clock is the test's."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from backdrop.jobs import Status
from backdrop.outcomes import RetryLater
from backdrop.reconciliation import reconcile
from backdrop.runs import OutputRef, RunflowUnavailable
from backdrop.submission import submit_upload
from backdrop.uploads import UploadRef
from tests.support.images import solid
from tests.unit.world import World, metric_total

MIN_AGE = 120  # BACKDROP_RECONCILE_MIN_AGE_SECONDS's default
DEADLINE = 60 * 60  # BACKDROP_RUN_DEADLINE_MINUTES's default, in seconds
REQUEUE_AFTER = 1800  # BACKDROP_COPY_REQUEUE_AFTER_SECONDS's default


def upload(world: World, key: str = "uploads/shoes/red.jpg") -> UploadRef:
    answer = world.put_upload(key, solid())
    return UploadRef(world.resources.uploads_bucket, key, answer["VersionId"], answer["ETag"], None)


def submitted(world: World, key: str = "uploads/shoes/red.jpg") -> tuple[str, str]:
    result = submit_upload(upload(world, key), world.services)
    assert result.job_id and result.run_id
    return result.job_id, result.run_id


def copying(world: World) -> tuple[str, str]:
    """A job whose run succeeded and whose copy was queued (the queue drained: the message is gone)."""
    job_id, run_id = submitted(world)
    world.store.try_transition(
        job_id, Status.COPYING, changes={"run_id": run_id, "output_urls": [{"url": "u"}]}
    )
    return job_id, run_id


def never_created(world: World, key: str = "uploads/shoes/red.jpg") -> str:
    """A job whose create failed with nothing created (Runflow unavailable all along)."""
    world.runflow.create_faults = ["unavailable"]
    with pytest.raises(RetryLater):
        submit_upload(upload(world, key), world.services)
    (item,) = world.ddb.scan(TableName=world.resources.jobs_table)["Items"]
    return str(item["job_id"]["S"])


def run_pass(world: World) -> dict[str, object]:
    return reconcile(world.services, deadline=time.monotonic() + 60).as_dict()


def test_young_jobs_are_left_to_their_callbacks(world: World) -> None:
    submitted(world)
    world.clock.advance(MIN_AGE - 5)
    assert run_pass(world) == {"examined": 0}
    assert world.runflow.reads == []


def test_job_without_a_run_is_created_once(world: World) -> None:
    job_id = never_created(world)
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world) == {"examined": 1, "resubmitted_submitted": 1}
    assert world.item(job_id)["status"] == "submitted" and world.runflow.billed == 1
    assert metric_total("JobsRecovered") == 1


def test_job_without_a_run_whose_version_was_replaced_is_superseded_not_billed(world: World) -> None:
    job_id = never_created(world)
    upload(world)  # a newer version of the same object
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world)["resubmitted_superseded"] == 1
    assert world.item(job_id)["status"] == "superseded" and world.runflow.billed == 0


def test_lost_create_answer_is_adopted_not_created_again(world: World) -> None:
    world.runflow.create_faults = ["answer_lost"]
    world.runflow.list_faults = ["empty"]
    with pytest.raises(RetryLater):
        submit_upload(upload(world), world.services)
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world)["resubmitted_submitted"] == 1
    assert world.runflow.creates == 1 and world.runflow.billed == 1


def test_create_still_settling_is_not_repeated(world: World) -> None:
    world.services.settings = replace(world.services.settings, create_settle_seconds=600.0)
    world.runflow.create_faults = ["answer_lost"]
    world.runflow.list_faults = ["empty", "empty"]
    with pytest.raises(RetryLater):
        submit_upload(upload(world), world.services)
    world.runflow.runs.clear()
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world) == {"examined": 1, "retry_later": 1}
    assert world.runflow.creates == 1


def test_overdue_job_without_a_run_times_out(world: World) -> None:
    job_id = never_created(world)
    world.clock.advance(DEADLINE + 1)
    assert run_pass(world)["timed_out"] == 1
    item = world.item(job_id)
    assert item["status"] == "timed_out" and item["error_code"] == "TIMED_OUT"
    # The message says why no run was made: the last error the job saw.
    assert item["error_message"] == "no run before the run deadline: HTTP 429 RATE_LIMITED (stand-in)"
    assert metric_total("JobsTimedOut") == 1 and world.runflow.billed == 0


def test_overdue_job_whose_lost_create_made_a_run_finishes_that_run(world: World) -> None:
    world.runflow.create_faults = ["answer_lost"]
    world.runflow.list_faults = ["empty"]
    with pytest.raises(RetryLater):
        submit_upload(upload(world), world.services)
    world.clock.advance(DEADLINE + 1)
    assert run_pass(world)["adopted_submitted"] == 1
    assert world.runflow.billed == 1


def test_overdue_job_whose_lookup_is_refused_times_out_saying_so(world: World) -> None:
    world.runflow.create_faults = ["answer_lost"]
    world.runflow.list_faults = ["refused", "refused"]
    submit_upload(upload(world), world.services)
    world.clock.advance(DEADLINE + 1)
    assert run_pass(world)["timed_out"] == 1
    (item,) = world.ddb.scan(TableName=world.resources.jobs_table)["Items"]
    assert item["error_code"]["S"] == "RUN_UNCONFIRMED"
    assert "refused" in item["error_message"]["S"] and world.runflow.creates == 1


def test_unconfirmed_create_is_never_repeated_and_ends_run_unconfirmed_at_the_deadline(world: World) -> None:
    # The create's answer was lost and Runflow's list never shows a run (it lags, or none was made):
    # no pass creates again, and the job ends saying the run was never confirmed.
    world.runflow.idempotency = "ignore"
    world.runflow.create_faults = ["answer_lost"]
    world.runflow.list_faults = ["empty"] * 40
    with pytest.raises(RetryLater):
        submit_upload(upload(world), world.services)
    (job_id,) = [i["job_id"]["S"] for i in world.ddb.scan(TableName=world.resources.jobs_table)["Items"]]
    for _ in range(5):
        world.clock.advance(DEADLINE / 6)
        assert run_pass(world) == {"examined": 1, "resubmitted_waiting": 1}
    assert world.runflow.creates == 1
    world.clock.advance(DEADLINE / 6 + 1)
    assert run_pass(world)["timed_out"] == 1
    item = world.item(job_id)
    assert item["status"] == "timed_out" and item["error_code"] == "RUN_UNCONFIRMED"
    assert "may have made one" in str(item["error_message"])
    assert world.runflow.creates == 1 and metric_total("JobsTimedOut") == 1


def test_lost_callback_of_a_finished_run_queues_the_copy(world: World) -> None:
    job_id, run_id = submitted(world)
    world.runflow.finish(run_id, outputs=(OutputRef("https://cdn.runflow.io/o.png"),))
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world) == {"examined": 1, "completed_copy_queued": 1}
    assert world.item(job_id)["status"] == "copying"
    assert world.copy_requests() == [{"job_id": job_id, "run_id": run_id}]


def test_lost_callback_of_a_failed_run_records_runflows_reason(world: World) -> None:
    job_id, run_id = submitted(world)
    world.runflow.finish(
        run_id, status="failed", failure_code="INPUT_FETCH_FAILED", failure_message="HTTP 403"
    )
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world)["completed_failed"] == 1
    item = world.item(job_id)
    assert item["error_code"] == "INPUT_FETCH_FAILED" and item["error_message"] == "HTTP 403"


@pytest.mark.parametrize("spelling", ["canceled", "cancelled", "CANCELLED"])
def test_lost_callback_of_a_canceled_run_ends_the_job_canceled(world: World, spelling: str) -> None:
    job_id, run_id = submitted(world)
    world.runflow.finish(
        run_id, status=spelling, failure_code="CANCELED", failure_message="canceled by an admin"
    )
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world)["completed_canceled"] == 1
    item = world.item(job_id)
    assert (item["status"], item["run_status"], item["error_code"]) == ("canceled", "canceled", "CANCELED")


def test_run_object_without_outputs_or_reason_is_final(world: World) -> None:
    first, run1 = submitted(world, "uploads/a.jpg")
    second, run2 = submitted(world, "uploads/b.jpg")
    world.runflow.finish(run1, outputs=())
    world.runflow.finish(run2, status="failed")
    world.clock.advance(MIN_AGE + 1)
    run_pass(world)
    assert world.item(first)["error_code"] == "NO_OUTPUT"
    assert world.item(second)["error_code"] == "RUN_FAILED"


def test_terminal_status_backdrop_does_not_know_ends_the_job(world: World) -> None:
    job_id, run_id = submitted(world)
    world.runflow.finish(run_id, status="expired")
    world.clock.advance(MIN_AGE + 1)
    run_pass(world)
    item = world.item(job_id)
    assert (
        item["status"] == "failed" and item["error_code"] == "RUN_EXPIRED" and item["run_status"] == "expired"
    )


def test_unknown_status_of_a_run_not_finished_is_left_open(world: World) -> None:
    job_id, run_id = submitted(world)
    world.runflow.finish(run_id, status="warming_up", finished=False)
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world)["still_running"] == 1
    assert world.item(job_id)["status"] == "submitted"


def test_running_job_is_left_alone_until_overdue(world: World) -> None:
    job_id, run_id = submitted(world)
    world.runflow.finish(run_id, status="running", finished=False)
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world)["still_running"] == 1
    world.clock.advance(DEADLINE)
    assert run_pass(world)["timed_out"] == 1
    assert "still running" in str(world.item(job_id)["error_message"])


def test_run_unknown_to_runflow_fails_the_job(world: World) -> None:
    job_id, _ = submitted(world)
    world.runflow.runs.clear()
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world)["failed_run_not_found"] == 1
    assert world.item(job_id)["error_code"] == "RUN_NOT_FOUND"


def test_copy_that_went_quiet_is_queued_again(world: World) -> None:
    job_id, run_id = copying(world)
    world.clock.advance(MIN_AGE - 10)
    world.store.update_open(job_id, Status.COPYING, {"run_status": "succeeded"})  # touched recently
    world.clock.advance(20)
    assert run_pass(world)["copy_in_progress"] == 1 and world.copy_requests() == []
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world)["copy_requeued"] == 1
    assert world.copy_requests() == [{"job_id": job_id, "run_id": run_id}]


def test_a_quiet_copy_is_queued_again_once_per_copy_queue_visibility_timeout(world: World) -> None:
    job_id, run_id = copying(world)
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world)["copy_requeued"] == 1
    assert world.item(job_id)["copy_requeued_at"]
    # Its copy may still be waiting or running: passes within the window queue nothing more.
    for _ in range(5):
        world.clock.advance(REQUEUE_AFTER / 5 - 1)
        assert run_pass(world)["copy_in_progress"] == 1
    assert len(world.copy_requests()) == 1
    world.clock.advance(10)
    assert run_pass(world)["copy_requeued"] == 1
    assert world.copy_requests() == [{"job_id": job_id, "run_id": run_id}]


def test_no_copy_is_queued_again_while_the_copy_queue_has_a_backlog(world: World) -> None:
    job_id, run_id = copying(world)
    world.services.copy_queue().send('{"job_id": "another", "run_id": "run"}')
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world)["copy_queue_busy"] == 1
    assert "copy_requeued_at" not in world.item(job_id)
    # Past the run deadline a backlog no longer defers it: a job must not stay open for ever.
    world.clock.advance(DEADLINE)
    assert run_pass(world)["copy_requeued"] == 1
    assert {"job_id": job_id, "run_id": run_id} in world.copy_requests()


def test_a_requeue_that_could_not_be_sent_is_tried_again_at_the_next_pass(world: World) -> None:
    job_id, run_id = copying(world)
    world.clock.advance(MIN_AGE + 1)
    queue = world.services.copy_queue()
    real_send = queue.send

    def refused(body: str) -> None:
        raise RetryLater("the copy queue refused the message")

    queue.send = refused  # type: ignore[method-assign]
    assert run_pass(world)["retry_later"] == 1
    assert "copy_requeued_at" not in world.item(job_id)
    queue.send = real_send  # type: ignore[method-assign]
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world)["copy_requeued"] == 1
    assert world.copy_requests() == [{"job_id": job_id, "run_id": run_id}]


def test_copy_failing_past_the_deadline_times_out(world: World) -> None:
    job_id, _ = copying(world)
    world.store.record_error(job_id, Status.COPYING, "COPY_FAILED", "output URL answered HTTP 500")
    world.clock.advance(DEADLINE + 1)
    assert run_pass(world)["timed_out"] == 1
    assert "HTTP 500" in str(world.item(job_id)["error_message"])


def test_oldest_first_and_bounded_by_the_batch_size(world: World) -> None:
    ids = []
    for name in ("a", "b", "c"):
        _job_id, run_id = submitted(world, f"uploads/{name}.jpg")
        world.runflow.finish(run_id, status="running", finished=False)
        ids.append(run_id)
        world.clock.advance(1)
    world.services.settings = replace(world.services.settings, reconcile_batch_size=2)
    world.clock.advance(MIN_AGE)
    assert run_pass(world) == {"examined": 2, "still_running": 2}
    assert world.runflow.reads == ids[:2]


def test_runflow_unavailable_for_one_job_does_not_stop_the_pass(world: World) -> None:
    submitted(world, "uploads/a.jpg")
    _, run_b = submitted(world, "uploads/b.jpg")
    world.runflow.finish(run_b, status="running", finished=False)
    world.runflow.get_faults = [RunflowUnavailable("HTTP 503")]
    world.clock.advance(MIN_AGE + 1)
    assert run_pass(world) == {"examined": 2, "retry_later": 1, "still_running": 1}


def test_deadline_stops_the_pass_between_jobs(world: World) -> None:
    submitted(world, "uploads/a.jpg")
    world.clock.advance(MIN_AGE + 1)
    report = reconcile(world.services, deadline=time.monotonic() - 1).as_dict()
    assert report == {"examined": 0, "deferred_for_time": 1}
