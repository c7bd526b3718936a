"""The daily run budget: runs reserved from an atomic counter before they are created, jobs held
(never failed, never looping through SQS) when it is spent, and resumed oldest first when it
allows again, each with exactly one run."""

from __future__ import annotations

import json
import time

import pytest

from backdrop.outcomes import Outcome, RetryLater
from backdrop.queues import JobMessage
from backdrop.reconciliation import reconcile
from backdrop.submission import submit_job, submit_upload
from backdrop.uploads import UploadRef
from backdrop_local.aws import Resources
from tests.support.images import solid
from tests.unit.world import OutputServer, World, build_world, metric_total

DAY = 86400
MIN_AGE = 121


@pytest.fixture
def world(resources: Resources, output_server: OutputServer) -> World:
    output_server.files.clear()
    return build_world(resources, output_server, BACKDROP_DAILY_RUN_BUDGET="2")


def upload(world: World, name: str) -> UploadRef:
    key = f"uploads/{name}.jpg"
    answer = world.put_upload(key, solid(colour=(1, 2, 3)))
    return UploadRef(world.resources.uploads_bucket, key, answer["VersionId"], answer["ETag"], None)


def resume_messages(world: World) -> list[JobMessage]:
    found: list[JobMessage] = []
    url = world.resources.queue_url
    while got := world.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in got:
            parsed = JobMessage.parse(json.loads(message["Body"]))
            if parsed is not None:
                found.append(parsed)
            world.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return found


def reconcile_now(world: World) -> dict[str, object]:
    return reconcile(world.services, deadline=time.monotonic() + 60).as_dict()


def test_spent_budget_holds_jobs_instead_of_failing_them(world: World) -> None:
    results = [submit_upload(upload(world, f"p{i}"), world.services) for i in range(3)]
    assert [r.outcome for r in results] == [Outcome.SUBMITTED, Outcome.SUBMITTED, Outcome.HELD]
    held = world.item(str(results[2].job_id))
    assert held["status"] == "held" and held["error_code"] == "BUDGET_EXHAUSTED"
    assert "2 runs" in str(held["error_message"]) and held["open_shard"] == "open"
    assert world.runflow.billed == 2 and world.services.budget.reserved() == 2
    assert metric_total("RunsReserved") == 2 and metric_total("JobsHeld") == 1
    assert metric_total("RunBudgetUsedPercent") == 50.0 + 100.0


def test_held_job_waits_then_resumes_the_next_day_with_one_run(world: World) -> None:
    for i in range(2):
        submit_upload(upload(world, f"spent{i}"), world.services)
    held = submit_upload(upload(world, "waiting"), world.services)
    world.clock.advance(MIN_AGE)
    assert reconcile_now(world)["held"] == 1 and resume_messages(world) == []
    world.clock.advance(DAY)  # a new UTC day: a new budget
    report = reconcile_now(world)
    assert report["held_resumed"] == 1
    (message,) = resume_messages(world)
    assert message.job_id == held.job_id and message.attempt == 1
    assert submit_job(message.job_id, world.services).outcome is Outcome.SUBMITTED
    assert world.runflow.billed == 3
    assert "error_code" not in world.item(str(held.job_id))


def test_raising_the_budget_resumes_held_jobs_the_same_day(world: World) -> None:
    for i in range(4):
        submit_upload(upload(world, f"r{i}"), world.services)
    world.services.budget.daily = 3  # an operator raised DailyRunBudget
    world.clock.advance(MIN_AGE)
    assert reconcile_now(world)["held_resumed"] == 1  # one run left today: one job resumed
    (message,) = resume_messages(world)
    assert submit_job(message.job_id, world.services).outcome is Outcome.SUBMITTED
    assert world.runflow.billed == 3


def test_held_jobs_resume_oldest_first(world: World) -> None:
    for i in range(2):
        submit_upload(upload(world, f"first{i}"), world.services)
    held_ids = []
    for i in range(3):
        held_ids.append(submit_upload(upload(world, f"held{i}"), world.services).job_id)
        world.clock.advance(1)
    world.clock.advance(DAY)
    reconcile_now(world)
    assert [m.job_id for m in resume_messages(world)] == held_ids[:2]


def test_held_jobs_never_time_out(world: World) -> None:
    for i in range(2):
        submit_upload(upload(world, f"x{i}"), world.services)
    held = submit_upload(upload(world, "patient"), world.services)
    world.clock.advance(3 * 3600)  # well past the run deadline, same day... budget still spent
    world.services.budget.daily = 2
    reconcile_now(world)
    assert world.item(str(held.job_id))["status"] == "held"


def test_a_retried_delivery_reserves_nothing_more(world: World) -> None:
    ref = upload(world, "flaky")
    world.runflow.create_faults = ["unavailable"]
    with pytest.raises(RetryLater):
        submit_upload(ref, world.services)
    assert world.services.budget.reserved() == 1
    assert submit_upload(ref, world.services).outcome is Outcome.SUBMITTED
    assert world.services.budget.reserved() == 1 and world.runflow.billed == 1


def test_refused_run_gives_its_reservation_back(world: World) -> None:
    world.runflow.create_faults = ["rejected"]
    assert submit_upload(upload(world, "refused"), world.services).outcome is Outcome.FAILED
    assert world.services.budget.reserved() == 0


def test_resume_of_a_job_that_moved_on_changes_nothing(world: World) -> None:
    done = submit_upload(upload(world, "done"), world.services)
    assert done.job_id
    assert submit_job(done.job_id, world.services).outcome is Outcome.ALREADY_DONE
    assert world.runflow.billed == 1


def test_unlimited_budget_still_counts_runs(resources: Resources, output_server: OutputServer) -> None:
    world = build_world(resources, output_server, BACKDROP_DAILY_RUN_BUDGET="0")
    for i in range(3):
        assert submit_upload(upload(world, f"u{i}"), world.services).outcome is Outcome.SUBMITTED
    assert world.services.budget.reserved() == 3 and world.services.budget.remaining() is None
    assert metric_total("RunBudgetUsedPercent") == 0


def test_a_create_whose_outcome_is_unknown_spends_its_reservation(world: World) -> None:
    # The answer is lost and Runflow's list never shows the run: it may exist and be billed, so it
    # counts against the day's budget, and is never created a second time.
    world.runflow.create_faults = ["answer_lost"]
    world.runflow.list_faults = ["empty"] * 40
    lost = upload(world, "lost")
    with pytest.raises(RetryLater):
        submit_upload(lost, world.services)
    assert world.services.budget.reserved() == 1
    world.clock.advance(61)  # past the settle window
    assert submit_upload(lost, world.services).outcome is Outcome.WAITING
    world.clock.advance(3601)  # past the run deadline: the job ends unconfirmed
    assert reconcile_now(world)["timed_out"] == 1
    assert world.runflow.creates == 1 and world.services.budget.reserved() == 1
    # One run of the budget of two is left today.
    results = [submit_upload(upload(world, f"p{i}"), world.services) for i in range(2)]
    assert [r.outcome for r in results] == [Outcome.SUBMITTED, Outcome.HELD]
    assert metric_total("RunsReserved") == 2
