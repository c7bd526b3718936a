"""Renditions on the local stack, over real HTTP: photos go in through the S3 API, the local Runflow
makes the results with its model, and the copy function (as `sam build` built it) makes every
built-in profile's rendition beside each result. The objects are read back from S3 and decoded;
the job's ``renditions`` and the completion event are checked; a render request on the copy queue
makes them again with no run; a bad ``Renditions`` value stops the stack at start, naming it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from backdrop.profiles import PROFILES
from backdrop.queues import RenderRequest
from backdrop_local.aws import scan_items
from backdrop_local.runflow import FaultSettings
from backdrop_local.stack import LocalStack, StackOptions
from tests.support.images import encoded

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ("astronaut.jpg", "bottle.jpg", "chelsea.png", "coffee.webp", "rocket.jpg", "sneaker.jpg")
# Every built-in profile, each under its own name.
ALL_PROFILES = json.dumps({name: name for name in PROFILES})
EXACT_WHITE = ("amazon-main", "google-shopping", "zalando")
EVENT_FIELDS = {"key", "width", "height", "format", "bytes", "verdict", "reasons"}


@pytest.fixture(scope="module")
def stack(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    options = StackOptions(
        stack_name="renditions-stack",
        state_dir=tmp_path_factory.mktemp("renditions"),
        reconcile_every_seconds=3.0,
        reconcile_min_age_seconds=10,
        runflow_callback_delays=(0.2, 0.4),
        parameter_overrides={"Renditions": ALL_PROFILES, "ReuseResults": "false"},
    )
    with LocalStack(options) as running:
        assert running.runflow is not None
        # The model's own results (u2netp), not the instant flat ones: renditions need a product.
        running.runflow.set_faults(FaultSettings(processing="real"))
        yield running


def put(stack: LocalStack, key: str, body: bytes) -> str:
    assert stack.resources is not None
    answer = stack.s3().put_object(Bucket=stack.resources.uploads_bucket, Key=key, Body=body)
    return str(answer["VersionId"])


def jobs(stack: LocalStack) -> dict[str, dict[str, Any]]:
    assert stack.resources is not None
    found = scan_items(stack.dynamodb(), stack.resources.jobs_table)
    return {str(j["source_version_id"]): j for j in found}


def finished(stack: LocalStack, versions: list[str], timeout: float = 240.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = jobs(stack)
        if all(v in found and found[v]["status"] in ("succeeded", "failed") for v in versions):
            return [found[v] for v in versions]
        assert time.monotonic() < deadline, {v: found.get(v, {}).get("status") for v in versions}
        time.sleep(0.5)


def stored(stack: LocalStack, key: str) -> tuple[Image.Image, int]:
    assert stack.resources is not None
    body = stack.s3().get_object(Bucket=stack.resources.results_bucket, Key=key)["Body"].read()
    image = Image.open(io.BytesIO(body))
    image.load()
    return image, len(body)


def drain_events(stack: LocalStack) -> list[dict[str, Any]]:
    sqs = stack.sqs()
    url = stack.info["events_queue_url"]
    found: list[dict[str, Any]] = []
    while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
        "Messages", []
    ):
        for message in got:
            found.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return found


def runs_created(stack: LocalStack) -> int:
    assert stack.runflow is not None
    return int(stack.runflow.stats()["runs_created"])


def product_shot(
    size: tuple[int, int], box: tuple[int, int, int, int], background: tuple[int, int, int]
) -> bytes:
    """A product (a textured ellipse) on a flat studio background."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    draw.ellipse(box, fill=(160, 40, 30))
    left, top, right, bottom = box
    for x in range(left, right, 6):
        draw.line([(x, top), (x, bottom)], fill=(120, 20, 20), width=2)
    draw.ellipse(box, outline=(90, 10, 10), width=3)
    return encoded(image, "JPEG")


def check_exact_white(stack: LocalStack, entry: dict[str, Any]) -> None:
    """Read back and decoded: the profile's canvas and format, and the border exactly white."""
    image, size = stored(stack, entry["key"])
    assert (image.width, image.height, image.format) == (entry["width"], entry["height"], entry["format"])
    assert size == entry["bytes"] and image.mode == "RGB"
    pixels = np.asarray(image)
    ring = max(2, round(0.005 * min(image.size)))
    strips = (pixels[:ring], pixels[-ring:], pixels[:, :ring], pixels[:, -ring:])
    border = np.concatenate([strip.reshape(-1, 3) for strip in strips])
    assert (border == 255).all()


