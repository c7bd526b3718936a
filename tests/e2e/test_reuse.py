"""Reuse on the local stack, over real HTTP: uploads go in through the S3 API (whose notifications
carry the version id, as S3's do), and the runs are counted by the local Runflow's own record of
the runs it created (``GET /_emulator/stats``). The same bytes in the same colour make one run;
every other upload of them copies its result."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from backdrop.jobs import TERMINAL
from backdrop_local.aws import scan_items
from backdrop_local.stack import LocalStack, StackOptions
from tests.support.images import encoded

_shades = count(1)


def options(state_dir: Path, name: str, **parameters: str) -> StackOptions:
    return StackOptions(
        stack_name=name,
        state_dir=state_dir,
        reconcile_every_seconds=3.0,
        reconcile_min_age_seconds=10,
        runflow_callback_delays=(0.2, 0.4),
        parameter_overrides=parameters,
    )


@pytest.fixture(scope="module")
def stack(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(options(tmp_path_factory.mktemp("reuse"), "reuse-stack")) as running:
        yield running


@pytest.fixture(autouse=True)
def instant(stack: LocalStack) -> Iterator[None]:
    faults(stack)
    yield
    faults(stack)


def faults(stack: LocalStack, **settings: Any) -> None:
    """Set the local Runflow's faults through its own HTTP control."""
    answer = httpx.post(
        f"{stack.info['runflow_url']}/_emulator/faults", json={"processing": "instant", **settings}
    )
    assert answer.status_code == 200, answer.text


def runs_created(stack: LocalStack) -> int:
    answer = httpx.get(f"{stack.info['runflow_url']}/_emulator/stats")
    return int(answer.json()["runs_created"])


def photo() -> bytes:
    """A photo no other test uploads (its own shade)."""
    shade = next(_shades)
    image = Image.new("RGB", (64, 48), (230, 230 - shade, 225))
    ImageDraw.Draw(image).ellipse([16, 8, 48, 40], fill=(150, 20 + shade, 25))
    return encoded(image, "JPEG")


def put(stack: LocalStack, key: str, body: bytes, **metadata: str) -> str:
    assert stack.resources is not None
    answer = stack.s3().put_object(
        Bucket=stack.resources.uploads_bucket, Key=key, Body=body, Metadata=metadata
    )
    return str(answer["VersionId"])


def all_jobs(stack: LocalStack) -> list[dict[str, Any]]:
    assert stack.resources is not None
    return scan_items(stack.dynamodb(), stack.resources.jobs_table)


def finished(stack: LocalStack, versions: list[str], timeout: float = 120.0) -> list[dict[str, Any]]:
    """The jobs of these upload versions, once every one of them has ended."""
    deadline = time.monotonic() + timeout
    while True:
        by_version = {job.get("source_version_id"): job for job in all_jobs(stack)}
        jobs = [by_version.get(v) for v in versions]
        if all(job is not None and job["status"] in TERMINAL for job in jobs):
            return [job for job in jobs if job is not None]
        if time.monotonic() > deadline:
            states = [job["status"] if job else "no job" for job in jobs]
            raise AssertionError(f"jobs not finished in {timeout}s: {states}")
        time.sleep(0.5)


def result(stack: LocalStack, key: str) -> bytes:
    assert stack.resources is not None
    body: bytes = stack.s3().get_object(Bucket=stack.resources.results_bucket, Key=key)["Body"].read()
    return body


def test_same_key_uploaded_again_reuses_the_result(stack: LocalStack) -> None:
    body, before = photo(), runs_created(stack)
    (first,) = finished(stack, [put(stack, "uploads/reuse/same.jpg", body)])
    first_bytes = result(stack, "results/reuse/same.jpg/result.png")
    (again,) = finished(stack, [put(stack, "uploads/reuse/same.jpg", body)])
    assert first["status"] == again["status"] == "succeeded", (first, again)
    assert runs_created(stack) - before == 1
    assert again["reused_from"] == first["job_id"] and "run_id" not in again
    assert again["content_digest"] == first["content_digest"] and len(first["content_digest"]) == 64
    assert again["result_keys"] == ["results/reuse/same.jpg/result.png"]
    assert result(stack, "results/reuse/same.jpg/result.png") == first_bytes


