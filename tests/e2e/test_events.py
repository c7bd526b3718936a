"""Every file in events/ invoked through its built handler, in a fresh process with only Lambda's
layout on the path (function folder, the layer's python/, the runtime's boto3), against moto and
the local Runflow over HTTP. This is also the packaging test: a missing module fails here."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote_plus

import pytest
from boto3.dynamodb.types import TypeDeserializer

from backdrop_local import iampolicies
from backdrop_local.aws import SECRET_ACCESS_KEY, Resources, client, provision, scan_items
from backdrop_local.iamrecord import function_access_key
from backdrop_local.lambdas import LocalFunction, runtime_dir
from backdrop_local.runflow import LocalRunflow
from backdrop_local.template import Template
from tests.support.images import solid

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
# Documented in the README: the secret the sample callback events are signed with.
SAMPLE_SECRET = "whsec_backdrop_sample_secret_not_for_production"
# HMAC-SHA256 of the body of events/callback-run-completed.json under the sample secret (the event's
# runflow-signature header), computed once with `openssl dgst -sha256 -hmac`.
SAMPLE_SIGNATURE = "0d72cb1add8c8f3350a0f20b4f1af382b553c9f393d4fe4c7f057dd9f2af1eb1"
API_KEY = "rf_live_events_test"
EVENT_OUTPUT_ORIGIN = "http://127.0.0.1:47823"  # where events/callback-run-completed.json says the output is
COFFEE_RESULT = "results/samples/coffee.jpg/result.png"  # the result of the events' upload


def event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return loaded


def image_bytes(fmt: str, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    return solid(fmt, (64, 48), colour)


def runflow_signature(body: bytes) -> str:
    """What Runflow puts in Runflow-Signature: lowercase hex HMAC-SHA256 of the raw body."""
    return hmac.new(SAMPLE_SECRET.encode("utf-8"), body, hashlib.sha256).hexdigest()


def raw_body(ev: dict[str, Any]) -> bytes:
    body: str = ev["body"]
    return base64.b64decode(body, validate=True) if ev["isBase64Encoded"] else body.encode("utf-8")


def with_body(ev: dict[str, Any], body: bytes, signature: str | None = None) -> dict[str, Any]:
    """The event carrying ``body`` (encoded as the event encodes bodies), signed by the sample secret."""
    changed = copy.deepcopy(ev)
    changed["body"] = (
        base64.b64encode(body).decode("ascii") if ev["isBase64Encoded"] else body.decode("utf-8")
    )
    changed["headers"]["content-length"] = str(len(body))
    changed["headers"]["runflow-signature"] = runflow_signature(body) if signature is None else signature
    return changed


def pointed_at(ev: dict[str, Any], origin: str) -> dict[str, Any]:
    """The signed callback event with its output URL moved to ``origin``, signed again."""
    body = raw_body(ev)
    assert body.count(EVENT_OUTPUT_ORIGIN.encode()) == 1
    return with_body(ev, body.replace(EVENT_OUTPUT_ORIGIN.encode(), origin.encode()))


def test_every_event_file_is_covered() -> None:
    covered = {
        "submit-s3-put.json",
        "submit-s3-put-encoded-key.json",
        "callback-run-completed.json",
        "callback-run-completed-base64.json",
        "callback-run-failed.json",
        "callback-forged-signature.json",
        "callback-sam-generated.json",
        "reconcile-schedule.json",
        "copy-request.json",
    }
    assert {p.name for p in EVENTS.glob("*.json")} == covered


@pytest.mark.parametrize(
    "name",
    [
        "callback-run-completed.json",
        "callback-run-completed-base64.json",
        "callback-run-failed.json",
        "callback-sam-generated.json",
    ],
)
def test_callback_events_are_signed_with_the_sample_secret(name: str) -> None:
    ev = event(name)
    assert ev["headers"]["runflow-signature"] == runflow_signature(raw_body(ev))
    assert ev["headers"].get("content-length", str(len(raw_body(ev)))) == str(len(raw_body(ev)))


def test_sam_generated_event_is_sams_own_with_runflows_headers_added() -> None:
    """What `sam local generate-event apigateway http-api-proxy --path runflow/callback --body
    BODY` prints today (routeKey `$default`, the body base64-encoded), plus the headers Runflow
    sends; the body is the completed callback's."""
    ev = event("callback-sam-generated.json")
    body = raw_body(event("callback-run-completed.json")).decode("utf-8")
    made = subprocess.run(
        [
            str(Path(sys.executable).with_name("sam")),
            *("local", "generate-event", "apigateway", "http-api-proxy"),
            *("--path", "runflow/callback", "--body", body),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
        check=True,
    )
    generated = json.loads(made.stdout)
    added = {"content-type", "runflow-request-id", "runflow-signature"}
    assert {k: v for k, v in ev["headers"].items() if k not in added} == generated["headers"]
    assert {k: v for k, v in ev.items() if k != "headers"} == {
        k: v for k, v in generated.items() if k != "headers"
    }
    assert ev["routeKey"] == ev["requestContext"]["routeKey"] == "$default"
    assert raw_body(ev) == body.encode("utf-8")


def test_the_signature_computation_matches_the_documented_vector() -> None:
    assert runflow_signature(event("callback-run-completed.json")["body"].encode()) == SAMPLE_SIGNATURE


def test_base64_event_is_the_completed_callback_as_http_api_delivers_binary_bodies() -> None:
    text, binary = event("callback-run-completed.json"), event("callback-run-completed-base64.json")
    assert binary["isBase64Encoded"] is True and text["isBase64Encoded"] is False
    assert binary["headers"]["content-type"] == "application/octet-stream"
    assert raw_body(binary) == raw_body(text)
    assert binary["headers"]["runflow-signature"] == text["headers"]["runflow-signature"] == SAMPLE_SIGNATURE


class OutputServer(ThreadingHTTPServer):
    """Where the callbacks' outputs are: a PNG at any path, on a free loopback port."""

    daemon_threads = True
    png = image_bytes("PNG", (255, 255, 255))

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OutputHandler)
        self.paths: list[str] = []

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _OutputHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server = cast(OutputServer, self.server)
        server.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(server.png)))
        self.end_headers()
        self.wfile.write(server.png)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def outputs() -> Iterator[OutputServer]:
    server = OutputServer()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def world(moto_endpoint: str, iam_record_dir: Path) -> Iterator[tuple[Template, Resources, LocalRunflow]]:
    template = Template(ROOT / "template.yaml", stack_name="backdrop", region="us-east-1")
    resources = provision(template, moto_endpoint, api_key=API_KEY, callback_secret=SAMPLE_SECRET)
    # The functions' calls are judged against their roles at the end of the session.
    iampolicies.write(template, iampolicies.stack_refs(template, resources), iam_record_dir)
    runflow = LocalRunflow(
        host="127.0.0.1", port=0, api_keys=frozenset({API_KEY}), allow_http_origins=(moto_endpoint,)
    )
    runflow.start()
    yield template, resources, runflow
    runflow.stop()


