"""Work queues: the messages one function leaves for another (SQS in AWS, the same API locally)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


@dataclass(frozen=True)
class CopyRequest:
    """Ask the copy worker to finish a job whose run reported a terminal state."""

    job_id: str
    run_id: str

    def body(self) -> str:
        return json.dumps({"job_id": self.job_id, "run_id": self.run_id}, separators=(",", ":"))

    @classmethod
    def parse(cls, body: str) -> CopyRequest:
        """Raises ValueError for anything that is not a copy request."""
        data: Any = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("job_id"), str) or not data["job_id"]:
            raise ValueError("a copy request needs a job_id")
        run_id = data.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            raise ValueError("a copy request needs a run_id")
        return cls(data["job_id"], run_id)


class WorkQueue:
    def __init__(self, sqs: SQSClient, url: str) -> None:
        self._sqs = sqs
        self._url = url

    def send(self, body: str) -> None:
        self._sqs.send_message(QueueUrl=self._url, MessageBody=body)
