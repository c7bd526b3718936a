"""Completing a job from a finished Runflow run: the one path shared by callbacks and the reconciler."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from enum import StrEnum
from urllib.parse import quote, urlsplit

from backdrop.jobs import Job, Status
from backdrop.jobstore import TransitionRefused
from backdrop.observability import count, count_bytes, logger
from backdrop.outputs import OutputCopyFailed, OutputRefused, copy_output
from backdrop.runs import RunResult
from backdrop.services import Services
from backdrop.uploads import extension_for, result_key


class Completion(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ALREADY_DONE = "already_done"
    NOT_FINISHED = "not_finished"
    COPY_PENDING = "copy_pending"  # copy failed for now; job stays open for a retry
    RUN_MISMATCH = "run_mismatch"


@dataclass(frozen=True)
class CompletionResult:
    completion: Completion
    detail: str = ""


def complete_job(
    job: Job, run: RunResult, services: Services, *, deadline: float, read_failure_details: bool = True
) -> CompletionResult:
    """Apply a run's terminal state to its job. Idempotent: a finished job is left as it is."""
    if job.status.is_terminal:
        return CompletionResult(Completion.ALREADY_DONE, job.status.value)
    if job.run_id and job.run_id != run.run_id:
        # A run that is not the job's (cannot happen with idempotent creates): never let it write.
        logger.warning(
            "Run does not belong to the job", extra={"job_run_id": job.run_id, "run_id": run.run_id}
        )
        return CompletionResult(Completion.RUN_MISMATCH, f"job belongs to run {job.run_id}")
    if not run.is_terminal:
        return CompletionResult(Completion.NOT_FINISHED, run.status)

    if run.status in ("succeeded", "partial_succeeded"):
        if not run.outputs:
            return _finish(
                services, job, Status.FAILED, "NO_OUTPUT", f"run {run.status} without any output", run
            )
        return _copy(services, job, run, deadline)
    if read_failure_details and run.failure_code is None and run.status in ("failed", "canceled"):
        run = _with_failure_details(run, services)
    if run.status == "canceled":
        return _finish(
            services,
            job,
            Status.CANCELED,
            run.failure_code or "CANCELED",
            run.failure_message or "the run was canceled at Runflow",
            run,
        )
    return _finish(
        services,
        job,
        Status.FAILED,
        run.failure_code or "RUN_FAILED",
        run.failure_message or "Runflow reported the run as failed",
        run,
    )


def _finish(
    services: Services, job: Job, status: Status, code: str, message: str, run: RunResult
) -> CompletionResult:
    try:
        services.jobs.transition(
            job.job_id,
            status,
            changes={
                "run_id": run.run_id,
                "error_code": code,
                "error_message": message[:1000],
                "runflow_duration_ms": run.duration_ms,
            },
        )
    except TransitionRefused as exc:
        return CompletionResult(Completion.ALREADY_DONE, str(exc))
    count("JobsFailed" if status is Status.FAILED else "JobsCanceled")
    logger.info("Job finished without a result", extra={"status": status.value, "error_code": code})
    return CompletionResult(Completion(status.value), f"{code}: {message}")


def _copy(services: Services, job: Job, run: RunResult, deadline: float) -> CompletionResult:
    settings = services.settings
    try:
        services.jobs.transition(
            job.job_id, Status.COPYING, changes={"run_id": run.run_id, "runflow_duration_ms": run.duration_ms}
        )
    except TransitionRefused as exc:
        return CompletionResult(Completion.ALREADY_DONE, str(exc))

    metadata = {
        "job-id": job.job_id,
        "run-id": run.run_id,
        "source-bucket": job.source_bucket,
        "source-key": quote(job.source_key, safe="/"),
        "background-color": job.color,
    }
    keys: list[str] = []
    copied = 0
    policy = services.output_policy
    try:
        for index, output in enumerate(run.outputs):
            key = result_key(
                job.source_key,
                settings.upload_prefix,
                settings.results_prefix,
                extension_for(output.content_type, urlsplit(output.url).path),
                index,
                job.job_id,
            )
            stored = copy_output(
                output.url,
                s3=services.s3,
                bucket=settings.results_bucket,
                key=key,
                metadata=metadata,
                policy=policy,
                http=services.http,
                deadline=deadline,
            )
            keys.append(stored.key)
            copied += stored.size
    except OutputRefused as exc:
        logger.warning("Output refused", extra={"error_code": exc.code, "reason": exc.message})
        return _finish(services, job, Status.FAILED, exc.code, exc.message, run)
    except OutputCopyFailed as exc:
        logger.warning("Output copy failed; the job stays open for a retry", extra={"reason": str(exc)})
        services.jobs.record_error(job.job_id, Status.COPYING, "COPY_FAILED", str(exc))
        count("CopyFailures")
        return CompletionResult(Completion.COPY_PENDING, str(exc))

    try:
        services.jobs.transition(
            job.job_id,
            Status.SUCCEEDED,
            changes={
                "result_bucket": settings.results_bucket,
                "result_keys": keys,
                "error_code": None,
                "error_message": None,
            },
        )
    except TransitionRefused as exc:
        return CompletionResult(Completion.ALREADY_DONE, str(exc))
    count("JobsSucceeded")
    count_bytes("BytesCopied", copied)
    logger.info("Job succeeded", extra={"result_keys": keys, "bytes": copied})
    return CompletionResult(Completion.SUCCEEDED, ",".join(keys))


def deadline_in(seconds: float) -> float:
    return time.monotonic() + seconds


def _with_failure_details(run: RunResult, services: Services) -> RunResult:
    """Callbacks may carry ``output: null`` for a failed run (Runflow's docs disagree); the run
    object always has ``failure_code``/``failure_message``, so read it for the record."""
    try:
        # Short budget: the callback must still answer within a few seconds.
        fetched = services.runflow().get_run(run.run_id, budget_seconds=2.0)
    except Exception as exc:  # best effort: the generic reason is still recorded
        logger.warning("Could not read the failed run's details", extra={"reason": str(exc)})
        return run
    if fetched.run_id != run.run_id or fetched.failure_code is None:
        return run
    return replace(run, failure_code=fetched.failure_code, failure_message=fetched.failure_message)