@pytest.fixture(scope="module")
def lambda_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lambda")


def _function(
    logical: str,
    template: Template,
    built: Path,
    state: Path,
    env: dict[str, str],
    *,
    log_name: str | None = None,
) -> LocalFunction:
    spec = template.function(logical)
    full = {
        **spec.environment,
        "AWS_ACCESS_KEY_ID": function_access_key(template.stack_name, logical),
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        **env,
    }
    if spec.environment.get("BACKDROP_CALLBACK_URL"):
        full["BACKDROP_CALLBACK_URL"] = "http://127.0.0.1:9/runflow/callback"
    return LocalFunction(
        logical,
        handler=spec.handler,
        paths=[built / logical, built / "CoreLayer" / "python", runtime_dir(state / "runtime")],
        env=full,
        timeout=spec.timeout,
        max_concurrency=1,
        log_path=state / f"{log_name or logical}.log",
    )


@pytest.fixture(scope="module")
def functions(
    built: Path,
    world: tuple[Template, Resources, LocalRunflow],
    outputs: OutputServer,
    moto_endpoint: str,
    lambda_state: Path,
) -> Iterator[dict[str, LocalFunction]]:
    template, _resources, runflow = world
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "BACKDROP_RUNFLOW_BASE_URL": runflow.url,
        "BACKDROP_INSECURE_OUTPUT_ORIGIN": outputs.origin,
    }
    made = {
        logical: _function(logical, template, built, lambda_state, env) for logical in template.functions()
    }
    yield made
    for function in made.values():
        function.close()


