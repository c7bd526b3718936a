"""``backdrop retry``: run terminal jobs again, on purpose.

A retry is a new attempt of the same job (``JobStore.begin_retry``: a conditional write on the
attempt number, the finished attempt kept in ``history``), then one ``JobMessage`` on the uploads
queue asks the submit function to create that attempt's run. The attempt's run reference at
Runflow is ``<job_id>-<attempt>`` and every create is guarded by the job's pending-create mark, so
an attempt makes exactly one run however often its message is delivered; if the message is lost
(the command dies right after the write), the reconciler creates the run of the open job instead.

Before anything is written the source is checked (a HEAD of the current object and, when it
differs, of the job's own version): a version that no longer exists, or that a newer version has
replaced (its result would be overwritten: billed for nothing), is refused with the reason.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from backdrop.colours import parse_colour
from backdrop.jobs import RETRYABLE, Job, Status, now_iso
from backdrop.jobstore import JobStore
from backdrop.queues import JobMessage
from backdrop.uploads import read_source
from backdrop_cli import jobtable
from backdrop_cli.app import App
from backdrop_cli.backfill import budget_outlook
from backdrop_cli.contexts import RetryContext
from backdrop_cli.errors import FAILED, OK
from backdrop_cli.groups import FAILURES
from backdrop_cli.rules import usd
from backdrop_cli.sending import Sender, StopFlag
from backdrop_cli.ui import facts, table
from backdrop_cli.waiting import Tracked, WaitResult, summarise_wait, wait_with_progress

BATCH = 10


@dataclass(frozen=True)
class Refusal:
    job_id: str
    key: str
    reason: str


def eligibility(app: App, job: Job, include_rejected: bool) -> str | None:
    """Why this job may not be retried, or None. Reads S3 (HEADs; a ranged GET for rejected jobs)."""
    why = _status_refusal(job, include_rejected) or _version_refusal(app, job)
    if why is None and job.status is Status.REJECTED:
        why = _still_rejected(app, job)
    return why


def _status_refusal(job: Job, include_rejected: bool) -> str | None:
    """Why the job's status alone rules a retry out, or None."""
    if job.status is Status.SUCCEEDED:
        return "succeeded: nothing to retry"
    if job.status is Status.SUPERSEDED:
        return f"superseded ({job.error_code}): a newer version (or a later job) has the result"
    if job.is_open:
        return f"still open ({job.status.value}): the pipeline is carrying it on"
    if job.status is Status.REJECTED and not include_rejected:
        return f"rejected ({job.error_code}): the same bytes fail again; --include-rejected to retry anyway"
    if job.status not in RETRYABLE:
        return f"{job.status.value}: not retryable"
    return None


def _version_refusal(app: App, job: Job) -> str | None:
    """Why the job's source version may not run again (gone, or replaced by a newer one), or None."""
    s3 = app.stack.s3
    current = read_source(s3, job.source_bucket, job.source_key, sniff=False)
    mine = job.upload()
    if current is not None and current.upload.same_version(mine):
        return None
    exists = read_source(s3, job.source_bucket, job.source_key, version_id=job.source_version_id, sniff=False)
    if exists is None or (not mine.versioned and current is not None):
        return "its source version no longer exists"
    if current is None:
        return "the object was deleted (only older versions are left): nothing would be written"
    newer = current.upload.version_id or current.upload.etag
    return (
        f"superseded: the object's current version is {newer}; a run of this version would be "
        "billed for nothing (its result is never written). Backfill the current version instead"
    )


def _still_rejected(app: App, job: Job) -> str | None:
    """Why a rejected job would be rejected again under the stack's rules now, or None: only a rule
    change (a raised MaxInputBytes, …) lets a rejected upload pass."""
    source = read_source(app.stack.s3, job.source_bucket, job.source_key, version_id=job.source_version_id)
    if source is None:
        return "its source version no longer exists"
    try:
        colour = parse_colour(job.color)
    except ValueError as exc:
        return f"still INVALID_COLOR: {exc}"
    problem = app.rules.rejection(source, app.rules.colour(source, colour))
    if problem is not None:
        return f"still {problem[0]} under the stack's rules: {problem[1]}"
    return None


