"""The ``backdrop`` command against the whole local stack over real HTTP (moto server, the local
Runflow, the functions as `sam build` built them), run as a user runs it: the installed console
script in a subprocess, ``--local --state-dir``, its ``--json`` document and its exit status.

Objects are put while the bucket has no notification configuration, so the only way into the
pipeline is the command's backfill."""

from __future__ import annotations

import csv
import hashlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backdrop.jobs import Status
from backdrop_local.aws import client
from backdrop_local.runflow import FaultSettings
from backdrop_local.stack import RUNFLOW_API_KEY, LocalStack, StackOptions
from tests.cli.cliworld import (
    BACKDROP,
    Cli,
    jobs_of,
    no_notifications,
    photo,
    put,
    queue_drained,
    recycle_workers,
    resources,
    runs_at_runflow,
)

WAIT = "--wait-timeout=120"


@pytest.fixture(scope="module")
def stack(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    options = StackOptions(
        stack_name="cli-stack",
        state_dir=tmp_path_factory.mktemp("cli-stack"),
        reconcile_every_seconds=5.0,
        # Out of the way: a retry must finish through its own message, not be rescued by the reconciler.
        reconcile_min_age_seconds=600,
        runflow_callback_delays=(0.2, 0.4),
    )
    with LocalStack(options) as running:
        assert running.runflow is not None
        running.runflow.set_faults(FaultSettings(processing="instant"))
        yield running


@pytest.fixture(scope="module")
def cli(stack: LocalStack) -> Cli:
    return Cli(stack.state_dir)


PREFIX = "uploads/backfill/"


@pytest.fixture(scope="module")
def catalogue(stack: LocalStack) -> dict[str, str]:
    """Objects that never produced a notification: four photos (one with two versions, one asking
    for a colour), three the pipeline rejects, a folder marker, and one outside the walked prefix."""
    with no_notifications(stack):
        put(stack, PREFIX + "shoe.jpg", photo(colour=(10, 10, 10)))
        versions = {
            PREFIX + "shoe.jpg": put(stack, PREFIX + "shoe.jpg", photo()),  # the current version
            PREFIX + "bag.png": put(stack, PREFIX + "bag.png", photo("PNG")),
            PREFIX + "hat.jpg": put(stack, PREFIX + "hat.jpg", photo(), **{"background-color": "#1E90FF"}),
            PREFIX + "with space+plus.jpg": put(stack, PREFIX + "with space+plus.jpg", photo()),
            PREFIX + "notes.txt": put(stack, PREFIX + "notes.txt", b"not an image\n"),
            PREFIX + "empty.jpg": put(stack, PREFIX + "empty.jpg", b""),
            PREFIX + "badcolour.jpg": put(
                stack, PREFIX + "badcolour.jpg", photo(), **{"background-color": "blue"}
            ),
        }
        put(stack, PREFIX + "folder/", b"")
        put(stack, "uploads/elsewhere/other.jpg", photo())
    return versions


PHOTOS = ["shoe.jpg", "bag.png", "hat.jpg", "with space+plus.jpg"]


def test_every_subcommand_has_help_with_examples(cli: Cli) -> None:
    top = cli("--help", local=False)
    assert top.code == 0 and "Examples:" in top.stdout
    for command in ("plan", "backfill", "status", "retry", "report"):
        ran = cli(command, "--help", local=False)
        assert ran.code == 0, (command, ran.stderr)
        assert "Examples:" in ran.stdout and "--json" in ran.stdout and "--stack" in ran.stdout, command


def test_bad_usage_exits_2_with_the_reason(cli: Cli, tmp_path: Path, stack: LocalStack) -> None:
    no_stack = cli("plan", local=False)
    assert no_stack.code == 2 and "--stack NAME" in no_stack.stderr
    missing = Cli(tmp_path)("plan", "--json")
    assert missing.code == 2 and "local-stack.json" in missing.stderr
    assert missing.json()["error"]["exit_code"] == 2  # --json: still one document
    both = cli("plan", "--stack", "prod")
    assert both.code == 2
    assert cli("plan", "--color", "bluish").code == 2
    assert cli("plan", "elsewhere/").code == 2  # outside the upload prefix: the pipeline ignores it
    assert cli("retry").code == 2
    assert cli("retry", "--status", "rejected").code == 2  # needs --include-rejected
    assert cli("status").code == 2


def test_plan_counts_rejections_cost_and_manifest(
    cli: Cli, stack: LocalStack, catalogue: dict[str, str], tmp_path: Path
) -> None:
    assert not any(jobs_of(stack, key) for key in catalogue)  # nothing reached the pipeline
    manifest = tmp_path / "plan.jsonl"
    plan = cli.json("plan", PREFIX, "--manifest", str(manifest))
    assert plan["objects"] == 7 and plan["already_done"] == 0
    assert plan["would_reject"] == 3
    assert plan["reject_reasons"] == {"INVALID_COLOR": 1, "EMPTY_OBJECT": 1, "UNSUPPORTED_TYPE": 1}
    assert plan["to_submit"] == 4
    assert plan["estimated_cost_usd"] == pytest.approx(0.48)
    assert plan["folder_markers_ignored"] == 1
    assert plan["manifest"]["objects"] == 7
    lines = manifest.read_text().splitlines()
    assert sorted(line.split('"key": "')[1].split('"')[0] for line in lines) == sorted(catalogue)
    human = cli("plan", PREFIX)
    assert human.code == 0 and "$0.48" in human.stdout and "UNSUPPORTED_TYPE" in human.stdout


def test_backfill_needs_yes_without_a_terminal(
    cli: Cli, stack: LocalStack, catalogue: dict[str, str]
) -> None:
    ran = cli("backfill", PREFIX)
    assert ran.code == 2 and "--yes" in ran.stderr and "$0.48" in ran.stderr
    assert not any(jobs_of(stack, key) for key in catalogue)


def test_backfill_is_capped_resumable_and_never_sends_twice(
    cli: Cli, stack: LocalStack, catalogue: dict[str, str], tmp_path: Path
) -> None:
    manifest = tmp_path / "plan.jsonl"
    cli.json("plan", PREFIX, "--manifest", str(manifest))
    first = cli.json("backfill", PREFIX, "--max-runs", "1", "--yes", WAIT)
    assert first["sent"] == {"runs": 1, "reuses": 0, "rejects": 3, "total": 4}
    assert first["deferred_by_max_runs"] == 3
    assert first["outcomes"] == {"rejected": 3, "succeeded": 1}
    assert first["runs_created"] == 1 and first["spent_usd"] == pytest.approx(0.12)
    # The rest, from the manifest written before: only what has no job yet is sent.
    second = cli.json("backfill", "--manifest", str(manifest), "--yes", WAIT)
    assert second["already_done"] == 1 and second["ended"] == 3
    assert second["sent"] == {"runs": 3, "reuses": 0, "rejects": 0, "total": 3}
    assert second["outcomes"] == {"succeeded": 3}
    third = cli.json("backfill", PREFIX, "--yes", WAIT)
    assert third["to_submit"] == 0 and third["sent"]["total"] == 0 and third["already_done"] == 4
    again = cli("backfill", PREFIX, "--yes")
    assert again.code == 0 and "nothing" in again.stdout

    planned = {line["key"]: line for line in map(_json, manifest.read_text().splitlines())}
    for key, version in catalogue.items():
        [job] = jobs_of(stack, key)  # one job per object version and colour
        assert job.job_id == planned[key]["job_id"]  # plan computed the submit path's own job id
        assert job.source_version_id == version
        name = key.rsplit("/", 1)[1]
        if name in PHOTOS:
            assert job.status is Status.SUCCEEDED, (key, job)
            assert runs_at_runflow(stack, job.job_id) == 1  # never a second run
            assert job.result_keys == [f"results/backfill/{name}/result.png"]
        else:
            assert job.status is Status.REJECTED and job.error_code == planned[key]["error_code"]
    assert jobs_of(stack, PREFIX + "hat.jpg")[0].color == "30,144,255"
    assert jobs_of(stack, PREFIX + "shoe.jpg")[0].color == "255,255,255"
    assert not jobs_of(stack, "uploads/elsewhere/other.jpg")


def _json(line: str) -> dict[str, str]:
    data: dict[str, str] = json.loads(line)
    return data


def test_backfill_with_a_colour_is_a_new_job_per_object(
    cli: Cli, stack: LocalStack, catalogue: dict[str, str]
) -> None:
    plan = cli.json("plan", PREFIX, "--color", "#00FF00")
    # The colour is part of a job's identity; an asked-for colour replaces invalid metadata too.
    assert plan["already_done"] == 0 and plan["to_submit"] == 5 and plan["would_reject"] == 2
    done = cli.json("backfill", PREFIX, "--color", "0,255,0", "--yes", WAIT)
    assert done["outcomes"] == {"rejected": 2, "succeeded": 5}
    jobs = jobs_of(stack, PREFIX + "hat.jpg")
    assert [j.color for j in jobs] == ["0,255,0", "30,144,255"]  # newest first
    assert jobs[0].color_source == "override"
    assert cli.json("backfill", PREFIX, "--color", "#00ff00", "--yes")["sent"]["total"] == 0


def test_status_by_key_job_id_and_prefix(cli: Cli, stack: LocalStack, catalogue: dict[str, str]) -> None:
    key = PREFIX + "hat.jpg"
    by_key = cli.json("status", key)
    assert [j["status"] for j in by_key["jobs"]] == ["succeeded", "succeeded"]
    assert by_key["current_version"]["version_id"] == catalogue[key]
    newest = by_key["jobs"][0]
    assert newest["result"]["urls"] == [
        f"s3://{resources(stack).results_bucket}/results/backfill/hat.jpg/result.png"
    ]
    assert newest["run_id"] and newest["time_to_result_s"] > 0
    by_id = cli.json("status", newest["job_id"])
    assert [j["job_id"] for j in by_id["jobs"]] == [newest["job_id"]]
    human = cli("status", f"s3://{resources(stack).uploads_bucket}/{key}")
    assert human.code == 0 and newest["job_id"] in human.stdout
    assert "results/backfill/hat.jpg/result.png" in human.stdout
    rejected = cli.json("status", "--prefix", PREFIX, "--status", "rejected")
    assert rejected["counts"] == {"rejected": 5}
    assert cli("status", PREFIX + "never-uploaded.jpg").code == 1


def test_ctrl_c_stops_cleanly_and_a_rerun_sends_nothing_twice(cli: Cli, stack: LocalStack) -> None:
    assert stack.runflow is not None
    prefix = "uploads/interrupted/"
    keys = [f"{prefix}p{i:02d}.jpg" for i in range(12)]
    with no_notifications(stack):
        for key in keys:
            put(stack, key, photo())
    # Runs stay dispatching until released, so the command is certainly still waiting at Ctrl-C.
    stack.runflow.set_faults(FaultSettings(processing="instant", dispatch_delay_s=3600))
    try:
        command = [
            str(BACKDROP),
            "backfill",
            "--local",
            "--state-dir",
            str(cli.state_dir),
            prefix,
            "--yes",
            "--json",
        ]
        running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not all(jobs_of(stack, key) for key in keys):  # every message is in the pipeline
            assert running.poll() is None and time.monotonic() < deadline, running.communicate()
            time.sleep(0.2)
        running.send_signal(signal.SIGINT)
        out, err = running.communicate(timeout=60)
    finally:
        stack.runflow.set_faults(FaultSettings(processing="instant"))
    assert running.returncode == 1, err
    doc = json.loads(out)  # still exactly one document
    assert doc["interrupted"] is True and doc["wait"]["interrupted"] is True
    assert doc["sent"]["total"] == 12 and not doc["delivery_unknown"]
    deadline = time.monotonic() + 90
    while cli.json("status", "--prefix", prefix)["counts"] != {"succeeded": 12}:  # the jobs went on
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert cli.json("backfill", prefix, "--yes")["sent"]["total"] == 0
    for key in keys:
        [job] = jobs_of(stack, key)
        assert runs_at_runflow(stack, job.job_id) == 1


def _rotate_api_key(stack: LocalStack, value: str, *, cold: bool) -> None:
    """Store another Runflow API key. A wrong key only shows once the submit function starts cold
    (a warm one keeps the key it cached, which Runflow still accepts); the right key reaches a warm
    function by itself: its first 401 reads the key afresh."""
    queue_drained(stack)
    secrets = client("secretsmanager", stack.moto.endpoint_url, resources(stack).region)
    secrets.put_secret_value(SecretId=resources(stack).api_key_secret, SecretString=value)
    if cold:
        recycle_workers(stack, "SubmitFunction")


def test_retry_after_a_wrong_api_key_makes_one_new_run_each(cli: Cli, stack: LocalStack) -> None:
    prefix = "uploads/retry/"
    names = ["a.jpg", "b.jpg", "superseded.jpg", "deleted.jpg"]
    _rotate_api_key(stack, "rf_live_wrong_key", cold=True)
    with no_notifications(stack):
        versions = {name: put(stack, prefix + name, photo()) for name in names}
    failed = cli("backfill", prefix, "--yes", "--json", WAIT)
    assert failed.code == 1  # jobs ended failed
    doc = failed.json()
    assert doc["outcomes"] == {"failed": 4} and doc["runs_created"] == 0
    assert {f["error_code"] for f in doc["failures"]} == {"UNAUTHORIZED"}

    _rotate_api_key(stack, RUNFLOW_API_KEY, cold=False)
    bucket = resources(stack).uploads_bucket
    with no_notifications(stack):
        put(stack, prefix + "superseded.jpg", photo(colour=(0, 0, 200)))  # a newer version
        stack.s3().delete_object(Bucket=bucket, Key=prefix + "deleted.jpg", VersionId=versions["deleted.jpg"])
    # The newer version goes through an upload's path first (the function is warm with it).
    assert cli.json("backfill", prefix + "superseded.jpg", "--yes", WAIT)["outcomes"] == {"succeeded": 1}

    retried = cli(
        "retry",
        "--status",
        "failed",
        "--error-code",
        "UNAUTHORIZED",
        "--prefix",
        prefix,
        "--yes",
        "--json",
        WAIT,
    )
    assert retried.code == 1, retried.stderr  # two were refused
    doc = retried.json()
    assert doc["to_retry"] == 2 and doc["estimated_cost_usd"] == pytest.approx(0.24)
    refused = {r["key"].rsplit("/", 1)[1]: r["reason"] for r in doc["refused"]}
    assert refused["deleted.jpg"] == "its source version no longer exists"
    assert refused["superseded.jpg"].startswith("superseded: the object's current version is")
    assert doc["outcomes"] == {"succeeded": 2} and doc["runs_created"] == 2
    for name in ("a.jpg", "b.jpg"):
        [job] = jobs_of(stack, prefix + name)
        assert job.status is Status.SUCCEEDED and job.attempt == 2
        assert job.history[0]["attempt"] == 1 and job.history[0]["error_code"] == "UNAUTHORIZED"
        assert runs_at_runflow(stack, f"{job.job_id}-2") == 1  # exactly one new run for the attempt
        assert runs_at_runflow(stack, job.job_id) == 0  # the refused attempt made none
    [stale] = [
        j
        for j in jobs_of(stack, prefix + "superseded.jpg")
        if j.source_version_id == versions["superseded.jpg"]
    ]
    assert stale.status is Status.FAILED and stale.attempt == 1  # untouched

    ids = [j.job_id for name in ("a.jpg", "b.jpg") for j in jobs_of(stack, prefix + name)]
    again = cli.json("retry", *ids, "--yes", expect=1)
    assert {r["reason"] for r in again["refused"]} == {"succeeded: nothing to retry"}
    assert again["to_retry"] == 0 and again["started"] == []


def test_rejected_jobs_are_retried_only_on_request_and_only_if_they_would_pass(
    cli: Cli, stack: LocalStack
) -> None:
    [notes] = jobs_of(stack, PREFIX + "notes.txt")[-1:]  # the first colour's job
    without = cli.json("retry", notes.job_id, "--yes", expect=1)
    assert without["refused"][0]["reason"].startswith("rejected (UNSUPPORTED_TYPE)")
    asked = cli.json("retry", notes.job_id, "--include-rejected", "--yes", expect=1)
    assert asked["refused"][0]["reason"].startswith("still UNSUPPORTED_TYPE under the stack's rules")
    assert jobs_of(stack, PREFIX + "notes.txt")[-1].attempt == 1  # nothing was started


def test_report_counts_reasons_cost_latency_backlog_and_spend(
    cli: Cli, stack: LocalStack, tmp_path: Path
) -> None:
    exported = tmp_path / "jobs.csv"
    report = cli.json("report", "--csv", str(exported))
    jobs = cli.json("status", "--prefix", "uploads/")["jobs"]
    assert report["jobs"] == len(jobs)
    statuses: dict[str, int] = {}
    for job in jobs:
        statuses[job["status"]] = statuses.get(job["status"], 0) + 1
    assert report["by_status"] == dict(sorted(statuses.items()))
    reasons = {(r["status"], r["error_code"]): r["count"] for r in report["failure_reasons"]}
    assert reasons[("rejected", "UNSUPPORTED_TYPE")] == 2 and reasons[("failed", "UNAUTHORIZED")] == 2
    runs = sum(j["runs_billed"] for j in jobs)
    assert report["runs_billed"] == runs and report["cost_usd"] == pytest.approx(0.12 * runs)
    ttr = report["time_to_result_s"]
    assert 0 < ttr["p50"] <= ttr["p95"] and ttr["count"] == statuses["succeeded"]
    assert report["open"]["total"] == 0 and report["queues"]["uploads_dead_letter"]["waiting"] == 0
    today = report["spend"]["days"][-1]
    ledger = stack.dynamodb().get_item(
        TableName=resources(stack).ledger_table,
        Key={"pk": {"S": f"budget#{today['day']}"}},
        ConsistentRead=True,
    )["Item"]
    assert today["runs_reserved"] == int(ledger["reserved"]["N"]) == runs
    assert today["daily_run_budget"] == 500
    with exported.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(jobs) and {r["job_id"] for r in rows} == {j["job_id"] for j in jobs}
    human = cli("report", "--since", "1h")
    assert human.code == 0 and "Failure reasons" in human.stdout and "Spend" in human.stdout


def test_unchanged_photos_are_reused_not_run_again(cli: Cli, stack: LocalStack) -> None:
    """Plan, backfill, status and report of a re-sent catalogue on the real pipeline: the unchanged
    photo (a new version of the same key, and a copy under another key) reuses the first result."""
    prefix = "uploads/resent/"
    bucket = resources(stack).uploads_bucket
    same, other = photo(colour=(200, 40, 40)), photo(colour=(40, 200, 40))

    def upload(key: str, body: bytes) -> None:  # as a client that asks S3 to store a SHA-256 does
        stack.s3().put_object(Bucket=bucket, Key=prefix + key, Body=body, ChecksumAlgorithm="SHA256")

    with no_notifications(stack):
        upload("first.jpg", same)
    first = cli.json("backfill", prefix, "--yes", WAIT)
    assert first["runs"] == 1 and first["runs_created"] == 1
    [original] = jobs_of(stack, prefix + "first.jpg")

    with no_notifications(stack):
        upload("first.jpg", same)  # a new version, the same bytes
        upload("copy.jpg", same)
        upload("other.jpg", other)
    plan = cli.json("plan", prefix)
    assert plan["to_submit"] == 3 and plan["runs"] == 1 and plan["would_reuse"] == 2
    assert plan["reuse"]["from_earlier_results"] == 2 and plan["reuse"]["digest_unknown"] == 0
    assert plan["estimated_cost_usd"] == pytest.approx(0.12)
    black = cli.json("plan", prefix, "--color", "#000000")  # the colour is part of the match
    assert black["runs"] == 2 and black["reuse"]["duplicates_in_plan"] == 1

    done = cli.json("backfill", prefix, "--yes", WAIT)
    assert done["sent"] == {"runs": 1, "reuses": 2, "rejects": 0, "total": 3}
    assert done["outcomes"] == {"succeeded": 3}
    assert done["runs_created"] == 1 and done["spent_usd"] == pytest.approx(0.12)

    [copy] = cli.json("status", prefix + "copy.jpg")["jobs"]
    assert copy["status"] == "succeeded" and copy["reused_from"] == original.job_id
    assert copy["content_digest"] == hashlib.sha256(same).hexdigest()
    assert copy["run_id"] is None and copy["runs_billed"] == 0
    assert copy["result"]["keys"] == ["results/resent/copy.jpg/result.png"]
    assert runs_at_runflow(stack, copy["job_id"]) == 0
    text = cli("status", copy["job_id"])
    assert text.code == 0 and f"reused the result of job {original.job_id}" in text.stdout

    report = cli.json("report", "--prefix", prefix)
    assert report["jobs"] == 4 and report["runs_billed"] == 2
    assert report["reused"] == 2 and report["saved_usd"] == pytest.approx(0.24)
    assert cli.json("plan", prefix)["already_done"] == 3
