"""Submitting an upload: from "an object was created" to "Runflow is colouring it".

Order matters for "nothing lost, nothing billed twice":
1. read the object's metadata and decide its colour (the colour is part of the job's identity);
2. claim the job with a conditional write *before* anything is sent to Runflow;
3. reject bad uploads with a recorded reason and no Runflow call;
4. create the run with ``Idempotency-Key: <job_id>``, so a retried event, or a crash between
   create and record, gets the same run back instead of a second paid one. A later attempt carries
   a fresh presigned URL, a different body, so Runflow answers 409: the run the earlier attempt
   made is then looked up by ``client_ref`` (the job id) and adopted, never created again;
5. record the run id (``submitted``).
A Runflow outage raises, so the event is retried; the job stays ``received`` with the error noted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from botocore.exceptions import ClientError

from backdrop.colours import Colour, parse_colour
from backdrop.config import ConfigError, get_settings
from backdrop.jobs import Job, Status, now_iso
from backdrop.jobstore import TransitionRefused
from backdrop.observability import count, logger
from backdrop.runs import RunflowConflict, RunflowRejected, RunflowUnavailable, RunRequest, RunResult
from backdrop.services import Services, get_services
from backdrop.uploads import (
    SNIFF_BYTES,
    UploadRef,
    in_upload_prefix,
    is_folder_marker,
    job_id_for,
    sniff_image_type,
)

COLOUR_METADATA_KEY = "background-color"


class Outcome(StrEnum):
    SUBMITTED = "submitted"
    REJECTED = "rejected"
    FAILED = "failed"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


@dataclass(frozen=True)
class SubmitResult:
    outcome: Outcome
    job_id: str | None = None
    run_id: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "job_id": self.job_id,
            "run_id": self.run_id,
            "reason": self.reason,
        }


class SubmitRetryable(Exception):
    """The upload could not be submitted now (Runflow or AWS unavailable): retry the event."""


@dataclass(frozen=True)
class _SourceObject:
    version: str | None
    etag: str | None
    size: int
    colour_text: str | None


def submit_upload(upload: UploadRef, services: Services) -> SubmitResult:
    # One batch carries many uploads: keys of the previous one must not label this one's logs.
    logger.remove_keys(["job_id", "run_id"])
    settings = services.settings
    if upload.bucket != settings.uploads_bucket or not in_upload_prefix(upload.key, settings.upload_prefix):
        logger.info("Object outside the upload prefix ignored", extra={"key": upload.key})
        return SubmitResult(Outcome.IGNORED, reason="outside the upload prefix")
    if is_folder_marker(upload.key, upload.size):
        return SubmitResult(Outcome.IGNORED, reason="folder marker")

    source = _head(upload, services)
    if source is None:
        return SubmitResult(Outcome.IGNORED, reason="object no longer exists")
    # The object version we saw is the one we process (and presign) from here on.
    upload = UploadRef(
        upload.bucket, upload.key, source.version or upload.version_id, source.etag, source.size
    )

    colour: Colour | None = None
    colour_problem: str | None = None
    if source.colour_text is None:
        colour = settings.default_colour
    else:
        try:
            colour = parse_colour(source.colour_text)
        except ValueError as exc:
            colour_problem = f"metadata {COLOUR_METADATA_KEY}: {exc}"
    colour_tag = str(colour) if colour else f"invalid:{source.colour_text}"
    job_id = job_id_for(upload, colour_tag)
    logger.append_keys(job_id=job_id)

    now = now_iso()
    job, created = services.jobs.claim(
        Job(
            job_id=job_id,
            status=Status.RECEIVED,
            source_bucket=upload.bucket,
            source_key=upload.key,
            source_version=upload.version_tag,
            source_etag=upload.etag,
            source_size=upload.size,
            color=colour_tag if colour else (source.colour_text or "")[:200],
            created_at=now,
            updated_at=now,
        )
    )
    if not created and job.status is not Status.RECEIVED:
        logger.info("Duplicate event for an existing job", extra={"status": job.status.value})
        count("DuplicateEvents")
        return SubmitResult(Outcome.DUPLICATE, job_id=job_id, run_id=job.run_id)

    if colour is None:
        return _reject(services, job_id, "INVALID_COLOR", colour_problem or "invalid colour")
    problem = _validate(upload, source, services)
    if problem:
        return _reject(services, job_id, *problem)
    return _create_run(services, job, upload, colour)


def _head(upload: UploadRef, services: Services) -> _SourceObject | None:
    try:
        head = services.s3.head_object(**upload.object_params())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchVersion"):
            logger.warning("Uploaded object vanished before it could be read", extra={"key": upload.key})
            return None
        raise
    metadata = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
    return _SourceObject(
        version=head.get("VersionId"),
        etag=head.get("ETag"),
        size=int(head.get("ContentLength", 0)),
        colour_text=metadata.get(COLOUR_METADATA_KEY),
    )


def _validate(upload: UploadRef, source: _SourceObject, services: Services) -> tuple[str, str] | None:
    limit = services.settings.max_input_bytes
    if any(part in (".", "..") for part in upload.key.split("/")):
        # HTTP clients resolve dot segments in a URL path, so the presigned URL would fetch a
        # different key (or none): such an object cannot be handed to Runflow by URL.
        return "UNSUPPORTED_KEY", f"the key {upload.key!r} has '.' or '..' path segments, which URLs rewrite"
    if source.size == 0:
        return "EMPTY_OBJECT", "the uploaded object is empty (0 bytes)"
    if source.size > limit:
        return "TOO_LARGE", f"the uploaded object is {source.size} bytes, over the {limit}-byte limit"
    head = services.s3.get_object(**upload.object_params(), Range=f"bytes=0-{SNIFF_BYTES - 1}")["Body"].read(
        SNIFF_BYTES
    )
    if sniff_image_type(head) is None:
        return (
            "UNSUPPORTED_TYPE",
            f"the uploaded object is not a JPEG, PNG or WebP image (first bytes {head[:8].hex(' ')})",
        )
    return None


def _reject(services: Services, job_id: str, code: str, message: str) -> SubmitResult:
    try:
        services.jobs.transition(
            job_id, Status.REJECTED, changes={"error_code": code, "error_message": message}
        )
    except TransitionRefused as exc:
        return SubmitResult(Outcome.DUPLICATE, job_id=job_id, reason=str(exc))
    logger.info("Upload rejected", extra={"error_code": code, "reason": message})
    count("JobsRejected")
    return SubmitResult(Outcome.REJECTED, job_id=job_id, reason=f"{code}: {message}")


def presign(services: Services, upload: UploadRef) -> str:
    return services.presign_s3.generate_presigned_url(
        "get_object", Params=upload.object_params(), ExpiresIn=services.settings.presign_expiry_seconds
    )


def resubmit(services: Services, job: Job, upload: UploadRef, colour: Colour) -> SubmitResult:
    """Create the run of a job that has none yet (the reconciler's recovery path)."""
    return _create_run(services, job, upload, colour)


def _create_run(services: Services, job: Job, upload: UploadRef, colour: Colour) -> SubmitResult:
    settings = services.settings
    if not settings.callback_url:
        raise ConfigError("BACKDROP_CALLBACK_URL is required to create runs")
    request = RunRequest(
        image_url=presign(services, upload),
        red=colour.red,
        green=colour.green,
        blue=colour.blue,
        callback_url=settings.callback_url,
        metadata={
            "job_id": job.job_id,
            "source_bucket": upload.bucket,
            # Keys may be any unicode; metadata travels as JSON, but keep it printable in logs.
            "source_key": quote(upload.key, safe="/"),
        },
        client_ref=job.job_id,
    )
    try:
        run = services.runflow().create_run(request, idempotency_key=job.job_id)
    except RunflowConflict as exc:
        try:
            found = _earlier_run(services, job)
        except RunflowUnavailable:
            found = None
        if found is None:
            # The earlier attempt may still be in flight at Runflow: retry, never fail the job.
            services.jobs.record_error(job.job_id, Status.RECEIVED, "RUNFLOW_CONFLICT", str(exc))
            count("SubmitRetries")
            raise SubmitRetryable(str(exc)) from exc
        run = found
    except RunflowRejected as exc:
        logger.warning(
            "Runflow refused the run", extra={"http_status": exc.http_status, "error_code": exc.code}
        )
        try:
            services.jobs.transition(
                job.job_id, Status.FAILED, changes={"error_code": exc.code, "error_message": exc.message}
            )
        except TransitionRefused as refused:
            return SubmitResult(Outcome.DUPLICATE, job_id=job.job_id, reason=str(refused))
        count("JobsFailed")
        return SubmitResult(Outcome.FAILED, job_id=job.job_id, reason=f"{exc.code}: {exc.message}")
    except RunflowUnavailable as exc:
        services.jobs.record_error(job.job_id, Status.RECEIVED, "RUNFLOW_UNAVAILABLE", str(exc))
        count("SubmitRetries")
        raise SubmitRetryable(str(exc)) from exc
    return _record_run(services, job, run)


def adopt_earlier_run(services: Services, job: Job) -> SubmitResult | None:
    """Record the run Runflow lists for this job, if an attempt whose answer was lost created one.

    Raises RunflowUnavailable when Runflow cannot be asked."""
    found = _earlier_run(services, job)
    return None if found is None else _record_run(services, job, found)


def _record_run(services: Services, job: Job, run: RunResult) -> SubmitResult:
    logger.append_keys(run_id=run.run_id)
    try:
        services.jobs.transition(
            job.job_id,
            Status.SUBMITTED,
            changes={
                "run_id": run.run_id,
                "submitted_at": now_iso(),
                "error_code": None,
                "error_message": None,
            },
        )
    except TransitionRefused as exc:
        # The callback overtook us (it carries our job id) and already moved the job on.
        logger.info(
            "Job moved on before the submit was recorded",
            extra={"status": str(exc.current and exc.current.status)},
        )
        return SubmitResult(Outcome.SUBMITTED, job_id=job.job_id, run_id=run.run_id)
    logger.info("Run created", extra={"run_status": run.status})
    count("JobsSubmitted")
    return SubmitResult(Outcome.SUBMITTED, job_id=job.job_id, run_id=run.run_id)


def _earlier_run(services: Services, job: Job) -> RunResult | None:
    """The run an earlier attempt created under this job's Idempotency-Key, if Runflow lists it."""
    runs = services.runflow().find_runs(job.job_id)
    if not runs:
        logger.info("No run carries the job id at Runflow")
        return None
    if len(runs) > 1:
        logger.error("More than one run carries this job id", extra={"run_ids": [r.run_id for r in runs]})
    logger.info("Adopted the run an earlier attempt created", extra={"adopted_run_id": runs[0].run_id})
    count("RunsAdopted")
    return runs[0]


@functools.cache
def _idempotency() -> tuple[IdempotencyConfig, Callable[..., dict[str, Any]]]:
    """Powertools idempotency in front of the job claim: a redelivered notification within the
    hour is answered from the idempotency record without touching S3, DynamoDB jobs or Runflow.
    Built on first use because the table name comes from the settings."""
    settings = get_settings()
    config = IdempotencyConfig(
        event_key_jmespath="[bucket, key, version_id, etag]",
        expires_after_seconds=3600,
        raise_on_no_idempotency_key=True,
    )
    persistence = DynamoDBPersistenceLayer(table_name=settings.idempotency_table)

    @idempotent_function(data_keyword_argument="upload", persistence_store=persistence, config=config)  # type: ignore[untyped-decorator]
    def submit_idempotently(upload: UploadRef) -> dict[str, Any]:
        return submit_upload(upload, get_services()).as_dict()

    return config, submit_idempotently


def submit_once(*, upload: UploadRef) -> dict[str, Any]:
    return _idempotency()[1](upload=upload)


def register_lambda_context(context: Any) -> None:
    """An in-progress idempotency record then expires when the invocation would have timed out."""
    _idempotency()[0].register_lambda_context(context)
