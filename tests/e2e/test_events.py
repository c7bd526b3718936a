"""Every file in events/ invoked through its built handler, in a fresh process with only Lambda's
layout on the path (function folder, the layer's python/, the runtime's boto3), against moto and
the local Runflow over HTTP. This is also the packaging test: a missing module fails here."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer
from PIL import Image

from backdrop.signatures import verify
from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Resources, client, provision, scan_items
from backdrop_local.lambdas import LocalFunction, runtime_dir
from backdrop_local.runflow import LocalRunflow
from backdrop_local.template import Template

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
# Documented in the README: the secret the sample callback events are signed with.
SAMPLE_SECRET = "whsec_backdrop_sample_secret_not_for_production"
API_KEY = "rf_live_events_test"
OUTPUT_ORIGIN = "http://127.0.0.1:47823"  # where events/callback-run-completed.json says the output is


def event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return loaded


def image_bytes(fmt: str, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def test_every_event_file_is_covered() -> None:
    covered = {
        "submit-s3-put.json",
        "submit-s3-put-encoded-key.json",
        "callback-run-completed.json",
        "callback-run-failed.json",
        "callback-forged-signature.json",
        "reconcile-schedule.json",
    }
    assert {p.name for p in EVENTS.glob("*.json")} == covered


@pytest.mark.parametrize("name", ["callback-run-completed.json", "callback-run-failed.json"])
def test_callback_events_are_signed_with_the_sample_secret(name: str) -> None:
    ev = event(name)
    assert verify(ev["body"].encode(), ev["headers"]["runflow-signature"], [SAMPLE_SECRET])


@pytest.fixture(scope="module")
def world(moto_endpoint: str) -> Iterator[tuple[Template, Resources, LocalRunflow]]:
    template = Template(ROOT / "template.yaml", stack_name="backdrop", region="us-east-1")
    resources = provision(template, moto_endpoint, api_key=API_KEY, callback_secret=SAMPLE_SECRET)
    runflow = LocalRunflow(
        host="127.0.0.1", port=0, api_keys=frozenset({API_KEY}), allow_http_origins=(moto_endpoint,)
    )
    runflow.start()
    yield template, resources, runflow
    runflow.stop()


@pytest.fixture(scope="module")
def functions(
    built: Path,
    world: tuple[Template, Resources, LocalRunflow],
    moto_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, LocalFunction]]:
    template, _resources, runflow = world
    state = tmp_path_factory.mktemp("lambda")
    runtime = runtime_dir(state / "runtime")
    made: dict[str, LocalFunction] = {}
    for logical in template.functions():
        spec = template.function(logical)
        env = {
            **spec.environment,
            "AWS_ENDPOINT_URL": moto_endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": "us-east-1",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "BACKDROP_RUNFLOW_BASE_URL": runflow.url,
            "BACKDROP_INSECURE_OUTPUT_ORIGIN": OUTPUT_ORIGIN,
        }
        if spec.environment.get("BACKDROP_CALLBACK_URL"):
            env["BACKDROP_CALLBACK_URL"] = "http://127.0.0.1:9/runflow/callback"
        made[logical] = LocalFunction(
            logical,
            handler=spec.handler,
            paths=[built / logical, built / "CoreLayer" / "python", runtime],
            env=env,
            timeout=spec.timeout,
            max_concurrency=1,
            log_path=state / f"{logical}.log",
        )
    yield made
    for function in made.values():
        function.close()


def job_item(resources: Resources, job_id: str) -> dict[str, Any]:
    raw = (
        client("dynamodb", resources.endpoint_url, "us-east-1")
        .get_item(TableName=resources.jobs_table, Key={"job_id": {"S": job_id}}, ConsistentRead=True)
        .get("Item", {})
    )
    deserializer = TypeDeserializer()
    return {k: deserializer.deserialize(v) for k, v in raw.items()}


def jobs_for_key(resources: Resources, key: str) -> list[dict[str, Any]]:
    items = scan_items(client("dynamodb", resources.endpoint_url, "us-east-1"), resources.jobs_table)
    return [i for i in items if i["source_key"] == key]


def test_submit_event_creates_exactly_one_run(
    functions: dict[str, LocalFunction], world: tuple[Template, Resources, LocalRunflow]
) -> None:
    _template, resources, runflow = world
    s3 = client("s3", resources.endpoint_url, "us-east-1")
    s3.put_object(Bucket=resources.uploads_bucket, Key="uploads/samples/coffee.jpg", Body=image_bytes("JPEG"))
    first = functions["SubmitFunction"].invoke(event("submit-s3-put.json"))
    assert first.ok, first.error_message
    assert first.payload == {"batchItemFailures": []}
    [job] = jobs_for_key(resources, "uploads/samples/coffee.jpg")
    assert job["status"] == "submitted" and job["run_id"]
    assert job["color"] == "255,255,255"
    # S3 delivers at least once: the same event again bills nothing.
    again = functions["SubmitFunction"].invoke(event("submit-s3-put.json"))
    assert again.ok and again.payload == {"batchItemFailures": []}
    assert len(jobs_for_key(resources, "uploads/samples/coffee.jpg")) == 1
    assert runflow.stats()["runs_created"] == 1


def test_submit_event_with_an_encoded_key(
    functions: dict[str, LocalFunction], world: tuple[Template, Resources, LocalRunflow]
) -> None:
    _template, resources, _runflow = world
    key = "uploads/summer sale/red shoe (1).png"
    client("s3", resources.endpoint_url, "us-east-1").put_object(
        Bucket=resources.uploads_bucket,
        Key=key,
        Body=image_bytes("PNG"),
        Metadata={"background-color": "#1E90FF"},
    )
    result = functions["SubmitFunction"].invoke(event("submit-s3-put-encoded-key.json"))
    assert result.ok and result.payload == {"batchItemFailures": []}
    [job] = jobs_for_key(resources, key)
    assert job["status"] == "submitted" and job["color"] == "30,144,255"


def _seed_submitted_job(resources: Resources, ev: dict[str, Any]) -> str:
    body = json.loads(ev["body"])
    job_id = body["metadata"]["job_id"]
    client("dynamodb", resources.endpoint_url, "us-east-1").put_item(
        TableName=resources.jobs_table,
        Item={
            "job_id": {"S": job_id},
            "status": {"S": "submitted"},
            "source_bucket": {"S": resources.uploads_bucket},
            "source_key": {"S": "uploads/samples/coffee.jpg"},
            "source_version": {"S": "v:example"},
            "color": {"S": "255,255,255"},
            "run_id": {"S": body["run_id"]},
            "created_at": {"S": "2026-11-24T10:01:37.000Z"},
            "updated_at": {"S": "2026-11-24T10:01:37.000Z"},
            "open_shard": {"S": "open"},
            "attempts": {"N": "0"},
        },
    )
    return str(job_id)


class _OutputHandler(BaseHTTPRequestHandler):
    png = image_bytes("PNG", (255, 255, 255))

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args: Any) -> None:
        pass


def test_callback_completed_event_copies_the_output(
    functions: dict[str, LocalFunction], world: tuple[Template, Resources, LocalRunflow]
) -> None:
    _template, resources, _runflow = world
    ev = event("callback-run-completed.json")
    job_id = _seed_submitted_job(resources, ev)
    server = ThreadingHTTPServer(("127.0.0.1", 47823), _OutputHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = functions["CallbackFunction"].invoke(ev)
    finally:
        server.shutdown()
        server.server_close()
    assert result.ok, result.error_message
    assert result.payload["statusCode"] == 200, result.payload
    job = job_item(resources, job_id)
    assert job["status"] == "succeeded" and job["result_keys"] == ["results/samples/coffee.png"]
    obj = client("s3", resources.endpoint_url, "us-east-1").get_object(
        Bucket=resources.results_bucket, Key="results/samples/coffee.png"
    )
    assert obj["Body"].read() == _OutputHandler.png
    assert obj["Metadata"]["job-id"] == job_id and obj["ContentType"] == "image/png"


def test_callback_failed_event_records_runflow_failure(
    functions: dict[str, LocalFunction], world: tuple[Template, Resources, LocalRunflow]
) -> None:
    _template, resources, _runflow = world
    ev = event("callback-run-failed.json")
    job_id = _seed_submitted_job(resources, ev)
    result = functions["CallbackFunction"].invoke(ev)
    assert result.ok and result.payload["statusCode"] == 200
    job = job_item(resources, job_id)
    assert job["status"] == "failed" and job["error_code"] == "INPUT_FETCH_FAILED"
    assert "HTTP 403" in job["error_message"]


def test_forged_callback_event_is_refused_and_changes_nothing(
    functions: dict[str, LocalFunction], world: tuple[Template, Resources, LocalRunflow]
) -> None:
    _template, resources, _runflow = world
    ev = event("callback-forged-signature.json")
    job_id = _seed_submitted_job(resources, ev)
    before = job_item(resources, job_id)
    result = functions["CallbackFunction"].invoke(ev)
    assert result.ok and result.payload["statusCode"] == 401
    assert job_item(resources, job_id) == before


def test_reconcile_schedule_event(functions: dict[str, LocalFunction]) -> None:
    result = functions["ReconcileFunction"].invoke(event("reconcile-schedule.json"))
    assert result.ok, result.error_message
    assert isinstance(result.payload, dict) and "examined" in result.payload
