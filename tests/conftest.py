"""Shared test settings and fixtures: Powertools offline; moto in server mode over real HTTP on loopback,
provisioned from template.yaml."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Metrics need a namespace; tracing has no X-Ray daemon here. Set before any handler is imported.
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "backdrop")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Backdrop")
os.environ["POWERTOOLS_TRACE_DISABLED"] = "true"
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer, Resources, client, provision
from backdrop_local.template import Template

# moto's server logs every request it serves; test reports only need the code's own logs.
logging.getLogger("werkzeug").setLevel(logging.WARNING)

ROOT = Path(__file__).resolve().parents[1]
_stack_numbers = itertools.count()


@pytest.fixture(scope="session")
def iam_record_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's moto server records every call in IAM terms (see backdrop_local.iamcheck);
    tests that run built functions against it write their stack's policies here."""
    return tmp_path_factory.getbasetemp() / "iam-session"


@pytest.fixture(scope="session")
def moto_endpoint(iam_record_dir: Path) -> Iterator[str]:
    server = MotoServer(record_dir=iam_record_dir, instance="session")
    endpoint = server.start()
    yield endpoint
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """boto3 (and Powertools' providers) in this process talk to moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_endpoint


@pytest.fixture
def resources(aws_env: str) -> Resources:
    """A fresh copy of the template's resources (its own stack name, so tests never share state)."""
    template = Template(ROOT / "template.yaml", stack_name=f"it{next(_stack_numbers)}", region="us-east-1")
    return provision(template, aws_env, api_key="rf_live_test_key", callback_secret="whsec_test_current")


@pytest.fixture
def s3(aws_env: str):  # type: ignore[no-untyped-def]
    return client("s3", aws_env, "us-east-1")


@pytest.fixture
def dynamodb(aws_env: str):  # type: ignore[no-untyped-def]
    return client("dynamodb", aws_env, "us-east-1")
