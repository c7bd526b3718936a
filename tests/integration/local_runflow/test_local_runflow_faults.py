"""Fault injection through ``/_emulator/faults``: each fault does what it says, and seeds repeat."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx
import pytest

from backdrop_local.runflow import FaultSettings, LocalRunflow
from tests.integration.local_runflow.local_runflow_support import (
    MODEL_RUNS,
    Upstream,
    api,
    create,
    photo,
    run_body,
    running,
    wait_terminal,
)


def _set_faults(runflow: LocalRunflow, **settings: Any) -> dict[str, Any]:
    response = httpx.post(f"{runflow.url}/_emulator/faults", json=settings, trust_env=False)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_create_429_and_5xx_answer_before_anything_is_created(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    shown = _set_faults(runflow, create_429=1.0)
    assert shown["create_429"] == 1.0 and shown["processing_failure"] == 0.0
    assert httpx.get(f"{runflow.url}/_emulator/faults", trust_env=False).json() == shown
    limited = client.post(MODEL_RUNS, json=run_body(junk_url), headers={"Idempotency-Key": "k1"})
    assert limited.status_code == 429
    assert limited.json()["code"] == "RATE_LIMITED" and set(limited.json()) == {"code", "message", "errors"}

    _set_faults(runflow, create_5xx=1.0)
    unavailable = client.post(MODEL_RUNS, json=run_body(junk_url), headers={"Idempotency-Key": "k1"})
    assert unavailable.status_code >= 500 and unavailable.json()["code"] == "MODEL_UNAVAILABLE"

    stats = runflow.stats()
    assert stats["runs_created"] == 0 and client.get("/v1/runs").json()["items"] == []
    assert stats["faults_fired"]["create_429"] == 1 and stats["faults_fired"]["create_5xx"] == 1

    _set_faults(runflow)  # an empty body clears every fault
    retried = client.post(MODEL_RUNS, json=run_body(junk_url), headers={"Idempotency-Key": "k1"})
    assert retried.status_code == 201  # the key was not burnt by the refused attempts
    assert runflow.wait_idle(30)


def test_create_answer_lost_still_creates_the_run(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    _set_faults(runflow, create_answer_lost=1.0)
    lost = client.post(MODEL_RUNS, json=run_body(junk_url), headers={"Idempotency-Key": "k-lost"})
    assert lost.status_code == 504 and lost.json()["code"] == "GATEWAY_TIMEOUT"
    assert runflow.stats()["runs_created"] == 1 and runflow.stats()["create_answers_lost"] == 1

    _set_faults(runflow)
    (created,) = client.get("/v1/runs").json()["items"]
    replay = client.post(MODEL_RUNS, json=run_body(junk_url), headers={"Idempotency-Key": "k-lost"})
    assert replay.status_code == 201 and replay.json()["id"] == created["id"]  # same body: same run
    other = run_body(junk_url, client_ref="another body")
    conflict = client.post(MODEL_RUNS, json=other, headers={"Idempotency-Key": "k-lost"})
    assert conflict.status_code == 409 and conflict.json()["code"] == "CONFLICT"
    assert runflow.stats()["runs_created"] == 1
    assert runflow.wait_idle(30)


def test_processing_failure_fails_the_run(
    runflow: LocalRunflow, client: httpx.Client, photo_url: str
) -> None:
    _set_faults(runflow, processing_failure=1.0)
    run = wait_terminal(client, create(client, run_body(photo_url)))
    assert run["status_code"] == "failed" and run["failure_code"] == "PROCESSING_FAILED"
    assert run["error"]["code"] == "PROCESSING_FAILED" and run["failure_stage_code"] == "processing"


def test_callback_drop_sends_nothing(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    _set_faults(runflow, callback_drop=1.0)
    run_id = create(client, run_body(junk_url, callback_url=upstream.callback_url()))
    assert wait_terminal(client, run_id)["status_code"] == "failed"
    # Idle: the run is over and no delivery is pending, so nothing can still be sent.
    assert runflow.wait_idle(30)
    assert upstream.received() == []
    assert client.get(f"/v1/runs/{run_id}/callback").json() == []
    assert runflow.stats()["callbacks_dropped"] == 1


def test_callback_duplicate_delivers_the_same_callback_twice(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    runflow.create_callback_secret()
    _set_faults(runflow, callback_duplicate=1.0)
    run_id = create(client, run_body(junk_url, callback_url=upstream.callback_url()))
    first, second = upstream.wait_for(2)
    assert first.body == second.body
    assert first.headers["Runflow-Signature"] == second.headers["Runflow-Signature"]
    assert json.loads(first.body)["run_id"] == run_id
    assert runflow.wait_idle(30)
    assert len(upstream.received()) == 2
    records = client.get(f"/v1/runs/{run_id}/callback").json()
    assert len(records) == 2 and all(r["status_code"] == "succeeded" for r in records)


def test_callback_delay_holds_the_first_attempt(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    _set_faults(runflow, callback_delay_s=1.0)
    run_id = create(client, run_body(junk_url, callback_url=upstream.callback_url()))
    run = wait_terminal(client, run_id)
    assert run["status_code"] == "failed"
    completed = datetime.fromisoformat(run["completed_at"]).timestamp()
    [record] = client.get(f"/v1/runs/{run_id}/callback").json()
    # The delivery is created with the run's end; its first attempt is due a second later.
    due = datetime.fromisoformat(record["created_at"]).timestamp() + 1.0
    [callback] = upstream.wait_for(1)
    assert callback.wall >= due - 0.01 and callback.wall - completed >= 0.99


def test_output_fetch_error_answers_500(upstream: Upstream) -> None:
    url = upstream.add_file("small.jpg", photo(100, 80))
    with running(allow_http_origins=(upstream.origin,)) as runflow, api(runflow) as client:
        run = wait_terminal(client, create(client, run_body(url)))
        assert run["status_code"] == "succeeded"
        output_url = run["output"]["outputs"][0]["url"]
        runflow.set_faults(FaultSettings(output_fetch_error=1.0))
        assert httpx.get(output_url, trust_env=False).status_code == 500
        runflow.set_faults(FaultSettings())
        assert httpx.get(output_url, trust_env=False).status_code == 200


@pytest.mark.parametrize(
    "settings",
    [
        {"create_429": 1.5},
        {"callback_drop": -0.1},
        {"processing_failure": "often"},
        {"output_fetch_error": True},
        {"callback_delay_s": -1},
        {"no_such_fault": 0.5},
        {"seed": "seven"},
        {"idempotency_keys": "sometimes"},
        {"idempotency_keys": 1},
        {"rate_limit_headers": "X-RateLimit"},
        {"retry_after_s": 3601},
        {"cancel_spelling": "Canceled"},
        {"processing": None},
        {"outputs_per_run": 0},
        {"outputs_per_run": 9},
        {"outputs_per_run": 2.0},
        {"outputs_per_run": True},
        {"instant_output_bytes": -1},
        {"instant_output_bytes": 2**31},
        {"dispatch_delay_s": "1"},
        {"get_429": 1.01},
        {"outcome_partial": -0.5},
    ],
)
def test_invalid_fault_settings_are_422(runflow: LocalRunflow, settings: dict[str, Any]) -> None:
    response = httpx.post(f"{runflow.url}/_emulator/faults", json=settings, trust_env=False)
    assert response.status_code == 422 and response.json()["code"] == "VALIDATION_ERROR"
    assert runflow.faults == FaultSettings()


def test_every_bad_setting_is_listed_at_once(runflow: LocalRunflow) -> None:
    bad = {
        "create_answer_reset": 2,
        "idempotency_keys": "maybe",
        "outputs_per_run": 20,
        "processing": "fast",
        "instant_output_bytes": 1.5,
        "typo": 1,
        "create_429": 0.5,
    }
    response = httpx.post(f"{runflow.url}/_emulator/faults", json=bad, trust_env=False)
    assert response.status_code == 422
    errors = {error["loc"][-1]: error["type"] for error in response.json()["errors"]}
    assert errors == {
        "create_answer_reset": "value_error",
        "idempotency_keys": "literal_error",
        "outputs_per_run": "value_error",
        "processing": "literal_error",
        "instant_output_bytes": "int_type",
        "typo": "extra_forbidden",
    }


def test_new_settings_show_their_defaults_and_accept_their_values(runflow: LocalRunflow) -> None:
    shown = httpx.get(f"{runflow.url}/_emulator/faults", trust_env=False).json()
    assert {key: shown[key] for key in DEFAULTS} == DEFAULTS
    changed = {
        "idempotency_keys": "ignore",
        "create_answer_reset": 0.25,
        "rate_limit_headers": "both",
        "retry_after_s": 7,
        "get_429": 0.5,
        "list_4xx": 1,
        "outcome_canceled": 0.1,
        "cancel_spelling": "cancelled",
        "outcome_partial": 0.2,
        "outcome_timed_out": 0.3,
        "outcome_expired": 0.4,
        "outcome_no_outputs": 0.5,
        "failure_output_envelope": 0.6,
        "dispatch_delay_s": 2.5,
        "list_lag_s": 12,
        "outputs_per_run": 8,
        "processing": "instant",
        "instant_output_bytes": 200_000_000,
    }
    body = _set_faults(runflow, **changed)
    assert {key: body[key] for key in changed} == changed
    assert isinstance(body["retry_after_s"], float) and isinstance(body["outputs_per_run"], int)
    assert runflow.faults == FaultSettings(**changed)
    assert _set_faults(runflow) == {**shown, "seed": None}  # an empty body restores every default


DEFAULTS = {
    "idempotency_keys": "honour",
    "create_answer_reset": 0.0,
    "rate_limit_headers": "none",
    "retry_after_s": 1.0,
    "get_429": 0.0,
    "list_4xx": 0.0,
    "outcome_canceled": 0.0,
    "cancel_spelling": "canceled",
    "outcome_partial": 0.0,
    "outcome_timed_out": 0.0,
    "outcome_expired": 0.0,
    "outcome_no_outputs": 0.0,
    "failure_output_envelope": 0.0,
    "dispatch_delay_s": 0.0,
    "list_lag_s": 0.0,
    "outputs_per_run": 1,
    "processing": "real",
    "instant_output_bytes": 0,
}


def test_a_seed_makes_faults_repeat(upstream: Upstream, junk_url: str) -> None:
    def pattern(runflow: LocalRunflow) -> list[int]:
        _set_faults(runflow, create_429=0.5, seed=7)
        with api(runflow) as client:
            codes = [client.post(MODEL_RUNS, json=run_body(junk_url)).status_code for _ in range(16)]
        assert runflow.wait_idle(30)
        return codes

    with running(allow_http_origins=(upstream.origin,)) as first:
        one = pattern(first)
        again = pattern(first)  # posting the seed again restarts the sequence
    with running(allow_http_origins=(upstream.origin,)) as second:
        two = pattern(second)
    assert one == again == two
    assert set(one) == {201, 429}
