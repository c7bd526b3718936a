"""``backdrop report``: what happened to the jobs of a period (and prefix), what it cost, what is
still waiting, and the run budget's spend per UTC day from the ledger."""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.table import Table

from backdrop.jobs import TERMINAL, Job, Status, format_iso, parse_iso
from backdrop.ledger import RunBudget
from backdrop_cli import jobtable
from backdrop_cli.app import App
from backdrop_cli.contexts import ReportContext
from backdrop_cli.errors import OK
from backdrop_cli.groups import FAILURES
from backdrop_cli.renditions import count_verdicts, verdicts_table
from backdrop_cli.rules import usd
from backdrop_cli.times import ago, duration, seconds_between
from backdrop_cli.ui import facts, table

CSV_COLUMNS = [
    "job_id",
    "status",
    "attempt",
    "source_bucket",
    "source_key",
    "source_version_id",
    "source_etag",
    "source_size",
    "color",
    "color_source",
    "error_code",
    "error_message",
    "run_id",
    "runs_billed",
    "result_bucket",
    "result_keys",
    "created_at",
    "submitted_at",
    "completed_at",
    "time_to_result_s",
    "runflow_duration_ms",
    "superseded_by",
    "content_digest",
    "reused_from",
]


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (an observed value, never an interpolation)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def folder(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/" if "/" in key else ""


def summarise(jobs: list[Job], price: Any, *, top: int, now: datetime) -> dict[str, Any]:
    by_status = Counter(job.status.value for job in jobs)
    reasons: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, str], str] = {}
    for job in jobs:
        if job.status in FAILURES:
            reason = (job.status.value, job.error_code or "?")
            reasons[reason] += 1
            examples.setdefault(reason, job.error_message or "")
    runs = sum(jobtable.runs_billed(job) for job in jobs)
    times = [
        t
        for job in jobs
        if job.status is Status.SUCCEEDED
        and (t := seconds_between(job.created_at, job.completed_at)) is not None
    ]
    open_jobs = [job for job in jobs if job.status not in TERMINAL]
    backlog: dict[str, list[Job]] = defaultdict(list)
    for job in open_jobs:
        backlog[folder(job.source_key)].append(job)
    largest = sorted(backlog.items(), key=lambda item: (-len(item[1]), item[0]))[:top]
    oldest = min(open_jobs, key=lambda job: job.created_at, default=None)
    return {
        "jobs": len(jobs),
        "by_status": dict(sorted(by_status.items())),
        "failure_reasons": [
            {"status": status, "error_code": code, "count": n, "example": examples[(status, code)]}
            for (status, code), n in reasons.most_common()
        ],
        "runs_billed": runs,
        "cost_usd": price * runs,
        "time_to_result_s": {"p50": percentile(times, 50), "p95": percentile(times, 95), "count": len(times)},
        "open": {
            "total": len(open_jobs),
            "by_status": dict(sorted(Counter(job.status.value for job in open_jobs).items())),
            "last_errors": dict(Counter(job.error_code for job in open_jobs if job.error_code).most_common()),
            "oldest": (
                {
                    "job_id": oldest.job_id,
                    "key": oldest.source_key,
                    "status": oldest.status.value,
                    "created_at": oldest.created_at,
                }
                if oldest
                else None
            ),
            "largest_backlog": [
                {
                    "prefix": prefix,
                    "open": len(members),
                    "by_status": dict(sorted(Counter(j.status.value for j in members).items())),
                    "oldest_created_at": min(j.created_at for j in members),
                }
                for prefix, members in largest
            ],
        },
    }


def reuse_summary(jobs: list[Job], price: Any) -> dict[str, Any]:
    """Jobs that reused an earlier job's result instead of a run, and what those runs would have cost."""
    reused = sum(1 for job in jobs if job.reused_from and job.status is Status.SUCCEEDED)
    return {"reused": reused, "saved_usd": price * reused}


