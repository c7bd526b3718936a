"""Completing a job from a finished run: the path shared by callbacks and the reconciler."""

from __future__ import annotations

import httpx
import pytest
from unit_fakes import World, make_job, metric_total

from backdrop.completion import Completion, complete_job, deadline_in
from backdrop.jobs import Status
from backdrop.runs import OutputRef, RunflowUnavailable, RunResult

OUT = "https://cdn.runflow.io/o/result.webp?X-Amz-Signature=abc"


def succeeded(*urls: str, run_id: str = "run-1") -> RunResult:
    return RunResult(
        run_id=run_id, status="succeeded", outputs=tuple(OutputRef(u) for u in urls), duration_ms=4200
    )


def complete(world: World, run: RunResult, job_id: str = "job-1") -> Completion:
    job = world.store.get(job_id)
    assert job is not None
    return complete_job(job, run, world.services, deadline=deadline_in(5)).completion


def test_succeeded_run_is_copied_then_job_succeeds(world: World) -> None:
    world.store.add(make_job(source_key="uploads/shoes/red shoe.jpg", color="245,220,200"))
    world.outputs.image("/o/result.webp", b"RIFF....WEBPVP8 data", "image/webp")

    assert complete(world, succeeded(OUT)) is Completion.SUCCEEDED

    job = world.store.get("job-1")
    assert job is not None
    assert job.status is Status.SUCCEEDED
    assert job.result_bucket == "results-bucket"
    assert job.result_keys == ["results/shoes/red shoe.webp"]
    assert job.runflow_duration_ms == 4200
    assert job.error_code is None
    assert job.completed_at is not None
    assert "open_shard" not in world.store.items["job-1"]
    stored = world.s3.objects[("results-bucket", "results/shoes/red shoe.webp")]
    assert stored["Body"] == b"RIFF....WEBPVP8 data"
    assert stored["ContentType"] == "image/webp"
    assert stored["Metadata"] == {
        "job-id": "job-1",
        "run-id": "run-1",
        "source-bucket": "uploads-bucket",
        "source-key": "uploads/shoes/red%20shoe.jpg",
        "background-color": "245,220,200",
    }
    # Copying came first, success second.
    assert [t for _, t in world.store.transitions] == [Status.COPYING, Status.SUCCEEDED]
    assert metric_total("JobsSucceeded") == 1
    assert metric_total("BytesCopied") == len(b"RIFF....WEBPVP8 data")


def test_every_output_is_copied(world: World) -> None:
    world.store.add(make_job())
    world.outputs.image("/o/a.png", b"first", "image/png")
    world.outputs.image("/o/b.png", b"second", "image/png")
    assert (
        complete(world, succeeded("https://cdn.runflow.io/o/a.png", "https://cdn.runflow.io/o/b.png"))
        is Completion.SUCCEEDED
    )
    job = world.store.get("job-1")
    assert job is not None
    assert job.result_keys == ["results/shoes/red.png", "results/shoes/red-2.png"]
    assert world.s3.objects[("results-bucket", "results/shoes/red-2.png")]["Body"] == b"second"


def test_partial_succeeded_is_copied(world: World) -> None:
    world.store.add(make_job())
    world.outputs.image("/o/result.webp", b"img", "image/webp")
    run = RunResult(run_id="run-1", status="partial_succeeded", outputs=(OutputRef(OUT),))
    assert complete(world, run) is Completion.SUCCEEDED


def test_succeeded_without_output_fails_the_job(world: World) -> None:
    world.store.add(make_job())
    assert complete(world, succeeded()) is Completion.FAILED
    job = world.store.get("job-1")
    assert job is not None
    assert (job.status, job.error_code) == (Status.FAILED, "NO_OUTPUT")


