"""`make local` as a stranger uses it: start, read local-stack.json, upload with any S3 client,
watch the result appear, update a parameter as a stack update would, stop with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3

from backdrop import results
from tests.support.images import solid

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "region",
    "aws_endpoint_url",
    "aws_access_key_id",
    "aws_secret_access_key",
    "uploads_bucket",
    "upload_prefix",
    "results_bucket",
    "results_prefix",
    "jobs_table",
    "callback_url",
    "runflow_url",
    "runflow_api_key",
    "callback_secret",
}


def test_local_stack_command(built: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'local'}:{ROOT / 'layers' / 'core'}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backdrop_local",
            "--state-dir",
            str(state),
            "--reconcile-every",
            "2",
            "--reconcile-min-age",
            "0",
            "--parameter-overrides",
            "DailyRunBudget=1",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info_path = state / "local-stack.json"
        deadline = time.monotonic() + 60
        while not info_path.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "local-stack.json never appeared"
            time.sleep(0.2)
        info = json.loads(info_path.read_text())
        assert set(info) >= KEYS
        s3 = boto3.client(
            "s3",
            endpoint_url=info["aws_endpoint_url"],
            region_name=info["region"],
            aws_access_key_id=info["aws_access_key_id"],
            aws_secret_access_key=info["aws_secret_access_key"],
        )
        ddb = boto3.resource(
            "dynamodb",
            endpoint_url=info["aws_endpoint_url"],
            region_name=info["region"],
            aws_access_key_id=info["aws_access_key_id"],
            aws_secret_access_key=info["aws_secret_access_key"],
        ).Table(info["jobs_table"])

        def upload(name: str, shade: int) -> str:
            # Pixels of its own: identical bytes would reuse the first result instead of running.
            s3.put_object(
                Bucket=info["uploads_bucket"],
                Key=f"{info['upload_prefix']}{name}",
                Body=solid("JPEG", (80, 60), (shade, shade, shade)),
            )
            key = f"{info['upload_prefix']}{name}"
            return results.result_key(key, info["upload_prefix"], info["results_prefix"], "png")

        def wait_for_result(result_key: str) -> None:
            deadline = time.monotonic() + 60
            while True:
                listed = s3.list_objects_v2(Bucket=info["results_bucket"]).get("Contents", [])
                if any(o["Key"] == result_key for o in listed):
                    return
                assert time.monotonic() < deadline, f"no result {result_key} appeared"
                time.sleep(0.5)

        def statuses() -> list[str]:
            return sorted(str(item["status"]) for item in ddb.scan()["Items"])

        wait_for_result(upload("hello.jpg", 240))  # the day's one run

        second = upload("second.jpg", 200)
        deadline = time.monotonic() + 60
        while statuses() != ["held", "succeeded"]:
            assert time.monotonic() < deadline, f"the second upload was not held: {statuses()}"
            time.sleep(0.5)

        def update(*pairs: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "backdrop_local.update", "--state-dir", str(state), *pairs],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        refused = update("DailyRunBudget=-1")
        assert refused.returncode == 2 and "DailyRunBudget" in refused.stderr
        assert update("NoSuchParameter=1").returncode == 2
        assert json.loads(info_path.read_text())["parameters"]["DailyRunBudget"] == "1"

        raised = update("DailyRunBudget=5")
        assert raised.returncode == 0, raised.stderr
        assert json.loads(raised.stdout)["parameters"]["DailyRunBudget"] == "5"
        assert json.loads(info_path.read_text())["parameters"]["DailyRunBudget"] == "5"
        wait_for_result(second)  # the reconciler resumed the held job under the raised budget
        # The job succeeds just after its result is written: wait for that, not for a moment.
        deadline = time.monotonic() + 60
        while statuses() != ["succeeded", "succeeded"]:
            assert time.monotonic() < deadline, f"the second upload did not succeed: {statuses()}"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0
    assert not (state / "local-stack.json").exists()
