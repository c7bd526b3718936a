"""Waiting for jobs to end: the jobs table is polled (``batch_get_item``, strongly consistent) with
backoff, only for jobs not finished yet. The wait ends when every job has ended, or when nothing
more can happen today (every job left is ``held`` and the day's run budget is spent: they resume
on their own), at the timeout, or at Ctrl-C (the jobs go on; only the waiting stops).

A render awaits something else of a job that has already ended: that its record changed (its
renditions, or their rewrite) from what it was before the render request was sent
(``Tracked.before``).

``wait_with_progress`` is that wait as ``backfill`` and ``retry`` show it, and ``summarise_wait``
what they report of it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from backdrop.jobs import Job, Status
from backdrop.ledger import RunBudget
from backdrop.uploads import UploadRef, read_source
from backdrop_cli import jobtable
from backdrop_cli.app import App, job_brief
from backdrop_cli.groups import FAILURES_BUT_REJECTED
from backdrop_cli.rules import usd
from backdrop_cli.sending import StopFlag
from backdrop_cli.stack import Stack
from backdrop_cli.ui import Bar

# A job still missing this long after its message was sent may have lost its object: check it.
MISSING_GRACE_SECONDS = 30.0
FIRST_POLL_SECONDS = 0.5
MAX_POLL_SECONDS = 10.0


@dataclass(frozen=True)
class Tracked:
    job_id: str
    attempt: int  # the attempt whose end is awaited
    upload: UploadRef
    # A render's: the job's renditions and record time before the request; awaited: a change of them.
    before: tuple[Any, Any] | None = None


def rendering_mark(item: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """What a render request changes in a job's record: its renditions, and when it was written."""
    item = item or {}
    return item.get("renditions"), item.get("updated_at")


@dataclass
class Snapshot:
    """Where the awaited jobs are now."""

    total: int
    jobs: dict[str, Job] = field(default_factory=dict)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # the jobs as stored
    vanished: set[str] = field(default_factory=set)  # no job will come: the object version is gone

    def finished(self, tracked: Tracked) -> bool:
        job = self.jobs.get(tracked.job_id)
        if job is None:
            return tracked.job_id in self.vanished
        if tracked.before is not None:
            return rendering_mark(self.items.get(tracked.job_id)) != tracked.before
        return job.status.is_terminal and job.attempt >= tracked.attempt

    def update(self, items: dict[str, dict[str, Any]]) -> None:
        self.items.update(items)
        self.jobs.update({job_id: Job.from_item(item) for job_id, item in items.items()})

    def statuses(self) -> Counter[str]:
        counts = Counter(job.status.value for job in self.jobs.values())
        counts["not_started"] = self.total - len(self.jobs) - len(self.vanished)
        if self.vanished:
            counts["vanished"] = len(self.vanished)
        return +counts

    def runs_created(self, tracked: Sequence[Tracked]) -> int:
        """Runs created for the awaited attempts (the ones this command paid for)."""
        return sum(
            1
            for t in tracked
            if (job := self.jobs.get(t.job_id)) is not None and job.attempt == t.attempt and job.run_id
        )


@dataclass
class WaitResult:
    snapshot: Snapshot
    ended: bool = False  # every awaited job ended
    held_for_budget: bool = False
    timed_out: bool = False
    interrupted: bool = False


def wait_for(
    stack: Stack,
    tracked: Sequence[Tracked],
    *,
    budget_per_day: int,
    stop: StopFlag,
    timeout: float | None,
    on_poll: Callable[[Snapshot], None] = lambda _snapshot: None,
    clock: Callable[[], float] = time.monotonic,
) -> WaitResult:
    snapshot = Snapshot(total=len(tracked))
    result = WaitResult(snapshot)
    if not tracked:
        result.ended = True
        return result
    budget = RunBudget(stack.ledger, daily=budget_per_day, clock=time.time)
    started = clock()
    missing = _MissingCheck(stack, started)
    interval = FIRST_POLL_SECONDS
    while True:
        polled = [t for t in tracked if not snapshot.finished(t)]
        before = {t.job_id: snapshot.items.get(t.job_id) for t in polled}
        snapshot.update(jobtable.get_items(stack, [t.job_id for t in polled]))
        now = clock()
        missing.check(snapshot, polled, now)
        on_poll(snapshot)
        if _settled(result, tracked, budget, timeout, now - started):
            return result
        changed = any(before[t.job_id] != snapshot.items.get(t.job_id) for t in polled)
        interval = FIRST_POLL_SECONDS if changed else min(interval * 1.5, MAX_POLL_SECONDS)
        if timeout is not None:
            interval = max(0.05, min(interval, timeout - (now - started)))
        if stop.wait(interval):
            result.interrupted = True
            return result


