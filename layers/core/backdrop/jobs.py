"""Jobs: one per uploaded object version and colour, and the forward-only state machine they follow.

    received ──► submitted ──► copying ──► succeeded
      │  ▲           │            │  │          ▲
      ▼  │           │            │  ▼          │ approved
     held ───────────┘            │ needs_review ──► rejected (by a person, with a note)
      └──────────────┴────────────┴──────► failed | canceled | timed_out | superseded
    received ──► rejected   (bad upload: never sent to Runflow)

``received``  the job exists; no Runflow run is known yet (or creating it is being retried).
``held``      waiting for the daily run budget; resumed oldest first when it allows again.
``submitted`` Runflow accepted the run; ``run_id`` is set; waiting for its outcome.
``copying``   the run finished with outputs; the copy worker is writing them to the results bucket.
``needs_review`` the quality gate (``hold``) found the result doubtful: it waits under the review prefix
              for a person to approve (published as held) or reject it; never timed out.
``superseded`` a newer version of the same object won; this version's result is never written.

A retry (an operator's decision, ``JobStore.begin_retry``) is the only way back from a terminal
status: it starts a new, numbered attempt of the same job and keeps the previous one in ``history``.
A job that copies an earlier job's result (``reused_from``, no run) goes ``received → copying``;
if that result vanished before the copy, ``JobStore.reopen_for_run`` puts it back to ``received``
to run: the one move back between open statuses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypedDict

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
    NEEDS_REVIEW = "needs_review"

    @property
    def is_open(self) -> bool:
        return self in OPEN

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


# The status groups, one name each; the CLI and the job store use them as they are, never a copy.
# Stated, not derived: adding a status means deciding here which side it is on (checked below).
OPEN: frozenset[Status] = frozenset(
    {Status.RECEIVED, Status.HELD, Status.SUBMITTED, Status.COPYING, Status.NEEDS_REVIEW}
)
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
    # A doubtful result waits for a person; approving it publishes what was held.
    Status.NEEDS_REVIEW: frozenset({Status.COPYING}),
    Status.SUCCEEDED: frozenset({Status.COPYING, Status.NEEDS_REVIEW}),
    Status.FAILED: OPEN,
    Status.CANCELED: OPEN,
    Status.TIMED_OUT: OPEN,
    Status.SUPERSEDED: OPEN,
    # A bad upload, or a held result a person rejected.
    Status.REJECTED: frozenset({Status.RECEIVED, Status.NEEDS_REVIEW}),
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


@dataclass(frozen=True)
class Stored:
    """How one attribute of the job record is kept in the jobs table."""

    # Stored value (plain, or DynamoDB's Decimal) to field value.
    decode: Callable[[Any], Any]
    # Field value to stored value; None (an empty list too) means the attribute is not stored.
    encode: Callable[[Any], Any] = lambda value: value
    # Belongs to one attempt: a retry puts it back to its default (removing it if that is empty).
    per_attempt: bool = False
    # The value of a required attribute an older item lacks, from the item (None: it is required).
    absent: Callable[[Mapping[str, Any]], Any] | None = None


def _opt(decode: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else decode(value)


def _list_or_none(value: list[Any]) -> list[Any] | None:
    return list(value) or None


def _outputs_or_none(outputs: list[OutputRef]) -> list[dict[str, str]] | None:
    return outputs_to_item(outputs) or None


def stored_map(value: Mapping[str, Any]) -> dict[str, Any] | None:
    """A map of plain values as DynamoDB takes it (no floats: Decimals); None when empty."""
    stored: dict[str, Any] | None = json.loads(json.dumps(value), parse_float=Decimal) if value else None
    return stored


def _plain(raw: Any) -> Any:
    """A stored map back in plain values (DynamoDB's Decimals as int or float)."""
    if isinstance(raw, Mapping):
        return {str(k): _plain(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_plain(v) for v in raw]
    if isinstance(raw, Decimal):
        return int(raw) if raw == raw.to_integral_value() else float(raw)
    return raw


def _how(how: Stored) -> Mapping[str, Stored]:
    return {"stored": how}


# Field metadata for the common kinds of attribute.
_REQUIRED = _how(Stored(str))
_TEXT = _how(Stored(_opt(str)))
_NUMBER = _how(Stored(_opt(int)))
_ATTEMPT_TEXT = _how(Stored(_opt(str), per_attempt=True))
_ATTEMPT_NUMBER = _how(Stored(_opt(int), per_attempt=True))


@dataclass
class Job:
    """The job record: every attribute of a jobs-table item is a field here, and only here.

    ``to_item``, ``from_item`` and a retry's clearing of the finished attempt are derived from these
    declarations. ``open_shard`` is the one stored attribute that is not a field: it follows ``status``.
    """

    job_id: str = field(metadata=_REQUIRED)
    status: Status = field(metadata=_how(Stored(Status, encode=lambda status: status.value)))
    source_bucket: str = field(metadata=_REQUIRED)
    source_key: str = field(metadata=_REQUIRED)
    color: str = field(metadata=_how(Stored(str, absent=lambda item: "")))
    created_at: str = field(metadata=_REQUIRED)
    updated_at: str = field(metadata=_how(Stored(str, absent=lambda item: item["created_at"])))
    source_version_id: str | None = field(default=None, metadata=_TEXT)
    source_etag: str | None = field(default=None, metadata=_TEXT)
    source_size: int | None = field(default=None, metadata=_NUMBER)
    color_source: str | None = field(default=None, metadata=_TEXT)
    run_id: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    run_status: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    output_urls: list[OutputRef] = field(
        default_factory=list,
        metadata=_how(Stored(outputs_from_item, encode=_outputs_or_none, per_attempt=True)),
    )
    result_bucket: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    result_keys: list[str] = field(
        default_factory=list,
        metadata=_how(Stored(lambda raw: [str(k) for k in raw], encode=_list_or_none, per_attempt=True)),
    )
    error_code: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    error_message: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    completed_at: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    submitted_at: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    runflow_duration_ms: int | None = field(default=None, metadata=_ATTEMPT_NUMBER)
    # The request that created this attempt's run: a new attempt makes a new request.
    runflow_request_id: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    retryable_errors: int = field(default=0, metadata=_how(Stored(int, per_attempt=True)))
    create_pending_since: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    # When the reconciler last queued this job's copy again.
    copy_requeued_at: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    # The UTC day one run of the budget was reserved for this attempt.
    reserved_on: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    superseded_by: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    # SHA-256 (hex) of the source version's bytes: the same for every attempt.
    content_digest: str | None = field(default=None, metadata=_TEXT)
    # The earlier job whose result this attempt copied (no run of its own).
    reused_from: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    # Rendition name → {key, width, height, format, bytes, verdict, reasons, checks, spec}: what the
    # copy worker made from the result (``key`` None: not made), ``spec`` the profile's fingerprint.
    renditions: dict[str, dict[str, Any]] = field(
        default_factory=dict, metadata=_how(Stored(_plain, encode=stored_map, per_attempt=True))
    )
    # The quality gate's assessment of the result (``backdrop.quality``): {verdict, reasons, checks};
    # absent when the gate is off.
    quality: dict[str, Any] = field(
        default_factory=dict, metadata=_how(Stored(_plain, encode=stored_map, per_attempt=True))
    )
    # Where a held result and its renditions wait (under the review prefix) while ``needs_review``.
    held_keys: list[str] = field(
        default_factory=list,
        metadata=_how(Stored(lambda raw: [str(k) for k in raw], encode=_list_or_none, per_attempt=True)),
    )
    # A person's decision on a held result: {decision, note, reviewer, at}.
    review: dict[str, Any] = field(
        default_factory=dict, metadata=_how(Stored(_plain, encode=stored_map, per_attempt=True))
    )
    attempt: int = field(default=1, metadata=_how(Stored(int)))
    history: list[dict[str, Any]] = field(
        default_factory=list, metadata=_how(Stored(lambda raw: [dict(h) for h in raw], encode=_list_or_none))
    )
    # When a finished attempt's record expires (DynamoDB TTL, epoch seconds); set by a terminal move.
    expires_at: int | None = field(default=None, metadata=_ATTEMPT_NUMBER)
    # The attempt's completion event: pending (sparse index PendingEvents) until published, claimed
    # (epoch seconds) by a republisher, and when it was published.
    event_shard: str | None = field(default=None, metadata=_ATTEMPT_TEXT)
    event_claimed_at: int | None = field(default=None, metadata=_ATTEMPT_NUMBER)
    event_published_at: str | None = field(default=None, metadata=_ATTEMPT_TEXT)

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
        item: dict[str, Any] = {}
        for f, how in STORED.items():
            value = how.encode(getattr(self, f.name))
            if value is not None:
                item[f.name] = value
        if self.status in OPEN:
            item["open_shard"] = OPEN_SHARD
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Job:
        values: dict[str, Any] = {}
        for f, how in STORED.items():
            raw = item.get(f.name)
            if raw is not None:
                values[f.name] = how.decode(raw)
            elif how.absent is not None:
                values[f.name] = how.absent(item)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise KeyError(f.name)  # a required attribute
        return cls(**values)


# Every field of the record with how it is stored, in declaration order.
STORED: dict[Field[Any], Stored] = {f: f.metadata["stored"] for f in fields(Job)}


class JobChanges(TypedDict, total=False):
    """The attributes one job write changes, as stored (None removes one), so that mypy refuses a
    misspelt name. The status and the timestamps, index marks and counters that go with a move are the
    job store's own writes, not changes."""

    run_id: str | None
    run_status: str | None
    output_urls: list[dict[str, str]] | None
    runflow_duration_ms: int | None
    runflow_request_id: str | None
    submitted_at: str | None
    create_pending_since: str | None
    reserved_on: str | None
    copy_requeued_at: str | None
    result_bucket: str | None
    result_keys: list[str] | None
    error_code: str | None
    error_message: str | None
    superseded_by: str | None
    content_digest: str | None
    reused_from: str | None
    renditions: dict[str, Any] | None
    quality: dict[str, Any] | None
    held_keys: list[str] | None
    review: dict[str, Any] | None


# Longest error message a job keeps (Runflow's and exceptions' messages may be long).
MAX_MESSAGE = 1000


def failure(code: str, message: str) -> JobChanges:
    """The error a job records: its code and (at most ``MAX_MESSAGE`` characters of) its message."""
    return {"error_code": code, "error_message": message[:MAX_MESSAGE]}


def attempt_defaults() -> dict[str, Any]:
    """The attributes a retry clears, each with the stored value a new attempt starts from (None: absent)."""
    cleared: dict[str, Any] = {}
    for f, how in STORED.items():
        if how.per_attempt:
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            cleared[f.name] = how.encode(default)
    return cleared
