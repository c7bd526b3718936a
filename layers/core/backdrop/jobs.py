"""Jobs: one per uploaded object version and colour, and the forward-only state machine they follow.

    received ──► submitted ──► copying ──► succeeded
      │  ▲           │            │
      ▼  │           │            │
     held ───────────┘            │
      └──────────────┴────────────┴──────► failed | canceled | timed_out | superseded
    received ──► rejected   (bad upload: never sent to Runflow)

``received``  the job exists; no Runflow run is known yet (or creating it is being retried).
``held``      waiting for the daily run budget; resumed oldest first when it allows again.
``submitted`` Runflow accepted the run; ``run_id`` is set; waiting for its outcome.
``copying``   the run finished with outputs; the copy worker is writing them to the results bucket.
``superseded`` a newer version of the same object won; this version's result is never written.

A retry (an operator's decision, ``JobStore.begin_retry``) is the only way back from a terminal
status: it starts a new, numbered attempt of the same job and keeps the previous one in ``history``.
A job that copies an earlier job's result (``reused_from``, no run) goes ``received → copying``;
if that result vanished before the copy, ``JobStore.reopen_for_run`` puts it back to ``received``
to run: the one move back between open statuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from backdrop.runs import OutputRef
from backdrop.uploads import UploadRef


class Status(StrEnum):
    RECEIVED = "received"
    HELD = "held"
    SUBMITTED = "submitted"
    COPYING = "copying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    SUPERSEDED = "superseded"

    @property
    def is_open(self) -> bool:
        return self in OPEN

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


# The status groups, one name each; the CLI and the job store use them as they are, never a copy.
# Stated, not derived: adding a status means deciding here which side it is on (checked below).
OPEN: frozenset[Status] = frozenset({Status.RECEIVED, Status.HELD, Status.SUBMITTED, Status.COPYING})
TERMINAL: frozenset[Status] = frozenset(
    {
        Status.SUCCEEDED,
        Status.FAILED,
        Status.CANCELED,
        Status.REJECTED,
        Status.TIMED_OUT,
        Status.SUPERSEDED,
    }
)
# Terminal statuses an operator may run again (``rejected`` only on explicit request: same bytes fail).
RETRYABLE: frozenset[Status] = frozenset({Status.FAILED, Status.CANCELED, Status.TIMED_OUT, Status.REJECTED})

if OPEN & TERMINAL or set(Status) != OPEN | TERMINAL or not RETRYABLE <= TERMINAL:
    # A status on both sides, or on neither, would break every conditional write that relies on them.
    raise RuntimeError("every status must be either open or terminal, and only a terminal one retryable")

# For each target status, the statuses a job may be in to move there. Anything else is refused,
# which is what makes a late, duplicated or replayed event harmless.
ALLOWED_FROM: dict[Status, frozenset[Status]] = {
    Status.RECEIVED: frozenset(),  # only a retry (begin_retry) goes back to received
    Status.HELD: frozenset({Status.RECEIVED, Status.HELD}),
    Status.SUBMITTED: frozenset({Status.RECEIVED, Status.HELD}),
    # Received too: the callback may overtake the submit's own record of the run.
    Status.COPYING: frozenset({Status.RECEIVED, Status.SUBMITTED, Status.COPYING}),
    Status.SUCCEEDED: frozenset({Status.COPYING}),
    Status.FAILED: OPEN,
    Status.CANCELED: OPEN,
    Status.TIMED_OUT: OPEN,
    Status.SUPERSEDED: OPEN,
    Status.REJECTED: frozenset({Status.RECEIVED}),
}

# The partition value every open job carries in the sparse OpenJobs index.
OPEN_SHARD = "open"


def can_move(current: Status, target: Status) -> bool:
    return current in ALLOWED_FROM[target]


def format_iso(moment: datetime) -> str:
    """UTC timestamp, fixed width so that string order is time order in DynamoDB sort keys."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def now_iso() -> str:
    return format_iso(datetime.now(UTC))


def iso_from_epoch(seconds: float) -> str:
    return format_iso(datetime.fromtimestamp(seconds, UTC))


