"""The Runflow client alone (over an httpx mock transport), and reading run objects and callback envelopes."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import httpx
import pytest

from backdrop.runs import (
    MODEL_PATH,
    OutputRef,
    RetryPolicy,
    RunflowClient,
    RunflowConflict,
    RunflowOutcomeUnknown,
    RunflowRejected,
    RunflowUnavailable,
    RunKind,
    RunRequest,
    run_result_from_callback,
    run_result_from_run,
)

BASE = "https://api.runflow.io"
RUN_ID = "0196a1b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b"
QUEUED = {"id": RUN_ID, "status_code": "queued", "output": None, "metadata": {"job_id": "job-1"}}
NOW = 1_795_000_000.0  # the client's wall clock in these tests


class MidpointJitter(random.Random):
    """Jitter fixed at the middle of its range, so backoff schedules are exact numbers."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


REQUEST = RunRequest(
    image_url="https://uploads-bucket.s3.amazonaws.com/uploads/red.jpg?X-Amz-Signature=abc",
    red=245,
    green=220,
    blue=200,
    callback_url="https://hooks.example.com/runflow/callback",
    metadata={"job_id": "job-1", "source_key": "uploads/red.jpg"},
    client_ref="job-1",
)

Reply = httpx.Response | Exception


class Script:
    """Answers requests in order, recording them."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def client(
    script: Script, *, retry: RetryPolicy | None = None, on_retry: Callable[[str], None] | None = None
) -> tuple[RunflowClient, list[float]]:
    delays: list[float] = []
    return (
        RunflowClient(
            BASE + "/",
            "rf_live_secret",
            http=httpx.Client(transport=httpx.MockTransport(script)),
            retry=retry,
            sleep=delays.append,
            rng=MidpointJitter(),
            on_retry=on_retry,
            wall_clock=lambda: NOW,
        ),
        delays,
    )


def error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message, "errors": None}, headers=headers)


# --- create_run -----------------------------------------------------------------------------


def test_create_run_request() -> None:
    script = Script(httpx.Response(201, json=QUEUED))
    rf, delays = client(script)
    result = rf.create_run(REQUEST, idempotency_key="job-1")

    (request,) = script.requests
    assert request.method == "POST"
    assert str(request.url) == BASE + MODEL_PATH
    assert request.url.path == "/v1/models/runflow/background-color/runs"
    assert request.headers["Authorization"] == "Bearer rf_live_secret"
    assert request.headers["Idempotency-Key"] == "job-1"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "input": {
            "image_url": REQUEST.image_url,
            "color_red": 245,
            "color_green": 220,
            "color_blue": 200,
        },
        "callback_url": "https://hooks.example.com/runflow/callback",
        "metadata": {"job_id": "job-1", "source_key": "uploads/red.jpg"},
        "client_ref": "job-1",
    }
    assert result.run_id == RUN_ID
    assert result.status == "queued"
    assert not result.is_terminal
    assert result.metadata == {"job_id": "job-1"}
    assert delays == []


def test_create_run_without_id_is_an_unknown_outcome() -> None:
    rf, _ = client(Script(httpx.Response(201, json={"status_code": "queued"})))
    with pytest.raises(RunflowOutcomeUnknown, match="no id"):
        rf.create_run(REQUEST, idempotency_key="job-1")


def test_create_run_accepts_run_id_field() -> None:
    rf, _ = client(Script(httpx.Response(200, json={"run_id": RUN_ID, "status": "queued"})))
    assert rf.create_run(REQUEST, idempotency_key="job-1").run_id == RUN_ID


def test_429_then_201_is_retried_with_same_key_and_body() -> None:
    script = Script(error(429, "RATE_LIMITED", "Rate limit exceeded"), httpx.Response(201, json=QUEUED))
    problems: list[str] = []
    rf, delays = client(script, on_retry=problems.append)
    assert rf.create_run(REQUEST, idempotency_key="job-1").run_id == RUN_ID
    assert [r.headers["Idempotency-Key"] for r in script.requests] == ["job-1", "job-1"]
    assert script.requests[0].content == script.requests[1].content
    assert delays == [1.25]  # first wait: 1 s plus jitter (the test's jitter is half its range)
    assert len(problems) == 1 and "429" in problems[0] and "RATE_LIMITED" in problems[0]


def test_429_backoff_doubles_with_jitter_up_to_the_attempt_limit() -> None:
    script = Script(*[error(429, "RATE_LIMITED", "slow down") for _ in range(5)])
    rf, delays = client(script, retry=RetryPolicy(max_attempts=5, budget_seconds=600))
    with pytest.raises(RunflowUnavailable, match="RATE_LIMITED"):
        rf.create_run(REQUEST, idempotency_key="job-1")
    assert len(script.requests) == 5
    assert delays == [1.25, 2.5, 5.0, 10.0]  # no sleep after the last attempt


def test_backoff_is_capped_at_32_seconds() -> None:
    script = Script(*[httpx.Response(503, text="busy") for _ in range(8)])
    rf, delays = client(script, retry=RetryPolicy(max_attempts=8, budget_seconds=10_000))
    with pytest.raises(RunflowUnavailable):
        rf.get_run(RUN_ID)
    assert delays == [1.25, 2.5, 5.0, 10.0, 20.0, 32.0, 32.0]


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(503, text="busy"),
        httpx.Response(503, json={"code": "INTERNAL_ERROR", "message": "try again"}),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(504, text="gateway timeout"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.WriteError("broken pipe"),
        httpx.Response(201, text="<html>proxy</html>"),
        httpx.Response(201, json={"status_code": "queued"}),
    ],
)
def test_create_whose_outcome_is_unknown_is_never_repeated(failure: httpx.Response | Exception) -> None:
    script = Script(failure, httpx.Response(201, json=QUEUED))
    rf, delays = client(script)
    with pytest.raises(RunflowOutcomeUnknown):
        rf.create_run(REQUEST, idempotency_key="job-1")
    assert len(script.requests) == 1 and delays == []


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("connection refused"), httpx.ConnectTimeout("no route"), httpx.PoolTimeout("busy")],
)
def test_create_that_never_left_is_retried(failure: Exception) -> None:
    script = Script(failure, httpx.Response(201, json=QUEUED))
    rf, delays = client(script)
    assert rf.create_run(REQUEST, idempotency_key="job-1").run_id == RUN_ID
    assert len(script.requests) == 2 and delays == [1.25]


def test_create_refused_as_model_unavailable_made_nothing_and_is_retried() -> None:
    # Runflow's errors page: 503 MODEL_UNAVAILABLE is answered before a run is made.
    down = httpx.Response(503, json={"code": "MODEL_UNAVAILABLE", "message": "provider down"})
    script = Script(down, httpx.Response(201, json=QUEUED))
    rf, delays = client(script)
    assert rf.create_run(REQUEST, idempotency_key="job-1").run_id == RUN_ID
    assert len(script.requests) == 2 and delays == [1.25]
    script = Script(*[httpx.Response(503, json={"code": "MODEL_UNAVAILABLE", "message": "down"})] * 5)
    rf, _ = client(script)
    with pytest.raises(RunflowUnavailable, match="MODEL_UNAVAILABLE"):
        rf.create_run(REQUEST, idempotency_key="job-1")


def test_a_read_with_a_budget_bounds_each_request_too() -> None:
    seen: list[dict[str, float | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={"id": RUN_ID, "status_code": "running", "client_ref": "job-1"})

    rf = RunflowClient(BASE, "rf_live_secret", http=httpx.Client(transport=httpx.MockTransport(answer)))
    assert rf.get_run(RUN_ID, budget_seconds=3.0).client_ref == "job-1"
    assert seen[0]["read"] == 3.0 and seen[0]["connect"] == 3.0


def test_a_run_id_is_one_path_segment_whatever_it_holds() -> None:
    script = Script(httpx.Response(404, json={"code": "RUN_NOT_FOUND", "message": "Run not found"}))
    rf, _ = client(script)
    with pytest.raises(RunflowRejected):
        rf.get_run("../models/x?y=1")
    assert script.requests[0].url.raw_path == b"/v1/runs/..%2Fmodels%2Fx%3Fy%3D1"


def test_connection_refused_every_time_is_unavailable_not_unknown() -> None:
    script = Script(*[httpx.ConnectError("connection refused") for _ in range(5)])
    rf, _ = client(script)
    with pytest.raises(RunflowUnavailable, match="ConnectError"):
        rf.create_run(REQUEST, idempotency_key="job-1")
    assert len(script.requests) == 5


def test_reads_are_retried_on_5xx_and_network_errors() -> None:
    script = Script(
        httpx.Response(503, text="busy"),
        httpx.ReadTimeout("slow"),
        httpx.Response(200, json={"id": RUN_ID, "status_code": "running"}),
    )
    rf, delays = client(script)
    assert rf.get_run(RUN_ID).status == "running"
    assert delays == [1.25, 2.5]


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (401, "UNAUTHORIZED", "Missing or invalid token"),
        (402, "INSUFFICIENT_CREDIT", "Your balance is too low"),
        (403, "PERMISSION_DENIED", "Your account is not authorized to access this resource."),
        (409, "CONFLICT", "Idempotency key reused with a different body"),
        (422, "VALIDATION_ERROR", "image_url: not a reachable URL"),
        (404, "MODEL_NOT_FOUND", "Model 'runflow/background-color' was not found"),
    ],
)
def test_final_4xx_rejected_without_retry(status: int, code: str, message: str) -> None:
    script = Script(error(status, code, message))
    rf, delays = client(script)
    with pytest.raises(RunflowRejected) as info:
        rf.create_run(REQUEST, idempotency_key="job-1")
    assert (info.value.http_status, info.value.code, info.value.message) == (status, code, message)
    assert len(script.requests) == 1
    assert delays == []


def test_409_on_create_is_an_idempotency_conflict() -> None:
    rf, _ = client(Script(error(409, "CONFLICT", "Idempotency key reused with a different body")))
    with pytest.raises(RunflowConflict) as info:
        rf.create_run(REQUEST, idempotency_key="job-1")
    assert info.value.code == "CONFLICT"


def test_find_runs_follows_every_page_and_orders_by_parsed_time() -> None:
    # String order would put "...12:00:01.5Z" before "...12:00:01+00:00"; time order does not.
    later = {
        "id": "run-later",
        "status_code": "running",
        "client_ref": "job-1",
        "created_at": "2026-05-06T12:00:01.5Z",
    }
    first = {
        "id": "run-first",
        "status_code": "succeeded",
        "client_ref": "job-1",
        "created_at": "2026-05-06T12:00:01+00:00",
    }
    other = {
        "id": "run-other",
        "status_code": "queued",
        "client_ref": "job-2",
        "created_at": "2026-05-06T11:00:00Z",
    }
    script = Script(
        httpx.Response(200, json={"items": [later, other], "first": "c0", "next": "c1", "previous": None}),
        httpx.Response(200, json={"items": [first], "first": "c0", "next": None, "previous": "c0"}),
    )
    rf, _ = client(script)
    assert [r.run_id for r in rf.find_runs("job-1")] == ["run-first", "run-later"]
    assert [r.url.params.get("pq") for r in script.requests] == [None, "c1"]
    assert script.requests[0].url.path == "/v1/runs"
    assert script.requests[0].url.params["q"] == "client_ref.EQ:'job-1'"


def test_find_runs_refused_is_a_rejection_not_a_retry() -> None:
    script = Script(error(403, "PERMISSION_DENIED", "Your key may not list runs"))
    rf, delays = client(script)
    with pytest.raises(RunflowRejected) as info:
        rf.find_runs("job-1")
    assert info.value.http_status == 403 and delays == []


def test_find_runs_refuses_a_reference_it_cannot_quote() -> None:
    rf, _ = client(Script())
    with pytest.raises(ValueError):
        rf.find_runs("job'1")


def test_find_runs_without_items_is_unavailable() -> None:
    rf, _ = client(Script(httpx.Response(200, json={"data": []})))
    with pytest.raises(RunflowUnavailable):
        rf.find_runs("job-1")


def test_nested_error_envelope() -> None:
    body = {"error": {"code": "INSUFFICIENT_CREDITS", "message": "top up"}}
    rf, _ = client(Script(httpx.Response(402, json=body)))
    with pytest.raises(RunflowRejected) as info:
        rf.create_run(REQUEST, idempotency_key="job-1")
    assert (info.value.code, info.value.message) == ("INSUFFICIENT_CREDITS", "top up")


def test_non_json_4xx() -> None:
    rf, _ = client(Script(httpx.Response(400, text="Bad Request")))
    with pytest.raises(RunflowRejected) as info:
        rf.create_run(REQUEST, idempotency_key="job-1")
    assert info.value.code == "HTTP_400"
    assert info.value.message == "Bad Request"


def test_retry_budget_stops_early() -> None:
    # Runflow asks for 5 s; the budget has 1 s left: give up now instead of sleeping past it.
    script = Script(
        error(429, "RATE_LIMITED", "slow down", **{"Retry-After": "5"}), httpx.Response(201, json=QUEUED)
    )
    retried: list[str] = []
    rf, delays = client(
        script, retry=RetryPolicy(max_attempts=5, budget_seconds=1.0), on_retry=retried.append
    )
    with pytest.raises(RunflowUnavailable, match="429") as info:
        rf.create_run(REQUEST, idempotency_key="job-1")
    assert info.value.retry_after == 5.0  # handed back to the queue with Runflow's own hint
    assert len(script.requests) == 1 and delays == [] and retried == []


def test_zero_budget_means_one_attempt() -> None:
    script = Script(httpx.Response(502, text="bad gateway"), httpx.Response(200, json=QUEUED))
    rf, delays = client(script, retry=RetryPolicy(budget_seconds=0.0))
    with pytest.raises(RunflowUnavailable):
        rf.get_run(RUN_ID)
    assert len(script.requests) == 1 and delays == []


def test_retry_after_honoured() -> None:
    script = Script(error(429, "RATE_LIMITED", "x", **{"Retry-After": "3"}), httpx.Response(201, json=QUEUED))
    rf, delays = client(script, retry=RetryPolicy(budget_seconds=60))
    rf.create_run(REQUEST, idempotency_key="job-1")
    assert delays == [3.0]


def test_retry_after_shorter_than_the_backoff_does_not_shorten_it() -> None:
    script = Script(error(429, "RATE_LIMITED", "x", **{"Retry-After": "0"}), httpx.Response(201, json=QUEUED))
    rf, delays = client(script, retry=RetryPolicy(budget_seconds=60))
    rf.create_run(REQUEST, idempotency_key="job-1")
    assert delays == [1.25]


def test_rate_limit_reset_honoured_when_none_remain() -> None:
    headers = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(NOW + 7)}
    script = Script(error(429, "RATE_LIMITED", "x", **headers), httpx.Response(201, json=QUEUED))
    rf, delays = client(script, retry=RetryPolicy(budget_seconds=60))
    rf.create_run(REQUEST, idempotency_key="job-1")
    assert delays == [7.0]


def test_rate_limit_headers_with_requests_left_do_not_delay() -> None:
    headers = {"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": str(NOW + 30)}
    script = Script(error(429, "RATE_LIMITED", "x", **headers), httpx.Response(201, json=QUEUED))
    rf, delays = client(script, retry=RetryPolicy(budget_seconds=60))
    rf.create_run(REQUEST, idempotency_key="job-1")
    assert delays == [1.25]


def test_retry_after_http_date_falls_back_to_backoff() -> None:
    script = Script(
        error(429, "RATE_LIMITED", "x", **{"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}),
        httpx.Response(201, json=QUEUED),
    )
    rf, delays = client(script)
    rf.create_run(REQUEST, idempotency_key="job-1")
    assert delays == [1.25]


def test_validation_errors_are_kept_in_the_message() -> None:
    body = {
        "code": "VALIDATION_ERROR",
        "message": "Request validation failed",
        "errors": [
            {
                "loc": ["body", "input", "image_url"],
                "msg": "URL scheme should be 'https'",
                "type": "url_scheme",
            },
            {"loc": ["body", "input", "color_red"], "msg": "Input should be less than or equal to 255"},
        ],
    }
    rf, _ = client(Script(httpx.Response(422, json=body)))
    with pytest.raises(RunflowRejected) as info:
        rf.create_run(REQUEST, idempotency_key="job-1")
    assert info.value.message == (
        "Request validation failed (body.input.image_url: URL scheme should be 'https'; "
        "body.input.color_red: Input should be less than or equal to 255)"
    )


def test_non_json_success_of_a_read_is_retried_then_unavailable() -> None:
    rf, _ = client(Script(*[httpx.Response(200, text="<html>proxy</html>") for _ in range(5)]))
    with pytest.raises(RunflowUnavailable, match="non-JSON"):
        rf.get_run(RUN_ID)


# --- the API key ----------------------------------------------------------------------------


class RotatingKey:
    """The secret as a warm function sees it: a cached key until a forced read returns the new one."""

    def __init__(self, cached: str, stored: str) -> None:
        self.cached, self.stored = cached, stored
        self.reads: list[bool] = []

    def __call__(self, refresh: bool) -> str:
        self.reads.append(refresh)
        if refresh:
            self.cached = self.stored
        return self.cached


def keyed_client(script: Script, key: RotatingKey) -> RunflowClient:
    return RunflowClient(
        BASE, key, http=httpx.Client(transport=httpx.MockTransport(script)), sleep=lambda _s: None
    )


def test_401_with_a_stale_key_is_sent_once_more_with_the_rotated_key() -> None:
    script = Script(error(401, "UNAUTHORIZED", "Missing or invalid token"), httpx.Response(201, json=QUEUED))
    key = RotatingKey(cached="rf_live_old", stored="rf_live_new")
    result = keyed_client(script, key).create_run(REQUEST, idempotency_key="job-1")

    assert result.run_id == RUN_ID
    assert [r.headers["Authorization"] for r in script.requests] == [
        "Bearer rf_live_old",
        "Bearer rf_live_new",
    ]
    assert [r.headers["Idempotency-Key"] for r in script.requests] == ["job-1", "job-1"]
    assert key.reads == [False, True]


def test_401_when_the_stored_key_is_the_same_is_final_after_one_request() -> None:
    script = Script(error(401, "UNAUTHORIZED", "Missing or invalid token"))
    key = RotatingKey(cached="rf_live_wrong", stored="rf_live_wrong")
    with pytest.raises(RunflowRejected) as info:
        keyed_client(script, key).create_run(REQUEST, idempotency_key="job-1")
    assert (info.value.http_status, info.value.code) == (401, "UNAUTHORIZED")
    assert len(script.requests) == 1
    assert key.reads == [False, True]


def test_other_refusals_never_read_the_key_again() -> None:
    script = Script(error(402, "INSUFFICIENT_CREDIT", "Your balance is too low"))
    key = RotatingKey(cached="rf_live_old", stored="rf_live_new")
    with pytest.raises(RunflowRejected):
        keyed_client(script, key).create_run(REQUEST, idempotency_key="job-1")
    assert key.reads == [False]


def test_every_request_reads_the_key_through_the_cache() -> None:
    script = Script(
        httpx.Response(200, json={"id": RUN_ID, "status_code": "running"}), httpx.Response(201, json=QUEUED)
    )
    key = RotatingKey(cached="rf_live_a", stored="rf_live_a")
    rf = keyed_client(script, key)
    rf.get_run(RUN_ID)
    key.cached = "rf_live_b"  # the cache expired and the next read found the rotated key
    rf.create_run(REQUEST, idempotency_key="job-1")
    assert [r.headers["Authorization"] for r in script.requests] == ["Bearer rf_live_a", "Bearer rf_live_b"]
    assert key.reads == [False, False]


# --- get_run --------------------------------------------------------------------------------


def test_get_run() -> None:
    body = {
        "id": RUN_ID,
        "status_code": "succeeded",
        "output": {"outputs": [{"url": "https://cdn.runflow.io/o/result.webp?sig=1", "type": "image"}]},
        "duration_ms": 4200,
        "metadata": {"job_id": "job-1"},
        "failure_code": None,
        "failure_message": None,
    }
    script = Script(httpx.Response(200, json=body))
    rf, _ = client(script)
    run = rf.get_run(RUN_ID)
    assert script.requests[0].method == "GET"
    assert str(script.requests[0].url) == f"{BASE}/v1/runs/{RUN_ID}"
    assert script.requests[0].headers["Authorization"] == "Bearer rf_live_secret"
    assert "Idempotency-Key" not in script.requests[0].headers
    assert run.status == "succeeded"
    assert run.is_terminal
    assert run.outputs == (OutputRef("https://cdn.runflow.io/o/result.webp?sig=1"),)
    assert run.duration_ms == 4200


def test_get_run_not_found() -> None:
    rf, _ = client(Script(error(404, "RUN_NOT_FOUND", "Run not found")))
    with pytest.raises(RunflowRejected) as info:
        rf.get_run(RUN_ID)
    assert info.value.code == "RUN_NOT_FOUND"


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("succeeded", "succeeded"),
        ("cancelled", "canceled"),
        ("canceled", "canceled"),
        ("CANCELLED", "canceled"),
        ("errored", "failed"),
        ("partial_succeeded", "partial_succeeded"),
    ],
)
def test_callback_status_spellings(status: str, expected: str) -> None:
    run = run_result_from_callback({"event": "run.x", "run_id": RUN_ID, "status": status})
    assert run.status == expected
    assert run.is_terminal


def test_callback_family_a_outputs() -> None:
    envelope = {
        "event": "run.completed",
        "run_id": RUN_ID,
        "status": "succeeded",
        "output": {
            "outputs": [
                {"url": "https://cdn.runflow.io/a.webp", "type": "image"},
                {"url": "https://cdn.runflow.io/b.png", "content_type": "image/png"},
                {"type": "image"},  # no url: skipped
                "https://not-an-item",
            ],
            "seed": None,
            "timing": None,
            "nsfw_detected": None,
        },
        "duration_ms": 102345,
        "created_at": "2026-05-06T10:00:00+00:00",
        "completed_at": "2026-05-06T10:01:42+00:00",
        "metadata": {"job_id": "job-1"},
    }
    run = run_result_from_callback(envelope)
    assert run.run_id == RUN_ID
    assert run.outputs == (
        OutputRef("https://cdn.runflow.io/a.webp"),
        OutputRef("https://cdn.runflow.io/b.png", "image/png"),
    )
    assert run.duration_ms == 102345
    assert run.metadata == {"job_id": "job-1"}


def test_callback_family_b_image_urls() -> None:
    run = run_result_from_callback(
        {
            "run_id": RUN_ID,
            "status": "succeeded",
            "output": {"image_urls": ["https://cdn.runflow.io/x.png", 3]},
        }
    )
    assert run.outputs == (OutputRef("https://cdn.runflow.io/x.png"),)


def test_callback_failure_fields() -> None:
    run = run_result_from_callback(
        {
            "event": "run.failed",
            "run_id": RUN_ID,
            "status": "failed",
            "output": None,
            "failure_code": "PROVIDER_ERROR",
            "failure_message": "segmentation failed",
            "metadata": None,
        }
    )
    assert (run.failure_code, run.failure_message) == ("PROVIDER_ERROR", "segmentation failed")
    assert run.outputs == ()
    assert run.metadata == {}


def test_callback_failure_as_error_envelope_in_output() -> None:
    run = run_result_from_callback(
        {"run_id": RUN_ID, "status": "failed", "output": {"code": "INPUT_UNREADABLE", "message": "bad image"}}
    )
    assert (run.failure_code, run.failure_message) == ("INPUT_UNREADABLE", "bad image")


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ("run.completed", "succeeded"),
        ("run.failed", "failed"),
        ("run.cancelled", "canceled"),
        ("run.partial_succeeded", "partial_succeeded"),
        ("run.something_new", ""),
    ],
)
def test_callback_status_derived_from_event(event: str, status: str) -> None:
    run = run_result_from_callback({"event": event, "run_id": RUN_ID})
    assert run.status == status


def test_run_object_with_error_object() -> None:
    run = run_result_from_run(
        {"id": RUN_ID, "status_code": "failed", "error": {"code": "TIMEOUT", "message": "took too long"}}
    )
    assert (run.status, run.failure_code, run.failure_message) == ("failed", "TIMEOUT", "took too long")


def test_duration_must_be_a_number() -> None:
    assert (
        run_result_from_callback({"run_id": "r", "status": "failed", "duration_ms": "12"}).duration_ms is None
    )
    assert (
        run_result_from_callback({"run_id": "r", "status": "failed", "duration_ms": True}).duration_ms is None
    )
    assert (
        run_result_from_callback({"run_id": "r", "status": "failed", "duration_ms": 12.7}).duration_ms == 12
    )


@pytest.mark.parametrize("status", ["queued", "dispatching", "running"])
def test_non_terminal_statuses(status: str) -> None:
    assert not run_result_from_run({"id": RUN_ID, "status_code": status}).is_terminal


def test_success_with_json_that_is_not_an_object() -> None:
    rf, _ = client(Script(*[httpx.Response(200, json=[QUEUED]) for _ in range(5)]))
    with pytest.raises(RunflowUnavailable, match="not an object"):
        rf.get_run(RUN_ID)


def test_error_body_that_is_not_an_object() -> None:
    rf, _ = client(Script(httpx.Response(422, json=["bad"])))
    with pytest.raises(RunflowRejected) as info:
        rf.create_run(REQUEST, idempotency_key="job-1")
    assert (info.value.http_status, info.value.code) == (422, "HTTP_422")


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"status_code": "succeeded", "completed_at": "2026-05-06T10:00:00Z"}, RunKind.SUCCEEDED),
        ({"status_code": "partial_succeeded", "completed_at": "x"}, RunKind.SUCCEEDED),
        ({"status_code": "cancelled", "completed_at": "x"}, RunKind.CANCELED),
        ({"status_code": "failed"}, RunKind.FAILED),
        ({"status_code": "expired", "completed_at": "2026-05-06T10:00:00Z"}, RunKind.FAILED),
        ({"status_code": "timed_out", "completed_at": "2026-05-06T10:00:00Z"}, RunKind.FAILED),
        ({"status_code": "expired"}, RunKind.OPEN),  # unknown, and not finished by its own account
        ({"status_code": "dispatching"}, RunKind.OPEN),
        ({"status_code": "running", "completed_at": None}, RunKind.OPEN),
    ],
)
def test_what_a_run_status_means(body: dict[str, object], kind: RunKind) -> None:
    assert run_result_from_run({"id": RUN_ID, **body}).kind is kind


def test_unknown_status_in_a_callback_is_terminal() -> None:
    # Runflow calls back only when a run has finished, whatever it calls that state.
    run = run_result_from_callback({"event": "run.failed", "run_id": RUN_ID, "status": "expired"})
    assert run.kind is RunKind.FAILED and run.status == "expired"


def test_error_envelope_as_a_failed_callbacks_output() -> None:
    run = run_result_from_callback(
        {
            "run_id": RUN_ID,
            "status": "failed",
            "output": {"error": {"code": "INPUT_UNREADABLE", "message": "bad"}},
        }
    )
    assert (run.failure_code, run.failure_message) == ("INPUT_UNREADABLE", "bad")
