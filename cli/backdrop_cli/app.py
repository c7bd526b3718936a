"""What every subcommand shares: the stack it talks to, its rules, the output, and job rendering."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backdrop.jobs import Job
from backdrop_cli.errors import BadUsage
from backdrop_cli.jobtable import runs_billed
from backdrop_cli.rules import Rules
from backdrop_cli.stack import Stack, deployed_stack, local_stack
from backdrop_cli.times import seconds_between
from backdrop_cli.ui import Ui


@dataclass
class Target:
    """Which stack, as the options name it."""

    stack_name: str | None
    profile: str | None
    region: str | None
    local: bool
    state_dir: Path | None

    def check(self) -> None:
        if self.local and self.stack_name:
            raise BadUsage("--stack and --local name two stacks: give one")
        if not self.local and not self.stack_name:
            raise BadUsage("which stack? give --stack NAME (a deployed stack) or --local (`make local`)")
        if self.local and (self.profile or self.region):
            raise BadUsage("--profile and --region are for --stack; the local stack names its own")
        if self.state_dir and not self.local:
            raise BadUsage("--state-dir is for --local")


class App:
    def __init__(self, target: Target, ui: Ui) -> None:
        self.target = target
        self.ui = ui

    @functools.cached_property
    def stack(self) -> Stack:
        t = self.target
        t.check()
        if t.local:
            return local_stack(t.state_dir)
        assert t.stack_name is not None
        return deployed_stack(t.stack_name, profile=t.profile, region=t.region)

    @functools.cached_property
    def rules(self) -> Rules:
        return Rules.from_parameters(self.stack.parameters)

    def stack_doc(self) -> dict[str, Any]:
        stack = self.stack
        return {"name": stack.label, "region": stack.region, "uploads_bucket": stack.uploads_bucket}


def s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def job_brief(job: Job) -> dict[str, Any]:
    """A job in a long list (a backfill's or a retry's): what tells how it ended."""
    return {
        "job_id": job.job_id,
        "key": job.source_key,
        "version_id": job.source_version_id,
        "color": job.color,
        "status": job.status.value,
        "attempt": job.attempt,
        "error_code": job.error_code,
        "error_message": job.error_message,
        "run_id": job.run_id,
        "result_keys": list(job.result_keys),
    }


def job_doc(job: Job) -> dict[str, Any]:
    """A job as ``--json`` shows it: the table's attributes operators read, and derived timings."""
    return {
        "job_id": job.job_id,
        "status": job.status.value,
        "attempt": job.attempt,
        "source": {
            "bucket": job.source_bucket,
            "key": job.source_key,
            "version_id": job.source_version_id,
            "etag": job.source_etag,
            "size": job.source_size,
        },
        "color": job.color,
        "color_source": job.color_source,
        "error_code": job.error_code,
        "error_message": job.error_message,
        "run_id": job.run_id,
        "run_status": job.run_status,
        "result": (
            {
                "bucket": job.result_bucket,
                "keys": list(job.result_keys),
                "urls": [s3_url(job.result_bucket or "", k) for k in job.result_keys],
            }
            if job.result_keys
            else None
        ),
        "superseded_by": job.superseded_by,
        "content_digest": job.content_digest,
        "reused_from": job.reused_from,
        "created_at": job.created_at,
        "submitted_at": job.submitted_at,
        "completed_at": job.completed_at,
        "updated_at": job.updated_at,
        "time_to_result_s": seconds_between(job.created_at, job.completed_at),
        "runflow_duration_ms": job.runflow_duration_ms,
        "runs_billed": runs_billed(job),
        "history": job.history,
    }
