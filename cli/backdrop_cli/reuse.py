"""What a plan would reuse instead of run, by the pipeline's rule: an object reuses when the
ledger's content record for its content digest (SHA-256 of the bytes) and recorded colour names a
job that succeeded, and every result object of that job still exists; identical objects of one
plan (same digest and colour) make one run, and the others reuse it.

Each new object's digest comes from the cheapest source that knows it: a job of that exact object
version (any colour: the bytes are the same; the ``BySourceKey`` index), else the full-object
SHA-256 S3 stores for it (a HEAD), else, when asked (``--digest``), the object read once
(``backdrop.identity``). An object whose digest stays unknown is counted as a run: the estimate
may be high, never low.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

from botocore.exceptions import ClientError

from backdrop.identity import content_digest, stored_sha256
from backdrop.ledger import ContentLedger
from backdrop_cli import jobtable
from backdrop_cli.inventory import Plan, Planned, Verdict
from backdrop_cli.stack import Stack


class Reuse(StrEnum):
    EARLIER = "from_earlier_results"  # an earlier succeeded job's result is copied: no run
    DUPLICATE = "duplicates_in_plan"  # the same bytes and colour as an object run in this plan


def assess(stack: Stack, plan: Plan, *, enabled: bool, stream: bool, workers: int = 16) -> None:
    """Mark each object the plan would submit with its digest and whether it would reuse."""
    plan.reuse_enabled = enabled
    if not enabled:
        return  # ReuseResults=false: every object makes a run
    submits = plan.of(Verdict.SUBMIT)
    if not submits:
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda p: find_digest(stack, p, stream=stream), submits))
    contents = ContentLedger(stack.ledger, clock=time.time)
    leaders: set[tuple[str, str]] = set()
    reusable: dict[tuple[str, str], bool] = {}
    for planned in submits:  # in key order: the first of identical objects is the one that runs
        if planned.digest is None:
            continue
        content = (planned.digest, planned.entry.color)
        if content not in reusable:
            record = contents.get(*content)
            reusable[content] = record.done_job_id is not None and result_exists(stack, record.done_keys)
        if reusable[content]:
            planned.reuse = Reuse.EARLIER
        elif content in leaders:
            planned.reuse = Reuse.DUPLICATE
        else:
            leaders.add(content)


def find_digest(stack: Stack, planned: Planned, *, stream: bool) -> None:
    """The object's content digest, from the first source that knows it (None: unknown)."""
    upload = planned.entry.upload
    jobs = jobtable.store(stack, retention_days=0).jobs_for_source(upload.bucket, upload.key)  # reads only
    same_version = [j for j in jobs if j.upload().same_version(upload)]
    recorded = next((j.content_digest for j in same_version if j.content_digest), None)
    if recorded is not None:
        planned.digest = recorded
        return
    try:
        stored = stored_sha256(stack.s3.head_object(**upload.object_params(), ChecksumMode="ENABLED"))
        planned.digest = stored if stored is not None or not stream else content_digest(stack.s3, upload)
    except ClientError as exc:
        if not _missing(exc):
            raise  # deleted since it was listed: its digest stays unknown (the pipeline ignores it)


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchVersion", "NotFound")


def result_exists(stack: Stack, keys: tuple[str, ...]) -> bool:
    """Every result object of the earlier job is still there (a HEAD each), as the pipeline checks
    before it copies them."""
    if not keys:
        return False
    for key in keys:
        try:
            stack.s3.head_object(Bucket=stack.results_bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return False
            raise
    return True
