"""``backdrop review``: the results the quality gate held back for a person (``needs_review``), and
that person's decisions.

A held job's result and renditions wait under the stack's review prefix in the results bucket. A
decision is one ``backdrop.queues.ReviewRequest`` on the copy queue: the copy function publishes
exactly what was held (approve, no run) or ends the job ``rejected`` with ``REJECTED_BY_REVIEW``
and the note (reject). The command sends it and waits until the job has left ``needs_review``.
A job that is not waiting for review (decided meanwhile, or never held) is refused before anything
is sent. ``--retry`` then starts the next, billed attempt of each rejected job, as ``backdrop
retry`` does; its cost is shown and confirmed before the rejections are sent.

The review page (``--serve``, ``backdrop_cli.reviewpage``) decides through ``decide`` too."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import Attr, Key

from backdrop.errors import ErrorCode
from backdrop.jobs import OPEN_SHARD, Job, Status, parse_iso
from backdrop.queues import Decision, ReviewRequest
from backdrop_cli import jobtable
from backdrop_cli.app import App
from backdrop_cli.contexts import ReviewContext
from backdrop_cli.errors import FAILED, OK
from backdrop_cli.renditions import renditions_doc
from backdrop_cli.retry import eligibility, start_attempts
from backdrop_cli.rules import usd
from backdrop_cli.sending import Sender, StopFlag
from backdrop_cli.stack import Stack
from backdrop_cli.times import duration
from backdrop_cli.ui import facts, table
from backdrop_cli.waiting import Tracked, wait_for


def operator_identity(stack: Stack) -> str:
    """Who decides, by default: the AWS identity of a deployed stack's credentials (STS, through
    the stack's own endpoint), or the local user for the local stack."""
    if stack.endpoint_url is None:
        sts = stack.session.client("sts", region_name=stack.region)
        return str(sts.get_caller_identity()["Arn"])
    return os.environ.get("USER") or getpass.getuser()


def plain(value: Any) -> Any:
    """A stored value as JSON has it: DynamoDB numbers as int or float, maps and lists within."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def held_items(app: App) -> list[dict[str, Any]]:
    """Every job waiting for a person, as stored, the longest waiting first (the sparse OpenJobs
    index holds open jobs only)."""
    kwargs: dict[str, Any] = {
        "IndexName": "OpenJobs",
        "KeyConditionExpression": Key("open_shard").eq(OPEN_SHARD),
        "FilterExpression": Attr("status").eq(Status.NEEDS_REVIEW.value),
    }
    items: list[dict[str, Any]] = []
    while True:
        answer = app.stack.jobs.query(**kwargs)
        items += [dict(item) for item in answer.get("Items", [])]
        if not answer.get("LastEvaluatedKey"):
            break
        kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
    return sorted(items, key=lambda item: (str(item.get("updated_at") or ""), str(item["job_id"])))


def held_doc(item: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A held job as the list (``--json``) and the page show it."""
    job = Job.from_item(dict(item))
    since = job.updated_at  # nothing writes a job while it waits for a person
    quality = plain(job.quality)
    return {
        "job_id": job.job_id,
        "source": {"bucket": job.source_bucket, "key": job.source_key, "version_id": job.source_version_id},
        "color": job.color,
        "attempt": job.attempt,
        "held_since": since,
        "waiting_s": ((now or datetime.now(UTC)) - parse_iso(since)).total_seconds() if since else None,
        "verdict": quality.get("verdict"),
        "reasons": list(quality.get("reasons") or []),
        "checks": dict(quality.get("checks") or {}),
        "held_keys": list(job.held_keys),
        "result_bucket": job.result_bucket,
        "renditions": renditions_doc(item),
    }


def run_review(context: ReviewContext) -> int:
    if context.serve:
        from backdrop_cli.reviewpage import serve

        return serve(context)
    if context.action is None:
        return _list(context.app)
    return _decide_command(context)


