"""CopyFunction: finishes jobs whose runs reported their outcome, streaming outputs into the results
bucket and making the configured renditions beside them (judged by the quality gate), makes a
succeeded job's renditions again on request (no run), and carries out a person's decision on a
held result; fed by the copy queue (partial batch failures; a failed copy returns to
the queue). The one function that loads the imaging libraries."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from backdrop.config import COPY_QUEUE, JOBS, RESULTS, RUN_BUDGET, RUNFLOW, UPLOADS
from backdrop.copying import handle_copy_request, handle_render_request, handle_review_request
from backdrop.observability import logger, metrics, tracer
from backdrop.outcomes import Result, RetryLater
from backdrop.queues import CopyRequest, RenderRequest, ReviewRequest
from backdrop.services import Services, get_services
from backdrop.visibility import retry_after

NEEDS = JOBS | RUN_BUDGET | UPLOADS | RESULTS | RUNFLOW | COPY_QUEUE
# Stop a copy this long before the function's own timeout, so it can give its lease back.
SAFETY_MARGIN_SECONDS = 10.0

processor = BatchProcessor(event_type=EventType.SQS)


def services() -> Services:
    return get_services(NEEDS)


def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> None:
    try:
        request = _parse(record.body)
    except ValueError as exc:
        logger.error("Not a copy, render or review request; dropped", extra={"reason": str(exc)})
        return
    deadline = (
        time.monotonic() + lambda_context.get_remaining_time_in_millis() / 1000.0 - SAFETY_MARGIN_SECONDS
    )
    run_id = request.run_id if isinstance(request, CopyRequest) else None
    with logger.append_context_keys(job_id=request.job_id, run_id=run_id):
        tracer.put_annotation("job_id", request.job_id)
        try:
            result = _handle(request, deadline)
        except RetryLater as exc:
            retry_after(services(), services().settings.copy_queue_url, record, exc)
            raise
        logger.info("Copy request handled", extra={"outcome": result.outcome.value, "detail": result.detail})


Request = CopyRequest | RenderRequest | ReviewRequest


def _parse(body: str) -> Request:
    return ReviewRequest.parse(body) or RenderRequest.parse(body) or CopyRequest.parse(body)


def _handle(request: Request, deadline: float) -> Result:
    if isinstance(request, ReviewRequest):
        return handle_review_request(request, services(), deadline=deadline)
    if isinstance(request, RenderRequest):
        return handle_render_request(request, services(), deadline=deadline)
    return handle_copy_request(request, services(), deadline=deadline)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    services()  # a missing setting fails here, before any record is touched
    return process_partial_response(  # type: ignore[return-value]
        event=event, record_handler=record_handler, processor=processor, context=context
    )
