"""Warm invocations: Backdrop's own time per image in each function, on loopback.

The built functions run in local Lambda workers (``backdrop_local.lambdas.LocalFunction``: the
function folder, the layer, the runtime's packages) against moto and the local Runflow (instant
processing, a 1 MB output). Each image goes through submit (one record), callback (the signed
callback Runflow sent, as the HTTP API delivers it) and copy (the copy request the callback
queued), one invocation at a time. Backdrop's own time is the CPU time the worker used during the
invocation: waiting on moto, on Runflow or on the network costs it none, and those peers run in
other processes. The reference, measured in the same run, is the CPU time one bare boto3
DynamoDB GetItem costs a client in the same layout (``sdk_call_ms``): ``ratio`` says how many such
calls an invocation's own time is worth. Requests are counted at moto, per image (see cost.py).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from benchmarks.common import BUILD, LAYER, REGION, TEMPLATE, emit, note, percentile, require_build

__all__ = ["WarmResult", "percentile", "report", "run"]
from benchmarks.moto_counting import CountingMotoServer
from benchmarks.procstat import cpu_ns, workers

OUTPUT_BYTES = 1024 * 1024
FUNCTIONS = ("SubmitFunction", "CallbackFunction", "CopyFunction")
API_KEY = "rf_live_bench"
STACK = "bench-warm"


@dataclass
class Samples:
    cpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)


@dataclass
class WarmResult:
    samples: dict[str, Samples]
    requests_per_image: dict[str, float]
    sdk_call_ms: float
    images: int


class _Callbacks(ThreadingHTTPServer):
    """Where Runflow's callbacks go: kept (body and headers) for the benchmark to deliver itself."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CallbackHandler)
        self.received: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/runflow/callback"

    def wait(self, run_id: str, timeout: float) -> tuple[bytes, dict[str, str]]:
        with self.changed:
            if not self.changed.wait_for(lambda: run_id in self.received, timeout):
                raise TimeoutError(f"no callback for run {run_id} within {timeout} s")
            return self.received.pop(run_id)


class _CallbackHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server = cast(_Callbacks, self.server)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        run_id = str(json.loads(body).get("run_id", ""))
        with server.changed:
            server.received[run_id] = (body, {k.lower(): v for k, v in self.headers.items()})
            server.changed.notify_all()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def http_api_event(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """The payload-2.0 event API Gateway makes of Runflow's POST (JSON bodies arrive as text)."""
    now = datetime.now(UTC)
    return {
        "version": "2.0",
        "routeKey": "POST /runflow/callback",
        "rawPath": "/runflow/callback",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "domainName": "bench.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "bench",
            "http": {
                "method": "POST",
                "path": "/runflow/callback",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": uuid.uuid4().hex[:16],
            "routeKey": "POST /runflow/callback",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
        "body": body.decode("utf-8"),
    }


def sqs_record(body: str, queue_arn: str, receipt: str | None = None) -> dict[str, Any]:
    message_id = str(uuid.uuid4())
    return {
        "messageId": message_id,
        "receiptHandle": receipt or f"AQEB{message_id}==",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int(time.time() * 1000))},
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


def s3_notification(bucket: str, key: str, version_id: str, etag: str, size: int) -> str:
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:BENCH"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "BENCH", "x-amz-id-2": "BENCH"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "uploads",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "BENCH"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": {"key": key, "size": size, "eTag": etag, "versionId": version_id, "sequencer": "00"},
        },
    }
    return json.dumps({"Records": [record]})


def sample_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 120, 40)).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


SDK_FLOOR = """
import sys, time, json
sys.path[:0] = sys.argv[1].split(":")
import boto3
ddb = boto3.session.Session().client("dynamodb", endpoint_url=sys.argv[2])
table = sys.argv[3]
for _ in range(20):
    ddb.get_item(TableName=table, Key={"job_id": {"S": "none"}})
samples = []
for _ in range(200):
    began = time.thread_time_ns()
    ddb.get_item(TableName=table, Key={"job_id": {"S": "none"}})
    samples.append((time.thread_time_ns() - began) / 1e6)
samples.sort()
print(json.dumps(samples[len(samples) // 2]))
"""


def sdk_call_ms(endpoint: str, table: str, runtime: Path) -> float:
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION}
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SDK_FLOOR, f"{LAYER}:{runtime}", endpoint, table],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(json.loads(done.stdout))


