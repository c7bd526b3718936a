"""Hostile callbacks: validly signed, but naming output URLs that must never be fetched.

Every refused URL below leads to the hostile server (plain HTTP on a loopback port): by a literal
loopback address in one of its spellings, by ``localhost``, by an allowed host name that resolves
to loopback, or by a redirect from the one allowed origin. Each is refused before any connection
is made (or at the first hostile hop), recorded on the job with the reason, and nothing lands in
the results bucket. The control tests run the same callbacks with the guard replaced by one that
lets everything through, and show the hostile server is then reached: the absence of connections
in the refusal tests is the guard's doing, not a wrong port. Runs the callback and copy use cases
against moto over HTTP.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

import pytest

import backdrop.outputs
from backdrop.callbacks import handle_callback
from backdrop.config import load_settings
from backdrop.copying import handle_copy_request
from backdrop.jobs import Job, Status, now_iso
from backdrop.outcomes import RetryLater
from backdrop.outputs import OutputPolicy, Resolver, Target, system_resolver
from backdrop.queues import CopyRequest
from backdrop.services import Services
from backdrop_local.aws import Resources

SECRET = "whsec_test_current"  # what the resources fixture stores as the current signing secret

# Allowed host names that resolve to loopback (an attacker-controlled DNS answer); every other
# name goes to the system resolver (``localhost`` and the IP spellings resolve to 127.0.0.1).
LOOPBACK_NAMES = {
    "cdn.runflow.io": ["127.0.0.1"],
    "mixed.runflow.io": ["127.0.0.1", "93.184.216.34"],
    "attacker.example.com": ["127.0.0.1"],
}


def resolver(host: str, port: int) -> list[str]:
    if host in LOOPBACK_NAMES:
        return list(LOOPBACK_NAMES[host])
    return system_resolver(host, port)


# Where the hostile server's redirects point (``{port}`` is its own port).
REDIRECTS = {
    "localhost": "http://localhost:{port}/secret",
    "loopback-https": "https://127.0.0.1:{port}/secret",
    "allowed-name": "https://cdn.runflow.io:{port}/secret",
    "mapped": "https://[::ffff:127.0.0.1]:{port}/secret",
    "credentials": "http://user:pw@127.0.0.1:{port}/secret",
}


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@functools.cache
def gzip_bomb() -> bytes:
    """64 MiB of zeros, gzip-compressed to about 64 KiB: one network read of it decodes to 64 MiB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31, 9, zlib.Z_RLE)  # RLE: fast on zeros
    zeros = PNG_SIGNATURE + b"\0" * (1 << 20)
    return b"".join([packer.compress(zeros) for _ in range(64)] + [packer.flush()])


def _head(*lines: str) -> bytes:
    return ("\r\n".join(["HTTP/1.1 200 OK", *lines, "Connection: close"]) + "\r\n\r\n").encode()


def _chunked_shorter_than_declared() -> bytes:
    # Framed by Transfer-Encoding (which wins over Content-Length), so the transport reads a
    # complete message of 108 bytes although 1000 were declared.
    body = PNG_SIGNATURE + b"\0" * 100
    framed = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    return _head("Content-Type: image/png", "Content-Length: 1000", "Transfer-Encoding: chunked") + framed


def _closed_before_declared_length() -> bytes:
    return _head("Content-Type: image/png", "Content-Length: 1000") + PNG_SIGNATURE + b"\0" * 100


def _gzip_bomb() -> bytes:
    bomb = gzip_bomb()
    return _head("Content-Type: image/png", "Content-Encoding: gzip", f"Content-Length: {len(bomb)}") + bomb


SVG_WITH_SCRIPT = (
    b'<svg xmlns="http://www.w3.org/2000/svg"><script>fetch("/steal?c="+document.cookie)</script></svg>'
)
HTML = b"<!doctype html><html><body><script>alert(document.domain)</script></body></html>"
# Answers written byte for byte (the status line and headers included).
RAW_ANSWERS: dict[str, Callable[[], bytes]] = {
    "/svg": lambda: (
        _head("Content-Type: image/svg+xml", f"Content-Length: {len(SVG_WITH_SCRIPT)}") + SVG_WITH_SCRIPT
    ),
    "/html-as-png": lambda: _head("Content-Type: image/png", f"Content-Length: {len(HTML)}") + HTML,
    "/short-chunked": _chunked_shorter_than_declared,
    "/short-closed": _closed_before_declared_length,
    "/gzip-bomb": _gzip_bomb,
}


