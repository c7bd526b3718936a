"""Callbacks as a receiver sees them: body, headers, signature, retries, history, redelivery."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from backdrop.signatures import verify
from backdrop_local.runflow import FaultSettings, LocalRunflow
from tests.integration.local_runflow.local_runflow_support import (
    MODEL_RUNS,
    ManualClock,
    SilentReceiver,
    Upstream,
    api,
    create,
    run_body,
    running,
    wait_terminal,
)

PAYLOAD_KEYS = [
    "event",
    "run_id",
    "status",
    "output",
    "duration_ms",
    "created_at",
    "completed_at",
    "metadata",
]


def _deliveries(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/runs/{run_id}/callback")
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()
    return records


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_succeeded_callback_body_headers_and_signature(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, photo_url: str
) -> None:
    created = client.post("/v1/callback-secrets", json={"label": "receiver"}).json()
    secret = created["plain_secret"]
    body = run_body(photo_url, callback_url=upstream.callback_url(), metadata={"job": "j-1", "note": "crème"})
    run_id = create(client, body)
    [callback] = upstream.wait_for(1, timeout=60)

    assert callback.headers["Content-Type"] == "application/json"
    assert callback.headers["Runflow-Request-Id"]
    expected = hmac.new(secret.encode(), callback.body, hashlib.sha256).hexdigest()
    assert callback.headers["Runflow-Signature"] == expected
    assert verify(callback.body, callback.headers["Runflow-Signature"], [secret])  # the project's own check

    payload = json.loads(callback.body)
    assert list(payload) == PAYLOAD_KEYS
    assert payload["event"] == "run.completed" and payload["status"] == "succeeded"
    assert payload["run_id"] == run_id and payload["metadata"] == {"job": "j-1", "note": "crème"}
    for key in ("created_at", "completed_at"):
        assert payload[key].endswith("+00:00") and "Z" not in payload[key]
        assert datetime.fromisoformat(payload[key]).utcoffset() == UTC.utcoffset(None)
    assert isinstance(payload["duration_ms"], int) and payload["duration_ms"] >= 0
    output_url = payload["output"]["outputs"][0]["url"]
    assert httpx.get(output_url, trust_env=False).status_code == 200

    assert runflow.wait_idle(30)
    [record] = _deliveries(client, run_id)
    assert record["payload_bytes"] == callback.body.decode("utf-8")
    assert record["payload"] == payload
    assert record["signing_secret_id"] == created["id"]
    assert record["is_automatic"] is True and record["status_code"] == "succeeded"
    assert record["attempt_count"] == 1 and record["max_attempts"] == 3
    assert record["attempts"][0]["status_code"] == 200
    assert isinstance(record["attempts"][0]["response_time_ms"], int)
    run = client.get(f"/v1/runs/{run_id}").json()
    assert run["completed_at"] == payload["completed_at"] and run["duration_ms"] == payload["duration_ms"]


def test_failed_run_callback_has_null_output_and_no_signature_without_a_secret(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    run_id = create(client, run_body(junk_url, callback_url=upstream.callback_url()))
    [callback] = upstream.wait_for(1)
    payload = json.loads(callback.body)
    assert payload["event"] == "run.failed" and payload["status"] == "failed"
    assert payload["output"] is None and payload["metadata"] is None and payload["run_id"] == run_id
    assert "Runflow-Signature" not in callback.headers
    assert runflow.wait_idle(30)
    assert _deliveries(client, run_id)[0]["signing_secret_id"] is None


def test_5xx_is_retried_with_the_same_bytes_until_success(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    runflow.create_callback_secret(label="t")
    url = upstream.callback_url("flaky", answers=[500, 502])
    run_id = create(client, run_body(junk_url, callback_url=url))
    attempts = upstream.wait_for(3, "flaky")
    # Idle means no delivery is pending: every attempt there will be has been answered.
    assert runflow.wait_idle(30)
    assert len(upstream.received("flaky")) == 3
    assert len({a.body for a in attempts}) == 1
    assert len({a.headers["Runflow-Signature"] for a in attempts}) == 1
    assert len({a.headers["Runflow-Request-Id"] for a in attempts}) == 1
    # Backoff between attempts (the test instance uses 0.05 s then 0.1 s).
    assert attempts[1].at - attempts[0].at >= 0.04 and attempts[2].at - attempts[1].at >= 0.09
    [record] = _deliveries(client, run_id)
    assert record["status_code"] == "succeeded"
    assert [a["status_code"] for a in record["attempts"]] == [500, 502, 200]
    assert [a["attempt_number"] for a in record["attempts"]] == [1, 2, 3]
    stats = runflow.stats()
    assert stats["callbacks_sent"] == 3 and stats["callback_attempts_failed"] == 2


def test_gives_up_after_three_attempts(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    url = upstream.callback_url("down", answers=[503] * 10)
    run_id = create(client, run_body(junk_url, callback_url=url))
    upstream.wait_for(3, "down")
    assert runflow.wait_idle(30)
    assert len(upstream.received("down")) == 3
    [record] = _deliveries(client, run_id)
    assert record["status_code"] == "failed" and record["attempt_count"] == 3
    assert record["failure_reason_code"] and record["completed_at"] is not None


def test_4xx_ends_the_delivery_without_retry(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    url = upstream.callback_url("strict", answers=[400])
    run_id = create(client, run_body(junk_url, callback_url=url))
    upstream.wait_for(1, "strict")
    assert runflow.wait_idle(30)
    assert len(upstream.received("strict")) == 1
    [record] = _deliveries(client, run_id)
    assert record["status_code"] == "failed"
    assert [a["status_code"] for a in record["attempts"]] == [400]


def test_network_errors_are_retried(runflow: LocalRunflow, client: httpx.Client, junk_url: str) -> None:
    closed = f"http://127.0.0.1:{_free_port()}/hook"
    run_id = create(client, run_body(junk_url, callback_url=closed))
    assert runflow.wait_idle(30)
    [record] = _deliveries(client, run_id)
    assert record["status_code"] == "failed" and record["attempt_count"] == 3
    assert all(a["status_code"] is None and a["error_message"] for a in record["attempts"])


def test_redelivery_sends_a_fresh_payload_and_shows_in_history(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, photo_url: str, clock: ManualClock
) -> None:
    runflow.create_callback_secret()
    run_id = create(client, run_body(photo_url, callback_url=upstream.callback_url()))
    [first] = upstream.wait_for(1, timeout=60)
    assert runflow.wait_idle(30)
    clock.advance(5.0)  # output URLs carry whole-second expiries: move the emulator's clock on

    response = client.post(f"/v1/runs/{run_id}/callback-redeliveries")
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["is_automatic"] is False and record["run_id"] == run_id
    second = upstream.wait_for(2)[1]
    assert second.headers["Runflow-Request-Id"] != first.headers["Runflow-Request-Id"]
    old, new = json.loads(first.body), json.loads(second.body)
    assert list(new) == list(old) and new["run_id"] == old["run_id"] and new["status"] == "succeeded"
    old_url, new_url = old["output"]["outputs"][0]["url"], new["output"]["outputs"][0]["url"]
    assert new_url != old_url
    expiry = {u: int(parse_qs(urlsplit(u).query)["expires"][0]) for u in (old_url, new_url)}
    assert expiry[new_url] == expiry[old_url] + 5
    assert httpx.get(new_url, trust_env=False).status_code == 200

    assert runflow.wait_idle(30)
    history = _deliveries(client, run_id)
    assert [r["is_automatic"] for r in history] == [True, False]
    assert [r["status_code"] for r in history] == ["succeeded", "succeeded"]
    assert history[1]["id"] == record["id"] and history[1]["payload_bytes"] == second.body.decode()


def test_redelivery_refused_for_unfinished_runs_and_runs_without_callback(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    gate = threading.Event()
    held = upstream.add_file("held.jpg", b"not an image", gate=gate)
    pending = create(client, run_body(held, callback_url=upstream.callback_url()))
    assert upstream.fetch_started("held.jpg").wait(30)  # the run is running, held on its input
    refused = client.post(f"/v1/runs/{pending}/callback-redeliveries")
    assert refused.status_code == 409 and refused.json()["code"] == "CONFLICT"
    gate.set()
    silent = create(client, run_body(junk_url))
    assert wait_terminal(client, silent)["status_code"] == "failed"
    no_url = client.post(f"/v1/runs/{silent}/callback-redeliveries")
    assert no_url.status_code == 409 and no_url.json()["code"] == "CONFLICT"
    assert _deliveries(client, silent) == []
    missing = client.post("/v1/runs/01900000-0000-7000-8000-000000000000/callback-redeliveries")
    assert missing.status_code == 404
    assert runflow.wait_idle(30)


def test_restarting_the_sender_loses_no_pending_delivery(upstream: Upstream, junk_url: str) -> None:
    # No window to hit: nothing is attempted while callbacks are held, so each delivery is seen
    # pending (and restarted) whatever the machine's speed; the delays only set the due times.
    options: dict[str, Any] = {"allow_http_origins": (upstream.origin,), "callback_retry_delays": (2.0, 2.0)}
    with running(**options) as runflow, api(runflow) as client:
        # A delivery waiting for its first attempt survives a restart...
        runflow.set_faults(FaultSettings(callback_delay_s=2.0))
        with runflow.holding_callbacks():
            waiting = client.post(
                MODEL_RUNS, json=run_body(junk_url, callback_url=upstream.callback_url("a"))
            )
            assert wait_terminal(client, waiting.json()["id"])["status_code"] == "failed"
            [pending] = _deliveries(client, waiting.json()["id"])
            assert pending["status_code"] == "pending" and pending["attempt_count"] == 0
            runflow.restart_callback_sender()
        [arrived] = upstream.wait_for(1, "a")
        # ...and is still sent at its recorded time, not at once by the new threads.
        assert arrived.wall >= datetime.fromisoformat(pending["next_attempt_at"]).timestamp() - 0.05

        # ...and so does one between a failed attempt and its retry.
        runflow.set_faults(FaultSettings())
        answered = threading.Event()
        url = upstream.callback_url("b", answers=[500], gate=answered)
        retried = client.post(MODEL_RUNS, json=run_body(junk_url, callback_url=url)).json()
        upstream.wait_for(1, "b")  # the first attempt is in flight, its answer held
        with runflow.holding_callbacks():
            answered.set()  # the 500 arrives; the retry is due 2 s later, and held
            # The receiver answered before the emulator records the outcome: wait for the record.
            deadline = time.monotonic() + 30
            while (between := _deliveries(client, retried["id"])[0])["attempt_count"] == 0:
                assert time.monotonic() < deadline, between
                time.sleep(0.01)
            assert between["status_code"] == "pending" and between["attempt_count"] == 1
            runflow.restart_callback_sender()
            assert _deliveries(client, retried["id"])[0]["attempt_count"] == 1
        upstream.wait_for(2, "b")

        assert runflow.wait_idle(30)
        assert len(upstream.received("a")) == 1 and len(upstream.received("b")) == 2
        assert _deliveries(client, waiting.json()["id"])[0]["status_code"] == "succeeded"
        assert [a["status_code"] for a in _deliveries(client, retried["id"])[0]["attempts"]] == [500, 200]


def test_callbacks_are_signed_with_the_current_secret_after_a_promotion(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    old = client.post("/v1/callback-secrets", json={"label": "old"}).json()
    new = client.post("/v1/callback-secrets", json={"label": "new"}).json()
    assert client.patch(f"/v1/callback-secrets/{new['id']}", json={"is_current": True}).status_code == 200
    run_id = create(client, run_body(junk_url, callback_url=upstream.callback_url()))
    [callback] = upstream.wait_for(1)
    signature = callback.headers["Runflow-Signature"]
    assert verify(callback.body, signature, [new["plain_secret"]])
    assert not verify(callback.body, signature, [old["plain_secret"]])
    assert runflow.wait_idle(30)
    assert _deliveries(client, run_id)[0]["signing_secret_id"] == new["id"]
    assert client.get(f"/v1/callback-secrets/{new['id']}").json()["last_used_at"] is not None


# ---------------------------------------------------------------------------- the documented defaults
def test_default_schedule_is_three_attempts_one_then_two_seconds_apart(
    upstream: Upstream, junk_url: str
) -> None:
    url = upstream.callback_url("down", answers=[500, 500, 500])
    with running(allow_http_origins=(upstream.origin,)) as runflow, api(runflow) as client:
        run_id = create(client, run_body(junk_url, callback_url=url))
        first, second, third = upstream.wait_for(3, "down", timeout=60)
        assert runflow.wait_idle(30)
        [record] = _deliveries(client, run_id)
    # The documented 1 s then 2 s; generous upper bounds tell the two apart on a loaded machine.
    assert 0.95 <= second.at - first.at < 1.9
    assert 1.95 <= third.at - second.at < 3.9
    assert len(upstream.received("down")) == 3
    assert record["max_attempts"] == 3 and [a["status_code"] for a in record["attempts"]] == [500] * 3
    assert record["status_code"] == "failed" and record["failure_reason_code"] == "MAX_ATTEMPTS_EXCEEDED"


def test_an_unanswered_attempt_times_out_after_ten_seconds(
    upstream: Upstream, silent: SilentReceiver, junk_url: str
) -> None:
    # One attempt only (no retry delays), with the default attempt timeout.
    with running(allow_http_origins=(upstream.origin,), callback_retry_delays=()) as runflow:
        with api(runflow) as client:
            run_id = create(client, run_body(junk_url, callback_url=silent.url))
            assert runflow.wait_idle(60)
            [record] = _deliveries(client, run_id)
        stats = runflow.stats()
    [attempt] = record["attempts"]
    assert attempt["status_code"] is None and "timeout" in attempt["error_message"].lower()
    assert 9_900 <= attempt["response_time_ms"] < 20_000
    assert len(silent.arrivals) == 1
    assert record["status_code"] == "failed" and record["max_attempts"] == 1
    # A timed-out attempt got no HTTP answer: it is not in the answer-time figures.
    assert stats["callback_answer_ms"]["count"] == 0 and stats["callback_attempts_by_status"] == {}


def test_redirects_are_not_followed(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    target = upstream.callback_url("target")
    url = upstream.callback_url("redirecting", answers=[302], location=target)
    run_id = create(client, run_body(junk_url, callback_url=url))
    assert runflow.wait_idle(30)
    assert len(upstream.received("redirecting")) == 1
    assert upstream.received("target") == []
    [record] = _deliveries(client, run_id)
    assert [a["status_code"] for a in record["attempts"]] == [302]
    assert record["status_code"] == "failed" and record["failure_reason_code"] == "NON_RETRYABLE_STATUS"


def test_answer_times_and_statuses_of_attempts_are_counted(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    slow = upstream.callback_url("slow", answers=[503], answer_delay_s=0.2)
    create(client, run_body(junk_url, callback_url=slow))
    closed = f"http://127.0.0.1:{_free_port()}/hook"
    create(client, run_body(junk_url, callback_url=closed))  # three attempts, none answered
    assert runflow.wait_idle(30)
    stats = runflow.stats()
    assert stats["callback_attempts_by_status"] == {"200": 1, "503": 1}
    timing = stats["callback_answer_ms"]
    assert set(timing) == {"count", "p50", "p99", "max"}
    assert timing["count"] == 2
    # Each answer took the receiver's 0.2 s at least; of two samples p50 is the faster, p99 the slower.
    assert 200.0 <= timing["p50"] <= timing["p99"] == timing["max"] < 10_000
    assert stats["callbacks_sent"] == 5 and stats["callback_attempts_failed"] == 4
