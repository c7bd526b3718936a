"""The scheduled reconciler: every open job ends up finished, resubmitted or timed out."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest
from unit_fakes import FakeJobStore, World, make_job, metric_total

import backdrop.reconciliation as reconciliation
from backdrop.jobs import Job, Status
from backdrop.reconciliation import reconcile
from backdrop.runs import OutputRef, RunflowClient, RunflowRejected, RunflowUnavailable, RunResult

NOW = datetime(2026, 5, 6, 12, 0, 0, tzinfo=UTC)
OUT = "https://cdn.runflow.io/o/result.webp?X-Amz-Signature=fresh"


def ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def run_pass(world: World, deadline_seconds: float = 30) -> dict[str, object]:
    return reconcile(
        world.services, deadline=reconciliation.time.monotonic() + deadline_seconds, now=NOW
    ).as_dict()


def job_in(world: World, job_id: str) -> Job:
    job = world.store.get(job_id)
    assert job is not None
    return job


def test_job_without_run_is_resubmitted_with_same_idempotency_key(world: World) -> None:
    world.store.add(
        make_job(status=Status.RECEIVED, run_id=None, color="245,220,200", created_at=ago(minutes=10))
    )
    assert run_pass(world) == {"examined": 1, "resubmitted_submitted": 1}

    ((request, key),) = world.runflow.created
    assert key == "job-1"
    assert request.client_ref == "job-1"
    assert request.metadata["job_id"] == "job-1"
    assert (request.red, request.green, request.blue) == (245, 220, 200)
    assert request.callback_url == "https://hooks.example.com/runflow/callback"
    presign = next(c for op, c in world.s3.calls if op == "generate_presigned_url")
    assert presign["Key"] == "uploads/shoes/red.jpg"
    assert presign["VersionId"] == "3HL4kqtJlcpXroDTDmJ"  # the very version that was uploaded
    job = job_in(world, "job-1")
    assert (job.status, job.run_id) == (Status.SUBMITTED, "run-for-job-1")
    assert metric_total("JobsRecovered") == 1


def use_runflow_over_http(world: World, handler: Callable[[httpx.Request], httpx.Response]) -> None:
    """The real RunflowClient, answered by ``handler`` instead of the network."""
    world.services._runflow = RunflowClient(
        "https://api.runflow.io",
        "rf_key",
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        sleep=lambda _: None,
        rng=random.Random(1),
    )


def test_resubmission_over_http_carries_the_idempotency_key(world: World) -> None:
    sent: list[httpx.Request] = []

    def runflow(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json={"id": "run-created-earlier", "status_code": "running"})

    use_runflow_over_http(world, runflow)
    world.store.add(make_job(status=Status.RECEIVED, run_id=None, created_at=ago(minutes=10)))
    run_pass(world)
    (request,) = sent
    assert request.headers["Idempotency-Key"] == "job-1"
    assert json.loads(request.content)["metadata"]["job_id"] == "job-1"
    assert job_in(world, "job-1").run_id == "run-created-earlier"


class IdempotentRunflow:
    """Runflow's Idempotency-Key rules: same key and body replays the run, another body is 409."""

    def __init__(self) -> None:
        self.runs: list[dict[str, object]] = []
        self.keys: dict[str, tuple[bytes, dict[str, object]]] = {}
        self.posts = 0

    def create_earlier(self, key: str, body: bytes) -> None:
        run = {
            "id": f"run-{len(self.runs) + 1}",
            "status_code": "running",
            "client_ref": key,
            "created_at": "2026-05-06T11:50:00",
        }
        self.runs.append(run)
        self.keys[key] = (body, run)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            ref = request.url.params["q"].split("'")[1]
            return httpx.Response(200, json={"items": [r for r in self.runs if r["client_ref"] == ref]})
        self.posts += 1
        key = request.headers["Idempotency-Key"]
        if key in self.keys:
            body, run = self.keys[key]
            if body == request.content:
                return httpx.Response(201, json=run)
            return httpx.Response(409, json={"code": "CONFLICT", "message": "Idempotency key reused"})
        self.create_earlier(key, request.content)
        return httpx.Response(201, json=self.keys[key][1])


