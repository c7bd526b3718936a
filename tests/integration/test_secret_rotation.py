"""Rotating the callback signing secret and the Runflow API key, against the real SecretReader over
moto's Secrets Manager.

The README's rotation: store ``{"current": new, "previous": old}`` while Runflow still signs with the
old secret, promote the new one at Runflow. A running function must accept callbacks signed with
either, picking the new one up without a cold start: a signature that matches none of the secrets
held in memory reads them afresh, at most once per ``SIGNING_REFRESH_SECONDS`` (on the services'
clock, which these tests control), so a flood of forged callbacks costs a handful of reads, and a
malformed signature costs none.

A rotated Runflow API key reaches a warm Runflow client the same way: the first request refused
with 401 reads the key once afresh and is sent again with it; a key that did not change is final.

Reads are counted where they arrive: the reader's Secrets Manager client talks to moto through a
recording proxy, which logs every GetSecretValue it forwards.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import httpx
import pytest
from aws_lambda_powertools.utilities import parameters

from backdrop.callbacks import authenticate, handle_callback
from backdrop.config import load_settings
from backdrop.jobs import Job, Status, now_iso
from backdrop.runs import RunflowClient, RunflowRejected
from backdrop.secrets import SIGNING_REFRESH_SECONDS, SecretReader
from backdrop.services import Services
from backdrop_local.aws import Resources, client

OLD = "whsec_test_current"  # what the resources fixture stores as the current secret
NEW = "whsec_rotated_2f9c41d7"
OTHER = "whsec_not_ours_77e1"
BODY = b'{"event":"run.completed","run_id":"0193a1b2","status":"succeeded","metadata":{"job_id":"j-1"}}'
OTHER_BODY = b'{"event":"run.failed","run_id":"0193a1b3","status":"failed","metadata":{"job_id":"j-2"}}'


def signed(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class RecordingProxy(ThreadingHTTPServer):
    """Forwards every request to moto unchanged and logs the Secrets Manager operations."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.http = httpx.Client(trust_env=False, timeout=60.0)
        self.operations: list[tuple[str, str]] = []  # (X-Amz-Target, SecretId)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, target: str, body: bytes) -> None:
        try:
            secret_id = str(json.loads(body).get("SecretId", ""))
        except ValueError:
            secret_id = ""
        with self._lock:
            self.operations.append((target, secret_id))

    def reads(self, secret_id: str) -> int:
        with self._lock:
            return self.operations.count(("secretsmanager.GetSecretValue", secret_id))


_HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