def test_failed_run_records_runflow_reason(world: World) -> None:
    world.store.add(make_job())
    run = RunResult(
        run_id="run-1",
        status="failed",
        failure_code="INPUT_UNREADABLE",
        failure_message="cannot decode image",
        duration_ms=900,
    )
    assert complete(world, run) is Completion.FAILED
    job = world.store.get("job-1")
    assert job is not None
    assert job.status is Status.FAILED
    assert (job.error_code, job.error_message) == ("INPUT_UNREADABLE", "cannot decode image")
    assert job.runflow_duration_ms == 900
    assert world.s3.calls == []
    assert world.outputs.requests == []
    assert metric_total("JobsFailed") == 1


def test_failed_run_without_reason(world: World) -> None:
    world.store.add(make_job())
    assert complete(world, RunResult(run_id="run-1", status="failed")) is Completion.FAILED
    job = world.store.get("job-1")
    assert job is not None
    assert job.error_code == "RUN_FAILED"
    assert job.error_message


def test_canceled_run(world: World) -> None:
    world.store.add(make_job())
    assert complete(world, RunResult(run_id="run-1", status="canceled")) is Completion.CANCELED
    job = world.store.get("job-1")
    assert job is not None
    assert (job.status, job.error_code) == (Status.CANCELED, "CANCELED")
    assert metric_total("JobsCanceled") == 1


@pytest.mark.parametrize(
    "status", [Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.TIMED_OUT, Status.REJECTED]
)
def test_finished_job_is_left_alone(world: World, status: Status) -> None:
    world.store.add(make_job(status=status))
    world.outputs.image("/o/result.webp", b"img", "image/webp")
    before = world.store.snapshot()
    assert complete(world, succeeded(OUT)) is Completion.ALREADY_DONE
    assert world.store.snapshot() == before
    assert world.outputs.requests == []
    assert world.s3.calls == []


def test_run_of_another_job_never_writes(world: World) -> None:
    world.store.add(make_job(run_id="run-1"))
    world.outputs.image("/o/result.webp", b"img", "image/webp")
    before = world.store.snapshot()
    assert complete(world, succeeded(OUT, run_id="run-2")) is Completion.RUN_MISMATCH
    assert world.store.snapshot() == before
    assert world.outputs.requests == []


def test_unfinished_run_changes_nothing(world: World) -> None:
    world.store.add(make_job())
    before = world.store.snapshot()
    assert complete(world, RunResult(run_id="run-1", status="running")) is Completion.NOT_FINISHED
    assert world.store.snapshot() == before


def test_callback_before_submit_was_recorded(world: World) -> None:
    # The callback overtook the submit: the job is still `received`, without a run id.
    world.store.add(make_job(status=Status.RECEIVED, run_id=None))
    world.outputs.image("/o/result.webp", b"img", "image/webp")
    assert complete(world, succeeded(OUT, run_id="run-9")) is Completion.SUCCEEDED
    job = world.store.get("job-1")
    assert job is not None
    assert (job.status, job.run_id) == (Status.SUCCEEDED, "run-9")


def test_transient_copy_failure_leaves_job_copying(world: World) -> None:
    world.store.add(make_job())
    world.outputs.routes["/o/result.webp"] = httpx.Response(403, text="<Error>Request has expired</Error>")
    assert complete(world, succeeded(OUT)) is Completion.COPY_PENDING
    job = world.store.get("job-1")
    assert job is not None
    assert job.status is Status.COPYING
    assert job.error_code == "COPY_FAILED"
    assert "403" in (job.error_message or "")
    assert job.attempts == 1
    assert world.store.items["job-1"]["open_shard"] == "open"  # the reconciler will see it
    assert metric_total("CopyFailures") == 1


def test_retry_after_copy_failure_succeeds_and_clears_error(world: World) -> None:
    world.store.add(make_job())
    world.outputs.routes["/o/result.webp"] = httpx.Response(500)
    assert complete(world, succeeded(OUT)) is Completion.COPY_PENDING
    world.outputs.image("/o/result.webp", b"img", "image/webp")
    assert complete(world, succeeded(OUT)) is Completion.SUCCEEDED
    job = world.store.get("job-1")
    assert job is not None
    assert job.status is Status.SUCCEEDED
    assert (job.error_code, job.error_message) == (None, None)


