"""The copy worker: finishing a job whose run reported its outcome, and writing its result.

The newest version of an object always wins. Results of one object are written only under its
result lease (``ledger``), and under the lease the copier checks, in this order, that:
1. its source version is still the object's current version (else the job ends ``superseded``,
   naming the job of the newer version; a deleted object supersedes every version);
2. no job of the same version that was created later (another colour, a newer attempt) already
   published there (else ``superseded`` by that job).
Only then does it stream the outputs in, each write also fenced by an S3 precondition on the
result object it saw. A version that loses the race therefore never overwrites the winner, and
is never billed again: superseding a job creates no run.

Every result key lies in the source's own folder (``results``), and the copier checks the object
itself before it replaces or deletes one: a result key held by another source's object (its
metadata says so) is refused (``RESULT_KEY_TAKEN``), never overwritten; a result an earlier job of
this source wrote and this job does not (fewer outputs, another format) is deleted only when its
metadata names this source and a job of this source. Keys outside the folder (the earlier layout)
are never deleted.

Output URLs that no longer work (expired: 403, or gone: 404/410) are replaced by reading the run
again, once per attempt. Anything else that may pass raises ``RetryLater``; the message returns to
the queue and the reconciler remains the safety net.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import ClientError

from backdrop.completion import apply_run_report, belongs_to
from backdrop.errors import ErrorCode
from backdrop.events import conclude
from backdrop.jobs import Job, JobChanges, Status, failure, outputs_to_item, parse_iso, stored_map
from backdrop.ledger import Lease, Published
from backdrop.observability import count, count_bytes, logger, milliseconds
from backdrop.outcomes import Outcome, Result, RetryLater
from backdrop.outputs import Destination, OutputCopyFailed, OutputRefused, ResultChanged
from backdrop.profiles import Spec
from backdrop.queues import CopyRequest, Decision, RenderRequest, ReviewRequest
from backdrop.rendering import Made, judge, make_all, reusable
from backdrop.results import (
    extension_of,
    is_rendition,
    names_source,
    rendition_name,
    result_folder,
    result_metadata,
    result_name,
)
from backdrop.reuse import fall_back
from backdrop.review import (
    discard_folder,
    held_folder,
    hold_for_review,
    passes,
    reject,
    review_record,
)
from backdrop.runs import RunflowError, RunflowRejected, RunResult
from backdrop.services import Services
from backdrop.submission import supersede
from backdrop.timing import COPY_FAILED_RETRY_SECONDS, LEASE_BUSY_RETRY_SECONDS
from backdrop.uploads import ImageType, read_source

# A live copier renews its lease well before it runs out; a dead one's lease frees the object soon.
LEASE_SECONDS = 60.0
RENEW_AFTER_SECONDS = LEASE_SECONDS / 3
STALE_URL_STATUSES = frozenset({403, 404, 410})


def handle_copy_request(request: CopyRequest, services: Services, *, deadline: float) -> Result:
    job = services.jobs.get(request.job_id)
    if job is None:
        return Result(Outcome.UNKNOWN_JOB, request.job_id, request.run_id)
    if job.status.is_terminal or job.status is Status.NEEDS_REVIEW:
        # A held job moves on only by a person's decision (``handle_review_request``).
        return Result(Outcome.ALREADY_DONE, job.job_id, request.run_id, f"job is {job.status.value}")
    if request.reused_from is not None:
        return _publish_reuse(job, request.reused_from, services, deadline)
    if job.run_id and job.run_id != request.run_id:
        return Result(Outcome.RUN_MISMATCH, job.job_id, request.run_id, f"job belongs to run {job.run_id}")
    if job.status is Status.COPYING and job.output_urls:
        return publish(job, services, deadline=deadline)
    # The run's report was incomplete (no outputs, no reason): read the run itself, once.
    run = _read_run(services, request.run_id)
    if run is None:
        return _run_gone(services, job, request.run_id)
    result = apply_run_report(job, run, services, authoritative=True)
    if result.outcome is Outcome.COPY_QUEUED:
        moved = services.jobs.get(job.job_id)
        if moved is not None and moved.status is Status.COPYING:
            return publish(moved, services, deadline=deadline)
    return result


def _publish_reuse(job: Job, reused_from: str, services: Services, deadline: float) -> Result:
    """A reuse's copy request: only while the job is still copying that earlier job's result."""
    if job.status is not Status.COPYING or job.reused_from != reused_from:
        return Result(Outcome.ALREADY_DONE, job.job_id, detail=f"job is {job.status.value}, not that reuse")
    return publish(job, services, deadline=deadline)


def handle_render_request(request: RenderRequest, services: Services, *, deadline: float) -> Result:
    """Make a succeeded job's renditions again from its stored result and original, with no run:
    the ones named that are configured (others are left alone), or every configured one. Only while
    this job's result is the one published for its source (the newest version wins), under the
    source's result lease, fenced like the result."""
    job = services.jobs.get(request.job_id)
    if job is None:
        return Result(Outcome.UNKNOWN_JOB, request.job_id)
    if job.status is not Status.SUCCEEDED or not job.result_keys:
        return Result(
            Outcome.IGNORED, job.job_id, detail=f"job is {job.status.value}: nothing to render from"
        )
    configured = services.settings.renditions
    names = request.renditions if request.renditions is not None else tuple(configured)
    specs = {name: configured[name] for name in names if name in configured}
    if not specs:
        return Result(Outcome.IGNORED, job.job_id, detail=f"none of {list(names)} is a configured rendition")
    with _result_lease(services, job) as held:
        published = held.lease.published
        if published is None or published.job_id != job.job_id:
            newer = published.job_id if published else "none"
            return Result(Outcome.ALREADY_DONE, job.job_id, detail=f"the published result is job {newer}'s")
        return _render_again(job, services, held, specs, deadline)