def select(context: RetryContext) -> tuple[list[Job], list[Refusal]]:
    stack, job_ids = context.app.stack, context.job_ids
    if job_ids:
        found = jobtable.get_many(stack, job_ids)
        missing = [Refusal(j, "", "no such job") for j in dict.fromkeys(job_ids) if j not in found]
        return [found[j] for j in dict.fromkeys(job_ids) if j in found], missing
    where = jobtable.JobFilter(
        prefix=context.prefix,
        statuses=context.statuses,
        error_code=context.error_code,
        completed_since=context.since,
    )
    jobs = sorted(jobtable.scan(stack, where), key=lambda j: (j.completed_at or "", j.job_id))
    return jobs, []


def choose(context: RetryContext) -> tuple[list[Job], list[Job], list[Refusal]]:
    """The selected jobs, those of them that may be retried, and the refusals with their reasons."""
    app = context.app
    with app.ui.progress() as bar:
        bar.update("select", completed=0, total=None, description="Selecting jobs")
        candidates, refused = select(context)
        reasons: list[str | None] = []
        with ThreadPoolExecutor(max_workers=context.workers) as pool:
            for why in pool.map(lambda job: eligibility(app, job, context.include_rejected), candidates):
                reasons.append(why)
                bar.update(
                    "check", completed=len(reasons), total=len(candidates), description="Checking sources"
                )
    eligible = [job for job, why in zip(candidates, reasons, strict=True) if why is None]
    refused += [
        Refusal(job.job_id, job.source_key, why) for job, why in zip(candidates, reasons, strict=True) if why
    ]
    return candidates, eligible, refused


def start_attempts(
    store: JobStore, sender: Sender, jobs: list[Job], include_rejected: bool
) -> tuple[list[Job], list[Refusal], list[str]]:
    """Begins the next attempt of each job and sends its message: the jobs started, those the
    store refused, and the ids whose message SQS may not have (the reconciler creates their runs)."""
    started: list[Job] = []
    refused: list[Refusal] = []
    for job in jobs:
        move = store.begin_retry(job, include_rejected=include_rejected)
        if move.moved and move.job is not None:
            started.append(move.job)
        else:
            refused.append(Refusal(job.job_id, job.source_key, _store_refusal(job, move.job)))
    if not started:
        return started, refused, []
    report = sender.send_batch(
        [(j.job_id, JobMessage(j.job_id, j.attempt, now_iso()).body()) for j in started]
    )
    return started, refused, report.unknown + list(report.refused)


def run_retry(context: RetryContext) -> int:
    app = context.app
    candidates, eligible, refused = choose(context)
    outlook = budget_outlook(app)
    doc: dict[str, Any] = {
        "stack": app.stack_doc(),
        "selected": len(candidates) + sum(1 for r in refused if r.reason == "no such job"),
        "to_retry": len(eligible),
        "price_per_run_usd": app.rules.price_per_run,
        "estimated_cost_usd": app.rules.cost(len(eligible)),
        "budget": outlook.doc(len(eligible)),
    }
    if not app.ui.as_json:
        _show_selection(app, eligible, refused, doc)
    if eligible:
        app.ui.confirm_cost(
            f"Retry {len(eligible)} jobs: {len(eligible)} new runs, "
            f"estimated {usd(app.rules.cost(len(eligible)))}.",
            yes=context.yes,
        )
    started: list[Job] = []
    unsent: list[str] = []
    interrupted = False
    result: WaitResult | None = None
    with StopFlag() as stop, app.ui.progress() as bar:
        sender = Sender(app.stack.sqs_once, app.stack.uploads_queue_url, stop=stop)
        store = jobtable.store(app.stack, app.rules.settings.retention_days)
        for start in range(0, len(eligible), BATCH):
            if stop.stopped:
                interrupted = True
                break
            batch, store_refused, batch_unsent = start_attempts(
                store, sender, eligible[start : start + BATCH], context.include_rejected
            )
            refused += store_refused
            unsent += batch_unsent
            started += batch
            bar.update("start", completed=len(started), total=len(eligible), description="Retrying")
        tracked = [Tracked(j.job_id, j.attempt, j.upload()) for j in started]
        if context.wait and tracked and not interrupted:
            result = wait_with_progress(app, bar, stop, tracked, context.wait_timeout)
    doc["started"] = [{"job_id": j.job_id, "key": j.source_key, "attempt": j.attempt} for j in started]
    doc["refused"] = [{"job_id": r.job_id, "key": r.key, "reason": r.reason} for r in refused]
    doc["left_to_reconciler"] = unsent
    doc["interrupted"] = interrupted or bool(result and result.interrupted)
    summarise_wait(app, doc, tracked, result)
    counts = Counter[str](doc["outcomes"])
    failed_count = sum(counts[s.value] for s in FAILURES)
    if app.ui.as_json:
        app.ui.emit(doc)
    else:
        _show_result(app, doc)
    bad = refused or failed_count or doc["interrupted"] or (result is not None and result.timed_out)
    return FAILED if bad else OK


