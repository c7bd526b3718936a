"""Renditions in the pipeline: the copy worker makes every configured rendition beside the result
before the job succeeds, a reused result brings its renditions along when they were made the same
way, and a render request makes a succeeded job's renditions again with no run. Real S3, jobs table
and ledger on a moto server; outputs served over loopback HTTP."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backdrop.callbacks import handle_callback
from backdrop.copying import handle_copy_request, handle_render_request
from backdrop.jobs import Status
from backdrop.outcomes import Outcome, Result
from backdrop.queues import CopyRequest, RenderRequest
from backdrop.runs import OutputRef
from backdrop.signatures import sign
from backdrop.submission import submit_upload
from backdrop.uploads import UploadRef
from backdrop_local.aws import Resources
from tests.unit.imaging_fakes import WHITE, encode, photo, runflow
from tests.unit.world import OutputServer, World, build_world

RENDITIONS = json.dumps({"amazon": "amazon-main", "thumb": "thumbnail", "story": {"aspect": "9:16"}})
GREY = (120, 120, 120)


def make_world(resources: Resources, output_server: OutputServer, renditions: str, **env: str) -> World:
    output_server.files.clear()
    return build_world(resources, output_server, BACKDROP_RENDITIONS=renditions, **env)


@pytest.fixture
def world(resources: Resources, output_server: OutputServer) -> World:
    return make_world(resources, output_server, RENDITIONS)


def shot(seed: int = 0) -> tuple[bytes, bytes]:
    """A product photo (JPEG) and the run's result for it on white (PNG); ``seed`` shifts the
    product so that each photo's bytes are its own."""
    original, mask = photo(box=(90 + seed, 50, 230 + seed, 200))
    return encode(original, "JPEG"), encode(runflow(original, mask, WHITE))


def succeed(world: World, key: str, source: bytes, output: bytes) -> str:
    """Upload ``source``; its run succeeds with ``output``; the copy worker finishes the job."""
    answer = world.put_upload(key, source)
    ref = UploadRef(world.resources.uploads_bucket, key, answer["VersionId"], answer["ETag"], None)
    result = submit_upload(ref, world.services)
    assert result.job_id
    if result.outcome is Outcome.SUBMITTED:
        assert result.run_id
        _run_succeeds(world, result.job_id, result.run_id, output)
    copy_all(world)
    return result.job_id


def _run_succeeds(world: World, job_id: str, run_id: str, output: bytes) -> None:
    url = world.outputs.serve(f"/{run_id}/0.png?X-Amz-Signature=s", output)
    world.runflow.finish(run_id, outputs=(OutputRef(url, "image/png"),))
    body = json.dumps(
        {
            "event": "run.completed",
            "run_id": run_id,
            "status": "succeeded",
            "output": {"outputs": [{"url": url, "content_type": "image/png"}]},
            "metadata": {"job_id": job_id, "attempt": "1"},
        }
    ).encode()
    assert handle_callback(body, sign(body, "whsec_current"), world.services).body["result"] == "copy_queued"


def copy_all(world: World) -> list[Result]:
    return [
        handle_copy_request(CopyRequest.parse(json.dumps(b)), world.services, deadline=time.monotonic() + 60)
        for b in world.copy_requests()
    ]


