"""Fixtures of the unit tests: each use case runs against the real job store, ledger, S3 and SQS on a
moto server (a fresh copy of the template's resources per test), a Runflow stand-in and a loopback
output server. Powertools reads its settings when ``backdrop.observability`` is imported, so they
are set (in the top-level conftest) before any test module imports ``backdrop``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backdrop.config import reset_settings
from backdrop.observability import metrics
from backdrop.services import reset_services
from backdrop_local.aws import Resources
from tests.unit.world import OutputServer, World, build_world


@pytest.fixture(autouse=True)
def _clean_globals() -> Iterator[None]:
    reset_settings()
    reset_services()
    metrics.clear_metrics()
    yield
    reset_settings()
    reset_services()
    metrics.clear_metrics()


@pytest.fixture(scope="session")
def output_server() -> Iterator[OutputServer]:
    server = OutputServer()
    yield server
    server.close()


@pytest.fixture
def world(resources: Resources, output_server: OutputServer) -> World:
    output_server.files.clear()
    output_server.requests.clear()
    output_server.script.clear()
    return build_world(resources, output_server)
