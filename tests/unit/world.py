"""The world the core's use cases see in unit tests: the real job store, ledger, S3 and SQS on a moto
server, a Runflow stand-in with Runflow's key/body semantics, a loopback output server, and a clock
the test moves. Nothing here re-implements a rule of the code under test."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import httpx
from boto3.dynamodb.types import TypeDeserializer

from backdrop.config import Settings, load_settings
from backdrop.jobs import Job
from backdrop.jobstore import JobStore
from backdrop.ledger import ResultLedger
from backdrop.observability import metrics
from backdrop.runs import (
    OutputRef,
    RunflowConflict,
    RunflowOutcomeUnknown,
    RunflowRejected,
    RunflowUnavailable,
    RunRequest,
    RunResult,
    run_result_from_run,
)
from backdrop.secrets import SigningSecrets
from backdrop.services import Services
from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Resources

START = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def metric_total(name: str) -> float:
    """Sum of what the core counted under ``name`` in this test (what an operator graphs)."""
    entry = metrics.metric_set.get(name)
    return sum(entry["Value"]) if entry else 0.0


class Clock:
    """Seconds since the epoch, moved only by the test."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSecrets:
    """What SecretReader offers. ``rotate`` changes the stored secret; the cache keeps the old one."""

    def __init__(self, current: str = "whsec_current", previous: str | None = None) -> None:
        self._cached = SigningSecrets(current, previous)
        self._stored = self._cached
        self.reads = 0
        self.refreshes = 0

    def rotate(self, current: str, previous: str | None) -> None:
        self._stored = SigningSecrets(current, previous)

    def signing_secrets(self, *, refresh: bool = False) -> SigningSecrets:
        self.reads += 1
        if refresh:
            self.refreshes += 1
            self._cached = self._stored
        return self._cached

    def api_key(self, *, refresh: bool = False) -> str:
        return "rf_live_test_key"


# --------------------------------------------------------------------------------------------
# Runflow


@dataclass
class StandInRun:
    run: RunResult
    request: RunRequest
    created_at: datetime


