"""Runflow runs: creating a background-color run, reading runs back, and what a finished run says.

Contract (Runflow docs): ``POST /v1/models/runflow/background-color/runs`` answers with the run
object (``status_code: queued``); ``GET /v1/runs/{id}`` reads one; ``GET /v1/runs`` lists them
(cursor pages); errors carry ``{code, message, errors}``.

Creating a run costs money, so the client never repeats a create whose outcome it cannot know:
only a 429 and a 503 ``MODEL_UNAVAILABLE`` (both refused before anything is done, per Runflow's
error docs) and a connection that was never made are retried. Any other failure after the request
may have been sent (another 5xx, timeout, reset, an answer without an id) raises
``RunflowOutcomeUnknown``; the caller then never creates again for that attempt (it looks the run
up by ``client_ref``, or waits for its callback). ``Idempotency-Key`` is still sent, but nothing
depends on Runflow honouring it (it is documented for the batch route only).

Reads (GET) are safe to repeat: 429, 5xx and network errors are retried inside a time budget.
Backoff (``backdrop.timing.RetryPolicy``): 1 s, 2 s, 4 s, ... capped at 32 s, each plus up to half
again of random jitter; ``Retry-After`` (or ``X-RateLimit-Reset`` when ``X-RateLimit-Remaining`` is
0) is honoured when it fits the remaining budget, and when it does not the call gives up at once
rather than spinning.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import quote

import httpx

# RetryPolicy is part of this client's interface; its values live with the other timings.
from backdrop.timing import RetryPolicy as RetryPolicy

MODEL_PATH = "/v1/models/runflow/background-color/runs"
MAX_LIST_PAGES = 20

# Runflow spells a cancelled run both ways (status_code "canceled", older pages "cancelled").
_STATUS_ALIASES = {"cancelled": "canceled", "errored": "failed"}
OPEN_RUN_STATUSES = frozenset({"queued", "dispatching", "running"})
SUCCEEDED_RUN_STATUSES = frozenset({"succeeded", "partial_succeeded"})
TERMINAL_RUN_STATUSES = SUCCEEDED_RUN_STATUSES | {"failed", "canceled"}
_EVENT_STATUS = {
    "run.completed": "succeeded",
    "run.partial_succeeded": "partial_succeeded",
    "run.failed": "failed",
    "run.cancelled": "canceled",
    "run.canceled": "canceled",
}


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
    """Runflow could not be reached or kept failing (429/5xx/network) within the time budget.
    For a create: nothing was created. ``retry_after``: seconds Runflow asked us to wait, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class RunflowOutcomeUnknown(RunflowError):
    """A create may or may not have made a run (the request was sent, no usable answer came)."""