class HostileServer(ThreadingHTTPServer):
    """Logs every TCP connection it accepts and what came over it (a GET, or a TLS handshake)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Hostile)
        self.connections: list[tuple[str, int]] = []  # client addresses, in accept order
        self.requests: list[str] = []
        self.accept_encodings: list[str | None] = []  # what each GET asked for
        self._sync_clients: set[tuple[str, int]] = set()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections.append(client_address)
        return True

    def sync(self) -> None:
        """Returns once every connection made before the call has been accepted and logged.

        Connections are accepted in the order they were made, one at a time, so once a connection
        made now has been served, all earlier ones have been logged. The sync connection itself is
        left out of the logs."""
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            self._sync_clients.add(sock.getsockname())
            sock.sendall(b"GET /__sync HTTP/1.0\r\n\r\n")
            while sock.recv(4096):
                pass
        self.connections = [c for c in self.connections if c not in self._sync_clients]

    def seen(self) -> tuple[int, list[str]]:
        """(connections, what came over them) up to now, after a sync."""
        self.sync()
        return len(self.connections), list(self.requests)


class Hostile(BaseHTTPRequestHandler):
    def handle(self) -> None:
        if self.connection.recv(1, socket.MSG_PEEK) == b"\x16":  # a TLS ClientHello
            cast(HostileServer, self.server).requests.append("TLS")
            return  # close: the client's handshake fails at once
        super().handle()

    def do_GET(self) -> None:
        server = cast(HostileServer, self.server)
        if self.path == "/__sync":
            self._send(b"", "text/plain")
            return
        server.requests.append(f"GET {self.path}")
        server.accept_encodings.append(self.headers.get("Accept-Encoding"))
        if self.path in RAW_ANSWERS:
            self.wfile.write(RAW_ANSWERS[self.path]())
            self.close_connection = True
        elif self.path.startswith("/redirect/"):
            self._redirect(REDIRECTS[self.path.removeprefix("/redirect/")].format(port=server.port))
        elif self.path == "/html":
            self._send(b"<html>not an image</html>", "text/html")
        elif self.path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                self.wfile.write(PNG_SIGNATURE)
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                return
        else:
            self._send(PNG_SIGNATURE + b"\0" * 100, "image/png")

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def services(resources: Resources, hostile: HostileServer) -> Services:
    env = {
        "AWS_REGION": "us-east-1",
        "BACKDROP_JOBS_TABLE": resources.jobs_table,
        "BACKDROP_IDEMPOTENCY_TABLE": resources.idempotency_table,
        "BACKDROP_UPLOADS_BUCKET": resources.uploads_bucket,
        "BACKDROP_RESULTS_BUCKET": resources.results_bucket,
        "BACKDROP_RUNFLOW_API_KEY_SECRET": resources.api_key_secret,
        "BACKDROP_CALLBACK_SECRET": resources.callback_secret_name,
        # Loopback spellings on the list, so that the address rule (not the list) is what refuses them.
        "BACKDROP_ALLOWED_OUTPUT_HOSTS": ",".join(
            [
                "*.runflow.io",
                "127.0.0.1",
                "localhost",
                "::ffff:127.0.0.1",
                "2130706433",
                "0x7f000001",
                "127.1",
            ]
        ),
        "BACKDROP_INSECURE_OUTPUT_ORIGIN": hostile.origin,
        "BACKDROP_MAX_OUTPUT_BYTES": str(1024 * 1024),
        "BACKDROP_LEDGER_TABLE": resources.ledger_table,
        "BACKDROP_COPY_QUEUE_URL": resources.copy_queue_url,
    }
    # Output copies resolve names through the resolver above (the use cases' DNS seam).
    return Services(load_settings(env), resolve=resolver)


def _seed(services: Services, job_id: str) -> None:
    """A real upload and its job, waiting for its run's callback."""
    now = now_iso()
    key = f"uploads/{job_id}.jpg"
    bucket = services.settings.uploads_bucket
    answer = services.s3.put_object(Bucket=bucket, Key=key, Body=b"\xff\xd8\xff\xe0")
    services.jobs.claim(
        Job(
            job_id=job_id,
            status=Status.RECEIVED,
            source_bucket=services.settings.uploads_bucket,
            source_key=key,
            source_version_id=answer["VersionId"],
            color="255,255,255",
            created_at=now,
            updated_at=now,
        )
    )
    services.jobs.try_transition(job_id, Status.SUBMITTED, changes={"run_id": f"run-{job_id}"})


def _callback(services: Services, job_id: str, url: str) -> int:
    """Runflow's signed callback, then the copy worker's turn at the copy it queued."""
    body = json.dumps(
        {
            "event": "run.completed",
            "run_id": f"run-{job_id}",
            "status": "succeeded",
            "output": {"outputs": [{"url": url}], "seed": None, "timing": None, "nsfw_detected": None},
            "duration_ms": 10,
            "created_at": None,
            "completed_at": None,
            "metadata": {"job_id": job_id},
        }
    ).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    answer = handle_callback(body, signature, services)
    assert answer.body.get("result") == "copy_queued", answer
    with contextlib.suppress(RetryLater):  # a fetch that failed for now (the controls) is retried later
        handle_copy_request(CopyRequest(job_id, f"run-{job_id}"), services, deadline=time.monotonic() + 30)
    return answer.status_code