def _fingerprint(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class RunflowStandIn:
    """The three calls Backdrop makes, with Runflow's documented semantics: ``Idempotency-Key``
    replays the run for the same body and answers 409 for another (``honour``), or is ignored
    (``ignore``, what the single-run route may do). ``create_faults`` and ``list_faults`` are
    consumed one per call: ``"answer_lost"`` (the run is created, the answer never arrives),
    ``"unavailable"`` (nothing created), ``"rejected"`` (402); on the list ``"refused"`` (403),
    ``"unavailable"`` (503) and ``"empty"`` (a run not listed yet)."""

    idempotency: str = "honour"
    runs: dict[str, StandInRun] = field(default_factory=dict)
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    creates: int = 0  # POSTs received
    create_faults: list[str] = field(default_factory=list)
    list_faults: list[str] = field(default_factory=list)
    get_faults: list[Exception] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)
    lists: list[str] = field(default_factory=list)
    clock: Callable[[], float] = lambda: START

    @property
    def billed(self) -> int:
        return len(self.runs)

    def create_run(self, request: RunRequest, *, idempotency_key: str) -> RunResult:
        self.creates += 1
        fault = self.create_faults.pop(0) if self.create_faults else None
        if fault == "unavailable":
            raise RunflowUnavailable("HTTP 429 RATE_LIMITED (stand-in)")
        if fault == "rejected":
            raise RunflowRejected(402, "INSUFFICIENT_CREDIT", "Your balance is too low (stand-in)")
        body = request.body()
        if self.idempotency == "honour" and idempotency_key in self.keys:
            fingerprint, run_id = self.keys[idempotency_key]
            if fingerprint != _fingerprint(body):
                raise RunflowConflict(409, "CONFLICT", "Idempotency-Key was used with another body")
            return self.runs[run_id].run
        run = RunResult(
            run_id=str(uuid.uuid4()),
            status="queued",
            metadata=dict(request.metadata),
            client_ref=request.client_ref,
        )
        created = datetime.fromtimestamp(self.clock(), UTC)
        self.runs[run.run_id] = StandInRun(run, request, created)
        self.keys.setdefault(idempotency_key, (_fingerprint(body), run.run_id))
        if fault == "answer_lost":
            raise RunflowOutcomeUnknown("Runflow's answer to the create is unknown: ReadTimeout (stand-in)")
        return run

    def finish(
        self,
        run_id: str,
        *,
        status: str = "succeeded",
        outputs: tuple[OutputRef, ...] = (),
        failure_code: str | None = None,
        failure_message: str | None = None,
        finished: bool = True,
    ) -> RunResult:
        """Change a run as Runflow would; what ``get_run`` then answers is the run object as Runflow
        sends it, read by Backdrop's own parser (status spellings and all)."""
        entry = self.runs[run_id]
        run_object = {
            "id": run_id,
            "status_code": status,
            "output": {"outputs": [{"url": o.url, "content_type": o.content_type} for o in outputs]}
            if outputs
            else None,
            "failure_code": failure_code,
            "failure_message": failure_message,
            "metadata": dict(entry.run.metadata),
            "client_ref": entry.request.client_ref,
            "created_at": entry.created_at.isoformat(),
            "completed_at": datetime.fromtimestamp(self.clock(), UTC).isoformat() if finished else None,
        }
        entry.run = run_result_from_run(run_object)
        return entry.run

    def get_run(self, run_id: str, *, budget_seconds: float | None = None) -> RunResult:
        self.reads.append(run_id)
        if self.get_faults:
            raise self.get_faults.pop(0)
        if run_id not in self.runs:
            raise RunflowRejected(404, "RUN_NOT_FOUND", "Run not found")
        return self.runs[run_id].run

    def find_runs(self, client_ref: str) -> list[RunResult]:
        self.lists.append(client_ref)
        fault = self.list_faults.pop(0) if self.list_faults else None
        if fault == "refused":
            raise RunflowRejected(403, "PERMISSION_DENIED", "Your key may not list runs (stand-in)")
        if fault == "unavailable":
            raise RunflowUnavailable("HTTP 503 (stand-in)")
        if fault == "empty":  # the search index has not caught up with a create yet
            return []
        found = [e for e in self.runs.values() if e.request.client_ref == client_ref]
        found.sort(key=lambda e: e.created_at)
        return [RunResult(run_id=e.run.run_id, status=e.run.status, created_at=e.created_at) for e in found]


# --------------------------------------------------------------------------------------------
# Outputs


