"""Fixtures for the local Runflow's integration tests: real HTTP on loopback, nothing mocked."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from backdrop_local.runflow import FaultSettings, LocalRunflow
from tests.integration.local_runflow.local_runflow_support import (
    API_KEY,
    ManualClock,
    SilentReceiver,
    Upstream,
    api,
    photo,
    running,
)

# Short retry delays keep callback tests fast; the schedule's shape (3 attempts) is unchanged.
TEST_RETRY_DELAYS = (0.05, 0.1)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture
def silent() -> Iterator[SilentReceiver]:
    receiver = SilentReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def runflow(upstream: Upstream, clock: ManualClock) -> Iterator[LocalRunflow]:
    with running(
        host="127.0.0.1",
        port=0,
        api_keys=frozenset({API_KEY}),
        allow_http_origins=(upstream.origin,),
        output_ttl_seconds=3600.0,
        workers=2,
        faults=FaultSettings(),
        seed=None,
        callback_retry_delays=TEST_RETRY_DELAYS,
        clock=clock,
    ) as instance:
        yield instance


@pytest.fixture
def client(runflow: LocalRunflow) -> Iterator[httpx.Client]:
    with api(runflow) as http:
        yield http


@pytest.fixture
def junk_url(upstream: Upstream) -> str:
    """An input that fails fast (not an image): for tests about the API rather than the pixels."""
    return upstream.add_file("junk.jpg", b"this is not an image", "image/jpeg")


@pytest.fixture
def photo_url(upstream: Upstream) -> str:
    return upstream.add_file("photo.jpg", photo())
