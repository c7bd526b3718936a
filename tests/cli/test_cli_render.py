"""``backdrop render``, and the renditions ``status`` and ``report`` show, in process with click's
runner against a stack provisioned in moto (over HTTP). The jobs table holds succeeded jobs as the
pipeline leaves them, with a ``renditions`` map where a scene needs one; the stack's ``Renditions``
parameter names the renditions.

A render sends one request per job on the copy queue, ``{"render": <job_id>, "renditions": [...]
or null}``. Where a test waits, a worker of its own plays the copy function's part over HTTP: it
takes the requests off the copy queue and writes the job's renditions, as the copy function
records them, so the command's wait, summary and resume are tested on real writes."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result

from backdrop.jobs import Job, Status, now_iso
from backdrop_cli.main import cli
from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Resources, client, provision
from backdrop_local.template import Template

ROOT = Path(__file__).resolve().parents[2]
WHITE = "255,255,255"
RENDITIONS = json.dumps({"amazon": "amazon-main", "thumb": "thumbnail"})


def rendition(name: str, verdict: str, *reasons: str) -> dict[str, Any]:
    """A job's ``renditions`` entry, as the copy function records one."""
    big = name == "amazon"
    return {
        "key": f"results/{name}.jpg",
        "width": 2000 if big else 400,
        "height": 2000 if big else 400,
        "format": "JPEG" if big else "WEBP",
        "bytes": 181_234 if big else 9_876,
        "verdict": verdict,
        "reasons": list(reasons),
    }


