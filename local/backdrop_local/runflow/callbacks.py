"""Callback deliveries: the payload, its signature, and the threads that POST it.

Payload keys, in this order: ``event, run_id, status, output, duration_ms, created_at,
completed_at, metadata``; timestamps are ``datetime.isoformat()`` of aware UTC datetimes
(``+00:00``); ``event``, ``status`` and ``output`` follow the run's terminal status as ``outcomes``
describes (``output`` is null for failed and canceled runs unless ``failure_output_envelope``
struck). The body is serialised once, when the delivery is
created, and every attempt sends exactly those bytes; ``Runflow-Signature`` is the lowercase hex
HMAC-SHA256 of those bytes under the current signing secret's plain string (absent when there is
no current secret), and ``Runflow-Request-Id`` identifies the delivery (the same on each attempt).

A delivery makes up to ``len(retry_delays) + 1`` attempts (3 with the documented 1 s, 2 s), each
with a 10 s timeout; only 5xx answers and network errors/timeouts are retried, any other status
ends the delivery. Redirects are not followed: a 3xx answer ends the delivery like a 4xx. Each
attempt that gets an HTTP answer is timed from sending the POST to having read the status line and
the body (``callback_answer_ms`` in the stats). Deliveries wait in a due-time queue; the store is
the source of truth, so the sender threads can be stopped and restarted (``restart``) at any
moment: pending deliveries are rebuilt from the store and nothing is lost.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import threading
import time
from datetime import datetime
from typing import Any

import httpx

from backdrop_local.runflow.ids import iso, new_id, utc_now
from backdrop_local.runflow.netpolicy import NetPolicy, http_client
from backdrop_local.runflow.outcomes import EVENTS, callback_output
from backdrop_local.runflow.store import TERMINAL, AttemptOutcome, Delivery, Run, Store

log = logging.getLogger(__name__)

ATTEMPT_TIMEOUT_S = 10.0
RESPONSE_BODY_LIMIT = 2048
USER_AGENT = "Runflow-Callbacks/1.0 (local emulator)"


def payload(run: Run, output: dict[str, Any] | None) -> dict[str, Any]:
    """The callback body of a terminal ``run`` whose run-object ``output`` is ``output``."""
    return {
        "event": EVENTS[run.status_code],
        "run_id": run.id,
        "status": run.status_code,
        "output": callback_output(run, output),
        "duration_ms": run.duration_ms,
        "created_at": iso(run.created_at),
        "completed_at": iso(run.completed_at),
        "metadata": run.metadata,
    }


def serialise(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def build_delivery(
    store: Store,
    run: Run,
    output: dict[str, Any] | None,
    *,
    is_automatic: bool,
    max_attempts: int,
    delay_s: float = 0.0,
    body: bytes | None = None,
) -> Delivery:
    """A pending delivery of ``run``'s terminal state (``body`` reuses already serialised bytes)."""
    if run.callback_url is None or run.status_code not in TERMINAL:
        raise ValueError("only terminal runs with a callback_url have callbacks")
    raw = body if body is not None else serialise(payload(run, output))
    secret = store.current_secret()
    now = utc_now()
    if secret is not None:
        secret.last_used_at = now
    return Delivery(
        id=new_id(),
        run_id=run.id,
        callback_url=run.callback_url,
        payload_bytes=raw,
        signature=sign(raw, secret.plain_secret) if secret is not None else None,
        signing_secret_id=secret.id if secret is not None else None,
        request_id=new_id(),
        is_automatic=is_automatic,
        max_attempts=max_attempts,
        created_at=now,
        updated_at=now,
        next_attempt_at=datetime.fromtimestamp(now.timestamp() + delay_s, now.tzinfo),
    )


