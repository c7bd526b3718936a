"""What each endpoint does, apart from HTTP: the local Runflow's behaviour in one place.

``server`` turns requests into calls here and results into responses; ``LocalRunflow`` wires this
to the store, the worker threads and the callback sender.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

from backdrop_local.runflow import outcomes, views
from backdrop_local.runflow.callbacks import build_delivery
from backdrop_local.runflow.errors import ApiError, DropConnection, field_error, validation_error
from backdrop_local.runflow.faults import FaultInjector, FaultSettings, FaultSettingsInvalid
from backdrop_local.runflow.ids import new_id, utc_now
from backdrop_local.runflow.netpolicy import NetPolicy
from backdrop_local.runflow.outputs import OutputDirectory, OutputSigner
from backdrop_local.runflow.query import Cursor, parse_filter, parse_limit
from backdrop_local.runflow.ratelimit import RateLimitHeaders
from backdrop_local.runflow.store import TERMINAL, Delivery, Run, Store
from backdrop_local.runflow.validation import validate_run_request

MAX_LABEL_LENGTH = 255
REASON_LENGTH = (3, 500)


@dataclass(frozen=True)
class Reply:
    """A JSON answer; ``body`` is already serialised when it must be replayed byte for byte."""

    status: int
    data: Any = None
    body: bytes | None = None


@dataclass(frozen=True)
class FileReply:
    """A file to stream (the server closes ``handle`` once sent)."""

    status: int
    handle: BinaryIO
    size: int
    content_type: str


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def fingerprint(body: Any) -> str:
    """Same JSON value → same fingerprint, whatever the key order or spacing of the request."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class RunflowService:
    def __init__(
        self,
        store: Store,
        faults: FaultInjector,
        policy: NetPolicy,
        signer: OutputSigner,
        outputs: OutputDirectory,
        base_url: Callable[[], str],
        retry_delays: tuple[float, ...],
        rate_limits: RateLimitHeaders,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._clock = clock  # the wall clock list_lag_s is measured against
        self.faults = faults
        self.policy = policy
        self.signer = signer
        self.outputs = outputs
        self._base_url = base_url
        self.max_attempts = len(retry_delays) + 1
        self._rate_limits = rate_limits
        self.submit_run: Callable[[str], None] = lambda run_id: None
        self.schedule: Callable[[list[Delivery]], None] = lambda deliveries: None

    # ------------------------------------------------------------------ runs
    def _render_run(self, run: Run) -> dict[str, Any]:
        return views.run_view(run, self.signer.url, self._base_url())

    def create_run(self, model: str, body: Any, idempotency_key: str | None, request_id: str) -> Reply:
        if model != views.MODEL:
            raise ApiError(404, "MODEL_NOT_FOUND", f"Model {model!r} was not found")
        if idempotency_key is not None and self.faults.settings.idempotency_keys == "ignore":
            self.store.bump("idempotency_keys_ignored")
            idempotency_key = None
        # Injected faults answer before anything is looked at or created, like a gateway would.
        if self.faults.roll("create_429"):
            self.store.bump("create_rate_limited")
            raise _rate_limited()
        if self.faults.roll("create_5xx"):
            self.store.bump("create_server_errors")
            raise ApiError(503, "MODEL_UNAVAILABLE", "The model is temporarily unavailable (injected fault)")

        def make_run() -> Run:
            request = validate_run_request(body, self.policy)
            return Run(
                id=new_id(),
                request_id=request_id,
                input=request.input,
                callback_url=request.callback_url,
                metadata=request.metadata,
                client_ref=request.client_ref,
                created_at=utc_now(),
            )

        run, response, replayed = self.store.create_run(
            make_run, lambda run: dumps(self._render_run(run)), idempotency_key, fingerprint(body)
        )
        if not replayed:
            self.submit_run(run.id)
        if self.faults.roll("create_answer_lost"):
            # The run exists (and is billed); only its answer is lost, as behind a timed-out gateway.
            self.store.bump("create_answers_lost")
            raise ApiError(
                504, "GATEWAY_TIMEOUT", "The gateway timed out waiting for an answer (injected fault)"
            )
        if self.faults.roll("create_answer_reset"):
            # The run exists; the connection drops before any answer, as when a proxy dies.
            self.store.bump("create_answers_reset")
            raise DropConnection()
        return Reply(201, body=response)

    def rate_limit_headers(self, limited: bool) -> dict[str, str]:
        """Headers the create, get and list routes add to an answer (see ``ratelimit``)."""
        settings = self.faults.settings
        return self._rate_limits.headers(settings.rate_limit_headers, settings.retry_after_s, limited)

    def _read_faults(self) -> None:
        if self.faults.roll("get_429"):
            self.store.bump("get_rate_limited")
            raise _rate_limited()

    def _run(self, run_id: str) -> Run:
        run = self.store.get_run(run_id)
        if run is None:
            raise ApiError(404, "RUN_NOT_FOUND", "Run not found")
        return run

    def get_run(self, run_id: str) -> Reply:
        self._read_faults()
        with self.store.lock:
            return Reply(200, self._render_run(self._run(run_id)))

    def cancel_run(self, run_id: str, body: Any) -> Reply:
        """Admin cancellation: 201 with the canceled run on a transition, 200 with the run as it is
        when it was terminal already (no callback then)."""
        reason = _reason(body)
        spelling = self.faults.settings.cancel_spelling
        message = reason or outcomes.ADMIN_CANCEL_MESSAGE
        with self.store.changing():
            self._run(run_id)
            deliveries = self.store.cancel_run(
                run_id, lambda run: outcomes.settle_canceled(run, spelling, message), self.plan_deliveries
            )
            view = self._render_run(self._run(run_id))
        if deliveries is None:
            return Reply(200, view)
        self.schedule(deliveries)
        return Reply(201, view)

    def list_runs(self, args: Mapping[str, str]) -> Reply:
        self._read_faults()
        if self.faults.roll("list_4xx"):
            self.store.bump("list_refused")
            raise ApiError(
                403,
                "PERMISSION_DENIED",
                "Your account is not authorized to access this resource. (injected fault)",
            )
        limit = parse_limit(args.get("limit"))
        matches = parse_filter(args.get("q"))
        # list_lag_s: the list shows only runs older than the lag (a search index behind the store).
        lag = self.faults.settings.list_lag_s
        listed_before = datetime.fromtimestamp(self._clock() - lag, UTC) if lag > 0 else None

        def keep(run: Run) -> bool:
            return (listed_before is None or run.created_at <= listed_before) and matches(run)

        cursor = Cursor.decode(args.get("pq"))
        fields = [f.strip() for f in args.get("fields", "").split(",") if f.strip()]
        sort_by = args.get("sort_by")
        if sort_by not in (None, "", "created_at:desc", "-created_at"):
            raise validation_error(
                [field_error(["query", "sort_by"], "only created_at:desc is supported", "value_error")]
            )
        with self.store.lock:
            newer = cursor.direction == "previous"
            page = self.store.runs_page(cursor.anchor, newer, limit, keep)
            if not page and cursor.direction != "first":
                # Walked past an end: show the page from that end.
                page = self.store.runs_page(None, False, limit, keep) if newer else []
            older = bool(page) and self.store.has_runs_beyond(page[-1].id, False, keep)
            newer_left = bool(page) and self.store.has_runs_beyond(page[0].id, True, keep)
            items = [self._render_run(run) for run in page]
        if fields:
            items = [{key: item[key] for key in fields if key in item} for item in items]
        return Reply(
            200,
            {
                "items": items,
                "first": Cursor("first", None).encode(),
                "next": Cursor("next", page[-1].id).encode() if older else None,
                "previous": Cursor("previous", page[0].id).encode() if newer_left else None,
            },
        )

    # ------------------------------------------------------------------ callbacks
    def plan_deliveries(self, run: Run) -> list[Delivery]:
        """The automatic deliveries of a run that just turned terminal (called under the store lock)."""
        if run.callback_url is None:
            return []
        if self.faults.roll("callback_drop"):
            self.store.counters["callbacks_dropped"] += 1
            return []
        output = views.run_output(run, self.signer.url)
        delay = self.faults.settings.callback_delay_s
        first = build_delivery(
            self.store, run, output, is_automatic=True, max_attempts=self.max_attempts, delay_s=delay
        )
        deliveries = [first]
        if self.faults.roll("callback_duplicate"):
            self.store.counters["callbacks_duplicated"] += 1
            deliveries.append(
                build_delivery(
                    self.store,
                    run,
                    output,
                    is_automatic=True,
                    max_attempts=self.max_attempts,
                    delay_s=delay,
                    body=first.payload_bytes,
                )
            )
        return deliveries

    def list_deliveries(self, run_id: str) -> Reply:
        with self.store.lock:
            self._run(run_id)
            return Reply(200, [views.delivery_view(d) for d in self.store.deliveries_for(run_id)])

    def redeliver(self, run_id: str) -> Reply:
        with self.store.changing():
            run = self._run(run_id)
            if run.status_code not in TERMINAL:
                raise ApiError(409, "CONFLICT", "The run has not reached a terminal state yet")
            if run.callback_url is None:
                raise ApiError(409, "CONFLICT", "The run has no callback_url")
            delivery = build_delivery(
                self.store,
                run,
                views.run_output(run, self.signer.url),
                is_automatic=False,
                max_attempts=self.max_attempts,
            )
            self.store.add_delivery(delivery)
            self.store.counters["callback_redeliveries"] += 1
            view = views.delivery_view(delivery)
        self.schedule([delivery])
        return Reply(201, view)

    # ------------------------------------------------------------------ signing secrets
    def create_secret(self, body: Any) -> Reply:
        label = _label(body, required=True)
        assert label is not None
        secret = self.store.create_secret(label, make_current=False)
        return Reply(201, views.secret_view(secret, with_plain_secret=True))

    def list_secrets(self) -> Reply:
        with self.store.lock:
            items = [views.secret_view(s) for s in self.store.list_secrets()]
        return Reply(200, {"items": items, "first": None, "next": None, "previous": None})

    def get_secret(self, secret_id: str) -> Reply:
        with self.store.lock:
            secret = self.store.get_secret(secret_id)
            if secret is None:
                raise ApiError(404, "CALLBACK_SECRET_NOT_FOUND", "Callback secret not found")
            return Reply(200, views.secret_view(secret))

    def update_secret(self, secret_id: str, body: Any) -> Reply:
        label = _label(body, required=False)
        is_current = body.get("is_current") if isinstance(body, dict) else None
        if is_current is not None and not isinstance(is_current, bool):
            raise validation_error(
                [field_error(["body", "is_current"], "Input should be a valid boolean", "bool_type")]
            )
        extra = [key for key in body if key not in ("label", "is_current")] if isinstance(body, dict) else []
        if extra:
            raise validation_error(
                [
                    field_error(["body", key], "Extra inputs are not permitted", "extra_forbidden")
                    for key in extra
                ]
            )
        with self.store.lock:
            secret = self.store.update_secret(secret_id, label, is_current)
            if secret is None:
                raise ApiError(404, "CALLBACK_SECRET_NOT_FOUND", "Callback secret not found")
            return Reply(200, views.secret_view(secret))

    def delete_secret(self, secret_id: str) -> Reply:
        if not self.store.delete_secret(secret_id):
            raise ApiError(404, "CALLBACK_SECRET_NOT_FOUND", "Callback secret not found")
        return Reply(204)

    # ------------------------------------------------------------------ outputs
    def output_file(self, run_id: str, index: int, expires: str | None, signature: str | None) -> FileReply:
        check = self.signer.check(run_id, index, expires, signature)
        if not check.ok:
            self.store.bump("output_url_rejections")
            raise ApiError(403, "ACCESS_DENIED", check.reason)
        if self.faults.roll("output_fetch_error"):
            self.store.bump("output_fetch_errors")
            raise ApiError(500, "INTERNAL_ERROR", "We encountered an internal error. Please try again.")
        opened = self.outputs.open(run_id, index)
        if opened is None:
            raise ApiError(404, "NO_SUCH_KEY", "The specified key does not exist.")
        self.store.bump("output_fetches")
        handle, size = opened
        return FileReply(200, handle, size, "image/png")

    # ------------------------------------------------------------------ emulator controls
    def faults_view(self) -> dict[str, Any]:
        return {**self.faults.settings.to_dict(), "seed": self.faults.seed}

    def set_faults(self, body: Any) -> Reply:
        if not isinstance(body, dict):
            raise validation_error([field_error(["body"], "Input should be a valid dictionary", "dict_type")])
        settings_part = {key: value for key, value in body.items() if key != "seed"}
        seed = body.get("seed")
        if "seed" in body and seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise validation_error(
                [field_error(["body", "seed"], "Input should be a valid integer", "int_type")]
            )
        try:
            settings = FaultSettings.from_mapping(settings_part)
        except FaultSettingsInvalid as exc:
            raise validation_error(exc.problems, "Invalid fault settings") from exc
        self.faults.configure(settings, seed, reseed="seed" in body)
        return Reply(200, self.faults_view())

    def stats(self) -> dict[str, Any]:
        return {**self.store.stats(), "faults_fired": self.faults.fired()}

    def output_faults(self) -> dict[str, Any]:
        return {"runs": self.store.output_faults()}


def _rate_limited() -> ApiError:
    return ApiError(429, "RATE_LIMITED", "Rate limit exceeded: too many requests (injected fault)")


def _reason(body: Any) -> str | None:
    """The optional ``reason`` of a cancellation body (``{}`` or no body at all is fine)."""
    if not isinstance(body, dict):
        raise validation_error([field_error(["body"], "Input should be a valid dictionary", "dict_type")])
    problems = [
        field_error(["body", key], "Extra inputs are not permitted", "extra_forbidden")
        for key in body
        if key != "reason"
    ]
    reason = body.get("reason")
    low, high = REASON_LENGTH
    if reason is not None and (not isinstance(reason, str) or not low <= len(reason) <= high):
        problems.append(
            field_error(
                ["body", "reason"], f"reason must be a string of {low} to {high} characters", "value_error"
            )
        )
    if problems:
        raise validation_error(problems)
    return reason if isinstance(reason, str) else None


def _label(body: Any, *, required: bool) -> str | None:
    if not isinstance(body, dict):
        raise validation_error([field_error(["body"], "Input should be a valid dictionary", "dict_type")])
    if "label" not in body or body["label"] is None:
        if required:
            raise validation_error([field_error(["body", "label"], "Field required", "missing")])
        return None
    label = body["label"]
    if not isinstance(label, str) or not 1 <= len(label) <= MAX_LABEL_LENGTH:
        raise validation_error(
            [
                field_error(
                    ["body", "label"],
                    f"label must be a string of 1 to {MAX_LABEL_LENGTH} characters",
                    "value_error",
                )
            ]
        )
    return label