def idempotent_runflow(world: World) -> IdempotentRunflow:
    runflow = IdempotentRunflow()
    use_runflow_over_http(world, runflow)
    return runflow


def test_resubmission_adopts_the_run_an_earlier_attempt_created(world: World) -> None:
    # The first attempt's create reached Runflow but its answer was lost; the retry presigns again,
    # so its body differs and Runflow answers 409 for the same key.
    runflow = idempotent_runflow(world)
    runflow.create_earlier("job-1", b'{"input": {"image_url": "https://old-presigned-url"}}')
    world.store.add(make_job(status=Status.RECEIVED, run_id=None, created_at=ago(minutes=10)))

    assert run_pass(world) == {"examined": 1, "resubmitted_submitted": 1}
    job = job_in(world, "job-1")
    assert (job.status, job.run_id) == (Status.SUBMITTED, "run-1")
    assert len(runflow.runs) == 1  # nothing billed twice
    assert metric_total("RunsAdopted") == 1


def test_conflict_without_a_listed_run_leaves_the_job_open(world: World) -> None:
    runflow = idempotent_runflow(world)
    runflow.create_earlier("job-1", b"{}")
    runflow.runs.clear()  # still being created at Runflow: not listed yet
    world.store.add(make_job(status=Status.RECEIVED, run_id=None, created_at=ago(minutes=10)))

    assert run_pass(world) == {"examined": 1, "runflow_unavailable": 1}
    job = job_in(world, "job-1")
    assert (job.status, job.run_id, job.error_code) == (Status.RECEIVED, None, "RUNFLOW_CONFLICT")


def test_job_without_run_and_bad_colour_is_rejected(world: World) -> None:
    world.store.add(
        make_job(status=Status.RECEIVED, run_id=None, color="chartreuse", created_at=ago(minutes=10))
    )
    assert run_pass(world)["rejected"] == 1
    job = job_in(world, "job-1")
    assert (job.status, job.error_code) == (Status.REJECTED, "INVALID_COLOR")
    assert world.runflow.created == []


def test_stale_index_row_does_not_abort_the_pass(world: World) -> None:
    # The OpenJobs index is eventually consistent: it may still list a job that has moved on.
    class StaleStore(FakeJobStore):
        def open_jobs(self, *, created_before: str, limit: int) -> Iterator[Job]:
            yield make_job(
                "job-1", status=Status.RECEIVED, run_id=None, color="chartreuse", created_at=ago(minutes=10)
            )
            yield from super().open_jobs(created_before=created_before, limit=limit)

    store = StaleStore()
    world.services.jobs = store  # type: ignore[assignment]
    store.add(
        make_job("job-1", status=Status.REJECTED, run_id=None, color="chartreuse", created_at=ago(minutes=10))
    )
    store.add(make_job("job-2", run_id="run-2", created_at=ago(minutes=5)))
    world.runflow.runs["run-2"] = RunResult(run_id="run-2", status="failed", failure_code="X")
    report = run_pass(world)
    assert report["already_done"] == 1
    assert report["completed_failed"] == 1
    assert store.get("job-2").status is Status.FAILED  # type: ignore[union-attr]


def test_overdue_job_without_run_times_out(world: World) -> None:
    world.store.add(make_job(status=Status.RECEIVED, run_id=None, created_at=ago(hours=2)))
    assert run_pass(world) == {"examined": 1, "timed_out": 1}
    job = job_in(world, "job-1")
    assert (job.status, job.error_code) == (Status.TIMED_OUT, "TIMED_OUT")
    assert world.runflow.created == []
    assert metric_total("JobsTimedOut") == 1


def test_overdue_job_without_run_adopts_a_run_whose_answer_was_lost(world: World) -> None:
    world.runflow.by_client_ref["job-1"] = [RunResult(run_id="run-made-anyway", status="running")]
    world.store.add(make_job(status=Status.RECEIVED, run_id=None, created_at=ago(hours=2)))
    assert run_pass(world) == {"examined": 1, "adopted_submitted": 1}
    job = job_in(world, "job-1")
    assert (job.status, job.run_id) == (Status.SUBMITTED, "run-made-anyway")
    assert world.runflow.created == []  # found, not created again
    assert metric_total("JobsTimedOut") == 0 and metric_total("RunsAdopted") == 1


