"""The jobs table: every write is conditional, so concurrent or repeated events cannot go backwards."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from backdrop.jobs import ALLOWED_FROM, OPEN_SHARD, TERMINAL, Job, Status, now_iso

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table


class TransitionRefused(Exception):
    """The job is not in a status from which the requested move is allowed (or does not exist)."""

    def __init__(self, job_id: str, target: Status, current: Job | None) -> None:
        self.job_id = job_id
        self.target = target
        self.current = current
        state = current.status.value if current else "missing"
        super().__init__(f"job {job_id}: {state} cannot move to {target.value}")


def _is_conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class JobStore:
    def __init__(self, table: Table, *, retention_days: int) -> None:
        self._table = table
        self._retention_seconds = retention_days * 86400

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
            old = exc.response.get("Item")
            if old:
                return Job.from_item(_deserialize(old)), False  # type: ignore[arg-type]
            existing = self.get(job.job_id)
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

    def transition(
        self,
        job_id: str,
        target: Status,
        *,
        changes: Mapping[str, Any] | None = None,
        remove: tuple[str, ...] = (),
    ) -> Job:
        """Move a job to ``target`` if its current status allows it; raise TransitionRefused if not."""
        allowed = ALLOWED_FROM[target]
        now = now_iso()
        values: dict[str, Any] = {":target": target.value, ":now": now}
        names: dict[str, str] = {"#status": "status"}
        sets = ["#status = :target", "updated_at = :now"]
        removes = list(remove)
        for i, (name, value) in enumerate((changes or {}).items()):
            if value is None:
                removes.append(name)
                continue
            names[f"#c{i}"] = name
            values[f":c{i}"] = value
            sets.append(f"#c{i} = :c{i}")
        if target in TERMINAL:
            sets.append("completed_at = :now")
            sets.append("expires_at = :expires")
            values[":expires"] = int(time.time()) + self._retention_seconds
            removes.append("open_shard")
        else:
            sets.append("open_shard = :shard")
            values[":shard"] = OPEN_SHARD
        placeholders = []
        for i, status in enumerate(sorted(allowed)):
            values[f":a{i}"] = status.value
            placeholders.append(f":a{i}")
        if not placeholders:
            raise ValueError(f"nothing can move to {target.value}")
        expression = "SET " + ", ".join(sets)
        if removes:
            expression += " REMOVE " + ", ".join(dict.fromkeys(removes))
        try:
            resp = self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression=expression,
                ConditionExpression=f"attribute_exists(job_id) AND #status IN ({', '.join(placeholders)})",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            old = exc.response.get("Item")
            current = Job.from_item(_deserialize(old)) if old else None  # type: ignore[arg-type]
            raise TransitionRefused(job_id, target, current) from exc
        return Job.from_item(dict(resp["Attributes"]))

    def record_error(self, job_id: str, expected: Status, code: str, message: str) -> bool:
        """Note a (retryable) error on an open job without moving it. False if it moved on meanwhile."""
        try:
            self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression="SET error_code = :c, error_message = :m, updated_at = :now "
                "ADD attempts :one",
                ConditionExpression="#status = :expected",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":c": code,
                    ":m": message[:1000],
                    ":now": now_iso(),
                    ":one": 1,
                    ":expected": expected.value,
                },
            )
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return False
            raise
        return True

    def open_jobs(self, *, created_before: str, limit: int) -> Iterator[Job]:
        """Open jobs, oldest first, created before the given timestamp; at most ``limit``."""
        remaining = limit
        start: dict[str, Any] | None = None
        while remaining > 0:
            kwargs: dict[str, Any] = {
                "IndexName": "OpenJobs",
                "KeyConditionExpression": "open_shard = :s AND created_at < :c",
                "ExpressionAttributeValues": {":s": OPEN_SHARD, ":c": created_before},
                "ScanIndexForward": True,
                "Limit": min(remaining, 100),
            }
            if start:
                kwargs["ExclusiveStartKey"] = start
            resp = self._table.query(**kwargs)
            for item in resp.get("Items", []):
                remaining -= 1
                yield Job.from_item(dict(item))
            start = resp.get("LastEvaluatedKey")
            if not start:
                return


def _deserialize(item: Mapping[str, Any]) -> dict[str, Any]:
    """ReturnValuesOnConditionCheckFailure gives the low-level wire format even through a Table."""
    from boto3.dynamodb.types import TypeDeserializer

    if all(isinstance(v, dict) and len(v) == 1 for v in item.values()):
        deserializer = TypeDeserializer()
        return {k: deserializer.deserialize(v) for k, v in item.items()}
    return dict(item)
