"""In-memory state of the local Runflow: runs, callback deliveries, signing secrets, idempotency keys.

One re-entrant lock guards everything; a condition on it wakes ``wait_idle`` whenever something
changes. Anything that must look atomic to a client (idempotent create, a run turning terminal
together with its callback deliveries appearing) happens under that lock. Callers render JSON
under the lock too, so no response mixes two states of one run.

Run statuses: ``queued → dispatching → running`` and then one terminal status: ``succeeded``,
``partial_succeeded``, ``failed``, ``timed_out``, ``expired``, or ``canceled`` / ``cancelled``
(spelling chosen by the ``cancel_spelling`` setting). A run can be canceled from any non-terminal
status; once terminal, nothing changes it again (late results of a canceled run are dropped and
counted in ``late_results_dropped``).

``stats()`` also reports, over every callback attempt that got an HTTP answer,
``callback_answer_ms`` (``{"count", "p50", "p99", "max"}``: milliseconds from sending the POST to
having the status line and body; nearest-rank percentiles, null while the count is 0) and
``callback_attempts_by_status`` (HTTP status as a string → attempts).
"""

from __future__ import annotations

import bisect
import math
import secrets as secrets_module
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backdrop_local.runflow.errors import ApiError
from backdrop_local.runflow.ids import new_id, utc_now

QUEUED = "queued"
DISPATCHING = "dispatching"
RUNNING = "running"
SUCCEEDED = "succeeded"
PARTIAL_SUCCEEDED = "partial_succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
EXPIRED = "expired"
CANCELED = "canceled"
CANCELLED = "cancelled"
RUN_STATUSES = (
    QUEUED,
    DISPATCHING,
    RUNNING,
    SUCCEEDED,
    PARTIAL_SUCCEEDED,
    FAILED,
    TIMED_OUT,
    EXPIRED,
    CANCELED,
    CANCELLED,
)
ACTIVE = frozenset({QUEUED, DISPATCHING, RUNNING})
TERMINAL = frozenset(RUN_STATUSES) - ACTIVE
WITH_OUTPUT = frozenset({SUCCEEDED, PARTIAL_SUCCEEDED})  # statuses whose run carries outputs
FAILURES = frozenset({FAILED, TIMED_OUT, EXPIRED})  # statuses whose callback event is run.failed
CANCELATIONS = frozenset({CANCELED, CANCELLED})

DELIVERY_PENDING = "pending"
DELIVERY_SUCCEEDED = "succeeded"
DELIVERY_FAILED = "failed"


@dataclass(frozen=True)
class OutputFile:
    index: int
    content_type: str
    size: int


@dataclass
class Run:
    id: str
    request_id: str
    input: dict[str, Any]
    callback_url: str | None
    metadata: dict[str, Any] | None
    client_ref: str | None
    created_at: datetime
    status_code: str = QUEUED
    started_at: datetime | None = None
    completed_at: datetime | None = None
    outputs: list[OutputFile] = field(default_factory=list)
    timing: dict[str, Any] | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    failure_stage_code: str | None = None
    # How this run's callbacks differ from its run object (decided once, when it turns terminal).
    callback_hides_outputs: bool = False
    callback_error_envelope: bool = False
    output_fault: str | None = None  # the output fault that struck its outputs (emulator only)

    @property
    def duration_ms(self) -> int | None:
        # Total wall clock from creation, as the callback docs describe it (queueing included).
        if self.completed_at is None:
            return None
        return round((self.completed_at - self.created_at).total_seconds() * 1000)


@dataclass(frozen=True)
class Attempt:
    id: str
    attempt_number: int
    status_code: int | None
    response_body: str | None
    response_time_ms: int
    error_message: str | None
    created_at: datetime


@dataclass
class Delivery:
    id: str
    run_id: str
    callback_url: str
    payload_bytes: bytes
    signature: str | None
    signing_secret_id: str | None
    request_id: str
    is_automatic: bool
    max_attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    status_code: str = DELIVERY_PENDING
    failure_reason_code: str | None = None
    failure_detail: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    in_flight: bool = False  # a sender thread is attempting it right now (not exposed)


@dataclass
class CallbackSecret:
    id: str
    label: str
    plain_secret: str
    is_current: bool
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None = None
    disabled_at: datetime | None = None

    @property
    def key_prefix(self) -> str:
        return self.plain_secret[:10]  # "whsec_" + 4 characters: enough to tell secrets apart


@dataclass(frozen=True)
class IdempotencyRecord:
    fingerprint: str
    run_id: str
    response: bytes


