"""Fixtures shared by the unit tests: no AWS, no network.

Powertools reads its settings when ``backdrop.observability`` is imported, so they are set here,
before any test module imports ``backdrop``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Backdrop")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "backdrop")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")

from unit_fakes import (
    BASE_ENV,
    FakeJobStore,
    FakeRunflow,
    FakeS3,
    FakeSecrets,
    OutputServer,
    World,
    fake_resolver,
)

import backdrop.completion
from backdrop.config import load_settings, reset_settings
from backdrop.observability import metrics
from backdrop.outputs import copy_output
from backdrop.services import Services


@pytest.fixture(autouse=True)
def _clean_globals() -> Iterator[None]:
    reset_settings()
    metrics.clear_metrics()
    yield
    reset_settings()
    metrics.clear_metrics()


@pytest.fixture
def output_server() -> OutputServer:
    return OutputServer()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Host → addresses for the copies made by the completion path (no real DNS in unit tests)."""
    table: dict[str, list[str]] = {}
    monkeypatch.setattr(
        backdrop.completion, "copy_output", functools.partial(copy_output, resolve=fake_resolver(table))
    )
    return table


@pytest.fixture
def world(output_server: OutputServer, dns: dict[str, list[str]]) -> World:
    settings = load_settings(BASE_ENV)
    store, s3, secrets, runflow = FakeJobStore(), FakeS3(), FakeSecrets(), FakeRunflow()
    services = Services(
        settings=settings,
        s3=s3,  # type: ignore[arg-type]
        presign_s3=s3,  # type: ignore[arg-type]
        jobs=store,  # type: ignore[arg-type]
        secrets=secrets,  # type: ignore[arg-type]
        http=output_server.client(),
        _runflow=runflow,  # type: ignore[arg-type]
    )
    return World(services, store, s3, secrets, runflow, output_server)