def handle_review_request(request: ReviewRequest, services: Services, *, deadline: float) -> Result:
    """A person's decision on a held job: approve publishes exactly the held objects (no run, no
    budget) under the source's result lease and the same newest-version-wins checks as any publish;
    reject deletes them and ends the job ``rejected``. Only while the job is ``needs_review``, read
    again under the lease: a decision delivered twice, or racing the other one, acts once."""
    job = services.jobs.get(request.job_id)
    if job is None:
        return Result(Outcome.UNKNOWN_JOB, request.job_id)
    if job.status is Status.NEEDS_REVIEW:
        with _result_lease(services, job) as held:
            now = services.jobs.get(job.job_id)
            if now is not None and now.status is Status.NEEDS_REVIEW and now.attempt == job.attempt:
                if request.decision is Decision.REJECT:
                    return reject(services, now, request)
                return _approve(now, request, services, held)
            job = now or job
    logger.info(
        "Review request for a job that is not waiting for review; ignored", extra={"status": job.status}
    )
    return Result(Outcome.IGNORED, job.job_id, detail=f"job is {job.status.value}, not needs_review")


def _approve(job: Job, request: ReviewRequest, services: Services, held: _HeldLease) -> Result:
    try:
        current = read_source(services.s3, job.source_bucket, job.source_key, sniff=False)
        if current is None or not current.upload.same_version(job.upload()):
            result = supersede(services, job, current, also=_UNHELD)
        elif _published_later(held.lease.published, job):
            assert held.lease.published is not None
            result = _superseded_by_later_job(services, job, held.lease.published, also=_UNHELD)
        else:
            judged = _Judged(list(job.held_keys), 0, job.renditions, job.quality or None)
            published = held.lease.published
            if published is not None and published.job_id == job.job_id:
                # An earlier try published the held objects and stopped before the job moved.
                discard_folder(services, job.job_id)
                result = _succeed(services, job, _as_published(services, job, judged), review_record(request))
            else:
                result = _publish_held(job, services, held, judged, review=review_record(request))
            if result.outcome is Outcome.SUCCEEDED:
                count("JobsApprovedByReview")
            return result
    except HeldResultGone as exc:
        logger.error("A held object is gone: the job cannot be approved", extra={"reason": str(exc)})
        return Result(Outcome.IGNORED, job.job_id, detail=f"{exc}: reject it instead")
    except OutputCopyFailed as exc:  # S3 failed, or the lease was lost: the request is tried again
        logger.warning("Approving a held result failed; tried again", extra={"reason": str(exc)})
        raise RetryLater(str(exc), after_seconds=COPY_FAILED_RETRY_SECONDS) from exc
    except OutputRefused as exc:
        result = _refused(services, job, exc, also=_UNHELD)
    if result.outcome is not Outcome.ALREADY_DONE:
        discard_folder(services, job.job_id)
    return result


