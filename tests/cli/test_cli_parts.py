"""The operator command's parts on their own: its rules are the submit path's, its messages parse as
the submit function parses S3's, its sender never sends a message twice, and what it reads from a
stack (CloudFormation, local-stack.json, the jobs table) on a moto server."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from botocore.exceptions import ClientError, ReadTimeoutError

from backdrop.colours import Colour, parse_colour
from backdrop.config import load_settings
from backdrop.jobs import Job, Status
from backdrop.jobstore import JobStore
from backdrop.services import Services
from backdrop.submission import colour_of, job_id_of, rejection_of
from backdrop.uploads import SourceObject, UploadRef, decode_event_key
from backdrop_cli.backfill import BudgetOutlook
from backdrop_cli.contexts import (
    BackfillContext,
    PlanContext,
    RenderContext,
    ReportContext,
    RetryContext,
    ReviewContext,
    StatusContext,
)
from backdrop_cli.errors import BadUsage
from backdrop_cli.inventory import Entry, Verdict, effective_prefix
from backdrop_cli.jobtable import JobFilter, get_many, runs_billed, scan
from backdrop_cli.main import GLOBAL_OPTIONS, cli
from backdrop_cli.report import percentile, summarise
from backdrop_cli.retry import _store_refusal
from backdrop_cli.rules import PARAMETER_ENV, Rules
from backdrop_cli.sending import Sender, StopFlag, object_created
from backdrop_cli.stack import deployed_stack, local_stack
from backdrop_cli.times import duration, parse_since
from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Resources, client
from backdrop_local.template import Template
from tests.cli.cliworld import cli_stack_for, utc_day_with_room

ROOT = Path(__file__).resolve().parents[2]
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 28


def parameters(**overrides: str) -> dict[str, str]:
    template = Template(ROOT / "template.yaml", stack_name="p", region="us-east-1", parameters=overrides)
    return dict(template.parameters)


def function_settings(params: dict[str, str]) -> Services:
    """The submit function's own services, from the environment the template gives it."""
    template = Template(ROOT / "template.yaml", stack_name="p", region="us-east-1", parameters=params)
    for queue in template.resources_of_type("AWS::SQS::Queue"):  # a queue's Ref is its URL once created
        template.override_ref(queue, f"https://sqs.us-east-1.amazonaws.com/123456789012/{queue}")
    return Services(load_settings(template.function("SubmitFunction").environment))


def source(
    key: str, head: bytes = JPEG, size: int = 1000, version: str | None = "v1", **meta: str
) -> SourceObject:
    return SourceObject(UploadRef("bucket", key, version, '"etag"', size), metadata=meta, head=head)


# ---------------------------------------------------------------------- rules
@pytest.mark.parametrize(
    ("overrides", "obj", "override"),
    [
        ({}, source("uploads/a.jpg"), None),
        ({}, source("uploads/a.jpg", **{"background-color": "#1E90FF"}), None),
        ({}, source("uploads/a.jpg", **{"background-color": "blue"}), None),
        ({}, source("uploads/a.jpg", **{"background-color": "blue"}), parse_colour("1,2,3")),
        (
            {"ColorRules": '{"uploads/amazon/": "#FFFFFF", "uploads/amazon/x/": "1,2,3"}'},
            source("uploads/amazon/x/b.jpg"),
            None,
        ),
        ({"DefaultBackgroundColor": "#F1F1F1"}, source("uploads/c.png", version=None), None),
        ({"MaxInputBytes": "500"}, source("uploads/big.jpg", size=501), None),
        ({}, source("uploads/empty.jpg", head=b"", size=0), None),
        ({}, source("uploads/text.jpg", head=b"hello"), None),
        ({}, source("uploads/../escape.jpg"), None),
    ],
)
def test_rules_are_the_submit_paths(
    overrides: dict[str, str], obj: SourceObject, override: Colour | None
) -> None:
    params = parameters(**overrides)
    rules = Rules.from_parameters(params)
    services = function_settings(params)
    choice = rules.colour(obj, override)
    assert choice == colour_of(obj, services, override)
    if override is None:
        assert rules.job_id(obj, choice) == job_id_of(obj, services)
    expected = (
        ("INVALID_COLOR", choice.problem)
        if choice.colour is None
        else rejection_of(obj, services.settings.max_input_bytes)
    )
    assert rules.rejection(obj, choice) == expected


