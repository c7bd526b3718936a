"""The jobs table: every write is conditional, so concurrent or repeated events cannot go backwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from backdrop.errors import ErrorCode
from backdrop.jobs import (
    ALLOWED_FROM,
    MAX_MESSAGE,
    OPEN_SHARD,
    RETRYABLE,
    TERMINAL,
    Job,
    JobChanges,
    Status,
    attempt_defaults,
    iso_from_epoch,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table

Clock = Callable[[], float]  # seconds since the epoch

# Jobs whose completion event is still to be published carry this in the sparse PendingEvents index.
EVENT_PENDING = "pending"
# A republisher that claimed an event and then died is replaced after this long.
ANNOUNCE_CLAIM_SECONDS = 300


@dataclass(frozen=True)
class Move:
    """What a conditional transition did: ``job`` as it is now (moved) or as found (refused)."""

    moved: bool
    job: Job | None  # None: there is no such job


def _changes(
    changes: JobChanges,
    names: dict[str, str],
    values: dict[str, Any],
    sets: list[str],
    removes: list[str],
) -> None:
    """Attribute changes as SET clauses; a change to None removes the attribute."""
    for i, (name, value) in enumerate(changes.items()):
        names[f"#c{i}"] = name
        if value is None:
            removes.append(f"#c{i}")
        else:
            values[f":c{i}"] = value
            sets.append(f"#c{i} = :c{i}")


def _guards(only_if: JobChanges, names: dict[str, str], values: dict[str, Any]) -> list[str]:
    """Conditions that each attribute still holds exactly this value (None: is absent)."""
    conditions = []
    for i, (name, value) in enumerate(only_if.items()):
        names[f"#q{i}"] = name
        if value is None:
            conditions.append(f"attribute_not_exists(#q{i})")
        else:
            values[f":q{i}"] = value
            conditions.append(f"#q{i} = :q{i}")
    return conditions


def _is_conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


_deserializer = TypeDeserializer()


def _old_item(exc: ClientError) -> Job | None:
    """The item a refused write saw (ReturnValuesOnConditionCheckFailure), in plain values."""
    raw: Any = exc.response.get("Item")
    if not raw:
        return None
    # The low-level wire format, even through a Table resource.
    item = {k: _deserializer.deserialize(v) for k, v in raw.items()}
    return Job.from_item(item)


class JobStore:
    def __init__(self, table: Table, *, retention_days: int, clock: Clock, announce: bool = False) -> None:
        self._table = table
        self._retention_seconds = retention_days * 86400
        self._clock = clock
        # Whether terminal moves mark a completion event pending (a bus is configured).
        self._announce = announce

    def _now(self) -> str:
        return iso_from_epoch(self._clock())

    def claim(self, job: Job) -> tuple[Job, bool]:
        """Create the job unless it exists. Returns (job as stored, created?)."""
        try:
            self._table.put_item(
                Item=job.to_item(),
                ConditionExpression="attribute_not_exists(job_id)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            existing = _old_item(exc) or self.get(job.job_id)
            if existing is None:  # deleted in between: practically impossible, surface it
                raise
            return existing, False
        return job, True

    def get(self, job_id: str) -> Job | None:
        item = self._table.get_item(Key={"job_id": job_id}, ConsistentRead=True).get("Item")
        return Job.from_item(dict(item)) if item else None

    def find_by_run_id(self, run_id: str) -> Job | None:
        resp = self._table.query(
            IndexName="ByRunId",
            KeyConditionExpression="run_id = :r",
            ExpressionAttributeValues={":r": run_id},
            Limit=2,
        )
        items = resp.get("Items", [])
        if not items:
            return None
        # Index reads are eventually consistent: re-read the base item for the current status.
        return self.get(str(items[0]["job_id"]))

    def try_transition(
        self,
        job_id: str,
        target: Status,
        *,
        changes: JobChanges | None = None,
        only_if: JobChanges | None = None,
    ) -> Move:
        """Move a job to ``target`` if its current status allows it (and the ``only_if`` attributes
        hold exactly these values; None means absent). Changes set to None are removed."""
        allowed = ALLOWED_FROM[target]
        if not allowed:
            raise ValueError(f"nothing moves to {target.value} by a transition")
        now = self._now()
        names: dict[str, str] = {"#status": "status"}
        values: dict[str, Any] = {":target": target.value, ":now": now}
        sets = ["#status = :target", "updated_at = :now"]
        removes: list[str] = []
        _changes(changes or {}, names, values, sets, removes)
        if target in TERMINAL:
            sets += ["completed_at = :now", "expires_at = :expires"]
            values[":expires"] = int(self._clock()) + self._retention_seconds
            names["#shard"] = "open_shard"
            removes.append("#shard")
            if self._announce:
                sets.append("event_shard = :event")
                values[":event"] = EVENT_PENDING
        else:
            sets.append("open_shard = :shard")
            values[":shard"] = OPEN_SHARD
        placeholders = []
        for i, status in enumerate(sorted(allowed)):
            values[f":a{i}"] = status.value
            placeholders.append(f":a{i}")
        conditions = [f"attribute_exists(job_id) AND #status IN ({', '.join(placeholders)})"]
        conditions += _guards(only_if or {}, names, values)
        expression = "SET " + ", ".join(sets)
        if removes:
            expression += " REMOVE " + ", ".join(dict.fromkeys(removes))
        try:
            resp = self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression=expression,
                ConditionExpression=" AND ".join(conditions),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return Move(False, _old_item(exc))
        return Move(True, Job.from_item(dict(resp["Attributes"])))

    def update_open(
        self,
        job_id: str,
        expected: Status,
        changes: JobChanges,
        *,
        only_if: JobChanges | None = None,
    ) -> bool:
        """Change attributes of an open job without moving it; False if it is no longer ``expected``
        (or an ``only_if`` attribute changed meanwhile)."""
        return self._update(job_id, expected, changes, only_if or {})

    def update_succeeded(self, job_id: str, changes: JobChanges, *, only_if: JobChanges) -> bool:
        """Change attributes of a succeeded job (its renditions made again); False if it is no
        longer succeeded or an ``only_if`` attribute changed meanwhile (a retry began)."""
        return self._update(job_id, Status.SUCCEEDED, changes, only_if)

    def _update(self, job_id: str, expected: Status, changes: JobChanges, only_if: JobChanges) -> bool:
        names: dict[str, str] = {"#status": "status"}
        values: dict[str, Any] = {":expected": expected.value, ":now": self._now()}
        sets = ["updated_at = :now"]
        removes: list[str] = []
        _changes(changes, names, values, sets, removes)
        conditions = ["#status = :expected", *_guards(only_if, names, values)]
        expression = "SET " + ", ".join(sets)
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        try:
            self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression=expression,
                ConditionExpression=" AND ".join(conditions),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return False
            raise
        return True

    def record_error(self, job_id: str, expected: Status, code: ErrorCode, message: str) -> bool:
        """Note a (retryable) error on an open job without moving it. False if it moved on meanwhile."""
        try:
            self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression="SET error_code = :c, error_message = :m, updated_at = :now "
                "ADD retryable_errors :one",
                ConditionExpression="#status = :expected",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":c": code,
                    ":m": message[:MAX_MESSAGE],
                    ":now": self._now(),
                    ":one": 1,
                    ":expected": expected.value,
                },
            )
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return False
            raise
        return True

    def begin_retry(self, job: Job, *, include_rejected: bool = False) -> Move:
        """Start attempt ``job.attempt + 1`` of a terminal job: back to ``received``, the finished
        attempt appended to ``history``. Conditional on the attempt number, so two operators
        retrying at once start one attempt, not two."""
        if job.status not in RETRYABLE or (job.status is Status.REJECTED and not include_rejected):
            return Move(False, job)
        finished = {
            "attempt": job.attempt,
            "status": job.status.value,
            "run_id": job.run_id,
            "error_code": job.error_code,
            "error_message": job.error_message,
            "completed_at": job.completed_at,
        }
        values: dict[str, Any] = {
            ":received": Status.RECEIVED.value,
            ":now": self._now(),
            ":next": job.attempt + 1,
            ":attempt": job.attempt,
            ":finished": [{k: v for k, v in finished.items() if v is not None}],
            ":empty": [],
            ":shard": OPEN_SHARD,
        }
        names = {"#status": "status"}
        sets = [
            "#status = :received",
            "updated_at = :now",
            "attempt = :next",
            "open_shard = :shard",
            "history = list_append(if_not_exists(history, :empty), :finished)",
        ]
        removes = []
        # What belonged to the finished attempt goes back to a new attempt's value (the record says which).
        for i, (name, value) in enumerate(attempt_defaults().items()):
            names[f"#p{i}"] = name
            if value is None:
                removes.append(f"#p{i}")
            else:
                values[f":p{i}"] = value
                sets.append(f"#p{i} = :p{i}")
        allowed = sorted(RETRYABLE if include_rejected else RETRYABLE - {Status.REJECTED})
        for i, status in enumerate(allowed):
            values[f":a{i}"] = status.value
        try:
            resp = self._table.update_item(
                Key={"job_id": job.job_id},
                UpdateExpression="SET " + ", ".join(sets) + " REMOVE " + ", ".join(removes),
                ConditionExpression=(
                    f"#status IN ({', '.join(f':a{i}' for i in range(len(allowed)))}) "
                    "AND (attempt = :attempt OR (attribute_not_exists(attempt) AND :attempt = :one)) "
                    # The finished attempt's completion event goes out before a new attempt starts.
                    "AND attribute_not_exists(event_shard)"
                ),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={**values, ":one": 1},
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return Move(False, _old_item(exc))
        return Move(True, Job.from_item(dict(resp["Attributes"])))

    def reopen_for_run(self, job: Job) -> bool:
        """Put a job that was copying an earlier job's result (``reused_from``) back to
        ``received``, to run after all: only while it is still that copy, of this attempt."""
        try:
            self._table.update_item(
                Key={"job_id": job.job_id},
                UpdateExpression=(
                    "SET #status = :received, updated_at = :now, open_shard = :shard "
                    "REMOVE reused_from, copy_requeued_at, error_code, error_message"
                ),
                ConditionExpression="#status = :copying AND reused_from = :from AND attempt = :attempt",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":received": Status.RECEIVED.value,
                    ":copying": Status.COPYING.value,
                    ":now": self._now(),
                    ":shard": OPEN_SHARD,
                    ":from": job.reused_from,
                    ":attempt": job.attempt,
                },
            )
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return False
            raise
        return True

    def mark_announced(self, job_id: str, attempt: int) -> bool:
        """The attempt's completion event was published: it leaves the PendingEvents index."""
        try:
            self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression="SET event_published_at = :now REMOVE event_shard, event_claimed_at",
                ConditionExpression="event_shard = :pending AND attempt = :attempt",
                ExpressionAttributeValues={
                    ":now": self._now(),
                    ":pending": EVENT_PENDING,
                    ":attempt": attempt,
                },
            )
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return False
            raise
        return True

    def mark_review_announced(self, job_id: str) -> bool:
        """A held job's ``Job Needs Review`` event was sent. ``updated_at`` is left alone: it says
        when the job was held, which the review backlog's age is measured from."""
        try:
            self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression="SET event_published_at = :now",
                ConditionExpression="#status = :review AND attribute_not_exists(event_published_at)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":now": self._now(), ":review": Status.NEEDS_REVIEW.value},
            )
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return False
            raise
        return True

    def claim_announcement(self, job_id: str, attempt: int) -> bool:
        """Claim a pending event to republish it, unless another republisher has it now."""
        now = self._clock()
        try:
            self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression="SET event_claimed_at = :now",
                ConditionExpression="event_shard = :pending AND attempt = :attempt AND "
                "(attribute_not_exists(event_claimed_at) OR event_claimed_at < :stale)",
                ExpressionAttributeValues={
                    ":now": int(now),
                    ":stale": int(now - ANNOUNCE_CLAIM_SECONDS),
                    ":pending": EVENT_PENDING,
                    ":attempt": attempt,
                },
            )
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return False
            raise
        return True

    def pending_announcements(self, *, completed_before: str, limit: int) -> Iterator[Job]:
        """Terminal jobs whose completion event is not published yet, oldest first."""
        yield from self._query_index(
            "PendingEvents",
            "event_shard = :s AND completed_at < :c",
            {":s": EVENT_PENDING, ":c": completed_before},
            limit,
        )

    def _query_index(
        self, index: str, condition: str, values: dict[str, Any], limit: int, where: str | None = None
    ) -> Iterator[Job]:
        remaining = limit
        start: dict[str, Any] | None = None
        while remaining > 0:
            kwargs: dict[str, Any] = {
                "IndexName": index,
                "KeyConditionExpression": condition,
                "ExpressionAttributeValues": values,
                "ScanIndexForward": True,
                "Limit": min(remaining, 100),
            }
            if where:
                # Read past the items it leaves out: ``limit`` counts the jobs that match.
                kwargs["FilterExpression"] = where
                kwargs["ExpressionAttributeNames"] = {"#status": "status"}
            if start:
                kwargs["ExclusiveStartKey"] = start
            resp = self._table.query(**kwargs)
            for item in resp.get("Items", []):
                remaining -= 1
                yield Job.from_item(dict(item))
                if remaining == 0:
                    return
            start = resp.get("LastEvaluatedKey")
            if not start:
                return

    def open_jobs(self, *, created_before: str, limit: int) -> Iterator[Job]:
        """Open jobs the pipeline works on, oldest first, created before the given timestamp; at most
        ``limit``. Jobs waiting for a person (``needs_review``) are left out: however many there are,
        they never crowd out the others."""
        yield from self._query_index(
            "OpenJobs",
            "open_shard = :s AND created_at < :c",
            {":s": OPEN_SHARD, ":c": created_before, ":review": Status.NEEDS_REVIEW.value},
            limit,
            where="#status <> :review",
        )

    def review_backlog(self, *, limit: int = 100_000) -> Iterator[Job]:
        """Jobs waiting for a person's decision (``needs_review``), oldest first."""
        yield from self._query_index(
            "OpenJobs",
            "open_shard = :s",
            {":s": OPEN_SHARD, ":review": Status.NEEDS_REVIEW.value},
            limit,
            where="#status = :review",
        )

    def jobs_for_source(self, bucket: str, key: str) -> list[Job]:
        """Every job of one object (all versions, colours and attempts), newest first."""
        jobs: list[Job] = []
        start: dict[str, Any] | None = None
        while True:
            kwargs: dict[str, Any] = {
                "IndexName": "BySourceKey",
                "KeyConditionExpression": "source_key = :k",
                "ExpressionAttributeValues": {":k": key},
                "ScanIndexForward": False,
            }
            if start:
                kwargs["ExclusiveStartKey"] = start
            resp = self._table.query(**kwargs)
            jobs += [
                Job.from_item(dict(i)) for i in resp.get("Items", []) if i.get("source_bucket") == bucket
            ]
            start = resp.get("LastEvaluatedKey")
            if not start:
                return jobs
