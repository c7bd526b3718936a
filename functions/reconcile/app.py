"""ReconcileFunction: a scheduled pass over open jobs (lost callbacks, lost copies, stuck runs)."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from backdrop.config import COPY_QUEUE, JOBS, RUN_BUDGET, RUN_CREATION, UPLOADS, UPLOADS_QUEUE
from backdrop.observability import logger, metrics, tracer
from backdrop.reconciliation import reconcile
from backdrop.services import Services, get_services

NEEDS = JOBS | RUN_BUDGET | UPLOADS | RUN_CREATION | COPY_QUEUE | UPLOADS_QUEUE
# Stop starting new jobs this long before the function's timeout.
SAFETY_MARGIN_SECONDS = 30.0


def services() -> Services:
    return get_services(NEEDS)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    budget = context.get_remaining_time_in_millis() / 1000.0 - SAFETY_MARGIN_SECONDS
    report = reconcile(services(), deadline=time.monotonic() + max(budget, 1.0))
    return report.as_dict()
