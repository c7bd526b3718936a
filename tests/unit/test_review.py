"""The quality gate in the copy worker and a person's decision on a held result: what is published,
held, approved or rejected, the review request sent on the copy queue, and what the reconciler
does with held jobs."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from backdrop import copying
from backdrop.copying import handle_copy_request, handle_review_request
from backdrop.jobs import Status
from backdrop.observability import metrics
from backdrop.outcomes import Outcome, Result, RetryLater
from backdrop.queues import CopyRequest, Decision, RenderRequest, ReviewRequest
from backdrop.reconciliation import EVENT_GRACE_SECONDS, reconcile
from backdrop.runs import OutputRef
from backdrop.submission import submit_job, submit_upload
from backdrop.uploads import UploadRef
from backdrop_local.aws import Resources
from backdrop_local.runflow.doubtful import blank
from tests.unit.imaging_fakes import WHITE, encode, photo, runflow
from tests.unit.world import OutputServer, World, build_world, metric_total


def test_a_review_request_reads_back_what_it_wrote() -> None:
    approve = ReviewRequest("j1", Decision.APPROVE, "ana")
    assert approve.body() == '{"review":"j1","decision":"approve","note":null,"reviewer":"ana"}'
    assert ReviewRequest.parse(approve.body()) == approve
    reject = ReviewRequest("j1", Decision.REJECT, "ana", "halo around the bottle")
    assert ReviewRequest.parse(reject.body()) == reject


def test_other_messages_on_the_copy_queue_are_not_review_requests() -> None:
    for other in (CopyRequest("j1", "r1").body(), RenderRequest("j1").body(), "not json", "[1]"):
        assert ReviewRequest.parse(other) is None
    assert RenderRequest.parse(ReviewRequest("j1", Decision.APPROVE, "ana").body()) is None


@pytest.mark.parametrize(
    "body",
    [
        '{"review":"","decision":"approve","reviewer":"ana"}',
        '{"review":"j1","decision":"maybe","reviewer":"ana"}',
        '{"review":"j1","decision":"reject","note":3,"reviewer":"ana"}',
        '{"review":"j1","decision":"approve","reviewer":" "}',
        '{"review":"j1","decision":"approve"}',
    ],
)
def test_a_malformed_review_request_is_refused(body: str) -> None:
    with pytest.raises(ValueError):
        ReviewRequest.parse(body)


# --- the gate in the copy worker, and a person's decision ---------------------------------------
# Real S3, jobs table and ledger on a moto server; outputs served over loopback HTTP.

THUMB = json.dumps({"thumb": "thumbnail"})


def gate_world(resources: Resources, output_server: OutputServer, gate: str, **env: str) -> World:
    output_server.files.clear()
    env = {"BACKDROP_RENDITIONS": THUMB, **env}
    return build_world(resources, output_server, BACKDROP_QUALITY_GATE=gate, **env)


def shot(seed: int = 0) -> tuple[bytes, bytes, bytes]:
    """A product photo (JPEG), a good result for it on white and a blank one (PNG)."""
    original, mask = photo(box=(90 + seed, 50, 230 + seed, 200))
    return (
        encode(original, "JPEG"),
        encode(runflow(original, mask, WHITE)),
        encode(blank(original.size, WHITE)),
    )


def finish(world: World, key: str, source: bytes, output: bytes) -> str:
    """Upload ``source``; its run succeeds with ``output``; the copy worker handles the copy."""
    job_id = ran(world, key, source, output)
    copy_all(world)
    return job_id


def ran(world: World, key: str, source: bytes, output: bytes) -> str:
    """Upload ``source``; its run succeeds with ``output``; its copy is queued."""
    answer = world.put_upload(key, source)
    ref = UploadRef(world.resources.uploads_bucket, key, answer["VersionId"], answer["ETag"], None)
    result = submit_upload(ref, world.services)
    assert result.job_id
    if result.outcome is Outcome.SUBMITTED:
        assert result.run_id
        url = world.outputs.serve(f"/{result.run_id}/0.png?X-Amz-Signature=s", output)
        world.runflow.finish(result.run_id, outputs=(OutputRef(url, "image/png"),))
        world.services.copy_queue().send(CopyRequest(result.job_id, result.run_id).body())
    return result.job_id


def copy_all(world: World) -> list[Result]:
    return [
        handle_copy_request(CopyRequest.parse(json.dumps(b)), world.services, deadline=time.monotonic() + 60)
        for b in world.copy_requests()
    ]


def decide(world: World, job_id: str, decision: Decision, note: str | None = None) -> Result:
    request = ReviewRequest.parse(ReviewRequest(job_id, decision, "ana", note).body())
    assert request is not None
    return handle_review_request(request, world.services, deadline=time.monotonic() + 60)


def under(world: World, prefix: str) -> dict[str, bytes]:
    return {key: body for key, body in world.results().items() if key.startswith(prefix)}


def events_of(world: World, job_id: str) -> list[dict[str, Any]]:
    return [e for e in world.events() if e["detail"]["job_id"] == job_id]


def test_hold_publishes_a_good_result_and_keeps_nothing_held(
    resources: Resources, output_server: OutputServer
) -> None:
    world = gate_world(resources, output_server, "hold")
    source, good, _ = shot()
    job = world.job(finish(world, "uploads/good.jpg", source, good))
    assert job.status is Status.SUCCEEDED and job.quality["verdict"] == "pass"
    assert job.result_keys == ["results/good.jpg/result.png", "results/good.jpg/rendition-thumb.webp"]
    assert job.renditions["thumb"]["key"] == "results/good.jpg/rendition-thumb.webp"
    assert under(world, "results/good.jpg/result.png")["results/good.jpg/result.png"] == good
    assert under(world, "review/") == {} and job.held_keys == []
    head = world.s3.head_object(Bucket=resources.results_bucket, Key="results/good.jpg/result.png")
    assert head["Metadata"]["job-id"] == job.job_id  # the result's own metadata came along
    (event,) = events_of(world, job.job_id)
    assert event["detail-type"] == "Job Succeeded" and event["detail"]["quality"] == job.quality


def test_hold_keeps_a_doubtful_result_under_the_review_prefix_until_approved(
    resources: Resources, output_server: OutputServer
) -> None:
    world = gate_world(resources, output_server, "hold")
    source, _, flat = shot(1)
    job_id = finish(world, "uploads/flat.jpg", source, flat)
    job = world.job(job_id)
    assert job.status is Status.NEEDS_REVIEW and job.quality["verdict"] == "doubt"
    assert any(reason.startswith("nothing found") for reason in job.quality["reasons"])
    held = [f"review/{job_id}/result.png", f"review/{job_id}/rendition-thumb.webp"]
    assert job.held_keys == held and job.result_keys == []
    assert job.renditions["thumb"]["key"] == held[1]
    assert under(world, "results/") == {}  # nothing published before the verdict
    held_bytes = under(world, "review/")
    assert set(held_bytes) == set(held) and held_bytes[held[0]] == flat
    assert metric_total("JobsHeldForReview") == 1
    (event,) = events_of(world, job_id)
    assert event["detail-type"] == "Job Needs Review"
    detail = event["detail"]
    assert (
        detail["held_keys"] == held and detail["quality"] == job.quality and detail["color"] == "255,255,255"
    )
    assert detail["source"]["key"] == "uploads/flat.jpg" and detail["renditions"]["thumb"]["key"] == held[1]
    assert world.item(job_id)["event_published_at"]
    # A copy request delivered again changes nothing: the job moves on only by a decision.
    world.services.copy_queue().send(CopyRequest(job_id, str(job.run_id)).body())
    assert {r.outcome for r in copy_all(world)} == {Outcome.ALREADY_DONE}

    approved = decide(world, job_id, Decision.APPROVE)
    assert approved.outcome is Outcome.SUCCEEDED, approved
    done = world.job(job_id)
    published = ["results/flat.jpg/result.png", "results/flat.jpg/rendition-thumb.webp"]
    assert done.status is Status.SUCCEEDED and done.result_keys == published and done.held_keys == []
    assert done.renditions["thumb"]["key"] == published[1]
    assert done.review["decision"] == "approve" and done.review["reviewer"] == "ana"
    files = world.results()
    # Exactly what was held, byte for byte; nothing left under the review prefix; no new run.
    assert [files[key] for key in published] == [held_bytes[key] for key in held]
    assert under(world, "review/") == {} and world.runflow.creates == 1
    (event,) = events_of(world, job_id)
    assert event["detail-type"] == "Job Succeeded" and event["detail"]["review"]["decision"] == "approve"
    assert event["detail"]["quality"]["verdict"] == "doubt"
    # The same decision delivered again is ignored.
    assert decide(world, job_id, Decision.APPROVE).outcome is Outcome.IGNORED
    assert decide(world, job_id, Decision.REJECT, "late").outcome is Outcome.IGNORED
    assert world.job(job_id).status is Status.SUCCEEDED and events_of(world, job_id) == []


def test_reject_ends_the_job_with_the_note_and_deletes_what_was_held(
    resources: Resources, output_server: OutputServer
) -> None:
    world = gate_world(resources, output_server, "hold")
    source, _, flat = shot(2)
    job_id = finish(world, "uploads/bad.jpg", source, flat)
    events_of(world, job_id)
    result = decide(world, job_id, Decision.REJECT, "the bottle is gone")
    assert result.outcome is Outcome.REJECTED
    job = world.job(job_id)
    assert job.status is Status.REJECTED and job.error_code == "REJECTED_BY_REVIEW"
    assert job.error_message == "the bottle is gone" and job.review["decision"] == "reject"
    assert job.held_keys == [] and job.result_keys == [] and world.results() == {}
    (event,) = events_of(world, job_id)
    assert event["detail-type"] == "Job Rejected"
    assert event["detail"]["error"] == {"code": "REJECTED_BY_REVIEW", "message": "the bottle is gone"}
    assert event["detail"]["review"]["note"] == "the bottle is gone"
    assert decide(world, job_id, Decision.REJECT, "again").outcome is Outcome.IGNORED
    assert world.job(job_id).error_message == "the bottle is gone"


def test_approve_waits_for_the_result_lease(resources: Resources, output_server: OutputServer) -> None:
    world = gate_world(resources, output_server, "hold")
    source, _, flat = shot(3)
    job_id = finish(world, "uploads/busy.jpg", source, flat)
    lease = world.services.ledger.acquire(resources.uploads_bucket, "uploads/busy.jpg", "another", 60)
    assert lease is not None
    with pytest.raises(RetryLater):
        decide(world, job_id, Decision.APPROVE)
    assert world.job(job_id).status is Status.NEEDS_REVIEW and under(world, "results/") == {}
    world.services.ledger.release(lease)
    assert decide(world, job_id, Decision.APPROVE).outcome is Outcome.SUCCEEDED


def test_approving_a_superseded_job_publishes_nothing_and_deletes_what_was_held(
    resources: Resources, output_server: OutputServer
) -> None:
    world = gate_world(resources, output_server, "hold")
    source, _, flat = shot(4)
    old = finish(world, "uploads/shoe.jpg", source, flat)
    newer_source, good, _ = shot(5)
    new = finish(world, "uploads/shoe.jpg", newer_source, good)  # a newer version, published
    assert world.job(new).status is Status.SUCCEEDED
    result = decide(world, old, Decision.APPROVE)
    assert result.outcome is Outcome.SUPERSEDED
    job = world.job(old)
    assert job.status is Status.SUPERSEDED and job.superseded_by == new and job.held_keys == []
    assert under(world, "review/") == {}
    assert world.results()["results/shoe.jpg/result.png"] == good  # the newer version's result stays


def test_approving_a_job_whose_upload_was_deleted_ends_it_superseded(
    resources: Resources, output_server: OutputServer
) -> None:
    world = gate_world(resources, output_server, "hold")
    source, _, flat = shot(6)
    job_id = finish(world, "uploads/gone.jpg", source, flat)
    world.s3.delete_object(Bucket=resources.uploads_bucket, Key="uploads/gone.jpg")
    assert decide(world, job_id, Decision.APPROVE).outcome is Outcome.SUPERSEDED
    assert world.job(job_id).error_code == "SOURCE_DELETED" and world.results() == {}


def test_flag_publishes_a_doubtful_result_and_marks_it(
    resources: Resources, output_server: OutputServer
) -> None:
    world = gate_world(resources, output_server, "flag")
    source, _, flat = shot(7)
    job = world.job(finish(world, "uploads/flagged.jpg", source, flat))
    assert job.status is Status.SUCCEEDED and job.result_keys[0] == "results/flagged.jpg/result.png"
    assert job.quality["verdict"] == "doubt" and world.results()["results/flagged.jpg/result.png"] == flat
    (event,) = events_of(world, job.job_id)
    assert event["detail-type"] == "Job Succeeded" and event["detail"]["quality"]["verdict"] == "doubt"
    assert metric_total("DoubtfulPublished") == 1 and under(world, "review/") == {}


def whole_reads(world: World) -> list[str]:
    """Every whole-object GetObject (not a ranged sniff of the first bytes) from now on, by bucket."""
    seen: list[str] = []

    def note(params: dict[str, Any], **_: Any) -> None:
        if "Range" not in params:
            seen.append(params["Bucket"])

    world.s3.meta.events.register("provide-client-params.s3.GetObject", note)
    return seen


@pytest.mark.parametrize(
    ("gate", "renditions", "reads"),
    [("off", "{}", 0), ("flag", "{}", 2), ("flag", THUMB, 2), ("off", THUMB, 2), ("hold", THUMB, 2)],
)
def test_the_gate_and_the_renditions_share_one_read_of_the_result_and_the_original(
    resources: Resources, output_server: OutputServer, gate: str, renditions: str, reads: int
) -> None:
    world = gate_world(resources, output_server, gate, BACKDROP_RENDITIONS=renditions)
    source, good, _ = shot(8)
    job_id = ran(world, "uploads/once.jpg", source, good)
    seen = whole_reads(world)
    copy_all(world)
    job = world.job(job_id)
    assert job.status is Status.SUCCEEDED and len(seen) == reads, seen
    if reads:  # the result once, and its original once
        assert sorted(seen) == sorted([resources.results_bucket, resources.uploads_bucket])
    assert ("quality" in world.item(job.job_id)) == (gate != "off")


def test_the_reconciler_leaves_held_jobs_and_their_duplicates_alone_and_measures_the_backlog(
    resources: Resources, output_server: OutputServer
) -> None:
    world = gate_world(resources, output_server, "hold", BACKDROP_REUSE_RESULTS="true")
    source, _, flat = shot(9)
    held = finish(world, "uploads/one.jpg", source, flat)
    assert world.job(held).status is Status.NEEDS_REVIEW
    # The same bytes under another key wait for the decision instead of paying for a run.
    duplicate = finish(world, "uploads/two.jpg", source, flat)
    assert world.job(duplicate).error_code == "CONTENT_IN_FLIGHT" and world.runflow.creates == 1
    world.clock.advance(3 * 3600)  # far past the run deadline
    metrics.clear_metrics()
    report = reconcile(world.services, deadline=time.monotonic() + 30).as_dict()
    assert report["waiting_for_review"] == 1
    assert world.job(held).status is Status.NEEDS_REVIEW
    assert world.job(duplicate).status is Status.RECEIVED and world.runflow.creates == 1
    assert metric_total("ReviewBacklog") == 1 and metric_total("OldestReviewAgeMinutes") == pytest.approx(
        180, abs=1
    )
    # Approved: the duplicate is woken and reuses the approved pixels, published with no review of its own.
    assert decide(world, held, Decision.APPROVE).outcome is Outcome.SUCCEEDED
    assert submit_job(duplicate, world.services).outcome is Outcome.COPY_QUEUED
    copy_all(world)
    reused = world.job(duplicate)
    assert reused.status is Status.SUCCEEDED and reused.reused_from == held and world.runflow.creates == 1
    assert reused.quality == world.job(held).quality and reused.review == {}
    assert world.results()["results/two.jpg/result.png"] == flat and under(world, "review/") == {}
    metrics.clear_metrics()
    reconcile(world.services, deadline=time.monotonic() + 30)
    assert metric_total("ReviewBacklog") == 0


def test_a_needs_review_event_eventbridge_refused_is_sent_by_the_reconciler(
    resources: Resources, output_server: OutputServer
) -> None:
    world = gate_world(resources, output_server, "hold")
    working = world.services.settings
    world.services.settings = type(working)(**{**working.__dict__, "event_bus": "no-such-bus"})
    source, _, flat = shot(10)
    job_id = finish(world, "uploads/unheard.jpg", source, flat)
    assert world.job(job_id).status is Status.NEEDS_REVIEW and events_of(world, job_id) == []
    assert world.job(job_id).event_published_at is None and metric_total("EventsDeferred") == 1
    world.services.settings = working  # EventBridge is back
    world.clock.advance(EVENT_GRACE_SECONDS + 1)
    assert reconcile(world.services, deadline=time.monotonic() + 30).as_dict()["review_events_sent"] == 1
    (event,) = events_of(world, job_id)
    assert event["detail-type"] == "Job Needs Review" and world.job(job_id).event_published_at
    # Sent once: the next pass leaves it.
    assert "review_events_sent" not in reconcile(world.services, deadline=time.monotonic() + 30).as_dict()


def test_an_approve_that_stopped_after_publishing_is_finished_by_its_redelivery(
    resources: Resources, output_server: OutputServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = gate_world(resources, output_server, "hold")
    source, _, flat = shot(11)
    job_id = finish(world, "uploads/crash.jpg", source, flat)
    held_bytes = under(world, "review/")

    def crash(*args: Any, **kwargs: Any) -> Result:
        raise RuntimeError("the function died here")

    with monkeypatch.context() as patched:
        patched.setattr(copying, "_succeed", crash)
        with pytest.raises(RuntimeError):
            decide(world, job_id, Decision.APPROVE)
    # Published, the held copies gone, but the job never moved: the request comes back.
    assert world.job(job_id).status is Status.NEEDS_REVIEW and under(world, "review/") == {}
    assert decide(world, job_id, Decision.APPROVE).outcome is Outcome.SUCCEEDED
    job = world.job(job_id)
    assert job.result_keys == ["results/crash.jpg/result.png", "results/crash.jpg/rendition-thumb.webp"]
    assert job.renditions["thumb"]["key"] == "results/crash.jpg/rendition-thumb.webp"
    assert world.results()["results/crash.jpg/result.png"] == held_bytes[f"review/{job_id}/result.png"]
