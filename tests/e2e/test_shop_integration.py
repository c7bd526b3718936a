"""Fitting into the shop's systems, through the whole local stack over real HTTP: colour rules by
prefix set as template parameters, one completion event per finished job on the stack's bus, and
the daily run budget holding jobs and resuming them when an operator raises it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backdrop.jobs import TERMINAL
from backdrop_local.aws import scan_items
from backdrop_local.runflow import FaultSettings
from backdrop_local.stack import LocalStack, StackOptions
from tests.support.images import solid

ROOT = Path(__file__).resolve().parents[2]
RULES = '{"uploads/amazon/": "#FFFFFF", "uploads/brand/": "241,241,241"}'


@pytest.fixture(scope="module")
def stack(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    options = StackOptions(
        stack_name="shop-stack",
        state_dir=tmp_path_factory.mktemp("shop"),
        reconcile_every_seconds=2.0,
        reconcile_min_age_seconds=3,
        # The same photo goes up again and again to spend the budget: each upload must make its run.
        parameter_overrides={"ColorRules": RULES, "DailyRunBudget": "100", "ReuseResults": "false"},
    )
    with LocalStack(options) as running:
        assert running.runflow is not None
        running.runflow.set_faults(FaultSettings(processing="instant"))
        yield running


def photo() -> bytes:
    return solid("JPEG", (40, 30), (90, 60, 30))


def put(stack: LocalStack, key: str, body: bytes | None = None, **metadata: str) -> None:
    assert stack.resources is not None
    stack.s3().put_object(
        Bucket=stack.resources.uploads_bucket,
        Key=key,
        Body=photo() if body is None else body,
        Metadata=metadata,
    )


def jobs(stack: LocalStack) -> dict[str, dict[str, Any]]:
    assert stack.resources is not None
    return {j["source_key"]: j for j in scan_items(stack.dynamodb(), stack.resources.jobs_table)}


def wait(
    stack: LocalStack, keys: list[str], statuses: set[str], timeout: float = 120.0
) -> dict[str, dict[str, Any]]:
    """The jobs once each is in one of ``statuses`` (a long bound against a hang)."""
    deadline = time.monotonic() + timeout
    while True:
        found = jobs(stack)
        if all(k in found and found[k]["status"] in statuses for k in keys):
            return {k: found[k] for k in keys}
        assert time.monotonic() < deadline, {k: found.get(k, {}).get("status") for k in keys}
        time.sleep(0.3)


def drain_events(stack: LocalStack) -> list[dict[str, Any]]:
    sqs = stack.sqs()
    url = stack.info["events_queue_url"]
    found: list[dict[str, Any]] = []
    while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
        "Messages", []
    ):
        for message in got:
            found.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return found


def test_colour_rules_choose_by_longest_prefix_and_metadata_wins(stack: LocalStack) -> None:
    keys = [
        "uploads/brand/shoe.jpg",
        "uploads/amazon/fr/bag.jpg",
        "uploads/amazon/hat.jpg",
        "uploads/plain.jpg",
    ]
    put(stack, keys[0])
    put(stack, keys[1])
    put(stack, keys[2], **{"background-color": "#000000"})
    put(stack, keys[3])
    done = wait(stack, keys, {"succeeded"})
    assert [(done[k]["color"], done[k]["color_source"]) for k in keys] == [
        ("241,241,241", "rule:uploads/brand/"),
        ("255,255,255", "rule:uploads/amazon/"),
        ("0,0,0", "metadata"),
        ("255,255,255", "default"),
    ]
    assert stack.info["parameters"]["ColorRules"] == RULES


def test_every_finished_job_publishes_exactly_one_event(stack: LocalStack) -> None:
    drain_events(stack)
    put(stack, "uploads/events/ok.jpg")
    put(stack, "uploads/events/empty.jpg", b"")
    done = wait(stack, ["uploads/events/ok.jpg", "uploads/events/empty.jpg"], TERMINAL)
    deadline = time.monotonic() + 30
    events: list[dict[str, Any]] = []
    while len(events) < 2 and time.monotonic() < deadline:
        events += drain_events(stack)
    by_job = {e["detail"]["job_id"]: e for e in events}
    ok, empty = done["uploads/events/ok.jpg"], done["uploads/events/empty.jpg"]
    assert sorted(by_job) == sorted([ok["job_id"], empty["job_id"]]) and len(events) == 2
    assert by_job[ok["job_id"]]["detail-type"] == "Job Succeeded"
    assert by_job[ok["job_id"]]["detail"]["result"]["keys"] == ok["result_keys"]
    assert by_job[empty["job_id"]]["detail-type"] == "Job Rejected"
    assert by_job[empty["job_id"]]["detail"]["error"]["code"] == "EMPTY_OBJECT"
    assert all(e["source"] == "backdrop" and e["detail"]["schema_version"] == "1" for e in events)


def test_spent_budget_holds_jobs_until_an_operator_raises_it(stack: LocalStack) -> None:
    assert stack.runflow is not None
    used = stack.runflow.stats()["runs_created"]  # today's runs so far in this module
    stack.update_parameters({"DailyRunBudget": str(used + 2)})  # two more runs today
    keys = [f"uploads/budget/{i}.jpg" for i in range(4)]
    for key in keys:
        put(stack, key)
    settled = wait(stack, keys, {"succeeded", "held"})
    held = [k for k in keys if settled[k]["status"] == "held"]
    assert len(held) == 2 and all(settled[k]["error_code"] == "BUDGET_EXHAUSTED" for k in held)
    assert stack.runflow.stats()["runs_created"] == used + 2
    stack.update_parameters({"DailyRunBudget": str(used + 10)})  # the operator raises the budget
    resumed = wait(stack, held, {"succeeded"})
    assert all("error_code" not in job for job in resumed.values())
    assert stack.runflow.stats()["runs_created"] == used + 4  # exactly one run each


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('ColorRules={"uploads/x/":"nope"}', "BACKDROP_COLOR_RULES: colour rule 'uploads/x/'"),
        ('ColorRules={"incoming/":"#FFFFFF"}', "not under the upload prefix"),
        ("ColorRules=not-json", "ColorRules: 'not-json' must be a JSON object"),
        ("DailyRunBudget=-3", "DailyRunBudget: -3 is below the minimum 0"),
        ("NoSuchParameter=1", "NoSuchParameter is not a parameter of template.yaml"),
    ],
)
def test_bad_parameters_stop_the_local_stack_at_start(
    built: Path, tmp_path: Path, override: str, message: str
) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'local'}:{ROOT / 'layers' / 'core'}"}
    env.pop("PARAMETER_OVERRIDES", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "backdrop_local",
            "--state-dir",
            str(tmp_path),
            "--parameter-overrides",
            override,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "local-stack.json").exists()
