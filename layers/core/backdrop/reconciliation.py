"""The reconciler: nothing stays open forever without saying why.

Runs on a schedule over the sparse OpenJobs index, oldest first and bounded per run:
- a job with a run whose callback never came (or whose copy failed): read the run again; a finished
  run goes through the very same completion path as a callback, with freshly signed output URLs;
- a job that never got a run (crash or outage between claim and create): create it again with the
  same Idempotency-Key, so a run that did get created is returned rather than billed twice;
- a job still open past the run deadline: ``timed_out``, counted (and alarmed on).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from backdrop.colours import parse_colour
from backdrop.completion import Completion, complete_job
from backdrop.jobs import Job, Status, format_iso, parse_iso
from backdrop.jobstore import TransitionRefused
from backdrop.observability import count, logger
from backdrop.runs import RunflowError, RunflowRejected, RunflowUnavailable
from backdrop.services import Services
from backdrop.submission import SubmitRetryable, adopt_earlier_run, resubmit
from backdrop.uploads import UploadRef

# Time one job may take in the reconciler (a copy of a large output included).
PER_JOB_SECONDS = 60.0


@dataclass
class ReconcileReport:
    examined: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {"examined": self.examined, **dict(self.outcomes)}


def upload_of(job: Job) -> UploadRef:
    version = job.source_version[2:] if job.source_version.startswith("v:") else None
    return UploadRef(job.source_bucket, job.source_key, version, job.source_etag, job.source_size)


def reconcile(services: Services, *, deadline: float, now: datetime | None = None) -> ReconcileReport:
    settings = services.settings
    now = now or datetime.now(UTC)
    cutoff = format_iso(now - timedelta(seconds=settings.reconcile_min_age_seconds))
    run_deadline = timedelta(minutes=settings.run_deadline_minutes)
    report = ReconcileReport()
    for job in services.jobs.open_jobs(created_before=cutoff, limit=settings.reconcile_batch_size):
        if time.monotonic() >= deadline:
            report.outcomes["deferred_for_time"] += 1
            break
        report.examined += 1
        logger.append_keys(job_id=job.job_id, run_id=job.run_id)
        try:
            outcome = _reconcile_one(services, job, now, run_deadline, deadline)
        except (RunflowError, SubmitRetryable) as exc:
            outcome = "runflow_unavailable"
            logger.warning("Reconciler could not reach Runflow for a job", extra={"reason": str(exc)})
        report.outcomes[outcome] += 1
    logger.remove_keys(["job_id", "run_id"])
    logger.info("Reconciler pass finished", extra={"report": report.as_dict()})
    return report


def _reconcile_one(
    services: Services, job: Job, now: datetime, run_deadline: timedelta, deadline: float
) -> str:
    overdue = now - parse_iso(job.created_at) > run_deadline
    if job.run_id is None:
        if overdue:
            # A create whose answer was lost may have made a run after all: finish that one instead.
            try:
                adopted = adopt_earlier_run(services, job)
            except RunflowUnavailable:
                adopted = None
            if adopted is not None:
                return f"adopted_{adopted.outcome.value}"
            return _time_out(services, job, "no Runflow run could be created before the run deadline")
        try:
            colour = parse_colour(job.color)
        except ValueError as exc:
            try:
                services.jobs.transition(
                    job.job_id,
                    Status.REJECTED,
                    changes={"error_code": "INVALID_COLOR", "error_message": str(exc)},
                )
            except TransitionRefused:  # moved on since the (eventually consistent) index read
                return "already_done"
            return "rejected"
        submitted = resubmit(services, job, upload_of(job), colour)
        count("JobsRecovered")
        return f"resubmitted_{submitted.outcome.value}"

    try:
        run = services.runflow().get_run(job.run_id)
    except RunflowRejected as exc:
        if exc.http_status != 404:
            raise
        # Runflow does not know the run: it can never call back or finish.
        try:
            services.jobs.transition(
                job.job_id, Status.FAILED, changes={"error_code": exc.code, "error_message": exc.message}
            )
        except TransitionRefused:
            return "already_done"
        count("JobsFailed")
        return "failed_run_not_found"
    if not run.is_terminal:
        if overdue:
            return _time_out(services, job, f"run {job.run_id} still {run.status} after the run deadline")
        return "still_running"
    result = complete_job(
        job,
        run,
        services,
        deadline=min(deadline, time.monotonic() + PER_JOB_SECONDS),
        read_failure_details=False,  # ``run`` is the run object itself: nothing more to read
    )
    if result.completion not in (Completion.ALREADY_DONE, Completion.COPY_PENDING):
        count("JobsRecovered")
    if result.completion is Completion.COPY_PENDING and overdue:
        return _time_out(
            services, job, f"output could not be copied before the run deadline: {result.detail}"
        )
    return f"completed_{result.completion.value}"


def _time_out(services: Services, job: Job, message: str) -> str:
    try:
        services.jobs.transition(
            job.job_id, Status.TIMED_OUT, changes={"error_code": "TIMED_OUT", "error_message": message}
        )
    except TransitionRefused:
        return "already_done"
    count("JobsTimedOut")
    logger.warning("Job timed out", extra={"reason": message})
    return "timed_out"
