"""Hostile callbacks: validly signed, but naming output URLs that must never be fetched.

Each is refused before anything is fetched (or at the first hostile hop), recorded on the job with
the reason, and nothing lands in the results bucket. Runs the callback use case against moto.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from backdrop.callbacks import handle_callback
from backdrop.config import load_settings
from backdrop.jobs import Job, Status, now_iso
from backdrop.services import Services, build_services
from backdrop.signatures import sign
from backdrop_local.aws import Resources

SECRET = "whsec_test_current"  # what the resources fixture stores as the current signing secret


class Hostile(BaseHTTPRequestHandler):
    requests: list[str] = []  # noqa: RUF012 - shared log of what was fetched

    def do_GET(self) -> None:
        Hostile.requests.append(self.path)
        if self.path == "/redirect-loopback":
            self._redirect("http://127.0.0.1:1/secret")
        elif self.path == "/redirect-metadata":
            self._redirect("https://169.254.169.254/latest/meta-data/")
        elif self.path == "/html":
            self._send(b"<html>not an image</html>", "text/html")
        elif self.path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                return
        else:
            self._send(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png")

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
def hostile_origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Hostile.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def services(resources: Resources, hostile_origin: str) -> Services:
    env = {
        "AWS_REGION": "us-east-1",
        "BACKDROP_JOBS_TABLE": resources.jobs_table,
        "BACKDROP_IDEMPOTENCY_TABLE": resources.idempotency_table,
        "BACKDROP_UPLOADS_BUCKET": resources.uploads_bucket,
        "BACKDROP_RESULTS_BUCKET": resources.results_bucket,
        "BACKDROP_RUNFLOW_API_KEY_SECRET": resources.api_key_secret,
        "BACKDROP_CALLBACK_SECRET": resources.callback_secret_name,
        # IP literals on the list so that the address rule (not the list) is what refuses them.
        "BACKDROP_ALLOWED_OUTPUT_HOSTS": ",".join(
            ["*.runflow.io", "127.0.0.1", "169.254.169.254", "10.0.0.7", "192.168.1.20", "100.64.0.9"]
        ),
        "BACKDROP_INSECURE_OUTPUT_ORIGIN": hostile_origin,
        "BACKDROP_MAX_OUTPUT_BYTES": str(1024 * 1024),
        "BACKDROP_COPY_DEADLINE_SECONDS": "5",
    }
    return build_services(load_settings(env))


def _seed(services: Services, job_id: str) -> None:
    now = now_iso()
    services.jobs.claim(
        Job(
            job_id=job_id,
            status=Status.RECEIVED,
            source_bucket=services.settings.uploads_bucket,
            source_key=f"uploads/{job_id}.jpg",
            source_version="v:1",
            color="255,255,255",
            created_at=now,
            updated_at=now,
        )
    )
    services.jobs.transition(job_id, Status.SUBMITTED, changes={"run_id": f"run-{job_id}"})


def _callback(services: Services, job_id: str, url: str) -> int:
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
    return handle_callback(body, sign(body, SECRET), services).status_code


CASES = [
    ("loopback", "https://127.0.0.1/out.png", "OUTPUT_ADDRESS_FORBIDDEN"),
    ("metadata", "https://169.254.169.254/latest/meta-data/", "OUTPUT_ADDRESS_FORBIDDEN"),
    ("private10", "https://10.0.0.7/out.png", "OUTPUT_ADDRESS_FORBIDDEN"),
    ("private192", "https://192.168.1.20/out.png", "OUTPUT_ADDRESS_FORBIDDEN"),
    ("cgnat", "https://100.64.0.9/out.png", "OUTPUT_ADDRESS_FORBIDDEN"),
    ("plainhttp", "http://cdn.runflow.io/out.png", "OUTPUT_URL_INSECURE"),
    ("elsewhere", "https://attacker.example.com/out.png", "OUTPUT_HOST_NOT_ALLOWED"),
    ("redirloop", "{origin}/redirect-loopback", "OUTPUT_URL_INSECURE"),
    ("redirmeta", "{origin}/redirect-metadata", "OUTPUT_ADDRESS_FORBIDDEN"),
    ("html", "{origin}/html", "OUTPUT_NOT_IMAGE"),
    ("endless", "{origin}/endless", "OUTPUT_TOO_LARGE"),
]


@pytest.mark.parametrize(("name", "url", "code"), CASES, ids=[c[0] for c in CASES])
def test_hostile_output_url_is_refused_and_recorded(
    services: Services, hostile_origin: str, s3: Any, name: str, url: str, code: str
) -> None:
    job_id = f"hostile-{name}"
    _seed(services, job_id)
    assert _callback(services, job_id, url.format(origin=hostile_origin)) == 200
    job = services.jobs.get(job_id)
    assert job is not None and job.status is Status.FAILED and job.error_code == code, job
    assert job.error_message
    listed = s3.list_objects_v2(Bucket=services.settings.results_bucket).get("Contents", [])
    assert listed == []
    if not url.startswith("{origin}"):
        assert Hostile.requests == []  # refused before any request was made
    else:
        # Only the first hop was requested; the hostile target itself never was.
        assert Hostile.requests == [url.format(origin="").split("?")[0]]


def test_allowed_origin_output_is_copied(services: Services, hostile_origin: str, s3: Any) -> None:
    _seed(services, "fine")
    assert _callback(services, "fine", f"{hostile_origin}/ok.png") == 200
    job = services.jobs.get("fine")
    assert job is not None and job.status is Status.SUCCEEDED and job.result_keys == ["results/fine.png"]
    body = s3.get_object(Bucket=services.settings.results_bucket, Key="results/fine.png")["Body"].read()
    assert body.startswith(b"\x89PNG")