def test_same_photo_under_another_key_reuses_the_result(stack: LocalStack) -> None:
    body, before = photo(), runs_created(stack)
    (first,) = finished(stack, [put(stack, "uploads/reuse/listed-once.jpg", body)])
    (other,) = finished(stack, [put(stack, "uploads/reuse/listed-twice.jpg", body)])
    assert other["status"] == "succeeded" and other["reused_from"] == first["job_id"]
    assert runs_created(stack) - before == 1
    assert result(stack, "results/reuse/listed-twice.jpg/result.png") == result(
        stack, "results/reuse/listed-once.jpg/result.png"
    )


def test_another_colour_is_another_run(stack: LocalStack) -> None:
    body, before = photo(), runs_created(stack)
    (white,) = finished(stack, [put(stack, "uploads/reuse/white.jpg", body)])
    (blue,) = finished(stack, [put(stack, "uploads/reuse/blue.jpg", body, **{"background-color": "#1E90FF"})])
    assert white["status"] == blue["status"] == "succeeded"
    assert "reused_from" not in blue and runs_created(stack) - before == 2


def test_five_identical_uploads_at_once_make_one_run(stack: LocalStack) -> None:
    body, before = photo(), runs_created(stack)
    # The leader's run stays dispatching a while, so the others arrive while it is in flight.
    faults(stack, dispatch_delay_s=3.0)
    versions: list[str] = []
    lock = threading.Lock()

    def upload(i: int) -> None:
        version = put(stack, f"uploads/reuse/together-{i}.jpg", body)
        with lock:
            versions.append(version)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    jobs = finished(stack, versions)
    assert [job["status"] for job in jobs] == ["succeeded"] * 5, jobs
    assert runs_created(stack) - before == 1
    # Each of the others copied the result of the run, or of a job that copied it before.
    (runner,) = [job for job in jobs if "reused_from" not in job]
    assert {job["reused_from"] for job in jobs if job is not runner} <= {job["job_id"] for job in jobs}
    outputs = {result(stack, job["result_keys"][0]) for job in jobs}
    assert len(outputs) == 1


def test_deleted_result_is_made_again_by_a_new_run(stack: LocalStack) -> None:
    assert stack.resources is not None
    body, before = photo(), runs_created(stack)
    (first,) = finished(stack, [put(stack, "uploads/reuse/deleted.jpg", body)])
    assert first["status"] == "succeeded"
    stack.s3().delete_object(
        Bucket=stack.resources.results_bucket, Key="results/reuse/deleted.jpg/result.png"
    )
    (later,) = finished(stack, [put(stack, "uploads/reuse/deleted-again.jpg", body)])
    assert later["status"] == "succeeded" and "reused_from" not in later and later["run_id"]
    assert runs_created(stack) - before == 2
    assert result(stack, "results/reuse/deleted-again.jpg/result.png")


def wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {timeout}s: {what}")
        time.sleep(0.2)


def test_when_the_leader_run_fails_exactly_one_more_run_is_made(stack: LocalStack) -> None:
    body, before = photo(), runs_created(stack)
    faults(stack, dispatch_delay_s=8.0, processing_failure=1.0)
    leader_version = put(stack, "uploads/reuse/leader.jpg", body)
    wait_until(lambda: runs_created(stack) - before == 1, "the leader's run")
    versions = [put(stack, f"uploads/reuse/follower-{i}.jpg", body) for i in range(3)]

    def waiting() -> bool:
        by_version = {job.get("source_version_id"): job for job in all_jobs(stack)}
        return all(by_version.get(v, {}).get("error_code") == "CONTENT_IN_FLIGHT" for v in versions)

    wait_until(waiting, "the followers waiting for the leader")
    (leader,) = finished(stack, [leader_version])
    assert leader["status"] == "failed" and leader["error_code"] == "PROCESSING_FAILED"
    faults(stack)  # the next run succeeds
    followers = finished(stack, versions)
    assert [job["status"] for job in followers] == ["succeeded"] * 3, followers
    assert runs_created(stack) - before == 2
    (runner,) = [job for job in followers if "reused_from" not in job]
    assert runner["run_id"]
    assert {job["reused_from"] for job in followers if job is not runner} <= {j["job_id"] for j in followers}


def test_with_reuse_off_every_upload_runs(built: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    state = tmp_path_factory.mktemp("reuse-off")
    with LocalStack(options(state, "reuse-off-stack", ReuseResults="false")) as off:
        faults(off)
        body, before = photo(), runs_created(off)
        (first,) = finished(off, [put(off, "uploads/off/a.jpg", body)])
        (second,) = finished(off, [put(off, "uploads/off/b.jpg", body)])
        assert first["status"] == second["status"] == "succeeded"
        assert "reused_from" not in second and runs_created(off) - before == 2
        assert first["content_digest"] == second["content_digest"]