def _url(template: str, hostile: HostileServer) -> str:
    url = template.format(port=hostile.port)
    return hostile.origin + url if url.startswith("/") else url


def _results(services: Services, s3: Any) -> list[Any]:
    listed: list[Any] = s3.list_objects_v2(Bucket=services.settings.results_bucket).get("Contents", [])
    return listed


# (name, URL, code the guard refuses it with, what reaches the hostile server without the guard)
DIRECT = [
    ("loopback-https", "https://127.0.0.1:{port}/out.png", "OUTPUT_ADDRESS_FORBIDDEN", "TLS"),
    ("localhost-https", "https://localhost:{port}/out.png", "OUTPUT_ADDRESS_FORBIDDEN", "TLS"),
    ("mapped-https", "https://[::ffff:127.0.0.1]:{port}/out.png", "OUTPUT_ADDRESS_FORBIDDEN", "TLS"),
    ("decimal-https", "https://2130706433:{port}/out.png", "OUTPUT_ADDRESS_FORBIDDEN", "TLS"),
    ("hex-https", "https://0x7f000001:{port}/out.png", "OUTPUT_ADDRESS_FORBIDDEN", "TLS"),
    ("short-https", "https://127.1:{port}/out.png", "OUTPUT_ADDRESS_FORBIDDEN", "TLS"),
    ("name-to-loopback", "https://cdn.runflow.io:{port}/out.png", "OUTPUT_ADDRESS_FORBIDDEN", "TLS"),
    ("one-answer-loopback", "https://mixed.runflow.io:{port}/out.png", "OUTPUT_ADDRESS_FORBIDDEN", "TLS"),
    ("localhost-http", "http://localhost:{port}/out.png", "OUTPUT_URL_INSECURE", "GET /out.png"),
    ("mapped-http", "http://[::ffff:127.0.0.1]:{port}/out.png", "OUTPUT_URL_INSECURE", "GET /out.png"),
    ("decimal-http", "http://2130706433:{port}/out.png", "OUTPUT_URL_INSECURE", "GET /out.png"),
    ("allowed-name-http", "http://cdn.runflow.io:{port}/out.png", "OUTPUT_URL_INSECURE", "GET /out.png"),
    ("not-allowed", "https://attacker.example.com:{port}/out.png", "OUTPUT_HOST_NOT_ALLOWED", "TLS"),
    ("credentials", "http://user:pw@127.0.0.1:{port}/out.png", "OUTPUT_URL_INVALID", "GET /out.png"),
]
# The first hop is the allowed origin; it redirects to REDIRECTS[name].
REDIRECTED = [
    ("localhost", "OUTPUT_URL_INSECURE", "GET /secret"),
    ("loopback-https", "OUTPUT_ADDRESS_FORBIDDEN", "TLS"),
    ("allowed-name", "OUTPUT_ADDRESS_FORBIDDEN", "TLS"),
    ("mapped", "OUTPUT_ADDRESS_FORBIDDEN", "TLS"),
    ("credentials", "OUTPUT_URL_INVALID", "GET /secret"),
]


def _refused_and_recorded(services: Services, s3: Any, job_id: str, url: str, code: str) -> None:
    _seed(services, job_id)
    assert _callback(services, job_id, url) == 200
    job = services.jobs.get(job_id)
    assert job is not None and job.status is Status.FAILED and job.error_code == code, job
    assert job.error_message
    assert _results(services, s3) == []


@pytest.mark.parametrize(("name", "url", "code", "unguarded"), DIRECT, ids=[c[0] for c in DIRECT])
def test_hostile_output_url_is_refused_before_any_connection(
    services: Services, hostile: HostileServer, s3: Any, name: str, url: str, code: str, unguarded: str
) -> None:
    _refused_and_recorded(services, s3, f"hostile-{name}", _url(url, hostile), code)
    assert hostile.seen() == (0, [])


@pytest.mark.parametrize(("name", "code", "unguarded"), REDIRECTED, ids=[c[0] for c in REDIRECTED])
def test_redirect_to_hostile_target_is_refused_at_that_hop(
    services: Services, hostile: HostileServer, s3: Any, name: str, code: str, unguarded: str
) -> None:
    _refused_and_recorded(services, s3, f"redirect-{name}", f"{hostile.origin}/redirect/{name}", code)
    # Only the first hop was requested; the hostile target itself never was.
    assert hostile.seen() == (1, [f"GET /redirect/{name}"])


