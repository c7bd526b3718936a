"""The command's surface, in process with click's runner against a stack provisioned in moto: text
uploaders control is shown as it is (never read as markup), and the global options work on
either side of the subcommand, for the local stack (local-stack.json) and a deployed one
(CloudFormation outputs, an AWS profile)."""

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

from backdrop.jobs import Job, Status
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
                "parameters": dict(template.parameters),
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
    parameters = dict(template.parameters)
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
