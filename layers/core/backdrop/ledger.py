"""The ledger table: small records that serialise work across functions with conditional writes.

Run budget (one item per UTC day, ``budget#<YYYY-MM-DD>``): before a run is created, one is
reserved from the day's counter with a conditional ``ADD``, so however many submitters race, no
more than the day's budget is ever reserved.

Result leases (one item per source object, ``result#<bucket>/<key>``): whoever writes a result of
that object holds the lease while it checks that its version is still the newest and copies. The
item also remembers which job and source version last published a result there. A copier that
died leaves a lease that simply expires; a live copier renews it as it goes and stops before its
final write if it could not, so two copies of one object never publish at the same time.

Content records (one item per content and colour, ``content#<sha256>#<colour tag>``): ``done_*``
names the latest job that succeeded for those pixels in that colour and its result keys; the
content lease (``holder``: job id and attempt, ``holder_until``) names the one job allowed to run
them now, and ``waiting`` the jobs (id and attempt) that wait for it. The lease ends with its
holder's job (the job's end gives it up and hands ``waiting`` back to be woken) or at
``holder_until``, the holder's run deadline, so a holder that never ends cannot block its content
for ever.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table

Clock = Callable[[], float]  # seconds since the epoch


@dataclass(frozen=True)
class Published:
    """The result currently at an object's result keys: who wrote it, from which version."""

    job_id: str
    run_id: str  # which run's outputs (a retried job publishes a new attempt's run)
    version: str  # the source version id (or ETag on an unversioned bucket)
    job_created_at: str
    result_keys: tuple[str, ...]


@dataclass(frozen=True)
class Lease:
    pk: str
    holder: str
    token: str
    published: Published | None


