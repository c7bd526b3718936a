"""What a backfill would do, decided before anything is sent: walk the uploads bucket (current
versions only, their ids from the listing), read each object's metadata and first bytes with one
ranged GET, compute its job id and rejection exactly as the submit path does, and look the job ids
up in the jobs table (``batch_get_item``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from backdrop.colours import Colour
from backdrop.jobs import Job, Status
from backdrop.uploads import UploadRef, in_upload_prefix, is_folder_marker, read_source
from backdrop_cli import jobtable
from backdrop_cli.errors import BadUsage
from backdrop_cli.rules import Rules
from backdrop_cli.stack import Stack


class Verdict(StrEnum):
    SUBMIT = "submit"  # no job yet: the backfill sends it and a run is created (billed)
    REJECT = "reject"  # no job yet: the backfill sends it and the pipeline rejects it (no run)
    DONE = "already_done"  # a succeeded job exists for this version and colour: never billed twice
    OPEN = "in_progress"  # a job exists and is still open: the pipeline carries it on
    ENDED = "ended"  # a job exists and ended otherwise (failed, …): `backdrop retry` runs it again


SENT = frozenset({Verdict.SUBMIT, Verdict.REJECT})


@dataclass(frozen=True)
class Entry:
    """One object version and the job the pipeline gives it (a manifest line)."""

    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    size: int | None
    job_id: str
    color: str  # the job's colour (R,G,B), or the bad value when the metadata is invalid
    color_source: str
    requested_color: str | None  # --color: sent to the pipeline with the object
    error_code: str | None = None  # the rejection the pipeline will make
    reason: str | None = None

    @property
    def upload(self) -> UploadRef:
        return UploadRef(self.bucket, self.key, self.version_id, self.etag, self.size)

    def line(self, verdict: Verdict) -> str:
        data = {**asdict(self), "expect": verdict.value}
        return json.dumps({k: v for k, v in data.items() if v is not None}, ensure_ascii=False)

    @classmethod
    def from_line(cls, line: str) -> tuple[Entry, Verdict]:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        expect = Verdict(data.pop("expect", Verdict.SUBMIT.value))
        if expect not in SENT:
            raise ValueError(f"expect must be submit or reject, got {expect.value!r}")
        size = data.get("size")
        return (
            cls(
                bucket=str(data["bucket"]),
                key=str(data["key"]),
                version_id=_opt(data.get("version_id")),
                etag=_opt(data.get("etag")),
                size=int(size) if size is not None else None,
                job_id=str(data["job_id"]),
                color=str(data.get("color", "")),
                color_source=str(data.get("color_source", "")),
                requested_color=_opt(data.get("requested_color")),
                error_code=_opt(data.get("error_code")),
                reason=_opt(data.get("reason")),
            ),
            expect,
        )


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass
class Planned:
    entry: Entry
    verdict: Verdict
    job: Job | None = None
    digest: str | None = None  # the content digest of an object to submit, when known
    reuse: str | None = None  # how an object to submit would reuse a result instead of running

    @property
    def runs(self) -> bool:
        """Sent, and makes a (billed) run."""
        return self.verdict is Verdict.SUBMIT and self.reuse is None


@dataclass
class Plan:
    prefix: str
    requested_color: str | None
    planned: list[Planned] = field(default_factory=list)
    folder_markers: int = 0
    vanished: int = 0  # listed, then gone before it could be read
    reuse_enabled: bool = False  # the stack reuses results (ReuseResults) and the plan counted them

    def runs(self) -> list[Planned]:
        return [p for p in self.planned if p.runs]

    def reuses(self) -> Counter[str]:
        """Objects to submit that would reuse a result, by how."""
        return Counter(p.reuse for p in self.of(Verdict.SUBMIT) if p.reuse)

    def digest_unknown(self) -> int:
        """Objects to submit whose content is not known (counted as runs)."""
        if not self.reuse_enabled:
            return 0
        return sum(1 for p in self.of(Verdict.SUBMIT) if p.digest is None)

    def of(self, *verdicts: Verdict) -> list[Planned]:
        return [p for p in self.planned if p.verdict in verdicts]

    def counts(self) -> Counter[Verdict]:
        return Counter(p.verdict for p in self.planned)

    def reject_reasons(self) -> Counter[str]:
        return Counter(p.entry.error_code or "?" for p in self.of(Verdict.REJECT))

    def ended_statuses(self) -> Counter[str]:
        return Counter(p.job.status.value for p in self.of(Verdict.ENDED) if p.job)

    def write_manifest(self, path: Path) -> int:
        """Every object the backfill would send, one JSON object a line (``expect``: submit or reject)."""
        lines = [p.entry.line(p.verdict) for p in self.of(*SENT)]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return len(lines)


def effective_prefix(prefix: str | None, upload_prefix: str) -> str:
    """The part of the bucket to walk: under the upload prefix (the pipeline ignores the rest)."""
    wanted = (prefix or "").lstrip("/")
    if not wanted or upload_prefix.startswith(wanted):
        return upload_prefix
    if wanted.startswith(upload_prefix):
        return wanted
    raise BadUsage(
        f"prefix {wanted!r} is outside the upload prefix {upload_prefix!r}: the pipeline ignores it"
    )


@dataclass(frozen=True)
class Listed:
    key: str
    version_id: str | None
    etag: str | None
    size: int


def list_current(stack: Stack, prefix: str) -> Iterator[Listed]:
    """Current versions under ``prefix`` (IsLatest; a key whose latest is a delete marker is gone)."""
    paginator = stack.s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=stack.uploads_bucket, Prefix=prefix):
        for version in page.get("Versions", []):
            if not version.get("IsLatest"):
                continue
            yield Listed(
                key=version["Key"],
                version_id=version.get("VersionId"),
                etag=(version.get("ETag") or "").strip('"') or None,
                size=int(version.get("Size", 0)),
            )


Progress = Callable[[int, int | None], None]  # (done, total) as work goes


def _noop(done: int, total: int | None) -> None:
    return None


def build_plan(
    stack: Stack,
    rules: Rules,
    prefix: str | None,
    colour: Colour | None,
    *,
    workers: int = 16,
    progress: Progress = _noop,
) -> Plan:
    walk = effective_prefix(prefix, rules.upload_prefix)
    plan = Plan(prefix=walk, requested_color=str(colour) if colour else None)
    listed: list[Listed] = []
    for item in list_current(stack, walk):
        if not in_upload_prefix(item.key, rules.upload_prefix):
            continue
        if is_folder_marker(item.key, item.size):
            plan.folder_markers += 1
            continue
        listed.append(item)
        progress(len(listed), None)
    entries: list[Entry] = []
    for done, entry in enumerate(_read_all(stack, rules, listed, colour, workers), start=1):
        if entry is None:
            plan.vanished += 1
        else:
            entries.append(entry)
        progress(done, len(listed))
    entries.sort(key=lambda e: e.key)
    judge(stack, plan, [(e, Verdict.REJECT if e.error_code else Verdict.SUBMIT) for e in entries])
    return plan


def _read_all(
    stack: Stack, rules: Rules, listed: list[Listed], colour: Colour | None, workers: int
) -> Iterator[Entry | None]:
    pool = ThreadPoolExecutor(max_workers=workers)
    futures: list[Future[Entry | None]] = [
        pool.submit(_read_one, stack, rules, item, colour) for item in listed
    ]
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        # Ctrl-C or an error: queued reads are dropped, the few in flight finish on their own.
        pool.shutdown(wait=False, cancel_futures=True)


def _read_one(stack: Stack, rules: Rules, item: Listed, colour: Colour | None) -> Entry | None:
    # One ranged GET of exactly the listed version: identity, metadata and first bytes together.
    source = read_source(stack.s3, stack.uploads_bucket, item.key, version_id=item.version_id)
    if source is None:
        return None
    choice = rules.colour(source, colour)
    problem = rules.rejection(source, choice)
    upload = source.upload
    return Entry(
        bucket=upload.bucket,
        key=upload.key,
        version_id=upload.version_id if upload.versioned else None,
        etag=(upload.etag or "").strip('"') or None,
        size=upload.size,
        job_id=rules.job_id(source, choice),
        color=choice.recorded,
        color_source=choice.source,
        requested_color=str(colour) if colour else None,
        error_code=problem[0] if problem else None,
        reason=problem[1] if problem else None,
    )


def judge(stack: Stack, plan: Plan, candidates: Iterable[tuple[Entry, Verdict]]) -> None:
    """Decide each candidate against the jobs table: only objects without a job are sent."""
    candidates = list(candidates)
    existing = jobtable.get_many(stack, [entry.job_id for entry, _ in candidates])
    for entry, verdict in candidates:
        job = existing.get(entry.job_id)
        if job is None:
            plan.planned.append(Planned(entry, verdict))
        elif job.status is Status.SUCCEEDED:
            plan.planned.append(Planned(entry, Verdict.DONE, job))
        elif job.is_open:
            plan.planned.append(Planned(entry, Verdict.OPEN, job))
        else:
            plan.planned.append(Planned(entry, Verdict.ENDED, job))


def plan_from_manifest(stack: Stack, path: Path) -> Plan:
    """A plan from a manifest ``plan --manifest`` wrote: its entries, judged against the table now."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadUsage(f"cannot read the manifest {path}: {exc}") from exc
    candidates: list[tuple[Entry, Verdict]] = []
    colours: set[str | None] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry, verdict = Entry.from_line(line)
        except (ValueError, KeyError, TypeError) as exc:
            raise BadUsage(f"{path}:{number}: not a manifest line ({exc})") from exc
        if entry.bucket != stack.uploads_bucket:
            raise BadUsage(
                f"{path}:{number}: an object of bucket {entry.bucket!r},"
                f" not of this stack's {stack.uploads_bucket!r}"
            )
        colours.add(entry.requested_color)
        candidates.append((entry, verdict))
    plan = Plan(prefix=f"manifest {path}", requested_color=next(iter(colours)) if len(colours) == 1 else None)
    judge(stack, plan, candidates)
    return plan
