"""Messages to the uploads queue, sent so that no message goes twice in one invocation.

``send_message_batch`` is sent without botocore's automatic retries: a batch SQS answered (with
success or an error) is settled entry by entry, and only entries SQS did not take are sent again;
a batch whose answer was lost (a read timeout, a reset connection) is never resent, its entries
are reported as unknown (a later run computes from the jobs table what is still missing). Between
two batches the sender checks the stop flag (Ctrl-C), so it always finishes the batch in flight.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError

from backdrop_cli.inventory import Entry

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchResultTypeDef

BATCH = 10  # SQS's most entries per SendMessageBatch
MAX_TRIES = 6
# Whole-batch errors after which SQS took nothing, so the batch may be sent again.
_REFUSED_CODES = {
    "ThrottlingException",
    "RequestThrottled",
    "Throttling",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KmsThrottled",
}


def object_created(entry: Entry, region: str) -> str:
    """An S3 object-created notification for one object version, as S3 writes it (key URL-encoded,
    ETag without quotes), with Backdrop's own ``backdrop.color`` field when a colour is requested."""
    obj: dict[str, Any] = {"key": quote_plus(entry.key, safe="/"), "size": entry.size or 0}
    if entry.etag:
        obj["eTag"] = entry.etag
    if entry.version_id:
        obj["versionId"] = entry.version_id
    record: dict[str, Any] = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "backdrop-backfill",
            "bucket": {"name": entry.bucket, "arn": f"arn:aws:s3:::{entry.bucket}"},
            "object": obj,
        },
    }
    if entry.requested_color:
        record["backdrop"] = {"color": entry.requested_color}
    return json.dumps({"Records": [record]}, separators=(",", ":"), ensure_ascii=False)


class StopFlag:
    """Ctrl-C asks to stop at the next safe point instead of raising wherever the program is; a
    second Ctrl-C stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: Any = None

    @property
    def stopped(self) -> bool:
        return self.event.is_set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) when stopping was asked for."""
        return self.event.wait(seconds)


@dataclass
class SendReport:
    sent: list[str] = field(default_factory=list)  # ids SQS took
    unknown: list[str] = field(default_factory=list)  # the answer was lost: maybe taken, never resent
    refused: dict[str, str] = field(default_factory=dict)  # id → why SQS would not take it
    stopped: bool = False  # Ctrl-C: the rest was not sent

    def merge(self, other: SendReport) -> None:
        self.sent += other.sent
        self.unknown += other.unknown
        self.refused.update(other.refused)
        self.stopped = self.stopped or other.stopped


class Sender:
    def __init__(
        self,
        sqs: SQSClient,
        queue_url: str,
        *,
        stop: StopFlag,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._stop = stop
        self._sleep = sleep
        self._done: set[str] = set()  # every id sent (or maybe sent) by this sender

    def send(
        self, messages: Sequence[tuple[str, str]], on_batch: Callable[[SendReport], None] | None = None
    ) -> SendReport:
        """Send ``(id, body)`` pairs in batches of ten; ids are unique per invocation."""
        report = SendReport()
        for start in range(0, len(messages), BATCH):
            if self._stop.stopped:
                report.stopped = True
                break
            batch = self.send_batch(messages[start : start + BATCH])
            report.merge(batch)
            if on_batch:
                on_batch(batch)
        return report

    def send_batch(self, messages: Sequence[tuple[str, str]]) -> SendReport:
        report = SendReport()
        pending = {}
        for message_id, body in messages:
            if message_id in self._done:
                raise ValueError(f"{message_id} was already sent in this invocation")
            pending[message_id] = body
        delay = 0.2
        for attempt in range(1, MAX_TRIES + 1):
            pending, problem = self._attempt(pending, report)
            if not pending:
                return report
            if attempt == MAX_TRIES:
                report.refused.update(dict.fromkeys(pending, f"{problem} (after {MAX_TRIES} tries)"))
                return report
            self._sleep(delay * (1 + random.random() / 2))
            delay = min(delay * 2, 5.0)
        return report

    def _attempt(self, pending: dict[str, str], report: SendReport) -> tuple[dict[str, str], str]:
        """One SendMessageBatch of ``pending``, settled into ``report``: what may be sent again
        (SQS took none of it), and why it was not taken."""
        order = list(pending)
        entries = [{"Id": str(i), "MessageBody": pending[mid]} for i, mid in enumerate(order)]
        try:
            answer = self._sqs.send_message_batch(QueueUrl=self._url, Entries=entries)  # type: ignore[arg-type]
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            return pending, f"cannot reach SQS: {exc}"  # never connected: nothing was taken
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            problem = f"SQS refused the batch: {code}: {exc}"
            if code in _REFUSED_CODES:
                return pending, problem
            report.refused.update(dict.fromkeys(order, problem))
            return {}, problem
        except BotoCoreError:  # the answer was lost after sending: maybe taken, never resent
            report.unknown += order
            self._done.update(order)
            return {}, "the answer was lost"
        return self._settle(answer, order, pending, report), "SQS did not take every entry"

    def _settle(
        self,
        answer: SendMessageBatchResultTypeDef,
        order: list[str],
        pending: dict[str, str],
        report: SendReport,
    ) -> dict[str, str]:
        """SQS's answer entry by entry: taken, refused (the sender's fault), or to send again."""
        taken = [order[int(e["Id"])] for e in answer.get("Successful", [])]
        report.sent += taken
        self._done.update(taken)
        again: dict[str, str] = {}
        for failure in answer.get("Failed", []):
            message_id = order[int(failure["Id"])]
            why = f"{failure.get('Code', '')}: {failure.get('Message', '')}".strip(": ")
            if failure.get("SenderFault"):
                report.refused[message_id] = why
            else:
                again[message_id] = pending[message_id]
        return again