def _conditional(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class ResultLedger:
    def __init__(self, table: Table, *, clock: Clock) -> None:
        self._table = table
        self._clock = clock

    @staticmethod
    def key_for(bucket: str, key: str) -> str:
        return f"result#{bucket}/{key}"

    def acquire(self, bucket: str, key: str, holder: str, seconds: float) -> Lease | None:
        """Take the object's result lease for ``seconds``; None while a live holder has it (even
        another copier of the same job: a crashed copier's lease simply runs out)."""
        pk = self.key_for(bucket, key)
        now = self._clock()
        token = secrets.token_hex(8)
        try:
            resp = self._table.update_item(
                Key={"pk": pk},
                UpdateExpression="SET holder = :h, lease_token = :t, lease_until = :u",
                ConditionExpression="attribute_not_exists(holder) OR lease_until < :now",
                ExpressionAttributeValues={
                    ":h": holder,
                    ":t": token,
                    ":u": _ms(now + seconds),
                    ":now": _ms(now),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _conditional(exc):
                return None
            raise
        return Lease(pk, holder, token, _published(resp["Attributes"]))

    def renew(self, lease: Lease, seconds: float) -> bool:
        """Extend a lease we still hold; False if it was lost (expired and taken by another)."""
        try:
            self._table.update_item(
                Key={"pk": lease.pk},
                UpdateExpression="SET lease_until = :u",
                ConditionExpression="holder = :h AND lease_token = :t",
                ExpressionAttributeValues={
                    ":h": lease.holder,
                    ":t": lease.token,
                    ":u": _ms(self._clock() + seconds),
                },
            )
        except ClientError as exc:
            if _conditional(exc):
                return False
            raise
        return True

    def release(self, lease: Lease, published: Published | None = None) -> bool:
        """Give the lease up, recording what was published under it (if anything)."""
        sets: list[str] = []
        values: dict[str, Any] = {":h": lease.holder, ":t": lease.token}
        if published is not None:
            sets = [
                "published_job_id = :j",
                "published_run_id = :r",
                "published_version = :v",
                "published_job_created_at = :c",
                "published_keys = :k",
            ]
            values.update(
                {
                    ":j": published.job_id,
                    ":r": published.run_id,
                    ":v": published.version,
                    ":c": published.job_created_at,
                    ":k": list(published.result_keys),
                }
            )
        expression = (
            "SET " + ", ".join(sets) + " " if sets else ""
        ) + "REMOVE holder, lease_token, lease_until"
        try:
            self._table.update_item(
                Key={"pk": lease.pk},
                UpdateExpression=expression,
                ConditionExpression="holder = :h AND lease_token = :t",
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if _conditional(exc):
                return False
            raise
        return True


def _published(item: dict[str, Any]) -> Published | None:
    job_id = item.get("published_job_id")
    if not job_id:
        return None
    return Published(
        job_id=str(job_id),
        run_id=str(item.get("published_run_id", "")),
        version=str(item.get("published_version", "")),
        job_created_at=str(item.get("published_job_created_at", "")),
        result_keys=tuple(str(k) for k in item.get("published_keys", [])),
    )


@dataclass(frozen=True)
class ContentRecord:
    """What the ledger knows of one content and colour."""

    done_job_id: str | None
    done_keys: tuple[str, ...]
    holder: str | None  # "<job id>#<attempt>" while someone holds the content lease
    holder_until: int  # epoch milliseconds


def holder_of(job_id: str, attempt: int) -> str:
    return f"{job_id}#{attempt}"


def parse_holder(holder: str) -> tuple[str, int]:
    """The job id and attempt of a ``holder`` (or waiter) value."""
    job_id, _, attempt = holder.rpartition("#")
    return (job_id, int(attempt)) if job_id and attempt.isdigit() else (holder, 1)


class ContentLedger:
    def __init__(self, table: Table, *, clock: Clock) -> None:
        self._table = table
        self._clock = clock

    @staticmethod
    def key_for(digest: str, colour_tag: str) -> str:
        return f"content#{digest}#{colour_tag}"

    def get(self, digest: str, colour_tag: str) -> ContentRecord:
        item = self._table.get_item(Key={"pk": self.key_for(digest, colour_tag)}, ConsistentRead=True).get(
            "Item"
        )
        return _content(item or {})

    def hold(self, digest: str, colour_tag: str, holder: str, until: float) -> ContentRecord | None:
        """Take the content lease for ``holder`` (until ``until``, epoch seconds): None if taken,
        else the record as it was found. A holder that asks again keeps it; an expired lease is
        free."""
        try:
            resp = self._table.update_item(
                Key={"pk": self.key_for(digest, colour_tag)},
                UpdateExpression="SET holder = :h, holder_until = :u DELETE waiting :me",
                ConditionExpression="attribute_not_exists(holder) OR holder = :h OR holder_until < :now",
                ExpressionAttributeValues={
                    ":h": holder,
                    ":u": _ms(until),
                    ":now": _ms(self._clock()),
                    ":me": {holder},
                },
                ReturnValues="ALL_OLD",
            )
        except ClientError as exc:
            if _conditional(exc):
                return None
            raise
        return _content(resp.get("Attributes", {}))

    def wait(self, digest: str, colour_tag: str, waiter: str) -> str | None:
        """Add ``waiter`` (job id and attempt, named as a holder is) to the waiters of a live lease:
        the holder, or None if the lease is free (or expired) by now, so the caller must not wait."""
        try:
            resp = self._table.update_item(
                Key={"pk": self.key_for(digest, colour_tag)},
                UpdateExpression="ADD waiting :me",
                ConditionExpression="attribute_exists(holder) AND holder_until >= :now",
                ExpressionAttributeValues={":me": {waiter}, ":now": _ms(self._clock())},
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _conditional(exc):
                return None
            raise
        return str(resp["Attributes"]["holder"])

    def release(self, digest: str, colour_tag: str, holder: str) -> list[str] | None:
        """Give the lease up if ``holder`` still has it: the waiters (``<job id>#<attempt>``, to be
        woken), or None when it held nothing."""
        try:
            resp = self._table.update_item(
                Key={"pk": self.key_for(digest, colour_tag)},
                UpdateExpression="REMOVE holder, holder_until, waiting",
                ConditionExpression="holder = :h",
                ExpressionAttributeValues={":h": holder},
                ReturnValues="ALL_OLD",
            )
        except ClientError as exc:
            if _conditional(exc):
                return None
            raise
        waiting: Any = resp.get("Attributes", {}).get("waiting", set())
        return sorted(str(w) for w in waiting)

    def record_done(self, digest: str, colour_tag: str, job_id: str, keys: list[str]) -> None:
        """Remember the latest job that succeeded for this content and colour."""
        self._table.update_item(
            Key={"pk": self.key_for(digest, colour_tag)},
            UpdateExpression="SET done_job_id = :j, done_keys = :k, done_at = :t",
            ExpressionAttributeValues={":j": job_id, ":k": keys, ":t": _ms(self._clock())},
        )

    def forget_done(self, digest: str, colour_tag: str, job_id: str) -> None:
        """Forget a done record whose result is gone, unless a newer one replaced it meanwhile."""
        try:
            self._table.update_item(
                Key={"pk": self.key_for(digest, colour_tag)},
                UpdateExpression="REMOVE done_job_id, done_keys, done_at",
                ConditionExpression="done_job_id = :j",
                ExpressionAttributeValues={":j": job_id},
            )
        except ClientError as exc:
            if not _conditional(exc):
                raise


def _content(item: Mapping[str, Any]) -> ContentRecord:
    done = item.get("done_job_id")
    holder = item.get("holder")
    return ContentRecord(
        done_job_id=str(done) if done else None,
        done_keys=tuple(str(k) for k in item.get("done_keys", [])),
        holder=str(holder) if holder else None,
        holder_until=int(item.get("holder_until", 0)),
    )


def budget_day(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%d")


class RunBudget:
    """Runs reserved per UTC day against ``daily`` (0: unlimited, still counted)."""

    def __init__(self, table: Table, *, daily: int, clock: Clock) -> None:
        self._table = table
        self._clock = clock
        self.daily = daily

    @staticmethod
    def key_for(day: str) -> str:
        return f"budget#{day}"

    def today(self) -> str:
        return budget_day(self._clock())

    def reserve(self) -> tuple[str, int] | None:
        """Reserve one run today: (the day, runs reserved that day so far), or None if today's
        budget is spent."""
        day = self.today()
        kwargs: dict[str, Any] = {
            "Key": {"pk": self.key_for(day)},
            "UpdateExpression": "ADD reserved :one",
            "ExpressionAttributeValues": {":one": 1},
            "ReturnValues": "UPDATED_NEW",
        }
        if self.daily > 0:
            kwargs["ConditionExpression"] = "attribute_not_exists(reserved) OR reserved < :budget"
            kwargs["ExpressionAttributeValues"][":budget"] = self.daily
        try:
            answer = self._table.update_item(**kwargs)
        except ClientError as exc:
            if _conditional(exc):
                return None
            raise
        return day, int(answer["Attributes"]["reserved"])  # type: ignore[arg-type]

    def release(self, day: str) -> None:
        """Give back a reservation no run was created for."""
        try:
            self._table.update_item(
                Key={"pk": self.key_for(day)},
                UpdateExpression="ADD reserved :minus",
                ConditionExpression="reserved > :zero",
                ExpressionAttributeValues={":minus": -1, ":zero": 0},
            )
        except ClientError as exc:
            if not _conditional(exc):
                raise

    def reserved(self, day: str | None = None) -> int:
        item = self._table.get_item(Key={"pk": self.key_for(day or self.today())}, ConsistentRead=True).get(
            "Item"
        )
        return int(item.get("reserved", 0)) if item else 0  # type: ignore[arg-type]

    def remaining(self) -> int | None:
        """Runs left today; None when the budget is unlimited."""
        if self.daily <= 0:
            return None
        return max(0, self.daily - self.reserved())
