"""Rotating the callback signing secret and the Runflow API key, against the real SecretReader over
moto's Secrets Manager.

The README's rotation: store ``{"current": new, "previous": old}`` while Runflow still signs with the
old secret, promote the new one at Runflow. A running function must accept callbacks signed with
either, picking the new one up without a cold start: a signature that matches none of the cached
secrets costs exactly one fresh read, and a malformed one costs none.

A rotated Runflow API key reaches a warm Runflow client the same way: the first request refused
with 401 reads the key once afresh and is sent again with it; a key that did not change is final.

Reads are counted where they arrive: the reader's Secrets Manager client talks to moto through a
recording proxy, which logs every GetSecretValue it forwards.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import httpx
import pytest
from aws_lambda_powertools.utilities import parameters

from backdrop.callbacks import authenticate
from backdrop.runs import RunflowClient, RunflowRejected
from backdrop.secrets import SecretReader
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


@pytest.fixture
def reader(resources: Resources, proxy: RecordingProxy) -> SecretReader:
    # Powertools caches per process: start every test cold, then never clear in the middle.
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    return SecretReader(
        api_key_secret=resources.api_key_secret, signing_secret=resources.callback_secret_name, max_age=300
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
    reader: SecretReader, proxy: RecordingProxy, store: Any, resources: Resources
) -> None:
    name = resources.callback_secret_name
    assert authenticate(BODY, signed(BODY, OLD), services(reader))
    assert proxy.reads(name) == 1  # the first callback fills the cache

    rotate(store, resources, NEW, OLD)
    assert reader.signing_secrets().all() == (OLD,)  # the cache still holds the old value
    assert proxy.reads(name) == 1

    # Runflow now signs with the new secret: the cached one does not match, so it is read again.
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
    reader: SecretReader, proxy: RecordingProxy, store: Any, resources: Resources
) -> None:
    rotate(store, resources, NEW, OLD)
    assert authenticate(BODY, signed(BODY, NEW), services(reader))
    assert proxy.reads(resources.callback_secret_name) == 1

    assert not authenticate(BODY, signed(BODY, OTHER), services(reader))
    assert proxy.reads(resources.callback_secret_name) == 2  # one fresh read, then refused
    assert not authenticate(OTHER_BODY, signed(BODY, NEW), services(reader))  # signature of another body
    assert proxy.reads(resources.callback_secret_name) == 3


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
