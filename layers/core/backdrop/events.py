"""Completion events: one EventBridge event for every job attempt that reaches a terminal status.

The event is tied to the transition that won: the conditional write that ends a job also marks
its event pending (sparse index ``PendingEvents``), and only the writer whose move succeeded
publishes it, then marks it published. If the publish fails (EventBridge unavailable, the
function dies in between), the mark stays and the reconciler republishes the event later, after
claiming it with a conditional write so two republishers never both send it. Consumers may still
de-duplicate on ``detail.event_id`` (EventBridge itself delivers at least once).

Detail, version 1 (``detail.schema_version == "1"``): see ``completion_detail`` and the README.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from backdrop.content import settle_content
from backdrop.jobs import Job, JobChanges, Status, parse_iso
from backdrop.jobstore import Move
from backdrop.observability import count, logger
from backdrop.outcomes import ENDED, Outcome, Result
from backdrop.services import Services

SOURCE = "backdrop"
SCHEMA_VERSION = "1"
DETAIL_TYPES: Mapping[Status, str] = {
    Status.SUCCEEDED: "Job Succeeded",
    Status.FAILED: "Job Failed",
    Status.REJECTED: "Job Rejected",
    Status.CANCELED: "Job Canceled",
    Status.TIMED_OUT: "Job Timed Out",
    Status.SUPERSEDED: "Job Superseded",
}
# What the event tells of each rendition (the job's entry also keeps the measured checks).
RENDITION_FIELDS = ("key", "width", "height", "format", "bytes", "verdict", "reasons")


def source_detail(job: Job) -> dict[str, Any]:
    """The job's source object, as every event about it names it."""
    return {
        "bucket": job.source_bucket,
        "key": job.source_key,
        "version_id": job.source_version_id,
        "etag": job.source_etag,
    }


def renditions_detail(job: Job) -> dict[str, dict[str, Any]] | None:
    """The job's renditions, as every event about it carries them (None: there are none)."""
    return {
        name: {field: entry.get(field) for field in RENDITION_FIELDS}
        for name, entry in job.renditions.items()
    } or None


def completion_detail(job: Job) -> dict[str, Any]:
    duration_ms: int | None = None
    if job.completed_at:
        duration_ms = round((parse_iso(job.completed_at) - parse_iso(job.created_at)).total_seconds() * 1000)
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": f"{job.job_id}:{job.attempt}",
        "job_id": job.job_id,
        "attempt": job.attempt,
        "status": job.status.value,
        "source": source_detail(job),
        "result": {"bucket": job.result_bucket, "keys": list(job.result_keys)} if job.result_keys else None,
        "color": job.color,
        "color_source": job.color_source,
        "run_id": job.run_id,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "superseded_by": job.superseded_by,
        "reused": job.reused_from is not None,
        "reused_from": job.reused_from,
        "renditions": renditions_detail(job),
        # The quality checks of the result (absent: the gate is off), and a person's decision on it.
        "quality": job.quality or None,
        "review": job.review or None,
        "created_at": job.created_at,
        "completed_at": job.completed_at,
        "duration_ms": duration_ms,
    }


def end_job(services: Services, job_id: str, status: Status, *, changes: JobChanges) -> Move:
    """Move a job to a terminal status and, if this move won, announce it."""
    move = services.jobs.try_transition(job_id, status, changes=changes)
    if move.moved and move.job is not None:
        announce(services, move.job)
        settle_content(services, move.job)
    return move


def conclude(
    services: Services,
    job: Job,
    status: Status,
    changes: JobChanges,
    *,
    metric: str,
    run_id: str | None = None,
    detail: str = "",
    moved_on: str = "job moved on",
    log: str = "",
    extra: Mapping[str, Any] | None = None,
    warn: bool = False,
    outcome: Outcome | None = None,
    then: Callable[[Job], object] | None = None,
) -> Result:
    """The one way a use case moves a job on and says what it did: the conditional move (a
    terminal one announced); ``ALREADY_DONE`` with ``moved_on`` if the job was no longer where the
    move starts from (a duplicate, late or racing worker got there first); else ``metric`` counted,
    ``then`` called with the job as moved, ``log`` logged, and the status's outcome (``ENDED``; an
    open status names its ``outcome``)."""
    if status.is_terminal:
        move = end_job(services, job.job_id, status, changes=changes)
    else:
        move = services.jobs.try_transition(job.job_id, status, changes=changes)
    if not move.moved or move.job is None:
        current = move.job.status.value if move.job else None
        logger.info("Job moved on meanwhile", extra={"target_status": status.value, "job_status": current})
        return Result(Outcome.ALREADY_DONE, job.job_id, run_id, moved_on)
    count(metric)
    if then is not None:
        then(move.job)
    if log:
        (logger.warning if warn else logger.info)(log, extra=dict(extra or {}))
    return Result(outcome or ENDED[status], job.job_id, run_id, detail)


def announce(services: Services, job: Job) -> bool:
    """Publish the job's completion event and mark it published; False if it stays pending."""
    bus = services.settings.event_bus
    if not bus or job.status not in DETAIL_TYPES:
        return False
    entry = {
        "Source": SOURCE,
        "DetailType": DETAIL_TYPES[job.status],
        "Detail": json.dumps(completion_detail(job), separators=(",", ":")),
        "EventBusName": bus,
        "Resources": [],
    }
    try:
        answer = services.eventbridge.put_events(Entries=[entry])  # type: ignore[list-item]
        failed = answer.get("FailedEntryCount", 0)
    except Exception as exc:  # the mark stays: the reconciler publishes it later
        logger.warning("Completion event not published yet", extra={"reason": str(exc)})
        count("EventsDeferred")
        return False
    if failed:
        reason = answer.get("Entries", [{}])[0].get("ErrorMessage", "refused")
        logger.warning("Completion event not published yet", extra={"reason": reason})
        count("EventsDeferred")
        return False
    services.jobs.mark_announced(job.job_id, job.attempt)
    count("EventsPublished")
    return True


def republish_pending(services: Services, *, older_than: str, limit: int) -> int:
    """Publish the events still pending since before ``older_than`` (the reconciler's pass)."""
    if not services.settings.event_bus:
        return 0
    published = 0
    for job in services.jobs.pending_announcements(completed_before=older_than, limit=limit):
        if services.jobs.claim_announcement(job.job_id, job.attempt) and announce(services, job):
            published += 1
    return published