@dataclass(frozen=True)
class World:
    resources: Resources
    parameters: dict[str, str]
    endpoint: str
    base: Path

    def table(self) -> Any:
        return boto3.resource(
            "dynamodb",
            endpoint_url=self.endpoint,
            region_name=self.resources.region,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        ).Table(self.resources.jobs_table)

    def sqs(self) -> Any:
        return client("sqs", self.endpoint, self.resources.region)

    def state_dir(self, name: str, **parameters: str) -> Path:
        """A local-stack.json naming this world's resources, with these parameters over the template's."""
        path = self.base / name
        path.mkdir(parents=True, exist_ok=True)
        r = self.resources
        info = {
            "region": r.region,
            "aws_endpoint_url": self.endpoint,
            "aws_access_key_id": ACCESS_KEY_ID,
            "aws_secret_access_key": SECRET_ACCESS_KEY,
            "uploads_bucket": r.uploads_bucket,
            "upload_prefix": r.upload_prefix,
            "results_bucket": r.results_bucket,
            "jobs_table": r.jobs_table,
            "ledger_table": r.ledger_table,
            "queue_url": r.queue_url,
            "dead_letter_queue_url": r.dlq_url,
            "copy_queue_url": r.copy_queue_url,
            "parameters": {**self.parameters, **parameters},
            "pid": os.getpid(),
        }
        (path / "local-stack.json").write_text(json.dumps(info))
        return path

    def job(
        self,
        job_id: str,
        key: str,
        *,
        status: Status = Status.SUCCEEDED,
        completed_at: str = "2026-06-01T00:00:00.000Z",
        renditions: dict[str, Any] | None = None,
    ) -> None:
        """A job as the pipeline leaves it (with ``renditions`` when given)."""
        job = Job(
            job_id,
            status,
            self.resources.uploads_bucket,
            key,
            WHITE,
            "2026-06-01T00:00:00.000Z",
            completed_at,
            source_version_id="v1",
            color_source="default",
            run_id=f"run-{job_id[:8]}",
            result_bucket=self.resources.results_bucket,
            result_keys=[f"results/{key}/result.png"],
            completed_at=completed_at if status.is_terminal else None,
        )
        item = job.to_item()
        if renditions is not None:
            item["renditions"] = renditions
        self.table().put_item(Item=item)

    def render_requests(self) -> list[dict[str, Any]]:
        """Every render request on the copy queue now (taken off it)."""
        bodies: list[dict[str, Any]] = []
        while True:
            answer = self.sqs().receive_message(
                QueueUrl=self.resources.copy_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            messages = answer.get("Messages", [])
            if not messages:
                return bodies
            for m in messages:
                bodies.append(json.loads(m["Body"]))
                self.sqs().delete_message(
                    QueueUrl=self.resources.copy_queue_url, ReceiptHandle=m["ReceiptHandle"]
                )


@pytest.fixture(scope="module")
def world(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> World:
    name = f"render{int(time.time() * 1000) % 10**8}"
    template = Template(ROOT / "template.yaml", stack_name=name, region="us-east-1")
    resources = provision(template, moto_endpoint, api_key="rf_live_test", callback_secret="whsec_test")
    return World(resources, dict(template.parameters), moto_endpoint, tmp_path_factory.mktemp("render"))


@pytest.fixture
def state(world: World, request: pytest.FixtureRequest) -> Iterator[Path]:
    """The stack with Renditions, in a state folder of the test's own (its notes of renders too)."""
    world.render_requests()  # each test starts from an empty copy queue
    yield world.state_dir(request.node.name, Renditions=RENDITIONS)
    world.render_requests()


@pytest.fixture
def backdrop() -> Callable[..., Result]:
    """``backdrop ARGS --local --state-dir STATE``, in process; its result."""
    runner = CliRunner(mix_stderr=False)

    def run(state: Path, *args: str) -> Result:
        given = [*args, "--local", "--state-dir", str(state)]
        return runner.invoke(cli, given, prog_name="backdrop", catch_exceptions=False)

    return run


class CopyWorker:
    """Plays the copy function's part: takes render requests off the copy queue and writes the
    job's renditions (those asked for, or all; the others kept), with a fresh ``updated_at``, as
    the job store does.
    Requests for jobs in ``lose`` are taken and dropped (the function died before writing)."""

    def __init__(self, world: World, made: dict[str, dict[str, Any]], lose: frozenset[str] = frozenset()):
        self.world, self.made, self.lose = world, made, lose
        self.handled: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CopyWorker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        sqs, url, table = self.world.sqs(), self.world.resources.copy_queue_url, self.world.table()
        while not self._stop.is_set():
            answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for m in answer.get("Messages", []):
                request = json.loads(m["Body"])
                self.handled.append(request)
                job_id = request["render"]
                if job_id not in self.lose:
                    names = request["renditions"] or sorted(self.made)
                    kept = table.get_item(Key={"job_id": job_id}, ConsistentRead=True)["Item"].get(
                        "renditions"
                    )
                    table.update_item(
                        Key={"job_id": job_id},
                        UpdateExpression="SET renditions = :r, updated_at = :now",
                        ExpressionAttributeValues={
                            ":r": {**(kept or {}), **{name: self.made[name] for name in names}},
                            ":now": now_iso(),
                        },
                    )
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def test_a_stack_without_renditions_is_told_so_and_nothing_is_sent(
    world: World, state: Path, backdrop: Callable[..., Result]
) -> None:
    world.job("a0" * 16, "uploads/none/shoe.jpg")
    for empty in ("", "{}"):
        bare = world.state_dir("bare", Renditions=empty)
        ran = backdrop(bare, "render", "uploads/none/", "--yes")
        assert ran.exit_code == 2, ran.stderr
        assert "the stack has no renditions" in ran.stderr and "Renditions" in ran.stderr
    ran = backdrop(world.state_dir("unset"), "render", "uploads/none/", "--yes", "--json")
    assert ran.exit_code == 2
    assert "no renditions" in json.loads(ran.stdout)["error"]["message"]
    bad = backdrop(world.state_dir("bad", Renditions='{"shop": "no-such-profile"}'), "render", "--yes")
    assert bad.exit_code == 2 and "not valid" in bad.stderr and "shop" in bad.stderr
    unknown = backdrop(state, "render", "uploads/none/", "--rendition", "zalando", "--yes")
    assert unknown.exit_code == 2 and "names amazon, thumb" in unknown.stderr
    assert world.render_requests() == []


def test_plan_and_requests_newest_succeeded_job_per_object_at_no_cost(
    world: World, state: Path, backdrop: Callable[..., Result]
) -> None:
    prefix = "uploads/plan/"
    world.job("b1" * 16, prefix + "shoe.jpg", completed_at="2026-06-01T00:00:00.000Z")
    world.job("b2" * 16, prefix + "shoe.jpg", completed_at="2026-06-02T00:00:00.000Z")  # newer: this one
    world.job("b3" * 16, prefix + "bag.jpg")
    world.job("b4" * 16, prefix + "hat.jpg", status=Status.FAILED)  # no result to render
    world.job("b5" * 16, "uploads/elsewhere/shoe.jpg")  # not under the prefix

    refused = backdrop(state, "render", prefix)  # no terminal to ask at, no --yes
    assert refused.exit_code == 2 and "Refusing without --yes" in refused.stderr
    assert "$0.00" in refused.stdout and "no Runflow run" in refused.stdout
    assert world.render_requests() == []

    ran = backdrop(state, "render", prefix, "--yes", "--no-wait", "--json")
    assert ran.exit_code == 0, ran.stderr
    doc = json.loads(ran.stdout)
    assert doc["objects"] == 2 and doc["to_render"] == 2 and doc["renditions"] == ["amazon", "thumb"]
    assert doc["renditions_to_make"] == 4 and doc["runs"] == 0 and doc["estimated_cost_usd"] == 0
    assert doc["sent"] == {"total": 2} and doc["wait"] is None and doc["spent_usd"] == 0
    requests = world.render_requests()
    assert sorted(requests, key=lambda r: r["render"]) == [
        {"render": "b2" * 16, "renditions": None},  # null: every rendition the stack names
        {"render": "b3" * 16, "renditions": None},
    ]

    only = backdrop(state, "render", prefix + "bag", "--rendition", "thumb", "--yes", "--no-wait", "--json")
    assert json.loads(only.stdout)["renditions"] == ["thumb"]
    assert world.render_requests() == [{"render": "b3" * 16, "renditions": ["thumb"]}]


def test_render_waits_for_the_renditions_then_status_and_report_show_them(
    world: World, state: Path, backdrop: Callable[..., Result]
) -> None:
    prefix = "uploads/wait/"
    world.job("c1" * 16, prefix + "shoe.jpg", renditions={"amazon": rendition("amazon", "fail", "old")})
    world.job("c2" * 16, prefix + "bag.jpg")
    made = {
        "amazon": rendition("amazon", "warn", "product enlarged 1.30x: softer than the channel expects"),
        "thumb": rendition("thumb", "pass"),
    }
    with CopyWorker(world, made):
        ran = backdrop(state, "render", prefix, "--yes", "--wait-timeout", "60", "--json")
    assert ran.exit_code == 0, (ran.stdout, ran.stderr)
    doc = json.loads(ran.stdout)
    assert doc["rendered"] == 2 and doc["not_rendered"] == [] and doc["wait"]["all_ended"]
    assert doc["verdicts"] == {
        "amazon": {"pass": 0, "warn": 2, "fail": 0},
        "thumb": {"pass": 2, "warn": 0, "fail": 0},
    }
    assert {j["job_id"]: sorted(j["renditions"]) for j in doc["jobs"]} == {
        "c1" * 16: ["amazon", "thumb"],
        "c2" * 16: ["amazon", "thumb"],
    }

    [job] = json.loads(backdrop(state, "status", "c1" * 16, "--json").stdout)["jobs"]
    assert job["renditions"]["amazon"] == {
        "key": "results/amazon.jpg",
        "width": 2000,
        "height": 2000,
        "format": "JPEG",
        "bytes": 181234,
        "verdict": "warn",
        "reasons": ["product enlarged 1.30x: softer than the channel expects"],
    }
    text = backdrop(state, "status", prefix + "shoe.jpg").stdout
    for shown in ("Renditions", "amazon", "2000x2000", "JPEG", "181,234", "warn", "enlarged 1.30x", "WEBP"):
        assert shown in text, (shown, text)

    report = json.loads(backdrop(state, "report", "--prefix", prefix, "--json").stdout)
    assert report["renditions"] == doc["verdicts"]

    made["thumb"] = rendition("thumb", "fail", "over 100 kB")
    with CopyWorker(world, made) as worker:
        thumbs = backdrop(state, "render", prefix, "--rendition", "thumb", "--yes", "--json")
    assert thumbs.exit_code == 0, thumbs.stderr
    assert {r["renditions"] == ["thumb"] for r in worker.handled} == {True} and len(worker.handled) == 2
    assert json.loads(thumbs.stdout)["verdicts"] == {
        "amazon": {"pass": 0, "warn": 2, "fail": 0},  # kept as it was
        "thumb": {"pass": 0, "warn": 0, "fail": 2},
    }
    shown = backdrop(state, "report", "--prefix", prefix).stdout
    assert "verdicts per profile" in shown and "thumb" in shown


def test_an_interrupted_render_resumes_with_what_is_left(
    world: World, state: Path, backdrop: Callable[..., Result]
) -> None:
    prefix = "uploads/resume/"
    for n, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        world.job(f"d{n}" * 16, prefix + name)
    made = {"amazon": rendition("amazon", "pass"), "thumb": rendition("thumb", "fail", "over 100 kB")}
    notes = state / "renders"

    with CopyWorker(world, made, lose=frozenset({"d2" * 16})):  # c's request is lost
        first = backdrop(state, "render", prefix, "--yes", "--wait-timeout", "3", "--json")
    assert first.exit_code == 1
    doc = json.loads(first.stdout)
    assert doc["rendered"] == 2 and doc["not_rendered"] == ["d2" * 16] and doc["wait"]["timed_out"]
    assert doc["resumed_from"] is None
    assert len(list(notes.iterdir())) == 1  # the note of when the unfinished render began

    with CopyWorker(world, made) as worker:
        again = backdrop(state, "render", prefix, "--yes", "--wait-timeout", "60", "--json")
    assert again.exit_code == 0, again.stderr
    resumed = json.loads(again.stdout)
    assert resumed["resumed_from"] is not None
    assert resumed["already_rendered"] == 2 and resumed["to_render"] == 1 and resumed["rendered"] == 1
    assert [r["render"] for r in worker.handled] == ["d2" * 16]  # only what was left
    assert not list(notes.iterdir())  # finished: the next render starts afresh

    fresh = json.loads(backdrop(state, "render", prefix, "--yes", "--no-wait", "--json").stdout)
    assert fresh["to_render"] == 3 and fresh["resumed_from"] is None
    assert len(list(notes.iterdir())) == 1  # not waited for: it may be resumed
    with CopyWorker(world, made) as worker:
        deadline = time.monotonic() + 30
        while len(worker.handled) < 3:
            assert time.monotonic() < deadline, worker.handled
            time.sleep(0.2)
    after = json.loads(backdrop(state, "render", prefix, "--yes", "--json").stdout)
    assert after["already_rendered"] == 3 and after["to_render"] == 0 and after["sent"] == {"total": 0}
    assert not list(notes.iterdir())  # nothing was left to resume
