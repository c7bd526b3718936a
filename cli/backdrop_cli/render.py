"""``backdrop render``: make the renditions of existing results again, with no run.

The newest succeeded job of each source key under PREFIX gets one render request
(``backdrop.queues.RenderRequest``) on the stack's copy queue: the renditions named, or every one
the stack's ``Renditions`` names. The copy function makes them from the stored result and the
original, the way it makes a new result's, and writes them to the job: nothing reaches Runflow,
so a render costs $0. The command then waits until each job's renditions have been written.

Resumable: before it sends, the command notes when the render began (a file under
``<state dir>/renders/``, one per stack, prefix and renditions asked for). Run the same command
again after Ctrl-C, a crash or a timeout, and the jobs whose renditions were written since then,
with every rendition asked for, are not sent again. The note is removed once every job sent has
its renditions written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from backdrop.jobs import Job, Status, now_iso
from backdrop.queues import RenderRequest
from backdrop_cli import jobtable
from backdrop_cli.app import App
from backdrop_cli.contexts import RenderContext
from backdrop_cli.errors import FAILED, OK, BadUsage
from backdrop_cli.inventory import effective_prefix
from backdrop_cli.renditions import count_verdicts, renditions_doc, renditions_of, verdicts_table
from backdrop_cli.rules import usd
from backdrop_cli.sending import Sender, SendReport, StopFlag
from backdrop_cli.stack import DEFAULT_STATE_DIR
from backdrop_cli.ui import Bar, facts
from backdrop_cli.waiting import Snapshot, Tracked, WaitResult, rendering_mark, wait_for

PARAMETER = "Renditions"


def wanted(app: App, only: str | None) -> tuple[list[str], str]:
    """The rendition names to make (every one the stack's Renditions names, or ``only``), and the
    parameter's text. The names are the functions' own settings, parsed and checked by the core."""
    names = sorted(app.rules.settings.renditions)
    text = app.stack.parameters.get(PARAMETER, "").strip()
    if not names:
        raise BadUsage(
            f"the stack has no renditions (its {PARAMETER} parameter is {text or 'empty'}): nothing to"
            f' render. Name them in {PARAMETER}, e.g. \'{{"amazon": "amazon-main"}}\', and deploy.'
        )
    if only is not None and only not in names:
        raise BadUsage(f"--rendition {only!r}: the stack's {PARAMETER} names {', '.join(names)}")
    return ([only] if only else names), text


def newest_succeeded(app: App, prefix: str) -> list[dict[str, Any]]:
    """The newest succeeded job of each source key under ``prefix``, as stored, in key order."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    where = jobtable.JobFilter(prefix=prefix, statuses=frozenset({Status.SUCCEEDED}))
    for item in jobtable.scan_items(app.stack, where):
        source = (str(item["source_bucket"]), str(item["source_key"]))
        if source not in newest or _age(item) > _age(newest[source]):
            newest[source] = item
    return [newest[source] for source in sorted(newest)]


def _age(item: Mapping[str, Any]) -> tuple[str, str]:
    # The job completed last holds the result now stored for the key.
    return str(item.get("completed_at") or ""), str(item.get("created_at") or "")


@dataclass(frozen=True)
class Checkpoint:
    """When an unfinished render of these jobs and renditions began (``started_at``, or None)."""

    path: Path
    started_at: str | None

    @classmethod
    def of(cls, app: App, prefix: str, names: Sequence[str], text: str) -> Checkpoint:
        stack = app.stack
        identity = json.dumps([stack.label, stack.jobs_table, prefix, list(names), text])
        digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
        path = (app.target.state_dir or DEFAULT_STATE_DIR) / "renders" / f"{digest}.json"
        try:
            started = json.loads(path.read_text(encoding="utf-8")).get("started_at")
        except (OSError, ValueError, AttributeError):
            started = None
        return cls(path, str(started) if started else None)

    def begin(self, prefix: str, names: Sequence[str]) -> Checkpoint:
        """The note written (kept from the unfinished render this one resumes)."""
        started = self.started_at or now_iso()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        note = {"started_at": started, "prefix": prefix, "renditions": list(names)}
        self.path.write_text(json.dumps(note) + "\n", encoding="utf-8")
        return Checkpoint(self.path, started)

    def done(self, item: Mapping[str, Any], names: Sequence[str]) -> bool:
        """Rendered since the unfinished render began, every rendition asked for."""
        if self.started_at is None or str(item.get("updated_at") or "") < self.started_at:
            return False
        return set(names) <= set(renditions_of(item))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def plan_doc(
    app: App, prefix: str, names: list[str], found: list[dict[str, Any]], todo: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "stack": app.stack_doc(),
        "prefix": prefix,
        "renditions": names,
        "objects": len(found),  # each with its newest succeeded job
        "already_rendered": len(found) - len(todo),  # by the unfinished render this one resumes
        "to_render": len(todo),
        "renditions_to_make": len(todo) * len(names),
        "runs": 0,
        "price_per_run_usd": app.rules.price_per_run,
        "estimated_cost_usd": app.rules.cost(0),
        "cost_note": "no Runflow run: made from the stored result and the original",
    }


def show_plan(app: App, doc: dict[str, Any]) -> None:
    grid = facts(f"Render plan for s3://{app.stack.uploads_bucket}/{doc['prefix']}")
    grid.add_row("renditions", ", ".join(doc["renditions"]))
    grid.add_row("objects", f"{doc['objects']}  (each with a succeeded job: its newest is rendered)")
    if doc["already_rendered"]:
        grid.add_row("already rendered", f"{doc['already_rendered']}  (since the unfinished render began)")
    grid.add_row("to render", f"{doc['to_render']}  ({doc['renditions_to_make']} renditions)")
    grid.add_row("estimated cost", f"{usd(doc['estimated_cost_usd'])}  ({doc['cost_note']})")
    app.ui.print(grid)


def run_render(context: RenderContext) -> int:
    app = context.app
    prefix = effective_prefix(context.prefix, app.rules.upload_prefix)
    names, text = wanted(app, context.rendition)
    checkpoint = Checkpoint.of(app, prefix, names, text)
    with app.ui.progress() as bar:
        bar.update("scan", completed=0, total=None, description="Reading jobs")
        found = newest_succeeded(app, prefix)
    todo = [item for item in found if not checkpoint.done(item, names)]
    doc = plan_doc(app, prefix, names, found, todo)
    doc["resumed_from"] = checkpoint.started_at
    if not app.ui.as_json:
        show_plan(app, doc)
    if todo:
        app.ui.confirm_cost(
            f"Render {doc['renditions_to_make']} renditions of {len(todo)} jobs:"
            f" no run, {usd(doc['estimated_cost_usd'])}.",
            yes=context.yes,
        )
        checkpoint = checkpoint.begin(prefix, names)
    report, result, tracked = _send_and_wait(context, todo, names)
    failed = _summarise(app, doc, report, result, tracked)
    if not todo or (doc["wait"] and not failed):  # every job has its renditions: nothing to resume
        checkpoint.remove()
    if app.ui.as_json:
        app.ui.emit(doc)
    else:
        show_render(app, doc)
    return FAILED if failed else OK


def _send_and_wait(
    context: RenderContext, todo: list[dict[str, Any]], names: list[str]
) -> tuple[SendReport, WaitResult | None, list[Tracked]]:
    app = context.app
    only = tuple(names) if context.rendition else None  # None: every rendition the stack names
    messages = [(str(item["job_id"]), RenderRequest(str(item["job_id"]), only).body()) for item in todo]
    report = SendReport()
    result: WaitResult | None = None
    with StopFlag() as stop, app.ui.progress() as bar:
        if messages:
            sender = Sender(app.stack.sqs_once, app.stack.copy_queue_url, stop=stop)
            progress = SendReport()

            def sent_so_far(batch: SendReport) -> None:
                progress.merge(batch)
                bar.update("send", completed=len(progress.sent), total=len(messages), description="Sending")

            report = sender.send(messages, on_batch=sent_so_far)
        sent = set(report.sent) | set(report.unknown)
        tracked = [
            Tracked(job.job_id, job.attempt, job.upload(), before=rendering_mark(item))
            for item in todo
            if (job := Job.from_item(item)).job_id in sent
        ]
        if context.wait and tracked and not report.stopped:
            result = _wait(app, bar, stop, tracked, context.wait_timeout)
    return report, result, tracked


def _wait(app: App, bar: Bar, stop: StopFlag, tracked: list[Tracked], timeout: float | None) -> WaitResult:
    def on_poll(snapshot: Snapshot) -> None:
        rendered = sum(1 for t in tracked if snapshot.finished(t))
        bar.update("wait", completed=rendered, total=len(tracked), description="Rendered")

    return wait_for(
        app.stack,
        tracked,
        budget_per_day=app.rules.daily_run_budget,
        stop=stop,
        timeout=timeout,
        on_poll=on_poll,
    )


def _summarise(
    app: App, doc: dict[str, Any], report: SendReport, result: WaitResult | None, tracked: list[Tracked]
) -> bool:
    """What was sent and rendered, into ``doc``; whether the command failed."""
    doc["sent"] = {"total": len(report.sent)}
    doc["delivery_unknown"] = report.unknown
    doc["refused_by_sqs"] = report.refused
    doc["interrupted"] = report.stopped or bool(result and result.interrupted)
    doc["not_sent"] = doc["to_render"] - len(report.sent) - len(report.unknown) - len(report.refused)
    doc["runs_created"] = 0
    doc["spent_usd"] = app.rules.cost(0)
    if result is None:
        doc["wait"] = None
        doc["rendered"] = 0
        doc["not_rendered"] = []
        doc["jobs"] = []
        doc["verdicts"] = {}
    else:
        snapshot = result.snapshot
        rendered = [t for t in tracked if snapshot.finished(t)]
        items = [snapshot.items[t.job_id] for t in rendered]
        doc["wait"] = {
            "all_ended": result.ended,
            "timed_out": result.timed_out,
            "interrupted": result.interrupted,
        }
        doc["rendered"] = len(rendered)
        doc["not_rendered"] = [t.job_id for t in tracked if not snapshot.finished(t)]
        doc["jobs"] = [
            {"job_id": item["job_id"], "key": item["source_key"], "renditions": renditions_doc(item)}
            for item in items
        ]
        doc["verdicts"] = count_verdicts(items)
    return bool(
        report.unknown or report.refused or doc["interrupted"] or doc["not_sent"] or doc["not_rendered"]
    )


def show_render(app: App, doc: dict[str, Any]) -> None:
    grid = facts("Render")
    _rows(grid, doc)
    app.ui.print(grid)
    if doc["verdicts"]:
        app.ui.print(verdicts_table(doc["verdicts"]))


def _rows(grid: Table, doc: dict[str, Any]) -> None:
    if not doc["to_render"]:
        grid.add_row("sent", "nothing: no succeeded job to render under it")
        return
    grid.add_row("sent", f"{doc['sent']['total']} render requests (no run, {usd(doc['spent_usd'])})")
    if doc["not_sent"]:
        grid.add_row("not sent", f"{doc['not_sent']} (stopped): run it again to send them")
    if doc["delivery_unknown"]:
        grid.add_row("delivery unknown", f"{len(doc['delivery_unknown'])} (answer lost): run it again")
    for job_id, why in doc["refused_by_sqs"].items():
        grid.add_row("refused by SQS", f"{job_id}: {why}")
    wait = doc["wait"]
    if wait is None:
        grid.add_row("waiting", "not waited for (--no-wait): `backdrop status JOB` shows the renditions")
        return
    grid.add_row("rendered", f"{doc['rendered']} of {doc['sent']['total']} jobs")
    if doc["not_rendered"]:
        why = "--wait-timeout" if wait["timed_out"] else "Ctrl-C" if wait["interrupted"] else "stopped"
        grid.add_row("not rendered", f"{len(doc['not_rendered'])} ({why}): run it again to resume")
