"""Fakes and helpers for the unit tests of the Backdrop core: no AWS, no network."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Backdrop")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "backdrop")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")

from backdrop.jobs import ALLOWED_FROM, OPEN_SHARD, TERMINAL, Job, Status, now_iso
from backdrop.jobstore import TransitionRefused
from backdrop.observability import metrics
from backdrop.runs import RunflowRejected, RunResult
from backdrop.secrets import SigningSecrets
from backdrop.services import Services

# --------------------------------------------------------------------------------------------
# Settings

BASE_ENV: dict[str, str] = {
    "AWS_REGION": "eu-west-1",
    "BACKDROP_JOBS_TABLE": "backdrop-jobs",
    "BACKDROP_IDEMPOTENCY_TABLE": "backdrop-idempotency",
    "BACKDROP_UPLOADS_BUCKET": "uploads-bucket",
    "BACKDROP_RESULTS_BUCKET": "results-bucket",
    "BACKDROP_RUNFLOW_API_KEY_SECRET": "backdrop/runflow-api-key",
    "BACKDROP_CALLBACK_SECRET": "backdrop/callback-signing",
    "BACKDROP_CALLBACK_URL": "https://hooks.example.com/runflow/callback",
    "BACKDROP_ALLOWED_OUTPUT_HOSTS": "*.runflow.io",
}

# A public address the fake resolver hands out for allowed output hosts.
PUBLIC_ADDRESS = "93.184.216.34"


def metric_total(name: str) -> float:
    """Sum of what the core counted under ``name`` in this test (what an operator graphs)."""
    entry = metrics.metric_set.get(name)
    return sum(entry["Value"]) if entry else 0.0


# --------------------------------------------------------------------------------------------
# S3


class FakeS3:
    """In-memory S3 client: the calls the core makes, recorded, and the objects they leave."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.aborted: list[str] = []
        self.fail: dict[str, Exception] = {}
        self._next = 0

    def _record(self, op: str, kwargs: dict[str, Any]) -> None:
        self.calls.append((op, kwargs))
        if op in self.fail:
            raise self.fail[op]

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self._record("put_object", kwargs)
        self.objects[(kwargs["Bucket"], kwargs["Key"])] = {
            "Body": bytes(kwargs["Body"]),
            "ContentType": kwargs.get("ContentType"),
            "Metadata": dict(kwargs.get("Metadata", {})),
        }
        return {"ETag": '"put"'}

    def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self._record("create_multipart_upload", kwargs)
        self._next += 1
        upload_id = f"upload-{self._next}"
        self.uploads[upload_id] = {"kwargs": kwargs, "parts": {}}
        return {"UploadId": upload_id}

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        self._record("upload_part", kwargs)
        number = kwargs["PartNumber"]
        self.uploads[kwargs["UploadId"]]["parts"][number] = bytes(kwargs["Body"])
        return {"ETag": f'"etag-{number}"'}

    def complete_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self._record("complete_multipart_upload", kwargs)
        upload = self.uploads.pop(kwargs["UploadId"])
        numbers = [p["PartNumber"] for p in kwargs["MultipartUpload"]["Parts"]]
        start = upload["kwargs"]
        self.objects[(kwargs["Bucket"], kwargs["Key"])] = {
            "Body": b"".join(upload["parts"][n] for n in numbers),
            "ContentType": start.get("ContentType"),
            "Metadata": dict(start.get("Metadata", {})),
        }
        return {}

    def abort_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self._record("abort_multipart_upload", kwargs)
        self.uploads.pop(kwargs["UploadId"], None)
        self.aborted.append(kwargs["UploadId"])
        return {}

    def generate_presigned_url(self, operation: str, Params: Mapping[str, Any], ExpiresIn: int) -> str:
        self.calls.append(
            ("generate_presigned_url", {"operation": operation, **Params, "ExpiresIn": ExpiresIn})
        )
        version = f"&versionId={Params['VersionId']}" if "VersionId" in Params else ""
        return (
            f"https://{Params['Bucket']}.s3.amazonaws.com/{Params['Key']}?X-Amz-Expires={ExpiresIn}{version}"
        )


# --------------------------------------------------------------------------------------------
# Jobs table


