"""End-to-end fixtures: the functions as `sam build` built them, run in fresh processes. The
session ends with the IAM check of every AWS call the functions made in it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backdrop_local import iamcheck

ROOT = Path(__file__).resolve().parents[2]
IAM_LINES = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session", autouse=True)
def iam_check_of_the_session(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[None]:
    """After the last test: every call recorded in this session (each local stack's moto and the
    session's own, under the session's temporary folder) must be allowed by the calling function's
    policy in template.yaml. A denial fails the session, naming function, action and resource."""
    yield
    base = tmp_path_factory.getbasetemp()
    # A local stack records under <state dir>/iam, the session's moto server under iam-session (other
    # tests may keep deliberately denied records elsewhere).
    report = iamcheck.check(
        [d for d in base.rglob("iam*") if d.is_dir() and d.name in ("iam", "iam-session")]
    )
    lines = report.lines(show_unused=False)
    request.config.stash[IAM_LINES] = lines
    assert not report.denied, "calls the template's policies would deny in AWS:\n" + "\n".join(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(IAM_LINES, [])
    if lines:
        terminalreporter.section("IAM check of the e2e session")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def built() -> Path:
    """`sam build` output; `make build` is a no-op when nothing changed since the last build."""
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    result = subprocess.run(
        ["make", "-s", "build"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"sam build failed:\n{result.stdout}\n{result.stderr}"
    build = ROOT / ".aws-sam" / "build"
    assert (build / "CoreLayer" / "python" / "backdrop").is_dir()
    return build
