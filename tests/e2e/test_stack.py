"""The local stack end to end over real HTTP: uploads go in through the S3 API, background-coloured
images come out in the results bucket, the jobs table tells the story, and hostile or odd uploads
end in the outcome a user would expect."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from backdrop.jobs import TERMINAL
from backdrop.results import result_key
from backdrop_local.aws import scan_items
from backdrop_local.stack import RUNFLOW_API_KEY, LocalStack, StackOptions
from tests.support.images import encoded


@pytest.fixture(scope="module")
def stack(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    options = StackOptions(
        stack_name="e2e-stack",
        state_dir=tmp_path_factory.mktemp("stack"),
        reconcile_every_seconds=5.0,
        reconcile_min_age_seconds=30,
        runflow_callback_delays=(0.5, 1.0),
    )
    with LocalStack(options) as running:
        yield running


def portrait(fmt: str = "JPEG", size: tuple[int, int] = (320, 240)) -> bytes:
    """A subject (dark red disc) on a light, slightly graded studio background."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        shade = 235 - (y * 12) // height
        draw.line([(0, y), (width, y)], fill=(shade, shade, shade))
    draw.ellipse([width * 0.3, height * 0.2, width * 0.7, height * 0.8], fill=(150, 20, 25))
    return encoded(image, fmt)


def jobs_by_key(stack: LocalStack) -> dict[str, dict[str, Any]]:
    assert stack.resources is not None
    return {job["source_key"]: job for job in scan_items(stack.dynamodb(), stack.resources.jobs_table)}


def wait_for(stack: LocalStack, keys: list[str], timeout: float = 120.0) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = jobs_by_key(stack)
        if all(k in jobs and jobs[k]["status"] in TERMINAL for k in keys):
            return {k: jobs[k] for k in keys}
        if time.monotonic() > deadline:
            pending = {k: jobs.get(k, {}).get("status", "no job") for k in keys}
            raise AssertionError(f"jobs not finished in {timeout}s: {pending}")
        time.sleep(0.5)


def close(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


def test_upload_comes_back_on_the_requested_colour(stack: LocalStack) -> None:
    assert stack.resources is not None
    s3 = stack.s3()
    key = "uploads/catalogue/portrait.jpg"
    s3.put_object(
        Bucket=stack.resources.uploads_bucket,
        Key=key,
        Body=portrait(),
        Metadata={"background-color": "#1E90FF"},
    )
    job = wait_for(stack, [key])[key]
    assert job["status"] == "succeeded", job
    assert job["color"] == "30,144,255" and job["run_id"] and job["runflow_duration_ms"] >= 0
    assert job["result_keys"] == ["results/catalogue/portrait.jpg/result.png"]
    assert job["created_at"] <= job["submitted_at"] <= job["completed_at"]
    [result] = job["result_keys"]
    obj = s3.get_object(Bucket=stack.resources.results_bucket, Key=result)
    assert obj["Metadata"]["job-id"] == job["job_id"] and obj["Metadata"]["run-id"] == job["run_id"]
    image = Image.open(io.BytesIO(obj["Body"].read())).convert("RGB")
    width, height = image.size
    for corner in [(2, 2), (width - 3, 2), (2, height - 3), (width - 3, height - 3)]:
        assert close(image.getpixel(corner), (30, 144, 255), 40), (corner, image.getpixel(corner))
    assert not close(image.getpixel((width // 2, height // 2)), (30, 144, 255), 60)
    # The local Runflow's delivery history shows a signed callback that our endpoint accepted.
    deliveries = httpx.get(
        f"{stack.info['runflow_url']}/v1/runs/{job['run_id']}/callback",
        headers={"Authorization": f"Bearer {RUNFLOW_API_KEY}"},
    ).json()
    assert deliveries and deliveries[0]["signing_secret_id"]
    assert any(a["status_code"] == 200 for d in deliveries for a in d["attempts"])


def bomb() -> bytes:
    """A small PNG that decodes to 144 megapixels."""
    return encoded(Image.new("1", (12000, 12000)), "PNG", optimize=True)


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'


def test_odd_and_hostile_uploads(stack: LocalStack) -> None:
    assert stack.resources is not None
    s3 = stack.s3()
    long_name = "x" * 900
    cases: dict[str, tuple[bytes, dict[str, str], str]] = {
        "uploads/odd/empty.jpg": (b"", {}, "rejected:EMPTY_OBJECT"),
        "uploads/odd/truncated.jpg": (portrait()[:300], {}, "failed:INPUT_UNREADABLE"),
        "uploads/odd/png-named.jpg": (portrait("PNG"), {}, "succeeded"),
        "uploads/odd/text.png": (b"hello, I am text\n", {}, "rejected:UNSUPPORTED_TYPE"),
        "uploads/odd/vector.svg": (SVG, {}, "rejected:UNSUPPORTED_TYPE"),
        "uploads/odd/huge.jpg": (b"\xff\xd8\xff" + b"\0" * (60 * 1024 * 1024), {}, "rejected:TOO_LARGE"),
        "uploads/odd/bomb.png": (bomb(), {}, "failed:INPUT_UNREADABLE"),
        "uploads/odd/with space+plus%percent.jpg": (portrait(), {}, "succeeded"),
        "uploads/odd/ünïcødé 写真.jpg": (portrait(), {}, "succeeded"),
        "uploads/odd/../escape.jpg": (portrait(), {}, "rejected:UNSUPPORTED_KEY"),
        f"uploads/odd/{long_name}.jpg": (portrait(), {}, "succeeded"),
        "uploads/a/b/c/d/e/f/g/h/deep.jpg": (portrait(), {}, "succeeded"),
        "uploads/odd/colour-words.jpg": (portrait(), {"background-color": "blue"}, "rejected:INVALID_COLOR"),
        "uploads/odd/colour-range.jpg": (
            portrait(),
            {"background-color": "256,0,0"},
            "rejected:INVALID_COLOR",
        ),
        "uploads/odd/colour-short.jpg": (portrait(), {"background-color": "#FFF"}, "rejected:INVALID_COLOR"),
    }
    # The folder marker goes in first, so its notification is handled before the cases finish.
    s3.put_object(Bucket=stack.resources.uploads_bucket, Key="uploads/odd/folder/", Body=b"")
    for key, (body, metadata, _expect) in cases.items():
        s3.put_object(Bucket=stack.resources.uploads_bucket, Key=key, Body=body, Metadata=metadata)
    jobs = wait_for(stack, list(cases), timeout=180)
    for key, (_body, metadata, expect) in cases.items():
        job = jobs[key]
        status, _, code = expect.partition(":")
        assert job["status"] == status, (key, job["status"], job.get("error_code"), job.get("error_message"))
        if code:
            assert job["error_code"] == code, (key, job)
            assert job["error_message"], (key, job)
        if code == "INVALID_COLOR":
            assert metadata["background-color"] in job["error_message"]
        if status == "succeeded":
            [result] = job["result_keys"]
            assert result == result_key(key, "uploads/", "results/", "png")
            s3.head_object(Bucket=stack.resources.results_bucket, Key=result)
    assert "uploads/odd/folder/" not in jobs_by_key(stack)  # a folder marker is not a job