@pytest.fixture(scope="module")
def submit_without_runflow(
    built: Path, world: tuple[Template, Resources, LocalRunflow], moto_endpoint: str, lambda_state: Path
) -> Iterator[LocalFunction]:
    """The submit function while Runflow is unreachable: its address refuses connections (a port
    held bound, never listening), and one attempt is all it makes."""
    template, _resources, _runflow = world
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        env = {
            "AWS_ENDPOINT_URL": moto_endpoint,
            "BACKDROP_RUNFLOW_BASE_URL": f"http://127.0.0.1:{closed.getsockname()[1]}",
            "BACKDROP_SUBMIT_RETRY_BUDGET_SECONDS": "0",
        }
        function = _function(
            "SubmitFunction", template, built, lambda_state, env, log_name="SubmitFunction-no-runflow"
        )
        yield function
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
    runs_before = runflow.stats()["runs_created"]
    s3 = client("s3", resources.endpoint_url, "us-east-1")
    key = "uploads/samples/coffee.webp"
    s3.put_object(Bucket=resources.uploads_bucket, Key=key, Body=image_bytes("WEBP"))
    first = functions["SubmitFunction"].invoke(event("submit-s3-put.json"))
    assert first.ok, first.error_message
    assert first.payload == {"batchItemFailures": []}
    [job] = jobs_for_key(resources, "uploads/samples/coffee.webp")
    assert job["status"] == "submitted" and job["run_id"]
    assert job["color"] == "255,255,255"
    # S3 delivers at least once: the same event again bills nothing.
    again = functions["SubmitFunction"].invoke(event("submit-s3-put.json"))
    assert again.ok and again.payload == {"batchItemFailures": []}
    assert len(jobs_for_key(resources, "uploads/samples/coffee.webp")) == 1
    assert runflow.stats()["runs_created"] == runs_before + 1


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


# --- submit batches built from the shape of events/submit-s3-put.json --------------------------

_SAMPLE_BATCH = event("submit-s3-put.json")["Records"]
TEST_EVENT_BODY: str = _SAMPLE_BATCH[0]["body"]  # the S3 test event, as S3 sends it once


def sqs_record(message_id: str, body: str) -> dict[str, Any]:
    record: dict[str, Any] = copy.deepcopy(_SAMPLE_BATCH[1])
    record["messageId"] = message_id
    record["receiptHandle"] = f"AQEB{message_id}=="
    record["body"] = body
    record["md5OfBody"] = hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()
    return record


def s3_notification(bucket: str, *changes: tuple[str, str]) -> str:
    """An S3 notification with one record per (event name, key), keys encoded as S3 encodes them."""
    template = json.loads(_SAMPLE_BATCH[1]["body"])["Records"][0]
    records = []
    for name, key in changes:
        record = copy.deepcopy(template)
        record["eventName"] = name
        record["s3"]["bucket"]["name"] = bucket
        record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
        record["s3"]["object"]["key"] = quote_plus(key, safe="/")
        records.append(record)
    return json.dumps({"Records": records})