def test_overdue_job_without_run_times_out_when_runflow_cannot_be_asked(world: World) -> None:
    world.runflow.by_client_ref["job-1"] = RunflowUnavailable("Runflow unavailable after retries")
    world.store.add(make_job(status=Status.RECEIVED, run_id=None, created_at=ago(hours=2)))
    assert run_pass(world) == {"examined": 1, "timed_out": 1}
    assert job_in(world, "job-1").status is Status.TIMED_OUT


def test_overdue_running_job_times_out(world: World) -> None:
    world.store.add(make_job(created_at=ago(minutes=61)))
    world.runflow.runs["run-1"] = RunResult(run_id="run-1", status="running")
    assert run_pass(world)["timed_out"] == 1
    job = job_in(world, "job-1")
    assert job.status is Status.TIMED_OUT
    assert "run-1" in (job.error_message or "")
    assert "open_shard" not in world.store.items["job-1"]


def test_finished_run_completed_through_same_path(world: World) -> None:
    world.store.add(make_job(created_at=ago(minutes=10)))
    world.runflow.runs["run-1"] = RunResult(run_id="run-1", status="succeeded", outputs=(OutputRef(OUT),))
    world.outputs.image("/o/result.webp", b"img", "image/webp")
    assert run_pass(world) == {"examined": 1, "completed_succeeded": 1}
    assert world.runflow.read == ["run-1"]
    job = job_in(world, "job-1")
    assert (job.status, job.result_keys) == (Status.SUCCEEDED, ["results/shoes/red.webp"])
    assert world.s3.objects[("results-bucket", "results/shoes/red.webp")]["Metadata"]["run-id"] == "run-1"
    assert world.outputs.requests[0].url.query == b"X-Amz-Signature=fresh"


def test_failed_run_completed(world: World) -> None:
    world.store.add(make_job(created_at=ago(minutes=10)))
    world.runflow.runs["run-1"] = RunResult(run_id="run-1", status="cancelled".replace("ll", "l"))
    assert run_pass(world)["completed_canceled"] == 1
    assert job_in(world, "job-1").status is Status.CANCELED
    assert world.runflow.read == ["run-1"]  # the run object is the whole story: read once


def test_copy_retried_with_fresh_url(world: World) -> None:
    world.store.add(make_job(status=Status.COPYING, created_at=ago(minutes=10), error_code="COPY_FAILED"))
    world.runflow.runs["run-1"] = RunResult(run_id="run-1", status="succeeded", outputs=(OutputRef(OUT),))
    world.outputs.image("/o/result.webp", b"img", "image/webp")
    assert run_pass(world)["completed_succeeded"] == 1
    job = job_in(world, "job-1")
    assert (job.status, job.error_code) == (Status.SUCCEEDED, None)


def test_copy_still_failing_stays_open_then_times_out(world: World) -> None:
    world.store.add(make_job("young", status=Status.COPYING, run_id="run-1", created_at=ago(minutes=10)))
    world.store.add(make_job("old", status=Status.COPYING, run_id="run-2", created_at=ago(hours=3)))
    world.runflow.runs["run-1"] = RunResult(run_id="run-1", status="succeeded", outputs=(OutputRef(OUT),))
    world.runflow.runs["run-2"] = RunResult(run_id="run-2", status="succeeded", outputs=(OutputRef(OUT),))
    world.outputs.routes["/o/result.webp"] = httpx.Response(500)
    report = run_pass(world)
    assert report["completed_copy_pending"] == 1
    assert report["timed_out"] == 1
    assert job_in(world, "young").status is Status.COPYING
    old = job_in(world, "old")
    assert old.status is Status.TIMED_OUT
    assert "could not be copied" in (old.error_message or "")


def test_still_running_is_untouched(world: World) -> None:
    world.store.add(make_job(created_at=ago(minutes=10)))
    world.runflow.runs["run-1"] = RunResult(run_id="run-1", status="running")
    before = world.store.snapshot()
    assert run_pass(world) == {"examined": 1, "still_running": 1}
    assert world.store.snapshot() == before


def test_young_jobs_are_left_to_their_callback(world: World) -> None:
    world.store.add(make_job(created_at=ago(seconds=30)))
    assert run_pass(world) == {"examined": 0}
    assert world.runflow.read == []


