"""The layer `sam build` made holds exactly the locked packages (layers/core/requirements.txt, generated
from pyproject.toml by `make lock`): the same versions the tests ran against, one botocore."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;([^\\]*))?")


def locked() -> dict[str, str]:
    """The layer lock's pins for this machine (Linux x86_64, CPython 3.12, like Lambda)."""
    pins: dict[str, str] = {}
    for line in (ROOT / "layers" / "core" / "requirements.txt").read_text().splitlines():
        match = PIN.match(line)
        if match and (match[3] is None or Marker(match[3]).evaluate()):
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def installed(site: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for info in site.glob("*.dist-info"):
        fields = dict(
            line.split(": ", 1) for line in (info / "METADATA").read_text().splitlines() if ": " in line
        )
        found.setdefault(canonicalize_name(fields["Name"]), []).append(fields["Version"])
    return found


def test_layer_holds_exactly_the_locked_versions(built: Path) -> None:
    pins = locked()
    assert {"boto3", "botocore", "aws-lambda-powertools", "httpx"} <= pins.keys()
    found = installed(built / "CoreLayer" / "python")
    assert {name: versions for name, versions in found.items() if len(versions) > 1} == {}
    assert {name: versions[0] for name, versions in found.items()} == pins


def test_the_development_environment_runs_the_layers_versions() -> None:
    from importlib.metadata import version

    for name, pinned in locked().items():
        assert version(name) == pinned, f"{name}: .venv has {version(name)}, the layer {pinned}"
