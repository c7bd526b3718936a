"""CallbackFunction: Runflow's signed run callbacks, through an HTTP API (payload format 2.0)."""

from __future__ import annotations

import base64
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from backdrop.callbacks import handle_callback
from backdrop.observability import logger, metrics, tracer
from backdrop.services import Services, get_services

NEEDS = ("jobs_table", "callback_secret_name", "copy_queue_url")

app = APIGatewayHttpResolver()


def services() -> Services:
    return get_services(NEEDS)


def raw_body() -> bytes:
    """The exact bytes Runflow signed: HTTP API base64-encodes bodies it does not consider text."""
    event = app.current_event
    body = event.body or ""
    return base64.b64decode(body) if event.is_base64_encoded else body.encode("utf-8")


@app.post("/runflow/callback")
def runflow_callback() -> Response[Any]:
    # HTTP API lowercases header names; the data class looks them up case-insensitively.
    headers = app.current_event.headers
    with logger.append_context_keys(runflow_request_id=headers.get("runflow-request-id")):
        answer = handle_callback(raw_body(), headers.get("runflow-signature"), services())
    if answer.body.get("job_id"):
        tracer.put_annotation("job_id", str(answer.body["job_id"]))
    return Response(
        status_code=answer.status_code, content_type=content_types.APPLICATION_JSON, body=answer.body
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    services()  # a missing setting fails here, before any request is handled
    return app.resolve(event, context)
