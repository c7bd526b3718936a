"""The review page in a real headless browser: Debian's chromium (``make browser``), driven by
Playwright through ``executable_path`` (Playwright's own browser download is never used), over the
local stack with ``QualityGate=hold``.

Two photos go in through the S3 API whose results the gate holds (``needs_review``): a bundled
sample whose cat the model cuts (the calibration's one false doubt) and a flat single-colour image
in which the segmentation finds nothing. ``backdrop review --serve``, run as a user runs
it, prints the page's URL first; the browser loads it, sees the original and the held result of
each job load, approves one with the keyboard, rejects the other with the button and a note, and
the jobs table and the results bucket show the outcome. One key is an HTML payload: the page must
show it as text.

Skipped, with the reason, where no chromium can run; ``.ci/run`` sets ``BACKDROP_REQUIRE_BROWSER=1``
where it installed one, and then a skip is an error. ``BACKDROP_REVIEW_SCREENSHOT=PATH`` saves the
page as the reviewer first sees it (docs/review-page.png is made so)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backdrop.jobs import Job, Status
from backdrop_local.runflow import FaultSettings
from backdrop_local.stack import LocalStack, StackOptions
from tests.cli.cliworld import BACKDROP, Cli, jobs_of, put, resources
from tests.support.images import solid

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("BACKDROP_CHROMIUM", "/usr/bin/chromium"))
PREFIX = "uploads/review-page/"
PLAIN_KEY = PREFIX + "chelsea.png"
HOSTILE_KEY = PREFIX + '<img src=x onerror="window.pwned=1">.png'
NOTE = "Nothing on it: the product is missing <b>entirely</b>"


def chromium_or_skip() -> Any:
    """Playwright's sync API, or a skip (an error where ``BACKDROP_REQUIRE_BROWSER=1``)."""
    problem = None
    try:
        from playwright import sync_api
    except ImportError:
        problem = "the playwright package is not installed (`make venv` installs it)"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} is missing: `make browser` (apt-get install chromium, as root)"
    if problem is not None:
        if os.environ.get("BACKDROP_REQUIRE_BROWSER") == "1":
            pytest.fail(f"BACKDROP_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    return sync_api


@pytest.fixture(scope="module")
def stack(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    options = StackOptions(
        stack_name="review-page",
        state_dir=tmp_path_factory.mktemp("review-page"),
        runflow_callback_delays=(0.2, 0.4),
        runflow_faults=FaultSettings(processing="real"),
        parameter_overrides={
            "QualityGate": "hold",
            "Renditions": '{"thumb": "thumbnail"}',
            "ReuseResults": "false",
        },
    )
    with LocalStack(options) as running:
        yield running


def held(stack: LocalStack, key: str, timeout: float = 240.0) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        jobs = jobs_of(stack, key)
        if jobs and jobs[0].status is Status.NEEDS_REVIEW:
            return jobs[0]
        assert not (jobs and jobs[0].status.is_terminal), (jobs[0].status, jobs[0].error_message)
        assert time.monotonic() < deadline, [j.status.value for j in jobs]
        time.sleep(0.5)


@pytest.fixture
def page_url(stack: LocalStack) -> Iterator[str]:
    """``backdrop review --serve --no-open --local``: its first line on stdout, the URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKDROP_")} | {"USER": "rita"}
    command = [
        str(BACKDROP),
        "review",
        "--serve",
        "--no-open",
        "--local",
        "--state-dir",
        str(stack.state_dir),
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url, (url, server.poll())
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def loaded(page: Any, selector: str, timeout: float = 20.0) -> None:
    """The image has loaded (its natural width is known). Polled from here: the page's Content
    Security Policy forbids the string evaluation ``wait_for_function`` relies on."""
    deadline = time.monotonic() + timeout
    image = f"document.querySelector({selector!r})"
    check = f"{image}.complete && {image}.naturalWidth > 0"
    while not page.evaluate(check):
        assert time.monotonic() < deadline, f"{selector} did not load"
        time.sleep(0.1)


def test_a_reviewer_approves_and_rejects_held_results_in_the_browser(
    stack: LocalStack, page_url: str
) -> None:
    sync_api = chromium_or_skip()
    put(stack, PLAIN_KEY, (ROOT / "samples" / "chelsea.png").read_bytes())  # the model cuts the cat: doubtful
    put(stack, HOSTILE_KEY, solid("PNG", (320, 240), (200, 180, 40)))
    plain, hostile = held(stack, PLAIN_KEY), held(stack, HOSTILE_KEY)
    for job in (plain, hostile):
        assert job.quality["verdict"] == "doubt" and job.held_keys and not job.result_keys

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_url)
        page.wait_for_selector("#queue li:nth-child(2)")
        assert "2 jobs waiting" in page.inner_text("#summary") and "rita" in page.inner_text("#summary")

        for key in (PLAIN_KEY, HOSTILE_KEY):  # each job's original and held result load
            page.click(f"#queue button[data-job='{jobs_of(stack, key)[0].job_id}']")
            assert page.inner_text("#job-key") == key  # the payload shows as text, nothing runs
            loaded(page, "#original")
            loaded(page, "#result")
            assert page.inner_text("#reasons")  # why it is doubtful
        assert page.evaluate("window.pwned") is None and page.query_selector("img[src='x']") is None
        if shot := os.environ.get("BACKDROP_REVIEW_SCREENSHOT"):
            page.click(f"#queue button[data-job='{plain.job_id}']")
            loaded(page, "#result")
            page.screenshot(path=shot, full_page=True)

        page.click(f"#queue button[data-job='{plain.job_id}']")
        shown = page.inner_text("#job-key")
        page.keyboard.press("j")  # the next job, then back
        assert page.inner_text("#job-key") != shown
        page.keyboard.press("k")
        assert page.inner_text("#job-key") == shown == PLAIN_KEY
        page.keyboard.press("a")  # approve, by the shortcut
        page.wait_for_selector("#message:has-text('succeeded')", timeout=60_000)
        assert page.inner_text("#job-key") == HOSTILE_KEY  # the other job is next
        page.click("#reject")
        page.fill("#note", NOTE)
        page.click("#reject-confirm")
        page.wait_for_selector("#message:has-text('rejected')", timeout=60_000)
        page.wait_for_selector("#empty", state="visible")
        assert errors == [] and page.evaluate("window.pwned") is None
        browser.close()

    [approved], [rejected] = jobs_of(stack, PLAIN_KEY), jobs_of(stack, HOSTILE_KEY)
    assert approved.status is Status.SUCCEEDED and approved.review["decision"] == "approve"
    assert approved.review["reviewer"] == "rita" and not approved.held_keys
    assert rejected.status is Status.REJECTED and rejected.error_code == "REJECTED_BY_REVIEW"
    assert rejected.error_message == NOTE and rejected.review["note"] == NOTE
    s3, bucket = stack.s3(), resources(stack).results_bucket
    results_prefix = stack.info["parameters"].get("ResultsPrefix", "results/")
    assert approved.result_keys and all(k.startswith(results_prefix) for k in approved.result_keys)
    for key in approved.result_keys:
        s3.head_object(Bucket=bucket, Key=key)  # published under the results prefix
    review_prefix = stack.info["parameters"].get("ReviewPrefix", "review/")
    assert (
        s3.list_objects_v2(Bucket=bucket, Prefix=review_prefix).get("KeyCount", 0) == 0
    )  # nothing left held


def test_the_command_approves_rejects_and_retries_held_results(stack: LocalStack) -> None:
    """The same decisions from the command line (no browser needed), through the copy function."""
    cli = Cli(stack.state_dir)
    keys = [f"{PREFIX}cli/flat-{n}.png" for n in range(2)]
    for n, key in enumerate(keys):
        put(stack, key, solid("PNG", (160, 120), (40 + 60 * n, 90, 160)))
    approve, reject = (held(stack, key) for key in keys)

    listed = cli.json("review")
    mine = {j["job_id"]: j for j in listed["jobs"] if j["source"]["key"] in keys}
    assert sorted(mine) == sorted([approve.job_id, reject.job_id])
    assert mine[approve.job_id]["verdict"] == "doubt" and mine[approve.job_id]["checks"]["product_share"] == 0
    assert any(r.startswith("nothing found") for r in mine[approve.job_id]["reasons"])

    approved = cli.json("review", "approve", approve.job_id, "--reviewer", "ops@example.com")
    [done] = approved["decided"]
    assert done["status"] == "succeeded" and done["review"]["reviewer"] == "ops@example.com"
    s3, bucket = stack.s3(), resources(stack).results_bucket
    for key in done["result_keys"]:
        s3.head_object(Bucket=bucket, Key=key)
    for key in approve.held_keys:
        with pytest.raises(s3.exceptions.ClientError):
            s3.head_object(Bucket=bucket, Key=key)  # moved, not copied

    unasked = cli("review", "reject", reject.job_id, "--note", "blank", "--retry")
    assert unasked.code == 2 and "Refusing without --yes" in unasked.stderr and "1 new runs" in unasked.stdout
    rejected = cli.json("review", "reject", reject.job_id, "--note", "blank", "--retry", "--yes")
    assert rejected["decided"][0]["status"] == "rejected"
    assert rejected["decided"][0]["error_code"] == "REJECTED_BY_REVIEW"
    assert rejected["retry"]["started"] == [{"job_id": reject.job_id, "key": keys[1], "attempt": 2}]
    again = held(stack, keys[1])  # the new run's result is doubtful again: held again
    assert again.attempt == 2 and again.history[-1]["error_message"] == "blank"

    refused = cli("review", "approve", approve.job_id)
    assert refused.code == 1 and "not waiting for review: succeeded" in refused.stdout
    cli.json("review", "reject", again.job_id, "--note", "still blank")  # nothing left waiting
    assert cli.json("review")["needs_review"] == 0
