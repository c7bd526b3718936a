"""Ending a job: one helper for every use case (move, already-done, count, log, outcome), and the
reconciler's report keys built from outcomes."""

from __future__ import annotations

from backdrop.errors import ErrorCode
from backdrop.events import conclude
from backdrop.jobs import Status
from backdrop.outcomes import Outcome
from backdrop.reconciliation import Reconciled, Seen, Via
from backdrop.submission import submit_upload
from backdrop.uploads import UploadRef
from tests.support.images import solid
from tests.unit.world import World, metric_total


def submitted_job(world: World) -> str:
    key = "uploads/shoes/red.jpg"
    answer = world.put_upload(key, solid())
    result = submit_upload(
        UploadRef(world.resources.uploads_bucket, key, answer["VersionId"], answer["ETag"], None),
        world.services,
    )
    assert result.outcome is Outcome.SUBMITTED and result.job_id
    return result.job_id


def test_conclude_ends_a_job_once_and_says_already_done_to_the_second(world: World) -> None:
    job = world.store.get(submitted_job(world))
    assert job is not None
    changes = {"error_code": ErrorCode.RUN_NOT_FOUND, "error_message": "gone"}

    first = conclude(world.services, job, Status.FAILED, changes, metric="JobsFailed", run_id="r", detail="d")
    second = conclude(
        world.services, job, Status.CANCELED, changes, metric="JobsCanceled", moved_on="job moved on"
    )

    assert (first.outcome, first.job_id, first.run_id, first.detail) == (Outcome.FAILED, job.job_id, "r", "d")
    assert (second.outcome, second.detail) == (Outcome.ALREADY_DONE, "job moved on")
    assert metric_total("JobsFailed") == 1 and metric_total("JobsCanceled") == 0
    item = world.item(job.job_id)
    assert item["status"] == "failed" and item["error_code"] == "RUN_NOT_FOUND"


def test_conclude_moves_to_an_open_status_under_the_outcome_it_names(world: World) -> None:
    job = world.store.get(submitted_job(world))
    assert job is not None
    calls: list[str] = []

    moved = conclude(
        world.services,
        job,
        Status.COPYING,
        {"output_urls": [{"url": "https://cdn.runflow.io/o.png"}]},
        outcome=Outcome.COPY_QUEUED,
        metric="CopiesStarted",
        then=lambda done: calls.append(done.status.value),
    )

    assert moved.outcome is Outcome.COPY_QUEUED and calls == ["copying"]
    assert world.item(job.job_id)["status"] == "copying"


def test_reconciler_report_keys_are_built_from_outcomes() -> None:
    assert Reconciled(Outcome.SUBMITTED, Via.RESUBMITTED).key == "resubmitted_submitted"
    assert Reconciled(Outcome.COPY_QUEUED, Via.COMPLETED).key == "completed_copy_queued"
    assert Reconciled(Outcome.TIMED_OUT).key == "timed_out"
    assert Reconciled(Seen.STILL_RUNNING).key == "still_running"
    # A key means one thing: what a pass saw is never spelled like a use case's outcome.
    assert not {s.value for s in Seen} & {o.value for o in Outcome}