def batch(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def test_submit_s3_test_event_alone_is_ignored(
    functions: dict[str, LocalFunction], world: tuple[Template, Resources, LocalRunflow]
) -> None:
    _template, resources, runflow = world
    assert json.loads(TEST_EVENT_BODY)["Event"] == "s3:TestEvent"
    jobs_before = scan_items(client("dynamodb", resources.endpoint_url, "us-east-1"), resources.jobs_table)
    runs_before = runflow.stats()["runs_created"]
    result = functions["SubmitFunction"].invoke(batch(sqs_record("test-event-1", TEST_EVENT_BODY)))
    assert result.ok, result.error_message
    assert result.payload == {"batchItemFailures": []}
    assert (
        scan_items(client("dynamodb", resources.endpoint_url, "us-east-1"), resources.jobs_table)
        == jobs_before
    )
    assert runflow.stats()["runs_created"] == runs_before


def test_submit_ignores_events_other_than_created(
    functions: dict[str, LocalFunction], world: tuple[Template, Resources, LocalRunflow]
) -> None:
    _template, resources, runflow = world
    s3 = client("s3", resources.endpoint_url, "us-east-1")
    removed, created = "uploads/event-kinds/removed.jpg", "uploads/event-kinds/created.jpg"
    for key in (removed, created):  # both exist: only the event name tells them apart
        s3.put_object(Bucket=resources.uploads_bucket, Key=key, Body=image_bytes("JPEG"))
    runs_before = runflow.stats()["runs_created"]
    body = s3_notification(
        resources.uploads_bucket,
        ("ObjectRemoved:Delete", removed),
        ("ObjectRemoved:DeleteMarkerCreated", removed),
        ("ObjectRestore:Completed", removed),
        ("ObjectCreated:CompleteMultipartUpload", created),
    )
    result = functions["SubmitFunction"].invoke(batch(sqs_record("event-kinds-1", body)))
    assert result.ok, result.error_message
    assert result.payload == {"batchItemFailures": []}
    assert jobs_for_key(resources, removed) == []
    [job] = jobs_for_key(resources, created)
    assert job["status"] == "submitted"
    assert runflow.stats()["runs_created"] == runs_before + 1


def test_submit_batch_reports_exactly_the_message_that_failed(
    functions: dict[str, LocalFunction],
    submit_without_runflow: LocalFunction,
    world: tuple[Template, Resources, LocalRunflow],
) -> None:
    _template, resources, runflow = world
    s3 = client("s3", resources.endpoint_url, "us-east-1")
    needs_runflow, rejected = "uploads/partial/photo.jpg", "uploads/partial/notes.jpg"
    # Bytes no other test uploads: no earlier result of them to reuse, so this one needs its run.
    photo = image_bytes("JPEG", (31, 97, 163))
    s3.put_object(Bucket=resources.uploads_bucket, Key=needs_runflow, Body=photo)
    s3.put_object(Bucket=resources.uploads_bucket, Key=rejected, Body=b"not an image at all, just text")
    failing = sqs_record(
        "partial-photo", s3_notification(resources.uploads_bucket, ("ObjectCreated:Put", needs_runflow))
    )
    result = submit_without_runflow.invoke(
        batch(
            sqs_record("partial-test-event", TEST_EVENT_BODY),
            failing,
            sqs_record(
                "partial-notes", s3_notification(resources.uploads_bucket, ("ObjectCreated:Put", rejected))
            ),
        )
    )
    assert result.ok, result.error_message
    assert result.payload == {"batchItemFailures": [{"itemIdentifier": "partial-photo"}]}
    [waiting] = jobs_for_key(resources, needs_runflow)
    assert waiting["status"] == "received" and waiting["error_code"] == "RUNFLOW_UNAVAILABLE"
    [refused] = jobs_for_key(resources, rejected)
    assert refused["status"] == "rejected" and refused["error_code"] == "UNSUPPORTED_TYPE"

    # SQS delivers the failed message again; with Runflow back, it goes through.
    runs_before = runflow.stats()["runs_created"]
    again = functions["SubmitFunction"].invoke(batch(failing))
    assert again.ok and again.payload == {"batchItemFailures": []}
    [submitted] = jobs_for_key(resources, needs_runflow)
    assert submitted["job_id"] == waiting["job_id"]
    assert submitted["status"] == "submitted" and submitted["run_id"]
    assert runflow.stats()["runs_created"] == runs_before + 1


# --- callbacks --------------------------------------------------------------------------------


def _seed_submitted_job(resources: Resources, ev: dict[str, Any]) -> str:
    """The upload and its job as the submit left them, waiting for the event's callback."""
    body = json.loads(raw_body(ev))
    job_id = body["metadata"]["job_id"]
    s3 = client("s3", resources.endpoint_url, "us-east-1")
    uploaded = s3.put_object(
        Bucket=resources.uploads_bucket, Key="uploads/samples/coffee.jpg", Body=image_bytes("JPEG")
    )
    client("dynamodb", resources.endpoint_url, "us-east-1").put_item(
        TableName=resources.jobs_table,
        Item={
            "job_id": {"S": job_id},
            "status": {"S": "submitted"},
            "source_bucket": {"S": resources.uploads_bucket},
            "source_key": {"S": "uploads/samples/coffee.jpg"},
            "source_version_id": {"S": uploaded["VersionId"]},
            "color": {"S": "255,255,255"},
            "run_id": {"S": body["run_id"]},
            "created_at": {"S": "2026-11-24T10:01:37.000Z"},
            "updated_at": {"S": "2026-11-24T10:01:37.000Z"},
            "open_shard": {"S": "open"},
            "attempt": {"N": "1"},
            "retryable_errors": {"N": "0"},
        },
    )
    # No result left from an earlier test: what is there afterwards, this invocation wrote.
    s3.delete_object(Bucket=resources.results_bucket, Key=COFFEE_RESULT)
    client("dynamodb", resources.endpoint_url, "us-east-1").delete_item(
        TableName=resources.ledger_table,
        Key={"pk": {"S": f"result#{resources.uploads_bucket}/uploads/samples/coffee.jpg"}},
    )
    return str(job_id)


def _assert_output_copied(resources: Resources, job_id: str, outputs: OutputServer) -> None:
    job = job_item(resources, job_id)
    assert job["status"] == "succeeded" and job["result_keys"] == [COFFEE_RESULT]
    obj = client("s3", resources.endpoint_url, "us-east-1").get_object(
        Bucket=resources.results_bucket, Key=COFFEE_RESULT
    )
    assert obj["Body"].read() == OutputServer.png
    assert obj["Metadata"]["job-id"] == job_id and obj["ContentType"] == "image/png"
    assert outputs.paths == ["/outputs/coffee.png"]


@pytest.mark.parametrize(
    "name",
    ["callback-run-completed.json", "callback-run-completed-base64.json", "callback-sam-generated.json"],
)
def test_callback_completed_event_is_recorded_then_the_copy_request_copies_the_output(
    functions: dict[str, LocalFunction],
    world: tuple[Template, Resources, LocalRunflow],
    outputs: OutputServer,
    name: str,
) -> None:
    _template, resources, _runflow = world
    ev = pointed_at(event(name), outputs.origin)
    job_id = _seed_submitted_job(resources, ev)
    outputs.paths.clear()
    result = functions["CallbackFunction"].invoke(ev)
    assert result.ok, result.error_message
    assert result.payload["statusCode"] == 200, result.payload
    assert json.loads(result.payload["body"]) == {"result": "copy_queued", "job_id": job_id}
    assert job_item(resources, job_id)["status"] == "copying"
    assert outputs.paths == []  # the callback answers before anything is fetched
    queued = _drain(resources.copy_queue_url, resources)
    assert queued == [json.loads(event("copy-request.json")["Records"][0]["body"])]
    copied = functions["CopyFunction"].invoke(event("copy-request.json"))
    assert copied.ok and copied.payload == {"batchItemFailures": []}, copied
    _assert_output_copied(resources, job_id, outputs)


def _drain(queue_url: str, resources: Resources) -> list[Any]:
    sqs = client("sqs", resources.endpoint_url, "us-east-1")
    bodies = []
    while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


def test_copy_request_for_a_finished_job_changes_nothing(
    functions: dict[str, LocalFunction], world: tuple[Template, Resources, LocalRunflow]
) -> None:
    _template, resources, _runflow = world
    job_id = _seed_submitted_job(resources, event("callback-run-completed.json"))
    client("dynamodb", resources.endpoint_url, "us-east-1").update_item(
        TableName=resources.jobs_table,
        Key={"job_id": {"S": job_id}},
        UpdateExpression="SET #s = :s REMOVE open_shard",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": {"S": "failed"}},
    )
    before = job_item(resources, job_id)
    result = functions["CopyFunction"].invoke(event("copy-request.json"))
    assert result.ok and result.payload == {"batchItemFailures": []}
    assert job_item(resources, job_id) == before


def _tampered_body(ev: dict[str, Any]) -> dict[str, Any]:
    body = raw_body(ev)
    changed = body.replace(b'"duration_ms": 4210', b'"duration_ms": 4211')
    assert changed != body
    return with_body(ev, changed, signature=ev["headers"]["runflow-signature"])


def _signed_over_the_base64_text(ev: dict[str, Any]) -> dict[str, Any]:
    return with_body(ev, raw_body(ev), signature=runflow_signature(ev["body"].encode("ascii")))


@pytest.mark.parametrize("tamper", [_tampered_body, _signed_over_the_base64_text], ids=["body", "encoded"])
def test_tampered_base64_callback_is_refused_and_changes_nothing(
    functions: dict[str, LocalFunction],
    world: tuple[Template, Resources, LocalRunflow],
    outputs: OutputServer,
    tamper: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    _template, resources, _runflow = world
    # Valid but for the tampering: if it were let through, the output would be copied.
    ev = tamper(pointed_at(event("callback-run-completed-base64.json"), outputs.origin))
    job_id = _seed_submitted_job(resources, ev)
    before = job_item(resources, job_id)
    outputs.paths.clear()
    result = functions["CallbackFunction"].invoke(ev)
    assert result.ok and result.payload["statusCode"] == 401, result.payload
    assert job_item(resources, job_id) == before
    assert outputs.paths == []


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


def test_callback_function_answers_only_its_route(
    functions: dict[str, LocalFunction], world: tuple[Template, Resources, LocalRunflow]
) -> None:
    _template, resources, _runflow = world
    ev = event("callback-run-completed.json")
    job_id = _seed_submitted_job(resources, ev)
    before = job_item(resources, job_id)
    for method, path, stage in (
        ("GET", "/runflow/callback", "$default"),
        ("POST", "/something/else", "$default"),
        ("POST", "/runflow/callback/", "$default"),
        ("POST", "/runflow/callback", "prod"),  # the stage's own path is /prod/runflow/callback
    ):
        context = {**ev["requestContext"], "http": {**ev["requestContext"]["http"], "method": method}}
        context["stage"] = stage
        # Whatever the route key says (a `$default` route matches everything): method and path decide.
        other = {**ev, "routeKey": "$default", "rawPath": path, "requestContext": context}
        result = functions["CallbackFunction"].invoke(other)
        assert result.ok and result.payload["statusCode"] == 404, (method, path, result.payload)
    assert job_item(resources, job_id) == before


def test_reconcile_schedule_event(functions: dict[str, LocalFunction]) -> None:
    result = functions["ReconcileFunction"].invoke(event("reconcile-schedule.json"))
    assert result.ok, result.error_message
    assert isinstance(result.payload, dict) and "examined" in result.payload
