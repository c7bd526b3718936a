"""The copy worker: outputs streamed into the results bucket, and the newest version of an object
always winning, whatever order runs finish and copies retry in. Real S3, jobs table and ledger
on a moto server; outputs served over loopback HTTP."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import pytest

from backdrop.callbacks import handle_callback
from backdrop.copying import LEASE_SECONDS, handle_copy_request
from backdrop.jobs import Status, iso_from_epoch
from backdrop.ledger import Published
from backdrop.outcomes import Outcome, RetryLater
from backdrop.outputs import Destination, Placement, copy_output
from backdrop.queues import CopyRequest
from backdrop.runs import OutputRef, RunflowUnavailable
from backdrop.signatures import sign
from backdrop.submission import submit_upload
from backdrop.uploads import ImageType, UploadRef
from tests.support.images import solid
from tests.unit.world import World, metric_total

KEY = "uploads/sku-123.jpg"
RESULT = "results/sku-123.jpg/result.png"


def png(colour: tuple[int, int, int]) -> bytes:
    return solid("PNG", (6, 4), colour)


def upload(world: World, key: str = KEY, **meta: str) -> UploadRef:
    answer = world.put_upload(key, solid(), **meta)
    return UploadRef(world.resources.uploads_bucket, key, answer["VersionId"], answer["ETag"], None)


def jpeg(colour: tuple[int, int, int]) -> bytes:
    return solid("JPEG", (6, 4), colour)


def finished(world: World, ref: UploadRef, outputs: list[bytes]) -> CopyRequest:
    """Submit the upload; its run succeeds with these outputs (each served as image/png, whatever
    it is); the callback is recorded."""
    result = submit_upload(ref, world.services)
    assert result.job_id and result.run_id, result
    urls = [
        world.outputs.serve(f"/{result.run_id}/{i}.png?X-Amz-Signature=s", body)
        for i, body in enumerate(outputs)
    ]
    body = json.dumps(
        {
            "event": "run.completed",
            "run_id": result.run_id,
            "status": "succeeded",
            "output": {"outputs": [{"url": u, "content_type": "image/png"} for u in urls]},
            "duration_ms": 900,
            "metadata": {"job_id": result.job_id, "attempt": "1"},
        }
    ).encode()
    world.runflow.finish(result.run_id, outputs=tuple(OutputRef(u, "image/png") for u in urls))
    answer = handle_callback(body, sign(body, "whsec_current"), world.services)
    assert answer.body["result"] == "copy_queued", answer
    world.copy_requests()  # drained: the test hands requests to the worker itself
    return CopyRequest(result.job_id, result.run_id)


def copy(world: World, request: CopyRequest) -> Any:
    return handle_copy_request(request, world.services, deadline=time.monotonic() + 30)


def result_body(world: World, key: str = RESULT) -> bytes:
    body: bytes = world.s3.get_object(Bucket=world.resources.results_bucket, Key=key)["Body"].read()
    return body


def test_outputs_are_copied_and_the_job_succeeds(world: World) -> None:
    ref = upload(world, **{"background-color": "#1E90FF"})
    request = finished(world, ref, [png((30, 144, 255))])
    result = copy(world, request)
    assert result.outcome is Outcome.SUCCEEDED
    item = world.item(request.job_id)
    assert item["status"] == "succeeded" and item["result_keys"] == [RESULT]
    assert item["result_bucket"] == world.resources.results_bucket and "error_code" not in item
    head = world.s3.head_object(Bucket=world.resources.results_bucket, Key=RESULT)
    assert head["Metadata"] == {
        "job-id": request.job_id,
        "run-id": request.run_id,
        "source-bucket": world.resources.uploads_bucket,
        "source-key": KEY,
        "source-version": ref.version_id,
        "background-color": "30,144,255",
    }
    assert result_body(world) == png((30, 144, 255))
    assert metric_total("JobsSucceeded") == 1 and metric_total("BytesCopied") == len(png((30, 144, 255)))


def test_every_output_gets_its_own_key(world: World) -> None:
    request = finished(world, upload(world), [png((1, 1, 1)), png((2, 2, 2)), png((3, 3, 3))])
    copy(world, request)
    assert world.item(request.job_id)["result_keys"] == [
        RESULT,
        "results/sku-123.jpg/result-2.png",
        "results/sku-123.jpg/result-3.png",
    ]
    assert result_body(world, "results/sku-123.jpg/result-3.png") == png((3, 3, 3))


# --- the layout: every source its own results --------------------------------------------------


def test_same_stem_with_different_extensions_keeps_both_results(world: World) -> None:
    jpg = finished(world, upload(world, "uploads/x/red.jpg"), [png((200, 0, 0))])
    png_source = finished(world, upload(world, "uploads/x/red.png"), [png((0, 0, 200))])
    assert copy(world, jpg).outcome is Outcome.SUCCEEDED
    assert copy(world, png_source).outcome is Outcome.SUCCEEDED
    assert world.item(jpg.job_id)["result_keys"] == ["results/x/red.jpg/result.png"]
    assert world.item(png_source.job_id)["result_keys"] == ["results/x/red.png/result.png"]
    assert world.results() == {
        "results/x/red.jpg/result.png": png((200, 0, 0)),
        "results/x/red.png/result.png": png((0, 0, 200)),
    }


def test_second_output_and_a_source_named_like_it_never_collide(world: World) -> None:
    pair = finished(world, upload(world, "uploads/x/pair.jpg"), [png((1, 1, 1)), png((2, 2, 2))])
    assert copy(world, pair).outcome is Outcome.SUCCEEDED
    other = finished(world, upload(world, "uploads/x/pair-2.jpg"), [png((7, 7, 7))])
    assert copy(world, other).outcome is Outcome.SUCCEEDED
    # A later version of pair.jpg with one output removes its own second output only.
    newer = finished(world, upload(world, "uploads/x/pair.jpg"), [png((3, 3, 3))])
    assert copy(world, newer).outcome is Outcome.SUCCEEDED
    assert world.results() == {
        "results/x/pair.jpg/result.png": png((3, 3, 3)),
        "results/x/pair-2.jpg/result.png": png((7, 7, 7)),
    }
    assert world.item(other.job_id)["status"] == "succeeded"
    assert world.item(other.job_id)["result_keys"] == ["results/x/pair-2.jpg/result.png"]


def test_key_and_type_follow_the_bytes_and_the_other_format_is_cleaned_up(world: World) -> None:
    first = finished(world, upload(world), [png((1, 1, 1))])
    assert copy(world, first).outcome is Outcome.SUCCEEDED
    second = finished(world, upload(world), [jpeg((9, 9, 9))])  # a JPEG, served as image/png
    assert copy(world, second).outcome is Outcome.SUCCEEDED
    assert world.item(second.job_id)["result_keys"] == ["results/sku-123.jpg/result.jpg"]
    head = world.s3.head_object(Bucket=world.resources.results_bucket, Key="results/sku-123.jpg/result.jpg")
    assert head["ContentType"] == "image/jpeg"
    assert list(world.results()) == ["results/sku-123.jpg/result.jpg"]


@pytest.mark.parametrize(
    "metadata",
    [{"source-bucket": "uploads", "source-key": "uploads/sku-123.jpg/result.jpg"}, {}],
    ids=["another-source", "no-metadata"],
)
def test_result_key_held_by_another_object_is_refused_not_overwritten(
    world: World, metadata: dict[str, str]
) -> None:
    request = finished(world, upload(world), [png((5, 5, 5))])
    world.s3.put_object(Bucket=world.resources.results_bucket, Key=RESULT, Body=b"theirs", Metadata=metadata)
    assert copy(world, request).outcome is Outcome.FAILED
    item = world.item(request.job_id)
    assert item["status"] == "failed" and item["error_code"] == "RESULT_KEY_TAKEN"
    assert RESULT in item["error_message"]
    assert world.results() == {RESULT: b"theirs"}


def _foreign(world: World, key: str, **metadata: str) -> None:
    world.s3.put_object(Bucket=world.resources.results_bucket, Key=key, Body=b"foreign", Metadata=metadata)


def test_cleanup_deletes_only_results_this_source_wrote(world: World) -> None:
    first = finished(world, upload(world), [png((1, 1, 1)), png((2, 2, 2)), png((3, 3, 3))])
    assert copy(world, first).outcome is Outcome.SUCCEEDED
    bucket, quoted = world.resources.uploads_bucket, KEY
    # Replaced behind Backdrop's back: one names another source, one a job no source of ours has.
    _foreign(
        world, "results/sku-123.jpg/result-2.png", **{"source-bucket": bucket, "source-key": "uploads/x"}
    )
    _foreign(
        world,
        "results/sku-123.jpg/result-3.png",
        **{"source-bucket": bucket, "source-key": quoted, "job-id": "not-a-job-of-this-source"},
    )
    second = finished(world, upload(world), [png((9, 9, 9))])
    assert copy(world, second).outcome is Outcome.SUCCEEDED
    assert world.results() == {
        RESULT: png((9, 9, 9)),
        "results/sku-123.jpg/result-2.png": b"foreign",
        "results/sku-123.jpg/result-3.png": b"foreign",
    }


def test_results_in_the_old_layout_are_left_in_place(world: World) -> None:
    ref = upload(world)
    request = finished(world, ref, [png((4, 4, 4))])
    job = world.job(request.job_id)
    # What the earlier layout wrote for this very source, as its result lease remembers it.
    old = "results/sku-123.png"
    _foreign(
        world,
        old,
        **{"source-bucket": ref.bucket, "source-key": KEY, "job-id": "older-job", "source-version": "v0"},
    )
    lease = world.services.ledger.acquire(ref.bucket, KEY, "older-job", LEASE_SECONDS)
    assert lease is not None
    assert world.services.ledger.release(lease, Published("older-job", "run-0", "v0", job.created_at, (old,)))
    assert copy(world, request).outcome is Outcome.SUCCEEDED
    assert world.results() == {old: b"foreign", RESULT: png((4, 4, 4))}


# --- the newest version wins ---------------------------------------------------------------------


def test_late_copy_of_an_older_version_never_overwrites_the_newer(world: World) -> None:
    first = finished(world, upload(world, **{"background-color": "#FFFFFF"}), [png((255, 255, 255))])
    second = finished(world, upload(world, **{"background-color": "#000000"}), [png((0, 0, 0))])
    assert copy(world, second).outcome is Outcome.SUCCEEDED
    late = copy(world, first)  # the first version's copy, retried long after
    assert late.outcome is Outcome.SUPERSEDED
    item = world.item(first.job_id)
    assert item["status"] == "superseded" and item["superseded_by"] == second.job_id
    assert item["error_code"] == "SUPERSEDED" and "open_shard" not in item
    assert result_body(world) == png((0, 0, 0))
    assert world.runflow.billed == 2  # superseding bills nothing more


def test_older_version_copied_first_is_then_replaced(world: World) -> None:
    first = finished(world, upload(world), [png((255, 255, 255))])
    second = finished(world, upload(world), [png((0, 0, 0))])
    # Copied in upload order: by the time the first copies, its version is no longer current.
    assert copy(world, first).outcome is Outcome.SUPERSEDED
    assert copy(world, second).outcome is Outcome.SUCCEEDED
    assert result_body(world) == png((0, 0, 0))


def test_result_written_by_the_older_version_is_replaced_by_the_newer(world: World) -> None:
    first = finished(world, upload(world), [png((255, 255, 255))])
    assert copy(world, first).outcome is Outcome.SUCCEEDED
    second = finished(world, upload(world), [png((0, 0, 0))])
    assert copy(world, second).outcome is Outcome.SUCCEEDED
    assert result_body(world) == png((0, 0, 0))
    head = world.s3.head_object(Bucket=world.resources.results_bucket, Key=RESULT)
    assert head["Metadata"]["job-id"] == second.job_id


def test_newer_version_with_fewer_outputs_leaves_no_stale_result(world: World) -> None:
    first = finished(world, upload(world), [png((1, 1, 1)), png((2, 2, 2))])
    copy(world, first)
    second = finished(world, upload(world), [png((9, 9, 9))])
    copy(world, second)
    assert world.results() == {RESULT: png((9, 9, 9))}


def test_object_deleted_before_the_copy_supersedes_it(world: World) -> None:
    request = finished(world, upload(world), [png((5, 5, 5))])
    world.s3.delete_object(Bucket=world.resources.uploads_bucket, Key=KEY)
    result = copy(world, request)
    assert result.outcome is Outcome.SUPERSEDED
    item = world.item(request.job_id)
    assert item["error_code"] == "SOURCE_DELETED" and "superseded_by" not in item
    assert world.results() == {}


def test_later_job_of_the_same_version_wins(world: World) -> None:
    ref = upload(world)
    first = finished(world, ref, [png((255, 255, 255))])
    original = world.job(first.job_id)
    # The same version again in another colour, created a minute later (an operator's backfill
    # with --color makes such a job), already in copying.
    world.clock.advance(60)
    url = world.outputs.serve("/recoloured.png", png((255, 0, 0)))
    recoloured = replace(
        original,
        job_id="recoloured-job",
        color="255,0,0",
        status=Status.RECEIVED,
        created_at=iso_from_epoch(world.clock()),
        run_id=None,
        output_urls=[],
    )
    world.store.claim(recoloured)
    world.store.try_transition(
        "recoloured-job", Status.COPYING, changes={"run_id": "run-recoloured", "output_urls": [{"url": url}]}
    )
    assert copy(world, CopyRequest("recoloured-job", "run-recoloured")).outcome is Outcome.SUCCEEDED
    assert copy(world, first).outcome is Outcome.SUPERSEDED  # the older job's late copy
    assert world.item(first.job_id)["superseded_by"] == "recoloured-job"
    assert result_body(world) == png((255, 0, 0))


def test_busy_lease_means_retry_later_and_nothing_written(world: World) -> None:
    request = finished(world, upload(world), [png((4, 4, 4))])
    assert world.services.ledger.acquire(world.resources.uploads_bucket, KEY, "another-copier", LEASE_SECONDS)
    with pytest.raises(RetryLater, match="in progress"):
        copy(world, request)
    assert world.results() == {} and world.item(request.job_id)["status"] == "copying"


def test_lease_of_a_copier_that_died_runs_out(world: World) -> None:
    request = finished(world, upload(world), [png((4, 4, 4))])
    assert world.services.ledger.acquire(world.resources.uploads_bucket, KEY, request.job_id, LEASE_SECONDS)
    with pytest.raises(RetryLater):
        copy(world, request)  # even the same job waits: its earlier copier may still be running
    world.clock.advance(LEASE_SECONDS + 1)
    assert copy(world, request).outcome is Outcome.SUCCEEDED


def test_result_changed_under_the_copier_is_never_overwritten(world: World) -> None:
    request = finished(world, upload(world), [png((7, 7, 7))])

    def writer_sneaks_in(url: str, *, place: Placement, **kwargs: Any) -> Any:
        # Someone writes the result between the copier's check and its write (a copier whose
        # lease ran out, another system): S3's precondition refuses the copier's write.
        def checked_then_overtaken(kind: ImageType) -> Destination:
            destination = place(kind)
            world.s3.put_object(Bucket=destination.bucket, Key=destination.key, Body=b"written meanwhile")
            return destination

        return copy_output(url, place=checked_then_overtaken, **kwargs)

    world.services.copy = writer_sneaks_in
    with pytest.raises(RetryLater, match="changed"):
        copy(world, request)
    assert result_body(world) == b"written meanwhile"
    assert world.item(request.job_id)["status"] == "copying"


# --- failures and read-backs ---------------------------------------------------------------------


def test_expired_output_urls_are_read_again_from_the_run(world: World) -> None:
    request = finished(world, upload(world), [png((8, 8, 8))])
    stale = world.item(request.job_id)["output_urls"][0]["url"]
    world.outputs.script[stale.split("?")[0].replace(world.outputs.origin, "")] = [403]
    fresh = world.outputs.serve(f"/{request.run_id}/fresh.png", png((8, 8, 8)))
    world.runflow.finish(request.run_id, outputs=(OutputRef(fresh, "image/png"),))
    assert copy(world, request).outcome is Outcome.SUCCEEDED
    assert world.item(request.job_id)["output_urls"] == [{"url": fresh, "content_type": "image/png"}]
    assert metric_total("OutputUrlsRefreshed") == 1 and result_body(world) == png((8, 8, 8))


def test_failing_output_url_leaves_the_job_copying_then_succeeds(world: World) -> None:
    request = finished(world, upload(world), [png((6, 6, 6))])
    path = world.item(request.job_id)["output_urls"][0]["url"].split("?")[0].replace(world.outputs.origin, "")
    world.outputs.script[path] = [500]
    with pytest.raises(RetryLater):
        copy(world, request)
    item = world.item(request.job_id)
    assert (
        item["status"] == "copying" and item["error_code"] == "COPY_FAILED" and item["retryable_errors"] == 1
    )
    assert copy(world, request).outcome is Outcome.SUCCEEDED
    assert "error_code" not in world.item(request.job_id)


def test_output_that_is_not_an_image_fails_the_job(world: World) -> None:
    ref = upload(world)
    result = submit_upload(ref, world.services)
    assert result.job_id and result.run_id
    url = world.outputs.serve("/page.html", b"<html>", "text/html")
    world.store.try_transition(
        result.job_id, Status.COPYING, changes={"run_id": result.run_id, "output_urls": [{"url": url}]}
    )
    outcome = copy(world, CopyRequest(result.job_id, result.run_id))
    assert outcome.outcome is Outcome.FAILED and world.item(result.job_id)["error_code"] == "OUTPUT_NOT_IMAGE"
    assert world.results() == {}


def test_failure_reason_is_read_back_when_the_callback_had_none(world: World) -> None:
    ref = upload(world)
    result = submit_upload(ref, world.services)
    assert result.job_id and result.run_id
    world.store.update_open(result.job_id, Status.SUBMITTED, {"run_status": "failed"})
    world.runflow.finish(
        result.run_id, status="failed", failure_code="INPUT_UNREADABLE", failure_message="bad bytes"
    )
    outcome = copy(world, CopyRequest(result.job_id, result.run_id))
    assert outcome.outcome is Outcome.FAILED
    item = world.item(result.job_id)
    assert item["error_code"] == "INPUT_UNREADABLE" and item["error_message"] == "bad bytes"
    assert world.runflow.reads == [result.run_id]


def test_success_without_outputs_is_read_back_once_then_copied(world: World) -> None:
    ref = upload(world)
    result = submit_upload(ref, world.services)
    assert result.job_id and result.run_id
    url = world.outputs.serve("/late.png", png((3, 2, 1)))
    world.runflow.finish(result.run_id, outputs=(OutputRef(url, "image/png"),))
    outcome = copy(world, CopyRequest(result.job_id, result.run_id))
    assert outcome.outcome is Outcome.SUCCEEDED and result_body(world) == png((3, 2, 1))


def test_success_without_outputs_even_when_read_back_fails_the_job(world: World) -> None:
    result = submit_upload(upload(world), world.services)
    assert result.job_id and result.run_id
    world.runflow.finish(result.run_id, outputs=())
    outcome = copy(world, CopyRequest(result.job_id, result.run_id))
    assert outcome.outcome is Outcome.FAILED and world.item(result.job_id)["error_code"] == "NO_OUTPUT"
    assert world.runflow.reads == [result.run_id]


def test_run_unknown_to_runflow_fails_the_job(world: World) -> None:
    result = submit_upload(upload(world), world.services)
    assert result.job_id and result.run_id
    world.runflow.runs.clear()
    assert copy(world, CopyRequest(result.job_id, result.run_id)).outcome is Outcome.FAILED
    assert world.item(result.job_id)["error_code"] == "RUN_NOT_FOUND"


def test_runflow_unavailable_for_a_read_back_means_retry_later(world: World) -> None:
    result = submit_upload(upload(world), world.services)
    assert result.job_id and result.run_id
    world.runflow.get_faults = [RunflowUnavailable("HTTP 503")]
    with pytest.raises(RetryLater):
        copy(world, CopyRequest(result.job_id, result.run_id))
    assert world.item(result.job_id)["status"] == "submitted"


def test_stale_mismatched_and_unknown_requests_change_nothing(world: World) -> None:
    request = finished(world, upload(world), [png((1, 2, 3))])
    assert copy(world, CopyRequest(request.job_id, "not-its-run")).outcome is Outcome.RUN_MISMATCH
    assert copy(world, CopyRequest("no-such-job", request.run_id)).outcome is Outcome.UNKNOWN_JOB
    assert copy(world, request).outcome is Outcome.SUCCEEDED
    before = world.item(request.job_id)
    assert copy(world, request).outcome is Outcome.ALREADY_DONE  # a duplicate copy request
    assert world.item(request.job_id) == before