def test_samples_get_every_built_in_profile_with_verdicts_and_events(stack: LocalStack) -> None:
    drain_events(stack)
    versions = [
        put(stack, f"uploads/samples/{name}", (ROOT / "samples" / name).read_bytes()) for name in SAMPLES
    ]
    done = finished(stack, versions)
    events: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while len(events) < len(done) and time.monotonic() < deadline:
        events.update({e["detail"]["job_id"]: e["detail"] for e in drain_events(stack)})
    for name, job in zip(SAMPLES, done, strict=True):
        assert job["status"] == "succeeded", job
        folder = f"results/samples/{name}/"
        renditions = job["renditions"]
        assert set(renditions) == set(PROFILES)
        for profile, entry in renditions.items():
            spec = PROFILES[profile]
            assert entry["verdict"] in ("pass", "warn"), (name, profile, entry["reasons"])
            extension = {"JPEG": "jpg", "WEBP": "webp"}[spec.format]
            assert entry["key"] == f"{folder}rendition-{profile}.{extension}"
            assert (entry["width"], entry["height"]) == (spec.width, spec.height)
            assert entry["key"] in job["result_keys"]
        for profile in EXACT_WHITE:
            check_exact_white(stack, renditions[profile])
            assert renditions[profile]["checks"]["background_exact_share"] >= 0.99
        thumb, _ = stored(stack, renditions["thumbnail"]["key"])
        assert (thumb.size, thumb.format) == ((400, 400), "WEBP")
        event = events[job["job_id"]]["renditions"]
        assert set(event) == set(PROFILES)
        assert all(set(e) == EVENT_FIELDS for e in event.values())
        assert event["amazon-main"]["verdict"] == renditions["amazon-main"]["verdict"]
        assert event["amazon-main"]["bytes"] == renditions["amazon-main"]["bytes"]


def test_product_touching_the_frame_tiny_and_already_on_white(stack: LocalStack) -> None:
    edge = product_shot((480, 360), (300, 60, 520, 300), (205, 200, 190))  # runs off the right edge
    tiny = product_shot((640, 480), (300, 220, 340, 260), (205, 200, 190))  # 40 px across
    white = product_shot((480, 360), (140, 60, 340, 300), (255, 255, 255))
    versions = [
        put(stack, "uploads/cases/edge.jpg", edge),
        put(stack, "uploads/cases/tiny.jpg", tiny),
        put(stack, "uploads/cases/white.jpg", white),
    ]
    edge_job, tiny_job, white_job = finished(stack, versions)
    assert edge_job["status"] == tiny_job["status"] == white_job["status"] == "succeeded"
    cut = edge_job["renditions"]["amazon-main"]
    assert cut["checks"]["touches_frame_edge"] is True
    assert cut["verdict"] == "warn" and any("edge of the photo" in r for r in cut["reasons"])
    check_exact_white(stack, cut)
    small = tiny_job["renditions"]["amazon-main"]
    # 40 px made to fill 85 % of 2000 px: enlarged many times, and told so.
    assert small["checks"]["scale"] > 10 and any("enlarged" in r for r in small["reasons"])
    check_exact_white(stack, small)
    on_white = white_job["renditions"]["amazon-main"]
    assert on_white["verdict"] in ("pass", "warn") and float(on_white["checks"]["fill"]) == pytest.approx(
        0.85, abs=0.03
    )
    check_exact_white(stack, on_white)


def test_render_request_makes_renditions_again_with_no_run(stack: LocalStack) -> None:
    assert stack.resources is not None
    version = put(stack, "uploads/again/bottle.jpg", (ROOT / "samples" / "bottle.jpg").read_bytes())
    (job,) = finished(stack, [version])
    before = stack.s3().head_object(
        Bucket=stack.resources.results_bucket, Key=job["renditions"]["zalando"]["key"]
    )
    runs = runs_created(stack)
    time.sleep(1.1)  # S3's Last-Modified has whole seconds
    stack.sqs().send_message(
        QueueUrl=stack.resources.copy_queue_url, MessageBody=RenderRequest(job["job_id"], ("zalando",)).body()
    )
    deadline = time.monotonic() + 60
    while True:
        head = stack.s3().head_object(
            Bucket=stack.resources.results_bucket, Key=job["renditions"]["zalando"]["key"]
        )
        if head["LastModified"] > before["LastModified"]:
            break
        assert time.monotonic() < deadline, "the zalando rendition was not made again"
        time.sleep(0.5)
    (after,) = finished(stack, [version])
    assert runs_created(stack) == runs
    assert after["run_id"] == job["run_id"] and after["result_keys"] == job["result_keys"]
    assert after["renditions"]["zalando"]["bytes"] == job["renditions"]["zalando"]["bytes"]
    assert after["renditions"]["amazon-main"] == job["renditions"]["amazon-main"]


def test_a_bad_renditions_value_stops_the_local_stack_at_start(built: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'local'}:{ROOT / 'layers' / 'core'}"}
    env.pop("PARAMETER_OVERRIDES", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "backdrop_local",
            "--state-dir",
            str(tmp_path),
            "--parameter-overrides",
            'Renditions={"story":{"aspect":"9:16","fit":"stretch"}}',
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "BACKDROP_RENDITIONS: rendition 'story': fit must be one of pad, contain, cover" in result.stderr
    assert not (tmp_path / "local-stack.json").exists()