class OutputServer:
    """A loopback HTTP server for run outputs: ``serve(path, body)``; answers can be scripted."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, bytes, str]] = {}
        self.requests: list[str] = []
        self.script: dict[str, list[int]] = {}  # path -> statuses to answer first, one per request
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                owner.requests.append(path)
                scripted = owner.script.get(path)
                if scripted:
                    status = scripted.pop(0)
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, body, ctype = owner.files.get(path, (404, b"no such output", "text/plain"))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def serve(self, path: str, body: bytes, content_type: str = "image/png") -> str:
        """Serve ``body`` at ``path`` (which may carry a query, as presigned URLs do); its URL."""
        self.files[path.split("?", 1)[0]] = (200, body, content_type)
        return self.origin + path

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --------------------------------------------------------------------------------------------
# The world


def settings_for(resources: Resources, output_origin: str, **env: str) -> Settings:
    return load_settings(
        {
            "AWS_REGION": resources.region,
            "BACKDROP_JOBS_TABLE": resources.jobs_table,
            "BACKDROP_IDEMPOTENCY_TABLE": resources.idempotency_table,
            "BACKDROP_LEDGER_TABLE": resources.ledger_table,
            "BACKDROP_UPLOADS_BUCKET": resources.uploads_bucket,
            "BACKDROP_RESULTS_BUCKET": resources.results_bucket,
            "BACKDROP_COPY_QUEUE_URL": resources.copy_queue_url,
            "BACKDROP_UPLOADS_QUEUE_URL": resources.queue_url,
            "BACKDROP_RUNFLOW_API_KEY_SECRET": resources.api_key_secret,
            "BACKDROP_CALLBACK_SECRET": resources.callback_secret_name,
            "BACKDROP_CALLBACK_URL": "https://hooks.example.com/runflow/callback",
            "BACKDROP_ALLOWED_OUTPUT_HOSTS": "*.runflow.io",
            "BACKDROP_INSECURE_OUTPUT_ORIGIN": output_origin,
            "BACKDROP_CREATE_SETTLE_SECONDS": "60",
            "BACKDROP_EVENT_BUS": "default",
            # Most tests upload the same few bytes under many keys: reuse is tested on its own.
            "BACKDROP_REUSE_RESULTS": "false",
            **env,
        }
    )


@dataclass
class World:
    services: Services
    resources: Resources
    runflow: RunflowStandIn
    secrets: FakeSecrets
    outputs: OutputServer
    clock: Clock
    s3: Any
    sqs: Any
    ddb: Any

    @property
    def store(self) -> JobStore:
        return self.services.jobs

    def job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        assert job is not None, f"no job {job_id}"
        return job

    def item(self, job_id: str) -> dict[str, Any]:
        """The job's raw item, as an operator reading the table sees it."""
        raw = self.ddb.get_item(TableName=self.resources.jobs_table, Key={"job_id": {"S": job_id}})
        return {k: TypeDeserializer().deserialize(v) for k, v in raw.get("Item", {}).items()}

    def put_upload(self, key: str, body: bytes, **metadata: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.s3.put_object(
            Bucket=self.resources.uploads_bucket, Key=key, Body=body, Metadata=metadata
        )
        return answer

    def copy_requests(self) -> list[dict[str, Any]]:
        """Drain the copy queue: the copy requests queued so far."""
        found: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(
                QueueUrl=self.resources.copy_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not got:
                return found
            for message in got:
                found.append(json.loads(message["Body"]))
                self.sqs.delete_message(
                    QueueUrl=self.resources.copy_queue_url, ReceiptHandle=message["ReceiptHandle"]
                )

    def events(self) -> list[dict[str, Any]]:
        """Drain the completion events the stack's bus delivered so far (EventBridge envelopes)."""
        found: list[dict[str, Any]] = []
        url = self.resources.events_queue_url
        while got := self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            for message in got:
                found.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return found

    def results(self) -> dict[str, bytes]:
        listed = self.s3.list_objects_v2(Bucket=self.resources.results_bucket).get("Contents", [])
        return {
            o["Key"]: self.s3.get_object(Bucket=self.resources.results_bucket, Key=o["Key"])["Body"].read()
            for o in listed
        }


def build_world(resources: Resources, outputs: OutputServer, **env: str) -> World:
    """The use cases' world; ``env`` changes settings (e.g. ``BACKDROP_DAILY_RUN_BUDGET``)."""
    clock = Clock()
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY, region_name=resources.region
    )
    endpoint = resources.endpoint_url
    s3 = session.client("s3", endpoint_url=endpoint)
    sqs = session.client("sqs", endpoint_url=endpoint)
    ddb = session.client("dynamodb", endpoint_url=endpoint)
    dynamodb = session.resource("dynamodb", endpoint_url=endpoint)
    settings = settings_for(resources, outputs.origin, **env)
    runflow = RunflowStandIn(clock=clock)
    secrets = FakeSecrets()
    services = Services(
        settings,
        session=session,
        s3=s3,
        presign_s3=s3,
        sqs=sqs,
        jobs=JobStore(
            dynamodb.Table(resources.jobs_table),
            retention_days=settings.retention_days,
            clock=clock,
            announce=bool(settings.event_bus),
        ),
        ledger=ResultLedger(dynamodb.Table(resources.ledger_table), clock=clock),
        secrets=secrets,
        http=httpx.Client(timeout=10),
        runflow=runflow,
        clock=clock,
    )
    return World(services, resources, runflow, secrets, outputs, clock, s3, sqs, ddb)
