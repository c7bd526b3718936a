"""What a plan would reuse instead of run, by the pipeline's rule: an object reuses when an earlier
job with the same content digest (``content_digest``, the SHA-256 of the bytes) and the same
recorded colour ended ``succeeded`` and its result objects still exist; identical objects of one
plan (same digest and colour) make one run, and the others reuse it.

Each new object's digest comes from the cheapest source that knows it: a job of that exact object
version (any colour: the bytes are the same), else the full-object SHA-256 S3 stores for it (a
HEAD), else, when asked (``--digest``), the object read once (``backdrop.identity``). An object
whose digest stays unknown is counted as a run: the estimate may be high, never low.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from boto3.dynamodb.conditions import Attr
from botocore.exceptions import ClientError

from backdrop.identity import content_digest, stored_sha256
from backdrop.jobs import Status
from backdrop.uploads import UploadRef
from backdrop_cli.inventory import Plan, Planned, Verdict
from backdrop_cli.stack import Stack

SCAN_SEGMENTS = 4


class Reuse(StrEnum):
    EARLIER = "from_earlier_results"  # an earlier succeeded job's result is copied: no run
    DUPLICATE = "duplicates_in_plan"  # the same bytes and colour as an object run in this plan


class DigestSource(StrEnum):
    JOB = "job"  # recorded by a job of the same object version
    STORED = "s3_checksum"  # S3's stored full-object SHA-256
    STREAMED = "streamed"  # the object read once (--digest)


def version_of(bucket: str, key: str, upload: UploadRef) -> tuple[str, str, str]:
    """An object version, as a job of it records it (version id, or ETag when unversioned)."""
    return bucket, key, upload.version_tag


@dataclass(frozen=True)
class Earlier:
    """A succeeded job with a known digest: a result that may be reused."""

    job_id: str
    result_bucket: str
    result_keys: tuple[str, ...]


@dataclass
class Known:
    """What the jobs table knows of content: the digest of each job's object version, and the
    succeeded jobs of each (digest, colour)."""

    digests: dict[tuple[str, str, str], str] = field(default_factory=dict)
    succeeded: dict[tuple[str, str], list[Earlier]] = field(default_factory=dict)

    def add(self, item: dict[str, Any]) -> None:
        digest = str(item["content_digest"])
        upload = UploadRef(
            str(item["source_bucket"]),
            str(item["source_key"]),
            _opt(item.get("source_version_id")),
            _opt(item.get("source_etag")),
            None,
        )
        self.digests[version_of(upload.bucket, upload.key, upload)] = digest
        keys = tuple(str(k) for k in item.get("result_keys") or [])
        if item.get("status") == Status.SUCCEEDED.value and keys and item.get("result_bucket"):
            earlier = Earlier(str(item["job_id"]), str(item["result_bucket"]), keys)
            self.succeeded.setdefault((digest, str(item.get("color", ""))), []).append(earlier)


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def known_contents(stack: Stack) -> Known:
    """Every job that recorded a digest (a parallel scan, only the attributes needed travel)."""
    known = Known()
    for item in _scan_digests(stack):
        known.add(item)
    return known


def _scan_digests(stack: Stack) -> Iterator[dict[str, Any]]:
    def one_segment(segment: int) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "Segment": segment,
            "TotalSegments": SCAN_SEGMENTS,
            "FilterExpression": Attr("content_digest").exists(),
            "ProjectionExpression": "job_id, #s, color, content_digest, source_bucket, source_key, "
            "source_version_id, source_etag, result_bucket, result_keys",
            "ExpressionAttributeNames": {"#s": "status"},
        }
        items: list[dict[str, Any]] = []
        while True:
            answer = stack.jobs.scan(**kwargs)
            items += [dict(item) for item in answer.get("Items", [])]
            if not answer.get("LastEvaluatedKey"):
                return items
            kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    with ThreadPoolExecutor(max_workers=SCAN_SEGMENTS) as pool:
        for items in pool.map(one_segment, range(SCAN_SEGMENTS)):
            yield from items


def assess(stack: Stack, plan: Plan, *, enabled: bool, stream: bool, workers: int = 16) -> None:
    """Mark each object the plan would submit with its digest and whether it would reuse."""
    plan.reuse_enabled = enabled
    if not enabled:
        return  # ReuseResults=false: every object makes a run
    submits = plan.of(Verdict.SUBMIT)
    if not submits:
        return
    known = known_contents(stack)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda p: find_digest(stack, known, p, stream=stream), submits))
    leaders: set[tuple[str, str]] = set()
    reusable: dict[tuple[str, str], bool] = {}
    for planned in submits:  # in key order: the first of identical objects is the one that runs
        if planned.digest is None:
            continue
        content = (planned.digest, planned.entry.color)
        if content not in reusable:
            reusable[content] = any(result_exists(stack, e) for e in known.succeeded.get(content, []))
        if reusable[content]:
            planned.reuse = Reuse.EARLIER
        elif content in leaders:
            planned.reuse = Reuse.DUPLICATE
        else:
            leaders.add(content)


def find_digest(stack: Stack, known: Known, planned: Planned, *, stream: bool) -> None:
    entry = planned.entry
    upload = entry.upload
    recorded = known.digests.get(version_of(entry.bucket, entry.key, upload))
    if recorded is not None:
        planned.digest, planned.digest_source = recorded, DigestSource.JOB
        return
    try:
        stored = stored_sha256(stack.s3.head_object(**upload.object_params(), ChecksumMode="ENABLED"))
        if stored is not None:
            planned.digest, planned.digest_source = stored, DigestSource.STORED
        elif stream:
            planned.digest, planned.digest_source = content_digest(stack.s3, upload), DigestSource.STREAMED
    except ClientError as exc:
        if not _missing(exc):
            raise  # deleted since it was listed: its digest stays unknown (the pipeline ignores it)


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchVersion", "NotFound")


def result_exists(stack: Stack, earlier: Earlier) -> bool:
    """Every result object of the earlier job is still there (a HEAD each)."""
    for key in earlier.result_keys:
        try:
            stack.s3.head_object(Bucket=earlier.result_bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return False
            raise
    return True