def stored(world: World, key: str) -> Image.Image:
    body = world.s3.get_object(Bucket=world.resources.results_bucket, Key=key)["Body"].read()
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def test_every_configured_rendition_is_made_beside_the_result_before_the_job_succeeds(world: World) -> None:
    source, output = shot()
    job_id = succeed(world, "uploads/shoes/red.jpg", source, output)
    job = world.job(job_id)
    assert job.status is Status.SUCCEEDED
    folder = "results/shoes/red.jpg/"
    assert job.result_keys == [
        folder + "result.png",
        folder + "rendition-amazon.jpg",
        folder + "rendition-thumb.webp",
        folder + "rendition-story.jpg",
    ]
    amazon = job.renditions["amazon"]
    assert amazon["key"] == folder + "rendition-amazon.jpg"
    assert (amazon["width"], amazon["height"], amazon["format"]) == (2000, 2000, "JPEG")
    assert amazon["verdict"] in ("pass", "warn") and isinstance(amazon["reasons"], list)
    image = stored(world, amazon["key"])
    assert (image.size, image.format, image.mode) == ((2000, 2000), "JPEG", "RGB")
    pixels = np.asarray(image)
    # The border ring and the corners are exactly white: the profile's exact background.
    assert (pixels[:10] == 255).all() and (pixels[-10:] == 255).all() and (pixels[:, :10] == 255).all()
    assert amazon["bytes"] == len(
        world.s3.get_object(Bucket=world.resources.results_bucket, Key=amazon["key"])["Body"].read()
    )
    thumb = stored(world, folder + "rendition-thumb.webp")
    assert (thumb.size, thumb.format) == ((400, 400), "WEBP")
    assert stored(world, folder + "rendition-story.jpg").size == (180, 320)
    head = world.s3.head_object(Bucket=world.resources.results_bucket, Key=amazon["key"])
    assert head["Metadata"]["job-id"] == job_id and head["Metadata"]["rendition"] == "amazon"
    assert head["ContentType"] == "image/jpeg"
    # The job's record keeps the measured values; the event carries the entries.
    item = world.item(job_id)
    assert item["renditions"]["amazon"]["checks"]["width"] == 2000
    (event,) = [e["detail"] for e in world.events() if e["detail"]["job_id"] == job_id]
    assert set(event["renditions"]) == {"amazon", "thumb", "story"}
    assert event["renditions"]["amazon"] == {
        k: amazon[k] for k in ("key", "width", "height", "format", "bytes", "verdict", "reasons")
    }


def test_a_rendition_that_cannot_be_made_fails_alone_and_the_job_succeeds(world: World) -> None:
    source, _ = shot(3)
    blank = encode(Image.new("RGB", (320, 240), (255, 255, 255)))  # the product gone: nothing to pad
    job_id = succeed(world, "uploads/blank.jpg", source, blank)
    job = world.job(job_id)
    assert job.status is Status.SUCCEEDED
    amazon = job.renditions["amazon"]
    assert amazon["verdict"] == "fail" and amazon["key"] is None
    assert "no product found" in amazon["reasons"][0]
    assert "results/blank.jpg/rendition-amazon.jpg" not in world.results()
    assert job.renditions["thumb"]["key"] == "results/blank.jpg/rendition-thumb.webp"  # contain needs none


