"""What a client sees of the request-side settings: idempotency keys honoured or ignored, a create
answered with a dropped connection, rate-limit headers in each mode, 429s on reads and a refused
list."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from backdrop_local.runflow import FaultSettings, LocalRunflow
from tests.integration.local_runflow.local_runflow_support import (
    MODEL_RUNS,
    ManualClock,
    Upstream,
    api,
    create,
    run_body,
    running,
)

RATE_HEADERS = ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _rate_headers(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in RATE_HEADERS if name in response.headers}


def _envelope(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "errors"} and body["code"] == code


# ---------------------------------------------------------------------------- idempotency keys
def test_ignored_idempotency_keys_make_every_post_a_new_run(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    runflow.set_faults(FaultSettings(idempotency_keys="ignore"))
    body = run_body(junk_url)
    headers = {"Idempotency-Key": "same-key"}
    first = client.post(MODEL_RUNS, json=body, headers=headers)
    second = client.post(MODEL_RUNS, json=body, headers=headers)
    other = client.post(MODEL_RUNS, json=run_body(junk_url, (1, 2, 3)), headers=headers)
    assert [r.status_code for r in (first, second, other)] == [201, 201, 201]
    assert len({r.json()["id"] for r in (first, second, other)}) == 3
    stats = runflow.stats()
    assert stats["runs_created"] == 3 and stats["idempotent_replays"] == 0
    assert stats["idempotency_keys_ignored"] == 3

    # Honoured again, the key is fresh: the ignored requests recorded nothing under it.
    runflow.set_faults(FaultSettings(idempotency_keys="honour"))
    fourth = client.post(MODEL_RUNS, json=run_body(junk_url, (9, 9, 9)), headers=headers)
    replay = client.post(MODEL_RUNS, json=run_body(junk_url, (9, 9, 9)), headers=headers)
    assert fourth.status_code == replay.status_code == 201
    assert fourth.json()["id"] == replay.json()["id"]
    _envelope(client.post(MODEL_RUNS, json=body, headers=headers), 409, "CONFLICT")
    assert runflow.stats()["runs_created"] == 4 and runflow.stats()["idempotency_keys_ignored"] == 3
    assert runflow.wait_idle(30)


# ---------------------------------------------------------------------------- create answers
def test_a_reset_create_answer_still_creates_the_run(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    runflow.set_faults(FaultSettings(create_answer_reset=1.0))
    body = run_body(junk_url, client_ref="reset-me")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.post(MODEL_RUNS, json=body, headers={"Idempotency-Key": "k-reset"})
    stats = runflow.stats()
    assert stats["runs_created"] == 1 and stats["create_answers_reset"] == 1
    assert stats["faults_fired"]["create_answer_reset"] == 1
    [listed] = client.get("/v1/runs", params={"q": "client_ref:reset-me"}).json()["items"]

    runflow.set_faults(FaultSettings())
    retried = client.post(MODEL_RUNS, json=body, headers={"Idempotency-Key": "k-reset"})
    assert retried.status_code == 201 and retried.json()["id"] == listed["id"]
    assert runflow.stats()["runs_created"] == 1
    assert client.get("/v1/health").json() == {"ok": True}  # the server is fine after the drop
    assert runflow.wait_idle(30)


def test_a_lost_answer_is_tried_before_a_reset_one(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    runflow.set_faults(FaultSettings(create_answer_lost=1.0, create_answer_reset=1.0))
    _envelope(client.post(MODEL_RUNS, json=run_body(junk_url)), 504, "GATEWAY_TIMEOUT")
    fired = runflow.stats()["faults_fired"]
    assert fired["create_answer_lost"] == 1 and fired["create_answer_reset"] == 0
    assert runflow.stats()["create_answers_reset"] == 0
    assert runflow.wait_idle(30)


# ---------------------------------------------------------------------------- rate-limit headers
def test_without_headers_mode_a_429_carries_none(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    runflow.set_faults(FaultSettings(create_429=1.0, get_429=1.0))
    limited = client.post(MODEL_RUNS, json=run_body(junk_url))
    _envelope(limited, 429, "RATE_LIMITED")
    assert _rate_headers(limited) == {}
    assert _rate_headers(client.get("/v1/runs")) == {}


def test_retry_after_mode_puts_whole_seconds_on_429s_only(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    runflow.set_faults(FaultSettings(create_429=1.0, rate_limit_headers="retry_after", retry_after_s=2.5))
    limited = client.post(MODEL_RUNS, json=run_body(junk_url))
    _envelope(limited, 429, "RATE_LIMITED")
    assert _rate_headers(limited) == {"Retry-After": "3"}
    runflow.set_faults(FaultSettings(rate_limit_headers="retry_after", retry_after_s=2.5))
    created = client.post(MODEL_RUNS, json=run_body(junk_url))
    assert created.status_code == 201 and _rate_headers(created) == {}
    assert runflow.wait_idle(30)


def test_x_ratelimit_mode_puts_the_window_on_every_answer(upstream: Upstream, junk_url: str) -> None:
    clock = ManualClock(start=1_800_000_000.25)
    with running(allow_http_origins=(upstream.origin,), clock=clock) as runflow, api(runflow) as client:
        runflow.set_faults(FaultSettings(rate_limit_headers="x_ratelimit", retry_after_s=1.5))
        created = client.post(MODEL_RUNS, json=run_body(junk_url))
        assert created.status_code == 201
        run_id = created.json()["id"]
        answers = {
            "create": created,
            "invalid create": client.post(MODEL_RUNS, json={"input": {}}),
            "get": client.get(f"/v1/runs/{run_id}"),
            "unknown run": client.get("/v1/runs/01900000-0000-7000-8000-000000000000"),
            "list": client.get("/v1/runs"),
        }
        assert [r.status_code for r in answers.values()] == [201, 422, 200, 404, 200]
        remaining = []
        for name, response in answers.items():
            headers = _rate_headers(response)
            assert set(headers) == {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}, name
            assert headers["X-RateLimit-Limit"] == "1000"
            assert headers["X-RateLimit-Reset"] == "1800000002"  # ceil(now + 1.5)
            remaining.append(int(headers["X-RateLimit-Remaining"]))
        assert remaining == [999, 998, 997, 996, 995]  # one window, counted down per answer

        clock.advance(100.0)
        runflow.set_faults(FaultSettings(rate_limit_headers="x_ratelimit", retry_after_s=1.5, get_429=1.0))
        limited = client.get(f"/v1/runs/{run_id}")
        _envelope(limited, 429, "RATE_LIMITED")
        assert _rate_headers(limited) == {
            "X-RateLimit-Limit": "1000",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "1800000102",
        }
        # Routes outside create/get/list and unauthenticated answers carry none.
        assert _rate_headers(client.get(f"/v1/runs/{run_id}/callback")) == {}
        assert _rate_headers(httpx.get(f"{runflow.url}/v1/runs", trust_env=False)) == {}
        assert runflow.wait_idle(30)


def test_both_mode_on_a_create_429(upstream: Upstream, junk_url: str) -> None:
    clock = ManualClock(start=1_700_000_000.0)
    with running(allow_http_origins=(upstream.origin,), clock=clock) as runflow, api(runflow) as client:
        runflow.set_faults(FaultSettings(create_429=1.0, rate_limit_headers="both", retry_after_s=4))
        limited = client.post(MODEL_RUNS, json=run_body(junk_url))
        _envelope(limited, 429, "RATE_LIMITED")
        assert _rate_headers(limited) == {
            "Retry-After": "4",
            "X-RateLimit-Limit": "1000",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "1700000004",
        }
        assert runflow.stats()["runs_created"] == 0


# ---------------------------------------------------------------------------- reads refused
def test_get_429_limits_reading_a_run_and_the_list(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    run_id = create(client, run_body(junk_url))
    runflow.set_faults(FaultSettings(get_429=1.0, rate_limit_headers="retry_after"))
    for response in (client.get(f"/v1/runs/{run_id}"), client.get("/v1/runs")):
        _envelope(response, 429, "RATE_LIMITED")
        assert response.headers["Retry-After"] == "1"
    assert client.get(f"/v1/runs/{run_id}/callback").status_code == 200
    assert client.post(MODEL_RUNS, json=run_body(junk_url)).status_code == 201  # creates are not reads
    stats = runflow.stats()
    assert stats["get_rate_limited"] == 2 and stats["create_rate_limited"] == 0
    assert runflow.wait_idle(30)


def test_list_4xx_refuses_the_list_only(runflow: LocalRunflow, client: httpx.Client, junk_url: str) -> None:
    run_id = create(client, run_body(junk_url))
    runflow.set_faults(FaultSettings(list_4xx=1.0))
    refused = client.get("/v1/runs", params={"q": "status_code:failed"})
    _envelope(refused, 403, "PERMISSION_DENIED")
    assert client.get(f"/v1/runs/{run_id}").status_code == 200
    assert runflow.stats()["list_refused"] == 1

    # A read limit is met before the permission check.
    runflow.set_faults(FaultSettings(list_4xx=1.0, get_429=1.0))
    _envelope(client.get("/v1/runs"), 429, "RATE_LIMITED")
    assert runflow.stats()["list_refused"] == 1 and runflow.stats()["faults_fired"]["list_4xx"] == 1
    assert runflow.wait_idle(30)


def test_list_lag_hides_new_runs_from_the_list_only(
    runflow: LocalRunflow, client: httpx.Client, clock: ManualClock, junk_url: str
) -> None:
    runflow.set_faults(FaultSettings(list_lag_s=12.0))
    run_id = create(client, run_body(junk_url, client_ref="lagging"))
    by_ref = {"q": "client_ref.EQ:'lagging'"}
    assert client.get("/v1/runs", params=by_ref).json()["items"] == []
    assert client.get("/v1/runs").json()["items"] == []
    # The run itself is there at once, client_ref included (what a callback's run is checked by).
    shown = client.get(f"/v1/runs/{run_id}").json()
    assert shown["id"] == run_id and shown["client_ref"] == "lagging"
    clock.advance(13.0)
    assert [r["id"] for r in client.get("/v1/runs", params=by_ref).json()["items"]] == [run_id]
    # The run's age is checked at each list: a longer lag hides it again, none shows it at once.
    runflow.set_faults(FaultSettings(list_lag_s=600.0))
    assert client.get("/v1/runs", params=by_ref).json()["items"] == []
    runflow.set_faults(FaultSettings())
    assert [r["id"] for r in client.get("/v1/runs", params=by_ref).json()["items"]] == [run_id]
    assert runflow.wait_idle(30)
