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
- completion events still pending (their publish failed): published again;
- jobs held for review (``needs_review``) wait for a person: never timed out, never queued again,
  and never counted against the batch; each pass measures their backlog and the oldest one's age
  (``ReviewBacklog``, ``OldestReviewAgeMinutes``) and sends a ``Job Needs Review`` event not sent
  yet. A job waiting for the content a held job holds is not timed out while it waits.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from aws_lambda_powertools.metrics import MetricUnit

from backdrop.completion import apply_run_report, requeue_copy
from backdrop.errors import ErrorCode
from backdrop.events import conclude, republish_pending
from backdrop.jobs import Job, Status, failure, format_iso, iso_from_epoch, parse_iso
from backdrop.ledger import parse_holder
from backdrop.observability import count, logger, metrics
from backdrop.outcomes import Outcome, RetryLater
from backdrop.queues import JobMessage
from backdrop.review import announce_review
from backdrop.runs import RunflowError, RunflowRejected
from backdrop.services import Services
from backdrop.submission import adopt_earlier_run, resubmit


class Via(StrEnum):
    """The use case the reconciler handed a job to; with that use case's outcome, a report key."""

    RESUBMITTED = "resubmitted"  # the job had no run: created through the submit path
    ADOPTED = "adopted"  # past the deadline, the run a lost create made was found and recorded
    COMPLETED = "completed"  # the run had finished: applied as its callback would have been


class Seen(StrEnum):
    """What a pass found or did with a job when no use case's outcome says it."""

    STILL_RUNNING = "still_running"
    FAILED_RUN_NOT_FOUND = "failed_run_not_found"  # Runflow does not know the job's run
    COPY_IN_PROGRESS = "copy_in_progress"
    COPY_QUEUE_BUSY = "copy_queue_busy"
    COPY_REQUEUED = "copy_requeued"
    HELD_RESUMED = "held_resumed"
    RETRY_LATER = "retry_later"
    DEFERRED_FOR_TIME = "deferred_for_time"
    EVENTS_REPUBLISHED = "events_republished"
    WAITING_FOR_REVIEW = "waiting_for_review"  # held for a person's decision: left alone
    REVIEW_EVENTS_SENT = "review_events_sent"


@dataclass(frozen=True)
class Reconciled:
    """What a pass did with one job: an outcome (a use case's, or what it saw), and the use case
    it went through, if any. ``key`` names it in the pass's report."""

    outcome: Outcome | Seen
    via: Via | None = None

    @property
    def key(self) -> str:
        return f"{self.via.value}_{self.outcome.value}" if self.via else self.outcome.value


@dataclass
class ReconcileReport:
    examined: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def add(self, done: Reconciled, n: int = 1) -> None:
        self.outcomes[done.key] += n

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
        report.add(Reconciled(Seen.EVENTS_REPUBLISHED), republished)
    _watch_reviews(services, now, report)
    resumable = _Resumable(services)
    copies = _CopyRequeues(services)
    for job in services.jobs.open_jobs(created_before=cutoff, limit=settings.reconcile_batch_size):
        if time.monotonic() >= deadline:
            report.add(Reconciled(Seen.DEFERRED_FOR_TIME))
            break
        report.examined += 1
        with logger.append_context_keys(job_id=job.job_id, run_id=job.run_id):
            try:
                done = (
                    resumable.resume(job)
                    if job.status is Status.HELD
                    else _reconcile_one(services, job, now, copies)
                )
            except (RunflowError, RetryLater) as exc:
                done = Reconciled(Seen.RETRY_LATER)
                logger.warning("Reconciler could not finish a job now", extra={"reason": str(exc)})
        report.add(done)
    logger.info("Reconciler pass finished", extra={"report": report.as_dict()})
    return report


def _reconcile_one(services: Services, job: Job, now: datetime, copies: _CopyRequeues) -> Reconciled:
    overdue = now - parse_iso(job.created_at) > timedelta(minutes=services.settings.run_deadline_minutes)
    if job.status is Status.COPYING:  # a reuse copies without a run of its own
        if overdue and job.retryable_errors > 0:
            return _time_out(
                services, job, f"the output could not be copied before the run deadline: {job.error_message}"
            )
        return copies.requeue(job, now, overdue=overdue)
    if job.run_id is None:
        if overdue and not _waits_for_review(services, job):
            return _without_run(services, job)
        return _resubmit(services, job)
    return _check_run(services, job, job.run_id, overdue=overdue)


def _watch_reviews(services: Services, now: datetime, report: ReconcileReport) -> None:
    """Held jobs are only measured (for the dashboard and its alarm), and announced if their
    ``Job Needs Review`` event was not sent when they were held."""
    backlog, oldest, sent = 0, 0.0, 0
    announce_before = format_iso(now - timedelta(seconds=EVENT_GRACE_SECONDS))
    for job in services.jobs.review_backlog():
        backlog += 1
        oldest = max(oldest, (now - parse_iso(job.updated_at)).total_seconds() / 60)
        if (
            job.event_published_at is None
            and job.updated_at < announce_before
            and announce_review(services, job)
        ):
            sent += 1
    metrics.add_metric(name="ReviewBacklog", unit=MetricUnit.Count, value=backlog)
    metrics.add_metric(name="OldestReviewAgeMinutes", unit=MetricUnit.NoUnit, value=round(oldest, 1))
    if backlog:
        report.add(Reconciled(Seen.WAITING_FOR_REVIEW), backlog)
    if sent:
        report.add(Reconciled(Seen.REVIEW_EVENTS_SENT), sent)


