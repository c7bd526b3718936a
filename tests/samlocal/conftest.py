"""Fixtures for tests that run functions with `sam local` in Docker containers.

They need a Docker engine (local/sam/docker-engine.sh installs and starts one as root) and the
python3.12 Lambda image (local/sam/build-lambda-image.sh). Where neither can be had they are skipped
with the scripts' reason; with BACKDROP_REQUIRE_SAMLOCAL=1 (CI on a root machine) they fail instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backdrop_local.aws import MotoServer
from backdrop_local.samlocal import (
    SamLocalUnavailable,
    bridge_host_address,
    ensure_image,
)

ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "samlocal: runs functions with `sam local` in Docker (skipped where no engine can run)"
    )


@pytest.fixture(scope="session")
def lambda_image() -> str:
    """The image `sam local` runs the functions in; makes the engine available first."""
    try:
        return ensure_image()
    except SamLocalUnavailable as exc:
        if os.environ.get("BACKDROP_REQUIRE_SAMLOCAL") == "1":
            pytest.fail(f"sam local is required here (BACKDROP_REQUIRE_SAMLOCAL=1) but: {exc.reason}")
        pytest.skip(f"sam local cannot run here: {exc.reason}")


@pytest.fixture(scope="session")
def bridge_ip(lambda_image: str) -> str:
    """The host's address on the Docker bridge: where the containers find the local services."""
    return bridge_host_address()


@pytest.fixture(scope="session")
def built_template() -> Path:
    """`sam build` output; `make build` is a no-op when nothing changed since the last build."""
    result = subprocess.run(
        ["make", "-s", "build"],
        cwd=ROOT,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"sam build failed:\n{result.stdout}\n{result.stderr}"
    template = ROOT / ".aws-sam" / "build" / "template.yaml"
    assert template.is_file()
    return template


@pytest.fixture(scope="session")
def moto_on_bridge(bridge_ip: str) -> Iterator[str]:
    """moto in server mode on the bridge's host address, so both SAM CLI and the containers reach it."""
    server = MotoServer(host=bridge_ip, port=0)
    endpoint = server.start()
    yield endpoint
    server.stop()