def parse_iso(value: str) -> datetime:
    """Any ISO 8601 timestamp (``Z`` or an offset, 0-6 fractional digits) as an aware datetime."""
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class Job:
    job_id: str
    status: Status
    source_bucket: str
    source_key: str
    color: str
    created_at: str
    updated_at: str
    source_version_id: str | None = None
    source_etag: str | None = None
    source_size: int | None = None
    color_source: str | None = None
    run_id: str | None = None
    run_status: str | None = None
    output_urls: list[OutputRef] = field(default_factory=list)
    result_bucket: str | None = None
    result_keys: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    completed_at: str | None = None
    submitted_at: str | None = None
    runflow_duration_ms: int | None = None
    runflow_request_id: str | None = None
    retryable_errors: int = 0
    create_pending_since: str | None = None
    copy_requeued_at: str | None = None  # when the reconciler last queued this job's copy again
    reserved_on: str | None = None  # the UTC day one run of the budget was reserved for this attempt
    superseded_by: str | None = None
    content_digest: str | None = None  # SHA-256 (hex) of the source version's bytes
    reused_from: str | None = None  # the earlier job whose result this one copied (no run of its own)
    attempt: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.status.is_open

    @property
    def run_ref(self) -> str:
        """What Runflow knows this attempt by (``client_ref`` and ``Idempotency-Key``): one run each."""
        return self.ref_of(self.job_id, self.attempt)

    @staticmethod
    def ref_of(job_id: str, attempt: int) -> str:
        return job_id if attempt <= 1 else f"{job_id}-{attempt}"

    def upload(self) -> UploadRef:
        """The object version this job processes."""
        return UploadRef(
            self.source_bucket, self.source_key, self.source_version_id, self.source_etag, self.source_size
        )

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "job_id": self.job_id,
            "status": self.status.value,
            "source_bucket": self.source_bucket,
            "source_key": self.source_key,
            "color": self.color,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "retryable_errors": self.retryable_errors,
            "attempt": self.attempt,
        }
        optional: dict[str, Any] = {
            "source_version_id": self.source_version_id,
            "source_etag": self.source_etag,
            "source_size": self.source_size,
            "color_source": self.color_source,
            "run_id": self.run_id,
            "run_status": self.run_status,
            "output_urls": outputs_to_item(self.output_urls) or None,
            "result_bucket": self.result_bucket,
            "result_keys": self.result_keys or None,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "completed_at": self.completed_at,
            "submitted_at": self.submitted_at,
            "runflow_duration_ms": self.runflow_duration_ms,
            "runflow_request_id": self.runflow_request_id,
            "create_pending_since": self.create_pending_since,
            "copy_requeued_at": self.copy_requeued_at,
            "reserved_on": self.reserved_on,
            "superseded_by": self.superseded_by,
            "content_digest": self.content_digest,
            "reused_from": self.reused_from,
            "history": self.history or None,
        }
        item.update({k: v for k, v in optional.items() if v is not None})
        if self.status in OPEN:
            item["open_shard"] = OPEN_SHARD
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Job:
        def opt_int(name: str) -> int | None:
            value = item.get(name)
            return None if value is None else int(value)

        def opt_str(name: str) -> str | None:
            value = item.get(name)
            return None if value is None else str(value)

        return cls(
            job_id=str(item["job_id"]),
            status=Status(item["status"]),
            source_bucket=str(item["source_bucket"]),
            source_key=str(item["source_key"]),
            color=str(item.get("color", "")),
            created_at=str(item["created_at"]),
            updated_at=str(item.get("updated_at", item["created_at"])),
            source_version_id=opt_str("source_version_id"),
            source_etag=opt_str("source_etag"),
            source_size=opt_int("source_size"),
            color_source=opt_str("color_source"),
            run_id=opt_str("run_id"),
            run_status=opt_str("run_status"),
            output_urls=outputs_from_item(item.get("output_urls")),
            result_bucket=opt_str("result_bucket"),
            result_keys=[str(k) for k in item.get("result_keys", [])],
            error_code=opt_str("error_code"),
            error_message=opt_str("error_message"),
            completed_at=opt_str("completed_at"),
            submitted_at=opt_str("submitted_at"),
            runflow_duration_ms=opt_int("runflow_duration_ms"),
            runflow_request_id=opt_str("runflow_request_id"),
            retryable_errors=int(item.get("retryable_errors", 0)),
            create_pending_since=opt_str("create_pending_since"),
            copy_requeued_at=opt_str("copy_requeued_at"),
            reserved_on=opt_str("reserved_on"),
            superseded_by=opt_str("superseded_by"),
            content_digest=opt_str("content_digest"),
            reused_from=opt_str("reused_from"),
            attempt=int(item.get("attempt", 1)),
            history=[dict(h) for h in item.get("history", [])],
        )


def outputs_to_item(outputs: list[OutputRef] | tuple[OutputRef, ...]) -> list[dict[str, str]]:
    return [{"url": o.url, **({"content_type": o.content_type} if o.content_type else {})} for o in outputs]


def outputs_from_item(raw: Any) -> list[OutputRef]:
    if not isinstance(raw, list):
        return []
    return [
        OutputRef(str(o["url"]), str(o["content_type"]) if o.get("content_type") else None)
        for o in raw
        if isinstance(o, dict) and o.get("url")
    ]
