"""``backdrop status``: every job of an object (the BySourceKey index), one job by id, or the jobs
under a prefix."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Group
from rich.table import Table

from backdrop.jobs import Job, Status
from backdrop.uploads import UploadRef, read_source
from backdrop_cli import jobtable
from backdrop_cli.app import App, job_doc, s3_url
from backdrop_cli.contexts import StatusContext
from backdrop_cli.errors import FAILED, OK, BadUsage
from backdrop_cli.renditions import renditions_doc, renditions_of, renditions_table
from backdrop_cli.times import ago, duration, seconds_between
from backdrop_cli.ui import facts, table

JOB_ID = re.compile(r"[0-9a-f]{32}")


def split_target(app: App, target: str) -> str:
    """A key, or ``s3://<uploads bucket>/<key>``."""
    if target.startswith("s3://"):
        bucket, _, key = target[len("s3://") :].partition("/")
        if bucket != app.stack.uploads_bucket:
            raise BadUsage(f"{target}: not in this stack's uploads bucket {app.stack.uploads_bucket!r}")
        return key
    return target


def run_status(context: StatusContext) -> int:
    app, target, prefix = context.app, context.target, context.prefix
    if prefix is not None:
        return _by_prefix(app, prefix, context.statuses, context.limit)
    assert target is not None
    key = split_target(app, target)
    jobs: list[Job] = []
    by_id = False
    if JOB_ID.fullmatch(key):
        job = jobtable.get_many(app.stack, [key]).get(key)
        if job is not None:
            jobs, by_id = [job], True
    if not jobs:
        jobs = jobtable.store(app.stack, app.rules.settings.retention_days).jobs_for_source(
            app.stack.uploads_bucket, key
        )
    current = _current_version(app, jobs[0] if by_id else None, key)
    # The renditions' verdicts, as stored (one batch read of the jobs shown).
    items = jobtable.get_items(app.stack, [job.job_id for job in jobs])
    doc: dict[str, Any] = {
        "stack": app.stack_doc(),
        "query": {"job_id": key} if by_id else {"key": key},
        "current_version": current,
        "jobs": [{**job_doc(job), "renditions": renditions_doc(items.get(job.job_id))} for job in jobs],
    }
    if app.ui.as_json:
        app.ui.emit(doc)
    elif not jobs:
        app.ui.print(f"No job for {s3_url(app.stack.uploads_bucket, key)}.")
    else:
        _show_jobs(app, jobs, current, items)
    return OK if jobs else FAILED


def _current_version(app: App, job: Job | None, key: str) -> dict[str, Any] | None:
    """The object's current version (a HEAD), to tell which job is for it."""
    source_key = job.source_key if job else key
    source = read_source(app.stack.s3, app.stack.uploads_bucket, source_key, sniff=False)
    if source is None:
        return None
    upload = source.upload
    return {"version_id": upload.version_id, "etag": (upload.etag or "").strip('"'), "size": upload.size}


def _is_current(job: Job, current: dict[str, Any] | None) -> bool:
    if current is None:
        return False
    return job.upload().same_version(
        UploadRef(job.source_bucket, job.source_key, current["version_id"], current["etag"], current["size"])
    )


def _show_jobs(
    app: App, jobs: list[Job], current: dict[str, Any] | None, items: dict[str, dict[str, Any]]
) -> None:
    first = jobs[0]
    where = s3_url(first.source_bucket, first.source_key)
    if current is None:
        app.ui.print(f"{where}: the object no longer exists. {len(jobs)} job(s), newest first:")
    else:
        app.ui.print(
            f"{where}: current version {current['version_id'] or current['etag']}."
            f" {len(jobs)} job(s), newest first:"
        )
    for job in jobs:
        app.ui.print(Group("", _job_facts(job, current)))
        renditions = renditions_of(items.get(job.job_id))
        if renditions:
            app.ui.print(renditions_table(renditions, job.result_bucket or app.stack.results_bucket))


def _job_facts(job: Job, current: dict[str, Any] | None) -> Table:
    """One job's labelled values, as ``status`` shows them."""
    grid = facts()
    grid.add_row("job", job.job_id + ("" if not _is_current(job, current) else "  (current version)"))
    grid.add_row("status", _status_text(job))
    if job.error_code:
        grid.add_row("reason", f"{job.error_code}: {job.error_message or ''}")
    grid.add_row("version", job.source_version_id or f"ETag {job.source_etag}")
    grid.add_row("colour", f"{job.color} ({job.color_source or '?'})")
    grid.add_row("content", f"sha256 {job.content_digest}" if job.content_digest else "-")
    if job.reused_from:
        grid.add_row("run", f"- (reused the result of job {job.reused_from}: no run, $0)")
    else:
        grid.add_row("run", job.run_id or "-")
    if job.result_keys:
        grid.add_row("result", "\n".join(s3_url(job.result_bucket or "", k) for k in job.result_keys))
    if job.superseded_by:
        grid.add_row("superseded by", job.superseded_by)
    grid.add_row("created", f"{job.created_at} ({ago(job.created_at)})")
    if job.submitted_at:
        grid.add_row("submitted", job.submitted_at)
    if job.completed_at:
        took = duration(seconds_between(job.created_at, job.completed_at))
        run = (
            f", Runflow {duration(job.runflow_duration_ms / 1000)}"
            if job.runflow_duration_ms is not None
            else ""
        )
        grid.add_row("completed", f"{job.completed_at} (time to result {took}{run})")
    for earlier in job.history:
        grid.add_row(
            f"attempt {earlier.get('attempt')}",
            f"{earlier.get('status')} {earlier.get('error_code') or ''} "
            f"run {earlier.get('run_id') or '-'} at {earlier.get('completed_at') or '?'}".strip(),
        )
    return grid


def _status_text(job: Job) -> str:
    text = job.status.value
    if job.attempt > 1:
        text += f" (attempt {job.attempt})"
    return text


def _by_prefix(app: App, prefix: str, statuses: frozenset[Status], limit: int) -> int:
    with app.ui.progress() as bar:
        bar.update("scan", completed=0, total=None, description="Reading jobs")
        items = {
            str(item["job_id"]): item
            for item in jobtable.scan_items(app.stack, jobtable.JobFilter(prefix=prefix, statuses=statuses))
        }
        jobs = sorted(
            (Job.from_item(item) for item in items.values()),
            key=lambda j: (j.created_at, j.job_id),
            reverse=True,
        )
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status.value] = counts.get(job.status.value, 0) + 1
    if app.ui.as_json:
        app.ui.emit(
            {
                "stack": app.stack_doc(),
                "query": {"prefix": prefix, "statuses": sorted(s.value for s in statuses)},
                "counts": dict(sorted(counts.items())),
                "jobs": [{**job_doc(job), "renditions": renditions_doc(items[job.job_id])} for job in jobs],
            }
        )
        return OK if jobs else FAILED
    if not jobs:
        app.ui.print(f"No job under {s3_url(app.stack.uploads_bucket, prefix)}.")
        return FAILED
    grid = table(
        "~key",
        "status",
        "colour",
        "reason",
        "job",
        ">took",
        title=f"{len(jobs)} job(s) under {prefix} ("
        + ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
        + ")",
    )
    for job in jobs[:limit]:
        grid.add_row(
            job.source_key,
            _status_text(job),
            job.color,
            job.error_code or "",
            job.job_id,
            duration(seconds_between(job.created_at, job.completed_at)) if job.completed_at else "",
        )
    app.ui.print(grid)
    if len(jobs) > limit:
        app.ui.print(f"… and {len(jobs) - limit} more (--limit, or --json for all)")
    return OK
