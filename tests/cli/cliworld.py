"""What the operator command's tests share: the installed ``backdrop`` console script run as a
user runs it, and what a test needs to set a scene in the local stack it talks to."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx

from backdrop.jobs import Job
from backdrop.jobstore import JobStore
from backdrop.ledger import budget_day
from backdrop.runs import RunflowClient
from backdrop_cli.stack import Stack
from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Resources
from backdrop_local.stack import RUNFLOW_API_KEY, LocalStack
from tests.support.images import solid

BACKDROP = Path(sys.executable).with_name("backdrop")  # the console script `make venv` installs
DAY_SECONDS = 86400


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Cli:
    """``backdrop <command> --local --state-dir <the stack's>``, as a subprocess (no terminal)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def __call__(self, *args: str, timeout: float = 180.0, local: bool = True) -> Ran:
        command = [str(BACKDROP), *args]
        if local:
            command[2:2] = ["--local", "--state-dir", str(self.state_dir)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKDROP_")}
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=env,
            check=False,
        )
        return Ran(done.returncode, done.stdout, done.stderr)

    def json(self, *args: str, expect: int = 0, timeout: float = 180.0) -> Any:
        ran = self(*args, "--json", timeout=timeout)
        assert ran.code == expect, (args, ran.code, ran.stdout[-3000:], ran.stderr[-3000:])
        return ran.json()


def utc_day_with_room(
    seconds: float, *, clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep
) -> str:
    """Today's UTC day (``YYYY-MM-DD``, the run budget's), once at least ``seconds`` of it are left.

    Steps that must all fall in one budget day start after midnight instead of straddling it: this
    waits for the day to turn (the event itself), which happens only in the last ``seconds`` of a
    day."""
    while True:
        now = clock()
        left = DAY_SECONDS - now % DAY_SECONDS
        if left > seconds:
            return budget_day(now)
        sleep(left)


_photos = itertools.count()


def photo(fmt: str = "JPEG", colour: tuple[int, int, int] | None = None) -> bytes:
    """A small photo. Of a given ``colour``, the same bytes every time; without one, other bytes
    at each call (another size): the pipeline reuses one result for identical bytes, so objects
    meant to run each need their own pixels."""
    if colour is not None:
        return solid(fmt, (64, 48), colour)
    drawn = next(_photos)
    return solid(fmt, (64 + drawn % 64, 48 + drawn // 64), (150, 20, 25))


def cli_stack_for(resources: Resources, parameters: dict[str, str] | None = None) -> Stack:
    """The command's own view of a stack's resources (for a test's own reads)."""
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY, region_name=resources.region
    )
    return Stack(
        label="local",
        region=resources.region,
        uploads_bucket=resources.uploads_bucket,
        upload_prefix=resources.upload_prefix,
        results_bucket=resources.results_bucket,
        jobs_table=resources.jobs_table,
        ledger_table=resources.ledger_table,
        uploads_queue_url=resources.queue_url,
        dead_letter_queue_url=resources.dlq_url,
        copy_queue_url=resources.copy_queue_url,
        parameters=parameters or {},
        session=session,
        endpoint_url=resources.endpoint_url,
    )


def cli_stack(stack: LocalStack) -> Stack:
    return cli_stack_for(resources(stack), stack.info["parameters"])


def resources(stack: LocalStack) -> Resources:
    assert stack.resources is not None
    return stack.resources


@contextmanager
def no_notifications(stack: LocalStack) -> Iterator[None]:
    """Objects put meanwhile produce no notification (as if they predate the stack)."""
    s3 = stack.s3()
    bucket = resources(stack).uploads_bucket
    saved = s3.get_bucket_notification_configuration(Bucket=bucket)
    saved.pop("ResponseMetadata", None)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
    try:
        yield
    finally:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=saved)


def put(stack: LocalStack, key: str, body: bytes, **metadata: str) -> str:
    """Put an object; its version id."""
    answer = stack.s3().put_object(
        Bucket=resources(stack).uploads_bucket, Key=key, Body=body, Metadata=metadata
    )
    return str(answer["VersionId"])


def jobs_of(stack: LocalStack, key: str) -> list[Job]:
    table = cli_stack(stack).jobs
    return JobStore(table, retention_days=90, clock=time.time).jobs_for_source(
        resources(stack).uploads_bucket, key
    )


def runs_at_runflow(stack: LocalStack, client_ref: str) -> int:
    """How many runs the local Runflow holds for this reference (what would be billed)."""
    with httpx.Client(timeout=10) as http:
        runflow = RunflowClient(stack.info["runflow_url"], RUNFLOW_API_KEY, http=http)
        return len(runflow.find_runs(client_ref))


def queue_drained(stack: LocalStack, timeout: float = 60.0) -> None:
    """Wait (bounded) until the uploads queue holds no message, visible or in flight."""
    sqs = stack.sqs()
    deadline = time.monotonic() + timeout
    while True:
        attributes = sqs.get_queue_attributes(
            QueueUrl=resources(stack).queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if all(int(v) == 0 for v in attributes.values()):
            return
        assert time.monotonic() < deadline, f"uploads queue not drained: {attributes}"
        time.sleep(0.2)


def recycle_workers(stack: LocalStack, function: str) -> int:
    """End the function's idle worker processes (children of this process, found by the log file
    their stderr goes to): its next invocations start in fresh execution environments, as Lambda
    does after an environment is recycled. Returns how many were ended."""
    log = (stack.state_dir / "logs" / f"{function}.log").resolve()
    ended: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            stderr = Path(os.readlink(f"/proc/{entry}/fd/2")).resolve()
        except (OSError, ValueError):
            continue
        if parent == os.getpid() and stderr == log:
            os.kill(int(entry), signal.SIGKILL)
            ended.append(int(entry))
    deadline = time.monotonic() + 10
    for pid in ended:  # dead (a zombie until its Popen is polled) before anything is sent to it
        while (
            Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        ):
            assert time.monotonic() < deadline, f"worker {pid} did not end"
            time.sleep(0.05)
    return len(ended)