def test_oldest_first_and_batch_size(world: World) -> None:
    world.services.settings = dataclasses.replace(world.services.settings, reconcile_batch_size=2)
    for name, minutes in (("c", 5), ("a", 30), ("b", 20)):
        world.store.add(make_job(name, run_id=f"run-{name}", created_at=ago(minutes=minutes)))
        world.runflow.runs[f"run-{name}"] = RunResult(run_id=f"run-{name}", status="queued")
    assert run_pass(world)["examined"] == 2
    assert world.runflow.read == ["run-a", "run-b"]


def test_runflow_unavailable_for_one_job_does_not_stop_the_pass(world: World) -> None:
    world.store.add(make_job("a", run_id="run-a", created_at=ago(minutes=30)))
    world.store.add(make_job("b", run_id="run-b", created_at=ago(minutes=20)))
    world.runflow.runs["run-a"] = RunflowUnavailable("HTTP 503")
    world.runflow.runs["run-b"] = RunResult(run_id="run-b", status="failed")
    report = run_pass(world)
    assert report == {"examined": 2, "runflow_unavailable": 1, "completed_failed": 1}
    assert job_in(world, "a").status is Status.SUBMITTED


def test_deadline_honoured(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [500.0]
    monkeypatch.setattr(reconciliation, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    for name, minutes in (("a", 30), ("b", 20), ("c", 10)):
        world.store.add(make_job(name, run_id=f"run-{name}", created_at=ago(minutes=minutes)))
        world.runflow.runs[f"run-{name}"] = RunResult(run_id=f"run-{name}", status="running")

    real_get_run = world.runflow.get_run

    def slow_get_run(run_id: str) -> RunResult:
        clock[0] += 25  # each Runflow read takes 25 s of the pass's 30 s
        return real_get_run(run_id)

    world.runflow.get_run = slow_get_run  # type: ignore[method-assign]
    report = reconcile(world.services, deadline=530.0, now=NOW).as_dict()
    assert report == {"examined": 2, "still_running": 2, "deferred_for_time": 1}
    assert world.runflow.read == ["run-a", "run-b"]


def test_deadline_already_passed(world: World) -> None:
    world.store.add(make_job(created_at=ago(minutes=10)))
    report = reconcile(world.services, deadline=reconciliation.time.monotonic() - 1, now=NOW).as_dict()
    assert report == {"examined": 0, "deferred_for_time": 1}
    assert world.runflow.read == []


def test_run_unknown_to_runflow_fails_the_job(world: World) -> None:
    world.store.add(make_job(run_id="run-lost", created_at=ago(minutes=10)))  # no such run at Runflow
    assert run_pass(world) == {"examined": 1, "failed_run_not_found": 1}
    job = job_in(world, "job-1")
    assert (job.status, job.error_code) == (Status.FAILED, "RUN_NOT_FOUND")
    assert metric_total("JobsFailed") == 1


def test_other_refusals_leave_the_job_open(world: World) -> None:
    world.store.add(make_job(created_at=ago(minutes=10)))
    world.runflow.runs["run-1"] = RunflowRejected(401, "UNAUTHORIZED", "bad key")
    before = world.store.snapshot()
    assert run_pass(world) == {"examined": 1, "runflow_unavailable": 1}
    assert world.store.snapshot() == before


def test_time_out_of_a_job_that_just_finished(world: World) -> None:
    class FinishingStore(FakeJobStore):
        def open_jobs(self, *, created_before: str, limit: int) -> Iterator[Job]:
            for job in list(super().open_jobs(created_before=created_before, limit=limit)):
                # the callback lands between the index read and the reconciler's write
                self.transition(job.job_id, Status.FAILED, changes={"error_code": "RUN_FAILED"})
                yield job

    store = FinishingStore()
    world.services.jobs = store  # type: ignore[assignment]
    store.add(make_job(status=Status.RECEIVED, run_id=None, created_at=ago(hours=2)))
    assert run_pass(world) == {"examined": 1, "already_done": 1}
    assert store.get("job-1").status is Status.FAILED  # type: ignore[union-attr]
    assert metric_total("JobsTimedOut") == 0
