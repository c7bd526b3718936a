"""``make sam-local``: every event in ``events/`` through ``sam local invoke`` against the local stack,
and one whole job through ``sam local start-api`` (upload → run → the local Runflow's signed
callback into start-api → copy → result). Prints ``SAM-LOCAL invokes=N ok=N`` and exits 1 on any
miss; then ``IAM calls=N denied=N`` for every AWS call the functions made (each container signs as
its function), and exits 1 on a denial. Where no Docker engine can run it says
``SAM-LOCAL skipped: <why>`` and exits 0, or 1 when ``BACKDROP_REQUIRE_SAMLOCAL=1`` (CI sets it:
a skip there would hide a broken set-up).

The local stack listens on the Docker bridge's host address so the containers reach it, with its
own SQS event sources and schedule off: here ``sam local`` plays every function.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from backdrop_local import iamcheck
from backdrop_local.samlocal import (
    EgressTrap,
    SamLocal,
    SamLocalError,
    SamLocalUnavailable,
    bridge_host_address,
    ensure_image,
    local_template,
)
from backdrop_local.stack import ROOT, LocalStack, StackOptions

EVENTS = ROOT / "events"
SAMPLES = ROOT / "samples"
WAIT_SECONDS = 300.0


@dataclass(frozen=True)
class Check:
    function: str
    event: str
    ok: Callable[[Any], bool]
    expect: str


def _status(response: Any) -> int | None:
    return response.get("statusCode") if isinstance(response, dict) else None


CHECKS = (
    Check(
        "SubmitFunction",
        "submit-s3-put.json",
        lambda r: r == {"batchItemFailures": []},
        "no batch item failures",
    ),
    Check(
        "SubmitFunction",
        "submit-s3-put-encoded-key.json",
        lambda r: r == {"batchItemFailures": []},
        "no batch item failures",
    ),
    Check("CallbackFunction", "callback-run-completed.json", lambda r: _status(r) == 200, "200"),
    Check("CallbackFunction", "callback-run-completed-base64.json", lambda r: _status(r) == 200, "200"),
    Check("CallbackFunction", "callback-run-failed.json", lambda r: _status(r) == 200, "200"),
    Check("CallbackFunction", "callback-forged-signature.json", lambda r: _status(r) == 401, "401"),
    Check("CallbackFunction", "callback-sam-generated.json", lambda r: _status(r) == 200, "200"),
    Check(
        "ReconcileFunction",
        "reconcile-schedule.json",
        lambda r: isinstance(r, dict) and "examined" in r,
        "a report",
    ),
    Check(
        "CopyFunction",
        "copy-request.json",
        lambda r: r == {"batchItemFailures": []},
        "no batch item failures",
    ),
)


class Tally:
    def __init__(self) -> None:
        self.invokes = 0
        self.ok = 0

    def record(self, name: str, passed: bool, detail: str) -> None:
        self.invokes += 1
        self.ok += int(passed)
        print(f"{'ok  ' if passed else 'MISS'} {name}: {detail}", flush=True)


def _sqs_event(body: str, queue_arn: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": "samlocal-0",
                "receiptHandle": "samlocal-0",
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
        ]
    }


def _job_of(stack: LocalStack, key: str) -> dict[str, Any] | None:
    from backdrop_local.aws import scan_items

    assert stack.resources is not None
    found = [j for j in scan_items(stack.dynamodb(), stack.resources.jobs_table) if j["source_key"] == key]
    return found[0] if found else None


def _wait_for(stack: LocalStack, key: str, statuses: set[str]) -> dict[str, Any] | None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        job = _job_of(stack, key)
        if job is not None and job["status"] in statuses:
            return job
        time.sleep(0.5)
    return _job_of(stack, key)


def _full_job(stack: LocalStack, sam: SamLocal, tally: Tally, state: Path) -> None:
    """Upload → SubmitFunction (sam invoke) → run → callback into start-api → CopyFunction (sam invoke)."""
    assert stack.resources is not None
    resources = stack.resources
    key = "uploads/samlocal/bottle.jpg"
    put = stack.s3().put_object(
        Bucket=resources.uploads_bucket, Key=key, Body=(SAMPLES / "bottle.jpg").read_bytes()
    )
    with sam.start_api() as api:
        env = json.loads(Path(stack.info["sam_env_vars"]).read_text())
        env["SubmitFunction"]["BACKDROP_CALLBACK_URL"] = api.url + "/runflow/callback"
        (state / "full-env-vars.json").write_text(json.dumps(env))
        record = {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventName": "ObjectCreated:Put",
            "s3": {
                "bucket": {"name": resources.uploads_bucket},
                "object": {
                    "key": quote_plus(key, safe="/"),
                    "size": len((SAMPLES / "bottle.jpg").read_bytes()),
                    "eTag": put["ETag"].strip('"'),
                    "versionId": put["VersionId"],
                },
            },
        }
        event = state / "full-submit.json"
        event.write_text(json.dumps(_sqs_event(json.dumps({"Records": [record]}), resources.queue_arn)))
        submitter = SamLocal(
            endpoint_url=sam.endpoint_url,
            image=sam.image,
            template=sam.template,
            env_vars=state / "full-env-vars.json",
            state_dir=state,
            trap=sam.trap,
            function_keys=sam.function_keys,
        )
        submitted = submitter.invoke("SubmitFunction", event)
        job = _job_of(stack, key)
        tally.record(
            "full job: SubmitFunction",
            submitted.response == {"batchItemFailures": []}
            and job is not None
            and job["status"] == "submitted",
            f"job {job and job['status']}",
        )
        # The local Runflow runs the model and calls back into start-api's CallbackFunction.
        job = _wait_for(stack, key, {"copying", "failed", "canceled"})
        tally.record(
            "full job: callback into start-api",
            job is not None and job["status"] == "copying",
            f"job {job and job['status']} ({job and job.get('error_code')})",
        )
    body = _copy_request_for(stack, job["job_id"] if job else "")
    copy_event = state / "full-copy.json"
    copy_event.write_text(json.dumps(_sqs_event(body, resources.copy_queue_arn)))
    copied = sam.invoke("CopyFunction", copy_event)
    job = _job_of(stack, key)
    result_exists = False
    if job is not None and job.get("result_keys"):
        stack.s3().head_object(Bucket=resources.results_bucket, Key=job["result_keys"][0])
        result_exists = True
    tally.record(
        "full job: CopyFunction",
        copied.response == {"batchItemFailures": []}
        and job is not None
        and job["status"] == "succeeded"
        and result_exists,
        f"job {job and job['status']}, result {job and job.get('result_keys')}",
    )


def _copy_request_for(stack: LocalStack, job_id: str) -> str:
    """The copy request the callback queued for ``job_id`` (others, of earlier jobs, are left)."""
    assert stack.resources is not None
    sqs = stack.sqs()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = sqs.receive_message(
            QueueUrl=stack.resources.copy_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        for message in answer.get("Messages", []):
            if json.loads(message["Body"]).get("job_id") == job_id:
                return str(message["Body"])
    return "{}"


def iam_check(directory: Path) -> list[str]:
    """The IAM check's lines for the calls recorded under ``directory`` (the first: ``IAM calls=...``)."""
    return iamcheck.check([directory]).lines(show_unused=False)


