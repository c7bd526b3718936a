"""Runflow callbacks through handle_callback: authenticated, recorded at once, copy queued, nothing
fetched. The jobs table and the copy queue are the real ones on a moto server."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from backdrop.callbacks import MAX_BODY_BYTES, MalformedBody, handle_callback, load_envelope
from backdrop.jobs import Job, Status
from backdrop.runs import OutputRef, RunflowRejected, RunflowUnavailable, RunRequest
from backdrop.signatures import sign
from backdrop.submission import submit_upload
from backdrop.uploads import UploadRef
from tests.support.images import solid
from tests.unit.world import World, metric_total

CURRENT_SECRET = "whsec_current"  # what FakeSecrets holds


def submitted(world: World, key: str = "uploads/shoes/red.jpg") -> tuple[str, str]:
    """A job as the submit path leaves it: (job id, run id)."""
    answer = world.put_upload(key, solid("PNG", colour=(10, 20, 30)))
    result = submit_upload(
        UploadRef(world.resources.uploads_bucket, key, answer["VersionId"], answer["ETag"], None),
        world.services,
    )
    assert result.job_id and result.run_id
    return result.job_id, result.run_id


def envelope(
    job_id: str | None,
    run_id: str,
    *,
    status: str = "succeeded",
    event: str = "run.completed",
    output: Any = "default",
    attempt: str | None = "1",
    **extra: Any,
) -> bytes:
    if output == "default":
        output = (
            {"outputs": [{"url": "https://cdn.runflow.io/o/result.webp?X-Amz-Signature=abc"}], "seed": None}
            if status == "succeeded"
            else None
        )
    metadata = {"job_id": job_id, "attempt": attempt} if job_id else None
    body = {
        "event": event,
        "run_id": run_id,
        "status": status,
        "output": output,
        "duration_ms": 4200,
        "created_at": "2026-05-06T10:00:00+00:00",
        "completed_at": "2026-05-06T10:01:42.123456+00:00",
        "metadata": metadata,
        **extra,
    }
    return json.dumps(body).encode()


def deliver(world: World, body: bytes, secret: str | None = CURRENT_SECRET) -> tuple[int, dict[str, Any]]:
    signature = sign(body, secret) if secret else None
    answer = handle_callback(body, signature, world.services)
    return answer.status_code, answer.body


def test_succeeded_callback_is_recorded_and_the_copy_queued_without_fetching(world: World) -> None:
    job_id, run_id = submitted(world)
    assert deliver(world, envelope(job_id, run_id)) == (200, {"result": "copy_queued", "job_id": job_id})
    item = world.item(job_id)
    assert item["status"] == "copying" and item["run_status"] == "succeeded"
    assert item["output_urls"] == [{"url": "https://cdn.runflow.io/o/result.webp?X-Amz-Signature=abc"}]
    assert item["runflow_duration_ms"] == 4200
    assert world.copy_requests() == [{"job_id": job_id, "run_id": run_id}]
    assert world.outputs.requests == []  # the callback copies nothing itself


def test_partial_success_keeps_every_output(world: World) -> None:
    job_id, run_id = submitted(world)
    output = {"outputs": [{"url": "https://a.runflow.io/1.png"}, {"url": "https://a.runflow.io/2.png"}]}
    body = envelope(job_id, run_id, status="partial_succeeded", event="run.partial_succeeded", output=output)
    assert deliver(world, body)[1]["result"] == "copy_queued"
    assert [o["url"] for o in world.item(job_id)["output_urls"]] == [
        "https://a.runflow.io/1.png",
        "https://a.runflow.io/2.png",
    ]


def test_failed_callback_with_an_error_envelope_ends_the_job_at_once(world: World) -> None:
    job_id, run_id = submitted(world)
    output = {"error": {"code": "INPUT_UNREADABLE", "message": "image could not be decoded"}}
    body = envelope(job_id, run_id, status="failed", event="run.failed", output=output)
    assert deliver(world, body) == (200, {"result": "failed", "job_id": job_id})
    item = world.item(job_id)
    assert item["status"] == "failed" and item["error_code"] == "INPUT_UNREADABLE"
    assert item["error_message"] == "image could not be decoded" and item["run_status"] == "failed"
    assert world.copy_requests() == []


def test_failed_callback_without_a_reason_is_read_back_by_the_copy_worker(world: World) -> None:
    job_id, run_id = submitted(world)
    body = envelope(job_id, run_id, status="failed", event="run.failed", output=None)
    assert deliver(world, body)[1]["result"] == "copy_queued"
    item = world.item(job_id)
    assert item["status"] == "submitted" and item["run_status"] == "failed"
    assert world.copy_requests() == [{"job_id": job_id, "run_id": run_id}]


def test_success_without_outputs_is_read_back_by_the_copy_worker(world: World) -> None:
    job_id, run_id = submitted(world)
    body = envelope(job_id, run_id, output={"outputs": [], "seed": None})
    assert deliver(world, body)[1]["result"] == "copy_queued"
    assert world.item(job_id)["status"] == "submitted"


@pytest.mark.parametrize(("status", "event"), [("canceled", "run.cancelled"), ("cancelled", "run.cancelled")])
def test_cancelled_either_spelling_ends_canceled(world: World, status: str, event: str) -> None:
    job_id, run_id = submitted(world)
    output = {"error": {"code": "CANCELED", "message": "canceled by an administrator"}}
    assert deliver(world, envelope(job_id, run_id, status=status, event=event, output=output))[1][
        "result"
    ] == ("canceled")
    assert world.item(job_id)["status"] == "canceled"


@pytest.mark.parametrize("status", ["timed_out", "expired"])
def test_terminal_status_backdrop_does_not_know_ends_the_job_saying_so(world: World, status: str) -> None:
    job_id, run_id = submitted(world)
    output = {"error": {"code": status.upper(), "message": f"the run {status}"}}
    assert (
        deliver(world, envelope(job_id, run_id, status=status, event="run.failed", output=output))[0] == 200
    )
    item = world.item(job_id)
    assert item["status"] == "failed" and item["run_status"] == status
    assert item["error_code"] == status.upper()


def test_envelope_without_status_uses_the_event(world: World) -> None:
    job_id, run_id = submitted(world)
    body = json.loads(envelope(job_id, run_id))
    del body["status"]
    assert deliver(world, json.dumps(body).encode())[1]["result"] == "copy_queued"


def test_duplicate_callback_for_a_finished_job_changes_nothing(world: World) -> None:
    job_id, run_id = submitted(world)
    failed = envelope(job_id, run_id, status="failed", event="run.failed", output={"error": {"code": "X"}})
    deliver(world, failed)
    before = world.item(job_id)
    assert deliver(world, envelope(job_id, run_id)) == (200, {"result": "already_done", "job_id": job_id})
    assert world.item(job_id) == before and world.copy_requests() == []


def test_redelivered_success_refreshes_the_urls_and_queues_the_copy_again(world: World) -> None:
    job_id, run_id = submitted(world)
    deliver(world, envelope(job_id, run_id))
    fresh = {"outputs": [{"url": "https://cdn.runflow.io/o/result.webp?X-Amz-Signature=fresh"}]}
    assert deliver(world, envelope(job_id, run_id, output=fresh))[1]["result"] == "copy_queued"
    assert world.item(job_id)["output_urls"] == fresh["outputs"]
    assert len(world.copy_requests()) == 2


def test_a_run_runflow_does_not_know_never_writes(world: World) -> None:
    job_id, _run_id = submitted(world)
    before = world.item(job_id)
    assert deliver(world, envelope(job_id, "some-other-run"))[1]["result"] == "run_refused"
    assert world.item(job_id) == before and metric_total("AdoptionsRefused") == 1
    assert world.runflow.reads == ["some-other-run"]


def test_a_second_run_of_the_same_attempt_never_writes(world: World) -> None:
    job_id, run_id = submitted(world)
    first = world.runflow.runs[run_id]
    second = world.runflow.create_run(first.request, idempotency_key="another-key")  # billed twice
    world.runflow.finish(second.run_id, outputs=(OutputRef("https://cdn.runflow.io/o/2.png"),))
    before = world.item(job_id)
    assert deliver(world, envelope(job_id, second.run_id))[1]["result"] == "run_mismatch"
    assert world.item(job_id) == before and metric_total("RunsMismatched") == 1


def test_late_callback_of_an_earlier_attempt_is_not_this_attempts(world: World) -> None:
    job_id, run_id = submitted(world)
    deliver(
        world, envelope(job_id, run_id, status="failed", event="run.failed", output={"error": {"code": "X"}})
    )
    retried = world.store.begin_retry(world.job(job_id))
    assert retried.moved and retried.job and retried.job.attempt == 2
    assert deliver(world, envelope(job_id, run_id, attempt="1"))[1]["result"] == "run_mismatch"
    assert world.item(job_id)["status"] == "received"


def waiting_job(world: World, job_id: str, key: str) -> None:
    """A job claimed and still waiting for its run (``received``, no run id), as a 429 leaves it."""
    world.store.claim(
        Job(
            job_id=job_id,
            status=Status.RECEIVED,
            source_bucket=world.resources.uploads_bucket,
            source_key=key,
            color="255,255,255",
            created_at="2026-06-01T12:00:00.000Z",
            updated_at="2026-06-01T12:00:00.000Z",
        )
    )


def run_at_runflow(world: World, client_ref: str, output: str) -> str:
    """A finished run Runflow holds under ``client_ref``, with one output."""
    request = RunRequest(
        image_url="https://uploads.example/x.jpg",
        red=1,
        green=2,
        blue=3,
        callback_url="https://hooks.example.com/runflow/callback",
        metadata={"job_id": client_ref, "attempt": "1"},
        client_ref=client_ref,
    )
    run = world.runflow.create_run(request, idempotency_key=client_ref)
    world.runflow.finish(run.run_id, outputs=(OutputRef(output),))
    return run.run_id


def test_callback_overtaking_the_submit_record(world: World) -> None:
    # The run exists, but the submit has not recorded it yet: the job is still ``received``.
    waiting_job(world, "job-overtaken", "uploads/overtaken.jpg")
    run_id = run_at_runflow(world, "job-overtaken", "https://cdn.runflow.io/o/overtaken.png")
    # What is recorded is the run as Runflow has it, whatever the callback's body says.
    body = envelope("job-overtaken", run_id, output={"outputs": [{"url": "https://elsewhere.example/x.png"}]})
    assert deliver(world, body)[1]["result"] == "copy_queued"
    item = world.item("job-overtaken")
    assert item["status"] == "copying" and item["run_id"] == run_id
    assert item["output_urls"] == [{"url": "https://cdn.runflow.io/o/overtaken.png"}]
    assert world.runflow.reads == [run_id] and metric_total("AdoptionsRefused") == 0


def test_signed_callback_carrying_another_jobs_run_is_refused(world: World) -> None:
    # Seen: a job held in ``received`` (Runflow answered 429) got a correctly signed callback that
    # named it in metadata but carried another finished job's run and output.
    other_job, other_run = submitted(world, "uploads/shoes/blue.jpg")
    world.runflow.finish(other_run, outputs=(OutputRef("https://cdn.runflow.io/o/blue.png"),))
    deliver(
        world,
        envelope(other_job, other_run, output={"outputs": [{"url": "https://cdn.runflow.io/o/blue.png"}]}),
    )
    waiting_job(world, "job-waiting", "uploads/shoes/red.jpg")
    before = world.item("job-waiting")
    forged = envelope(
        "job-waiting", other_run, output={"outputs": [{"url": "https://cdn.runflow.io/o/blue.png"}]}
    )
    assert deliver(world, forged) == (200, {"result": "run_refused", "job_id": "job-waiting"})
    assert world.item("job-waiting") == before
    assert metric_total("AdoptionsRefused") == 1 and metric_total("CallbacksRejected") == 0
    assert [r["job_id"] for r in world.copy_requests()] == [other_job]  # the other job's own copy only


def test_callback_whose_run_cannot_be_read_now_is_retried_and_changes_nothing(world: World) -> None:
    waiting_job(world, "job-waiting", "uploads/shoes/red.jpg")
    run_id = run_at_runflow(world, "job-waiting", "https://cdn.runflow.io/o/red.png")
    before = world.item("job-waiting")
    world.runflow.get_faults = [
        RunflowUnavailable("HTTP 503 (stand-in)"),
        RunflowRejected(401, "UNAUTHORIZED", "Missing or invalid token"),
    ]
    for _ in range(2):
        status, body = deliver(world, envelope("job-waiting", run_id))
        assert status == 503 and body["result"] == "retry"
        assert world.item("job-waiting") == before
    assert deliver(world, envelope("job-waiting", run_id))[1]["result"] == "copy_queued"


def test_callback_of_a_run_runflow_shows_unfinished_is_retried(world: World) -> None:
    waiting_job(world, "job-waiting", "uploads/shoes/red.jpg")
    run_id = run_at_runflow(world, "job-waiting", "https://cdn.runflow.io/o/red.png")
    world.runflow.finish(run_id, status="running", finished=False)
    status, body = deliver(world, envelope("job-waiting", run_id))
    assert status == 503 and body["result"] == "retry"
    assert world.item("job-waiting")["status"] == "received"


def test_copy_queue_unavailable_answers_503_so_runflow_retries(world: World) -> None:
    job_id, run_id = submitted(world)
    missing = world.resources.copy_queue_url + "-missing"
    world.services.settings = replace(world.services.settings, copy_queue_url=missing)
    status, body = deliver(world, envelope(job_id, run_id))
    assert status == 503 and body["result"] == "retry"
    assert world.item(job_id)["status"] == "copying"  # recorded: the retried callback queues it
    world.services.settings = replace(world.services.settings, copy_queue_url=world.resources.copy_queue_url)


# --- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize("signature", [None, "", "0" * 64, "not-a-signature", "ZZ" * 32])
def test_bad_or_missing_signature_is_401_and_nothing_changes(world: World, signature: str | None) -> None:
    job_id, run_id = submitted(world)
    before = world.item(job_id)
    answer = handle_callback(envelope(job_id, run_id), signature, world.services)
    assert answer.status_code == 401
    assert world.item(job_id) == before and world.copy_requests() == []
    assert metric_total("CallbacksRejected") == 1


def test_malformed_signature_never_costs_a_secret_read(world: World) -> None:
    for signature in (None, "", "sha256=" + "a" * 64, "A" * 64, "a" * 63):
        handle_callback(b"{}", signature, world.services)
    assert world.secrets.reads == 0


def test_signature_under_unknown_secret_is_401_after_one_refresh(world: World) -> None:
    job_id, run_id = submitted(world)
    assert deliver(world, envelope(job_id, run_id), secret="whsec_attacker")[0] == 401
    assert world.secrets.refreshes == 1
    assert world.item(job_id)["status"] == "submitted"


def test_signature_of_a_different_body_is_refused(world: World) -> None:
    job_id, run_id = submitted(world)
    signed = envelope(job_id, run_id, status="failed", event="run.failed")
    tampered = envelope(job_id, run_id, status="canceled", event="run.cancelled")
    assert handle_callback(tampered, sign(signed, CURRENT_SECRET), world.services).status_code == 401
    assert world.item(job_id)["status"] == "submitted"


def test_rotated_secret_accepted_after_exactly_one_refresh(world: World) -> None:
    job_id, run_id = submitted(world)
    world.secrets.rotate("whsec_rotated", CURRENT_SECRET)  # the cache still holds the old pair
    assert deliver(world, envelope(job_id, run_id), secret="whsec_rotated")[0] == 200
    assert world.secrets.refreshes == 1 and world.item(job_id)["status"] == "copying"


def test_oversized_body_is_413_before_anything(world: World) -> None:
    body = envelope("job", "run", padding="x" * MAX_BODY_BYTES)
    assert deliver(world, body)[0] == 413
    assert world.secrets.reads == 0


@pytest.mark.parametrize("body", [b"not json", b"{", b"[1, 2, 3]", b'"a string"', b""])
def test_malformed_body_is_400(world: World, body: bytes) -> None:
    assert deliver(world, body)[0] == 400


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_signed_body_with_nan_or_infinity_is_400_and_changes_nothing(world: World, constant: str) -> None:
    job_id, run_id = submitted(world)
    before = world.item(job_id)
    body = envelope(job_id, run_id).replace(b'"duration_ms": 4200', f'"duration_ms": {constant}'.encode())
    assert constant.encode() in body
    status, answer = deliver(world, body)
    assert status == 400 and "strict JSON" in answer["error"]
    assert world.item(job_id) == before and world.copy_requests() == []


@pytest.mark.parametrize(
    "body",
    [b'{"a": NaN}', b'{"a": [Infinity]}', b'{"a": {"b": -Infinity}}', b'{"a": 1e400}', b"NaN"],
)
def test_load_envelope_refuses_what_strict_json_has_no_value_for(body: bytes) -> None:
    with pytest.raises(MalformedBody, match="not strict JSON"):
        load_envelope(body)


def test_load_envelope_keeps_ordinary_numbers() -> None:
    assert load_envelope(b'{"a": 1.5e3, "b": -0.0, "c": 10}') == {"a": 1500.0, "b": -0.0, "c": 10}


def test_missing_run_id_is_400(world: World) -> None:
    job_id, _ = submitted(world)
    body = json.dumps(
        {"event": "run.completed", "status": "succeeded", "metadata": {"job_id": job_id}}
    ).encode()
    assert deliver(world, body)[0] == 400
    assert world.item(job_id)["status"] == "submitted"


def test_unknown_job_is_200_so_runflow_stops_retrying(world: World) -> None:
    assert deliver(world, envelope("job-nobody", "run-nobody")) == (200, {"result": "unknown_job"})
    assert metric_total("CallbacksUnmatched") == 1


def test_job_found_by_run_id_without_metadata(world: World) -> None:
    job_id, run_id = submitted(world)
    body = envelope(None, run_id, status="failed", event="run.failed", output={"error": {"code": "X"}})
    assert deliver(world, body) == (200, {"result": "failed", "job_id": job_id})


def test_job_found_by_run_id_when_metadata_names_no_stored_job(world: World) -> None:
    job_id, run_id = submitted(world)
    body = envelope("job-gone", run_id, status="failed", event="run.failed", output={"error": {"code": "X"}})
    assert deliver(world, body)[1] == {"result": "failed", "job_id": job_id}