def _let_everything_through(url: str, policy: OutputPolicy, resolve: Resolver = system_resolver) -> Target:
    """What check_url would answer if it had no rules: the URL, pinned to its first address."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return Target(url=url, host=host, address=resolve(host, parts.port or 443)[0])


@pytest.mark.parametrize(("name", "url", "code", "unguarded"), DIRECT, ids=[c[0] for c in DIRECT])
def test_control_without_the_guard_the_url_reaches_the_hostile_server(
    services: Services,
    hostile: HostileServer,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    url: str,
    code: str,
    unguarded: str,
) -> None:
    monkeypatch.setattr(backdrop.outputs, "check_url", _let_everything_through)
    job_id = f"unguarded-{name}"
    _seed(services, job_id)
    _callback(services, job_id, _url(url, hostile))
    assert hostile.seen() == (1, [unguarded])
    job = services.jobs.get(job_id)
    assert job is not None and job.error_code != code


@pytest.mark.parametrize(("name", "code", "unguarded"), REDIRECTED, ids=[c[0] for c in REDIRECTED])
def test_control_without_the_guard_the_redirect_reaches_the_hostile_server(
    services: Services,
    hostile: HostileServer,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    code: str,
    unguarded: str,
) -> None:
    monkeypatch.setattr(backdrop.outputs, "check_url", _let_everything_through)
    job_id = f"unguarded-redirect-{name}"
    _seed(services, job_id)
    _callback(services, job_id, f"{hostile.origin}/redirect/{name}")
    assert hostile.seen() == (2, [f"GET /redirect/{name}", unguarded])


@pytest.mark.parametrize(
    ("path", "code"),
    [("/html", "OUTPUT_NOT_IMAGE"), ("/endless", "OUTPUT_TOO_LARGE")],
    ids=["html", "endless"],
)
def test_allowed_origin_with_a_bad_answer_is_refused(
    services: Services, hostile: HostileServer, s3: Any, path: str, code: str
) -> None:
    _refused_and_recorded(services, s3, f"bad-answer-{path[1:]}", hostile.origin + path, code)
    assert hostile.seen() == (1, [f"GET {path}"])


def test_allowed_origin_output_is_copied(services: Services, hostile: HostileServer, s3: Any) -> None:
    _seed(services, "fine")
    assert _callback(services, "fine", f"{hostile.origin}/ok.png") == 200
    job = services.jobs.get("fine")
    assert (
        job is not None
        and job.status is Status.SUCCEEDED
        and job.result_keys == ["results/fine.jpg/result.png"]
    )
    got = s3.get_object(Bucket=services.settings.results_bucket, Key="results/fine.jpg/result.png")
    assert got["ContentType"] == "image/png"
    body = got["Body"].read()
    assert body == b"\x89PNG\r\n\x1a\n" + b"\0" * 100
    assert hostile.seen() == (1, ["GET /ok.png"])


# --- what is stored is an image, and whole --------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/svg", "/html-as-png"], ids=["svg-with-script-as-svg", "html-labelled-png"]
)
def test_only_png_jpeg_or_webp_bytes_are_stored(
    services: Services, hostile: HostileServer, s3: Any, path: str
) -> None:
    _refused_and_recorded(services, s3, f"not-image-{path[1:]}", hostile.origin + path, "OUTPUT_NOT_IMAGE")
    assert hostile.seen() == (1, [f"GET {path}"])


@pytest.mark.parametrize("path", ["/short-chunked", "/short-closed"])
def test_body_shorter_than_declared_is_a_retryable_copy_failure(
    services: Services, hostile: HostileServer, s3: Any, path: str
) -> None:
    job_id = f"short-{path[1:]}"
    _seed(services, job_id)
    assert _callback(services, job_id, hostile.origin + path) == 200
    job = services.jobs.get(job_id)
    assert job is not None and job.status is Status.COPYING, job
    assert job.error_code == "COPY_FAILED" and job.retryable_errors == 1
    assert _results(services, s3) == []
    # No multipart upload was left behind either.
    assert s3.list_multipart_uploads(Bucket=services.settings.results_bucket).get("Uploads", []) == []


def test_gzip_bomb_is_refused_unread(services: Services, hostile: HostileServer, s3: Any) -> None:
    gzip_bomb()  # built before the measurement
    _seed(services, "bomb")
    tracemalloc.start()
    try:
        assert _callback(services, "bomb", f"{hostile.origin}/gzip-bomb") == 200
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The callback and the copy allocate about 11 MiB (clients included); one decoded read of the
    # bomb alone is 64 MiB.
    print(f"gzip bomb: peak traced memory {peak / 2**20:.1f} MiB")
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    job = services.jobs.get("bomb")
    assert job is not None and job.status is Status.FAILED and job.error_code == "OUTPUT_ENCODED", job
    assert hostile.accept_encodings == ["identity"]
    assert _results(services, s3) == []