def _render_again(
    job: Job, services: Services, held: _HeldLease, specs: Mapping[str, Spec], deadline: float
) -> Result:
    outputs = [key for key in job.result_keys if not is_rendition(key)]
    keeper = _LeaseKeeper(services, held.lease)
    made = make_all(services, job, outputs[0], specs, deadline=deadline, keep_lease=keeper)
    fresh = _write_renditions(services, job, made, _folder_of(services, job))
    entries = {**job.renditions, **fresh}
    new_keys = {str(e["key"]) for e in fresh.values() if e.get("key")}
    # A rendition now in another format (or not made) leaves its earlier file behind: deleted.
    stale = [
        str(job.renditions[name]["key"])
        for name in fresh
        if job.renditions.get(name, {}).get("key") and job.renditions[name]["key"] not in new_keys
    ]
    keys = [key for key in job.result_keys if key not in stale]
    keys += sorted(new_keys - set(keys))
    changes: JobChanges = {"renditions": stored_map(entries), "result_keys": keys}
    if not services.jobs.update_succeeded(
        job.job_id, changes, only_if={"result_keys": list(job.result_keys)}
    ):
        return Result(Outcome.ALREADY_DONE, job.job_id, detail="the job changed while rendering")
    assert held.lease.published is not None
    _delete_stale(services, job, held.lease.published, stale)
    held.release_published(replace(held.lease.published, result_keys=tuple(keys)))
    count("RenditionsMadeAgain")
    verdicts = ",".join(f"{name}={entry['verdict']}" for name, entry in fresh.items())
    return Result(Outcome.RENDERED, job.job_id, job.run_id, verdicts)


def _read_run(services: Services, run_id: str) -> RunResult | None:
    try:
        return services.runflow().get_run(run_id)
    except RunflowRejected as exc:
        if exc.http_status == 404:
            return None
        raise RetryLater(f"reading run {run_id} failed: {exc}") from exc
    except RunflowError as exc:
        raise RetryLater(f"reading run {run_id} failed: {exc}") from exc


def _run_gone(services: Services, job: Job, run_id: str) -> Result:
    return conclude(
        services,
        job,
        Status.FAILED,
        failure(ErrorCode.RUN_NOT_FOUND, f"Runflow does not know run {run_id}"),
        metric="JobsFailed",
        run_id=run_id,
        detail=ErrorCode.RUN_NOT_FOUND,
        moved_on="",
    )


class _LeaseKeeper:
    """Renews the result lease while a copy streams; raises once it is lost."""

    def __init__(self, services: Services, lease: Lease) -> None:
        self._services = services
        self.lease = lease
        self._renewed = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self._renewed < RENEW_AFTER_SECONDS:
            return
        if not self._services.ledger.renew(self.lease, LEASE_SECONDS):
            raise OutputCopyFailed("the result lease was lost (another copier took over): not writing")
        self._renewed = time.monotonic()


def publish(job: Job, services: Services, *, deadline: float) -> Result:
    """Write the job's outputs to its result keys, if its version still wins, and finish the job.
    Output URLs that no longer work are read from the run again, and the copy tried once more."""
    try:
        return _publish_once(job, services, deadline)
    except OutputCopyFailed as exc:
        fresh = (
            _fresh_outputs(services, job) if exc.http_status in STALE_URL_STATUSES and job.run_id else None
        )
        if fresh is None:
            raise _copy_failed(services, job, exc) from exc
    try:
        return _publish_once(fresh, services, deadline)
    except OutputCopyFailed as exc:
        raise _copy_failed(services, fresh, exc) from exc


def _copy_failed(services: Services, job: Job, exc: OutputCopyFailed) -> RetryLater:
    logger.warning("Output copy failed; the job stays open for a retry", extra={"reason": str(exc)})
    services.jobs.record_error(job.job_id, Status.COPYING, ErrorCode.COPY_FAILED, str(exc))
    count("CopyFailures")
    return RetryLater(str(exc), after_seconds=COPY_FAILED_RETRY_SECONDS)


@contextmanager
def _result_lease(services: Services, job: Job) -> Iterator[_HeldLease]:
    """The source's result lease for the copy, given back on the way out however the copy ends."""
    lease = services.ledger.acquire(job.source_bucket, job.source_key, job.job_id, LEASE_SECONDS)
    if lease is None:
        raise RetryLater(
            "another copy of this object's result is in progress", after_seconds=LEASE_BUSY_RETRY_SECONDS
        )
    held = _HeldLease(services, lease)
    try:
        yield held
    finally:
        if not held.released:
            services.ledger.release(lease)


