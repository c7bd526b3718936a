"""SubmitFunction: S3 object-created notifications, delivered through SQS in batches."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from backdrop.observability import logger, metrics, tracer
from backdrop.submission import register_lambda_context, submit_once
from backdrop.uploads import UploadRef, decode_event_key

processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> None:
    message = json.loads(record.body)
    if message.get("Event") == "s3:TestEvent":  # sent once when the notification is configured
        logger.info("S3 test event ignored")
        return
    for s3_record in S3Event(message).records:
        if not s3_record.event_name.startswith("ObjectCreated:"):
            continue
        obj = s3_record.s3.get_object
        submit_once(
            upload=UploadRef(
                bucket=s3_record.s3.bucket.name,
                key=decode_event_key(obj.key),
                version_id=obj.version_id,
                etag=obj.etag or None,
                size=obj.get("size"),
            )
        )


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    register_lambda_context(context)
    return process_partial_response(  # type: ignore[return-value]
        event=event, record_handler=record_handler, processor=processor, context=context
    )
