"""Every way a run can end, as a client sees it in the run object and in its callback: canceled (two
spellings, injected or by the admin route), timed out, expired, partially succeeded, succeeded with
outputs missing from the callback, failed with an error envelope; and the dispatching state."""

from __future__ import annotations

import io
import json
import threading
from datetime import datetime
from typing import Any

import httpx
import pytest
from PIL import Image

from backdrop.signatures import verify
from backdrop_local.runflow import FaultSettings, LocalRunflow
from tests.integration.local_runflow.local_runflow_support import (
    Upstream,
    create,
    photo,
    run_body,
    wait_status,
    wait_terminal,
)

COLOUR = (30, 120, 220)


def _instant(**settings: Any) -> FaultSettings:
    """Instant processing: these tests are about how runs end, not about the pixels."""
    return FaultSettings(processing="instant", **settings)


def _callback(upstream: Upstream, name: str = "hook") -> dict[str, Any]:
    [received] = upstream.wait_for(1, name, timeout=60)
    body: dict[str, Any] = json.loads(received.body)
    return body


def _fetch_png(url: str) -> Image.Image:
    response = httpx.get(url, timeout=30, trust_env=False)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


@pytest.fixture
def small_url(upstream: Upstream) -> str:
    return upstream.add_file("small.jpg", photo(96, 64))


# ---------------------------------------------------------------------------- canceled
@pytest.mark.parametrize(("spelling", "code"), [("canceled", "CANCELED"), ("cancelled", "CANCELLED")])
def test_injected_cancel_in_either_spelling(
    runflow: LocalRunflow,
    client: httpx.Client,
    upstream: Upstream,
    small_url: str,
    spelling: str,
    code: str,
) -> None:
    runflow.set_faults(_instant(outcome_canceled=1.0, cancel_spelling=spelling))  # type: ignore[arg-type]
    run_id = create(client, run_body(small_url, COLOUR, callback_url=upstream.callback_url()))
    run = wait_terminal(client, run_id)
    assert run["status_code"] == spelling
    assert run["output"] is None and run["cost"] is None and run["completed_at"] is not None
    assert run["failure_code"] == code and run["failure_message"]
    assert run["error"] == {"code": code, "message": run["failure_message"]}
    callback = _callback(upstream)
    assert callback["event"] == "run.cancelled"
    assert callback["status"] == spelling and callback["output"] is None
    assert callback["completed_at"] == run["completed_at"]
    assert runflow.wait_idle(30)
    stats = runflow.stats()
    assert stats["runs_by_status"][spelling] == 1 and stats["runs_by_status"]["succeeded"] == 0
    listed = client.get("/v1/runs", params={"q": f"status_code:{spelling}"}).json()["items"]
    assert [item["id"] for item in listed] == [run_id]


def test_admin_cancel_of_a_running_run_drops_its_late_result(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream
) -> None:
    secret = runflow.create_callback_secret()
    gate = threading.Event()
    held = upstream.add_file("held.jpg", photo(96, 64), gate=gate)
    run_id = create(client, run_body(held, COLOUR, callback_url=upstream.callback_url()))
    assert upstream.fetch_started("held.jpg").wait(30)
    assert client.get(f"/v1/runs/{run_id}").json()["status_code"] == "running"

    cancel = client.post(f"/v1/admin/runs/{run_id}/cancellation", json={"reason": "operator stop"})
    assert cancel.status_code == 201, cancel.text
    canceled = cancel.json()
    assert canceled["id"] == run_id and canceled["status_code"] == "canceled"
    assert canceled["failure_code"] == "CANCELED" and canceled["failure_message"] == "operator stop"
    assert canceled["completed_at"] is not None and canceled["output"] is None
    [received] = upstream.wait_for(1, timeout=60)
    assert verify(received.body, received.headers["Runflow-Signature"], [secret])
    assert received.headers["Runflow-Request-Id"]
    callback = json.loads(received.body)
    assert callback["event"] == "run.cancelled" and callback["status"] == "canceled"
    assert callback["run_id"] == run_id and callback["output"] is None

    gate.set()  # the model's result now arrives, after the cancellation
    assert runflow.wait_idle(30)
    after = client.get(f"/v1/runs/{run_id}").json()
    assert after == {**canceled, "links": after["links"]}  # nothing changed (links are the same too)
    stats = runflow.stats()
    assert stats["late_results_dropped"] == 1 and stats["admin_cancellations"] == 1
    assert stats["runs_by_status"]["canceled"] == 1 and stats["runs_by_status"]["succeeded"] == 0

    # Already terminal: 200 with the run unchanged, and no second callback.
    again = client.post(f"/v1/admin/runs/{run_id}/cancellation")
    assert again.status_code == 200 and again.json()["completed_at"] == canceled["completed_at"]
    assert again.json()["failure_message"] == "operator stop"
    assert runflow.wait_idle(30)
    assert len(upstream.received()) == 1
    assert len(client.get(f"/v1/runs/{run_id}/callback").json()) == 1
    assert runflow.stats()["admin_cancellations"] == 1


