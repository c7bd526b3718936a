"""Runflow runs: creating a background-color run, reading one back, and what a finished run says.

Contract (Runflow docs): ``POST /v1/models/runflow/background-color/runs`` answers with the run
object (``status_code: queued``); ``GET /v1/runs/{id}`` reads it; errors carry ``{code, message}``.
429, 5xx and network errors are retried with exponential backoff and full jitter inside a time
budget; any other 4xx is final. ``Idempotency-Key`` makes a retried create return the same run,
but only for the same body: a later attempt carries a fresh presigned URL, so Runflow answers
``409 CONFLICT`` and the run made earlier is found by its ``client_ref`` (``find_runs``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

MODEL_PATH = "/v1/models/runflow/background-color/runs"

# Runflow spells a cancelled run both ways (status_code "canceled", callbacks "cancelled").
_STATUS_ALIASES = {"cancelled": "canceled", "errored": "failed"}
TERMINAL_RUN_STATUSES = frozenset({"succeeded", "partial_succeeded", "failed", "canceled"})


class RunflowError(Exception):
    """Base class of errors talking to Runflow."""


class RunflowRejected(RunflowError):
    """Runflow refused the request for good (401/402/403/404/409/422...): do not retry."""

    def __init__(self, http_status: int, code: str, message: str) -> None:
        self.http_status = http_status
        self.code = code
        self.message = message
        super().__init__(f"Runflow answered {http_status} {code}: {message}")


class RunflowConflict(RunflowRejected):
    """409 on create: this Idempotency-Key was already used, with a different body."""


class RunflowUnavailable(RunflowError):
    """Runflow could not be reached or kept failing (429/5xx/network) within the time budget."""


@dataclass(frozen=True)
class OutputRef:
    url: str
    content_type: str | None = None


@dataclass(frozen=True)
class RunResult:
    """What we need from a run object or a callback envelope."""

    run_id: str
    status: str
    outputs: tuple[OutputRef, ...] = ()
    failure_code: str | None = None
    failure_message: str | None = None
    duration_ms: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES


def normalise_status(status: str) -> str:
    value = status.strip().lower()
    return _STATUS_ALIASES.get(value, value)


def parse_outputs(output: Any) -> tuple[OutputRef, ...]:
    """Output URLs of a run: ``outputs[].url`` (documented), or ``image_urls[]`` (sibling models)."""
    if not isinstance(output, Mapping):
        return ()
    refs: list[OutputRef] = []
    items = output.get("outputs")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, Mapping) and isinstance(item.get("url"), str):
                ctype = item.get("content_type")
                refs.append(OutputRef(item["url"], ctype if isinstance(ctype, str) else None))
    urls = output.get("image_urls")
    if not refs and isinstance(urls, list):
        refs.extend(OutputRef(u) for u in urls if isinstance(u, str))
    return tuple(refs)


def _failure(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    code = body.get("failure_code")
    message = body.get("failure_message")
    for nested in (body.get("error"), body.get("output")):
        if isinstance(nested, Mapping):
            code = code or nested.get("code") or nested.get("failure_code")
            message = message or nested.get("message") or nested.get("failure_message")
    return (str(code) if code else None, str(message) if message else None)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def run_result_from_run(run: Mapping[str, Any]) -> RunResult:
    """From a run object (``GET /v1/runs/{id}`` or the create response)."""
    code, message = _failure(run)
    metadata = run.get("metadata")
    return RunResult(
        run_id=str(run.get("id") or run.get("run_id") or ""),
        status=normalise_status(str(run.get("status_code") or run.get("status") or "")),
        outputs=parse_outputs(run.get("output")),
        failure_code=code,
        failure_message=message,
        duration_ms=_int_or_none(run.get("duration_ms")),
        metadata=metadata if isinstance(metadata, Mapping) else {},
    )


def run_result_from_callback(envelope: Mapping[str, Any]) -> RunResult:
    """From a callback envelope ``{event, run_id, status, output, duration_ms, ..., metadata}``."""
    code, message = _failure(envelope)
    status = envelope.get("status")
    if not status:
        event = str(envelope.get("event", ""))
        status = {
            "run.completed": "succeeded",
            "run.partial_succeeded": "partial_succeeded",
            "run.failed": "failed",
            "run.cancelled": "canceled",
        }.get(event, "")
    metadata = envelope.get("metadata")
    return RunResult(
        run_id=str(envelope.get("run_id") or ""),
        status=normalise_status(str(status)),
        outputs=parse_outputs(envelope.get("output")),
        failure_code=code,
        failure_message=message,
        duration_ms=_int_or_none(envelope.get("duration_ms")),
        metadata=metadata if isinstance(metadata, Mapping) else {},
    )


@dataclass(frozen=True)
class RunRequest:
    image_url: str
    red: int
    green: int
    blue: int
    callback_url: str
    metadata: Mapping[str, str]
    client_ref: str

    def body(self) -> dict[str, Any]:
        return {
            "input": {
                "image_url": self.image_url,
                "color_red": self.red,
                "color_green": self.green,
                "color_blue": self.blue,
            },
            "callback_url": self.callback_url,
            "metadata": dict(self.metadata),
            "client_ref": self.client_ref,
        }


@dataclass
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    budget_seconds: float = 20.0


class RunflowClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        http: httpx.Client,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._http = http
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_retry = on_retry

    def create_run(self, request: RunRequest, *, idempotency_key: str) -> RunResult:
        try:
            body = self._send(
                "POST",
                self._base + MODEL_PATH,
                json=request.body(),
                headers={"Idempotency-Key": idempotency_key},
            )
        except RunflowRejected as exc:
            if exc.http_status == 409:
                raise RunflowConflict(exc.http_status, exc.code, exc.message) from exc
            raise
        result = run_result_from_run(body)
        if not result.run_id:
            raise RunflowUnavailable("Runflow accepted the run but its answer carries no id")
        return result

    def get_run(self, run_id: str, *, budget_seconds: float | None = None) -> RunResult:
        return run_result_from_run(self._send("GET", f"{self._base}/v1/runs/{run_id}", budget=budget_seconds))

    def find_runs(self, client_ref: str) -> list[RunResult]:
        """Runs tagged with ``client_ref``, oldest first (Backdrop tags each run with its job id)."""
        if "'" in client_ref or "\\" in client_ref:
            raise ValueError(f"client_ref {client_ref!r} cannot be quoted in a Runflow filter")
        body = self._send(
            "GET",
            f"{self._base}/v1/runs",
            params={"q": f"client_ref.EQ:'{client_ref}'", "limit": "100"},
        )
        items = body.get("items")
        if not isinstance(items, list):
            raise RunflowUnavailable("Runflow's run list carries no items")
        runs = [item for item in items if isinstance(item, Mapping) and item.get("client_ref") == client_ref]
        # Oldest first: the run the first attempt created (UUIDv7 ids also sort by time).
        runs.sort(key=lambda item: (str(item.get("created_at") or ""), str(item.get("id") or "")))
        return [run_result_from_run(item) for item in runs]

    def _send(self, method: str, url: str, *, budget: float | None = None, **kwargs: Any) -> dict[str, Any]:
        deadline = time.monotonic() + (self._retry.budget_seconds if budget is None else budget)
        headers = {**self._headers, **kwargs.pop("headers", {})}
        last_problem = "no attempt made"
        for attempt in range(1, self._retry.max_attempts + 1):
            retry_after: float | None = None
            try:
                response = self._http.request(method, url, headers=headers, **kwargs)
            except httpx.HTTPError as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 300:
                    return _json_object(response)
                code, message = _error_envelope(response)
                if response.status_code != 429 and response.status_code < 500:
                    raise RunflowRejected(response.status_code, code, message)
                last_problem = f"HTTP {response.status_code} {code}: {message}"
                retry_after = _retry_after(response)
            if attempt == self._retry.max_attempts:
                break
            delay = self._rng.uniform(
                0, min(self._retry.max_delay, self._retry.base_delay * 2 ** (attempt - 1))
            )
            if retry_after is not None:
                delay = max(delay, min(retry_after, self._retry.max_delay))
            if time.monotonic() + delay >= deadline:
                break
            if self._on_retry:
                self._on_retry(last_problem)
            self._sleep(delay)
        raise RunflowUnavailable(f"Runflow unavailable after retries: {last_problem}")


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise RunflowUnavailable(f"Runflow answered {response.status_code} with a non-JSON body") from exc
    if not isinstance(body, dict):
        raise RunflowUnavailable("Runflow answered with JSON that is not an object")
    return body


def _error_envelope(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP_{response.status_code}", response.text[:300] or response.reason_phrase
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            body = error
        code = body.get("code") or f"HTTP_{response.status_code}"
        message = body.get("message") or body.get("detail") or response.reason_phrase
        return str(code), str(message)[:1000]
    return f"HTTP_{response.status_code}", response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None
