"""What the command says of result reuse, in process with click's runner against a stack
provisioned in moto (over HTTP): the jobs table and the ledger hold jobs and content records as
the pipeline writes them (a ``content_digest`` per job, ``reused_from`` on a job that reused a
result, a content record naming the latest success of each content and colour), the uploads bucket
objects with and without S3's stored SHA-256 checksum, and the results bucket the results.

``plan`` counts what would reuse (an earlier job's result, or another object of the same plan)
at $0 and estimates only the runs; ``backfill`` sends by the same numbers; ``status`` shows a
job's digest and the job it reused; ``report`` counts reuses and the dollars they saved."""

from __future__ import annotations

import hashlib
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
from backdrop.ledger import ContentLedger
from backdrop_cli.main import cli
from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Resources, client, provision
from backdrop_local.template import Template
from tests.cli.cliworld import photo

ROOT = Path(__file__).resolve().parents[2]
STAMP = "2026-06-01T00:00:00.000Z"
WHITE = "255,255,255"  # the template's default colour, as a job records it
SHOE = photo(colour=(150, 20, 25))
BAG = photo(colour=(20, 150, 25))
HAT = photo(colour=(20, 25, 150))


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class World:
    resources: Resources
    parameters: dict[str, str]
    state_dir: Path
    endpoint: str

    def s3(self) -> Any:
        return client("s3", self.endpoint, self.resources.region)

    def jobs(self) -> Any:
        return boto3.resource(
            "dynamodb",
            endpoint_url=self.endpoint,
            region_name=self.resources.region,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        ).Table(self.resources.jobs_table)

    def contents(self) -> ContentLedger:
        table = boto3.resource(
            "dynamodb",
            endpoint_url=self.endpoint,
            region_name=self.resources.region,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        ).Table(self.resources.ledger_table)
        return ContentLedger(table, clock=time.time)

    def put(self, key: str, body: bytes, *, checksum: bool = True) -> str:
        """An upload; with ``checksum`` S3 stores its full-object SHA-256 (as clients may ask)."""
        extra = {"ChecksumAlgorithm": "SHA256"} if checksum else {}
        answer = self.s3().put_object(Bucket=self.resources.uploads_bucket, Key=key, Body=body, **extra)
        return str(answer["VersionId"])

    def succeeded(
        self,
        job_id: str,
        key: str,
        body: bytes,
        *,
        color: str = WHITE,
        version_id: str = "v-earlier",
        with_result: bool = True,
        reused_from: str | None = None,
    ) -> str:
        """A job as the pipeline leaves one that succeeded: its item, its result object (unless not
        ``with_result``: deleted since) and the ledger's content record naming it. Returns the
        result key."""
        name = key.removeprefix(self.resources.upload_prefix)
        result_key = f"results/{name}/result.png"
        if with_result:
            self.s3().put_object(Bucket=self.resources.results_bucket, Key=result_key, Body=b"png")
        job = Job(
            job_id,
            Status.SUCCEEDED,
            self.resources.uploads_bucket,
            key,
            color,
            STAMP,
            STAMP,
            source_version_id=version_id,
            color_source="default",
            run_id=None if reused_from else f"run-{job_id[:8]}",
            result_bucket=self.resources.results_bucket,
            result_keys=[result_key],
            completed_at=STAMP,
            content_digest=sha256(body),
            reused_from=reused_from,
        )
        self.jobs().put_item(Item=job.to_item())
        self.contents().record_done(sha256(body), color, job_id, [result_key])
        return result_key