def test_every_parameter_the_rules_read_reaches_the_functions_as_the_same_variable() -> None:
    template = Template(ROOT / "template.yaml", stack_name="p", region="us-east-1")
    globals_env = template.doc["Globals"]["Function"]["Environment"]["Variables"]
    for parameter, variable in PARAMETER_ENV.items():
        assert globals_env[variable] == {"Ref": parameter}, parameter


def test_rules_refuse_a_stack_whose_parameters_the_functions_would_refuse() -> None:
    with pytest.raises(BadUsage):
        Rules.from_parameters(parameters(ColorRules='{"elsewhere/": "#FFFFFF"}'))
    assert Rules.from_parameters(parameters(PricePerRunUsd="0.125")).cost(8) == pytest.approx(1)


def test_prefix_is_kept_under_the_upload_prefix() -> None:
    assert effective_prefix(None, "uploads/") == "uploads/"
    assert effective_prefix("up", "uploads/") == "uploads/"
    assert effective_prefix("/uploads/shoes/", "uploads/") == "uploads/shoes/"
    with pytest.raises(BadUsage):
        effective_prefix("results/", "uploads/")


# ---------------------------------------------------------------------- messages
@pytest.mark.parametrize("key", ["uploads/a b+c%d.jpg", "uploads/ünïcødé 写真.jpg", "uploads/x/y/z.png"])
def test_backfill_message_parses_as_the_submit_function_parses_s3s(key: str) -> None:
    entry = Entry("bucket", key, "v-1", "abc", 12, "job", "1,2,3", "override", "1,2,3")
    body = object_created(entry, "eu-west-1")
    record = SQSRecord({"body": body, "messageId": "m", "receiptHandle": "r", "eventSource": "aws:sqs"})
    [s3_record] = record.decoded_nested_s3_event.records
    assert s3_record.event_name == "ObjectCreated:Put"
    obj = s3_record.s3.get_object
    assert decode_event_key(obj.key) == key
    assert (obj.version_id, obj.etag, obj.get("size")) == ("v-1", "abc", 12)
    assert json.loads(body)["Records"][0]["backdrop"] == {"color": "1,2,3"}
    plain = json.loads(object_created(Entry("bucket", key, None, None, 0, "job", "x", "default", None), "r"))
    assert "backdrop" not in plain["Records"][0] and "versionId" not in plain["Records"][0]["s3"]["object"]


def test_manifest_lines_round_trip() -> None:
    entry = Entry("b", "uploads/k.jpg", "v", "e", 3, "j", "1,2,3", "metadata", None, "TOO_LARGE", "too big")
    assert Entry.from_line(entry.line(Verdict.REJECT)) == (entry, Verdict.REJECT)
    with pytest.raises(ValueError, match="expect"):
        Entry.from_line(entry.line(Verdict.DONE))