@dataclass(frozen=True)
class AttemptOutcome:
    """What one POST of a callback gave; ``retryable`` decides whether another attempt follows."""

    status_code: int | None
    response_body: str | None
    response_time_ms: int
    error_message: str | None
    succeeded: bool
    retryable: bool
    answer_ms: float | None = None  # set when an HTTP answer (status line and body) arrived


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._runs: dict[str, Run] = {}
        self._run_order: list[str] = []  # ascending id == ascending creation (UUIDv7, monotonic)
        self._idempotency: dict[str, IdempotencyRecord] = {}
        self._deliveries: dict[str, Delivery] = {}
        self._deliveries_by_run: dict[str, list[str]] = {}
        self._secrets: dict[str, CallbackSecret] = {}
        self.counters: Counter[str] = Counter()
        self._answer_ms: list[float] = []
        self._held: set[str] = set()  # runs a worker has taken and not yet let go (see wait_idle)
        self._attempts_by_status: Counter[int] = Counter()

    @contextmanager
    def changing(self) -> Iterator[None]:
        with self.lock:
            yield
            self._changed.notify_all()

    def bump(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self.counters[name] += amount

    # ------------------------------------------------------------------ runs
    def create_run(
        self,
        make_run: Callable[[], Run],
        render: Callable[[Run], bytes],
        idempotency_key: str | None,
        fingerprint: str,
    ) -> tuple[Run, bytes, bool]:
        """Create a run, or replay the one an earlier request with the same key created.

        Returns (run, response body, replayed). Same key with another body → 409 CONFLICT.
        """
        with self.changing():
            if idempotency_key is not None:
                record = self._idempotency.get(idempotency_key)
                if record is not None:
                    if record.fingerprint != fingerprint:
                        raise ApiError(
                            409,
                            "CONFLICT",
                            "Idempotency-Key was already used with a different request body",
                        )
                    self.counters["idempotent_replays"] += 1
                    return self._runs[record.run_id], record.response, True
            run = make_run()
            self._runs[run.id] = run
            if self._run_order and run.id < self._run_order[-1]:
                bisect.insort(self._run_order, run.id)
            else:
                self._run_order.append(run.id)
            self.counters["runs_created"] += 1
            response = render(run)
            if idempotency_key is not None:
                self._idempotency[idempotency_key] = IdempotencyRecord(fingerprint, run.id, response)
            return run, response, False

    def get_run(self, run_id: str) -> Run | None:
        with self.lock:
            return self._runs.get(run_id)

    def output_faults(self) -> dict[str, str]:
        """Run id to the output fault that struck it, for every run one struck."""
        with self.lock:
            return {run.id: run.output_fault for run in self._runs.values() if run.output_fault}

    def start_run(self, run_id: str) -> Run | None:
        """queued → dispatching; None if the run is not queued (so it is never run twice)."""
        with self.changing():
            run = self._runs.get(run_id)
            if run is None or run.status_code != QUEUED:
                return None
            run.status_code = DISPATCHING
            self._held.add(run_id)
            return run

    def release_run(self, run_id: str) -> None:
        """The worker is done with the run, whatever became of it (canceled runs included)."""
        with self.changing():
            self._held.discard(run_id)

    def begin_running(self, run_id: str) -> Run | None:
        """dispatching → running; None if the run left dispatching meanwhile (it was canceled)."""
        with self.changing():
            run = self._runs.get(run_id)
            if run is None or run.status_code != DISPATCHING:
                return None
            run.status_code = RUNNING
            run.started_at = utc_now()
            return run

    def is_dispatching(self, run_id: str) -> bool:
        with self.lock:
            run = self._runs.get(run_id)
            return run is not None and run.status_code == DISPATCHING

    def finish_run(
        self,
        run_id: str,
        settle: Callable[[Run], None],
        make_deliveries: Callable[[Run], list[Delivery]],
    ) -> list[Delivery] | None:
        """Make the run terminal and add its callback deliveries in one step (see wait_idle).

        None if the run is terminal already (canceled while it ran): its late result is dropped.
        """
        with self.changing():
            run = self._runs[run_id]
            if run.status_code in TERMINAL:
                self.counters["late_results_dropped"] += 1
                return None
            return self._settle(run, settle, make_deliveries)

    def cancel_run(
        self,
        run_id: str,
        settle: Callable[[Run], None],
        make_deliveries: Callable[[Run], list[Delivery]],
    ) -> list[Delivery] | None:
        """Cancel a non-terminal run, adding its deliveries; None if it was terminal already."""
        with self.changing():
            run = self._runs[run_id]
            if run.status_code in TERMINAL:
                return None
            self.counters["admin_cancellations"] += 1
            return self._settle(run, settle, make_deliveries)

    def _settle(
        self, run: Run, settle: Callable[[Run], None], make_deliveries: Callable[[Run], list[Delivery]]
    ) -> list[Delivery]:
        settle(run)
        if run.status_code not in TERMINAL:
            raise ValueError(f"settling left run {run.id} {run.status_code}")
        if run.completed_at is None:
            run.completed_at = utc_now()
        deliveries = make_deliveries(run)
        for delivery in deliveries:
            self._add_delivery(delivery)
        return deliveries

    def runs_page(
        self, anchor: str | None, newer: bool, limit: int, keep: Callable[[Run], bool]
    ) -> list[Run]:
        """Up to ``limit`` matching runs, newest first, strictly older (or newer) than ``anchor``."""
        with self.lock:
            found: list[Run] = []
            if not newer:
                end = len(self._run_order) if anchor is None else bisect.bisect_left(self._run_order, anchor)
                for index in range(end - 1, -1, -1):
                    run = self._runs[self._run_order[index]]
                    if keep(run):
                        found.append(run)
                        if len(found) == limit:
                            break
                return found
            start = 0 if anchor is None else bisect.bisect_right(self._run_order, anchor)
            for index in range(start, len(self._run_order)):
                run = self._runs[self._run_order[index]]
                if keep(run):
                    found.append(run)
                    if len(found) == limit:
                        break
            found.reverse()
            return found

    def has_runs_beyond(self, anchor: str, newer: bool, keep: Callable[[Run], bool]) -> bool:
        return bool(self.runs_page(anchor, newer, 1, keep))

    # ------------------------------------------------------------------ deliveries
    def _add_delivery(self, delivery: Delivery) -> None:
        self._deliveries[delivery.id] = delivery
        self._deliveries_by_run.setdefault(delivery.run_id, []).append(delivery.id)
        self.counters["callback_deliveries_created"] += 1

    def add_delivery(self, delivery: Delivery) -> None:
        with self.changing():
            self._add_delivery(delivery)

    def deliveries_for(self, run_id: str) -> list[Delivery]:
        with self.lock:
            return [self._deliveries[d] for d in self._deliveries_by_run.get(run_id, [])]

    def pending_deliveries(self) -> list[Delivery]:
        with self.lock:
            return [d for d in self._deliveries.values() if d.status_code == DELIVERY_PENDING]

    def claim_delivery(self, delivery_id: str) -> Delivery | None:
        """Mark a pending delivery as being attempted; None if it is not pending or already taken."""
        with self.lock:
            delivery = self._deliveries.get(delivery_id)
            if delivery is None or delivery.status_code != DELIVERY_PENDING or delivery.in_flight:
                return None
            delivery.in_flight = True
            return delivery

    def record_attempt(
        self, delivery_id: str, outcome: AttemptOutcome, retry_delays: tuple[float, ...]
    ) -> float | None:
        """Store one attempt's outcome; returns the delay before the next attempt, or None if done."""
        with self.changing():
            delivery = self._deliveries[delivery_id]
            now = utc_now()
            delivery.in_flight = False
            delivery.attempts.append(
                Attempt(
                    id=new_id(),
                    attempt_number=len(delivery.attempts) + 1,
                    status_code=outcome.status_code,
                    response_body=outcome.response_body,
                    response_time_ms=outcome.response_time_ms,
                    error_message=outcome.error_message,
                    created_at=now,
                )
            )
            delivery.updated_at = now
            self.counters["callbacks_sent"] += 1
            if outcome.status_code is not None:
                self._attempts_by_status[outcome.status_code] += 1
                if outcome.answer_ms is not None:
                    self._answer_ms.append(outcome.answer_ms)
            if outcome.succeeded:
                delivery.status_code = DELIVERY_SUCCEEDED
                delivery.completed_at = now
                delivery.next_attempt_at = None
                self.counters["callbacks_delivered"] += 1
                return None
            self.counters["callback_attempts_failed"] += 1
            attempts = len(delivery.attempts)
            if outcome.retryable and attempts < delivery.max_attempts:
                delay = retry_delays[min(attempts - 1, len(retry_delays) - 1)] if retry_delays else 0.0
                delivery.next_attempt_at = datetime.fromtimestamp(now.timestamp() + delay, now.tzinfo)
                return delay
            delivery.status_code = DELIVERY_FAILED
            delivery.completed_at = now
            delivery.next_attempt_at = None
            if outcome.retryable:
                delivery.failure_reason_code = "MAX_ATTEMPTS_EXCEEDED"
            elif outcome.status_code is not None:
                delivery.failure_reason_code = "NON_RETRYABLE_STATUS"
            else:
                delivery.failure_reason_code = "NON_RETRYABLE_ERROR"
            delivery.failure_detail = outcome.error_message or f"callback answered HTTP {outcome.status_code}"
            self.counters["callback_deliveries_failed"] += 1
            return None

    # ------------------------------------------------------------------ secrets
    def create_secret(self, label: str, *, make_current: bool) -> CallbackSecret:
        with self.changing():
            now = utc_now()
            secret = CallbackSecret(
                id=new_id(),
                label=label,
                plain_secret="whsec_" + secrets_module.token_urlsafe(32),
                is_current=make_current or not any(s.is_current for s in self._secrets.values()),
                created_at=now,
                updated_at=now,
            )
            if secret.is_current:
                self._demote_all(now)
            self._secrets[secret.id] = secret
            return secret

    def _demote_all(self, now: datetime) -> None:
        for other in self._secrets.values():
            if other.is_current:
                other.is_current = False
                other.updated_at = now

    def list_secrets(self) -> list[CallbackSecret]:
        with self.lock:
            return list(self._secrets.values())

    def get_secret(self, secret_id: str) -> CallbackSecret | None:
        with self.lock:
            return self._secrets.get(secret_id)

    def update_secret(
        self, secret_id: str, label: str | None, is_current: bool | None
    ) -> CallbackSecret | None:
        with self.changing():
            secret = self._secrets.get(secret_id)
            if secret is None:
                return None
            now = utc_now()
            if label is not None:
                secret.label = label
            if is_current is True and not secret.is_current:
                self._demote_all(now)
                secret.is_current = True
            elif is_current is False:
                secret.is_current = False
            secret.updated_at = now
            return secret

    def delete_secret(self, secret_id: str) -> bool:
        with self.changing():
            return self._secrets.pop(secret_id, None) is not None

    def current_secret(self) -> CallbackSecret | None:
        with self.lock:
            return next((s for s in self._secrets.values() if s.is_current), None)

    # ------------------------------------------------------------------ idleness and stats
    def is_idle(self) -> bool:
        with self.lock:
            # A canceled run is terminal while its worker may still be finishing it: busy too.
            busy_runs = bool(self._held) or any(r.status_code in ACTIVE for r in self._runs.values())
            busy_deliveries = any(d.status_code == DELIVERY_PENDING for d in self._deliveries.values())
            return not busy_runs and not busy_deliveries

    def wait_idle(self, timeout: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(self.is_idle, timeout)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            by_status = dict.fromkeys(RUN_STATUSES, 0)
            for run in self._runs.values():
                by_status[run.status_code] = by_status.get(run.status_code, 0) + 1
            deliveries = Counter(d.status_code for d in self._deliveries.values())
            keys = (
                "runs_created",
                "idempotent_replays",
                "callbacks_sent",
                "callback_attempts_failed",
                "callbacks_delivered",
                "callback_deliveries_created",
                "callback_deliveries_failed",
                "callbacks_dropped",
                "callbacks_duplicated",
                "callback_redeliveries",
                "output_fetches",
                "output_fetch_errors",
                "output_url_rejections",
                "create_rate_limited",
                "create_server_errors",
                "create_answers_lost",
                "unauthorized_requests",
                "create_answers_reset",
                "idempotency_keys_ignored",
                "get_rate_limited",
                "list_refused",
                "admin_cancellations",
                "late_results_dropped",
            )
            result: dict[str, Any] = {key: self.counters[key] for key in keys}
            result["runs_by_status"] = by_status
            result["callback_deliveries_pending"] = deliveries[DELIVERY_PENDING]
            result["callback_secrets"] = len(self._secrets)
            result["callback_answer_ms"] = summarise(self._answer_ms)
            result["callback_attempts_by_status"] = {
                str(status): count for status, count in sorted(self._attempts_by_status.items())
            }
            return result


def summarise(samples: list[float]) -> dict[str, Any]:
    """Count, nearest-rank p50 and p99, and maximum of ``samples`` (ms, to 3 decimals)."""
    if not samples:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(samples)

    def rank(percent: int) -> float:
        # Nearest rank: the smallest sample with at least ``percent`` % of samples at or below it.
        return round(ordered[max(0, math.ceil(percent * len(ordered) / 100) - 1)], 3)

    return {"count": len(ordered), "p50": rank(50), "p99": rank(99), "max": round(ordered[-1], 3)}