def _store_refusal(before: Job, now: Job | None) -> str:
    """Why ``begin_retry``'s conditional write was refused, from the item it saw."""
    if now is None:
        return "the job no longer exists"
    if now.attempt != before.attempt:
        return f"already retried meanwhile (now attempt {now.attempt}, {now.status.value})"
    if now.status is not before.status:
        return f"its status changed meanwhile (now {now.status.value})"
    return (
        "its previous completion event is still pending (the reconciler publishes it on its next "
        "pass); retry it after that"
    )


def _show_selection(app: App, eligible: list[Job], refused: list[Refusal], doc: dict[str, Any]) -> None:
    if eligible:
        grid = table("~key", "job", "status", "reason", ">attempt", title=f"To retry: {len(eligible)}")
        for job in eligible[:30]:
            grid.add_row(
                job.source_key,
                job.job_id,
                job.status.value,
                job.error_code or "",
                f"{job.attempt} → {job.attempt + 1}",
            )
        app.ui.print(grid)
        if len(eligible) > 30:
            app.ui.print(f"… and {len(eligible) - 30} more")
    grid = facts()
    grid.add_row("to retry", str(len(eligible)))
    grid.add_row(
        "cost",
        f"{len(eligible)} new runs, estimated {usd(doc['estimated_cost_usd'])}"
        f" at {usd(doc['price_per_run_usd'])} a run",
    )
    budget = doc["budget"]
    if budget["daily_run_budget"]:
        grid.add_row(
            "run budget",
            f"{budget['reserved_today']} of {budget['daily_run_budget']} runs reserved today (UTC)",
        )
    app.ui.print(grid)
    _show_refused(app, [{"job_id": r.job_id, "key": r.key, "reason": r.reason} for r in refused])


def _show_refused(app: App, refused: list[dict[str, str]]) -> None:
    if refused:
        grid = table("~key", "job", "~refused because", title=f"Refused: {len(refused)}")
        for r in refused:
            grid.add_row(r["key"], r["job_id"], r["reason"])
        app.ui.print(grid)


def _show_result(app: App, doc: dict[str, Any]) -> None:
    grid = facts("Retry")
    grid.add_row("started", str(len(doc["started"])))
    if doc["left_to_reconciler"]:
        grid.add_row(
            "not sent",
            f"{len(doc['left_to_reconciler'])}: the reconciler creates their runs on its next pass",
        )
    wait = doc.get("wait")
    if wait:
        grid.add_row("outcomes", ", ".join(f"{s} {n}" for s, n in doc["outcomes"].items()) or "-")
        grid.add_row("runs created", f"{doc['runs_created']}  (spent {usd(doc['spent_usd'])})")
        if wait["held_for_budget"]:
            grid.add_row(
                "held", "today's run budget is spent: the held jobs resume on their own, oldest first"
            )
        if wait["timed_out"] or wait["interrupted"]:
            grid.add_row("waiting", "stopped; the jobs go on (`backdrop status JOB_ID`)")
    elif doc["started"]:
        grid.add_row("waiting", "not waited for: `backdrop status JOB_ID` shows them")
    if doc["interrupted"] and not wait:
        grid.add_row("stopped", "Ctrl-C: the jobs not started are untouched; run it again")
    app.ui.print(grid)
    new_refusals = doc["refused"]
    # Refusals found only while starting (the store's) are shown again with the result.
    _show_refused(app, [r for r in new_refusals if "pending" in r["reason"] or "meanwhile" in r["reason"]])