class FakeSqs:
    """Answers ``send_message_batch`` from a script: an answer dict, or an exception to raise."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls: list[list[str]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        self.calls.append([e["MessageBody"] for e in Entries])
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, BaseException):
            raise step
        if step == "ok":
            return {"Successful": [{"Id": e["Id"]} for e in Entries]}
        return dict(step(Entries))


def sender(sqs: FakeSqs, stop: StopFlag | None = None) -> Sender:
    return Sender(sqs, "url", stop=stop or StopFlag(), sleep=lambda _s: None)  # type: ignore[arg-type]


def messages(n: int) -> list[tuple[str, str]]:
    return [(f"id{i}", f"body{i}") for i in range(n)]


def test_sender_resends_only_what_sqs_did_not_take() -> None:
    def half(entries: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "Successful": [{"Id": e["Id"]} for e in entries[:6]],
            "Failed": [{"Id": entries[6]["Id"], "SenderFault": True, "Code": "InvalidMessageContents"}]
            + [{"Id": e["Id"], "SenderFault": False, "Code": "InternalError"} for e in entries[7:]],
        }

    sqs = FakeSqs(half, ClientError({"Error": {"Code": "ThrottlingException"}}, "SendMessageBatch"), "ok")
    report = sender(sqs).send(messages(12))
    assert sqs.calls[1] == sqs.calls[2] == ["body7", "body8", "body9"]  # throttled: nothing was taken
    assert sqs.calls[3] == ["body10", "body11"]
    assert sorted(report.sent) == sorted(f"id{i}" for i in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11))
    assert list(report.refused) == ["id6"] and not report.unknown


def test_sender_never_resends_a_batch_whose_answer_was_lost() -> None:
    sqs = FakeSqs(ReadTimeoutError(endpoint_url="url"))
    report = sender(sqs).send(messages(3))
    assert len(sqs.calls) == 1 and report.unknown == ["id0", "id1", "id2"] and not report.sent
    with pytest.raises(ValueError, match="already sent"):
        sender_again = Sender(sqs, "url", stop=StopFlag())  # type: ignore[arg-type]
        sender_again.send(messages(1))
        sender_again.send(messages(1))


def test_sender_stops_between_batches() -> None:
    stop = StopFlag()
    sqs = FakeSqs()
    report = sender(sqs, stop).send(messages(25), on_batch=lambda _batch: stop.event.set())
    assert len(sqs.calls) == 1 and len(report.sent) == 10 and report.stopped


def test_a_refused_request_is_not_retried() -> None:
    sqs = FakeSqs(ClientError({"Error": {"Code": "AccessDenied"}}, "SendMessageBatch"))
    report = sender(sqs).send(messages(2))
    assert len(sqs.calls) == 1 and set(report.refused) == {"id0", "id1"}


# ---------------------------------------------------------------------- small rules
def test_times_and_percentiles() -> None:
    now = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
    assert parse_since("24h", now) == datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert parse_since("2025-06-01", now) == datetime(2025, 6, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_since("yesterday", now)
    assert [duration(s) for s in (0.25, 12.34, 245, 3 * 3600 + 120)] == [
        "250 ms",
        "12.3 s",
        "4 min 05 s",
        "3 h 02 min",
    ]
    assert percentile([5, 1, 4, 2, 3], 50) == 3 and percentile(list(range(1, 101)), 95) == 95
    assert percentile([], 50) is None


def test_a_test_needing_one_budget_day_waits_for_midnight_rather_than_straddle_it() -> None:
    noon = datetime(2026, 12, 6, 12, tzinfo=UTC).timestamp()
    now = [noon]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    assert utc_day_with_room(300, clock=lambda: now[0], sleep=sleep) == "2026-12-06" and slept == []
    now[0] = noon + 12 * 3600 - 120  # 23:58
    assert utc_day_with_room(300, clock=lambda: now[0], sleep=sleep) == "2026-12-07" and slept == [120]


def test_budget_outlook_counts_held_jobs_first() -> None:
    assert BudgetOutlook(daily=0, reserved_today=9, held_now=0).days_needed(1000) == 0
    assert BudgetOutlook(daily=10, reserved_today=4, held_now=0).days_needed(6) == 0
    assert BudgetOutlook(daily=10, reserved_today=4, held_now=3).days_needed(6) == 1
    assert BudgetOutlook(daily=10, reserved_today=10, held_now=0).days_needed(25) == 3


def job(job_id: str, status: Status, **fields: Any) -> Job:
    base: dict[str, Any] = {
        "created_at": "2025-06-01T00:00:00.000Z",
        "updated_at": "2025-06-01T00:00:00.000Z",
    }
    return Job(
        job_id, status, "bucket", fields.pop("key", f"uploads/{job_id}.jpg"), "1,2,3", **{**base, **fields}
    )


def test_summary_ranks_reasons_counts_runs_and_finds_the_backlog() -> None:
    jobs = [
        job("a", Status.SUCCEEDED, run_id="r1", completed_at="2025-06-01T00:00:10.000Z"),
        job(
            "b",
            Status.SUCCEEDED,
            run_id="r2",
            completed_at="2025-06-01T00:00:30.000Z",
            attempt=2,
            history=[{"attempt": 1, "status": "failed", "run_id": "r0"}],
        ),
        job("c", Status.FAILED, error_code="UNAUTHORIZED", error_message="bad key"),
        job("d", Status.FAILED, error_code="UNAUTHORIZED"),
        job("e", Status.REJECTED, error_code="TOO_LARGE"),
        job("f", Status.HELD, key="uploads/spring/f.jpg", error_code="BUDGET_EXHAUSTED"),
        job(
            "g",
            Status.SUBMITTED,
            key="uploads/spring/g.jpg",
            run_id="r3",
            created_at="2025-05-31T00:00:00.000Z",
        ),
        job("h", Status.RECEIVED, key="uploads/fall/h.jpg"),
    ]
    summary = summarise(jobs, 0.5, top=1, now=datetime(2025, 6, 1, tzinfo=UTC))
    assert summary["by_status"]["failed"] == 2 and summary["jobs"] == 8
    assert summary["failure_reasons"][0] == {
        "status": "failed",
        "error_code": "UNAUTHORIZED",
        "count": 2,
        "example": "bad key",
    }
    assert summary["runs_billed"] == 4 and summary["cost_usd"] == 2.0  # r0, r1, r2, r3
    assert summary["time_to_result_s"] == {"p50": 10.0, "p95": 30.0, "count": 2}
    assert summary["open"]["total"] == 3 and summary["open"]["oldest"]["job_id"] == "g"
    assert summary["open"]["largest_backlog"] == [
        {
            "prefix": "uploads/spring/",
            "open": 2,
            "by_status": {"held": 1, "submitted": 1},
            "oldest_created_at": "2025-05-31T00:00:00.000Z",
        }
    ]
    assert runs_billed(jobs[1]) == 2


# ---------------------------------------------------------------------- stacks and tables
def test_local_stack_file(tmp_path: Path) -> None:
    with pytest.raises(BadUsage, match="not found"):
        local_stack(tmp_path)
    info = {
        "region": "us-east-1",
        "aws_endpoint_url": "http://127.0.0.1:1",
        "aws_access_key_id": "a",
        "aws_secret_access_key": "b",
        "uploads_bucket": "up",
        "upload_prefix": "uploads/",
        "results_bucket": "res",
        "jobs_table": "jobs",
        "ledger_table": "ledger",
        "queue_url": "q",
        "dead_letter_queue_url": "dlq",
        "copy_queue_url": "cq",
        "parameters": {"DailyRunBudget": "7"},
        "pid": os.getpid(),
    }
    (tmp_path / "local-stack.json").write_text(json.dumps(info))
    stack = local_stack(tmp_path)
    assert (stack.uploads_bucket, stack.uploads_queue_url, stack.parameters["DailyRunBudget"]) == (
        "up",
        "q",
        "7",
    )
    (tmp_path / "local-stack.json").write_text(json.dumps({**info, "pid": 2**22 + 12345}))
    with pytest.raises(BadUsage, match="no longer running"):
        local_stack(tmp_path)


def test_deployed_stack_from_cloudformation(aws_env: str) -> None:
    cloudformation = client("cloudformation", aws_env, "us-east-1")
    outputs = {
        "UploadsBucketName": "up",
        "UploadPrefix": "uploads/",
        "ResultsBucketName": "res",
        "JobsTableName": "jobs",
        "LedgerTableName": "ledger",
        "UploadsQueueUrl": "https://sqs/q",
        "DeadLetterQueueUrl": "https://sqs/dlq",
        "CopyQueueUrl": "https://sqs/cq",
    }
    body = {
        "Parameters": {
            "DailyRunBudget": {"Type": "Number", "Default": "500"},
            "PricePerRunUsd": {"Type": "String"},
        },
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {name: {"Value": value} for name, value in outputs.items()},
    }
    name = f"cli-{int(time.time() * 1000)}"
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=json.dumps(body),
        Parameters=[{"ParameterKey": "PricePerRunUsd", "ParameterValue": "0.2"}],
    )
    stack = deployed_stack(name, profile=None, region="us-east-1")
    assert stack.label == name and stack.uploads_bucket == "up" and stack.copy_queue_url == "https://sqs/cq"
    assert stack.parameters == {"DailyRunBudget": "500", "PricePerRunUsd": "0.2"}
    with pytest.raises(BadUsage, match="does not exist"):
        deployed_stack("no-such-stack", profile=None, region="us-east-1")


def test_job_lookups_and_the_stores_refusals(resources: Resources) -> None:
    stack = cli_stack_for(resources)
    table = boto3.resource(
        "dynamodb",
        endpoint_url=resources.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    ).Table(resources.jobs_table)
    store = JobStore(table, retention_days=90, clock=time.time)
    ids = [f"{i:032x}" for i in range(130)]  # more than one BatchGetItem
    for i, job_id in enumerate(ids):
        store.claim(job(job_id, Status.FAILED, key=f"uploads/{i:03d}.jpg", error_code="RUN_FAILED"))
    found = get_many(stack, [*ids, "f" * 32])
    assert set(found) == set(ids)
    assert len(list(scan(stack, JobFilter(prefix="uploads/0", statuses=frozenset({Status.FAILED}))))) == 100

    first = found[ids[0]]
    moved = store.begin_retry(first)
    assert moved.moved
    again = store.begin_retry(first)  # a second operator with the same view of the job
    assert not again.moved and _store_refusal(first, again.job).startswith("already retried meanwhile")
    pending = found[ids[1]]
    table.update_item(
        Key={"job_id": pending.job_id},
        UpdateExpression="SET event_shard = :p",
        ExpressionAttributeValues={":p": "pending"},
    )
    refused = store.begin_retry(pending)
    assert not refused.moved
    assert _store_refusal(pending, refused.job).startswith("its previous completion event is still pending")


# ---------------------------------------------------------------------- shape
def test_each_command_has_a_context_with_a_field_per_option() -> None:
    contexts: dict[str, type] = {
        "plan": PlanContext,
        "backfill": BackfillContext,
        "status": StatusContext,
        "retry": RetryContext,
        "report": ReportContext,
        "render": RenderContext,
        "review": ReviewContext,
    }
    assert set(cli.commands) == set(contexts)
    global_names = {option.name for option in GLOBAL_OPTIONS}
    for name, command in cli.commands.items():
        options = {param.name for param in command.params} - global_names
        fields = {field.name for field in dataclasses.fields(contexts[name])}
        assert fields == options | {"app"}, name


def _is_status(node: ast.expr) -> bool:
    """``Status.X`` or ``Status.X.value``."""
    if isinstance(node, ast.Attribute) and node.attr == "value":
        node = node.value
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Status"


def test_the_command_takes_its_status_groups_from_the_core() -> None:
    """No set, list or tuple of two statuses or more in the command: a group is the core's
    (``backdrop.jobs``), so a status added there is counted, offered and retried here too."""
    spelled = [
        f"{path.name}:{node.lineno}"
        for path in sorted((ROOT / "cli" / "backdrop_cli").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Set | ast.List | ast.Tuple) and sum(map(_is_status, node.elts)) >= 2
    ]
    assert spelled == []
