"""Handing an SQS message back sooner than its visibility timeout when the work only needs a short
wait (a create in flight settling, a busy result lease): the queue's timeout is sized for the
slowest invocation, not for how soon the next try makes sense."""

from __future__ import annotations

from typing import Protocol

from backdrop.observability import logger
from backdrop.outcomes import RetryLater
from backdrop.services import Services
from backdrop.timing import MAX_WAIT_SECONDS, MIN_WAIT_SECONDS


class QueuedMessage(Protocol):
    @property
    def receipt_handle(self) -> str: ...


def retry_after(services: Services, queue_url: str, message: QueuedMessage, problem: RetryLater) -> None:
    """Make the message visible again after ``problem.after_seconds`` (best effort)."""
    if problem.after_seconds is None or not queue_url:
        return
    wait = int(min(MAX_WAIT_SECONDS, max(MIN_WAIT_SECONDS, problem.after_seconds)))
    try:
        services.sqs.change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=wait
        )
    except Exception as exc:  # the queue's own timeout still brings it back
        logger.warning("Could not shorten the message's visibility", extra={"reason": str(exc)})
