"""The IAM check finds what moto and `sam local` never refuse: a call a function's role would not
allow in AWS. The known hole: the copy function, reading back a run whose callback reported no
outputs, queues its copy (completion._queue_copy) and needs sqs:SendMessage on the copy queue.

The built CopyFunction runs in its own process with Lambda's layout, signing as its role, against
the session's recording moto server and the local Runflow over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from backdrop_local import iamcheck, iampolicies
from backdrop_local.aws import SECRET_ACCESS_KEY, Resources, client, provision
from backdrop_local.iamrecord import CALLS_SUFFIX, function_access_key
from backdrop_local.lambdas import LocalFunction, runtime_dir
from backdrop_local.runflow import FaultSettings, LocalRunflow
from backdrop_local.template import Template
from tests.support.images import solid

ROOT = Path(__file__).resolve().parents[2]
STACK = "iam-e2e"
API_KEY = "rf_live_iam_test"


@dataclass
class World:
    template: Template
    resources: Resources
    runflow: LocalRunflow
    copy: LocalFunction
    records: Path


@pytest.fixture(scope="module")
def world(
    built: Path, moto_endpoint: str, iam_record_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    template = Template(ROOT / "template.yaml", stack_name=STACK, region="us-east-1")
    resources = provision(template, moto_endpoint, api_key=API_KEY, callback_secret="whsec_iam_test")
    iampolicies.write(template, iampolicies.stack_refs(template, resources), iam_record_dir)
    runflow = LocalRunflow(
        host="127.0.0.1",
        port=0,
        api_keys=frozenset({API_KEY}),
        allow_http_origins=(moto_endpoint,),
        faults=FaultSettings(processing="instant"),
    )
    runflow.start()
    state = tmp_path_factory.mktemp("iam-lambda")
    spec = template.function("CopyFunction")
    copy = LocalFunction(
        "CopyFunction",
        handler=spec.handler,
        paths=[built / "CopyFunction", built / "CoreLayer" / "python", runtime_dir(state / "runtime")],
        env={
            **spec.environment,
            "AWS_ENDPOINT_URL": moto_endpoint,
            "AWS_ACCESS_KEY_ID": function_access_key(STACK, "CopyFunction"),
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": "us-east-1",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "BACKDROP_RUNFLOW_BASE_URL": runflow.url,
            "BACKDROP_INSECURE_OUTPUT_ORIGIN": runflow.url,
        },
        timeout=spec.timeout,
        max_concurrency=1,
        log_path=state / "CopyFunction.log",
    )
    yield World(template, resources, runflow, copy, iam_record_dir)
    copy.close()
    runflow.stop()


def _finished_run(world: World, key: str) -> str:
    """A run at the local Runflow for the upload ``key``, waited for until it has succeeded."""
    s3 = client("s3", world.resources.endpoint_url, "us-east-1")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": world.resources.uploads_bucket, "Key": key}, ExpiresIn=600
    )
    headers = {"Authorization": f"Bearer {API_KEY}"}
    created = httpx.post(
        f"{world.runflow.url}/v1/models/runflow/background-color/runs",
        json={"input": {"image_url": url, "color_red": 255, "color_green": 255, "color_blue": 255}},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    run_id = str(created.json()["id"])
    for _ in range(600):  # the run's own status is the event waited for
        status = httpx.get(f"{world.runflow.url}/v1/runs/{run_id}", headers=headers).json()["status_code"]
        if status == "succeeded":
            return run_id
        assert status in ("queued", "dispatching", "running"), status
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish")


def _seed_job(world: World, key: str, version_id: str, run_id: str) -> str:
    """A job as a callback that reported success without outputs leaves it: submitted, its run
    known, no output URLs (so the copy function reads the run back)."""
    job_id = "1a" * 16
    client("dynamodb", world.resources.endpoint_url, "us-east-1").put_item(
        TableName=world.resources.jobs_table,
        Item={
            "job_id": {"S": job_id},
            "status": {"S": "submitted"},
            "source_bucket": {"S": world.resources.uploads_bucket},
            "source_key": {"S": key},
            "source_version_id": {"S": version_id},
            "color": {"S": "255,255,255"},
            "run_id": {"S": run_id},
            "created_at": {"S": "2026-12-06T09:00:00.000Z"},
            "updated_at": {"S": "2026-12-06T09:00:00.000Z"},
            "open_shard": {"S": "open"},
            "attempt": {"N": "1"},
            "retryable_errors": {"N": "0"},
        },
    )
    return job_id


def _copy_event(world: World, job_id: str, run_id: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": "iam-0",
                "receiptHandle": "iam-0",
                "body": json.dumps({"job_id": job_id, "run_id": run_id}),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": world.resources.copy_queue_arn,
                "awsRegion": "us-east-1",
            }
        ]
    }


def _judge(world: World, template: Template, folder: Path) -> iamcheck.Report:
    """This stack's recorded calls judged against ``template``'s policies alone."""
    iampolicies.write(template, iampolicies.stack_refs(template, world.resources), folder)
    (folder / f"recorded{CALLS_SUFFIX}").write_text((world.records / f"session{CALLS_SUFFIX}").read_text())
    return iamcheck.check([folder])


def test_copy_of_a_run_read_back_queues_it_and_only_todays_template_allows_that(
    world: World, tmp_path: Path
) -> None:
    key = "uploads/iam/photo.png"
    put = client("s3", world.resources.endpoint_url, "us-east-1").put_object(
        Bucket=world.resources.uploads_bucket, Key=key, Body=solid("PNG", (48, 32), (180, 40, 40))
    )
    run_id = _finished_run(world, key)
    job_id = _seed_job(world, key, put["VersionId"], run_id)

    result = world.copy.invoke(_copy_event(world, job_id, run_id))
    assert result.ok and result.payload == {"batchItemFailures": []}, result

    # The copy function queued the copy of the run it read back, signing as its own role.
    copy_key = function_access_key(STACK, "CopyFunction")
    calls = [json.loads(line) for line in (world.records / f"session{CALLS_SUFFIX}").read_text().splitlines()]
    sent = [c for c in calls if c["key"] == copy_key and c["action"] == "sqs:SendMessage"]
    assert [c["resource"] for c in sent] == [world.resources.copy_queue_arn]

    today = _judge(world, world.template, tmp_path / "today")
    assert today.calls > 0 and not today.denied, today.lines(show_unused=False)

    # main's template: the copy function's policy without any sqs:SendMessage.
    before = Template(ROOT / "template.yaml", stack_name=STACK, region="us-east-1")
    before.doc["Resources"]["CopyFunction"]["Properties"]["Policies"][0]["Statement"] = [
        s
        for s in before.doc["Resources"]["CopyFunction"]["Properties"]["Policies"][0]["Statement"]
        if "sqs:SendMessage" not in iamcheck._as_list(s["Action"])
    ]
    for logical, (url, _arn) in world.resources.queues.items():
        before.override_ref(logical, url)
    denied = _judge(world, before, tmp_path / "main")
    assert list(denied.denied) == [
        iamcheck.Denial(STACK, "CopyFunction", "sqs:SendMessage", world.resources.copy_queue_arn)
    ]