def test_a_result_that_cannot_be_decoded_fails_every_rendition_and_the_job_succeeds(world: World) -> None:
    source, output = shot(4)
    truncated = output[: len(output) // 2]  # a PNG's header, then nothing: stored, but not decodable
    job = world.job(succeed(world, "uploads/cut.jpg", source, truncated))
    assert job.status is Status.SUCCEEDED and job.result_keys == ["results/cut.jpg/result.png"]
    assert set(job.renditions) == {"amazon", "thumb", "story"}
    assert {entry["verdict"] for entry in job.renditions.values()} == {"fail"}
    assert all(entry["key"] is None for entry in job.renditions.values())
    assert "cannot be compared with its original" in job.renditions["thumb"]["reasons"][0]


def test_no_renditions_configured_is_todays_behaviour(
    resources: Resources, output_server: OutputServer
) -> None:
    world = make_world(resources, output_server, "{}")
    source, output = shot(5)
    job_id = succeed(world, "uploads/plain.jpg", source, output)
    assert world.job(job_id).result_keys == ["results/plain.jpg/result.png"]
    assert "renditions" not in world.item(job_id)
    (event,) = [e["detail"] for e in world.events() if e["detail"]["job_id"] == job_id]
    assert event["renditions"] is None


def test_render_request_makes_renditions_again_with_no_run(
    world: World, resources: Resources, output_server: OutputServer
) -> None:
    source, output = shot(7)
    job_id = succeed(world, "uploads/again.jpg", source, output)
    before = world.job(job_id)
    first = world
    # The profiles change: amazon becomes a PNG on grey.
    changed = json.dumps(
        {
            "amazon": {"profile": "amazon-main", "format": "png", "background": "120,120,120"},
            "thumb": "thumbnail",
        }
    )
    world = build_world(resources, output_server, BACKDROP_RENDITIONS=changed)
    request = RenderRequest.parse(RenderRequest(job_id, ("amazon",)).body())
    assert request is not None
    result = handle_render_request(request, world.services, deadline=time.monotonic() + 60)
    assert result.outcome is Outcome.RENDERED, result
    after = world.job(job_id)
    # No run: neither the first world's Runflow nor the new one's was asked for one.
    assert first.runflow.creates == 1 and world.runflow.creates == 0 and after.run_id == before.run_id
    assert after.renditions["amazon"]["key"] == "results/again.jpg/rendition-amazon.png"
    assert after.renditions["amazon"]["format"] == "PNG"
    assert after.renditions["thumb"] == before.renditions["thumb"]  # not named: left alone
    files = world.results()
    assert "results/again.jpg/rendition-amazon.jpg" not in files  # the earlier format's file is gone
    grey = np.asarray(stored(world, "results/again.jpg/rendition-amazon.png"))
    assert (grey[:10] == GREY).all()
    assert "results/again.jpg/rendition-amazon.png" in after.result_keys
    assert "results/again.jpg/rendition-amazon.jpg" not in after.result_keys
    # null: every configured rendition.
    again = handle_render_request(RenderRequest(job_id, None), world.services, deadline=time.monotonic() + 60)
    assert again.outcome is Outcome.RENDERED and "amazon=" in again.detail and "thumb=" in again.detail


def test_render_request_for_a_job_that_has_not_succeeded_does_nothing(world: World) -> None:
    source, _ = shot(9)
    answer = world.put_upload("uploads/open.jpg", source)
    ref = UploadRef(
        world.resources.uploads_bucket, "uploads/open.jpg", answer["VersionId"], answer["ETag"], None
    )
    submitted = submit_upload(ref, world.services)
    assert submitted.job_id
    result = handle_render_request(
        RenderRequest(submitted.job_id), world.services, deadline=time.monotonic() + 60
    )
    assert result.outcome is Outcome.IGNORED
    assert world.job(submitted.job_id).renditions == {}
    unknown = handle_render_request(RenderRequest("nope"), world.services, deadline=time.monotonic() + 60)
    assert unknown.outcome is Outcome.UNKNOWN_JOB


def test_render_request_format() -> None:
    assert (
        RenderRequest("j1", ("amazon", "thumb")).body() == '{"render":"j1","renditions":["amazon","thumb"]}'
    )
    assert RenderRequest.parse('{"render":"j1","renditions":null}') == RenderRequest("j1", None)
    assert RenderRequest.parse('{"job_id":"j1","run_id":"r1"}') is None  # a copy request
    with pytest.raises(ValueError, match="names a job"):
        RenderRequest.parse('{"render":""}')
    with pytest.raises(ValueError, match="list of rendition names"):
        RenderRequest.parse('{"render":"j1","renditions":"amazon"}')


def _entries(renditions: dict[str, Any]) -> dict[str, Any]:
    return {name: {k: v for k, v in entry.items() if k != "key"} for name, entry in renditions.items()}


def test_a_reused_result_brings_its_renditions_when_made_the_same_way(
    resources: Resources, output_server: OutputServer
) -> None:
    world = make_world(resources, output_server, RENDITIONS, BACKDROP_REUSE_RESULTS="true")
    source, output = shot(11)
    earlier = world.job(succeed(world, "uploads/a.jpg", source, output))
    job = world.job(succeed(world, "uploads/b.jpg", source, output))
    assert job.reused_from == earlier.job_id and world.runflow.creates == 1
    assert _entries(job.renditions) == _entries(earlier.renditions)
    assert job.renditions["amazon"]["key"] == "results/b.jpg/rendition-amazon.jpg"
    assert stored(world, "results/b.jpg/rendition-amazon.jpg").size == (2000, 2000)
    # Another Renditions value: the reused result's renditions are made for it instead.
    other = make_world(
        resources, output_server, json.dumps({"amazon": "google-shopping"}), BACKDROP_REUSE_RESULTS="true"
    )
    third = other.job(succeed(other, "uploads/c.jpg", source, output))
    assert third.reused_from in (earlier.job_id, job.job_id) and other.runflow.creates == 0
    assert third.result_keys == ["results/c.jpg/result.png", "results/c.jpg/rendition-amazon.jpg"]
    assert (third.renditions["amazon"]["width"], third.renditions["amazon"]["height"]) == (1500, 1500)
    assert stored(other, "results/c.jpg/rendition-amazon.jpg").size == (1500, 1500)
