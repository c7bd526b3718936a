"""The core's modules import each other without a cycle, so each one loads on its own, first, in a
fresh interpreter (a handler may import any of them first), and tracing rebuilds the services."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "layers" / "core"
MODULES = sorted(path.stem for path in (CORE / "backdrop").glob("*.py") if path.stem != "__init__")


def _imported(module: str) -> set[str]:
    """The core modules ``module`` imports, at the top or inside a function."""
    tree = ast.parse((CORE / "backdrop" / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "backdrop":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("backdrop."):
            found.add((node.module or "").split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("backdrop.")}
    return found & set(MODULES)


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path of imports that leads from ``start`` back to it, if there is one."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        module, path = stack.pop()
        for name in sorted(graph[module]):
            if name == start:
                return [*path, start]
            if name not in seen:
                seen.add(name)
                stack.append((name, [*path, name]))
    return None


def test_no_core_module_imports_itself_through_others() -> None:
    graph = {module: _imported(module) for module in MODULES}
    assert graph["services"]  # the reading found imports at all
    cycles = [cycle for module in MODULES if (cycle := _cycle_from(module, graph))]
    assert cycles == []


def _fresh_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "PYTHONPATH": str(CORE),
        "POWERTOOLS_SERVICE_NAME": "backdrop",
        "POWERTOOLS_METRICS_NAMESPACE": "Backdrop",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("module", MODULES)
def test_each_core_module_loads_first_in_a_fresh_interpreter(module: str) -> None:
    answer = _fresh_python(f"import backdrop.{module}")
    assert answer.returncode == 0, answer.stderr


def test_services_built_before_tracing_starts_are_built_again() -> None:
    code = """
from backdrop.config import load_settings
from backdrop import services
from backdrop.observability import tracer
settings = load_settings({"AWS_REGION": "us-east-1", "BACKDROP_ALLOWED_OUTPUT_HOSTS": "*.runflow.io"})
services.get_settings = lambda: settings
untraced = services.get_services()
assert services.get_services() is untraced
assert tracer.active is not None
print(services.get_services() is untraced)
"""
    answer = _fresh_python(
        code,
        POWERTOOLS_TRACE_DISABLED="false",
        _X_AMZN_TRACE_ID="Root=1-67890abc-0123456789abcdef01234567;Parent=0123456789abcdef;Sampled=1",
        AWS_XRAY_DAEMON_ADDRESS="127.0.0.1:2000",
        AWS_XRAY_CONTEXT_MISSING="IGNORE_ERROR",
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == "False"