class FakeJobStore:
    """Same methods and rules as backdrop.jobstore.JobStore, over a dict of DynamoDB-like items."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.transitions: list[tuple[str, Status]] = []

    def add(self, job: Job) -> Job:
        self.items[job.job_id] = job.to_item()
        return job

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self.items)

    def claim(self, job: Job) -> tuple[Job, bool]:
        if job.job_id in self.items:
            return Job.from_item(copy.deepcopy(self.items[job.job_id])), False
        self.items[job.job_id] = job.to_item()
        return job, True

    def get(self, job_id: str) -> Job | None:
        item = self.items.get(job_id)
        return Job.from_item(copy.deepcopy(item)) if item else None

    def find_by_run_id(self, run_id: str) -> Job | None:
        for job_id, item in self.items.items():
            if item.get("run_id") == run_id:
                return self.get(job_id)
        return None

    def transition(
        self,
        job_id: str,
        target: Status,
        *,
        changes: Mapping[str, Any] | None = None,
        remove: tuple[str, ...] = (),
    ) -> Job:
        if not ALLOWED_FROM[target]:
            raise ValueError(f"nothing can move to {target.value}")
        item = self.items.get(job_id)
        current = Job.from_item(copy.deepcopy(item)) if item else None
        if current is None or current.status not in ALLOWED_FROM[target]:
            raise TransitionRefused(job_id, target, current)
        new = copy.deepcopy(item)
        assert new is not None
        now = now_iso()
        new["status"] = target.value
        new["updated_at"] = now
        for name, value in (changes or {}).items():
            if value is None:
                new.pop(name, None)
            else:
                new[name] = copy.deepcopy(value)
        for name in remove:
            new.pop(name, None)
        if target in TERMINAL:
            new["completed_at"] = now
            new["expires_at"] = int(time.time()) + 90 * 86400
            new.pop("open_shard", None)
        else:
            new["open_shard"] = OPEN_SHARD
        self.items[job_id] = new
        self.transitions.append((job_id, target))
        return Job.from_item(copy.deepcopy(new))

    def record_error(self, job_id: str, expected: Status, code: str, message: str) -> bool:
        item = self.items.get(job_id)
        if item is None or item["status"] != expected.value:
            return False
        item["error_code"] = code
        item["error_message"] = message[:1000]
        item["updated_at"] = now_iso()
        item["attempts"] = int(item.get("attempts", 0)) + 1
        return True

    def open_jobs(self, *, created_before: str, limit: int) -> Iterator[Job]:
        rows = sorted(
            (i for i in self.items.values() if i.get("open_shard") == OPEN_SHARD),
            key=lambda i: i["created_at"],
        )
        # A query page is read at once: what the reconciler sees is a snapshot.
        page = [Job.from_item(copy.deepcopy(i)) for i in rows if i["created_at"] < created_before][:limit]
        yield from page


def make_job(
    job_id: str = "job-1",
    *,
    status: Status = Status.SUBMITTED,
    run_id: str | None = "run-1",
    source_key: str = "uploads/shoes/red.jpg",
    color: str = "255,255,255",
    created_at: str | None = None,
    **extra: Any,
) -> Job:
    created = created_at or now_iso()
    return Job(
        job_id=job_id,
        status=status,
        source_bucket=BASE_ENV["BACKDROP_UPLOADS_BUCKET"],
        source_key=source_key,
        source_version="v:3HL4kqtJlcpXroDTDmJ",
        color=color,
        created_at=created,
        updated_at=created,
        source_etag='"d41d8cd98f00b204e9800998ecf8427e"',
        source_size=1234,
        run_id=run_id,
        **extra,
    )


# --------------------------------------------------------------------------------------------
# Secrets and Runflow


class FakeSecrets:
    """What SecretReader offers. ``rotate`` changes the stored secret; the cache keeps the old one."""

    def __init__(self, current: str = "whsec_current", previous: str | None = None) -> None:
        self._cached = SigningSecrets(current, previous)
        self._stored = self._cached
        self.refreshes = 0
        self.reads = 0
        self.key = "rf_live_test_key"

    def rotate(self, current: str, previous: str | None) -> None:
        self._stored = SigningSecrets(current, previous)

    def signing_secrets(self, *, refresh: bool = False) -> SigningSecrets:
        self.reads += 1
        if refresh:
            self.refreshes += 1
            self._cached = self._stored
        return self._cached

    def api_key(self) -> str:
        return self.key


class FakeRunflow:
    """RunflowClient's two calls; runs are whatever the test puts in ``runs``."""

    def __init__(self) -> None:
        self.runs: dict[str, RunResult | Exception] = {}
        self.created: list[tuple[Any, str]] = []
        self.read: list[str] = []
        self.by_client_ref: dict[str, list[RunResult] | Exception] = {}

    def create_run(self, request: Any, *, idempotency_key: str) -> RunResult:
        self.created.append((request, idempotency_key))
        return RunResult(run_id=f"run-for-{idempotency_key}", status="queued")

    def find_runs(self, client_ref: str) -> list[RunResult]:
        listed = self.by_client_ref.get(client_ref, [])
        if isinstance(listed, Exception):
            raise listed
        return listed

    def get_run(self, run_id: str, *, budget_seconds: float | None = None) -> RunResult:
        self.read.append(run_id)
        if run_id not in self.runs:
            raise RunflowRejected(404, "RUN_NOT_FOUND", "Run not found")
        run = self.runs[run_id]
        if isinstance(run, Exception):
            raise run
        return run


# --------------------------------------------------------------------------------------------
# Output downloads


@dataclass
class OutputServer:
    """An httpx MockTransport handler: answers by URL path, records every request."""

    routes: dict[str, Callable[[httpx.Request], httpx.Response] | httpx.Response] = field(
        default_factory=dict
    )
    requests: list[httpx.Request] = field(default_factory=list)

    def image(self, path: str, body: bytes, content_type: str = "image/png", **headers: str) -> None:
        self.routes[path] = httpx.Response(
            200, headers={"Content-Type": content_type, **headers}, content=body
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get(request.url.path)
        if route is None:
            return httpx.Response(404, text="no such output")
        return route(request) if callable(route) else route

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


def fake_resolver(table: Mapping[str, list[str]] | None = None) -> Callable[[str, int], list[str]]:
    """Every host resolves to PUBLIC_ADDRESS unless the table says otherwise."""

    def resolve(host: str, port: int) -> list[str]:
        return list((table or {}).get(host, [PUBLIC_ADDRESS]))

    return resolve


# --------------------------------------------------------------------------------------------
# Services


@dataclass
class World:
    services: Services
    store: FakeJobStore
    s3: FakeS3
    secrets: FakeSecrets
    runflow: FakeRunflow
    outputs: OutputServer