def test_refused_output_fails_job_with_refusal_code(world: World) -> None:
    world.store.add(make_job())
    assert complete(world, succeeded("http://cdn.runflow.io/o/result.webp")) is Completion.FAILED
    job = world.store.get("job-1")
    assert job is not None
    assert (job.status, job.error_code) == (Status.FAILED, "OUTPUT_URL_INSECURE")
    assert world.outputs.requests == []


def test_output_on_private_address_fails_job(world: World, dns: dict[str, list[str]]) -> None:
    dns["cdn.runflow.io"] = ["169.254.169.254"]
    world.store.add(make_job())
    assert complete(world, succeeded(OUT)) is Completion.FAILED
    job = world.store.get("job-1")
    assert job is not None
    assert job.error_code == "OUTPUT_ADDRESS_FORBIDDEN"
    assert world.outputs.requests == []


def test_stale_job_read_does_not_copy_again(world: World) -> None:
    stale = make_job()
    world.store.add(make_job(status=Status.SUCCEEDED, result_keys=["results/shoes/red.webp"]))
    world.outputs.image("/o/result.webp", b"img", "image/webp")
    result = complete_job(stale, succeeded(OUT), world.services, deadline=deadline_in(5))
    assert result.completion is Completion.ALREADY_DONE
    assert world.outputs.requests == []


def test_failure_details_read_from_the_run_when_callback_omits_them(world: World) -> None:
    world.store.add(make_job())
    world.runflow.runs["run-1"] = RunResult(
        run_id="run-1",
        status="failed",
        failure_code="PROVIDER_TIMEOUT",
        failure_message="provider took too long",
    )
    assert complete(world, RunResult(run_id="run-1", status="failed")) is Completion.FAILED
    assert world.runflow.read == ["run-1"]
    job = world.store.get("job-1")
    assert job is not None
    assert (job.error_code, job.error_message) == ("PROVIDER_TIMEOUT", "provider took too long")


def test_failure_details_not_read_when_callback_has_them(world: World) -> None:
    world.store.add(make_job())
    complete(world, RunResult(run_id="run-1", status="failed", failure_code="X", failure_message="y"))
    assert world.runflow.read == []


def test_failure_details_unavailable_falls_back_to_generic_reason(world: World) -> None:
    world.store.add(make_job())
    world.runflow.runs["run-1"] = RunflowUnavailable("HTTP 503")
    assert complete(world, RunResult(run_id="run-1", status="failed")) is Completion.FAILED
    job = world.store.get("job-1")
    assert job is not None
    assert (job.status, job.error_code) == (Status.FAILED, "RUN_FAILED")


def test_stale_job_read_does_not_fail_a_finished_job(world: World) -> None:
    stale = make_job()
    world.store.add(make_job(status=Status.SUCCEEDED))
    before = world.store.snapshot()
    run = RunResult(run_id="run-1", status="failed", failure_code="X", failure_message="y")
    assert (
        complete_job(stale, run, world.services, deadline=deadline_in(5)).completion
        is Completion.ALREADY_DONE
    )
    assert world.store.snapshot() == before
    assert metric_total("JobsFailed") == 0


def test_job_timed_out_during_the_copy_is_not_marked_succeeded(world: World) -> None:
    world.store.add(make_job())

    def serve_while_reconciler_times_out(request: httpx.Request) -> httpx.Response:
        world.store.transition("job-1", Status.TIMED_OUT, changes={"error_code": "TIMED_OUT"})
        return httpx.Response(200, headers={"Content-Type": "image/webp"}, content=b"img")

    world.outputs.routes["/o/result.webp"] = serve_while_reconciler_times_out
    assert complete(world, succeeded(OUT)) is Completion.ALREADY_DONE
    job = world.store.get("job-1")
    assert job is not None
    assert (job.status, job.error_code) == (Status.TIMED_OUT, "TIMED_OUT")
    assert metric_total("JobsSucceeded") == 0