def test_admin_cancel_of_a_finished_run_changes_nothing(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    run_id = create(client, run_body(junk_url, callback_url=upstream.callback_url()))
    failed = wait_terminal(client, run_id)
    assert runflow.wait_idle(30)
    response = client.post(f"/v1/admin/runs/{run_id}/cancellation", json={})
    assert response.status_code == 200
    assert response.json()["status_code"] == "failed"
    assert response.json()["completed_at"] == failed["completed_at"]
    assert runflow.wait_idle(30)
    assert len(upstream.received()) == 1 and runflow.stats()["admin_cancellations"] == 0


def test_admin_cancel_refuses_bad_bodies_and_unknown_runs(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    run_id = create(client, run_body(junk_url))
    bad = client.post(f"/v1/admin/runs/{run_id}/cancellation", json={"reason": "no", "force": True})
    assert bad.status_code == 422 and bad.json()["code"] == "VALIDATION_ERROR"
    assert sorted(tuple(e["loc"]) for e in bad.json()["errors"]) == [("body", "force"), ("body", "reason")]
    long = client.post(f"/v1/admin/runs/{run_id}/cancellation", json={"reason": "x" * 501})
    assert long.status_code == 422
    unknown = client.post("/v1/admin/runs/01900000-0000-7000-8000-000000000000/cancellation")
    assert unknown.status_code == 404 and unknown.json()["code"] == "RUN_NOT_FOUND"
    with httpx.Client(base_url=runflow.url, trust_env=False) as anonymous:
        assert anonymous.post(f"/v1/admin/runs/{run_id}/cancellation").status_code == 401
    assert runflow.wait_idle(30)


# ---------------------------------------------------------------------------- dispatching
def test_runs_wait_in_dispatching_for_the_dispatch_delay(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, small_url: str
) -> None:
    runflow.set_faults(_instant(dispatch_delay_s=3600))
    run_id = create(client, run_body(small_url, COLOUR))
    run = wait_status(client, run_id, ("dispatching",))
    assert run["status_code"] == "dispatching" and run["started_at"] is None
    assert runflow.stats()["runs_by_status"]["dispatching"] == 1
    assert not runflow.wait_idle(0)

    # A shorter delay applies to the run already waiting.
    runflow.set_faults(_instant())
    done = wait_terminal(client, run_id)
    assert done["status_code"] == "succeeded" and done["started_at"] is not None

    runflow.set_faults(_instant(dispatch_delay_s=1.0))
    timed = wait_terminal(client, create(client, run_body(small_url, COLOUR)))
    started, created = (datetime.fromisoformat(timed[key]) for key in ("started_at", "created_at"))
    assert (started - created).total_seconds() >= 1.0
    assert runflow.wait_idle(30)


def test_a_run_canceled_while_dispatching_never_runs(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, small_url: str
) -> None:
    runflow.set_faults(_instant(dispatch_delay_s=3600, cancel_spelling="cancelled"))
    run_id = create(client, run_body(small_url, COLOUR, callback_url=upstream.callback_url()))
    assert wait_status(client, run_id, ("dispatching",))["status_code"] == "dispatching"
    response = client.post(f"/v1/admin/runs/{run_id}/cancellation")
    assert response.status_code == 201 and response.json()["status_code"] == "cancelled"
    assert response.json()["started_at"] is None
    assert _callback(upstream)["status"] == "cancelled"
    assert runflow.wait_idle(30)  # the worker stopped waiting: nothing is left dispatching
    assert runflow.stats()["runs_by_status"]["dispatching"] == 0
    assert runflow.stats()["late_results_dropped"] == 0
    assert not upstream.fetch_started("small.jpg").is_set()


# ---------------------------------------------------------------------------- failed-like endings
@pytest.mark.parametrize(
    ("setting", "status"), [("outcome_timed_out", "timed_out"), ("outcome_expired", "expired")]
)
def test_timed_out_and_expired_runs(
    runflow: LocalRunflow,
    client: httpx.Client,
    upstream: Upstream,
    small_url: str,
    setting: str,
    status: str,
) -> None:
    runflow.set_faults(_instant(**{setting: 1.0}))
    run_id = create(client, run_body(small_url, COLOUR, callback_url=upstream.callback_url()))
    run = wait_terminal(client, run_id)
    assert run["status_code"] == status and run["completed_at"] is not None
    assert run["failure_code"] == status.upper() and run["output"] is None
    assert run["error"]["code"] == status.upper()
    callback = _callback(upstream)
    assert callback["event"] == "run.failed" and callback["status"] == status
    assert callback["output"] is None
    assert runflow.wait_idle(30)
    assert runflow.stats()["runs_by_status"][status] == 1


def test_failure_output_envelope_on_failed_and_timed_out_runs(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str, small_url: str
) -> None:
    runflow.set_faults(_instant(failure_output_envelope=1.0))
    unreadable = create(client, run_body(junk_url, callback_url=upstream.callback_url("unreadable")))
    run = wait_terminal(client, unreadable)
    assert run["status_code"] == "failed" and run["output"] is None  # the run object keeps null
    assert _callback(upstream, "unreadable")["output"] == {
        "error": {"code": "INPUT_UNREADABLE", "message": run["failure_message"]}
    }

    runflow.set_faults(_instant(failure_output_envelope=1.0, processing_failure=1.0))
    injected = create(client, run_body(small_url, callback_url=upstream.callback_url("injected")))
    failure = _callback(upstream, "injected")
    assert failure["event"] == "run.failed"
    assert failure["output"] == {
        "error": {"code": "PROCESSING_FAILED", "message": "the model failed to process the image"}
    }

    runflow.set_faults(_instant(failure_output_envelope=1.0, outcome_timed_out=1.0))
    create(client, run_body(small_url, callback_url=upstream.callback_url("late")))
    late = _callback(upstream, "late")
    assert late["status"] == "timed_out" and late["output"]["error"]["code"] == "TIMED_OUT"

    # The shape is the run's: a redelivery made with the fault off still carries the envelope.
    runflow.set_faults(_instant())
    assert runflow.wait_idle(30)
    redelivered = client.post(f"/v1/runs/{injected}/callback-redeliveries")
    assert redelivered.status_code == 201
    assert redelivered.json()["payload"]["output"] == failure["output"]
    assert runflow.stats()["faults_fired"]["failure_output_envelope"] == 3
    assert runflow.wait_idle(30)


def test_without_the_envelope_setting_failed_callbacks_carry_null(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    create(client, run_body(junk_url, callback_url=upstream.callback_url()))
    assert _callback(upstream)["output"] is None
    assert runflow.wait_idle(30)


# ---------------------------------------------------------------------------- succeeded-like endings
@pytest.mark.parametrize(("outputs", "kept"), [(1, 1), (2, 1), (3, 2), (8, 4)])
def test_partial_success_keeps_the_first_half_of_the_outputs(
    runflow: LocalRunflow,
    client: httpx.Client,
    upstream: Upstream,
    small_url: str,
    outputs: int,
    kept: int,
) -> None:
    runflow.set_faults(_instant(outcome_partial=1.0, outputs_per_run=outputs))
    run_id = create(client, run_body(small_url, COLOUR, callback_url=upstream.callback_url()))
    run = wait_terminal(client, run_id)
    assert run["status_code"] == "partial_succeeded" and run["cost"] == "0.12"
    assert run["failure_code"] is None and run["error"] is None
    items = run["output"]["outputs"]
    assert [item["url"].split("?")[0].rsplit("/", 1)[1] for item in items] == [
        f"{n}.png" for n in range(kept)
    ]
    for item in items:
        assert _fetch_png(item["url"]).getpixel((3, 3)) == COLOUR
    callback = _callback(upstream)
    assert callback["event"] == "run.partial_succeeded" and callback["status"] == "partial_succeeded"
    assert len(callback["output"]["outputs"]) == kept
    assert runflow.wait_idle(30)
    assert runflow.stats()["runs_by_status"]["partial_succeeded"] == 1


def test_no_outputs_in_the_callback_but_in_the_run(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, small_url: str
) -> None:
    runflow.set_faults(_instant(outcome_no_outputs=1.0))
    run_id = create(client, run_body(small_url, COLOUR, callback_url=upstream.callback_url()))
    callback = _callback(upstream)
    assert callback["event"] == "run.completed" and callback["status"] == "succeeded"
    assert callback["output"]["outputs"] == []
    assert set(callback["output"]) == {"outputs", "seed", "timing", "nsfw_detected"}
    run = client.get(f"/v1/runs/{run_id}").json()
    assert run["status_code"] == "succeeded"
    [item] = run["output"]["outputs"]
    assert _fetch_png(item["url"]).getpixel((0, 0)) == COLOUR
    assert runflow.wait_idle(30)


def test_outcomes_are_tried_in_their_documented_order(
    runflow: LocalRunflow, client: httpx.Client, small_url: str
) -> None:
    order = [
        "outcome_canceled",
        "outcome_timed_out",
        "outcome_expired",
        "outcome_partial",
        "outcome_no_outputs",
    ]
    expected = ["canceled", "timed_out", "expired", "partial_succeeded", "succeeded"]
    statuses = []
    for skip in range(len(order)):
        # Every outcome from position ``skip`` on strikes for sure; the first of them must win.
        runflow.set_faults(_instant(**dict.fromkeys(order[skip:], 1.0)))
        statuses.append(wait_terminal(client, create(client, run_body(small_url)))["status_code"])
    assert statuses == expected
    # Only the winner is rolled: each setting fired exactly once, in its own turn.
    fired = runflow.stats()["faults_fired"]
    assert {name: fired[name] for name in order} == dict.fromkeys(order, 1)
    assert runflow.wait_idle(30)
