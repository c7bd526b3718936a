"""Reading the jobs table the way an operator needs it: many jobs by id (``batch_get_item``, never a
scan), all jobs of an object (the ``BySourceKey`` index), and filtered scans for reports."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.conditions import Attr, ConditionBase

from backdrop.jobs import Job, Status
from backdrop.jobstore import JobStore

if TYPE_CHECKING:
    from backdrop_cli.stack import Stack

BATCH_GET_LIMIT = 100  # DynamoDB's most keys per BatchGetItem


def store(stack: Stack, retention_days: int) -> JobStore:
    return JobStore(stack.jobs, retention_days=retention_days, clock=time.time)


def get_many(
    stack: Stack, job_ids: Iterable[str], *, consistent: bool = True, workers: int = 8
) -> dict[str, Job]:
    """The jobs that exist among ``job_ids``, by id (unprocessed keys are asked for again)."""
    items = get_items(stack, job_ids, consistent=consistent, workers=workers)
    return {job_id: Job.from_item(item) for job_id, item in items.items()}


def get_items(
    stack: Stack, job_ids: Iterable[str], *, consistent: bool = True, workers: int = 8
) -> dict[str, dict[str, Any]]:
    """The stored items of the jobs that exist among ``job_ids``, by id: every attribute, also
    those the job record does not model (a rendition's verdicts)."""
    unique = list(dict.fromkeys(job_ids))
    chunks = [unique[i : i + BATCH_GET_LIMIT] for i in range(0, len(unique), BATCH_GET_LIMIT)]
    found: dict[str, dict[str, Any]] = {}
    if not chunks:
        return found
    with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        for items in pool.map(lambda chunk: _get_chunk(stack, chunk, consistent), chunks):
            for item in items:
                found[str(item["job_id"])] = item
    return found


def _get_chunk(stack: Stack, job_ids: list[str], consistent: bool) -> list[dict[str, Any]]:
    table = stack.jobs_table
    request: dict[str, Any] = {
        table: {"Keys": [{"job_id": job_id} for job_id in job_ids], "ConsistentRead": consistent}
    }
    items: list[dict[str, Any]] = []
    delay = 0.05
    while request:
        answer = stack.dynamodb.batch_get_item(RequestItems=request)
        items += [dict(item) for item in answer.get("Responses", {}).get(table, [])]
        request = dict(answer.get("UnprocessedKeys") or {})
        if request:  # throttled: back off with jitter, as DynamoDB asks
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
    return items


@dataclass(frozen=True)
class JobFilter:
    """What a scan keeps (every part optional): key prefix, statuses, error code, time windows."""

    prefix: str | None = None
    statuses: frozenset[Status] = frozenset()
    error_code: str | None = None
    created_since: str | None = None  # ISO, as the table stores it
    completed_since: str | None = None

    def condition(self) -> ConditionBase | None:
        parts: list[ConditionBase] = []
        if self.prefix:
            parts.append(Attr("source_key").begins_with(self.prefix))
        if self.statuses:
            parts.append(Attr("status").is_in(sorted(s.value for s in self.statuses)))
        if self.error_code:
            parts.append(Attr("error_code").eq(self.error_code))
        if self.created_since:
            parts.append(Attr("created_at").gte(self.created_since))
        if self.completed_since:
            parts.append(Attr("completed_at").gte(self.completed_since))
        if not parts:
            return None
        condition = parts[0]
        for part in parts[1:]:
            condition = condition & part
        return condition


def scan(stack: Stack, where: JobFilter, *, segments: int = 4) -> Iterator[Job]:
    """Every job the filter keeps: a parallel scan (a report or a selection by status has no index
    to use; the filter runs server-side, so only matching jobs travel)."""
    return (Job.from_item(item) for item in scan_items(stack, where, segments=segments))


def scan_items(stack: Stack, where: JobFilter, *, segments: int = 4) -> Iterator[dict[str, Any]]:
    """``scan``, as the stored items (every attribute)."""
    condition = where.condition()

    def one_segment(segment: int) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Segment": segment, "TotalSegments": segments}
        if condition is not None:
            kwargs["FilterExpression"] = condition
        jobs: list[dict[str, Any]] = []
        while True:
            answer = stack.jobs.scan(**kwargs)
            jobs += [dict(item) for item in answer.get("Items", [])]
            start = answer.get("LastEvaluatedKey")
            if not start:
                return jobs
            kwargs["ExclusiveStartKey"] = start

    with ThreadPoolExecutor(max_workers=segments) as pool:
        for jobs in pool.map(one_segment, range(segments)):
            yield from jobs


def runs_billed(job: Job) -> int:
    """Runflow runs this job was billed for: its current attempt's run and every earlier one's."""
    return (1 if job.run_id else 0) + sum(1 for h in job.history if h.get("run_id"))