class _HeldLease:
    def __init__(self, services: Services, lease: Lease) -> None:
        self._services = services
        self.lease = lease
        self.released = False

    def release_published(self, published: Published) -> bool:
        """Give the lease up recording what was published; False if it was lost meanwhile (it is
        then given up once more on the way out, as any lease not released)."""
        self.released = self._services.ledger.release(self.lease, published)
        return self.released


def _publish_once(job: Job, services: Services, deadline: float) -> Result:
    with _result_lease(services, job) as held:
        try:
            return _publish_under_lease(job, services, held, deadline)
        except ReusedResultGone as exc:
            logger.info("Reused result gone", extra={"reason": str(exc)})
            return fall_back(services, job)
        except OutputRefused as exc:
            if services.settings.holds_for_review:
                discard_folder(services, job.job_id)
            return _refused(services, job, exc)


def _refused(services: Services, job: Job, exc: OutputRefused, also: JobChanges | None = None) -> Result:
    logger.warning("Output refused", extra={"error_code": exc.code, "reason": exc.message})
    return conclude(
        services,
        job,
        Status.FAILED,
        {**failure(exc.code, exc.message), **(also or {})},
        metric="JobsFailed",
        run_id=job.run_id,
        detail=str(exc),
        moved_on=str(exc),
    )


def _published_later(published: Published | None, job: Job) -> bool:
    """Whether a job of the same version created later already published (it wins)."""
    return (
        published is not None
        and published.version == job.upload().version
        and published.job_created_at > job.created_at
    )


def _publish_under_lease(job: Job, services: Services, held: _HeldLease, deadline: float) -> Result:
    current = read_source(services.s3, job.source_bucket, job.source_key, sniff=False)
    if current is None or not current.upload.same_version(job.upload()):
        return supersede(services, job, current)
    published = held.lease.published
    if published is not None and (published.job_id, published.run_id) == (job.job_id, job.run_id or ""):
        return _finish_published(job, services, held, published, deadline)
    if _published_later(published, job):
        assert published is not None
        return _superseded_by_later_job(services, job, published)
    holding = services.settings.holds_for_review
    # Under ``hold`` nothing is written under the results prefix before the verdict.
    folder = held_folder(services, job.job_id) if holding else _folder_of(services, job)
    write = _copy_reused if job.reused_from else _copy_all
    judged = _judge(
        job, services, held.lease, write(job, services, held.lease, folder, deadline), folder, deadline
    )
    if not holding:
        return _publish(job, services, held, judged)
    if not passes(judged.quality, judged.review):
        return hold_for_review(services, job, judged.keys, judged.renditions, judged.quality or {})
    return _publish_held(job, services, held, judged)


def _finish_published(
    job: Job, services: Services, held: _HeldLease, published: Published, deadline: float
) -> Result:
    """An earlier try of this very copy got as far as publishing: make the renditions (again, over
    the same keys), judge the result, and finish the job."""
    outputs = [key for key in published.result_keys if not is_rendition(key)]
    judged = _judge(job, services, held.lease, _Judged(outputs, 0), _folder_of(services, job), deadline)
    if services.settings.holds_for_review:
        discard_folder(services, job.job_id)  # it stopped before tidying the held copies up
    return _succeed(services, job, judged)


Entries = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class _Judged:
    """A job's objects as written (result keys first), the bytes copied, its renditions, and the
    quality checks of its result (None: the gate is off) with a person's decision on those pixels."""

    keys: list[str]
    copied: int
    renditions: Entries = field(default_factory=dict)
    quality: dict[str, Any] | None = None
    review: dict[str, Any] | None = None


def _judge(
    job: Job, services: Services, lease: Lease, written: _Judged, folder: str, deadline: float
) -> _Judged:
    """Make and write into ``folder`` every configured rendition not copied with a reused result,
    and (the gate on, no verdict copied with it) judge the result: one read and one comparison."""
    gate_on = services.settings.quality_gate != "off"
    wanted = {
        name: spec for name, spec in services.settings.renditions.items() if name not in written.renditions
    }
    outputs = [key for key in written.keys if not is_rendition(key)]
    if not outputs:
        return written
    judged = judge(
        services,
        job,
        outputs[0],
        wanted,
        assessed=gate_on and written.quality is None,
        deadline=deadline,
        keep_lease=_LeaseKeeper(services, lease),
    )
    entries = {**written.renditions, **_write_renditions(services, job, judged.made, folder)}
    made = [str(e["key"]) for e in entries.values() if e.get("key")]
    quality = (written.quality or judged.quality) if gate_on else None
    keys = written.keys + [key for key in made if key not in written.keys]
    return replace(written, keys=keys, renditions=entries, quality=quality)


