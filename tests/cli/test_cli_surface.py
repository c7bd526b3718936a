"""The command's surface, in process with click's runner against a stack provisioned in moto: text
uploaders control is shown as it is (never read as markup), the global options work on
either side of the subcommand, for the local stack (local-stack.json) and a deployed one
(CloudFormation outputs, an AWS profile), usage errors exit 2 with their reason, and each
subcommand's exit status and --json document."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result

from backdrop.jobs import RETRYABLE, Job, Status
from backdrop.jobstore import JobStore
from backdrop_cli.main import cli
from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Resources, client, provision
from backdrop_local.template import Template

ROOT = Path(__file__).resolve().parents[2]
DRAFT_KEY = "uploads/[draft]/x.jpg"
BAD_COLOUR = "[/bold]"
EMOJI_KEY = "uploads/:thumbs_up:/y.jpg"


@dataclass(frozen=True)
class World:
    resources: Resources
    template: Template
    state_dir: Path  # holds local-stack.json naming the resources
    stack_name: str  # a CloudFormation stack in moto whose outputs name the same resources
    aws_config: Path  # an AWS config file with profile "ops"


@pytest.fixture(scope="module")
def world(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    name = f"surface{int(time.time() * 1000) % 10**8}"
    template = Template(ROOT / "template.yaml", stack_name=name, region="us-east-1")
    resources = provision(template, moto_endpoint, api_key="rf_live_test", callback_secret="whsec_test")
    state = tmp_path_factory.mktemp("surface")
    # Renditions named, so that `render` runs (on an empty prefix: nothing to send).
    parameters = {**template.parameters, "Renditions": '{"thumb": "thumbnail"}'}
    (state / "local-stack.json").write_text(
        json.dumps(
            {
                "region": "us-east-1",
                "aws_endpoint_url": moto_endpoint,
                "aws_access_key_id": ACCESS_KEY_ID,
                "aws_secret_access_key": SECRET_ACCESS_KEY,
                "uploads_bucket": resources.uploads_bucket,
                "upload_prefix": resources.upload_prefix,
                "results_bucket": resources.results_bucket,
                "jobs_table": resources.jobs_table,
                "ledger_table": resources.ledger_table,
                "queue_url": resources.queue_url,
                "dead_letter_queue_url": resources.dlq_url,
                "copy_queue_url": resources.copy_queue_url,
                "parameters": parameters,
                "pid": os.getpid(),
            }
        )
    )
    outputs = {
        "UploadsBucketName": resources.uploads_bucket,
        "UploadPrefix": resources.upload_prefix,
        "ResultsBucketName": resources.results_bucket,
        "JobsTableName": resources.jobs_table,
        "LedgerTableName": resources.ledger_table,
        "UploadsQueueUrl": resources.queue_url,
        "DeadLetterQueueUrl": resources.dlq_url,
        "CopyQueueUrl": resources.copy_queue_url,
    }
    body = {
        "Parameters": {key: {"Type": "String"} for key in parameters},
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    client("cloudformation", moto_endpoint, "us-east-1").create_stack(
        StackName=name,
        TemplateBody=json.dumps(body),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    config = state / "aws-config"
    # The profile's region is not the stack's: --region has to reach the session to find it.
    config.write_text(
        "[profile ops]\n"
        f"aws_access_key_id = {ACCESS_KEY_ID}\naws_secret_access_key = {SECRET_ACCESS_KEY}\n"
        "region = eu-west-3\n"
    )
    jobs = JobStore(
        boto3.resource(
            "dynamodb",
            endpoint_url=moto_endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        ).Table(resources.jobs_table),
        retention_days=90,
        clock=time.time,
    )
    stamp = "2026-06-01T00:00:00.000Z"
    for job_id, key in (("a" * 32, DRAFT_KEY), ("b" * 32, EMOJI_KEY)):
        jobs.claim(
            Job(
                job_id,
                Status.REJECTED,
                resources.uploads_bucket,
                key,
                BAD_COLOUR,
                stamp,
                stamp,
                color_source="metadata",
                error_code="INVALID_COLOR",
                error_message=f"background-color {BAD_COLOUR!r} is not a colour [red]:x:",
                completed_at=stamp,
            )
        )
    yield World(resources, template, state, name, config)


@pytest.fixture
def backdrop(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``backdrop ARGS`` in process; AWS calls go to moto, profiles come from the world's file."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", world.resources.endpoint_url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(world.aws_config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(world.aws_config.with_name("no-credentials")))
    # No credentials and no region but the profile's: a dropped --profile or --region fails.
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "BACKDROP_STACK",
    ):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner(mix_stderr=False)

    def run(*args: str) -> Result:
        return runner.invoke(cli, list(args), prog_name="backdrop", catch_exceptions=False)

    yield run


# ---------------------------------------------------------------------- markup
def test_status_shows_keys_colours_and_messages_as_they_are(world: World, backdrop: Any) -> None:
    local = ["--local", "--state-dir", str(world.state_dir)]
    shown = backdrop("status", DRAFT_KEY, *local)
    assert shown.exit_code == 0, shown.stderr
    assert f"/{DRAFT_KEY}:" in shown.stdout  # s3://bucket/uploads/[draft]/x.jpg
    assert f"{BAD_COLOUR} (metadata)" in shown.stdout
    assert f"INVALID_COLOR: background-color '{BAD_COLOUR}' is not a colour [red]:x:" in shown.stdout

    listed = backdrop("status", "--prefix", "uploads/", *local)
    assert listed.exit_code == 0, listed.stderr
    assert DRAFT_KEY in listed.stdout and EMOJI_KEY in listed.stdout and BAD_COLOUR in listed.stdout
    assert "👍" not in listed.stdout

    by_id = backdrop("status", "b" * 32, *local)
    assert by_id.exit_code == 0, by_id.stderr
    assert EMOJI_KEY in by_id.stdout and "👍" not in by_id.stdout

    report = backdrop("report", "--prefix", "uploads/[draft]/", *local)
    assert report.exit_code == 0, report.stderr
    assert "INVALID_COLOR" in report.stdout


# ---------------------------------------------------------------------- global options
SUBCOMMANDS: dict[str, tuple[list[str], int]] = {
    # arguments, and the exit status on this stack (status finds no job for the key: 1)
    "plan": (["uploads/nothing-here/"], 0),
    "backfill": (["uploads/nothing-here/", "--yes", "--no-wait"], 0),
    "status": (["uploads/nothing-here.jpg"], 1),
    "retry": (["--status", "timed_out", "--prefix", "uploads/nothing-here/", "--yes", "--no-wait"], 0),
    "report": (["--prefix", "uploads/nothing-here/"], 0),
    "render": (["uploads/nothing-here/", "--yes"], 0),
}


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_global_options_go_on_either_side_of_the_subcommand(
    world: World, backdrop: Any, subcommand: str
) -> None:
    arguments, expected = SUBCOMMANDS[subcommand]
    local = [["--local"], ["--state-dir", str(world.state_dir)], ["--json"]]
    deployed = [["--stack", world.stack_name], ["--profile", "ops"], ["--region", "us-east-1"], ["--json"]]
    for options, name, before in (
        (local, "local", len(local)),  # all before the subcommand
        (local, "local", 0),  # all after it
        (deployed, world.stack_name, 2),  # --stack and --profile before, --region and --json after
    ):
        first = [word for option in options[:before] for word in option]
        last = [word for option in options[before:] for word in option]
        args = [*first, subcommand, *arguments, *last]
        ran = backdrop(*args)
        assert ran.exit_code == expected, (args, ran.stdout, ran.stderr)
        document = json.loads(ran.stdout)  # --json, wherever it was: one document, nothing else
        assert document["stack"]["name"] == name and document["stack"]["region"] == "us-east-1"


def test_the_same_option_on_both_sides_must_agree(world: World, backdrop: Any) -> None:
    agreed = backdrop(
        *("--json", "--stack", world.stack_name, "--profile", "ops", "--region", "us-east-1"),
        *("report", "--stack", world.stack_name, "--json", "--region", "us-east-1"),
    )
    assert agreed.exit_code == 0, agreed.stderr
    assert json.loads(agreed.stdout)["stack"]["name"] == world.stack_name

    for before, after, flag in (
        (["--stack", "one"], ["--stack", "two"], "--stack"),
        (["--profile", "ops"], ["--profile", "other"], "--profile"),
        (["--region", "us-east-1"], ["--region", "eu-west-1"], "--region"),
        (["--local", "--state-dir", "a"], ["--state-dir", "b"], "--state-dir"),
    ):
        for subcommand, (arguments, _) in SUBCOMMANDS.items():
            ran = backdrop(*before, subcommand, *arguments, *after)
            assert ran.exit_code == 2, (before, subcommand, after, ran.stdout, ran.stderr)
            assert f"Usage: backdrop {subcommand}" in ran.stderr
            assert f"{flag} is given twice with different values" in ran.stderr, ran.stderr
            assert ran.stdout == ""

    # With --json the refusal is also the one JSON document.
    refused = backdrop("--json", "--stack", "one", "status", "k", "--stack", "two")
    assert refused.exit_code == 2
    assert "--stack is given twice" in json.loads(refused.stdout)["error"]["message"]
    # Two stacks named on different sides are refused as they are on one side.
    both = backdrop("--local", "status", "k", "--stack", world.stack_name)
    assert both.exit_code == 2 and "--stack and --local name two stacks" in both.stderr


def test_a_typed_stack_wins_over_backdrop_stack_on_either_side(
    world: World, backdrop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKDROP_STACK", "from-the-environment")
    for args in (
        ["--local", "--state-dir", str(world.state_dir), "report", "--json"],
        ["report", "--json", "--local", "--state-dir", str(world.state_dir)],
    ):
        ran = backdrop(*args)
        assert ran.exit_code == 0, (args, ran.stderr)
        assert json.loads(ran.stdout)["stack"]["name"] == "local"
    for args in (
        ["--stack", world.stack_name, "--profile", "ops", "--region", "us-east-1", "report", "--json"],
        ["report", "--json", "--stack", world.stack_name, "--profile", "ops", "--region", "us-east-1"],
    ):
        ran = backdrop(*args)
        assert ran.exit_code == 0, (args, ran.stderr)
        assert json.loads(ran.stdout)["stack"]["name"] == world.stack_name


# ---------------------------------------------------------------------- usage errors
def _local(world: World) -> list[str]:
    return ["--local", "--state-dir", str(world.state_dir)]


# Refused by the command itself (exit status 2): arguments after the local stack's options, and
# the reason its message gives.
REFUSED_USAGE: list[tuple[list[str], str]] = [
    (["retry"], "which jobs? give JOB_IDs or --status failed|canceled|timed_out"),
    (["retry", "--status", "rejected"], "--status rejected needs --include-rejected"),
    (["retry", "a" * 32, "--status", "failed"], "give JOB_IDs, or select with --status"),
    (["retry", "a" * 32, "--prefix", "uploads/"], "give JOB_IDs, or select with --status"),
    (["status"], "give a KEY or JOB_ID, or --prefix P"),
    (["status", "k", "--prefix", "uploads/"], "give a KEY or JOB_ID, or --prefix P"),
    (["status", "k", "--status", "failed"], "--status filters --prefix listings"),
    (["status", "s3://another-bucket/k"], "not in this stack's uploads bucket"),
    (["plan", "elsewhere/"], "is outside the upload prefix"),
    (["backfill", "uploads/", "--manifest", "{state}/local-stack.json"], "--manifest fixes the objects"),
    (["backfill", "--color", "#FFFFFF", "--manifest", "{state}/local-stack.json"], "--manifest fixes"),
]


@pytest.mark.parametrize(("arguments", "reason"), REFUSED_USAGE)
def test_usage_errors_exit_2_with_the_reason_and_with_json_one_document(
    world: World, backdrop: Any, arguments: list[str], reason: str
) -> None:
    args = [a.format(state=world.state_dir) for a in arguments] + _local(world)
    ran = backdrop(*args)
    assert ran.exit_code == 2, (args, ran.stdout, ran.stderr)
    assert reason in ran.stderr and ran.stderr.startswith("Error: ") and ran.stdout == ""
    as_json = backdrop(*args, "--json")
    assert as_json.exit_code == 2
    document = json.loads(as_json.stdout)
    assert document == {"error": {"message": document["error"]["message"], "exit_code": 2}}
    assert reason in document["error"]["message"]


def test_a_wrongly_named_stack_exits_2(world: World, backdrop: Any, tmp_path: Path) -> None:
    for args, reason in (
        (["plan"], "which stack? give --stack NAME"),
        (["plan", "--local", "--stack", "prod"], "--stack and --local name two stacks"),
        (["report", "--local", "--region", "us-east-1"], "--profile and --region are for --stack"),
        (["report", "--stack", "prod", "--state-dir", str(tmp_path)], "--state-dir is for --local"),
        (["report", "--local", "--state-dir", str(tmp_path)], "local-stack.json not found"),
        (["report", "--stack", "gone", "--profile", "ops", "--region", "us-east-1"], "stack 'gone'"),
    ):
        ran = backdrop(*args)
        assert ran.exit_code == 2 and reason in ran.stderr and ran.stdout == "", (args, ran.stderr)
        document = json.loads(backdrop(*args, "--json").stdout)
        assert document["error"]["exit_code"] == 2 and reason in document["error"]["message"]


@pytest.mark.parametrize(
    "arguments",
    [
        ["retry", "--status", "succeeded"],  # not a status a retry runs again
        ["status", "--prefix", "uploads/", "--status", "finished"],
        ["plan", "--color", "bluish"],
        ["backfill", "--workers", "0"],
        ["backfill", "--max-runs", "-1"],
        ["backfill", "--wait-timeout", "-5"],
        ["report", "--since", "the other day"],
        ["report", "--top", "0"],
        ["status", "--limit", "0", "--prefix", "uploads/"],
        ["backfill", "--manifest", "no-such-manifest.jsonl"],
        ["report", "--no-such-option"],
    ],
)
def test_bad_option_values_exit_2_with_the_commands_usage(
    world: World, backdrop: Any, arguments: list[str]
) -> None:
    ran = backdrop(*arguments, *_local(world))
    assert ran.exit_code == 2, (arguments, ran.stdout, ran.stderr)
    assert f"Usage: backdrop {arguments[0]}" in ran.stderr and ran.stdout == ""


def test_every_retryable_status_and_only_those_is_offered_to_retry(world: World, backdrop: Any) -> None:
    shown = backdrop("retry", "--help")
    assert shown.exit_code == 0
    assert "[failed|canceled|timed_out|rejected]" in " ".join(shown.stdout.split())
    for status in Status:
        args = ["retry", "--status", status.value, "--include-rejected", "--yes", "--no-wait"]
        ran = backdrop(*args, *_local(world))
        assert (ran.exit_code == 2) == (status not in RETRYABLE), (status, ran.stderr)


# ---------------------------------------------------------------------- exit statuses and --json
STACK_DOC = {"name", "region", "uploads_bucket"}
BUDGET_DOC = {"daily_run_budget", "reserved_today", "remaining_today", "held_now", "extra_days_needed"}
PLAN_DOC = {
    "stack",
    "prefix",
    "requested_color",
    "objects",
    "already_done",
    "in_progress",
    "ended",
    "ended_by_status",
    "would_reject",
    "reject_reasons",
    "rejected_objects",
    "to_submit",
    "runs",
    "would_reuse",
    "reuse",
    "price_per_run_usd",
    "estimated_cost_usd",
    "estimated_seconds",
    "submit_concurrency",
    "budget",
    "folder_markers_ignored",
    "vanished_while_reading",
}
NOT_WAITED = {"wait", "outcomes", "runs_created", "spent_usd", "jobs"}
JOB_DOC = {
    "job_id",
    "status",
    "attempt",
    "source",
    "color",
    "color_source",
    "error_code",
    "error_message",
    "run_id",
    "run_status",
    "result",
    "superseded_by",
    "created_at",
    "submitted_at",
    "completed_at",
    "updated_at",
    "time_to_result_s",
    "runflow_duration_ms",
    "runs_billed",
    "history",
    "content_digest",
    "reused_from",
    "renditions",
}


def test_plan_and_backfill_json_documents(world: World, backdrop: Any, tmp_path: Path) -> None:
    manifest = tmp_path / "plan.jsonl"
    planned = backdrop("plan", "uploads/nothing-here/", "--manifest", str(manifest), *_local(world), "--json")
    assert planned.exit_code == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert set(plan) == PLAN_DOC | {"manifest"}
    assert set(plan["stack"]) == STACK_DOC and set(plan["budget"]) == BUDGET_DOC
    assert plan["manifest"] == {"path": str(manifest), "objects": 0} and manifest.read_text() == ""
    assert plan["objects"] == 0 and plan["to_submit"] == 0 and plan["estimated_cost_usd"] == 0
    assert plan["runs"] == 0 and plan["would_reuse"] == 0
    assert plan["reuse"] == {
        "enabled": True,
        "from_earlier_results": 0,
        "duplicates_in_plan": 0,
        "digest_unknown": 0,
    }

    sent = backdrop("backfill", "uploads/nothing-here/", "--yes", *_local(world), "--json")
    assert sent.exit_code == 0, sent.stderr
    backfill = json.loads(sent.stdout)
    assert set(backfill) == PLAN_DOC | NOT_WAITED | {
        "max_runs",
        "deferred_by_max_runs",
        "sent",
        "delivery_unknown",
        "refused_by_sqs",
        "interrupted",
        "not_sent",
    }
    assert backfill["sent"] == {"runs": 0, "reuses": 0, "rejects": 0, "total": 0}
    assert backfill["wait"] is None and backfill["outcomes"] == {} and backfill["jobs"] == []
    assert backfill["interrupted"] is False and backfill["not_sent"] == 0


def test_retry_json_document_and_exit_status_1_when_refused(world: World, backdrop: Any) -> None:
    ran = backdrop("retry", "a" * 32, "c" * 32, "--yes", *_local(world), "--json")
    assert ran.exit_code == 1, ran.stderr
    doc = json.loads(ran.stdout)
    assert set(doc) == NOT_WAITED | {
        "stack",
        "selected",
        "to_retry",
        "price_per_run_usd",
        "estimated_cost_usd",
        "budget",
        "started",
        "refused",
        "left_to_reconciler",
        "interrupted",
    }
    assert set(doc["budget"]) == BUDGET_DOC
    assert doc["selected"] == 2 and doc["to_retry"] == 0 and doc["started"] == []
    refused = {r["job_id"]: r for r in doc["refused"]}
    assert refused["a" * 32]["key"] == DRAFT_KEY
    assert refused["a" * 32]["reason"].startswith("rejected (INVALID_COLOR)")
    assert refused["c" * 32] == {"job_id": "c" * 32, "key": "", "reason": "no such job"}

    # Asked for, a rejected job is still refused: its object is not in the bucket.
    asked = backdrop("retry", "a" * 32, "--include-rejected", "--yes", *_local(world), "--json")
    assert asked.exit_code == 1
    assert json.loads(asked.stdout)["refused"][0]["reason"] == "its source version no longer exists"

    nothing = backdrop("retry", "--status", "failed", "--prefix", "uploads/", "--yes", *_local(world))
    assert nothing.exit_code == 0, nothing.stderr  # nothing selected, nothing refused


def test_status_json_documents_and_exit_status_1_when_nothing_is_found(world: World, backdrop: Any) -> None:
    by_key = json.loads(backdrop("status", DRAFT_KEY, *_local(world), "--json").stdout)
    assert set(by_key) == {"stack", "query", "current_version", "jobs"}
    assert by_key["query"] == {"key": DRAFT_KEY} and by_key["current_version"] is None
    [job] = by_key["jobs"]
    assert set(job) == JOB_DOC and job["job_id"] == "a" * 32 and job["status"] == "rejected"
    assert set(job["source"]) == {"bucket", "key", "version_id", "etag", "size"}

    by_id = json.loads(backdrop("status", "b" * 32, *_local(world), "--json").stdout)
    assert by_id["query"] == {"job_id": "b" * 32} and by_id["jobs"][0]["source"]["key"] == EMOJI_KEY

    listed = backdrop("status", "--prefix", "uploads/", "--status", "rejected", *_local(world), "--json")
    assert listed.exit_code == 0
    doc = json.loads(listed.stdout)
    assert set(doc) == {"stack", "query", "counts", "jobs"}
    assert doc["query"] == {"prefix": "uploads/", "statuses": ["rejected"]}
    assert doc["counts"] == {"rejected": 2} and {j["job_id"] for j in doc["jobs"]} == {"a" * 32, "b" * 32}

    for args in (["status", "c" * 32], ["status", "--prefix", "uploads/", "--status", "failed"]):
        for output in ([], ["--json"]):
            assert backdrop(*args, *_local(world), *output).exit_code == 1, (args, output)


def test_report_json_document(world: World, backdrop: Any, tmp_path: Path) -> None:
    exported = tmp_path / "jobs.csv"
    ran = backdrop("report", "--since", "30d", "--csv", str(exported), *_local(world), "--json")
    assert ran.exit_code == 0, ran.stderr
    doc = json.loads(ran.stdout)
    assert set(doc) == {
        "stack",
        "window",
        "price_per_run_usd",
        "jobs",
        "by_status",
        "failure_reasons",
        "runs_billed",
        "cost_usd",
        "reused",
        "saved_usd",
        "renditions",
        "time_to_result_s",
        "open",
        "spend",
        "queues",
        "csv",
    }
    assert doc["renditions"] == {}  # no job here has renditions
    assert set(doc["window"]) == {"since", "until", "prefix"}
    assert set(doc["open"]) == {"total", "by_status", "last_errors", "oldest", "largest_backlog"}
    assert set(doc["spend"]) == {"daily_run_budget", "days"}
    assert set(doc["spend"]["days"][-1]) == {
        "day",
        "runs_reserved",
        "daily_run_budget",
        "percent_of_budget",
        "cost_usd",
    }
    assert set(doc["queues"]) == {"uploads", "uploads_dead_letter"}
    assert set(doc["queues"]["uploads"]) == {"waiting", "in_flight"}
    assert set(doc["time_to_result_s"]) == {"p50", "p95", "count"}
    assert doc["csv"] == {"path": str(exported), "rows": doc["jobs"]}