def run() -> int:
    required = os.environ.get("BACKDROP_REQUIRE_SAMLOCAL") == "1"
    try:
        image = ensure_image()
        bridge = bridge_host_address()
    except SamLocalUnavailable as exc:
        print(f"SAM-LOCAL skipped: {exc.reason}")
        return 1 if required else 0
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="backdrop-samlocal-") as tmp:
        state = Path(tmp)
        options = StackOptions(
            state_dir=state / "stack", listen_host=bridge, event_sources=False, reconcile_min_age_seconds=0
        )
        with LocalStack(options) as stack, EgressTrap() as trap:
            assert stack.resources is not None
            s3 = stack.s3()
            # The objects the sample submit events name.
            s3.put_object(
                Bucket=stack.resources.uploads_bucket,
                Key="uploads/samples/coffee.webp",
                Body=(SAMPLES / "coffee.webp").read_bytes(),
            )
            s3.put_object(
                Bucket=stack.resources.uploads_bucket,
                Key="uploads/summer sale/red shoe (1).png",
                Body=(SAMPLES / "chelsea.png").read_bytes(),
                Metadata={"background-color": "#1E90FF"},
            )
            sam = SamLocal(
                endpoint_url=stack.info["aws_endpoint_url"],
                image=image,
                template=local_template(),
                env_vars=Path(stack.info["sam_env_vars"]),
                state_dir=state / "sam",
                trap=trap,
                function_keys=stack.function_access_keys,
            )
            for check in CHECKS:
                try:
                    result = sam.invoke(check.function, EVENTS / check.event)
                    passed = check.ok(result.response)
                    shown = json.dumps(result.response)[:160]
                    detail = f"{shown} (expected {check.expect}, {result.seconds:.1f} s)"
                except SamLocalError as exc:
                    passed, detail = False, str(exc)[-500:]
                tally.record(f"{check.function} {check.event}", passed, detail)
            try:
                _full_job(stack, sam, tally, state)
            except SamLocalError as exc:
                tally.record("full job", False, str(exc)[-500:])
            if trap.attempts:
                tally.record("nothing went out", False, f"refused outbound requests: {trap.attempts}")
        # Every AWS call the functions made in their containers (each signs as its own role),
        # judged against the template's policies.
        iam_lines = iam_check(stack.iam_dir)
    print(f"SAM-LOCAL invokes={tally.invokes} ok={tally.ok}", flush=True)
    print("\n".join(iam_lines), flush=True)
    return 0 if tally.ok == tally.invokes and iam_lines[0].endswith(" denied=0") else 1


if __name__ == "__main__":
    sys.exit(run())
