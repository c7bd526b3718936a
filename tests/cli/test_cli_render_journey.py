"""``backdrop render`` on the local stack, end to end: a sample photo goes in through the S3 API,
the pipeline makes its result and renditions, and the command, run as a user runs it, has the copy
function make them again with no run, then ``status`` and ``report`` show the verdicts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backdrop_local.runflow import FaultSettings
from backdrop_local.stack import LocalStack, StackOptions
from tests.cli.cliworld import Cli, jobs_of, put, runs_at_runflow

ROOT = Path(__file__).resolve().parents[2]
RENDITIONS = json.dumps({"amazon": "amazon-main", "thumb": "thumbnail"})
KEY = "uploads/journey/bottle.jpg"


@pytest.fixture(scope="module")
def stack(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    options = StackOptions(
        stack_name="cli-render",
        state_dir=tmp_path_factory.mktemp("cli-render"),
        runflow_callback_delays=(0.2, 0.4),
        parameter_overrides={"Renditions": RENDITIONS, "ReuseResults": "false"},
    )
    with LocalStack(options) as running:
        assert running.runflow is not None
        running.runflow.set_faults(FaultSettings(processing="real"))  # renditions need a product
        yield running


def succeeded(stack: LocalStack, key: str, timeout: float = 240.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        jobs = jobs_of(stack, key)
        if jobs and jobs[0].status.value == "succeeded":
            return jobs[0].job_id
        assert time.monotonic() < deadline, [j.status.value for j in jobs]
        time.sleep(0.5)


def test_render_makes_the_renditions_again_with_no_run(stack: LocalStack) -> None:
    cli = Cli(stack.state_dir)
    put(stack, KEY, (ROOT / "samples" / "bottle.jpg").read_bytes())
    job_id = succeeded(stack, KEY)
    [before] = cli.json("status", job_id)["jobs"]
    assert sorted(before["renditions"]) == ["amazon", "thumb"]
    runs = runs_at_runflow(stack, job_id)

    doc = cli.json("render", "uploads/journey/", "--yes", "--wait-timeout", "120")
    assert doc["objects"] == 1 and doc["estimated_cost_usd"] == 0 and doc["runs"] == 0
    assert doc["sent"] == {"total": 1} and doc["rendered"] == 1 and doc["not_rendered"] == []
    [rendered] = doc["jobs"]
    assert rendered["job_id"] == job_id and sorted(rendered["renditions"]) == ["amazon", "thumb"]
    amazon = rendered["renditions"]["amazon"]
    assert (amazon["width"], amazon["height"], amazon["format"]) == (2000, 2000, "JPEG")
    assert amazon["verdict"] in ("pass", "warn", "fail") and amazon["bytes"] > 0
    assert runs_at_runflow(stack, job_id) == runs  # no run: $0

    [after] = cli.json("status", job_id)["jobs"]
    assert after["renditions"] == rendered["renditions"] and after["run_id"] == before["run_id"]
    text = cli("status", KEY).stdout
    assert "Renditions" in text and "2000x2000" in text and amazon["verdict"] in text

    report = cli.json("report", "--prefix", "uploads/journey/")
    assert report["renditions"] == doc["verdicts"]
    assert sum(report["renditions"]["thumb"].values()) == 1
