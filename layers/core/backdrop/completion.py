"""Applying a finished run to its job: the one path shared by callbacks, the copy worker and the
reconciler. It records what the run said with conditional writes and queues the copy; it never
copies and never calls Runflow, so a callback can answer at once.

- succeeded / partial_succeeded with outputs → ``copying`` (output URLs, timings recorded), copy queued;
- canceled → ``canceled``; failed, or a terminal status Backdrop does not know (``timed_out``,
  ``expired``, ...) → ``failed`` with Runflow's code and message and the status it reported;
- a callback that lacks what the job needs (no outputs on a success, no reason on a failure) is
  noted and queued too: the copy worker reads the run back once and applies that instead.
"""

from __future__ import annotations

from backdrop.errors import ErrorCode, run_ended_code
from backdrop.events import conclude
from backdrop.jobs import Job, JobChanges, Status, failure, outputs_to_item
from backdrop.observability import count, logger
from backdrop.outcomes import Outcome, Result, RetryLater
from backdrop.queues import CopyRequest
from backdrop.reuse import queue_reuse_copy
from backdrop.runs import RunKind, RunResult
from backdrop.services import Services


def belongs_to(job: Job, run: RunResult) -> bool:
    """Whether ``run`` may speak for this attempt of the job (a late callback of an earlier attempt,
    or a second run of one attempt, may not)."""
    if job.run_id:
        return job.run_id == run.run_id
    attempt = run.metadata.get("attempt")
    return attempt is None or str(attempt) == str(job.attempt)


def apply_run_report(job: Job, run: RunResult, services: Services, *, authoritative: bool) -> Result:
    """Record a run's terminal state on its job. ``authoritative``: ``run`` is the run object read
    from Runflow (nothing more to read back), not a callback envelope."""
    if job.status.is_terminal:
        return Result(Outcome.ALREADY_DONE, job.job_id, run.run_id, f"job is {job.status.value}")
    if not belongs_to(job, run):
        logger.error(
            "Run does not belong to this attempt of the job; it writes nothing",
            extra={"job_run_id": job.run_id, "run_id": run.run_id, "attempt": job.attempt},
        )
        count("RunsMismatched")
        return Result(Outcome.RUN_MISMATCH, job.job_id, run.run_id, f"job belongs to run {job.run_id}")
    if run.kind is RunKind.OPEN:
        return Result(Outcome.NOT_FINISHED, job.job_id, run.run_id, run.status)
    if run.kind is RunKind.SUCCEEDED:
        return _apply_success(job, run, services, authoritative=authoritative)
    return _apply_failure(job, run, services, authoritative=authoritative)


def _apply_success(job: Job, run: RunResult, services: Services, *, authoritative: bool) -> Result:
    if run.outputs:
        move = services.jobs.try_transition(
            job.job_id,
            Status.COPYING,
            changes={
                "run_id": run.run_id,
                "run_status": run.status,
                "output_urls": outputs_to_item(run.outputs),
                "runflow_duration_ms": run.duration_ms,
                "create_pending_since": None,
            },
        )
        if not move.moved:
            return Result(Outcome.ALREADY_DONE, job.job_id, run.run_id, "job moved on")
        return _queue_copy(services, job, run)
    if authoritative:
        return finish(
            services, job, run, Status.FAILED, ErrorCode.NO_OUTPUT, f"run {run.status} without any output"
        )
    return _note_and_queue(services, job, run, "success reported without outputs: reading the run back")


def _apply_failure(job: Job, run: RunResult, services: Services, *, authoritative: bool) -> Result:
    if run.failure_code is None and not authoritative:
        return _note_and_queue(services, job, run, "failure reported without a reason: reading the run back")
    if run.kind is RunKind.CANCELED:
        return finish(
            services,
            job,
            run,
            Status.CANCELED,
            run.failure_code or ErrorCode.CANCELED,
            run.failure_message or "the run was canceled at Runflow",
        )
    if run.status != "failed":
        # A terminal status this version does not know: end the job now, saying what Runflow said.
        return finish(
            services,
            job,
            run,
            Status.FAILED,
            run.failure_code or run_ended_code(run.status),
            run.failure_message or f"Runflow ended the run with status {run.status!r}",
        )
    return finish(
        services,
        job,
        run,
        Status.FAILED,
        run.failure_code or ErrorCode.RUN_FAILED,
        run.failure_message or "Runflow reported the run as failed",
    )


def finish(services: Services, job: Job, run: RunResult, status: Status, code: str, message: str) -> Result:
    """End the job without a result, recording Runflow's reason."""
    return conclude(
        services,
        job,
        status,
        {
            "run_id": run.run_id,
            "run_status": run.status,
            **failure(code, message),
            "runflow_duration_ms": run.duration_ms,
            "create_pending_since": None,
        },
        metric="JobsFailed" if status is Status.FAILED else "JobsCanceled",
        run_id=run.run_id,
        detail=f"{code}: {message}",
        log="Job finished without a result",
        extra={"status": status.value, "error_code": code},
    )


def _note_and_queue(services: Services, job: Job, run: RunResult, why: str) -> Result:
    """Keep the run's word on the job (still open) and let the copy worker read the run back."""
    changes: JobChanges = {"run_id": run.run_id, "run_status": run.status, "create_pending_since": None}
    if job.status is Status.SUBMITTED:
        noted = services.jobs.update_open(job.job_id, Status.SUBMITTED, changes)
    else:
        noted = services.jobs.try_transition(job.job_id, Status.SUBMITTED, changes=changes).moved
    if not noted:
        return Result(Outcome.ALREADY_DONE, job.job_id, run.run_id, "job moved on")
    logger.info("Run outcome needs reading back", extra={"reason": why})
    return _queue_copy(services, job, run)


def _queue_copy(services: Services, job: Job, run: RunResult) -> Result:
    try:
        services.copy_queue().send(CopyRequest(job.job_id, run.run_id).body())
    except Exception as exc:
        # The outcome is recorded; a retried callback (or the reconciler) queues the copy again.
        logger.warning("Could not queue the copy", extra={"reason": str(exc)})
        raise RetryLater(f"could not queue the copy: {exc}") from exc
    return Result(Outcome.COPY_QUEUED, job.job_id, run.run_id)


def requeue_copy(services: Services, job: Job) -> Result:
    """Queue the copy of a job already in ``copying`` again (its message was lost or used up)."""
    if job.reused_from is not None:
        queue_reuse_copy(services, job.job_id, job.reused_from)
        return Result(Outcome.COPY_QUEUED, job.job_id)
    if job.run_id is None:
        return Result(Outcome.WAITING, job.job_id, detail="no run to copy from")
    return _queue_copy(services, job, RunResult(run_id=job.run_id, status=job.run_status or "succeeded"))