class DueQueue:
    """Delivery ids ordered by when their next attempt is due; each id at most once. While held,
    nothing is handed out (due or not): attempts already started finish, no new one starts."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, str]] = []
        self._queued: set[str] = set()
        self._sequence = itertools.count()
        self._held = False

    def hold(self) -> None:
        with self._cond:
            self._held = True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def push(self, delivery_id: str, delay_s: float) -> None:
        with self._cond:
            if delivery_id in self._queued:
                return
            self._queued.add(delivery_id)
            heapq.heappush(
                self._heap, (time.monotonic() + max(0.0, delay_s), next(self._sequence), delivery_id)
            )
            self._cond.notify()

    def pop(self, stopping: threading.Event) -> str | None:
        """The next due id, waiting as needed; None once ``stopping`` is set."""
        with self._cond:
            while not stopping.is_set():
                if self._held:
                    self._cond.wait()
                elif self._heap:
                    due = self._heap[0][0]
                    wait = due - time.monotonic()
                    if wait <= 0:
                        _, _, delivery_id = heapq.heappop(self._heap)
                        self._queued.discard(delivery_id)
                        return delivery_id
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()
            self._queued.clear()


class CallbackSender:
    """Sender threads over a DueQueue. ``stop`` lets in-flight attempts finish before returning."""

    def __init__(
        self,
        store: Store,
        queue: DueQueue,
        policy: NetPolicy,
        retry_delays: tuple[float, ...],
        *,
        threads: int = 4,
        timeout_s: float = ATTEMPT_TIMEOUT_S,
    ) -> None:
        self._store = store
        self._queue = queue
        self._policy = policy
        self._retry_delays = retry_delays
        self._threads_wanted = threads
        self._timeout = timeout_s
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._client: httpx.Client | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._client = http_client(timeout=self._timeout, headers={"User-Agent": USER_AGENT})
        self._threads = [
            threading.Thread(target=self._loop, name=f"runflow-callbacks-{n}", daemon=True)
            for n in range(self._threads_wanted)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._queue.wake_all()
        for thread in self._threads:
            thread.join(self._timeout + 5.0)
        self._threads = []
        if self._client is not None:
            self._client.close()
            self._client = None

    def _loop(self) -> None:
        while True:
            delivery_id = self._queue.pop(self._stopping)
            if delivery_id is None:
                return
            delivery = self._store.claim_delivery(delivery_id)
            if delivery is None:
                continue
            try:
                outcome = self._attempt(delivery)
            except Exception as exc:  # never let one delivery kill a sender thread
                log.exception("callback attempt crashed")
                outcome = AttemptOutcome(None, None, 0, f"internal error: {exc}", False, True)
            delay = self._store.record_attempt(delivery_id, outcome, self._retry_delays)
            if delay is not None:
                self._queue.push(delivery_id, delay)

    def _attempt(self, delivery: Delivery) -> AttemptOutcome:
        if not self._policy.may_contact(delivery.callback_url):
            return AttemptOutcome(
                None, None, 0, "callback_url is not a loopback host or allowed origin", False, False
            )
        headers = {"Content-Type": "application/json", "Runflow-Request-Id": delivery.request_id}
        if delivery.signature is not None:
            headers["Runflow-Signature"] = delivery.signature
        client = self._client
        if client is None:
            return AttemptOutcome(None, None, 0, "callback sender is stopped", False, True)
        started = time.perf_counter()
        try:
            # post() returns once the status line and the whole body are in: the answer time.
            response = client.post(delivery.callback_url, content=delivery.payload_bytes, headers=headers)
        except httpx.HTTPError as exc:
            elapsed = round((time.perf_counter() - started) * 1000)
            return AttemptOutcome(None, None, elapsed, f"{type(exc).__name__}: {exc}", False, True)
        answer_ms = (time.perf_counter() - started) * 1000
        elapsed = round(answer_ms)
        status = response.status_code
        text = response.text[:RESPONSE_BODY_LIMIT]
        if 200 <= status < 300:
            return AttemptOutcome(status, text, elapsed, None, True, False, answer_ms)
        return AttemptOutcome(status, text, elapsed, f"HTTP {status}", False, status >= 500, answer_ms)
