"""The reconciler: nothing stays open forever without saying why.

Runs on a schedule over the sparse OpenJobs index, oldest first and bounded per run:
- a job with a run whose callback never came: read the run; a finished run goes through the very
  same path as a callback (``apply_run_report``), which queues the copy;
- a job stuck in ``copying`` (its copy message used up or lost): queue the copy again, at most
  once per copy-queue visibility timeout and not while the copy queue has a backlog;
- a job that never got a run (crash or outage between claim and create): create it, through the
  same guarded path as the submit (an earlier create whose answer was lost is looked up first);
- a job still open past the run deadline: ``timed_out``, counted (and alarmed on); one without a
  run is first looked up at Runflow, in case a create whose answer was lost made one, and ends
  ``RUN_UNCONFIRMED`` when a create was sent and no run was ever confirmed;
- jobs ``held`` for the daily run budget, oldest first, as far as today's budget allows: handed to
  the submit function again (they never time out: they wait for the budget, not for Runflow);
- completion events still pending (their publish failed): published again.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from backdrop.completion import apply_run_report, requeue_copy
from backdrop.errors import ErrorCode
from backdrop.events import end_job, republish_pending
from backdrop.jobs import Job, Status, format_iso, iso_from_epoch, parse_iso
from backdrop.observability import count, logger
from backdrop.outcomes import Outcome, RetryLater
from backdrop.queues import JobMessage
from backdrop.runs import RunflowError, RunflowRejected
from backdrop.services import Services
from backdrop.submission import adopt_earlier_run, resubmit


@dataclass
class ReconcileReport:
    examined: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {"examined": self.examined, **dict(self.outcomes)}


# Events whose publisher is (probably) still at it are left alone for this long.
EVENT_GRACE_SECONDS = 60


def reconcile(services: Services, *, deadline: float) -> ReconcileReport:
    settings = services.settings
    now = datetime.fromtimestamp(services.clock(), UTC)
    cutoff = format_iso(now - timedelta(seconds=settings.reconcile_min_age_seconds))
    report = ReconcileReport()
    republished = republish_pending(
        services,
        older_than=format_iso(now - timedelta(seconds=EVENT_GRACE_SECONDS)),
        limit=settings.reconcile_batch_size,
    )
    if republished:
        report.outcomes["events_republished"] = republished
    resumable = _Resumable(services)
    copies = _CopyRequeues(services)
    for job in services.jobs.open_jobs(created_before=cutoff, limit=settings.reconcile_batch_size):
        if time.monotonic() >= deadline:
            report.outcomes["deferred_for_time"] += 1
            break
        report.examined += 1
        with logger.append_context_keys(job_id=job.job_id, run_id=job.run_id):
            try:
                outcome = (
                    resumable.resume(job)
                    if job.status is Status.HELD
                    else _reconcile_one(services, job, now, copies)
                )
            except (RunflowError, RetryLater) as exc:
                outcome = "retry_later"
                logger.warning("Reconciler could not finish a job now", extra={"reason": str(exc)})
        report.outcomes[outcome] += 1
    logger.info("Reconciler pass finished", extra={"report": report.as_dict()})
    return report


def _reconcile_one(services: Services, job: Job, now: datetime, copies: _CopyRequeues) -> str:
    settings = services.settings
    overdue = now - parse_iso(job.created_at) > timedelta(minutes=settings.run_deadline_minutes)
    if job.run_id is None:
        if overdue:
            # A create whose answer was lost may have made a run after all: finish that one instead.
            if job.create_pending_since is not None:
                adopted = adopt_earlier_run(services, job)
                if adopted is not None and adopted.outcome is not Outcome.WAITING:
                    return f"adopted_{adopted.outcome.value}"
                # A create was sent and Runflow never confirmed a run: one may exist (and be billed).
                return _time_out(
                    services,
                    job,
                    f"no run confirmed before the run deadline: a create sent at {job.create_pending_since} "
                    f"may have made one ({job.error_message or 'its answer was lost'})",
                    code=ErrorCode.RUN_UNCONFIRMED,
                )
            reason = job.error_message or "no Runflow run could be created before the run deadline"
            return _time_out(services, job, f"no run before the run deadline: {reason}")
        result = resubmit(services, job)
        if result.outcome is Outcome.SUBMITTED:
            count("JobsRecovered")
        return f"resubmitted_{result.outcome.value}"

    if job.status is Status.COPYING:
        if overdue and job.retryable_errors > 0:
            return _time_out(
                services, job, f"the output could not be copied before the run deadline: {job.error_message}"
            )
        return copies.requeue(job, now, overdue=overdue)

    try:
        run = services.runflow().get_run(job.run_id)
    except RunflowRejected as exc:
        if exc.http_status != 404:
            raise
        # Runflow does not know the run: it can never call back or finish.
        move = end_job(
            services,
            job.job_id,
            Status.FAILED,
            changes={"error_code": exc.code, "error_message": exc.message},
        )
        if not move.moved:
            return Outcome.ALREADY_DONE.value
        count("JobsFailed")
        return "failed_run_not_found"
    if not run.is_terminal:
        if overdue:
            return _time_out(services, job, f"run {job.run_id} still {run.status} after the run deadline")
        return "still_running"
    applied = apply_run_report(job, run, services, authoritative=True)
    if applied.outcome not in (Outcome.ALREADY_DONE, Outcome.RUN_MISMATCH):
        count("JobsRecovered")
    return f"completed_{applied.outcome.value}"


class _CopyRequeues:
    """Copies queued again, without flooding the copy queue with copies it still holds.

    A job in ``copying`` whose message was lost or used up looks exactly like one whose message
    waits in a backlog or is being copied, so each job's copy is queued again at most once per
    window: first ``reconcile_min_age_seconds`` after its last change, then once per copy-queue
    visibility timeout (``copy_requeue_after_seconds``) after the last requeue, recorded on the
    job with a conditional write. While messages wait in the copy queue, none is added (the job's
    own may be among them) unless the job is past its run deadline.
    """

    def __init__(self, services: Services) -> None:
        self._services = services
        self._waiting: int | None = None

    def requeue(self, job: Job, now: datetime, *, overdue: bool) -> str:
        settings = self._services.settings
        if job.copy_requeued_at is None:
            since, window = job.updated_at, settings.reconcile_min_age_seconds
        else:
            since = job.copy_requeued_at
            window = max(settings.copy_requeue_after_seconds, settings.reconcile_min_age_seconds)
        if now - parse_iso(since) <= timedelta(seconds=window):
            return "copy_in_progress"
        if not overdue:
            if self._waiting is None:
                self._waiting = self._services.copy_queue().waiting()
            if self._waiting > 0:
                return "copy_queue_busy"
        stamp = format_iso(now)
        jobs = self._services.jobs
        if not jobs.update_open(
            job.job_id,
            Status.COPYING,
            {"copy_requeued_at": stamp},
            only_if={"copy_requeued_at": job.copy_requeued_at},
        ):
            return Outcome.ALREADY_DONE.value  # finished, or queued again by another pass meanwhile
        try:
            requeue_copy(self._services, job)
        except RetryLater:
            # Not queued after all: the next pass may try again instead of a whole window later.
            jobs.update_open(
                job.job_id,
                Status.COPYING,
                {"copy_requeued_at": job.copy_requeued_at},
                only_if={"copy_requeued_at": stamp},
            )
            raise
        return "copy_requeued"


class _Resumable:
    """Held jobs go back to the submit function, oldest first, as many as today's budget has."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._left: int | object | None = _UNREAD

    def resume(self, job: Job) -> str:
        if self._left is _UNREAD:
            self._left = self._services.budget.remaining()
        if isinstance(self._left, int) and self._left <= 0:
            return "held"
        message = JobMessage(job.job_id, job.attempt, iso_from_epoch(self._services.clock()))
        self._services.uploads_queue().send(message.body())
        if isinstance(self._left, int):
            self._left -= 1
        return "held_resumed"


_UNREAD = object()


def _time_out(services: Services, job: Job, message: str, *, code: ErrorCode = ErrorCode.TIMED_OUT) -> str:
    move = end_job(
        services,
        job.job_id,
        Status.TIMED_OUT,
        changes={"error_code": code, "error_message": message[:1000]},
    )
    if not move.moved:
        return Outcome.ALREADY_DONE.value
    count("JobsTimedOut")
    logger.warning("Job timed out", extra={"reason": message})
    return Outcome.TIMED_OUT.value