def run(images: int, warmup: int = 3) -> WarmResult:
    require_build()
    from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, client, provision
    from backdrop_local.lambdas import LocalFunction, runtime_dir
    from backdrop_local.runflow import FaultSettings, LocalRunflow
    from backdrop_local.template import Template

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto = CountingMotoServer()
    endpoint = moto.start()
    callbacks = _Callbacks()
    threading.Thread(target=callbacks.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    runflow = LocalRunflow(
        api_keys=frozenset({API_KEY}),
        allow_http_origins=(endpoint, callbacks.url.rsplit("/", 2)[0]),
        faults=FaultSettings(processing="instant", instant_output_bytes=OUTPUT_BYTES),
    )
    runflow.start()
    made: dict[str, LocalFunction] = {}
    samples = {name: Samples() for name in FUNCTIONS}
    try:
        secret = runflow.create_callback_secret(label="bench")
        template = Template(TEMPLATE, stack_name=STACK, region=REGION)
        resources = provision(template, endpoint, api_key=API_KEY, callback_secret=secret)
        state = Path(tempfile.mkdtemp(prefix="backdrop-warm-"))
        runtime = runtime_dir(state / "runtime")
        for name in FUNCTIONS:
            spec = template.function(name)
            env = {
                **spec.environment,
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
                "AWS_REGION": REGION,
                "BACKDROP_RUNFLOW_BASE_URL": runflow.url,
                "BACKDROP_INSECURE_OUTPUT_ORIGIN": runflow.url,
                "POWERTOOLS_LOG_LEVEL": "WARNING",
            }
            if spec.environment.get("BACKDROP_CALLBACK_URL") != "":
                env["BACKDROP_CALLBACK_URL"] = callbacks.url
            made[name] = LocalFunction(
                name,
                handler=spec.handler,
                paths=[BUILD / name, LAYER, runtime],
                env=env,
                timeout=spec.timeout,
                max_concurrency=1,
                log_path=state / f"{name}.log",
            )
        s3 = client("s3", endpoint, REGION)
        sqs = client("sqs", endpoint, REGION)
        body = sample_jpeg()

        def invoke(name: str, event: dict[str, Any], measured: bool) -> Any:
            pids = workers(name)
            before = sum(cpu_ns(pid) for pid in pids)
            began = time.perf_counter()
            result = made[name].invoke(event)
            wall = (time.perf_counter() - began) * 1000
            after = sum(cpu_ns(pid) for pid in workers(name))
            if not result.ok:
                raise RuntimeError(f"{name} failed: {result.error_type}: {result.error_message}")
            if measured and pids:  # the first invocation also starts the worker: not a warm one
                samples[name].cpu_ms.append((after - before) / 1e6)
                samples[name].wall_ms.append(wall)
            return result.payload

        requests: Counter[str] = Counter()
        for index in range(warmup + images):
            measured = index >= warmup
            key = f"{resources.upload_prefix}bench/{index:05d}.jpg"
            put = s3.put_object(Bucket=resources.uploads_bucket, Key=key, Body=body)
            start_counts = moto.counts()
            notice = s3_notification(
                resources.uploads_bucket, key, put["VersionId"], put["ETag"].strip('"'), len(body)
            )
            answer = invoke(
                "SubmitFunction", {"Records": [sqs_record(notice, resources.queue_arn)]}, measured
            )
            if answer.get("batchItemFailures"):
                raise RuntimeError(f"submit reported failures: {answer}")
            job = _job_by_key(client("dynamodb", endpoint, REGION), resources.jobs_table, key)
            cb_body, cb_headers = callbacks.wait(str(job["run_id"]), 30)
            answer = invoke("CallbackFunction", http_api_event(cb_body, cb_headers), measured)
            if answer.get("statusCode") != 200:
                raise RuntimeError(f"callback answered {answer}")
            messages = sqs.receive_message(
                QueueUrl=resources.copy_queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=5
            ).get("Messages", [])
            if not messages:
                raise RuntimeError("the callback queued no copy")
            message = messages[0]
            event = {
                "Records": [sqs_record(message["Body"], resources.copy_queue_arn, message["ReceiptHandle"])]
            }
            answer = invoke("CopyFunction", event, measured)
            if answer.get("batchItemFailures"):
                raise RuntimeError(f"copy reported failures: {answer}")
            sqs.delete_message(QueueUrl=resources.copy_queue_url, ReceiptHandle=message["ReceiptHandle"])
            if measured:
                # The benchmark's own job lookup is not Backdrop's; the copy queue's receive and
                # delete stand in for the event source mapping's own.
                counts = moto.counts()
                counts.subtract(start_counts)
                counts["dynamodb:read:" + resources.jobs_table] -= 1
                requests.update(+counts)
        per_image = {kind: count / images for kind, count in requests.items()}
        reference = sdk_call_ms(endpoint, resources.jobs_table, runtime)
        return WarmResult(samples, per_image, reference, images)
    finally:
        for function in made.values():
            function.close()
        runflow.stop()
        callbacks.shutdown()
        callbacks.server_close()
        moto.stop()


def _job_by_key(ddb: Any, table: str, key: str) -> dict[str, Any]:
    answer = ddb.query(
        TableName=table,
        IndexName="BySourceKey",
        KeyConditionExpression="source_key = :k",
        ExpressionAttributeValues={":k": {"S": key}},
    )
    items = answer.get("Items", [])
    if not items:
        raise RuntimeError(f"no job for {key}")
    return {k: next(iter(v.values())) for k, v in items[0].items()}


def report(result: WarmResult) -> None:
    total = 0.0
    for name, figures in result.samples.items():
        p50 = percentile(figures.cpu_ms, 50)
        total += p50
        emit(
            "warm",
            function=name,
            p50_ms=p50,
            p99_ms=percentile(figures.cpu_ms, 99),
            wall_p50_ms=percentile(figures.wall_ms, 50),
            sdk_call_ms=result.sdk_call_ms,
            ratio=round(p50 / result.sdk_call_ms, 1),
            invocations=len(figures.cpu_ms),
        )
    emit("warm", function="all", p50_ms=total, ratio=round(total / result.sdk_call_ms, 1), target_ms=25)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=60)
    args = parser.parse_args()
    note(f"warm invocations: {args.images} images through submit, callback and copy")
    result = run(args.images)
    report(result)
    print(json.dumps(result.requests_per_image, indent=1, sort_keys=True), file=sys.stderr)


if __name__ == "__main__":
    main()
