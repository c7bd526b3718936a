"""SubmitFunction: S3 object-created notifications (and backfill messages shaped like them), through SQS.

Powertools idempotency sits in front of each upload, as in Powertools' own batch + idempotency
example: a notification delivered again within the hour is answered from its record without
touching S3, the jobs table or Runflow. The job claim behind it is what makes any later repeat
harmless too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from backdrop.config import IDEMPOTENCY, JOBS, RUN_BUDGET, RUN_CREATION, UPLOADS, UPLOADS_QUEUE
from backdrop.observability import logger, metrics, tracer
from backdrop.outcomes import RetryLater
from backdrop.queues import JobMessage
from backdrop.services import Services, get_services
from backdrop.submission import submit_job, submit_upload
from backdrop.uploads import UploadRef, decode_event_key
from backdrop.visibility import retry_after

NEEDS = JOBS | IDEMPOTENCY | RUN_BUDGET | UPLOADS | RUN_CREATION | UPLOADS_QUEUE

processor = BatchProcessor(event_type=EventType.SQS)
idempotency = IdempotencyConfig(
    event_key_jmespath="[upload.bucket, upload.key, upload.version_id, upload.etag, colour]",
    expires_after_seconds=3600,
    raise_on_no_idempotency_key=True,
)
resume_idempotency = IdempotencyConfig(
    event_key_jmespath="[job_id, attempt, sent_at]",
    expires_after_seconds=3600,
    raise_on_no_idempotency_key=True,
)


@dataclass(frozen=True)
class Notification:
    """One object-created record: the upload, and the colour a backfill asked for (if any)."""

    upload: UploadRef
    colour: str | None


def services() -> Services:
    return get_services(NEEDS)


@functools.cache
def persistence(kind: str) -> DynamoDBPersistenceLayer:
    """Built on first use: the idempotency table's name is a setting, read at cold start. One per
    kind of message: Powertools configures a persistence layer once, with the first config it is
    used with, so a shared one would compute every later message's key with the wrong expression.
    Both share the services' boto3 session (building another costs cold-start time)."""
    return DynamoDBPersistenceLayer(
        table_name=services().settings.idempotency_table, boto3_session=services().session
    )


@functools.cache
def submit_once() -> Callable[..., dict[str, Any]]:
    @idempotent_function(
        data_keyword_argument="notice", persistence_store=persistence("upload"), config=idempotency
    )  # type: ignore[untyped-decorator]
    def submit(notice: Notification) -> dict[str, Any]:
        return submit_upload(notice.upload, services(), colour=notice.colour).as_dict()

    return submit  # type: ignore[no-any-return]


@functools.cache
def resume_once() -> Callable[..., dict[str, Any]]:
    @idempotent_function(
        data_keyword_argument="message", persistence_store=persistence("job"), config=resume_idempotency
    )  # type: ignore[untyped-decorator]
    def resume(message: JobMessage) -> dict[str, Any]:
        return submit_job(message.job_id, services()).as_dict()

    return resume  # type: ignore[no-any-return]


def record_handler(record: SQSRecord) -> None:
    body = record.json_body
    if body.get("Event") == "s3:TestEvent":  # sent once when the notification is configured
        logger.info("S3 test event ignored")
        return
    message = JobMessage.parse(body)
    if message is not None:  # a retry, or a held job resumed
        with logger.append_context_keys(job_id=message.job_id, run_id=None):
            try:
                resume_once()(message=message)
            except RetryLater as exc:
                retry_after(services(), services().settings.uploads_queue_url, record, exc)
                raise
        return
    for raw, s3_record in zip(body.get("Records", []), record.decoded_nested_s3_event.records, strict=True):
        if not s3_record.event_name.startswith("ObjectCreated:"):
            continue
        obj = s3_record.s3.get_object
        upload = UploadRef(
            bucket=s3_record.s3.bucket.name,
            key=decode_event_key(obj.key),
            version_id=obj.version_id,
            etag=obj.etag or None,
            size=obj.get("size"),
        )
        # A backfill may ask for a colour: Backdrop's own field beside S3's record.
        colour = (raw.get("backdrop") or {}).get("color")
        # job_id and run_id, which the core adds once it knows them, end with the record too.
        with logger.append_context_keys(source_key=upload.key, job_id=None, run_id=None):
            try:
                result = submit_once()(
                    notice=Notification(upload, colour if isinstance(colour, str) else None)
                )
            except RetryLater as exc:
                retry_after(services(), services().settings.uploads_queue_url, record, exc)
                raise
        if result.get("job_id"):
            tracer.put_annotation("job_id", str(result["job_id"]))


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    services()  # a missing setting fails here, before any record is touched
    idempotency.register_lambda_context(context)
    return process_partial_response(  # type: ignore[return-value]
        event=event, record_handler=record_handler, processor=processor, context=context
    )