def _state_dir(path: Path, endpoint: str, resources: Resources, parameters: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "local-stack.json").write_text(
        json.dumps(
            {
                "region": resources.region,
                "aws_endpoint_url": endpoint,
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
    return path


@pytest.fixture(scope="module")
def world(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> World:
    name = f"reuse{int(time.time() * 1000) % 10**8}"
    template = Template(ROOT / "template.yaml", stack_name=name, region="us-east-1")
    resources = provision(template, moto_endpoint, api_key="rf_live_test", callback_secret="whsec_test")
    parameters = dict(template.parameters)
    assert parameters.get("ReuseResults", "true") == "true"  # the template's default: reuse
    state = _state_dir(tmp_path_factory.mktemp("reuse"), moto_endpoint, resources, parameters)
    return World(resources, parameters, state, moto_endpoint)


@pytest.fixture
def backdrop(world: World) -> Iterator[Any]:
    """``backdrop ARGS --local --state-dir <the world's> --json``, in process; the JSON document."""
    runner = CliRunner(mix_stderr=False)

    def run(*args: str, state_dir: Path | None = None, as_json: bool = True) -> Any:
        given = [*args, "--local", "--state-dir", str(state_dir or world.state_dir)]
        if as_json:
            given.append("--json")
        ran: Result = runner.invoke(cli, given, prog_name="backdrop", catch_exceptions=False)
        assert ran.exit_code == 0, (args, ran.stdout, ran.stderr)
        return json.loads(ran.stdout) if as_json else ran.stdout

    yield run


def test_plan_counts_reuse_of_earlier_results_and_estimates_only_runs(world: World, backdrop: Any) -> None:
    prefix = "uploads/nightly/"
    world.succeeded("e1" * 16, "uploads/catalogue/shoe.jpg", SHOE)
    world.put(prefix + "shoe-again.jpg", SHOE)  # unchanged photo, new key: reuses
    world.put(prefix + "shoe-copy.jpg", SHOE)  # the same once more: reuses too
    world.put(prefix + "bag.jpg", BAG)  # new pixels: a run

    plan = backdrop("plan", prefix)
    assert plan["to_submit"] == 3 and plan["runs"] == 1 and plan["would_reuse"] == 2
    assert plan["reuse"] == {
        "enabled": True,
        "from_earlier_results": 2,
        "duplicates_in_plan": 0,
        "digest_unknown": 0,
    }
    assert plan["estimated_cost_usd"] == pytest.approx(0.12)  # the run only: reuses are $0
    text = backdrop("plan", prefix, as_json=False)
    assert "$0.12" in text and "would reuse" in text and "2  at $0" in text


def test_identical_objects_of_one_plan_make_one_run(world: World, backdrop: Any) -> None:
    prefix = "uploads/twice/"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        world.put(prefix + name, HAT)
    plan = backdrop("plan", prefix)
    assert plan["runs"] == 1 and plan["would_reuse"] == 2
    assert plan["reuse"]["duplicates_in_plan"] == 2 and plan["reuse"]["from_earlier_results"] == 0
    assert plan["estimated_cost_usd"] == pytest.approx(0.12)


def test_a_deleted_result_or_another_colour_is_a_new_run(world: World, backdrop: Any) -> None:
    prefix = "uploads/gone/"
    body = photo(colour=(1, 2, 3))
    result_key = world.succeeded("e2" * 16, "uploads/catalogue/gone.jpg", body)
    world.put(prefix + "one.jpg", body)
    world.put(prefix + "two.jpg", body)
    assert backdrop("plan", prefix)["reuse"]["from_earlier_results"] == 2

    # The colour is part of the match: the earlier job was white.
    black = backdrop("plan", prefix, "--color", "#000000")
    assert black["runs"] == 1 and black["reuse"]["from_earlier_results"] == 0
    assert black["reuse"]["duplicates_in_plan"] == 1

    world.s3().delete_object(Bucket=world.resources.results_bucket, Key=result_key)
    gone = backdrop("plan", prefix)  # nothing left to copy: one run, and the other object reuses it
    assert gone["runs"] == 1 and gone["reuse"]["from_earlier_results"] == 0
    assert gone["reuse"]["duplicates_in_plan"] == 1 and gone["estimated_cost_usd"] == pytest.approx(0.12)


def test_unknown_digests_count_as_runs_unless_read(world: World, backdrop: Any) -> None:
    prefix = "uploads/unknown/"
    body = photo(colour=(9, 9, 9))
    world.succeeded("e3" * 16, "uploads/catalogue/nine.jpg", body)
    world.put(prefix + "x.jpg", body, checksum=False)  # S3 stores no SHA-256 for these
    world.put(prefix + "y.jpg", body, checksum=False)

    plan = backdrop("plan", prefix)
    assert plan["runs"] == 2 and plan["would_reuse"] == 0 and plan["reuse"]["digest_unknown"] == 2
    assert plan["estimated_cost_usd"] == pytest.approx(0.24)  # never an estimate that is too low
    assert "digest unknown" in backdrop("plan", prefix, as_json=False)

    read = backdrop("plan", prefix, "--digest")
    assert read["runs"] == 0 and read["reuse"]["from_earlier_results"] == 2
    assert read["reuse"]["digest_unknown"] == 0 and read["estimated_cost_usd"] == 0


def test_a_job_of_the_same_version_tells_its_digest(world: World, backdrop: Any) -> None:
    """No checksum in S3, but a job of this very version (another colour) recorded the digest."""
    key = "uploads/versioned/lamp.jpg"
    body = photo(colour=(7, 70, 170))
    version = world.put(key, body, checksum=False)
    world.succeeded("e4" * 16, key, body, color="0,0,0", version_id=version)
    world.succeeded("e5" * 16, "uploads/catalogue/lamp.jpg", body)  # white, elsewhere

    plan = backdrop("plan", "uploads/versioned/")  # the object's own colour: white
    assert plan["to_submit"] == 1 and plan["reuse"]["digest_unknown"] == 0
    assert plan["reuse"]["from_earlier_results"] == 1 and plan["runs"] == 0


def test_with_reuse_turned_off_everything_is_a_run(world: World, backdrop: Any, tmp_path: Path) -> None:
    prefix = "uploads/noreuse/"
    body = photo(colour=(200, 200, 0))
    world.succeeded("e6" * 16, "uploads/catalogue/yellow.jpg", body)
    world.put(prefix + "p.jpg", body)
    world.put(prefix + "q.jpg", body)
    assert backdrop("plan", prefix)["runs"] == 0
    off = _state_dir(
        tmp_path / "off", world.endpoint, world.resources, {**world.parameters, "ReuseResults": "false"}
    )
    plan = backdrop("plan", prefix, state_dir=off)
    assert plan["runs"] == 2 and plan["would_reuse"] == 0
    assert plan["reuse"] == {
        "enabled": False,
        "from_earlier_results": 0,
        "duplicates_in_plan": 0,
        "digest_unknown": 0,
    }
    assert plan["estimated_cost_usd"] == pytest.approx(0.24)
    assert "ReuseResults is off" in backdrop("plan", prefix, state_dir=off, as_json=False)


def test_backfill_sends_by_the_plans_numbers_and_max_runs_counts_runs_only(
    world: World, backdrop: Any
) -> None:
    prefix = "uploads/capped/"
    known = photo(colour=(30, 30, 30))
    fresh = photo(colour=(40, 40, 40))
    world.succeeded("e7" * 16, "uploads/catalogue/grey.jpg", known)
    world.put(prefix + "a-known.jpg", known)  # reuses an earlier result
    world.put(prefix + "b-fresh.jpg", fresh)  # a run
    world.put(prefix + "c-fresh.jpg", fresh)  # reuses b's run: goes with it
    world.put(prefix + "d-other.jpg", photo(colour=(50, 50, 50)))  # a run

    capped = backdrop("backfill", prefix, "--max-runs", "0", "--yes", "--no-wait")
    assert capped["runs"] == 2 and capped["would_reuse"] == 2
    assert capped["estimated_cost_usd"] == pytest.approx(0.24)
    # No run allowed: only the reuse of an earlier result goes (at $0); c waits for b's run.
    assert capped["sent"] == {"runs": 0, "reuses": 1, "rejects": 0, "total": 1}
    assert capped["deferred_by_max_runs"] == 3

    # Nothing processes the messages here, so a is sent again (it still has no job).
    one = backdrop("backfill", prefix, "--max-runs", "1", "--yes", "--no-wait")
    assert one["sent"] == {"runs": 1, "reuses": 2, "rejects": 0, "total": 3}  # a, then b and c
    assert one["deferred_by_max_runs"] == 1  # d


def test_status_and_report_show_reuse(world: World, backdrop: Any) -> None:
    body = photo(colour=(60, 0, 60))
    world.succeeded("f1" * 16, "uploads/shown/first.jpg", body)
    world.succeeded("f2" * 16, "uploads/shown/again.jpg", body, reused_from="f1" * 16)

    [job] = backdrop("status", "f2" * 16)["jobs"]
    assert job["reused_from"] == "f1" * 16 and job["content_digest"] == sha256(body)
    assert job["run_id"] is None and job["runs_billed"] == 0
    [first] = backdrop("status", "uploads/shown/first.jpg")["jobs"]
    assert first["reused_from"] is None and first["content_digest"] == sha256(body)
    text = backdrop("status", "f2" * 16, as_json=False)
    assert "f1" * 16 in text and sha256(body) in text

    report = backdrop("report", "--prefix", "uploads/shown/")
    assert report["jobs"] == 2 and report["runs_billed"] == 1
    assert report["reused"] == 1 and report["saved_usd"] == pytest.approx(0.12)
    shown = backdrop("report", "--prefix", "uploads/shown/", as_json=False)
    assert "results reused" in shown and "$0.12 saved" in shown
