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


def test_every_module_of_the_layer_is_shipped_compiled(built: Path) -> None:
    """Lambda's /opt is read-only: a module without bytecode in the layer is compiled at every cold
    start. The build compiles each one as unchecked-hash bytecode (used without a source check)."""
    import importlib.util

    site = built / "CoreLayer" / "python"
    sources = [p for p in site.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(sources) > 100
    missing, checked = [], []
    for source in sources:
        compiled = Path(importlib.util.cache_from_source(str(source)))
        if not compiled.exists():
            missing.append(str(source.relative_to(site)))
            continue
        flags = int.from_bytes(compiled.read_bytes()[4:8], "little")
        if flags != 0b01:  # hash-based (bit 0), source not checked (bit 1 clear): PEP 552
            checked.append(str(source.relative_to(site)))
    assert missing == []
    assert checked == []