def _publish(
    job: Job,
    services: Services,
    held: _HeldLease,
    judged: _Judged,
    review: dict[str, Any] | None = None,
    *,
    tidy: Callable[[], None] | None = None,
) -> Result:
    """The objects at ``judged.keys`` become the source's published result, ``tidy`` runs, and the
    job succeeds."""
    published = held.lease.published
    if published is not None:
        _delete_stale(services, job, published, [k for k in published.result_keys if k not in judged.keys])
    record = Published(job.job_id, job.run_id or "", job.upload().version, job.created_at, tuple(judged.keys))
    if not held.release_published(record):
        logger.error("Result lease lost after publishing", extra={"result_keys": judged.keys})
    if tidy is not None:
        tidy()
    return _succeed(services, job, judged, review)


class HeldResultGone(Exception):
    """A held object to publish no longer exists."""


def _publish_held(
    job: Job, services: Services, held: _HeldLease, judged: _Judged, review: dict[str, Any] | None = None
) -> Result:
    """Publish held objects: each copied server-side into the source's result folder under its
    file name (fenced like any result write), then published as any result; the held copies are
    deleted before the job says it succeeded (a try that stops in between finds the result published
    by this job, and finishes it)."""
    keeper = _LeaseKeeper(services, held.lease)
    published = _as_published(services, job, judged)
    for key, target in zip(judged.keys, published.keys, strict=True):
        keeper()
        _copy_held(services, job, key, target)
    return _publish(job, services, held, published, review, tidy=lambda: discard_folder(services, job.job_id))


def _as_published(services: Services, job: Job, judged: _Judged) -> _Judged:
    """Held objects as they are once published: the same file names in the source's result folder."""
    folder = _folder_of(services, job)
    moved = {key: folder + key.rpartition("/")[2] for key in judged.keys}
    entries = {
        name: {**entry, "key": moved.get(str(entry["key"])) if entry.get("key") else None}
        for name, entry in judged.renditions.items()
    }
    return replace(judged, keys=list(moved.values()), renditions=entries)


def _copy_held(services: Services, job: Job, source: str, key: str) -> None:
    bucket = services.settings.results_bucket
    expect = _claim(services, job, key)
    fence = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
    try:
        services.s3.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": source},
            MetadataDirective="COPY",
            **fence,  # type: ignore[arg-type]
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise HeldResultGone(f"the held object {source} is gone") from exc
        raise OutputCopyFailed(f"publishing the held object {source} as {key} failed: {exc}") from exc


def _folder_of(services: Services, job: Job) -> str:
    """The source's own result folder."""
    return result_folder(job.source_key, services.settings.upload_prefix, services.settings.results_prefix)


def _metadata_of(job: Job) -> Mapping[str, str]:
    """The metadata every object this job writes carries (its result, renditions and copies)."""
    return result_metadata(
        job_id=job.job_id,
        run_id=job.run_id or "",
        source_bucket=job.source_bucket,
        source_key=job.source_key,
        source_version=job.upload().version,
        colour=job.color,
    )


def _write_renditions(services: Services, job: Job, made: list[Made], folder: str) -> Entries:
    """Each rendition made written into ``folder`` beside the result, fenced like the result (the
    object seen before is still there); entries of those that could not be made keep ``key`` None."""
    settings = services.settings
    metadata = _metadata_of(job)
    entries: Entries = {}
    for one in made:
        if one.data is None:
            entries[one.name] = one.entry
            continue
        key = folder + rendition_name(one.name, one.extension)
        expect = _claim(services, job, key)
        fence = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
        try:
            services.s3.put_object(
                Bucket=settings.results_bucket,
                Key=key,
                Body=one.data,
                ContentType=one.content_type,
                Metadata={**metadata, "rendition": one.name},
                **fence,  # type: ignore[arg-type]
            )
        except ClientError as exc:
            raise ResultChanged(f"writing the rendition {key} failed: {exc}") from exc
        entries[one.name] = {**one.entry, "key": key}
    return entries


