"""Fixtures of the operator command's tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cli.cliworld import BACKDROP

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def built() -> Path:
    """`sam build` output; `make build` is a no-op when nothing changed since the last build."""
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    result = subprocess.run(
        ["make", "-s", "build"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"sam build failed:\n{result.stdout}\n{result.stderr}"
    assert BACKDROP.is_file(), f"{BACKDROP} is missing: `make venv` installs the backdrop command"
    return ROOT / ".aws-sam" / "build"
