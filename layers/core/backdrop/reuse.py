"""Reuse: the same pixels in the same colour are never paid for twice.

After an upload passes its checks, its job records ``content_digest`` (``identity``). With
``reuse_results`` on, the content record (``ledger.ContentLedger``, content and colour) decides:
1. an earlier job succeeded for it and every one of its result objects still exists (a HEAD each)
   → the job moves to ``copying`` with ``reused_from``, and the copy worker copies those objects
   server-side into this source's own result keys; no run, no budget;
2. nobody holds the content lease → this job takes it and runs as any job does;
3. another job holds it → this job stays ``received`` with ``CONTENT_IN_FLIGHT``, listed among the
   waiters, until the holder ends and wakes it (``content``): then it reuses the holder's result,
   or, if the holder failed, the first waiter to take the lease runs, and the others wait again.
A reuse whose earlier result vanishes before it is copied falls back to a run (``fall_back``).
"""

from __future__ import annotations

from dataclasses import replace

from botocore.exceptions import ClientError

from backdrop.content import wake
from backdrop.errors import ErrorCode
from backdrop.events import conclude
from backdrop.identity import content_digest
from backdrop.jobs import Job, Status, failure
from backdrop.ledger import ContentRecord, holder_of, parse_holder
from backdrop.observability import count, logger
from backdrop.outcomes import Outcome, Result, RetryLater
from backdrop.queues import CopyRequest
from backdrop.services import Services
from backdrop.timing import CONTENT_LEASE_RETRY_SECONDS

# Tries at taking or waiting on a lease that changes hands between the two conditional writes.
LEASE_TRIES = 3


def with_digest(services: Services, job: Job) -> Job:
    """The job with its content digest, computed (from S3's stored checksum, or one streamed read)
    and recorded the first time."""
    if job.content_digest is not None:
        return job
    try:
        digest = content_digest(services.s3, job.upload())
    except ClientError as exc:
        raise RetryLater(f"reading the upload's content digest failed: {exc}") from exc
    services.jobs.update_open(
        job.job_id, job.status, {"content_digest": digest}, only_if={"content_digest": None}
    )
    return replace(job, content_digest=digest)


def reuse_or_wait(services: Services, job: Job) -> Result | None:
    """Reuse an earlier result, or wait for the job running the same content: the result of that.
    None: the job may run (it holds the content lease, or reuse is off)."""
    digest = job.content_digest
    if not services.settings.reuse_results or digest is None:
        return None
    contents = services.contents
    record = contents.get(digest, job.color)
    if _reusable(services, job, record):
        return _reuse(services, job, record)
    holder = holder_of(job.job_id, job.attempt)
    until = services.clock() + services.settings.run_deadline_minutes * 60
    for _ in range(LEASE_TRIES):
        found = contents.hold(digest, job.color, holder, until)
        if found is None:
            current = contents.wait(digest, job.color, holder)
            if current is not None:
                return _wait(services, job, current)
            continue  # the lease was given up in between: try to take it again
        if not _reusable(services, job, found):
            return None
        # The holder before us succeeded just now: reuse its result, and wake whoever waited.
        _give_back(services, job, holder)
        return _reuse(services, job, found)
    raise RetryLater("the content lease kept changing hands", after_seconds=CONTENT_LEASE_RETRY_SECONDS)


def _reusable(services: Services, job: Job, record: ContentRecord) -> bool:
    """Whether ``record`` names an earlier success whose result objects all still exist. A record
    whose result is gone is forgotten, and the job runs."""
    if record.done_job_id is None or record.done_job_id == job.job_id or not record.done_keys:
        return False
    if all(_exists(services, key) for key in record.done_keys):
        return True
    logger.info(
        "An earlier result of this content is gone; running instead", extra={"job": record.done_job_id}
    )
    count("ReuseFellBack")
    assert job.content_digest is not None
    services.contents.forget_done(job.content_digest, job.color, record.done_job_id)
    return False


def _exists(services: Services, key: str) -> bool:
    try:
        services.s3.head_object(Bucket=services.settings.results_bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise RetryLater(f"checking the earlier result {key} failed: {exc}") from exc
    return True


def _give_back(services: Services, job: Job, holder: str) -> None:
    assert job.content_digest is not None
    waiters = services.contents.release(job.content_digest, job.color, holder)
    if waiters:
        wake(services, waiters)


def _reuse(services: Services, job: Job, record: ContentRecord) -> Result:
    earlier = record.done_job_id
    assert earlier is not None
    return conclude(
        services,
        job,
        Status.COPYING,
        {"reused_from": earlier, "error_code": None, "error_message": None},
        metric="ResultsReused",
        outcome=Outcome.COPY_QUEUED,
        detail=f"reusing the result of job {earlier}",
        moved_on="job moved on before it could reuse a result",
        log="Reusing an earlier result of the same content and colour",
        extra={"reused_from": earlier},
        then=lambda _: queue_reuse_copy(services, job.job_id, earlier),
    )


def queue_reuse_copy(services: Services, job_id: str, reused_from: str) -> None:
    try:
        services.copy_queue().send(CopyRequest(job_id, "", reused_from).body())
    except Exception as exc:
        # The job is in copying: the reconciler queues its copy again.
        logger.warning("Could not queue the reuse copy", extra={"reason": str(exc)})
        raise RetryLater(f"could not queue the copy: {exc}") from exc


def _wait(services: Services, job: Job, holder: str) -> Result:
    running, _ = parse_holder(holder)
    message = (
        f"job {running} is running the same content in this colour; "
        "this job reuses its result when it ends (or runs, if that run fails)"
    )
    services.jobs.update_open(job.job_id, job.status, failure(ErrorCode.CONTENT_IN_FLIGHT, message))
    if job.error_code != ErrorCode.CONTENT_IN_FLIGHT:  # counted once, not at each look again
        count("ContentWaits")
    logger.info("Waiting for the job running the same content", extra={"holder": holder})
    return Result(Outcome.WAITING, job.job_id, detail=message)


def fall_back(services: Services, job: Job) -> Result:
    """A reuse whose earlier result vanished before it was copied: forget that result, put the job
    back to ``received`` and send it to the submit function, which runs it (or reuses a newer one)."""
    assert job.reused_from is not None
    if job.content_digest is not None:
        services.contents.forget_done(job.content_digest, job.color, job.reused_from)
    if not services.jobs.reopen_for_run(job):
        return Result(Outcome.ALREADY_DONE, job.job_id, detail="job moved on before it fell back to a run")
    count("ReuseFellBack")
    logger.warning(
        "The reused result vanished before the copy; running instead", extra={"reused_from": job.reused_from}
    )
    wake(services, [holder_of(job.job_id, job.attempt)])
    return Result(Outcome.WAITING, job.job_id, detail=f"the result of job {job.reused_from} is gone: running")
