"""CallbackFunction: Runflow's signed run callbacks, through an HTTP API (payload format 2.0)."""

from __future__ import annotations

import base64
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from backdrop.callbacks import handle_callback
from backdrop.observability import logger, metrics, tracer
from backdrop.services import get_services

app = APIGatewayHttpResolver()


def raw_body() -> bytes:
    """The exact bytes Runflow signed: HTTP API base64-encodes bodies it does not consider text."""
    event = app.current_event
    body = event.body or ""
    return base64.b64decode(body) if event.is_base64_encoded else body.encode("utf-8")


@app.post("/runflow/callback")
@tracer.capture_method(capture_response=False)
def runflow_callback() -> Response[Any]:
    headers = (
        app.current_event.headers
    )  # HTTP API lowercases names; the data class looks up case-insensitively
    request_id = headers.get("runflow-request-id")
    if request_id:
        logger.append_keys(runflow_request_id=request_id)
    answer = handle_callback(raw_body(), headers.get("runflow-signature"), get_services())
    return Response(
        status_code=answer.status_code, content_type=content_types.APPLICATION_JSON, body=answer.body
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
