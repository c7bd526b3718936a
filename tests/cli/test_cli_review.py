"""``backdrop review``: the list, approve, reject (and ``--retry``), ``--json``, and the review page's
HTTP side (token, loopback Host, decisions), in process against a stack provisioned in moto over
HTTP. The jobs table holds jobs as the quality gate leaves them (``needs_review``, with ``quality``
and ``held_keys``); where a test waits, a worker of its own plays the copy function's part on the
copy queue's review requests, so that the command's wait and outcome read real writes. The copy
function's own handling of them, and the page in a browser, are tested on the local stack
(test_review_page.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from click.testing import CliRunner, Result

from backdrop.jobs import Job, Status, now_iso
from backdrop_cli.app import App, Target
from backdrop_cli.reviewpage import TOKEN_HEADER, PageServer, ReviewPage
from backdrop_cli.sending import StopFlag
from backdrop_cli.ui import Ui
from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Resources, client, provision
from backdrop_local.template import Template
from tests.cli.cliworld import BACKDROP
from tests.support.images import solid

ROOT = Path(__file__).resolve().parents[2]
WHITE = "255,255,255"
BLANK = {"verdict": "doubt", "reasons": ["nothing found: the product covers 0.0% of the frame"]}


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

    def state_dir(self, name: str) -> Path:
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
            "parameters": {**self.parameters, "QualityGate": "hold"},
        }
        (path / "local-stack.json").write_text(json.dumps(info))
        return path

    def held(self, job_id: str, key: str, *, status: Status = Status.NEEDS_REVIEW, held_at: str = "") -> None:
        """A job as the gate leaves a doubtful result: its source object stored, the result and a
        rendition held under the review prefix, ``quality`` with the checks' values."""
        s3 = client("s3", self.endpoint, self.resources.region)
        version = s3.put_object(Bucket=self.resources.uploads_bucket, Key=key, Body=solid("PNG", (64, 48)))
        held = [f"review/{job_id}/result.png", f"review/{job_id}/rendition-thumb.webp"]
        job = Job(
            job_id,
            status,
            self.resources.uploads_bucket,
            key,
            WHITE,
            held_at or now_iso(),
            held_at or now_iso(),
            source_version_id=version["VersionId"],
            color_source="default",
            run_id=f"run-{job_id[:8]}",
            result_bucket=self.resources.results_bucket,
            quality={**BLANK, "checks": {"product_share": 0.0, "background_uniformity": 1.0}},
            held_keys=held,
            renditions={"thumb": {"key": held[1], "width": 400, "height": 400, "format": "WEBP",
                                  "bytes": 5120, "verdict": "pass", "reasons": []}},
            completed_at=None if status.is_open else now_iso(),
        )  # fmt: skip
        self.table().put_item(Item=job.to_item())

    def job(self, job_id: str) -> Job:
        return Job.from_item(self.table().get_item(Key={"job_id": job_id}, ConsistentRead=True)["Item"])

    def drain(self, url: str) -> list[dict[str, Any]]:
        """Every message on the queue now (taken off it)."""
        bodies: list[dict[str, Any]] = []
        while True:
            messages = self.sqs().receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return bodies
            for m in messages:
                bodies.append(json.loads(m["Body"]))
                self.sqs().delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


