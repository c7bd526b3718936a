"""The daily run budget seen through the command, on the local stack with ``DailyRunBudget=2``: a
backfill larger than the budget creates two runs, holds the rest (and says so instead of waiting
for the next UTC day), the report shows the spend against the budget, and the held jobs resume on
their own once the budget allows again, each with exactly one run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backdrop.ledger import RunBudget
from backdrop_local.runflow import FaultSettings
from backdrop_local.stack import LocalStack, StackOptions
from tests.cli.cliworld import (
    Cli,
    jobs_of,
    no_notifications,
    photo,
    put,
    resources,
    runs_at_runflow,
    utc_day_with_room,
)

PREFIX = "uploads/budget/"


@pytest.fixture(scope="module")
def stack(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    options = StackOptions(
        stack_name="cli-budget",
        state_dir=tmp_path_factory.mktemp("cli-budget"),
        parameter_overrides={"DailyRunBudget": "2"},
        # Held jobs are resumed by the reconciler: run it often here.
        reconcile_every_seconds=1.0,
        reconcile_min_age_seconds=1,
        runflow_callback_delays=(0.2, 0.4),
    )
    with LocalStack(options) as running:
        assert running.runflow is not None
        running.runflow.set_faults(FaultSettings(processing="instant"))
        yield running


def test_budget_holds_jobs_reports_spend_and_resumes_them(stack: LocalStack) -> None:
    cli = Cli(stack.state_dir)
    # Everything up to the report happens in one budget day (the backfill waits up to 120 s): a
    # start in the day's last minutes waits for midnight instead of being split by it.
    day = utc_day_with_room(300)
    names = [f"item-{i}.jpg" for i in range(4)]
    with no_notifications(stack):
        for name in names:
            put(stack, PREFIX + name, photo())

    plan = cli.json("plan", PREFIX)
    assert plan["to_submit"] == 4
    assert plan["budget"] == {
        "daily_run_budget": 2,
        "reserved_today": 0,
        "remaining_today": 2,
        "held_now": 0,
        "extra_days_needed": 1,
    }

    done = cli.json("backfill", PREFIX, "--yes", "--wait-timeout=120")
    # Two runs today; the other two wait for the budget, and the command says so instead of
    # waiting for the next UTC day.
    assert done["wait"]["held_for_budget"] is True
    assert done["outcomes"] == {"held": 2, "succeeded": 2}
    assert done["runs_created"] == 2 and done["spent_usd"] == pytest.approx(0.24)
    held = [j for j in done["jobs"] if j["status"] == "held"]
    assert {j["error_code"] for j in held} == {"BUDGET_EXHAUSTED"}

    report = cli.json("report")
    [today] = [d for d in report["spend"]["days"] if d["day"] == day]
    assert today == {
        "day": day,
        "runs_reserved": 2,
        "daily_run_budget": 2,
        "percent_of_budget": 100.0,
        "cost_usd": pytest.approx(0.24),
    }
    assert report["open"]["by_status"] == {"held": 2}
    assert report["open"]["last_errors"] == {"BUDGET_EXHAUSTED": 2}
    assert report["open"]["largest_backlog"][0]["prefix"] == PREFIX
    human = cli("report")
    assert human.code == 0 and "100.0%" in human.stdout

    # The next UTC day starts with a fresh counter; rather than wait for midnight, today's is reset.
    ledger = stack.dynamodb()
    ledger.update_item(
        TableName=resources(stack).ledger_table,
        Key={"pk": {"S": RunBudget.key_for(day)}},
        UpdateExpression="SET reserved = :zero",
        ExpressionAttributeValues={":zero": {"N": "0"}},
    )
    deadline = time.monotonic() + 90
    while True:
        status = cli.json("status", "--prefix", PREFIX)
        if status["counts"] == {"succeeded": 4}:
            break
        assert time.monotonic() < deadline, status["counts"]
        time.sleep(0.5)
    for name in names:
        [job] = jobs_of(stack, PREFIX + name)
        assert job.attempt == 1 and runs_at_runflow(stack, job.job_id) == 1  # one run each, ever
    assert cli.json("backfill", PREFIX, "--yes")["sent"]["total"] == 0
