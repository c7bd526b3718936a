"""The retry timings agree with each other and with the clients that use them."""

from __future__ import annotations

import pytest

from backdrop import timing
from backdrop.config import load_settings
from backdrop.copying import LEASE_SECONDS
from backdrop.services import Services

# ChangeMessageVisibility accepts 0 to 12 hours; Lambda runs an invocation for 15 minutes at most.
SQS_MAX_VISIBILITY_SECONDS = 12 * 3600
LAMBDA_MAX_SECONDS = 900
ENV = {"AWS_REGION": "us-east-1", "BACKDROP_ALLOWED_OUTPUT_HOSTS": "*.runflow.io"}

REQUEUE_DELAYS = [
    timing.COPY_FAILED_RETRY_SECONDS,
    timing.LEASE_BUSY_RETRY_SECONDS,
    timing.RESERVE_RACE_RETRY_SECONDS,
    timing.CONTENT_LEASE_RETRY_SECONDS,
]


@pytest.mark.parametrize("delay", REQUEUE_DELAYS)
def test_every_requeue_delay_survives_the_visibility_clamp(delay: int) -> None:
    assert timing.MIN_WAIT_SECONDS <= delay <= timing.MAX_WAIT_SECONDS


def test_the_visibility_clamp_is_what_sqs_accepts_and_no_longer_than_an_invocation() -> None:
    assert 0 < timing.MIN_WAIT_SECONDS < timing.MAX_WAIT_SECONDS
    assert timing.MAX_WAIT_SECONDS <= LAMBDA_MAX_SECONDS <= SQS_MAX_VISIBILITY_SECONDS


def test_a_busy_lease_is_asked_again_before_it_could_expire() -> None:
    assert timing.LEASE_BUSY_RETRY_SECONDS < LEASE_SECONDS


def test_runflow_backoff_grows_to_its_cap_and_retries_at_least_once_within_its_budget() -> None:
    policy = timing.RetryPolicy()
    assert policy.max_attempts >= 2
    assert 0 < policy.first_delay <= policy.max_delay
    # The longest first wait (delay plus half again of jitter) still fits the default budget.
    assert policy.first_delay * 1.5 < policy.budget_seconds
    # The cap is reachable: doubling from the first delay gets there within the attempts.
    assert policy.first_delay * 2 ** (policy.max_attempts - 1) <= policy.max_delay * 2
    assert policy.budget_seconds == load_settings(ENV).submit_retry_budget_seconds


def test_aws_clients_retry_and_eventbridge_never_resends() -> None:
    services = Services(load_settings(ENV))
    for client in (services.s3, services.sqs):
        retries = client.meta.config.retries
        assert retries == {"mode": "standard", "total_max_attempts": timing.AWS_MAX_ATTEMPTS}
        assert client.meta.config.read_timeout == timing.AWS_READ_TIMEOUT_SECONDS
    events = services.eventbridge.meta.config
    assert events.retries == {"mode": "standard", "total_max_attempts": timing.EVENTS_MAX_ATTEMPTS}
    assert timing.EVENTS_MAX_ATTEMPTS == 1
    assert timing.AWS_CONNECT_TIMEOUT_SECONDS < timing.AWS_READ_TIMEOUT_SECONDS
    assert timing.AWS_CONNECT_TIMEOUT_SECONDS < timing.EVENTS_READ_TIMEOUT_SECONDS
