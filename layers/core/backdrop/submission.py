"""Submitting an upload: from "an object was created" to "Runflow is colouring it".

Order matters for "nothing lost, nothing billed twice":
1. read the object (one ranged GET: version, metadata, size, first bytes) and decide its colour
   (the colour is part of the job's identity);
2. claim the job with a conditional write *before* anything is sent to Runflow;
3. reject bad uploads with a recorded reason, and end a version that is no longer the object's
   newest ``superseded``: neither ever reaches Runflow;
4. create the run. Nothing relies on Runflow de-duplicating creates: before each create the job is
   marked ``create_pending_since`` with a conditional write, so only one attempt at a time may
   create; a create whose outcome is unknown (timeout, a 5xx other than ``MODEL_UNAVAILABLE``,
   reset) leaves the mark, and that attempt never creates again: Runflow's run list may lag behind
   a create, so an empty list proves nothing. Later deliveries look the run up by ``client_ref``
   (for ``BACKDROP_CREATE_SETTLE_SECONDS`` through SQS, then on each reconciler pass); the run's
   callback, checked against Runflow, completes the job; at the run deadline an unconfirmed job
   ends ``timed_out`` with ``RUN_UNCONFIRMED``. The attempt's budget reservation stays spent;
5. record the run id (``submitted``).
Runflow or AWS being unavailable raises ``RetryLater``; the job stays open with the error noted.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import quote

from backdrop.colours import Colour, ColourChoice, choose_colour, parse_colour
from backdrop.errors import ErrorCode
from backdrop.events import conclude
from backdrop.jobs import Job, JobChanges, Status, failure, iso_from_epoch, parse_iso
from backdrop.observability import count, gauge_percent, logger
from backdrop.outcomes import Outcome, Result, RetryLater
from backdrop.reuse import reuse_or_wait, with_digest
from backdrop.runs import (
    RunflowConflict,
    RunflowOutcomeUnknown,
    RunflowRejected,
    RunflowUnavailable,
    RunRequest,
    RunResult,
)
from backdrop.services import Services
from backdrop.timing import RESERVE_RACE_RETRY_SECONDS
from backdrop.uploads import (
    SourceObject,
    UploadRef,
    in_upload_prefix,
    is_folder_marker,
    job_id_for,
    read_source,
    sniff_image_type,
)


def colour_of(source: SourceObject, services: Services, override: Colour | None = None) -> ColourChoice:
    settings = services.settings
    return choose_colour(
        source.metadata,
        source.upload.key,
        default=settings.default_colour,
        rules=settings.colour_rules,
        override=override,
    )


def job_id_of(source: SourceObject, services: Services) -> str:
    """The id of the job that processes this object version (the same rule everywhere)."""
    return job_id_for(source.upload, colour_of(source, services).tag)


def submit_upload(upload: UploadRef, services: Services, *, colour: str | None = None) -> Result:
    """Handle one object-created notification (or a backfill message shaped like one, which may
    name the ``colour`` an operator asked for, overriding the object's own)."""
    settings = services.settings
    if upload.bucket != settings.uploads_bucket or not in_upload_prefix(upload.key, settings.upload_prefix):
        logger.info("Object outside the upload prefix ignored", extra={"key": upload.key})
        return Result(Outcome.IGNORED, detail="outside the upload prefix")
    if is_folder_marker(upload.key, upload.size):
        return Result(Outcome.IGNORED, detail="folder marker")

    current = read_source(services.s3, upload.bucket, upload.key)
    source = current
    if upload.versioned and (current is None or current.upload.version_id != upload.version_id):
        # The notified version is no longer the newest (overwritten or deleted since): it gets a job
        # that says so, and no run.
        source = read_source(services.s3, upload.bucket, upload.key, version_id=upload.version_id)
    if source is None:
        logger.warning("Uploaded object vanished before it could be read", extra={"key": upload.key})
        return Result(Outcome.IGNORED, detail="object no longer exists")

    try:
        override = parse_colour(colour) if colour is not None else None
    except ValueError as exc:
        logger.warning("Backfill message names no colour; ignored", extra={"reason": str(exc)})
        return Result(Outcome.IGNORED, detail=f"requested colour: {exc}")
    choice = colour_of(source, services, override)
    job_id = job_id_for(source.upload, choice.tag)
    logger.append_keys(job_id=job_id)
    job, created = services.jobs.claim(_new_job(job_id, source, choice, iso_from_epoch(services.clock())))
    if not created and job.status is not Status.RECEIVED:
        logger.info("Duplicate event for an existing job", extra={"status": job.status.value})
        count("DuplicateEvents")
        return Result(Outcome.ALREADY_DONE, job_id, job.run_id, f"job is {job.status.value}")

    if choice.colour is None:
        return _reject(services, job, ErrorCode.INVALID_COLOR, choice.problem or "invalid colour")
    problem = rejection_of(source, services.settings.max_input_bytes)
    if problem:
        return _reject(services, job, *problem)
    if current is None or not current.upload.same_version(source.upload):
        return supersede(services, job, current)
    return begin(services, job)


def _new_job(job_id: str, source: SourceObject, choice: ColourChoice, now: str) -> Job:
    upload = source.upload
    return Job(
        job_id=job_id,
        status=Status.RECEIVED,
        source_bucket=upload.bucket,
        source_key=upload.key,
        source_version_id=upload.version_id if upload.versioned else None,
        source_etag=(upload.etag or "").strip('"') or None,
        source_size=upload.size,
        color=choice.recorded,
        color_source=choice.source,
        created_at=now,
        updated_at=now,
    )


def rejection_of(source: SourceObject, max_input_bytes: int) -> tuple[ErrorCode, str] | None:
    """Why an upload is rejected without a run (error code, message), or None. Public so that
    operator tools (``backdrop plan``) predict exactly the rejections the submit path makes."""
    upload = source.upload
    limit = max_input_bytes
    if any(part in (".", "..") for part in upload.key.split("/")):
        # HTTP clients resolve dot segments in a URL path, so the presigned URL would fetch a
        # different key (or none): such an object cannot be handed to Runflow by URL.
        return (
            ErrorCode.UNSUPPORTED_KEY,
            f"the key {upload.key!r} has '.' or '..' path segments, which URLs rewrite",
        )
    size = upload.size or 0
    if size == 0:
        return ErrorCode.EMPTY_OBJECT, "the uploaded object is empty (0 bytes)"
    if size > limit:
        return ErrorCode.TOO_LARGE, f"the uploaded object is {size} bytes, over the {limit}-byte limit"
    head = source.head if source.head is not None else b""
    if sniff_image_type(head) is None:
        return (
            ErrorCode.UNSUPPORTED_TYPE,
            f"the uploaded object is not a JPEG, PNG or WebP image (first bytes {head[:8].hex(' ')})",
        )
    return None


def _reject(services: Services, job: Job, code: ErrorCode, message: str) -> Result:
    return conclude(
        services,
        job,
        Status.REJECTED,
        failure(code, message),
        metric="JobsRejected",
        detail=f"{code}: {message}",
        moved_on="job moved on before it was rejected",
        log="Upload rejected",
        extra={"error_code": code, "reason": message},
    )


def supersede(
    services: Services, job: Job, current: SourceObject | None, *, also: JobChanges | None = None
) -> Result:
    """End a job whose version is no longer the object's newest, naming the job that replaces it
    (``also``: further changes that go with it)."""
    changes: JobChanges
    if current is None:
        message = "the object was deleted before this version's result was written"
        changes = failure(ErrorCode.SOURCE_DELETED, message)
    else:
        newer = job_id_of(current, services)
        message = f"a newer version of the object ({current.upload.version}) is processed by job {newer}"
        changes = {**failure(ErrorCode.SUPERSEDED, message), "superseded_by": newer}
    return conclude(
        services,
        job,
        Status.SUPERSEDED,
        {**changes, **(also or {})},
        metric="JobsSuperseded",
        run_id=job.run_id,
        detail=message,
        moved_on="job moved on before it was superseded",
        log="Job superseded",
        extra={"reason": message},
    )


def presign(services: Services, upload: UploadRef) -> str:
    return services.presign_s3.generate_presigned_url(
        "get_object", Params=upload.object_params(), ExpiresIn=services.settings.presign_expiry_seconds
    )


def resubmit(services: Services, job: Job, *, recheck: bool = False) -> Result:
    """Create the run of an open job that has none yet (the reconciler's and a retry's path): only
    while its version is still the object's newest. With ``recheck``, the upload's rejection rules
    are applied again first."""
    current = read_source(services.s3, job.source_bucket, job.source_key, sniff=recheck)
    if current is None or not current.upload.same_version(job.upload()):
        return supersede(services, job, current)
    if recheck:
        problem = rejection_of(current, services.settings.max_input_bytes)
        if problem:
            return _reject(services, job, *problem)
    return begin(services, job)


def begin(services: Services, job: Job) -> Result:
    """An upload that passed its checks: record what its pixels are, then reuse an earlier result
    of them, wait for the job running them, or run."""
    if job.create_pending_since is not None:
        return create_run(services, job)  # a create was sent: that run, if any, is the job's
    job = with_digest(services, job)
    decided = reuse_or_wait(services, job)
    return decided if decided is not None else create_run(services, job)


def create_run(services: Services, job: Job) -> Result:
    """Create this attempt's one run, adopting an earlier attempt's run when there is one."""
    settings = services.settings
    if job.create_pending_since is not None:
        return _earlier_create(services, job)
    if job.reserved_on is None:
        reserved = _reserve(services, job)
        if isinstance(reserved, Result):
            return reserved
        job = reserved
    marker = iso_from_epoch(services.clock())
    moved_on = _mark_create(services, job, marker)
    if moved_on is not None:
        return moved_on
    try:
        colour = parse_colour(job.color)
    except ValueError as exc:
        return _reject(services, job, ErrorCode.INVALID_COLOR, str(exc))
    request = RunRequest(
        image_url=presign(services, job.upload()),
        red=colour.red,
        green=colour.green,
        blue=colour.blue,
        callback_url=settings.callback_url,
        metadata={
            "job_id": job.job_id,
            "attempt": str(job.attempt),
            "source_bucket": job.source_bucket,
            # Keys may be any unicode; metadata travels as JSON, but keep it printable in logs.
            "source_key": quote(job.source_key, safe="/"),
        },
        client_ref=job.run_ref,
    )
    try:
        run = services.runflow().create_run(request, idempotency_key=job.run_ref)
    except (RunflowOutcomeUnknown, RunflowConflict) as exc:
        # Maybe created (or created by an earlier attempt): find it before anything else may create.
        count("CreateOutcomesUnknown")
        logger.warning("Create outcome unknown; looking the run up", extra={"reason": str(exc)})
        adopted = adopt_earlier_run(services, replace(job, create_pending_since=marker))
        if adopted is not None:
            return adopted
        services.jobs.record_error(job.job_id, job.status, ErrorCode.RUNFLOW_CREATE_UNKNOWN, str(exc))
        count("SubmitRetries")
        raise RetryLater(str(exc), after_seconds=settings.create_settle_seconds) from exc
    except RunflowRejected as exc:
        logger.warning(
            "Runflow refused the run", extra={"http_status": exc.http_status, "error_code": exc.code}
        )
        reserved_on = job.reserved_on
        return conclude(
            services,
            job,
            Status.FAILED,
            {**failure(exc.code, exc.message), "create_pending_since": None},
            metric="JobsFailed",
            detail=f"{exc.code}: {exc.message}",
            moved_on="job moved on before it was failed",
            # No run was made for it: its reservation goes back to the budget.
            then=(lambda _: services.budget.release(reserved_on)) if reserved_on else None,
        )
    except RunflowUnavailable as exc:
        # Nothing was created (rate limited, or never connected): the next attempt may create at once.
        services.jobs.update_open(
            job.job_id,
            job.status,
            {"create_pending_since": None, **failure(ErrorCode.RUNFLOW_UNAVAILABLE, str(exc))},
            only_if={"create_pending_since": marker},
        )
        count("SubmitRetries")
        raise RetryLater(str(exc), after_seconds=exc.retry_after) from exc
    return _record_run(services, job, run)


def _earlier_create(services: Services, job: Job) -> Result:
    """An earlier attempt at this create left its mark: adopt its run, wait for its answer to
    settle, or (settled, nothing listed) never create again."""
    adopted = adopt_earlier_run(services, job)
    if adopted is not None:
        return adopted
    assert job.create_pending_since is not None
    settle = services.settings.create_settle_seconds
    waited = services.clock() - parse_iso(job.create_pending_since).timestamp()
    if waited < settle:
        raise RetryLater(
            f"an earlier create of this run may still be in flight ({waited:.0f} s ago)",
            after_seconds=settle - waited,
        )
    # An empty list is no proof that the earlier create made nothing: Runflow's list may lag
    # behind its creates, and a second create would be a second paid run. The run's callback
    # (checked against Runflow) or a later lookup completes the job; the deadline ends it.
    logger.info(
        "An earlier create's outcome is still unknown; never creating again for this attempt",
        extra={"pending_since": job.create_pending_since},
    )
    return Result(
        Outcome.WAITING,
        job.job_id,
        detail="a create whose outcome is unknown may have made a run: "
        "waiting for its callback or the run list",
    )


def _mark_create(services: Services, job: Job, marker: str) -> Result | None:
    """Mark the job as creating its run (only one attempt at a time may); a result if it moved on."""
    if services.jobs.update_open(
        job.job_id,
        job.status,
        {"create_pending_since": marker},
        only_if={"create_pending_since": job.create_pending_since},
    ):
        return None
    current = services.jobs.get(job.job_id)
    if current is None or current.status is not job.status:
        return Result(Outcome.ALREADY_DONE, job.job_id, detail="job moved on before its run was created")
    raise RetryLater(
        "another attempt is creating this job's run", after_seconds=services.settings.create_settle_seconds
    )


def _reserve(services: Services, job: Job) -> Job | Result:
    """Reserve this attempt's one run from today's budget, or hold the job until it allows."""
    budget = services.budget
    reserved = budget.reserve()
    if reserved is None:
        return conclude(
            services,
            job,
            Status.HELD,
            failure(
                ErrorCode.BUDGET_EXHAUSTED,
                f"today's run budget ({budget.daily} runs, UTC) is spent; "
                "resumed oldest first when it allows again",
            ),
            outcome=Outcome.HELD,
            metric="JobsHeld",
            detail=ErrorCode.BUDGET_EXHAUSTED,
            moved_on="job moved on before it was held",
            log="Job held: the daily run budget is spent",
            extra={"budget": budget.daily},
        )
    day, used = reserved
    if not services.jobs.update_open(
        job.job_id, job.status, {"reserved_on": day}, only_if={"reserved_on": None}
    ):
        budget.release(day)  # another attempt reserved this job's run meanwhile
        current = services.jobs.get(job.job_id)
        if current is None or current.status is not job.status:
            return Result(Outcome.ALREADY_DONE, job.job_id, detail="job moved on before its run was reserved")
        raise RetryLater(
            "another attempt is creating this job's run", after_seconds=RESERVE_RACE_RETRY_SECONDS
        )
    count("RunsReserved")
    if budget.daily > 0:
        gauge_percent("RunBudgetUsedPercent", 100.0 * used / budget.daily)
    return replace(job, reserved_on=day)


def submit_job(job_id: str, services: Services) -> Result:
    """Create the run of an open job on request (a retry, a held job resumed)."""
    job = services.jobs.get(job_id)
    if job is None:
        return Result(Outcome.UNKNOWN_JOB, job_id)
    logger.append_keys(job_id=job_id)
    if job.status not in (Status.RECEIVED, Status.HELD) or job.run_id:
        return Result(Outcome.ALREADY_DONE, job_id, job.run_id, f"job is {job.status.value}")
    # A retried attempt starts over at received: its upload is checked again, since the rules may
    # have changed (a raised MaxInputBytes lets a rejected upload through). Held jobs passed already.
    return resubmit(services, job, recheck=job.status is Status.RECEIVED)


def adopt_earlier_run(services: Services, job: Job) -> Result | None:
    """Record the run an earlier attempt created for this job, if Runflow lists one (oldest wins).
    None if it lists none. If Runflow refuses the lookup, the job is left open (its callback, if
    the run exists, completes it; otherwise the reconciler times it out) and never created again."""
    try:
        runs = services.runflow().find_runs(job.run_ref)
    except RunflowRejected as exc:
        logger.error(
            "Runflow refused the run lookup", extra={"http_status": exc.http_status, "error_code": exc.code}
        )
        services.jobs.record_error(
            job.job_id,
            job.status,
            ErrorCode.RUN_LOOKUP_REFUSED,
            f"a create whose answer was lost may have made a run, and Runflow refused to list runs: {exc}",
        )
        return Result(Outcome.WAITING, job.job_id, detail=f"run lookup refused: {exc}")
    except RunflowUnavailable as exc:
        raise RetryLater(f"cannot look the run up: {exc}", after_seconds=exc.retry_after) from exc
    if not runs:
        logger.info("No run carries this job's reference at Runflow")
        return None
    if len(runs) > 1:
        logger.error(
            "More than one run carries this job's reference", extra={"run_ids": [r.run_id for r in runs]}
        )
        count("DuplicateRuns", len(runs) - 1)
    logger.info("Adopted the run an earlier attempt created", extra={"adopted_run_id": runs[0].run_id})
    count("RunsAdopted")
    return _record_run(services, job, runs[0])


def _record_run(services: Services, job: Job, run: RunResult) -> Result:
    logger.append_keys(run_id=run.run_id)
    return conclude(
        services,
        job,
        Status.SUBMITTED,
        {
            "run_id": run.run_id,
            "submitted_at": iso_from_epoch(services.clock()),
            "create_pending_since": None,
            "error_code": None,
            "error_message": None,
        },
        outcome=Outcome.SUBMITTED,
        metric="JobsSubmitted",
        run_id=run.run_id,
        # The callback may overtake us (it carries our job id) and move the job on first.
        moved_on="job moved on before the run was recorded",
        log="Run created",
        extra={"run_status": run.status},
    )
