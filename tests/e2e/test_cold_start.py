"""The built functions start the way `make bench` measures them (a fresh process with Lambda's
layout: function folder, layer, the runtime's packages): each imports and builds its clients, and
the X-Ray SDK is loaded only when the first invocation is sampled. Figures are `make bench`'s job;
this only shows the measured path works and what it loads."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.cold_start import CLIENTS, SAMPLED, run_once
from benchmarks.common import FUNCTIONS, function_configs, lambda_copy, lambda_environment, runtime_packages


@pytest.fixture(scope="module")
def layout(built: Path) -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory(prefix="backdrop-coldstart-test-") as tmp:
        root = lambda_copy(Path(tmp))
        yield root, runtime_packages(Path(tmp) / "runtime")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_starts_cold_and_loads_x_ray_only_when_sampled(name: str, layout: tuple[Path, Path]) -> None:
    root, runtime = layout
    task, layer = root / "task" / name, root / "opt" / "python"
    env = lambda_environment(function_configs()[name], task, {})
    clients = ("tracing", *CLIENTS[name])

    plain = run_once("function", [task, layer, runtime], env, clients)
    assert plain.phases["import_ms"] > 0 and plain.phases["clients_ms"] > 0
    assert plain.phases["xray_loaded"] is False

    traced = run_once("function", [task, layer, runtime], {**env, **SAMPLED}, clients)
    assert traced.phases["xray_loaded"] is True

    floor = run_once("floor", [layer, runtime], env, clients)
    assert floor.phases["xray_loaded"] is False