def _copy_all(job: Job, services: Services, lease: Lease, folder: str, deadline: float) -> _Judged:
    """The run's outputs streamed into ``folder``: ``result.<ext>``, ``result-2.<ext>``…"""
    settings = services.settings
    keeper = _LeaseKeeper(services, lease)
    metadata = _metadata_of(job)
    keys: list[str] = []
    copied = 0
    for index, output in enumerate(job.output_urls):

        def place(kind: ImageType, index: int = index) -> Destination:
            # Called once the output's first bytes are known: the key's extension follows them.
            key = folder + result_name(index, extension_of(kind))
            return Destination(settings.results_bucket, key, metadata, _claim(services, job, key))

        stored = services.copy(
            output.url,
            s3=services.s3,
            place=place,
            policy=services.output_policy,
            http=services.http,
            deadline=deadline,
            resolve=services.resolve,
            keep_lease=keeper,
        )
        keys.append(stored.key)
        copied += stored.size
    return _Judged(keys, copied)


class ReusedResultGone(Exception):
    """An object of the result being reused no longer exists."""


def _copy_reused(job: Job, services: Services, lease: Lease, folder: str, deadline: float) -> _Judged:
    """Copy the earlier job's result objects, server-side (no byte passes through here), into
    ``folder`` with the same file names, fenced like a run's copy. Its renditions made exactly as
    configured now are copied with their verdicts; the others are left behind (made again from the
    result). Its quality checks come along: those pixels were judged (or approved by a person)."""
    earlier = services.jobs.get(job.reused_from or "")
    if earlier is None or earlier.status is not Status.SUCCEEDED or not earlier.result_keys:
        raise ReusedResultGone(f"job {job.reused_from} has no result any more")
    keeper = _LeaseKeeper(services, lease)
    kept = reusable(services.settings.renditions, earlier)
    kept_keys = {str(entry["key"]) for entry in kept.values() if entry.get("key")}
    keys: list[str] = []
    copied = 0
    for source in earlier.result_keys:
        if is_rendition(source) and source not in kept_keys:
            continue
        if time.monotonic() >= deadline:
            raise OutputCopyFailed("no time left to copy the reused result")
        keeper()
        key = folder + source.rpartition("/")[2]
        copied += _copy_one(services, job, source, key)
        keys.append(key)
    moved = {
        name: {**entry, "key": folder + str(entry["key"]).rpartition("/")[2] if entry.get("key") else None}
        for name, entry in kept.items()
    }
    return _Judged(keys, copied, moved, earlier.quality or None, earlier.review or None)


def _copy_one(services: Services, job: Job, source: str, key: str) -> int:
    """One server-side copy; the result's own metadata names this job and source."""
    bucket = services.settings.results_bucket
    head = _head(services, source)
    if head is None:
        raise ReusedResultGone(f"the reused result {source} is gone")
    expect = _claim(services, job, key)
    metadata = result_metadata(
        job_id=job.job_id,
        run_id=str(head.get("Metadata", {}).get("run-id", "")),
        source_bucket=job.source_bucket,
        source_key=job.source_key,
        source_version=job.upload().version,
        colour=job.color,
    )
    copy_from: dict[str, str] = {"Bucket": bucket, "Key": source}
    if head.get("VersionId") and head["VersionId"] != "null":
        copy_from["VersionId"] = str(head["VersionId"])
    fence = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
    try:
        services.s3.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource=copy_from,  # type: ignore[arg-type]
            MetadataDirective="REPLACE",
            Metadata=dict(metadata),
            ContentType=str(head.get("ContentType") or "application/octet-stream"),
            **fence,  # type: ignore[arg-type]
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "NoSuchVersion", "404"):
            raise ReusedResultGone(f"the reused result {source} is gone") from exc
        raise OutputCopyFailed(f"copying {source} to {key} failed: {exc}") from exc
    return int(head.get("ContentLength", 0))