def _list(app: App) -> int:
    docs = [held_doc(item) for item in held_items(app)]
    if app.ui.as_json:
        app.ui.emit({"stack": app.stack_doc(), "needs_review": len(docs), "jobs": docs})
        return OK
    if not docs:
        app.ui.print("No job is waiting for review.")
        return OK
    grid = table("job", "~key", "waiting", "~reasons", "~checks", title=f"Waiting for review: {len(docs)}")
    for doc in docs:
        checks = ", ".join(f"{name} {_number(value)}" for name, value in sorted(doc["checks"].items()))
        grid.add_row(
            doc["job_id"], doc["source"]["key"], duration(doc["waiting_s"]), "; ".join(doc["reasons"]), checks
        )
    app.ui.print(grid)
    app.ui.print("backdrop review approve JOB... | reject JOB... --note TEXT | --serve (the page)")
    return OK


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@dataclass
class Decided:
    """What became of the jobs a decision named."""

    refused: dict[str, str] = field(default_factory=dict)  # job id → why nothing was sent for it
    outcomes: list[dict[str, Any]] = field(default_factory=list)  # the jobs sent, as they are now
    undecided: list[str] = field(default_factory=list)  # sent, still waiting when the wait stopped
    unsent: dict[str, str] = field(default_factory=dict)  # SQS did not take it, or the answer was lost

    @property
    def failed(self) -> bool:
        return bool(self.refused or self.undecided or self.unsent)


def refusal(job: Job | None) -> str | None:
    """Why no decision may be sent for this job, or None."""
    if job is None:
        return "no such job"
    if job.status is Status.NEEDS_REVIEW:
        return None
    if job.review:
        decided = f"{job.review.get('decision')} by {job.review.get('reviewer')} at {job.review.get('at')}"
        return f"not waiting for review: {job.status.value} ({decided})"
    return f"not waiting for review: {job.status.value}"


def decide(
    app: App,
    job_ids: tuple[str, ...] | list[str],
    decision: Decision,
    *,
    reviewer: str,
    note: str | None,
    timeout: float | None,
    stop: StopFlag,
) -> Decided:
    """Send one review request per job waiting for review, and wait until each has left
    ``needs_review``. Jobs not waiting are refused, with the reason, and nothing is sent for them."""
    wanted = list(dict.fromkeys(job_ids))
    found = jobtable.get_many(app.stack, wanted)
    result = Decided()
    waiting: list[Job] = []
    for job_id in wanted:
        why = refusal(found.get(job_id))
        if why is None:
            waiting.append(found[job_id])
        else:
            result.refused[job_id] = why
    if not waiting:
        return result
    sender = Sender(app.stack.sqs_once, app.stack.copy_queue_url, stop=stop)
    messages = [(job.job_id, ReviewRequest(job.job_id, decision, reviewer, note).body()) for job in waiting]
    report = sender.send(messages)
    result.unsent = dict(report.refused) | dict.fromkeys(report.unknown, "delivery unknown (answer lost)")
    # Every exit from needs_review is a terminal status: the wait for the job's end is the one.
    tracked = [Tracked(job.job_id, job.attempt, job.upload()) for job in waiting if job.job_id in report.sent]
    waited = wait_for(
        app.stack, tracked, budget_per_day=app.rules.daily_run_budget, stop=stop, timeout=timeout
    )
    for t in tracked:
        job = waited.snapshot.jobs.get(t.job_id)
        if job is None or not waited.snapshot.finished(t):
            result.undecided.append(t.job_id)
        else:
            result.outcomes.append(outcome_doc(job))
    return result


def outcome_doc(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "key": job.source_key,
        "status": job.status.value,
        "error_code": job.error_code,
        "error_message": job.error_message,
        "review": plain(job.review) or None,
        "result_keys": list(job.result_keys),
        "attempt": job.attempt,
    }


def decided_doc(decided: Decided) -> dict[str, Any]:
    return {
        "decided": decided.outcomes,
        "refused": [{"job_id": j, "reason": why} for j, why in decided.refused.items()],
        "not_sent": [{"job_id": j, "reason": why} for j, why in decided.unsent.items()],
        "still_waiting": decided.undecided,
    }


