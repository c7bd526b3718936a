"""Jobs: one per uploaded object version and colour, and the forward-only state machine they follow.

    received ──► submitted ──► copying ──► succeeded
        │            │            │
        └────────────┴────────────┴──────► failed | canceled | timed_out
        └──► rejected   (bad upload: never sent to Runflow)

``received``  the job exists; no Runflow run is known yet (or creating it is being retried).
``submitted`` Runflow accepted the run; ``run_id`` is set; waiting for its callback.
``copying``   the run finished with outputs; they are being copied into the results bucket
              (a failed copy leaves the job here, with the error recorded, for the reconciler).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    RECEIVED = "received"
    SUBMITTED = "submitted"
    COPYING = "copying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


OPEN = frozenset({Status.RECEIVED, Status.SUBMITTED, Status.COPYING})
TERMINAL = frozenset(Status) - OPEN

# For each target status, the statuses a job may be in to move there. Anything else is refused,
# which is what makes a late, duplicated or replayed event harmless.
ALLOWED_FROM: dict[Status, frozenset[Status]] = {
    Status.RECEIVED: frozenset(),
    Status.SUBMITTED: frozenset({Status.RECEIVED}),
    Status.COPYING: frozenset({Status.RECEIVED, Status.SUBMITTED, Status.COPYING}),
    Status.SUCCEEDED: frozenset({Status.COPYING}),
    Status.FAILED: OPEN,
    Status.CANCELED: OPEN,
    Status.TIMED_OUT: OPEN,
    Status.REJECTED: frozenset({Status.RECEIVED}),
}

# The partition value every open job carries in the sparse OpenJobs index.
OPEN_SHARD = "open"


def can_move(current: Status, target: Status) -> bool:
    return current in ALLOWED_FROM[target]


def format_iso(moment: datetime) -> str:
    """UTC timestamp, fixed width so that string order is time order in DynamoDB sort keys."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def now_iso() -> str:
    return format_iso(datetime.now(UTC))


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Job:
    job_id: str
    status: Status
    source_bucket: str
    source_key: str
    source_version: str
    color: str
    created_at: str
    updated_at: str
    source_etag: str | None = None
    source_size: int | None = None
    run_id: str | None = None
    result_bucket: str | None = None
    result_keys: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    completed_at: str | None = None
    submitted_at: str | None = None
    runflow_duration_ms: int | None = None
    runflow_request_id: str | None = None
    attempts: int = 0

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "job_id": self.job_id,
            "status": self.status.value,
            "source_bucket": self.source_bucket,
            "source_key": self.source_key,
            "source_version": self.source_version,
            "color": self.color,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "attempts": self.attempts,
        }
        optional = {
            "source_etag": self.source_etag,
            "source_size": self.source_size,
            "run_id": self.run_id,
            "result_bucket": self.result_bucket,
            "result_keys": self.result_keys or None,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "completed_at": self.completed_at,
            "submitted_at": self.submitted_at,
            "runflow_duration_ms": self.runflow_duration_ms,
            "runflow_request_id": self.runflow_request_id,
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

        return cls(
            job_id=str(item["job_id"]),
            status=Status(item["status"]),
            source_bucket=str(item["source_bucket"]),
            source_key=str(item["source_key"]),
            source_version=str(item.get("source_version", "-")),
            color=str(item.get("color", "")),
            created_at=str(item["created_at"]),
            updated_at=str(item.get("updated_at", item["created_at"])),
            source_etag=item.get("source_etag"),
            source_size=opt_int("source_size"),
            run_id=item.get("run_id"),
            result_bucket=item.get("result_bucket"),
            result_keys=[str(k) for k in item.get("result_keys", [])],
            error_code=item.get("error_code"),
            error_message=item.get("error_message"),
            completed_at=item.get("completed_at"),
            submitted_at=item.get("submitted_at"),
            runflow_duration_ms=opt_int("runflow_duration_ms"),
            runflow_request_id=item.get("runflow_request_id"),
            attempts=int(item.get("attempts", 0)),
        )