def spend(app: App, first_day: date, last_day: date) -> list[dict[str, Any]]:
    """Runs reserved per UTC day (the ledger's ``budget#<day>`` items) against the budget."""
    budget = RunBudget(app.stack.ledger, daily=app.rules.daily_run_budget, clock=lambda: 0.0)
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    keys = [{"pk": RunBudget.key_for(d.isoformat())} for d in days]
    reserved: dict[str, int] = {}
    table_name = app.stack.ledger_table
    for start in range(0, len(keys), 100):
        request: dict[str, Any] = {table_name: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
        while request:
            answer = app.stack.dynamodb.batch_get_item(RequestItems=request)
            for item in answer.get("Responses", {}).get(table_name, []):
                reserved[str(item["pk"]).removeprefix("budget#")] = int(str(item.get("reserved", 0)))
            request = dict(answer.get("UnprocessedKeys") or {})
    rows = []
    for day in days:
        runs = reserved.get(day.isoformat(), 0)
        rows.append(
            {
                "day": day.isoformat(),
                "runs_reserved": runs,
                "daily_run_budget": budget.daily,
                "percent_of_budget": round(100.0 * runs / budget.daily, 1) if budget.daily else None,
                "cost_usd": app.rules.cost(runs),
            }
        )
    return rows


def queue_depths(app: App) -> dict[str, dict[str, int]]:
    depths: dict[str, dict[str, int]] = {}
    for name, url in (
        ("uploads", app.stack.uploads_queue_url),
        ("uploads_dead_letter", app.stack.dead_letter_queue_url),
    ):
        attributes = app.stack.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        depths[name] = {
            "waiting": int(attributes.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        }
    return depths


def write_csv(path: Path, jobs: list[Job]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for job in sorted(jobs, key=lambda j: (j.created_at, j.job_id)):
            writer.writerow(
                {
                    "job_id": job.job_id,
                    "status": job.status.value,
                    "attempt": job.attempt,
                    "source_bucket": job.source_bucket,
                    "source_key": job.source_key,
                    "source_version_id": job.source_version_id or "",
                    "source_etag": job.source_etag or "",
                    "source_size": "" if job.source_size is None else job.source_size,
                    "color": job.color,
                    "color_source": job.color_source or "",
                    "error_code": job.error_code or "",
                    "error_message": job.error_message or "",
                    "run_id": job.run_id or "",
                    "runs_billed": jobtable.runs_billed(job),
                    "result_bucket": job.result_bucket or "",
                    "result_keys": " ".join(job.result_keys),
                    "created_at": job.created_at,
                    "submitted_at": job.submitted_at or "",
                    "completed_at": job.completed_at or "",
                    "time_to_result_s": _num(seconds_between(job.created_at, job.completed_at)),
                    "runflow_duration_ms": "" if job.runflow_duration_ms is None else job.runflow_duration_ms,
                    "superseded_by": job.superseded_by or "",
                    "content_digest": job.content_digest or "",
                    "reused_from": job.reused_from or "",
                }
            )


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def run_report(context: ReportContext) -> int:
    app, since, prefix, csv_path = context.app, context.since, context.prefix, context.csv_path
    now = datetime.now(UTC)
    with app.ui.progress() as bar:
        bar.update("scan", completed=0, total=None, description="Reading jobs")
        items = list(jobtable.scan_items(app.stack, jobtable.JobFilter(prefix=prefix, created_since=since)))
        jobs = [Job.from_item(item) for item in items]
        bar.update("scan", completed=len(jobs), total=len(jobs), description="Reading jobs")
    doc: dict[str, Any] = {
        "stack": app.stack_doc(),
        "window": {"since": since, "until": format_iso(now), "prefix": prefix},
        "price_per_run_usd": app.rules.price_per_run,
        **summarise(jobs, app.rules.price_per_run, top=context.top, now=now),
        **reuse_summary(jobs, app.rules.price_per_run),
        "renditions": count_verdicts(items),
    }
    # Spend per day over the report's window: from --since (or the oldest job in it) to today.
    first = (
        parse_iso(since).date()
        if since
        else min((parse_iso(j.created_at).date() for j in jobs), default=now.date())
    )
    first = max(first, now.date() - timedelta(days=app.rules.settings.retention_days))
    doc["spend"] = {
        "daily_run_budget": app.rules.daily_run_budget,
        "days": spend(app, first, now.date()),
    }
    doc["queues"] = queue_depths(app)
    if csv_path is not None:
        write_csv(csv_path, jobs)
        doc["csv"] = {"path": str(csv_path), "rows": len(jobs)}
    if app.ui.as_json:
        app.ui.emit(doc)
    else:
        _show(app, doc, now)
    return OK


def _show(app: App, doc: dict[str, Any], now: datetime) -> None:
    app.ui.print(_summary(doc, now))
    if doc["failure_reasons"]:
        reasons = table(">count", "status", "code", "~example message", title="Failure reasons")
        for row in doc["failure_reasons"]:
            reasons.add_row(str(row["count"]), row["status"], row["error_code"], row["example"])
        app.ui.print(reasons)
    if doc["open"]["largest_backlog"]:
        backlog = table("~prefix", ">open", "~by status", "oldest", title="Largest open backlog")
        for row in doc["open"]["largest_backlog"]:
            backlog.add_row(
                row["prefix"],
                str(row["open"]),
                ", ".join(f"{s} {n}" for s, n in row["by_status"].items()),
                ago(row["oldest_created_at"], now),
            )
        app.ui.print(backlog)
    if doc["renditions"]:
        app.ui.print(verdicts_table(doc["renditions"]))
    app.ui.print(_spend_table(doc, now))


def _summary(doc: dict[str, Any], now: datetime) -> Table:
    window = doc["window"]
    title = "Report" + (f" since {window['since']}" if window["since"] else " (every job in the table)")
    if window["prefix"]:
        title += f" under {window['prefix']}"
    grid = facts(title)
    grid.add_row("jobs", str(doc["jobs"]))
    grid.add_row("by status", ", ".join(f"{s} {n}" for s, n in doc["by_status"].items()) or "-")
    grid.add_row(
        "runs billed",
        f"{doc['runs_billed']}  ({usd(doc['cost_usd'])} at {usd(doc['price_per_run_usd'])} a run)",
    )
    grid.add_row("results reused", f"{doc['reused']}  (no run: {usd(doc['saved_usd'])} saved)")
    ttr = doc["time_to_result_s"]
    grid.add_row(
        "time to result",
        f"p50 {duration(ttr['p50'])}, p95 {duration(ttr['p95'])} ({ttr['count']} succeeded)"
        if ttr["count"]
        else "-",
    )
    opened = doc["open"]
    grid.add_row("open", _open_text(opened, now))
    if opened["last_errors"]:
        grid.add_row("open, last errors", ", ".join(f"{c} {n}" for c, n in opened["last_errors"].items()))
    queues = doc["queues"]
    grid.add_row(
        "queues",
        f"uploads {queues['uploads']['waiting']} waiting, {queues['uploads']['in_flight']} in flight; "
        f"dead-letter {queues['uploads_dead_letter']['waiting']}",
    )
    if "csv" in doc:
        grid.add_row("csv", f"{doc['csv']['path']} ({doc['csv']['rows']} rows)")
    return grid


def _open_text(opened: dict[str, Any], now: datetime) -> str:
    text = f"{opened['total']}"
    if opened["total"]:
        text += " (" + ", ".join(f"{s} {n}" for s, n in opened["by_status"].items()) + ")"
        if opened["oldest"]:
            text += f", oldest {opened['oldest']['key']} {ago(opened['oldest']['created_at'], now)}"
    return text


def _spend_table(doc: dict[str, Any], now: datetime) -> Table:
    budget = doc["spend"]["daily_run_budget"]
    spent = table(
        "day (UTC)",
        ">runs reserved",
        ">budget",
        ">used",
        ">cost",
        title="Spend: runs reserved per UTC day (ledger)",
    )
    today = now.date().isoformat()
    days = [row for row in doc["spend"]["days"] if row["runs_reserved"] or row["day"] == today]
    for row in days:
        spent.add_row(
            row["day"],
            str(row["runs_reserved"]),
            str(budget) if budget else "unlimited",
            f"{row['percent_of_budget']}%" if row["percent_of_budget"] is not None else "-",
            usd(row["cost_usd"]),
        )
    return spent
