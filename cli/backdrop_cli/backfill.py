"""``backdrop plan`` and ``backdrop backfill``.

A backfill hands objects to the pipeline the way an upload does: an S3 object-created message per
object on the uploads queue. Every guarantee of the pipeline therefore holds for them (one job per
object version and colour, claimed with a conditional write before any run; the same rejections;
the run budget). Which objects still need it is computed from the jobs table each time, never
from local state, so running it again after Ctrl-C or a crash sends only what has no job yet.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.dynamodb.conditions import Attr, Key
from rich.table import Table

from backdrop.colours import Colour
from backdrop.jobs import OPEN_SHARD, Status
from backdrop.ledger import RunBudget
from backdrop_cli.app import App
from backdrop_cli.contexts import BackfillContext, PlanContext
from backdrop_cli.errors import FAILED, OK
from backdrop_cli.inventory import Plan, Planned, Verdict, build_plan, plan_from_manifest
from backdrop_cli.reuse import Reuse, assess
from backdrop_cli.rules import usd
from backdrop_cli.sending import Sender, SendReport, StopFlag, object_created
from backdrop_cli.times import duration
from backdrop_cli.ui import facts, table
from backdrop_cli.waiting import Tracked, WaitResult, summarise_wait, wait_with_progress

# Time one submit invocation takes per message (S3 read, job claim, budget, Runflow create): the
# basis of the time estimate, which then scales with SubmitMaxConcurrency.
SECONDS_PER_SUBMIT = 1.0


@dataclass(frozen=True)
class BudgetOutlook:
    daily: int  # 0: unlimited
    reserved_today: int
    held_now: int  # jobs already waiting for the budget (they go first)

    @property
    def remaining_today(self) -> int | None:
        return None if self.daily <= 0 else max(0, self.daily - self.reserved_today)

    def days_needed(self, runs: int) -> int:
        """Further UTC days (after today) before ``runs`` new runs have all been created."""
        remaining = self.remaining_today
        if remaining is None:
            return 0
        beyond = self.held_now + runs - remaining
        return 0 if beyond <= 0 else math.ceil(beyond / self.daily)

    def doc(self, runs: int) -> dict[str, Any]:
        return {
            "daily_run_budget": self.daily,
            "reserved_today": self.reserved_today,
            "remaining_today": self.remaining_today,
            "held_now": self.held_now,
            "extra_days_needed": self.days_needed(runs),
        }


def budget_outlook(app: App) -> BudgetOutlook:
    budget = RunBudget(app.stack.ledger, daily=app.rules.daily_run_budget, clock=time.time)
    return BudgetOutlook(app.rules.daily_run_budget, budget.reserved(), count_held(app))


def count_held(app: App) -> int:
    """Jobs held for the budget now (the sparse OpenJobs index: open jobs only)."""
    kwargs: dict[str, Any] = {
        "IndexName": "OpenJobs",
        "KeyConditionExpression": Key("open_shard").eq(OPEN_SHARD),
        "FilterExpression": Attr("status").eq(Status.HELD.value),
        "Select": "COUNT",
    }
    held = 0
    while True:
        answer = app.stack.jobs.query(**kwargs)
        held += int(answer.get("Count", 0))
        if not answer.get("LastEvaluatedKey"):
            return held
        kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


def estimate_seconds(app: App, runs: int) -> float:
    return math.ceil(runs / max(1, app.rules.submit_concurrency)) * SECONDS_PER_SUBMIT


def make_plan(
    app: App,
    prefix: str | None,
    colour: Colour | None,
    workers: int,
    *,
    digest: bool = False,
    manifest: Path | None = None,
) -> Plan:
    """The plan of PREFIX (or of a manifest), and what of it would reuse an earlier result
    (``digest``: read objects whose digest is otherwise unknown)."""
    with app.ui.progress() as bar:

        def progress(done: int, total: int | None) -> None:
            if total is None:
                bar.update("list", completed=done, total=None, description="Listing objects")
            else:
                bar.update("read", completed=done, total=total, description="Reading first bytes")

        plan = (
            plan_from_manifest(app.stack, manifest)
            if manifest is not None
            else build_plan(app.stack, app.rules, prefix, colour, workers=workers, progress=progress)
        )
        bar.update("reuse", completed=0, total=None, description="Looking up content digests")
        assess(app.stack, plan, enabled=app.rules.settings.reuse_results, stream=digest, workers=workers)
        return plan


def plan_doc(app: App, plan: Plan, outlook: BudgetOutlook) -> dict[str, Any]:
    counts = plan.counts()
    to_submit = counts[Verdict.SUBMIT]
    runs = len(plan.runs())
    reuses = plan.reuses()
    return {
        "stack": app.stack_doc(),
        "prefix": plan.prefix,
        "requested_color": plan.requested_color,
        "objects": len(plan.planned),
        "already_done": counts[Verdict.DONE],
        "in_progress": counts[Verdict.OPEN],
        "ended": counts[Verdict.ENDED],
        "ended_by_status": dict(plan.ended_statuses()),
        "would_reject": counts[Verdict.REJECT],
        "reject_reasons": dict(plan.reject_reasons().most_common()),
        "rejected_objects": [
            {"key": p.entry.key, "error_code": p.entry.error_code, "reason": p.entry.reason}
            for p in plan.of(Verdict.REJECT)
        ],
        "to_submit": to_submit,
        "runs": runs,
        "would_reuse": to_submit - runs,
        "reuse": {
            "enabled": plan.reuse_enabled,
            "from_earlier_results": reuses[Reuse.EARLIER],
            "duplicates_in_plan": reuses[Reuse.DUPLICATE],
            "digest_unknown": plan.digest_unknown(),
        },
        "price_per_run_usd": app.rules.price_per_run,
        "estimated_cost_usd": app.rules.cost(runs),  # reused results cost nothing
        "estimated_seconds": estimate_seconds(app, to_submit),
        "submit_concurrency": app.rules.submit_concurrency,
        "budget": outlook.doc(runs),
        "folder_markers_ignored": plan.folder_markers,
        "vanished_while_reading": plan.vanished,
    }


def show_plan(app: App, doc: dict[str, Any]) -> None:
    grid = facts(
        f"Plan for s3://{app.stack.uploads_bucket}/{doc['prefix']}"
        if "manifest" not in doc["prefix"]
        else f"Plan from {doc['prefix']}"
    )
    colour = doc["requested_color"]
    grid.add_row(
        "colour", f"{colour} (--color)" if colour else "each object's own (metadata, colour rules, default)"
    )
    grid.add_row("objects", str(doc["objects"]))
    grid.add_row(
        "already done", f"{doc['already_done']}  (a succeeded job for this version and colour: skipped)"
    )
    if doc["in_progress"]:
        grid.add_row("in progress", f"{doc['in_progress']}  (the pipeline is carrying them on)")
    ended = dict(doc["ended_by_status"])
    rejected_before = ended.pop(Status.REJECTED.value, 0)
    if rejected_before:
        grid.add_row("already rejected", f"{rejected_before}  (bad input, recorded: not sent again)")
    if ended:
        by_status = ", ".join(f"{s} {n}" for s, n in sorted(ended.items()))
        grid.add_row(
            "ended otherwise",
            f"{sum(ended.values())}  ({by_status}: not sent again; `backdrop retry` runs them)",
        )
    reasons = ", ".join(f"{code} {n}" for code, n in doc["reject_reasons"].items())
    grid.add_row(
        "would reject",
        f"{doc['would_reject']}" + (f"  ({reasons}; recorded, never billed)" if reasons else ""),
    )
    grid.add_row("to submit", str(doc["to_submit"]))
    _reuse_rows(grid, doc)
    grid.add_row(
        "estimated cost",
        f"{usd(doc['estimated_cost_usd'])}  ({doc['runs']} runs at {usd(doc['price_per_run_usd'])})",
    )
    budget = doc["budget"]
    grid.add_row(
        "estimated time",
        (
            f"~{duration(doc['estimated_seconds'])} to submit"
            f" at {doc['submit_concurrency']} concurrent submits"
            + (
                f", plus {budget['extra_days_needed']} more UTC day(s) of run budget"
                if budget["extra_days_needed"]
                else ""
            )
        )
        if doc["to_submit"]
        else "- (nothing to submit)",
    )
    if budget["daily_run_budget"]:
        grid.add_row(
            "run budget",
            f"{budget['reserved_today']} of {budget['daily_run_budget']} runs reserved today (UTC)"
            + (f", {budget['held_now']} jobs held" if budget["held_now"] else ""),
        )
    else:
        grid.add_row("run budget", f"unlimited ({budget['reserved_today']} runs reserved today)")
    if doc["folder_markers_ignored"]:
        grid.add_row("ignored", f"{doc['folder_markers_ignored']} folder marker(s)")
    if doc["vanished_while_reading"]:
        grid.add_row("vanished", f"{doc['vanished_while_reading']} object(s) deleted while being read")
    app.ui.print(grid)
    rejected = doc["rejected_objects"]
    if rejected:
        grid = table("~key", "code", "~reason", title="Would be rejected")
        for row in rejected[:20]:
            grid.add_row(row["key"], row["error_code"], row["reason"])
        app.ui.print(grid)
        if len(rejected) > 20:
            app.ui.print(f"… and {len(rejected) - 20} more (--json lists them all)")


def _reuse_rows(grid: Table, doc: dict[str, Any]) -> None:
    """How many of the objects to submit run, and how many reuse a result at $0 (and why)."""
    reuse = doc["reuse"]
    if not reuse["enabled"]:
        grid.add_row("runs", f"{doc['runs']}  (ReuseResults is off: every object to submit is a run)")
        return
    grid.add_row("runs", f"{doc['runs']}  (new pixels)")
    grid.add_row(
        "would reuse",
        f"{doc['would_reuse']}  at $0 ({reuse['from_earlier_results']} from earlier results,"
        f" {reuse['duplicates_in_plan']} duplicates within this plan)",
    )
    if reuse["digest_unknown"]:
        grid.add_row(
            "digest unknown",
            f"{reuse['digest_unknown']}  (no job and no SHA-256 checksum in S3 says what their bytes are:"
            " counted as runs; --digest reads them to find out)",
        )


def run_plan(context: PlanContext) -> int:
    app, manifest = context.app, context.manifest
    plan = make_plan(app, context.prefix, context.colour, context.workers, digest=context.digest)
    doc = plan_doc(app, plan, budget_outlook(app))
    if manifest is not None:
        doc["manifest"] = {"path": str(manifest), "objects": plan.write_manifest(manifest)}
    if app.ui.as_json:
        app.ui.emit(doc)
    else:
        show_plan(app, doc)
        if manifest is not None:
            app.ui.print(f"Manifest: {manifest} ({doc['manifest']['objects']} objects to send)")
    return OK


# ---------------------------------------------------------------------- backfill
def choose(plan: Plan, max_runs: int | None) -> tuple[list[Planned], list[Planned]]:
    """What a backfill sends (in key order), and what ``--max-runs`` leaves for later. Rejections
    and reuses of earlier results cost nothing and are always sent; an object that duplicates
    another of the plan goes with the object whose run it reuses."""
    runs = plan.runs()
    kept = runs if max_runs is None else runs[:max_runs]
    running = {(p.digest, p.entry.color) for p in kept if p.digest}
    chosen = [*kept, *plan.of(Verdict.REJECT)]
    deferred = runs[len(kept) :]
    for planned in plan.of(Verdict.SUBMIT):
        if planned.reuse == Reuse.EARLIER or (
            planned.reuse == Reuse.DUPLICATE and (planned.digest, planned.entry.color) in running
        ):
            chosen.append(planned)
        elif planned.reuse:
            deferred.append(planned)
    chosen.sort(key=lambda p: p.entry.key)
    return chosen, deferred


def confirm(app: App, outlook: BudgetOutlook, runs: int, reuses: int, *, yes: bool) -> None:
    """Ask before anything is spent (``--yes`` says yes): what the runs cost, and what the budget allows."""
    budget_note = ""
    if outlook.remaining_today is not None and runs + outlook.held_now > outlook.remaining_today:
        budget_note = (
            f" Today's run budget has {outlook.remaining_today} left: the rest wait `held` "
            "and resume on their own, oldest first."
        )
    reused = f" ({reuses} more reuse a result at $0)" if reuses else ""
    app.ui.confirm_cost(
        f"Backfill {runs + reuses} objects: {runs} runs{reused}, estimated {usd(app.rules.cost(runs))}."
        f"{budget_note}",
        yes=yes,
    )


def run_backfill(context: BackfillContext) -> int:
    app, manifest, max_runs = context.app, context.manifest, context.max_runs
    plan = make_plan(
        app, context.prefix, context.colour, context.workers, digest=context.digest, manifest=manifest
    )
    outlook = budget_outlook(app)
    doc = plan_doc(app, plan, outlook)
    chosen, deferred = choose(plan, max_runs)
    runs = sum(1 for p in chosen if p.runs)
    doc["max_runs"] = max_runs
    doc["deferred_by_max_runs"] = len(deferred)
    if not app.ui.as_json:
        show_plan(app, doc)
    if runs:
        confirm(app, outlook, runs, sum(1 for p in chosen if p.reuse), yes=context.yes)
    messages = [(p.entry.job_id, object_created(p.entry, app.stack.region)) for p in chosen]
    report = SendReport()
    with StopFlag() as stop, app.ui.progress() as bar:
        if messages:
            sender = Sender(app.stack.sqs_once, app.stack.uploads_queue_url, stop=stop)
            progress = SendReport()

            def sent_so_far(batch: SendReport) -> None:
                progress.merge(batch)
                bar.update("send", completed=len(progress.sent), total=len(messages), description="Sending")

            report = sender.send(messages, on_batch=sent_so_far)
        sent_ids = set(report.sent) | set(report.unknown)
        tracked = [Tracked(p.entry.job_id, 1, p.entry.upload) for p in chosen if p.entry.job_id in sent_ids]
        result: WaitResult | None = None
        if context.wait and tracked and not report.stopped:
            result = wait_with_progress(app, bar, stop, tracked, context.wait_timeout, shown=(Status.HELD,))
    doc["sent"] = {
        "runs": sum(1 for p in chosen if p.runs and p.entry.job_id in report.sent),
        "reuses": sum(1 for p in chosen if p.reuse and p.entry.job_id in report.sent),
        "rejects": sum(1 for p in chosen if p.verdict is Verdict.REJECT and p.entry.job_id in report.sent),
        "total": len(report.sent),
    }
    doc["delivery_unknown"] = report.unknown
    doc["refused_by_sqs"] = report.refused
    doc["interrupted"] = report.stopped or bool(result and result.interrupted)
    doc["not_sent"] = len(messages) - len(report.sent) - len(report.unknown) - len(report.refused)
    outcome = summarise_wait(app, doc, tracked, result)
    failed = (
        bool(report.unknown or report.refused)
        or doc["interrupted"]
        or outcome.get("failed", 0) > 0
        or bool(result and result.timed_out)
    )
    if app.ui.as_json:
        app.ui.emit(doc)
    else:
        show_backfill(app, doc)
    return FAILED if failed else OK


def show_backfill(app: App, doc: dict[str, Any]) -> None:
    grid = facts("Backfill")
    _sending_rows(grid, doc)
    _waiting_rows(grid, doc)
    app.ui.print(grid)
    failures = doc.get("failures") or []
    if failures:
        grid = table("~key", "job", "code", "~message", title="Failed")
        for f in failures[:20]:
            grid.add_row(f["key"], f["job_id"], f["error_code"] or "", f["error_message"] or "")
        app.ui.print(grid)


def _sending_rows(grid: Table, doc: dict[str, Any]) -> None:
    """What was sent, and what was not (and why)."""
    sent = doc["sent"]
    if sent["total"] or doc["delivery_unknown"] or doc["refused_by_sqs"] or doc["not_sent"]:
        grid.add_row(
            "sent",
            f"{sent['total']}  ({sent['runs']} to run, {sent['reuses']} to reuse a result,"
            f" {sent['rejects']} to be rejected)",
        )
    else:
        grid.add_row("sent", "nothing: every object under it already has a job for its version and colour")
    if doc["deferred_by_max_runs"]:
        grid.add_row(
            "left for later",
            f"{doc['deferred_by_max_runs']} (--max-runs {doc['max_runs']}): run it again to send them",
        )
    if doc["not_sent"]:
        grid.add_row("not sent", f"{doc['not_sent']} (stopped): run it again to send them")
    if doc["delivery_unknown"]:
        grid.add_row(
            "delivery unknown", f"{len(doc['delivery_unknown'])} (answer lost; never resent): run it again"
        )
    for job_id, why in doc["refused_by_sqs"].items():
        grid.add_row("refused by SQS", f"{job_id}: {why}")


def _waiting_rows(grid: Table, doc: dict[str, Any]) -> None:
    """How the sent jobs ended, or why that is not known yet."""
    wait = doc.get("wait")
    if not wait:
        if doc["sent"]["total"]:
            grid.add_row("waiting", "not waited for (--no-wait): `backdrop status --prefix …` shows them")
        return
    outcomes = ", ".join(f"{status} {n}" for status, n in doc["outcomes"].items())
    grid.add_row("outcomes", outcomes or "-")
    grid.add_row("runs created", f"{doc['runs_created']}  (spent {usd(doc['spent_usd'])})")
    if wait["held_for_budget"]:
        grid.add_row("held", "today's run budget is spent: the held jobs resume on their own, oldest first")
    if wait["timed_out"]:
        grid.add_row("waiting", "stopped at --wait-timeout; the jobs go on (`backdrop status --prefix …`)")
    if wait["interrupted"]:
        grid.add_row("waiting", "stopped (Ctrl-C); the jobs go on (`backdrop status --prefix …`)")