def _waits_for_review(services: Services, job: Job) -> bool:
    """Whether the job waits for content whose holder is held for review: it waits for that
    decision (then reuses the approved result, or runs), however long a person takes."""
    if job.error_code != ErrorCode.CONTENT_IN_FLIGHT or job.content_digest is None:
        return False
    holder = services.contents.get(job.content_digest, job.color).holder
    if holder is None:
        return False
    held = services.jobs.get(parse_holder(holder)[0])
    return held is not None and held.status is Status.NEEDS_REVIEW


def _resubmit(services: Services, job: Job) -> Reconciled:
    result = resubmit(services, job)
    if result.outcome is Outcome.SUBMITTED:
        count("JobsRecovered")
    return Reconciled(result.outcome, Via.RESUBMITTED)


def _without_run(services: Services, job: Job) -> Reconciled:
    """A job past the run deadline that never recorded a run."""
    if job.create_pending_since is None:
        reason = job.error_message or "no Runflow run could be created before the run deadline"
        return _time_out(services, job, f"no run before the run deadline: {reason}")
    # A create whose answer was lost may have made a run after all: finish that one instead.
    adopted = adopt_earlier_run(services, job)
    if adopted is not None and adopted.outcome is not Outcome.WAITING:
        return Reconciled(adopted.outcome, Via.ADOPTED)
    # A create was sent and Runflow never confirmed a run: one may exist (and be billed).
    return _time_out(
        services,
        job,
        f"no run confirmed before the run deadline: a create sent at {job.create_pending_since} "
        f"may have made one ({job.error_message or 'its answer was lost'})",
        code=ErrorCode.RUN_UNCONFIRMED,
    )


def _check_run(services: Services, job: Job, run_id: str, *, overdue: bool) -> Reconciled:
    """A job whose run's callback never came: read the run."""
    try:
        run = services.runflow().get_run(run_id)
    except RunflowRejected as exc:
        if exc.http_status != 404:
            raise
        # Runflow does not know the run: it can never call back or finish.
        ended = conclude(
            services,
            job,
            Status.FAILED,
            failure(exc.code, exc.message),
            metric="JobsFailed",
            run_id=run_id,
        )
        return Reconciled(Seen.FAILED_RUN_NOT_FOUND if ended.outcome is Outcome.FAILED else ended.outcome)
    if not run.is_terminal:
        if overdue:
            return _time_out(services, job, f"run {run_id} still {run.status} after the run deadline")
        return Reconciled(Seen.STILL_RUNNING)
    applied = apply_run_report(job, run, services, authoritative=True)
    if applied.outcome not in (Outcome.ALREADY_DONE, Outcome.RUN_MISMATCH):
        count("JobsRecovered")
    return Reconciled(applied.outcome, Via.COMPLETED)


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

    def requeue(self, job: Job, now: datetime, *, overdue: bool) -> Reconciled:
        settings = self._services.settings
        if job.copy_requeued_at is None:
            since, window = job.updated_at, settings.reconcile_min_age_seconds
        else:
            since = job.copy_requeued_at
            window = max(settings.copy_requeue_after_seconds, settings.reconcile_min_age_seconds)
        if now - parse_iso(since) <= timedelta(seconds=window):
            return Reconciled(Seen.COPY_IN_PROGRESS)
        if not overdue:
            if self._waiting is None:
                self._waiting = self._services.copy_queue().waiting()
            if self._waiting > 0:
                return Reconciled(Seen.COPY_QUEUE_BUSY)
        stamp = format_iso(now)
        jobs = self._services.jobs
        if not jobs.update_open(
            job.job_id,
            Status.COPYING,
            {"copy_requeued_at": stamp},
            only_if={"copy_requeued_at": job.copy_requeued_at},
        ):
            # Finished, or queued again by another pass meanwhile.
            return Reconciled(Outcome.ALREADY_DONE)
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
        return Reconciled(Seen.COPY_REQUEUED)


class _Resumable:
    """Held jobs go back to the submit function, oldest first, as many as today's budget has."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._left: int | object | None = _UNREAD

    def resume(self, job: Job) -> Reconciled:
        if self._left is _UNREAD:
            self._left = self._services.budget.remaining()
        if isinstance(self._left, int) and self._left <= 0:
            return Reconciled(Outcome.HELD)
        message = JobMessage(job.job_id, job.attempt, iso_from_epoch(self._services.clock()))
        self._services.uploads_queue().send(message.body())
        if isinstance(self._left, int):
            self._left -= 1
        return Reconciled(Seen.HELD_RESUMED)


_UNREAD = object()


def _time_out(
    services: Services, job: Job, message: str, *, code: ErrorCode = ErrorCode.TIMED_OUT
) -> Reconciled:
    ended = conclude(
        services,
        job,
        Status.TIMED_OUT,
        failure(code, message),
        metric="JobsTimedOut",
        run_id=job.run_id,
        detail=message,
        log="Job timed out",
        extra={"reason": message},
        warn=True,
    )
    return Reconciled(ended.outcome)