def _head(services: Services, key: str) -> Mapping[str, Any] | None:
    """The result object's HEAD answer, None if there is none."""
    try:
        return services.s3.head_object(Bucket=services.settings.results_bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return None
        raise OutputCopyFailed(f"reading the current result {key} failed: {exc}") from exc


def _claim(services: Services, job: Job, key: str) -> str | None:
    """The ETag of the object now at ``key`` (None: there is none), which the write must still
    find there; refused if that object is another source's result."""
    head = _head(services, key)
    if head is None:
        return None
    metadata = head.get("Metadata", {})
    if not names_source(metadata, job.source_bucket, job.source_key):
        owner = unquote(str(metadata.get("source-key", ""))) or "no source Backdrop wrote"
        raise OutputRefused(
            ErrorCode.RESULT_KEY_TAKEN,
            f"result key {key} holds another object (written for {owner[:300]}): not overwriting it",
        )
    return str(head["ETag"])


def _delete_stale(services: Services, job: Job, published: Published, keys: list[str]) -> None:
    """Results an earlier job of this source wrote and this one did not (fewer outputs, another
    format) must not linger. Each is checked on the object itself first: it must lie in this
    source's folder (an earlier layout's results are left in place) and its metadata must name
    this source and a job of this source."""
    settings = services.settings
    folder = result_folder(job.source_key, settings.upload_prefix, settings.results_prefix)
    for key in keys:
        try:
            if not key.startswith(folder):
                logger.info("Leaving a result outside this source's folder in place", extra={"key": key})
                continue
            head = _head(services, key)
            if head is None:
                continue
            metadata = head.get("Metadata", {})
            if not names_source(metadata, job.source_bucket, job.source_key) or not _job_of_source(
                services, job, published, str(metadata.get("job-id", ""))
            ):
                logger.warning("Not deleting a result this source did not write", extra={"key": key})
                continue
            services.s3.delete_object(Bucket=settings.results_bucket, Key=key)
        except (ClientError, OutputCopyFailed) as exc:
            logger.warning("Could not delete a stale result", extra={"key": key, "reason": str(exc)})


def _job_of_source(services: Services, job: Job, published: Published, job_id: str) -> bool:
    """Whether ``job_id`` is a job of ``job``'s source: the one the result lease says published
    there, or one the jobs table knows with the same source."""
    if not job_id:
        return False
    if job_id in (published.job_id, job.job_id):
        return True
    other = services.jobs.get(job_id)
    return (
        other is not None and other.source_bucket == job.source_bucket and other.source_key == job.source_key
    )


def _fresh_outputs(services: Services, job: Job) -> Job | None:
    """The job with output URLs read from the run again (the ones it had expired)."""
    assert job.run_id is not None
    run = _read_run(services, job.run_id)
    if run is None or not run.outputs or not belongs_to(job, run):
        return None
    urls = outputs_to_item(run.outputs)
    if not services.jobs.update_open(job.job_id, Status.COPYING, {"output_urls": urls}):
        return None
    count("OutputUrlsRefreshed")
    return replace(job, output_urls=list(run.outputs))


# What a held job that ends without being published no longer has.
_UNHELD: JobChanges = {"held_keys": None, "renditions": None}


def _superseded_by_later_job(
    services: Services, job: Job, published: Published, *, also: JobChanges | None = None
) -> Result:
    message = f"job {published.job_id}, created later for the same version, already wrote the result"
    return conclude(
        services,
        job,
        Status.SUPERSEDED,
        {**failure(ErrorCode.SUPERSEDED, message), "superseded_by": published.job_id, **(also or {})},
        metric="JobsSuperseded",
        run_id=job.run_id,
        detail=message,
        moved_on="",
    )


def _succeed(services: Services, job: Job, judged: _Judged, review: dict[str, Any] | None = None) -> Result:
    keys, copied = judged.keys, judged.copied

    def measure(done: Job) -> None:
        count_bytes("BytesCopied", copied)
        if judged.quality and judged.quality.get("verdict") == "doubt" and not (review or judged.review):
            count("DoubtfulPublished")  # under ``flag``: published, and marked doubtful
        if done.completed_at:
            elapsed = parse_iso(done.completed_at) - parse_iso(done.created_at)
            milliseconds("TimeToResult", elapsed.total_seconds() * 1000)

    return conclude(
        services,
        job,
        Status.SUCCEEDED,
        {
            "result_bucket": services.settings.results_bucket,
            "result_keys": keys,
            "renditions": stored_map(judged.renditions),
            "quality": stored_map(judged.quality or {}),
            "review": stored_map(review or {}),
            "held_keys": None,
            "error_code": None,
            "error_message": None,
        },
        metric="JobsSucceeded",
        run_id=job.run_id,
        detail=",".join(keys),
        log="Job succeeded",
        extra={"result_keys": keys, "bytes": copied},
        then=measure,
    )