def _decide_command(context: ReviewContext) -> int:
    app = context.app
    assert context.action is not None  # run_review lists without one
    decision = Decision(context.action)
    reviewer = context.reviewer or operator_identity(app.stack)
    note = context.note.strip() if context.note else None
    if context.retry:
        _confirm_retry(context)
    with StopFlag() as stop:
        decided = decide(
            app,
            context.job_ids,
            decision,
            reviewer=reviewer,
            note=note,
            timeout=context.wait_timeout,
            stop=stop,
        )
    doc: dict[str, Any] = {"stack": app.stack_doc(), "decision": decision.value, "reviewer": reviewer}
    doc.update(decided_doc(decided))
    failed = decided.failed
    if context.retry:
        rejected = [o["job_id"] for o in decided.outcomes if o["error_code"] == ErrorCode.REJECTED_BY_REVIEW]
        doc["retry"] = _retry(app, rejected)
        failed = failed or bool(doc["retry"]["refused"])
    if app.ui.as_json:
        app.ui.emit(doc)
    else:
        _show_decided(app, doc)
    return FAILED if failed else OK


def _confirm_retry(context: ReviewContext) -> None:
    """The new runs' cost, shown and confirmed before anything is sent."""
    app = context.app
    count = len(set(context.job_ids))
    cost = app.rules.cost(count)
    if not app.ui.as_json:
        grid = facts("Reject and retry")
        grid.add_row("jobs", str(count))
        grid.add_row(
            "cost", f"{count} new runs, estimated {usd(cost)} at {usd(app.rules.price_per_run)} a run"
        )
        app.ui.print(grid)
    app.ui.confirm_cost(
        f"Reject {count} jobs and retry them: {count} new runs, estimated {usd(cost)}.", yes=context.yes
    )


def _retry(app: App, job_ids: list[str]) -> dict[str, Any]:
    """The next attempt of each job a person rejected, as ``backdrop retry`` starts it (the source
    version checked first; the attempt's message on the uploads queue)."""
    jobs = jobtable.get_many(app.stack, job_ids)
    refused = {j: "no such job" for j in job_ids if j not in jobs}
    eligible: list[Job] = []
    for job in jobs.values():
        why = eligibility(app, job, include_rejected=True)
        if why is None:
            eligible.append(job)
        else:
            refused[job.job_id] = why
    with StopFlag() as stop:
        sender = Sender(app.stack.sqs_once, app.stack.uploads_queue_url, stop=stop)
        store = jobtable.store(app.stack, app.rules.settings.retention_days)
        started, store_refused, unsent = start_attempts(store, sender, eligible, include_rejected=True)
    refused |= {r.job_id: r.reason for r in store_refused}
    return {
        "started": [{"job_id": j.job_id, "key": j.source_key, "attempt": j.attempt} for j in started],
        "refused": [{"job_id": j, "reason": why} for j, why in refused.items()],
        "left_to_reconciler": unsent,
        "estimated_cost_usd": app.rules.cost(len(started)),
    }


def _show_decided(app: App, doc: dict[str, Any]) -> None:
    if doc["decided"]:
        grid = table("job", "~key", "status", "~result or note", title=f"Decided ({doc['decision']})")
        for o in doc["decided"]:
            what = ", ".join(o["result_keys"]) if o["status"] == "succeeded" else (o["error_message"] or "")
            grid.add_row(o["job_id"], o["key"], o["status"], what)
        app.ui.print(grid)
    problems = doc["refused"] + doc["not_sent"]
    problems += [{"job_id": j, "reason": "still waiting when the wait stopped"} for j in doc["still_waiting"]]
    if problems:
        grid = table("job", "~not decided because", title=f"Not decided: {len(problems)}")
        for p in problems:
            grid.add_row(p["job_id"], p["reason"])
        app.ui.print(grid)
    retry = doc.get("retry")
    if retry is not None:
        grid = facts("Retry")
        grid.add_row(
            "started",
            f"{len(retry['started'])} new attempts (estimated {usd(retry['estimated_cost_usd'])}):"
            " `backdrop status JOB` follows them",
        )
        for r in retry["refused"]:
            grid.add_row("refused", f"{r['job_id']}: {r['reason']}")
        app.ui.print(grid)