class _Forward(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        proxy = cast(RecordingProxy, self.server)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        proxy.record(self.headers.get("X-Amz-Target", ""), body)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        answer = proxy.http.request(self.command, proxy.upstream + self.path, headers=headers, content=body)
        self.send_response(answer.status_code)
        for name, value in answer.headers.items():
            if name.lower() not in _HOP_BY_HOP | {"content-encoding"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def proxy(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingProxy]:
    server = RecordingProxy(aws_env)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    # Clients built from here on (Powertools' Secrets Manager client included) go through the proxy.
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    yield server
    server.shutdown()
    server.server_close()
    server.http.close()


@dataclass(frozen=True)
class _Secrets:
    """The one service authenticate() uses."""

    secrets: SecretReader


class Clock:
    """The services' clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reader(resources: Resources, proxy: RecordingProxy, clock: Clock) -> SecretReader:
    # Powertools caches per process: start every test cold, then never clear in the middle.
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    return SecretReader(
        api_key_secret=resources.api_key_secret,
        signing_secret=resources.callback_secret_name,
        max_age=300,
        clock=clock,
    )


@pytest.fixture
def store(resources: Resources) -> Any:
    """Writes go straight to moto, not through the proxy."""
    return client("secretsmanager", resources.endpoint_url, "us-east-1")


def services(reader: SecretReader) -> Services:
    return cast(Services, _Secrets(reader))


def rotate(store: Any, resources: Resources, current: str, previous: str) -> None:
    store.put_secret_value(
        SecretId=resources.callback_secret_name,
        SecretString=json.dumps({"current": current, "previous": previous}),
    )


def test_new_secret_is_accepted_after_one_fresh_read(
    reader: SecretReader, proxy: RecordingProxy, store: Any, resources: Resources, clock: Clock
) -> None:
    name = resources.callback_secret_name
    assert authenticate(BODY, signed(BODY, OLD), services(reader))
    assert proxy.reads(name) == 1  # the first callback fills the cache

    rotate(store, resources, NEW, OLD)
    assert reader.signing_secrets().all() == (OLD,)  # the cache still holds the old value
    assert proxy.reads(name) == 1

    # Runflow now signs with the new secret: the cached one does not match, so it is read again
    # (the last read being a refresh interval old).
    clock.now += SIGNING_REFRESH_SECONDS
    assert authenticate(BODY, signed(BODY, NEW), services(reader))
    assert proxy.reads(name) == 2
    # That read refreshed the cache: later callbacks cost nothing.
    assert authenticate(OTHER_BODY, signed(OTHER_BODY, NEW), services(reader))
    assert authenticate(BODY, signed(BODY, OLD), services(reader))  # the previous one, during rotation
    assert reader.signing_secrets().all() == (NEW, OLD)
    assert proxy.reads(name) == 2


def test_previous_secret_is_still_accepted(
    reader: SecretReader, proxy: RecordingProxy, store: Any, resources: Resources
) -> None:
    rotate(store, resources, NEW, OLD)
    assert authenticate(BODY, signed(BODY, OLD), services(reader))
    assert authenticate(BODY, signed(BODY, NEW), services(reader))
    assert authenticate(OTHER_BODY, signed(OTHER_BODY, OLD), services(reader))
    assert proxy.reads(resources.callback_secret_name) == 1  # all matched the first read


def test_body_signed_with_neither_secret_is_refused(
    reader: SecretReader, proxy: RecordingProxy, store: Any, resources: Resources, clock: Clock
) -> None:
    rotate(store, resources, NEW, OLD)
    assert authenticate(BODY, signed(BODY, NEW), services(reader))
    assert proxy.reads(resources.callback_secret_name) == 1

    # Within a refresh interval of the last read: refused without reading.
    assert not authenticate(BODY, signed(BODY, OTHER), services(reader))
    assert not authenticate(OTHER_BODY, signed(BODY, NEW), services(reader))  # signature of another body
    assert proxy.reads(resources.callback_secret_name) == 1
    # An interval later: one fresh read, then refused all the same.
    clock.now += SIGNING_REFRESH_SECONDS
    assert not authenticate(BODY, signed(BODY, OTHER), services(reader))
    assert proxy.reads(resources.callback_secret_name) == 2
    assert not authenticate(BODY, signed(BODY, OTHER), services(reader))
    assert proxy.reads(resources.callback_secret_name) == 2


@pytest.mark.parametrize(
    "signature",
    [
        signed(BODY, NEW).upper(),
        signed(BODY, NEW)[:63],
        signed(BODY, NEW) + "0",
        "sha256=" + signed(BODY, NEW),
        signed(BODY, NEW)[:63] + "z",
        "",
        None,
    ],
    ids=["uppercase", "63-chars", "65-chars", "sha256-prefix", "non-hex", "empty", "missing"],
)
def test_malformed_signature_costs_no_read(
    reader: SecretReader, proxy: RecordingProxy, store: Any, resources: Resources, signature: str | None
) -> None:
    assert authenticate(BODY, signed(BODY, OLD), services(reader))
    assert proxy.reads(resources.callback_secret_name) == 1
    # Even right after a rotation, when a well-formed signature of the new secret would be re-read.
    rotate(store, resources, NEW, OLD)
    for _ in range(3):
        assert not authenticate(BODY, signature, services(reader))
    assert proxy.reads(resources.callback_secret_name) == 1


def _callback_services(resources: Resources, reader: SecretReader, clock: Clock) -> Services:
    """The callback use case's services over moto (through the proxy), with the test's clock."""
    env = {
        "AWS_REGION": "us-east-1",
        "BACKDROP_JOBS_TABLE": resources.jobs_table,
        "BACKDROP_LEDGER_TABLE": resources.ledger_table,
        "BACKDROP_UPLOADS_BUCKET": resources.uploads_bucket,
        "BACKDROP_RESULTS_BUCKET": resources.results_bucket,
        "BACKDROP_CALLBACK_SECRET": resources.callback_secret_name,
        "BACKDROP_RUNFLOW_API_KEY_SECRET": resources.api_key_secret,
        "BACKDROP_COPY_QUEUE_URL": resources.copy_queue_url,
        "BACKDROP_ALLOWED_OUTPUT_HOSTS": "*.runflow.io",
    }
    return Services(load_settings(env), secrets=reader, clock=clock)


def _job_waiting_for_its_callback(services: Services, job_id: str, run_id: str) -> None:
    now = now_iso()
    services.jobs.claim(
        Job(
            job_id=job_id,
            status=Status.RECEIVED,
            source_bucket=services.settings.uploads_bucket,
            source_key=f"uploads/{job_id}.jpg",
            source_version_id="v1",
            color="255,255,255",
            created_at=now,
            updated_at=now,
        )
    )
    services.jobs.try_transition(job_id, Status.SUBMITTED, changes={"run_id": run_id})


def _completed(job_id: str, run_id: str) -> bytes:
    return json.dumps(
        {
            "event": "run.completed",
            "run_id": run_id,
            "status": "succeeded",
            "output": {"outputs": [{"url": f"https://cdn.runflow.io/{run_id}.png"}]},
            "duration_ms": 900,
            "created_at": None,
            "completed_at": None,
            "metadata": {"job_id": job_id},
        }
    ).encode()


def test_a_flood_of_forged_callbacks_costs_a_handful_of_reads_and_a_genuine_one_gets_through(
    reader: SecretReader, proxy: RecordingProxy, resources: Resources, clock: Clock
) -> None:
    services = _callback_services(resources, reader, clock)
    _job_waiting_for_its_callback(services, "job-genuine", "run-genuine")
    genuine = _completed("job-genuine", "run-genuine")
    # Well-formed envelopes for the same job, signed with a secret that is not ours.
    forged = [_completed("job-genuine", f"run-forged-{i}") for i in range(1000)]
    step = 0.1  # seconds between callbacks: the flood lasts 100 s on the services' clock

    answers: list[int] = []
    for i, body in enumerate(forged):
        if i == len(forged) // 2:
            answer = handle_callback(genuine, signed(genuine, OLD), services)
            assert (answer.status_code, answer.body.get("result")) == (200, "copy_queued"), answer
        answers.append(handle_callback(body, signed(body, OTHER), services).status_code)
        clock.now += step

    reads = proxy.reads(resources.callback_secret_name)
    print(f"forged callbacks: {len(forged)} over {len(forged) * step:.0f} s, signing secret reads: {reads}")
    assert answers == [401] * len(forged)
    # The first read, then at most one per refresh interval of the flood.
    assert reads <= 1 + math.ceil(len(forged) * step / SIGNING_REFRESH_SECONDS)
    job = services.jobs.get("job-genuine")
    assert job is not None and job.status is Status.COPYING and job.run_id == "run-genuine"


def test_a_rotated_secret_is_accepted_within_the_refresh_interval(
    reader: SecretReader, proxy: RecordingProxy, store: Any, resources: Resources, clock: Clock
) -> None:
    assert authenticate(BODY, signed(BODY, OLD), services(reader))  # secrets read and held
    clock.now += 5
    rotate(store, resources, NEW, OLD)
    rotated_at = clock.now
    # Runflow signs with the new secret from now on, and sends a callback every second.
    while not authenticate(BODY, signed(BODY, NEW), services(reader)):
        assert clock.now - rotated_at < SIGNING_REFRESH_SECONDS
        clock.now += 1
    print(f"rotated secret accepted {clock.now - rotated_at:.0f} s after the rotation")
    assert clock.now - rotated_at <= SIGNING_REFRESH_SECONDS
    assert proxy.reads(resources.callback_secret_name) == 2  # the first read and one refresh


# --- the Runflow API key ---------------------------------------------------------------------

OLD_KEY = "rf_live_test_key"  # what the resources fixture stores
NEW_KEY = "rf_live_rotated_9d31"


class KeyCheckingRunflow(ThreadingHTTPServer):
    """Answers GET /v1/runs/{id} for one accepted API key, 401 for any other, recording the keys."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Runs)
        self.accepted = OLD_KEY
        self.keys_seen: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Runs(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server = cast(KeyCheckingRunflow, self.server)
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        server.keys_seen.append(key)
        if key == server.accepted:
            status, body = 200, {"id": self.path.rsplit("/", 1)[-1], "status_code": "running"}
        else:
            status, body = (
                401,
                {"code": "UNAUTHORIZED", "message": "Missing or invalid token", "errors": None},
            )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def runflow() -> Iterator[KeyCheckingRunflow]:
    server = KeyCheckingRunflow()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def warm_client(reader: SecretReader, runflow: KeyCheckingRunflow) -> RunflowClient:
    """Built the way Services builds it: the key comes from the reader, per request."""
    return RunflowClient(
        runflow.url, lambda refresh: reader.api_key(refresh=refresh), http=httpx.Client(trust_env=False)
    )


def test_rotated_api_key_reaches_a_warm_client_with_one_fresh_read(
    reader: SecretReader, proxy: RecordingProxy, store: Any, resources: Resources, runflow: KeyCheckingRunflow
) -> None:
    rf = warm_client(reader, runflow)
    assert rf.get_run("0193a1b2").status == "running"
    assert proxy.reads(resources.api_key_secret) == 1

    # The operator stores a new key and Runflow revokes the old one; the client's cache still has it.
    store.put_secret_value(SecretId=resources.api_key_secret, SecretString=NEW_KEY)
    runflow.accepted = NEW_KEY
    assert rf.get_run("0193a1b3").status == "running"
    assert runflow.keys_seen == [OLD_KEY, OLD_KEY, NEW_KEY]
    assert proxy.reads(resources.api_key_secret) == 2

    # The cache now holds the new key: no more reads, no more refusals.
    assert rf.get_run("0193a1b4").status == "running"
    assert runflow.keys_seen[-1] == NEW_KEY
    assert proxy.reads(resources.api_key_secret) == 2


def test_wrong_api_key_that_was_not_rotated_is_refused_after_one_fresh_read(
    reader: SecretReader, proxy: RecordingProxy, resources: Resources, runflow: KeyCheckingRunflow
) -> None:
    runflow.accepted = NEW_KEY  # Runflow wants a key the secret does not hold
    rf = warm_client(reader, runflow)
    with pytest.raises(RunflowRejected) as info:
        rf.get_run("0193a1b2")
    assert (info.value.http_status, info.value.code) == (401, "UNAUTHORIZED")
    assert runflow.keys_seen == [OLD_KEY]  # never sent twice with the same key
    assert proxy.reads(resources.api_key_secret) == 2
