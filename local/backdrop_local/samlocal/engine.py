"""The Docker engine and the python3.12 Lambda image, from the scripts in ``local/sam/``, and the
containers the SAM CLI makes from that image."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable
from typing import Any

from backdrop_local.samlocal.shared import SCRIPTS, UNAVAILABLE_EXIT, SamLocalError, SamLocalUnavailable


def _run_script(name: str, timeout: float) -> str:
    # Its own process group, so that a timeout also ends what it runs (apt-get, debootstrap, pip);
    # a dockerd it starts has a session of its own and stays.
    process = subprocess.Popen(
        ["bash", str(SCRIPTS / name)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(process, grace=5.0)
        process.communicate()
        raise SamLocalError(f"{name} did not finish within {timeout:.0f}s") from None
    if process.returncode == UNAVAILABLE_EXIT:
        lines = [line for line in stderr.splitlines() if "UNAVAILABLE:" in line]
        reason = lines[-1].split("UNAVAILABLE:", 1)[1].strip() if lines else stderr.strip()[-300:]
        raise SamLocalUnavailable(f"{name}: {reason}")
    if process.returncode != 0:
        raise SamLocalError(f"{name} failed ({process.returncode}):\n{stderr[-3000:]}")
    return stdout


def ensure_engine(timeout: float = 900.0) -> None:
    """A Docker engine answers (installed and started here if need be, see docker-engine.sh)."""
    _run_script("docker-engine.sh", timeout)


def ensure_image(timeout: float = 1800.0) -> str:
    """The python3.12 Lambda image to pass to ``--invoke-image`` (official if present, else the stand-in)."""
    out = _run_script("build-lambda-image.sh", timeout).strip().splitlines()
    if not out:
        raise SamLocalError("build-lambda-image.sh printed no image name")
    return out[-1].strip()


def docker(args: list[str], timeout: float = 30.0) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise SamLocalError(f"docker {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def sam_containers(image: str) -> set[str]:
    """Ids of the containers SAM CLI made from ``image`` (its per-function images descend from it)."""
    out = docker(
        [
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            "label=sam.cli.container.type=lambda",
            "--filter",
            f"ancestor={image}",
        ]
    )
    return {line.strip() for line in out.splitlines() if line.strip()}


def remove_containers(ids: Iterable[str]) -> None:
    ids = sorted(set(ids))
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=60, check=False)


def stop_group(process: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGINT (what Ctrl-C sends, SAM's clean stop), then SIGTERM, then SIGKILL, each bounded."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