class RunKind(StrEnum):
    """What a run's status means for its job."""

    OPEN = "open"
    SUCCEEDED = "succeeded"  # succeeded or partial_succeeded: copy what outputs there are
    CANCELED = "canceled"
    FAILED = "failed"  # failed, or a terminal status Backdrop does not know (timed_out, expired...)


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
    created_at: datetime | None = None
    # The caller's reference Runflow stores on the run (run objects only: a callback does not carry it).
    client_ref: str | None = None
    # A run object with completed_at, or any callback (Runflow calls back only at a terminal state).
    finished: bool = False

    @property
    def kind(self) -> RunKind:
        if self.status in SUCCEEDED_RUN_STATUSES:
            return RunKind.SUCCEEDED
        if self.status == "canceled":
            return RunKind.CANCELED
        if self.status == "failed":
            return RunKind.FAILED
        if self.status in OPEN_RUN_STATUSES or not self.finished or not self.status:
            return RunKind.OPEN
        return RunKind.FAILED  # an unknown status Runflow reports as finished

    @property
    def is_terminal(self) -> bool:
        return self.kind is not RunKind.OPEN


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
            error = nested.get("error")
            inner: Mapping[str, Any] = error if isinstance(error, Mapping) else nested
            code = code or inner.get("code") or inner.get("failure_code")
            message = message or inner.get("message") or inner.get("failure_message")
    return (str(code) if code else None, str(message) if message else None)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def parse_timestamp(value: Any) -> datetime | None:
    """Runflow timestamps (``isoformat()`` with ``+00:00``, or ``Z``; 0, 3 or 6 fractional digits)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def run_result_from_run(run: Mapping[str, Any]) -> RunResult:
    """From a run object (``GET /v1/runs/{id}``, a list item or the create response)."""
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
        created_at=parse_timestamp(run.get("created_at")),
        finished=bool(run.get("completed_at") or run.get("finished_at")),
        client_ref=run["client_ref"] if isinstance(run.get("client_ref"), str) else None,
    )


def run_result_from_callback(envelope: Mapping[str, Any]) -> RunResult:
    """From a callback envelope ``{event, run_id, status, output, duration_ms, ..., metadata}``."""
    code, message = _failure(envelope)
    status = envelope.get("status") or _EVENT_STATUS.get(str(envelope.get("event", "")), "")
    metadata = envelope.get("metadata")
    return RunResult(
        run_id=str(envelope.get("run_id") or ""),
        status=normalise_status(str(status)),
        outputs=parse_outputs(envelope.get("output")),
        failure_code=code,
        failure_message=message,
        duration_ms=_int_or_none(envelope.get("duration_ms")),
        metadata=metadata if isinstance(metadata, Mapping) else {},
        created_at=parse_timestamp(envelope.get("created_at")),
        finished=True,
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


# Errors raised before a request left this machine: a create that met them made nothing.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class _Retryable(Exception):
    def __init__(self, problem: str, *, sent: bool, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.sent = sent
        self.retry_after = retry_after


class RunflowApi(Protocol):
    """The calls Backdrop makes to Runflow, as the use cases see them: ``RunflowClient`` below
    talks HTTP; the unit tests' stand-in keeps runs in memory with Runflow's semantics."""

    def create_run(self, request: RunRequest, *, idempotency_key: str) -> RunResult: ...

    def get_run(self, run_id: str, *, budget_seconds: float | None = None) -> RunResult: ...

    def find_runs(self, client_ref: str) -> list[RunResult]: ...


# Where the API key comes from: called with ``refresh=False`` for every request (a cached read) and
# once with ``refresh=True`` after a 401, so a rotated key reaches a warm function at once.
ApiKeySource = Callable[[bool], str]


class RunflowClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | ApiKeySource,
        *,
        http: httpx.Client,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        on_retry: Callable[[str], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._api_key: ApiKeySource = api_key if callable(api_key) else (lambda _refresh: api_key)
        self._http = http
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_retry = on_retry
        self._wall_clock = wall_clock

    def create_run(self, request: RunRequest, *, idempotency_key: str) -> RunResult:
        body = self._send(
            "POST",
            self._base + MODEL_PATH,
            json=request.body(),
            headers={"Idempotency-Key": idempotency_key},
            repeatable=False,
        )
        result = run_result_from_run(body)
        if not result.run_id:
            raise RunflowOutcomeUnknown("Runflow accepted the run but its answer carries no id")
        return result

    def get_run(self, run_id: str, *, budget_seconds: float | None = None) -> RunResult:
        """One run object. ``budget_seconds`` bounds the whole read, each request's timeout included
        (a caller that must answer quickly, the callback, sets it)."""
        kwargs: dict[str, Any] = {} if budget_seconds is None else {"timeout": budget_seconds}
        # A callback's run id is read before it is trusted: one path segment, whatever it holds.
        url = f"{self._base}/v1/runs/{quote(run_id, safe='')}"
        return run_result_from_run(self._send("GET", url, budget=budget_seconds, **kwargs))

    def find_runs(self, client_ref: str) -> list[RunResult]:
        """Every run tagged with ``client_ref``, oldest first by creation time (all pages)."""
        if "'" in client_ref or "\\" in client_ref:
            raise ValueError(f"client_ref {client_ref!r} cannot be quoted in a Runflow filter")
        items: list[Mapping[str, Any]] = []
        params: dict[str, str] = {"q": f"client_ref.EQ:'{client_ref}'", "limit": "100"}
        for _page in range(MAX_LIST_PAGES):
            body = self._send("GET", f"{self._base}/v1/runs", params=params)
            page = body.get("items")
            if not isinstance(page, list):
                raise RunflowUnavailable("Runflow's run list carries no items")
            items += [i for i in page if isinstance(i, Mapping) and i.get("client_ref") == client_ref]
            cursor = body.get("next") or body.get("next_pq")
            if not cursor or not page:
                break
            params = {**params, "pq": str(cursor)}
        else:
            raise RunflowUnavailable(f"Runflow listed more than {MAX_LIST_PAGES} pages for one client_ref")
        runs = [run_result_from_run(item) for item in items]
        never = datetime.max.replace(tzinfo=UTC)
        # Oldest first by the parsed time (string order breaks across "Z"/"+00:00" and precisions).
        runs.sort(key=lambda r: (r.created_at or never, r.run_id))
        return list({r.run_id: r for r in runs}.values())

    def _send(
        self,
        method: str,
        url: str,
        *,
        budget: float | None = None,
        repeatable: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        extra = kwargs.pop("headers", {})
        key = self._api_key(False)
        try:
            return self._attempts(
                method, url, key, extra, budget=budget, repeatable=repeatable, kwargs=kwargs
            )
        except RunflowRejected as refusal:
            # A 401 did nothing at Runflow (not even a create), so after a key rotation the request
            # is sent once more with the key read afresh; with the same key the refusal is final.
            if refusal.http_status != 401:
                raise
            fresh = self._api_key(True)
            if fresh == key:
                raise
            return self._attempts(
                method, url, fresh, extra, budget=budget, repeatable=repeatable, kwargs=kwargs
            )

    def _attempts(
        self,
        method: str,
        url: str,
        key: str,
        extra: Mapping[str, str],
        *,
        budget: float | None,
        repeatable: bool,
        kwargs: dict[str, Any],
    ) -> dict[str, Any]:
        deadline = time.monotonic() + (self._retry.budget_seconds if budget is None else budget)
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json", **extra}
        for attempt in range(1, self._retry.max_attempts + 1):
            try:
                return self._once(method, url, headers, kwargs)
            except _Retryable as problem:
                if problem.sent and not repeatable:
                    raise RunflowOutcomeUnknown(
                        f"Runflow's answer to the create is unknown: {problem}"
                    ) from None
                if attempt == self._retry.max_attempts:
                    raise RunflowUnavailable(
                        f"Runflow unavailable after {attempt} attempts: {problem}",
                        retry_after=problem.retry_after,
                    ) from None
                delay = self._delay(attempt)
                if problem.retry_after is not None:
                    delay = max(delay, problem.retry_after)
                if time.monotonic() + delay >= deadline:
                    # Waiting longer than we may: hand the work back (SQS, the reconciler) instead.
                    raise RunflowUnavailable(
                        f"Runflow unavailable (next try in {delay:.1f} s exceeds the budget): {problem}",
                        retry_after=problem.retry_after,
                    ) from None
                if self._on_retry:
                    self._on_retry(problem.problem)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int) -> float:
        base: float = min(self._retry.max_delay, self._retry.first_delay * 2 ** (attempt - 1))
        return min(self._retry.max_delay, base + self._rng.uniform(0.0, base / 2))

    def _once(self, method: str, url: str, headers: dict[str, str], kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.request(method, url, headers=headers, **kwargs)
        except _NOT_SENT as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}", sent=False) from exc
        except httpx.HTTPError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}", sent=True) from exc
        if response.status_code < 300:
            try:
                return _json_object(response)
            except RunflowUnavailable as exc:
                raise _Retryable(str(exc), sent=True) from exc
        code, message = _error_envelope(response)
        problem = f"HTTP {response.status_code} {code}: {message}"
        if response.status_code == 429:
            # Rate limited: refused before anything was done, so even a create may be repeated.
            raise _Retryable(problem, sent=False, retry_after=self._wait_hint(response))
        if response.status_code >= 500:
            # 503 MODEL_UNAVAILABLE is Runflow's documented refusal before anything is created (the
            # model's provider is down); any other 5xx may come after a run was made.
            refused = response.status_code == 503 and code == "MODEL_UNAVAILABLE"
            raise _Retryable(problem, sent=not refused, retry_after=self._wait_hint(response))
        if response.status_code == 409 and method == "POST":
            raise RunflowConflict(response.status_code, code, message)
        raise RunflowRejected(response.status_code, code, message)

    def _wait_hint(self, response: httpx.Response) -> float | None:
        """Seconds the server asked us to wait: ``Retry-After``, or the rate-limit window's reset."""
        raw = response.headers.get("Retry-After", "").strip()
        if raw:
            try:
                return max(0.0, float(raw))
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        remaining = response.headers.get("X-RateLimit-Remaining", "").strip()
        reset = response.headers.get("X-RateLimit-Reset", "").strip()
        if remaining == "0" and reset:
            try:
                return max(0.0, float(reset) - self._wall_clock())
            except ValueError:
                return None
        return None


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
    if not isinstance(body, Mapping):
        return f"HTTP_{response.status_code}", response.reason_phrase
    details = body.get("errors")
    error = body.get("error")
    if isinstance(error, Mapping):
        body = error
    code = body.get("code") or f"HTTP_{response.status_code}"
    message = str(body.get("message") or body.get("detail") or response.reason_phrase)
    if isinstance(details, list) and details:
        message += " (" + "; ".join(_field_error(d) for d in details[:10]) + ")"
    return str(code), message[:1000]


def _field_error(detail: Any) -> str:
    """One 422 ``errors[]`` item (pydantic style ``{loc, msg, type}``) as ``loc: msg``."""
    if not isinstance(detail, Mapping):
        return str(detail)[:200]
    loc = detail.get("loc")
    where = ".".join(str(p) for p in loc) if isinstance(loc, list) else str(loc or detail.get("field") or "")
    what = str(detail.get("msg") or detail.get("message") or detail.get("type") or "invalid")
    return f"{where}: {what}" if where else what
