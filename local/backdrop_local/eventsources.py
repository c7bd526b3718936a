"""Local event sources, delivering the way Lambda does in AWS.

- ``SqsEventSource``: the SQS event source mapping. Pollers (at most ``MaximumConcurrency``)
  receive batches, invoke the function with the SQS event shape, delete what succeeded and leave
  the ``batchItemFailures`` (or the whole batch, if the invocation failed) to reappear after the
  visibility timeout; the queue's own redrive policy moves a message to the DLQ after
  ``maxReceiveCount`` receives.
- ``Schedule``: a rate schedule invoking a function with an EventBridge scheduled event.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from backdrop_local.lambdas import InvokeResult

Invoker = Callable[[Any], InvokeResult]


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    records = []
    for message in messages:
        body = message["Body"]
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": body,
                "attributes": message.get("Attributes", {}),
                "messageAttributes": message.get("MessageAttributes", {}),
                "md5OfBody": message.get("MD5OfBody")
                or hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


class SqsEventSource:
    def __init__(
        self,
        sqs: Any,
        *,
        queue_url: str,
        queue_arn: str,
        region: str,
        invoke: Invoker,
        batch_size: int,
        max_concurrency: int,
        wait_seconds: int = 1,
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._queue_arn = queue_arn
        self._region = region
        self._invoke = invoke
        self._batch_size = min(batch_size, 10)
        self._wait = wait_seconds
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._poll, name=f"sqs-poller-{i}", daemon=True)
            for i in range(max_concurrency)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._wait + 70)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self._sqs.receive_message(
                    QueueUrl=self._queue_url,
                    MaxNumberOfMessages=self._batch_size,
                    WaitTimeSeconds=self._wait,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                ).get("Messages", [])
            except Exception:  # the local AWS going away at shutdown
                if self._stop.wait(0.5):
                    return
                continue
            if not messages:
                continue
            result = self._invoke(sqs_event(messages, self._queue_arn, self._region))
            if not result.ok:
                continue  # every message becomes visible again after the visibility timeout
            failed = {
                item.get("itemIdentifier")
                for item in (result.payload or {}).get("batchItemFailures", [])
                if isinstance(item, dict)
            }
            done = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(messages)
                if m["MessageId"] not in failed
            ]
            if done:
                self._sqs.delete_message_batch(QueueUrl=self._queue_url, Entries=done)


class Schedule:
    def __init__(self, invoke: Invoker, *, every_seconds: float, region: str, rule_name: str) -> None:
        self._invoke = invoke
        self._every = every_seconds
        self._region = region
        self._rule = rule_name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"schedule-{rule_name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=330)

    def fire(self) -> InvokeResult:
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": self._region,
            "resources": [f"arn:aws:events:{self._region}:123456789012:rule/{self._rule}"],
            "detail": {},
        }
        return self._invoke(event)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.fire()
