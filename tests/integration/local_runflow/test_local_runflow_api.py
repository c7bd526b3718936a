"""The local Runflow's REST surface as a client sees it: auth, validation, runs, listing, secrets."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from backdrop_local.runflow import LocalRunflow
from tests.integration.local_runflow.local_runflow_support import (
    MODEL_RUNS,
    Upstream,
    api,
    create,
    run_body,
    wait_terminal,
)


def _assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "errors"}
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def test_health_is_open_and_everything_else_needs_a_valid_key(runflow: LocalRunflow, junk_url: str) -> None:
    with httpx.Client(base_url=runflow.url, trust_env=False) as anonymous:
        assert anonymous.get("/v1/health").json() == {"ok": True}
        _assert_envelope(anonymous.get("/v1/runs"), 401, "UNAUTHORIZED")
        _assert_envelope(anonymous.post(MODEL_RUNS, json=run_body(junk_url)), 401, "UNAUTHORIZED")
        _assert_envelope(anonymous.get("/v1/callback-secrets"), 401, "UNAUTHORIZED")
        basic = anonymous.get("/v1/runs", headers={"Authorization": "Basic cmZfbGl2ZV9sb2NhbDo="})
        _assert_envelope(basic, 401, "UNAUTHORIZED")
    with api(runflow, key="rf_live_wrong") as wrong:
        _assert_envelope(wrong.post(MODEL_RUNS, json=run_body(junk_url)), 401, "UNAUTHORIZED")
    assert runflow.stats()["runs_created"] == 0
    with api(runflow) as good:
        assert good.get("/v1/runs").status_code == 200


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        (lambda b: b["input"].update(color_red=256), ["body", "input", "color_red"]),
        (lambda b: b["input"].update(color_green=-1), ["body", "input", "color_green"]),
        (lambda b: b["input"].update(color_blue=True), ["body", "input", "color_blue"]),
        (lambda b: b["input"].update(color_blue=12.0), ["body", "input", "color_blue"]),
        (lambda b: b["input"].update(color_red="12"), ["body", "input", "color_red"]),
        (lambda b: b["input"].pop("color_green"), ["body", "input", "color_green"]),
        (lambda b: b["input"].pop("image_url"), ["body", "input", "image_url"]),
        (
            lambda b: b["input"].update(image_url="http://images.example.com/a.jpg"),
            ["body", "input", "image_url"],
        ),
        (lambda b: b["input"].update(image_url="ftp://127.0.0.1/a.jpg"), ["body", "input", "image_url"]),
        (lambda b: b["input"].update(shading_percent=30), ["body", "input", "shading_percent"]),
        (lambda b: b.pop("input"), ["body", "input"]),
        (lambda b: b.update(callback_url="ftp://127.0.0.1/hook"), ["body", "callback_url"]),
        (lambda b: b.update(callback_url="https://hooks.example.com/x"), ["body", "callback_url"]),
        (lambda b: b.update(callback_url="http://10.0.0.8/x"), ["body", "callback_url"]),
        (lambda b: b.update(metadata=["not", "an", "object"]), ["body", "metadata"]),
        (lambda b: b.update(client_ref=7), ["body", "client_ref"]),
    ],
)
def test_invalid_create_requests_are_422_and_create_nothing(
    runflow: LocalRunflow, client: httpx.Client, change: Any, loc: list[str]
) -> None:
    body = run_body("https://images.example.com/photo.jpg")
    change(body)
    response = client.post(MODEL_RUNS, json=body)
    envelope = _assert_envelope(response, 422, "VALIDATION_ERROR")
    assert any(error["loc"] == loc for error in envelope["errors"]), envelope["errors"]
    assert all({"loc", "msg", "type"} <= set(error) for error in envelope["errors"])
    assert runflow.stats()["runs_created"] == 0


def test_malformed_json_and_unknown_model(client: httpx.Client) -> None:
    bad = client.post(MODEL_RUNS, content=b"{not json", headers={"Content-Type": "application/json"})
    _assert_envelope(bad, 422, "VALIDATION_ERROR")
    other = client.post(
        "/v1/models/runflow/background-removal/runs", json=run_body("https://x.example/a.jpg")
    )
    _assert_envelope(other, 404, "MODEL_NOT_FOUND")


def test_plain_http_image_url_only_for_the_exact_allowed_origin(
    client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    allowed = client.post(MODEL_RUNS, json=run_body(junk_url))
    assert allowed.status_code == 201, allowed.text
    port = int(upstream.origin.rsplit(":", 1)[1])
    other_port = junk_url.replace(f":{port}/", f":{port + 1 if port < 65535 else port - 1}/")
    _assert_envelope(client.post(MODEL_RUNS, json=run_body(other_port)), 422, "VALIDATION_ERROR")
    other_host = junk_url.replace("127.0.0.1", "localhost")
    _assert_envelope(client.post(MODEL_RUNS, json=run_body(other_host)), 422, "VALIDATION_ERROR")


def test_create_answers_201_with_a_queued_run_and_uuid7_id(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream, junk_url: str
) -> None:
    body = run_body(
        junk_url,
        (245, 220, 200),
        callback_url=upstream.callback_url(),
        metadata={"sku": "123", "note": "naïve"},
        client_ref="sku-123",
    )
    response = client.post(MODEL_RUNS, json=body)
    assert response.status_code == 201, response.text
    run = response.json()
    parsed = uuid.UUID(run["id"])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == run["id"]
    assert run["status_code"] == "queued"
    assert run["model"] == "runflow/background-color"
    assert run["input"] == body["input"]
    assert run["output"] is None
    assert run["metadata"] == body["metadata"] and run["client_ref"] == "sku-123"
    assert run["callback_url"] == body["callback_url"]
    assert run["started_at"] is None and run["completed_at"] is None and run["cost"] is None
    created = datetime.fromisoformat(run["created_at"])
    assert run["created_at"].endswith("+00:00") and created.utcoffset() is not None
    fetched = client.get(f"/v1/runs/{run['id']}")
    assert fetched.status_code == 200 and fetched.json()["id"] == run["id"]
    assert runflow.wait_idle(30)


def test_unknown_run_is_404(client: httpx.Client) -> None:
    _assert_envelope(client.get(f"/v1/runs/{uuid.uuid4()}"), 404, "RUN_NOT_FOUND")
    _assert_envelope(client.get("/v1/runs/not-a-run"), 404, "RUN_NOT_FOUND")
    _assert_envelope(client.get(f"/v1/runs/{uuid.uuid4()}/callback"), 404, "RUN_NOT_FOUND")


def test_idempotency_key_replays_the_same_run_and_refuses_another_body(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    body = run_body(junk_url, client_ref="once")
    headers = {"Idempotency-Key": "submit-7f3a"}
    first = client.post(MODEL_RUNS, json=body, headers=headers)
    second = client.post(MODEL_RUNS, json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    conflict = client.post(MODEL_RUNS, json=run_body(junk_url, (1, 2, 3)), headers=headers)
    _assert_envelope(conflict, 409, "CONFLICT")
    assert runflow.wait_idle(30)
    stats = runflow.stats()
    assert stats["runs_created"] == 1
    assert stats["idempotent_replays"] == 1
    assert len(client.get("/v1/runs").json()["items"]) == 1
    # Without the header every POST is a new run.
    third = client.post(MODEL_RUNS, json=body)
    assert third.status_code == 201 and third.json()["id"] != first.json()["id"]
    assert runflow.wait_idle(30)


def test_concurrent_retries_with_one_idempotency_key_create_one_run(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    body = run_body(junk_url)
    ids: list[str] = []

    def submit() -> None:
        response = client.post(MODEL_RUNS, json=body, headers={"Idempotency-Key": "race"})
        assert response.status_code == 201
        ids.append(response.json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(ids) == 8 and len(set(ids)) == 1
    assert runflow.wait_idle(30)
    assert runflow.stats()["runs_created"] == 1 and runflow.stats()["idempotent_replays"] == 7


def test_list_runs_newest_first_with_cursors_and_filters(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    refs = ["a", "a", "b", "b", "b"]
    created = [create(client, run_body(junk_url, client_ref=ref)) for ref in refs]
    assert runflow.wait_idle(30)
    newest_first = list(reversed(created))

    seen: list[str] = []
    pages: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = client.get("/v1/runs", params=params).json()
        assert set(page) == {"items", "first", "next", "previous"}
        pages.append(page)
        seen.extend(item["id"] for item in page["items"])
        if page["next"] is None:
            break
        params = {"limit": 2, "pq": page["next"]}
    assert seen == newest_first
    assert [len(p["items"]) for p in pages] == [2, 2, 1]
    assert pages[0]["previous"] is None
    back = client.get("/v1/runs", params={"limit": 2, "pq": pages[1]["previous"]}).json()
    assert [item["id"] for item in back["items"]] == newest_first[:2]
    assert client.get("/v1/runs").json()["items"][0]["id"] == created[-1]  # default limit covers all

    def ids(q: str) -> list[str]:
        response = client.get("/v1/runs", params={"q": q})
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert ids("client_ref:b") == newest_first[:3]
    assert ids("client_ref.EQ:'a'") == newest_first[3:]
    assert ids("client_ref:b AND status_code:failed") == newest_first[:3]
    assert ids("status_code:succeeded") == []
    assert ids(f"id:{created[0]}") == [created[0]]
    for bad in ({"limit": 0}, {"limit": 501}, {"limit": "ten"}, {"q": "colour:red"}, {"pq": "%%%"}):
        _assert_envelope(client.get("/v1/runs", params=bad), 422, "VALIDATION_ERROR")


def test_callback_secrets_create_promote_list_and_delete(client: httpx.Client) -> None:
    first = client.post("/v1/callback-secrets", json={"label": "production"})
    assert first.status_code == 201, first.text
    one = first.json()
    assert one["plain_secret"].startswith("whsec_") and len(one["plain_secret"]) > 30
    assert one["is_current"] is True and one["label"] == "production"
    assert one["plain_secret"].startswith(one["key_prefix"])
    two = client.post("/v1/callback-secrets", json={"label": "rotation"}).json()
    assert two["is_current"] is False
    _assert_envelope(client.post("/v1/callback-secrets", json={}), 422, "VALIDATION_ERROR")

    listing = client.get("/v1/callback-secrets")
    assert listing.status_code == 200
    assert [s["id"] for s in listing.json()["items"]] == [one["id"], two["id"]]
    for response in (listing, client.get(f"/v1/callback-secrets/{one['id']}")):
        assert one["plain_secret"] not in response.text and two["plain_secret"] not in response.text
        assert "plain_secret" not in response.text

    promoted = client.patch(f"/v1/callback-secrets/{two['id']}", json={"is_current": True, "label": "new"})
    assert promoted.status_code == 200 and promoted.json()["is_current"] is True
    assert promoted.json()["label"] == "new" and "plain_secret" not in promoted.json()
    assert client.get(f"/v1/callback-secrets/{one['id']}").json()["is_current"] is False
    bad_patch = client.patch(f"/v1/callback-secrets/{two['id']}", json={"is_current": "yes"})
    _assert_envelope(bad_patch, 422, "VALIDATION_ERROR")

    assert client.delete(f"/v1/callback-secrets/{one['id']}").status_code == 204
    _assert_envelope(client.get(f"/v1/callback-secrets/{one['id']}"), 404, "CALLBACK_SECRET_NOT_FOUND")
    assert [s["id"] for s in client.get("/v1/callback-secrets").json()["items"]] == [two["id"]]


def test_a_failed_run_reads_like_runflow_reports_failures(
    runflow: LocalRunflow, client: httpx.Client, junk_url: str
) -> None:
    run_id = create(client, run_body(junk_url))
    run = wait_terminal(client, run_id)
    assert run["status_code"] == "failed"
    assert run["failure_code"] == "INPUT_UNREADABLE"
    assert run["failure_message"] and run["failure_stage_code"] == "decode"
    assert run["error"] == {"code": "INPUT_UNREADABLE", "message": run["failure_message"]}
    assert run["output"] is None and run["cost"] is None
    assert isinstance(run["duration_ms"], int) and run["duration_ms"] >= 0
    started, completed = (
        datetime.fromisoformat(run["started_at"]),
        datetime.fromisoformat(run["completed_at"]),
    )
    assert datetime.fromisoformat(run["created_at"]) <= started <= completed
