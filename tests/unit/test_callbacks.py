"""Runflow callbacks end to end through handle_callback, with fakes for AWS and the outputs."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from unit_fakes import World, make_job, metric_total

from backdrop.callbacks import MAX_BODY_BYTES, handle_callback
from backdrop.jobs import Status
from backdrop.signatures import sign

OUT = "https://cdn.runflow.io/o/result.webp?X-Amz-Signature=abc"
CURRENT_SECRET = "whsec_current"  # what FakeSecrets holds


def envelope(
    *,
    status: str = "succeeded",
    event: str = "run.completed",
    run_id: str = "run-1",
    job_id: str | None = "job-1",
    output: Any = None,
    **extra: Any,
) -> bytes:
    if output is None and status == "succeeded":
        output = {"outputs": [{"url": OUT}], "seed": None, "timing": None, "nsfw_detected": None}
    body = {
        "event": event,
        "run_id": run_id,
        "status": status,
        "output": output,
        "duration_ms": 4200,
        "created_at": "2026-05-06T10:00:00+00:00",
        "completed_at": "2026-05-06T10:01:42.123456+00:00",
        "metadata": {"job_id": job_id, "source_bucket": "uploads-bucket"} if job_id else None,
        **extra,
    }
    return json.dumps(body).encode()


def deliver(world: World, body: bytes, secret: str | None = CURRENT_SECRET) -> tuple[int, dict[str, Any]]:
    signature = sign(body, secret) if secret else None
    answer = handle_callback(body, signature, world.services)
    return answer.status_code, answer.body


def status_of(world: World, job_id: str = "job-1") -> Status:
    job = world.store.get(job_id)
    assert job is not None
    return job.status


def test_succeeded_callback(world: World) -> None:
    world.store.add(make_job())
    world.outputs.image("/o/result.webp", b"img", "image/webp")
    assert deliver(world, envelope()) == (200, {"result": "succeeded", "job_id": "job-1"})
    job = world.store.get("job-1")
    assert job is not None
    assert job.status is Status.SUCCEEDED
    assert job.result_keys == ["results/shoes/red.webp"]
    assert ("results-bucket", "results/shoes/red.webp") in world.s3.objects


def test_failed_callback_records_runflow_code_and_message(world: World) -> None:
    world.store.add(make_job())
    body = envelope(
        status="failed",
        event="run.failed",
        output={"code": "INPUT_UNREADABLE", "message": "the image could not be decoded"},
    )
    assert deliver(world, body) == (200, {"result": "failed", "job_id": "job-1"})
    job = world.store.get("job-1")
    assert job is not None
    assert (job.status, job.error_code, job.error_message) == (
        Status.FAILED,
        "INPUT_UNREADABLE",
        "the image could not be decoded",
    )


def test_failed_callback_with_failure_fields(world: World) -> None:
    world.store.add(make_job())
    body = envelope(
        status="failed", event="run.failed", failure_code="PROVIDER_ERROR", failure_message="boom"
    )
    assert deliver(world, body)[0] == 200
    job = world.store.get("job-1")
    assert job is not None
    assert (job.error_code, job.error_message) == ("PROVIDER_ERROR", "boom")


@pytest.mark.parametrize("status", ["cancelled", "canceled"])
def test_cancelled_spelling_ends_canceled(world: World, status: str) -> None:
    world.store.add(make_job())
    assert deliver(world, envelope(status=status, event="run.cancelled")) == (
        200,
        {"result": "canceled", "job_id": "job-1"},
    )
    assert status_of(world) is Status.CANCELED


def test_envelope_without_status_uses_event(world: World) -> None:
    world.store.add(make_job())
    body = json.dumps({"event": "run.cancelled", "run_id": "run-1", "metadata": {"job_id": "job-1"}}).encode()
    assert deliver(world, body)[0] == 200
    assert status_of(world) is Status.CANCELED


def test_duplicate_callback_for_finished_job(world: World) -> None:
    world.store.add(make_job())
    world.outputs.image("/o/result.webp", b"img", "image/webp")
    assert deliver(world, envelope())[1]["result"] == "succeeded"
    before = world.store.snapshot()
    fetched, written = len(world.outputs.requests), len(world.s3.calls)

    assert deliver(world, envelope()) == (200, {"result": "already_done", "job_id": "job-1"})
    # A late "failed" for the same run cannot undo the success either.
    assert deliver(world, envelope(status="failed", event="run.failed"))[1]["result"] == "already_done"
    assert world.store.snapshot() == before
    assert (len(world.outputs.requests), len(world.s3.calls)) == (fetched, written)


def test_run_that_is_not_the_jobs(world: World) -> None:
    world.store.add(make_job(run_id="run-1"))
    world.outputs.image("/o/result.webp", b"img", "image/webp")
    before = world.store.snapshot()
    assert deliver(world, envelope(run_id="run-other")) == (
        200,
        {"result": "run_mismatch", "job_id": "job-1"},
    )
    assert world.store.snapshot() == before
    assert world.outputs.requests == []


def test_transient_copy_failure_answers_503(world: World) -> None:
    world.store.add(make_job())
    world.outputs.routes["/o/result.webp"] = httpx.Response(503, text="busy")
    code, body = deliver(world, envelope())
    assert code == 503  # Runflow retries on 5xx
    assert body["result"] == "copy_pending"
    job = world.store.get("job-1")
    assert job is not None
    assert job.status is Status.COPYING
    assert job.error_code == "COPY_FAILED"
    assert world.s3.objects == {}


def test_refused_output_fails_the_job(world: World) -> None:
    world.store.add(make_job())
    body = envelope(output={"outputs": [{"url": "https://evil.example.com/x.png"}]})
    assert deliver(world, body) == (200, {"result": "failed", "job_id": "job-1"})
    job = world.store.get("job-1")
    assert job is not None
    assert (job.status, job.error_code) == (Status.FAILED, "OUTPUT_HOST_NOT_ALLOWED")
    assert world.outputs.requests == []


@pytest.mark.parametrize(
    "signature",
    [None, "", "0" * 64, "not-a-signature", "ZZ" * 32],
)
def test_bad_or_missing_signature_is_401_and_nothing_changes(world: World, signature: str | None) -> None:
    world.store.add(make_job())
    before = world.store.snapshot()
    answer = handle_callback(envelope(), signature, world.services)
    assert answer.status_code == 401
    assert world.store.snapshot() == before
    assert world.outputs.requests == []
    assert metric_total("CallbacksRejected") == 1


def test_signature_under_unknown_secret_is_401_after_one_refresh(world: World) -> None:
    world.store.add(make_job())
    before = world.store.snapshot()
    assert deliver(world, envelope(), secret="whsec_attacker")[0] == 401
    assert world.secrets.refreshes == 1
    assert world.store.snapshot() == before


def test_missing_signature_does_not_refresh(world: World) -> None:
    world.store.add(make_job())
    assert deliver(world, envelope(), secret=None)[0] == 401
    assert world.secrets.refreshes == 0


def test_signature_of_a_different_body_is_refused(world: World) -> None:
    world.store.add(make_job())
    signed = envelope(status="failed", event="run.failed")
    tampered = envelope(status="canceled", event="run.cancelled")
    answer = handle_callback(tampered, sign(signed, "whsec_current"), world.services)
    assert answer.status_code == 401
    assert status_of(world) is Status.SUBMITTED


def test_rotated_secret_accepted_after_exactly_one_refresh(world: World) -> None:
    world.store.add(make_job())
    world.outputs.image("/o/result.webp", b"img", "image/webp")
    world.secrets.rotate("whsec_rotated", "whsec_current")  # the cache still holds the old pair
    assert deliver(world, envelope(), secret="whsec_rotated")[0] == 200
    assert world.secrets.refreshes == 1
    assert status_of(world) is Status.SUCCEEDED


def test_previous_secret_accepted_without_refresh(world: World) -> None:
    world.secrets = world.services.secrets = type(world.secrets)("whsec_new", "whsec_current")  # type: ignore[assignment]
    world.store.add(make_job())
    assert deliver(world, envelope(status="failed", event="run.failed"), secret="whsec_current")[0] == 200
    assert world.secrets.refreshes == 0


def test_oversized_body_is_413_before_anything(world: World) -> None:
    body = envelope(padding="x" * MAX_BODY_BYTES)
    assert len(body) > MAX_BODY_BYTES
    assert deliver(world, body)[0] == 413
    assert world.secrets.reads == 0


@pytest.mark.parametrize("body", [b"not json", b"{", b"[1, 2, 3]", b'"a string"', b""])
def test_malformed_body_is_400(world: World, body: bytes) -> None:
    assert deliver(world, body)[0] == 400


def test_missing_run_id_is_400(world: World) -> None:
    world.store.add(make_job())
    body = json.dumps(
        {"event": "run.completed", "status": "succeeded", "metadata": {"job_id": "job-1"}}
    ).encode()
    assert deliver(world, body)[0] == 400
    assert status_of(world) is Status.SUBMITTED


def test_unknown_job_is_200_so_runflow_stops_retrying(world: World) -> None:
    assert deliver(world, envelope(job_id="job-nobody", run_id="run-nobody")) == (
        200,
        {"result": "unknown_job"},
    )
    assert metric_total("CallbacksUnmatched") == 1


def test_job_found_by_run_id_without_metadata(world: World) -> None:
    world.store.add(make_job("job-7", run_id="run-7"))
    assert deliver(world, envelope(job_id=None, run_id="run-7", status="failed", event="run.failed")) == (
        200,
        {"result": "failed", "job_id": "job-7"},
    )
    assert status_of(world, "job-7") is Status.FAILED


def test_job_found_by_run_id_when_metadata_names_no_stored_job(world: World) -> None:
    world.store.add(make_job("job-7", run_id="run-7"))
    body = envelope(job_id="job-gone", run_id="run-7", status="failed", event="run.failed")
    assert deliver(world, body)[1] == {"result": "failed", "job_id": "job-7"}
