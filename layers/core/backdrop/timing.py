"""When Backdrop tries again, in one place: the Runflow client's backoff, the AWS clients' retries
and timeouts, how soon a queued message that has to wait comes back, and the bounds of that wait.

The values depend on each other (a requeue delay must fit the visibility clamp, a lease-busy wait
must be shorter than the lease); ``tests/unit/test_timing.py`` states those relations.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.config import Config


@dataclass(frozen=True)
class RetryPolicy:
    """Runflow requests: attempt ``n`` waits ``first_delay * 2**(n-1)`` s, capped at ``max_delay``,
    plus up to half again of random jitter; the whole call gives up once the next wait would end
    after ``budget_seconds`` (the caller then hands the work back to its queue)."""

    max_attempts: int = 5
    first_delay: float = 1.0
    max_delay: float = 32.0
    budget_seconds: float = 20.0


# S3, SQS and DynamoDB: botocore's standard retry mode (throttling and 5xx, with its own backoff).
# Counted as botocore's ``total_max_attempts``, the first try included (its ``max_attempts`` counts
# retries only: ``max_attempts: 1`` would still send a request twice).
AWS_MAX_ATTEMPTS = 6
AWS_CONNECT_TIMEOUT_SECONDS = 5
AWS_READ_TIMEOUT_SECONDS = 20

# EventBridge: no automatic retries. PutEvents is not idempotent, and a retry after a lost answer
# sends the event twice; a failed publish stays pending and the reconciler sends it once more.
EVENTS_MAX_ATTEMPTS = 1
EVENTS_READ_TIMEOUT_SECONDS = 10

# How soon a message comes back when its work has to wait (``RetryLater.after_seconds``).
COPY_FAILED_RETRY_SECONDS = 5  # a failed output copy: the outputs may be readable again shortly
LEASE_BUSY_RETRY_SECONDS = 10  # another copy holds the source's result lease
RESERVE_RACE_RETRY_SECONDS = 5  # another attempt reserved this job's run a moment ago
CONTENT_LEASE_RETRY_SECONDS = 5  # the content lease kept changing hands (see backdrop.reuse)

# Bounds of a message's shortened visibility: at least a second, and never longer than a Lambda
# invocation can last (15 minutes), so a wait never outlives the slowest consumer.
MIN_WAIT_SECONDS = 1
MAX_WAIT_SECONDS = 900


def aws_config() -> Config:
    return Config(
        retries={"mode": "standard", "total_max_attempts": AWS_MAX_ATTEMPTS},
        connect_timeout=AWS_CONNECT_TIMEOUT_SECONDS,
        read_timeout=AWS_READ_TIMEOUT_SECONDS,
    )


def events_config() -> Config:
    return Config(
        retries={"mode": "standard", "total_max_attempts": EVENTS_MAX_ATTEMPTS},
        connect_timeout=AWS_CONNECT_TIMEOUT_SECONDS,
        read_timeout=EVENTS_READ_TIMEOUT_SECONDS,
    )