@dataclass
class _MissingCheck:
    """Jobs still missing ``MISSING_GRACE_SECONDS`` after the start: is their object version gone?
    (The submit path ignores a vanished object, so no job will come.) Each is checked at most once
    per grace period."""

    stack: Stack
    started: float
    checked_at: dict[str, float] = field(default_factory=dict)

    def check(self, snapshot: Snapshot, polled: Sequence[Tracked], now: float) -> None:
        if now - self.started < MISSING_GRACE_SECONDS:
            return
        for t in polled:
            if t.job_id in snapshot.jobs or now - self.checked_at.get(t.job_id, 0.0) < MISSING_GRACE_SECONDS:
                continue
            self.checked_at[t.job_id] = now
            upload = t.upload
            source = read_source(
                self.stack.s3, upload.bucket, upload.key, version_id=upload.version_id, sniff=False
            )
            if source is None:
                snapshot.vanished.add(t.job_id)


def _settled(
    result: WaitResult, tracked: Sequence[Tracked], budget: RunBudget, timeout: float | None, waited: float
) -> bool:
    """Whether the wait is over (and why, in ``result``): every job ended, only jobs held for a
    spent budget are left, or the timeout passed."""
    snapshot = result.snapshot
    waiting = [t for t in tracked if not snapshot.finished(t)]
    if not waiting:
        result.ended = True
        return True
    left = [snapshot.jobs.get(t.job_id) for t in waiting]
    if all(job is not None and job.status is Status.HELD for job in left) and budget.remaining() == 0:
        result.held_for_budget = True
        return True
    if timeout is not None and waited >= timeout:
        result.timed_out = True
        return True
    return False


def wait_with_progress(
    app: App,
    bar: Bar,
    stop: StopFlag,
    tracked: Sequence[Tracked],
    timeout: float | None,
    *,
    shown: Sequence[Status] = (),
) -> WaitResult:
    """``wait_for`` the jobs, with a progress line: how many ended, succeeded and failed, the count
    of each status in ``shown``, and what their runs cost so far."""
    price = app.rules.price_per_run

    def on_poll(snapshot: Snapshot) -> None:
        counts = snapshot.statuses()
        ended = sum(1 for t in tracked if snapshot.finished(t))
        failed = sum(counts[s.value] for s in FAILURES_BUT_REJECTED)
        spent = price * snapshot.runs_created(tracked)
        shown_counts = [f"{status.value} {counts[status.value]}" for status in shown]
        detail = " · ".join(
            [f"succeeded {counts['succeeded']}", f"failed {failed}", *shown_counts, f"spent {usd(spent)}"]
        )
        bar.update("wait", completed=ended, total=len(tracked), description="Finished", detail=detail)

    return wait_for(
        app.stack,
        tracked,
        budget_per_day=app.rules.daily_run_budget,
        stop=stop,
        timeout=timeout,
        on_poll=on_poll,
    )


def summarise_wait(
    app: App, doc: dict[str, Any], tracked: Sequence[Tracked], result: WaitResult | None
) -> dict[str, int]:
    """The jobs' outcomes into ``doc``; returns the outcome counts."""
    if result is None:
        doc["wait"] = None
        doc["outcomes"] = {}
        doc["runs_created"] = 0
        doc["spent_usd"] = Decimal(0)
        doc["jobs"] = []
        return {}
    snapshot = result.snapshot
    counts: Counter[str] = snapshot.statuses()
    outcome = {
        "failed": sum(counts[s.value] for s in FAILURES_BUT_REJECTED),
    }
    runs = snapshot.runs_created(tracked)
    doc["wait"] = {
        "all_ended": result.ended,
        "held_for_budget": result.held_for_budget,
        "timed_out": result.timed_out,
        "interrupted": result.interrupted,
    }
    doc["outcomes"] = dict(sorted(counts.items()))
    doc["runs_created"] = runs
    doc["spent_usd"] = app.rules.cost(runs)
    doc["jobs"] = [job_brief(job) for t in tracked if (job := snapshot.jobs.get(t.job_id)) is not None]
    failed = {s.value for s in FAILURES_BUT_REJECTED}
    doc["failures"] = [j for j in doc["jobs"] if j["status"] in failed]
    return outcome
