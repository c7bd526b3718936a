"""A job's end, as its content record sees it: a success is remembered for reuse, and the content
lease the job held is given up, waking the jobs that waited for it. Waking puts their submit
messages back on the uploads queue; a wake-up that is lost is made good by the reconciler, which
resubmits open jobs that have no run."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from backdrop.jobs import Job, Status, iso_from_epoch
from backdrop.ledger import holder_of, parse_holder
from backdrop.observability import logger
from backdrop.queues import JobMessage
from backdrop.services import Services


def settle_content(services: Services, job: Job) -> None:
    """Called once the job reached a terminal status (by the move that won)."""
    digest = job.content_digest
    if digest is None:
        return
    contents = services.contents
    try:
        if job.status is Status.SUCCEEDED and job.result_keys:
            contents.record_done(digest, job.color, job.job_id, job.result_keys)
        waiters = contents.release(digest, job.color, holder_of(job.job_id, job.attempt))
    except (ClientError, BotoCoreError) as exc:
        # The lease then ends at its deadline, and the reconciler resubmits the waiters.
        logger.warning("Content record not updated at the job's end", extra={"reason": str(exc)})
        return
    if waiters:
        wake(services, waiters)


def wake(services: Services, waiters: list[str]) -> None:
    """Send each waiting job back to the submit function to reuse, wait or run."""
    sent_at = iso_from_epoch(services.clock())
    bodies = [JobMessage(*parse_holder(waiter), sent_at).body() for waiter in waiters]
    try:
        refused = services.uploads_queue().send_many(bodies)
    except (ClientError, BotoCoreError) as exc:
        refused = bodies
        logger.warning("Waiting jobs not woken; the reconciler resubmits them", extra={"reason": str(exc)})
    logger.info("Woke the jobs waiting for this content", extra={"woken": len(bodies) - len(refused)})
