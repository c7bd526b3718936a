"""CallbackFunction: Runflow's signed run callbacks, through an HTTP API (payload format 2.0).

One route, so the event is read with Powertools' HTTP API event data class rather than its
router: importing ``aws_lambda_powertools.event_handler`` loads every resolver it has (AppSync,
Bedrock, ...), about a sixth of this function's cold start, which Runflow waits through. The
request is routed as that router routes it, by method and path (the stage taken off), never by
``routeKey``: an API with a ``$default`` route, or an event from ``sam local generate-event``, names
no route there.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from backdrop.callbacks import handle_callback
from backdrop.config import CALLBACK_SIGNATURES, COPY_QUEUE, JOBS, RUNFLOW
from backdrop.observability import logger, metrics, tracer
from backdrop.services import Services, get_services

# The Runflow API key: a run the job has not recorded is read from Runflow before it is adopted.
NEEDS = JOBS | CALLBACK_SIGNATURES | RUNFLOW | COPY_QUEUE
METHOD, PATH = "POST", "/runflow/callback"


def services() -> Services:
    return get_services(NEEDS)


def raw_body(event: APIGatewayProxyEventV2) -> bytes:
    """The exact bytes Runflow signed: HTTP API base64-encodes bodies it does not consider text."""
    body = event.body or ""
    return base64.b64decode(body) if event.is_base64_encoded else body.encode("utf-8")


def answer(status_code: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status_code,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(body),
    }


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@event_source(data_class=APIGatewayProxyEventV2)
def lambda_handler(event: APIGatewayProxyEventV2, context: LambdaContext) -> dict[str, Any]:
    services()  # a missing setting fails here, before any request is handled
    if event.http_method.upper() != METHOD or event.path != PATH:
        return answer(404, {"message": "Not found"})  # what the Powertools router answers
    # HTTP API lowercases header names; the data class looks them up case-insensitively.
    headers = event.headers
    with logger.append_context_keys(runflow_request_id=headers.get("runflow-request-id")):
        result = handle_callback(raw_body(event), headers.get("runflow-signature"), services())
    if result.body.get("job_id"):
        tracer.put_annotation("job_id", str(result.body["job_id"]))
    return answer(result.status_code, result.body)
