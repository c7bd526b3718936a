"""The local stack's crash-mid-copy fault, installed by its Lambda worker from outside the core: the
handler's services factory hands out services whose copier kills the execution environment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from backdrop_local.lambdas import InvokeResult, LocalFunction

CORE = Path(__file__).resolve().parents[2] / "layers" / "core"
SITE_PACKAGES = Path(boto3.__file__).resolve().parents[1]

# A handler shaped like the functions': it reaches its services through the module's factory.
HANDLER = """
from backdrop.outputs import copy_output
from backdrop.services import get_services


def lambda_handler(event, context):
    services = get_services(("results_bucket",))
    if event.get("copy"):
        services.copy(None, None, None)
    return {"stock_copier": services.copy is copy_output}
"""
ENV = {
    "AWS_REGION": "us-east-1",
    "BACKDROP_RESULTS_BUCKET": "results",
    "BACKDROP_ALLOWED_OUTPUT_HOSTS": "*.runflow.io",
    "POWERTOOLS_SERVICE_NAME": "backdrop",
    "POWERTOOLS_METRICS_NAMESPACE": "Backdrop",
}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., LocalFunction]]:
    (tmp_path / "app.py").write_text(HANDLER)
    started: list[LocalFunction] = []

    def function(**env: str) -> LocalFunction:
        made = LocalFunction(
            "CopyFunction",
            handler="app.lambda_handler",
            paths=[tmp_path, CORE, SITE_PACKAGES],
            env={**ENV, **env},
            timeout=30,
            max_concurrency=1,
            log_path=tmp_path / "copy.log",
        )
        started.append(made)
        return made

    yield function
    for made in started:
        made.close()


def test_without_the_fault_the_handler_gets_the_stock_copier(start: Callable[..., LocalFunction]) -> None:
    function = start()
    assert function.invoke({}) == InvokeResult(True, payload={"stock_copier": True})


def test_the_fault_kills_the_environment_mid_copy(
    start: Callable[..., LocalFunction], tmp_path: Path
) -> None:
    log = tmp_path / "copy.log"
    function = start(BACKDROP_LOCAL_CRASH_MID_COPY_RATE="1", BACKDROP_LOCAL_FAULT_SEED="7")
    assert function.invoke({}) == InvokeResult(True, payload={"stock_copier": False})
    crashed = function.invoke({"copy": True})
    assert not crashed.ok and crashed.payload is None
    assert "local fault injection: crashing mid-copy" in log.read_text()
    # A fresh execution environment takes the next invocation, with the fault installed again.
    assert function.invoke({}) == InvokeResult(True, payload={"stock_copier": False})