@pytest.fixture(scope="module")
def world(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> World:
    name = f"review{int(time.time() * 1000) % 10**8}"
    template = Template(ROOT / "template.yaml", stack_name=name, region="us-east-1")
    resources = provision(template, moto_endpoint, api_key="rf_live_test", callback_secret="whsec_test")
    return World(resources, dict(template.parameters), moto_endpoint, tmp_path_factory.mktemp("review"))


@pytest.fixture
def state(world: World, request: pytest.FixtureRequest) -> Iterator[Path]:
    world.drain(world.resources.copy_queue_url)
    world.drain(world.resources.queue_url)
    yield world.state_dir(request.node.name)


@pytest.fixture
def backdrop(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """``backdrop ARGS --local --state-dir STATE``, in process, as the user ``ana``."""
    monkeypatch.setenv("USER", "ana")
    runner = CliRunner(mix_stderr=False)

    def run(state: Path, *args: str) -> Result:
        from backdrop_cli.main import cli

        given = [*args, "--local", "--state-dir", str(state)]
        return runner.invoke(cli, given, prog_name="backdrop", catch_exceptions=False)

    return run


def backdrop_before(state: Path, *args: str) -> Result:
    """``backdrop --local --state-dir STATE --json ARGS``, in process."""
    from backdrop_cli.main import cli

    given = ["--local", "--state-dir", str(state), "--json", *args]
    return CliRunner(mix_stderr=False).invoke(cli, given, prog_name="backdrop", catch_exceptions=False)


class Reviewer:
    """Plays the copy function's part for review requests: approve moves the held objects' keys
    under the results prefix and ends the job succeeded; reject ends it rejected with the note;
    both record the decision. A request for a job no longer waiting is dropped (as the function
    ignores it)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.handled: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Reviewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        sqs, url = self.world.sqs(), self.world.resources.copy_queue_url
        while not self._stop.is_set():
            for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            ):
                request = json.loads(m["Body"])
                self.handled.append(request)
                self._apply(request)
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    def _apply(self, request: dict[str, Any]) -> None:
        job = self.world.job(request["review"])
        if job.status is not Status.NEEDS_REVIEW:
            return
        review = {k: request[k] for k in ("decision", "note", "reviewer")} | {"at": now_iso()}
        if request["decision"] == "approve":
            published = [
                k.replace(f"review/{job.job_id}/", f"results/{job.source_key}/") for k in job.held_keys
            ]
            changes = {"status": "succeeded", "result_keys": published}
        else:
            changes = {
                "status": "rejected",
                "error_code": "REJECTED_BY_REVIEW",
                "error_message": request["note"],
            }
        names = {f"#{k}": k for k in [*changes, "review", "completed_at", "updated_at"]}
        values = {f":{k}": v for k, v in changes.items()} | {":review": review, ":now": now_iso()}
        sets = ", ".join(f"#{k} = :{k}" for k in changes)
        self.world.table().update_item(
            Key={"job_id": job.job_id},
            UpdateExpression=f"SET {sets}, #review = :review, #completed_at = :now, #updated_at = :now "
            "REMOVE held_keys, open_shard",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )


def test_the_list_shows_the_held_jobs_their_reasons_and_checks(
    world: World, state: Path, backdrop: Callable[..., Result]
) -> None:
    assert "No job is waiting for review" in backdrop(state, "review").stdout
    world.held("a1" * 16, "uploads/list/late.png", held_at="2026-06-02T00:00:00.000Z")
    world.held("a2" * 16, "uploads/list/early.png", held_at="2026-06-01T00:00:00.000Z")
    world.held("a3" * 16, "uploads/list/done.png", status=Status.SUCCEEDED)

    ran = backdrop(state, "review", "--json")
    assert ran.exit_code == 0, ran.stderr
    doc = json.loads(ran.stdout)
    assert doc["needs_review"] == 2
    early, late = doc["jobs"]  # the longest waiting first
    assert (early["job_id"], late["job_id"]) == ("a2" * 16, "a1" * 16)
    assert early["source"]["key"] == "uploads/list/early.png" and early["verdict"] == "doubt"
    assert early["reasons"] == BLANK["reasons"]
    assert early["checks"] == {"product_share": 0, "background_uniformity": 1}
    assert early["held_keys"] == [
        f"review/{'a2' * 16}/result.png",
        f"review/{'a2' * 16}/rendition-thumb.webp",
    ]
    assert early["renditions"]["thumb"]["key"] == f"review/{'a2' * 16}/rendition-thumb.webp"
    assert early["waiting_s"] > late["waiting_s"] > 0

    before = backdrop_before(state, "review")  # the global options before the subcommand
    assert before.exit_code == 0 and [j["job_id"] for j in json.loads(before.stdout)["jobs"]] == [
        "a2" * 16,
        "a1" * 16,
    ]
    text = backdrop(state, "review").stdout
    for shown in ("Waiting for review: 2", "uploads/list/early.png", "nothing found", "product_share 0"):
        assert shown in text, (shown, text)
    assert "done.png" not in text
    for job_id in ("a1" * 16, "a2" * 16):  # leave nothing held for the other tests' lists
        world.table().delete_item(Key={"job_id": job_id})


def test_approve_publishes_the_held_job_and_refuses_one_not_waiting(
    world: World, state: Path, backdrop: Callable[..., Result]
) -> None:
    world.held("b1" * 16, "uploads/approve/shoe.png")
    world.held("b2" * 16, "uploads/approve/bag.png", status=Status.SUCCEEDED)

    refused = backdrop(state, "review", "approve", "b2" * 16, "--json")
    assert refused.exit_code == 1
    doc = json.loads(refused.stdout)
    assert doc["refused"] == [{"job_id": "b2" * 16, "reason": "not waiting for review: succeeded"}]
    assert doc["decided"] == [] and world.drain(world.resources.copy_queue_url) == []  # nothing sent

    with Reviewer(world) as reviewer:
        ran = backdrop(state, "review", "approve", "b1" * 16, "b2" * 16, "--json")
    assert ran.exit_code == 1, ran.stderr  # b2 refused, b1 decided
    doc = json.loads(ran.stdout)
    assert reviewer.handled == [{"review": "b1" * 16, "decision": "approve", "note": None, "reviewer": "ana"}]
    [decided] = doc["decided"]
    assert decided["status"] == "succeeded" and decided["review"]["reviewer"] == "ana"
    assert decided["result_keys"] == ["results/uploads/approve/shoe.png/result.png",
                                      "results/uploads/approve/shoe.png/rendition-thumb.webp"]  # fmt: skip
    assert [r["job_id"] for r in doc["refused"]] == ["b2" * 16]

    again = backdrop(state, "review", "approve", "b1" * 16)
    assert again.exit_code == 1
    assert "not waiting for review: succeeded (approve by ana" in again.stdout


def test_reject_needs_a_note_and_ends_the_job_rejected_with_it(
    world: World, state: Path, backdrop: Callable[..., Result]
) -> None:
    world.held("c1" * 16, "uploads/reject/<b>bottle</b>.png")
    bare = backdrop(state, "review", "reject", "c1" * 16)
    assert bare.exit_code == 2 and "needs --note" in bare.stderr
    note = backdrop(state, "review", "approve", "c1" * 16, "--note", "fine")
    assert note.exit_code == 2 and "go with `reject`" in note.stderr
    assert world.drain(world.resources.copy_queue_url) == []

    with Reviewer(world):
        ran = backdrop(state, "review", "reject", "c1" * 16, "--note", "label cut off", "--reviewer", "Bo")
    assert ran.exit_code == 0, ran.stderr
    assert "rejected" in ran.stdout and "label cut off" in ran.stdout and "<b>bottle</b>" in ran.stdout
    job = world.job("c1" * 16)
    assert job.status is Status.REJECTED and job.error_code == "REJECTED_BY_REVIEW"
    assert job.error_message == "label cut off" and job.review["reviewer"] == "Bo"


def test_reject_with_retry_shows_the_cost_first_then_starts_a_new_attempt(
    world: World, state: Path, backdrop: Callable[..., Result]
) -> None:
    world.held("d1" * 16, "uploads/retry/hat.png")
    unasked = backdrop(state, "review", "reject", "d1" * 16, "--note", "halo", "--retry")
    assert unasked.exit_code == 2 and "Refusing without --yes" in unasked.stderr
    assert "1 new runs" in unasked.stdout and "$" in unasked.stdout
    assert (
        world.drain(world.resources.copy_queue_url) == []
        and world.job("d1" * 16).status is Status.NEEDS_REVIEW
    )

    with Reviewer(world):
        ran = backdrop(state, "review", "reject", "d1" * 16, "--note", "halo", "--retry", "--yes", "--json")
    assert ran.exit_code == 0, (ran.stdout, ran.stderr)
    doc = json.loads(ran.stdout)
    assert doc["decided"][0]["status"] == "rejected"
    assert doc["retry"]["started"] == [{"job_id": "d1" * 16, "key": "uploads/retry/hat.png", "attempt": 2}]
    job = world.job("d1" * 16)
    assert job.attempt == 2 and job.status is Status.RECEIVED
    assert job.history[-1]["error_code"] == "REJECTED_BY_REVIEW"
    sent = [m for m in world.drain(world.resources.queue_url) if m.get("backdrop")]  # not S3's notifications
    assert [(m["backdrop"], m["job_id"], m["attempt"]) for m in sent] == [("submit_job", "d1" * 16, 2)]


@pytest.fixture
def page(world: World, state: Path) -> Iterator[PageServer]:
    app = App(Target(None, None, None, True, state), Ui(as_json=True))
    server = PageServer(0, ReviewPage(app, "ana", "s3cret-token", StopFlag()))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_page_answers_only_with_the_token_and_decides_through_the_queue(
    world: World, page: PageServer
) -> None:
    world.held("e1" * 16, "uploads/page/cup.png")
    base = page.url.split("/?")[0]
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.get("/").status_code == 403
        assert http.get("/?token=wrong").status_code == 403
        assert http.get("/static/review.js").status_code == 403
        assert http.get("/api/jobs").status_code == 403
        assert http.get("/api/jobs", params={"token": "s3cret-token"}).status_code == 403  # header only
        rebound = http.get("/?token=s3cret-token", headers={"Host": "evil.example:80"})
        assert rebound.status_code == 403  # a DNS-rebinding page names its own host

        html = http.get("/?token=s3cret-token")
        assert html.status_code == 200 and "Backdrop review" in html.text
        assert "script-src 'self'" in html.headers["content-security-policy"]
        assert html.headers["referrer-policy"] == "no-referrer"
        assert http.get("/static/review.js?token=s3cret-token").status_code == 200

        jobs = http.get("/api/jobs", headers={TOKEN_HEADER: "s3cret-token"}).json()
        [job] = [j for j in jobs["jobs"] if j["job_id"] == "e1" * 16]
        assert jobs["reviewer"] == "ana" and jobs["url_seconds"] == 900
        assert "X-Amz-Expires=900" in job["images"]["original"] or "Expires=" in job["images"]["original"]
        original = httpx.get(job["images"]["original"], timeout=10)
        assert original.status_code == 200 and original.content.startswith(b"\x89PNG")
        assert job["images"]["result"] is not None and job["renditions"]["thumb"]["url"]

        headers = {TOKEN_HEADER: "s3cret-token"}
        form = http.post("/api/decisions", data={"job_id": "e1" * 16, "decision": "approve"}, headers=headers)
        assert (
            form.status_code == 400
        )  # only JSON (a form post from another page never has the header anyway)
        no_note = http.post(
            "/api/decisions", json={"job_id": "e1" * 16, "decision": "reject"}, headers=headers
        )
        assert no_note.status_code == 400 and "note" in no_note.json()["error"]
        with Reviewer(world) as reviewer:
            decided = http.post(
                "/api/decisions",
                json={"job_id": "e1" * 16, "decision": "reject", "note": "blurry"},
                headers=headers,
            )
        assert decided.status_code == 200, decided.text
        assert decided.json()["decided"][0]["status"] == "rejected"
        assert reviewer.handled == [
            {"review": "e1" * 16, "decision": "reject", "note": "blurry", "reviewer": "ana"}
        ]
        twice = http.post(
            "/api/decisions", json={"job_id": "e1" * 16, "decision": "approve"}, headers=headers
        )
        assert twice.status_code == 409 and "not waiting for review: rejected" in twice.text


def test_serve_prints_the_url_with_its_token_first_and_binds_loopback(
    world: World, state: Path, backdrop: Callable[..., Result]
) -> None:
    refused = backdrop(state, "review", "--serve", "--json")
    assert (
        refused.exit_code == 2 and "--json is for the list" in json.loads(refused.stdout)["error"]["message"]
    )
    command = [str(BACKDROP), "review", "--serve", "--no-open", "--local", "--state-dir", str(state)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKDROP_")}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as server:
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            host, _, token = url.removeprefix("http://").partition("/?token=")
            assert host.startswith("127.0.0.1:") and len(token) >= 32, url
            assert httpx.get(url, timeout=10).status_code == 200
            assert httpx.get(url.replace(token, "not" + token), timeout=10).status_code == 403
            assert listening_on(int(host.rsplit(":", 1)[1])) == ["127.0.0.1"]
        finally:
            server.terminate()
            _, stderr = server.communicate(timeout=10)
    assert "127.0.0.1 only" in stderr and token not in stderr


def listening_on(port: int) -> list[str]:
    """The addresses a socket listens on at ``port``, from the kernel's own tables (IPv4 as
    dotted quads, IPv6 as the table's hex)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if len(address) == 8:
                    address = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
                found.append(address)
    return found
