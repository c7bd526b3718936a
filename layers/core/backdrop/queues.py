"""Work queues: the messages one function leaves for another (SQS in AWS, the same API locally)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


@dataclass(frozen=True)
class CopyRequest:
    """Ask the copy worker to finish a job whose run reported a terminal state, or (``reused_from``
    set, no run) to copy an earlier job's result for it."""

    job_id: str
    run_id: str
    reused_from: str | None = None

    def body(self) -> str:
        data = {"job_id": self.job_id, "run_id": self.run_id}
        if self.reused_from:
            data["reused_from"] = self.reused_from
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def parse(cls, body: str) -> CopyRequest:
        """Raises ValueError for anything that is not a copy request."""
        data: Any = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("job_id"), str) or not data["job_id"]:
            raise ValueError("a copy request needs a job_id")
        reused_from = data.get("reused_from")
        if reused_from is not None and (not isinstance(reused_from, str) or not reused_from):
            raise ValueError("reused_from names a job")
        run_id = data.get("run_id")
        if not isinstance(run_id, str) or not (run_id or reused_from):
            raise ValueError("a copy request needs a run_id")
        return cls(data["job_id"], run_id, reused_from)


@dataclass(frozen=True)
class RenderRequest:
    """Ask the copy worker to make a succeeded job's renditions again from its stored result, with
    no run: the ones named, or (None) every configured one. Sent on the copy queue by the operator
    command's ``render``; the body is ``{"render": "<job_id>", "renditions": ["name", ...] | null}``."""

    job_id: str
    renditions: tuple[str, ...] | None = None

    def body(self) -> str:
        names = list(self.renditions) if self.renditions is not None else None
        return json.dumps({"render": self.job_id, "renditions": names}, separators=(",", ":"))

    @classmethod
    def parse(cls, body: str) -> RenderRequest | None:
        """The request if ``body`` is one, None if it is not a render request (a copy request);
        raises ValueError for a malformed one."""
        try:
            data: Any = json.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict) or "render" not in data:
            return None
        job_id, names = data["render"], data.get("renditions")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("a render request names a job")
        if names is not None and (
            not isinstance(names, list) or not all(isinstance(n, str) and n for n in names)
        ):
            raise ValueError("renditions is a list of rendition names, or null for all")
        return cls(job_id, tuple(names) if names is not None else None)


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


@dataclass(frozen=True)
class ReviewRequest:
    """A person's decision on a job held for review (``needs_review``): approve publishes what was
    held, reject ends the job ``rejected`` with the note. Sent on the copy queue by the operator
    command's ``review``; the body is
    ``{"review": "<job_id>", "decision": "approve"|"reject", "note": str|null, "reviewer": str}``."""

    job_id: str
    decision: Decision
    reviewer: str
    note: str | None = None

    def body(self) -> str:
        data = {
            "review": self.job_id,
            "decision": self.decision.value,
            "note": self.note,
            "reviewer": self.reviewer,
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def parse(cls, body: str) -> ReviewRequest | None:
        """The request if ``body`` is one, None if it is not a review request; raises ValueError for
        a malformed one."""
        try:
            data: Any = json.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict) or "review" not in data:
            return None
        job_id, decision, note, reviewer = (data.get(k) for k in ("review", "decision", "note", "reviewer"))
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("a review request names a job")
        if decision not in {d.value for d in Decision}:
            raise ValueError("a review decision is approve or reject")
        if note is not None and not isinstance(note, str):
            raise ValueError("a review note is text or null")
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise ValueError("a review request names its reviewer")
        return cls(job_id, Decision(decision), reviewer.strip(), note)


@dataclass(frozen=True)
class JobMessage:
    """Ask the submit function to create the run of an open job (a retry, a held job resumed).
    Sent on the uploads queue beside S3's notifications; ``sent_at`` makes each request distinct."""

    job_id: str
    attempt: int
    sent_at: str
    kind: str = "submit_job"

    def body(self) -> str:
        return json.dumps(
            {"backdrop": self.kind, "job_id": self.job_id, "attempt": self.attempt, "sent_at": self.sent_at},
            separators=(",", ":"),
        )

    @classmethod
    def parse(cls, data: Any) -> JobMessage | None:
        """The message if ``data`` (a decoded body) is one, else None (an S3 notification)."""
        if not isinstance(data, dict) or data.get("backdrop") != "submit_job":
            return None
        job_id, attempt = data.get("job_id"), data.get("attempt")
        if not isinstance(job_id, str) or not job_id or not isinstance(attempt, int):
            raise ValueError("a submit_job message needs a job_id and an attempt")
        return cls(job_id, attempt, str(data.get("sent_at", "")))


class WorkQueue:
    def __init__(self, sqs: SQSClient, url: str) -> None:
        self._sqs = sqs
        self._url = url

    def send(self, body: str) -> None:
        self._sqs.send_message(QueueUrl=self._url, MessageBody=body)

    def waiting(self) -> int:
        """Messages waiting to be received (SQS's approximate count: in flight ones not included)."""
        answer = self._sqs.get_queue_attributes(
            QueueUrl=self._url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(answer.get("Attributes", {}).get("ApproximateNumberOfMessages", "0"))

    def send_many(self, bodies: list[str]) -> list[str]:
        """Send in batches of ten; returns the bodies SQS did not take."""
        refused: list[str] = []
        for start in range(0, len(bodies), 10):
            chunk = bodies[start : start + 10]
            answer = self._sqs.send_message_batch(
                QueueUrl=self._url, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(chunk)]
            )
            refused += [chunk[int(f["Id"])] for f in answer.get("Failed", [])]
        return refused
