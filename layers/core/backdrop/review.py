"""The quality gate's waiting room: results held back for a person, and the person's decision.

With ``QualityGate`` ``hold`` the copy worker writes a run's outputs and renditions under the
review prefix first, in one folder per job, with the file names they get in the result folder::

    <review prefix><job_id>/result.png, <review prefix><job_id>/rendition-<name>.jpg

and judges the result there. A result that passes is published (``copying``); a doubtful one stays
where it is and the job waits in ``needs_review`` (``hold_for_review``): nothing was written under
the results prefix, and the result published before (an older version's) stays. A person then
sends a ``ReviewRequest``: approve publishes exactly the held objects (``copying``), reject deletes
them and ends the job ``rejected`` (``reject``). While a job is held, it keeps the content lease of
its pixels (``backdrop.reuse``): a duplicate upload waits for the decision instead of paying for a
run of the same bytes, and then reuses the approved result (or runs, after a rejection).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from backdrop.errors import ErrorCode
from backdrop.events import SOURCE, conclude, renditions_detail, source_detail
from backdrop.jobs import Job, Status, failure, now_iso, stored_map
from backdrop.ledger import holder_of
from backdrop.observability import count, logger
from backdrop.outcomes import Outcome, Result
from backdrop.queues import Decision, ReviewRequest
from backdrop.services import Services

NEEDS_REVIEW_DETAIL_TYPE = "Job Needs Review"


def held_folder(services: Services, job_id: str) -> str:
    """Where one job's held result and renditions wait (``<review prefix><job_id>/``)."""
    return f"{services.settings.review_prefix}{job_id}/"


def passes(quality: dict[str, Any] | None, review: dict[str, Any] | None = None) -> bool:
    """Whether a result may be published under ``hold``: its checks passed, or a person approved
    those very pixels (a reuse of an approved result)."""
    if review and review.get("decision") == Decision.APPROVE.value:
        return True
    return quality is None or quality.get("verdict") != "doubt"


def review_record(request: ReviewRequest) -> dict[str, Any]:
    return {
        "decision": request.decision.value,
        "note": request.note,
        "reviewer": request.reviewer,
        "at": now_iso(),
    }


def hold_for_review(
    services: Services,
    job: Job,
    keys: list[str],
    renditions: dict[str, dict[str, Any]],
    quality: dict[str, Any],
) -> Result:
    """Park a doubtful result: the job waits in ``needs_review`` with its held objects, a
    ``Job Needs Review`` event is sent, and its content lease is kept for the decision."""
    result = conclude(
        services,
        job,
        Status.NEEDS_REVIEW,
        {
            "result_bucket": services.settings.results_bucket,
            "result_keys": None,
            "held_keys": keys,
            "renditions": stored_map(renditions),
            "quality": stored_map(quality),
            "error_code": None,
            "error_message": None,
        },
        metric="JobsHeldForReview",
        run_id=job.run_id,
        outcome=Outcome.HELD_FOR_REVIEW,
        detail="; ".join(quality.get("reasons", [])),
        moved_on="job moved on before it was held for review",
        log="Job held for review",
        extra={"held_keys": keys, "reasons": quality.get("reasons", [])},
        then=lambda held: _on_hold(services, held),
    )
    if result.outcome is Outcome.ALREADY_DONE:
        discard(services, keys)  # nothing points at them any more
    return result


def _on_hold(services: Services, job: Job) -> None:
    announce_review(services, job)
    _keep_content_lease(services, job)


def _keep_content_lease(services: Services, job: Job) -> None:
    """A held job keeps the content lease of its pixels past its run deadline: duplicates wait for
    the decision (they then reuse the approved result) rather than pay for the same run again."""
    if not services.settings.reuse_results or job.content_digest is None:
        return
    until = services.clock() + services.settings.retention_days * 86400
    try:
        services.contents.hold(job.content_digest, job.color, holder_of(job.job_id, job.attempt), until)
    except (ClientError, BotoCoreError) as exc:
        # The lease then ends at the run deadline; duplicates run instead of waiting.
        logger.warning("Content lease not extended for the review", extra={"reason": str(exc)})


def review_detail(job: Job) -> dict[str, Any]:
    """The ``Job Needs Review`` event's detail."""
    return {
        "job_id": job.job_id,
        "attempt": job.attempt,
        "source": source_detail(job),
        "color": job.color,
        "quality": job.quality or None,
        "held_bucket": job.result_bucket,
        "held_keys": list(job.held_keys),
        "renditions": renditions_detail(job),
        "created_at": job.created_at,
        "held_at": job.updated_at,
    }


def announce_review(services: Services, job: Job) -> bool:
    """Send the ``Job Needs Review`` event and note it on the job; False if it was not sent (the
    reconciler sends it again: it looks at every held job on each pass)."""
    bus = services.settings.event_bus
    if not bus:
        return False
    entry: Any = {
        "Source": SOURCE,
        "DetailType": NEEDS_REVIEW_DETAIL_TYPE,
        "Detail": json.dumps(review_detail(job), separators=(",", ":")),
        "EventBusName": bus,
        "Resources": [],
    }
    try:
        answer = services.eventbridge.put_events(Entries=[entry])
    except Exception as exc:
        logger.warning("Needs-review event not sent yet", extra={"reason": str(exc)})
        count("EventsDeferred")
        return False
    if answer.get("FailedEntryCount", 0):
        logger.warning("Needs-review event not sent yet", extra={"reason": str(answer.get("Entries"))})
        count("EventsDeferred")
        return False
    services.jobs.mark_review_announced(job.job_id)
    count("EventsPublished")
    return True


def reject(services: Services, job: Job, request: ReviewRequest) -> Result:
    """End a held job ``rejected`` with the reviewer's note, its held objects deleted."""
    note = (request.note or "").strip() or f"rejected by {request.reviewer}"
    result = conclude(
        services,
        job,
        Status.REJECTED,
        {
            **failure(ErrorCode.REJECTED_BY_REVIEW, note),
            "held_keys": None,
            "renditions": None,
            "review": stored_map(review_record(request)),
        },
        metric="JobsRejectedByReview",
        run_id=job.run_id,
        detail=note,
        moved_on="job moved on before the rejection",
        log="Held result rejected",
        extra={"reviewer": request.reviewer, "note": note},
    )
    if result.outcome is Outcome.REJECTED:
        discard(services, job.held_keys)
    return result


def discard(services: Services, keys: Iterable[str]) -> None:
    """Delete held objects (only ever under the review prefix); one that cannot be deleted now is
    logged and left: it is never published, and names its job in its metadata."""
    bucket, prefix = services.settings.results_bucket, services.settings.review_prefix
    for key in keys:
        if not key.startswith(prefix):
            logger.error("Not deleting an object outside the review prefix", extra={"key": key})
            continue
        try:
            services.s3.delete_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            logger.warning("Could not delete a held object", extra={"key": key, "reason": str(exc)})


def discard_folder(services: Services, job_id: str) -> None:
    """Delete whatever is left in a job's held folder (a copy that stopped between publishing and
    tidying up)."""
    folder = held_folder(services, job_id)
    try:
        answer = services.s3.list_objects_v2(Bucket=services.settings.results_bucket, Prefix=folder)
    except ClientError as exc:
        logger.warning("Could not list a held folder", extra={"folder": folder, "reason": str(exc)})
        return
    discard(services, [str(o["Key"]) for o in answer.get("Contents", [])])
