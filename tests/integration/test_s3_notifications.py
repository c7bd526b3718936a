"""The local stack's S3 notifications carry what S3's carry and moto's do not: the version S3
stored (``versionId``, on the versioned uploads bucket) and a ``sequencer`` that grows per key."""

from __future__ import annotations

import json
from typing import Any

from backdrop_local.aws import Resources, client


def notifications(resources: Resources, count: int) -> list[dict[str, Any]]:
    """The next ``count`` object records on the uploads queue (S3's test event left out)."""
    sqs = client("sqs", resources.endpoint_url, resources.region)
    records: list[dict[str, Any]] = []
    for _ in range(20):  # bounded: the messages are on the queue before put_object returns
        answer = sqs.receive_message(QueueUrl=resources.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in answer.get("Messages", []):
            records.extend(json.loads(message["Body"]).get("Records", []))
            sqs.delete_message(QueueUrl=resources.queue_url, ReceiptHandle=message["ReceiptHandle"])
        if len(records) >= count:
            break
    return records


def padded(sequencer: str, width: int) -> str:
    """How S3 says to compare sequencers: right-padded with zeros to the same length."""
    return sequencer.ljust(width, "0")


def test_notifications_name_the_stored_version_and_a_growing_sequencer(resources: Resources) -> None:
    s3 = client("s3", resources.endpoint_url, resources.region)
    key = f"{resources.upload_prefix}versions/same.jpg"
    body = b"\xff\xd8\xff\xe0 the same bytes twice"
    puts = [s3.put_object(Bucket=resources.uploads_bucket, Key=key, Body=body) for _ in range(3)]
    assert len({p["ETag"] for p in puts}) == 1  # identical re-uploads: one ETag...
    records = notifications(resources, 3)
    objects = [r["s3"]["object"] for r in records]
    # ...but each a new version, and each notification names its own.
    assert [o["versionId"] for o in objects] == [p["VersionId"] for p in puts]
    assert len({o["versionId"] for o in objects}) == 3
    sequencers = [o["sequencer"] for o in objects]
    assert all(len(s) == 18 and int(s, 16) > 0 and s == s.upper() for s in sequencers)
    width = max(len(s) for s in sequencers)
    assert [padded(s, width) for s in sequencers] == sorted({padded(s, width) for s in sequencers})
    assert all(o["eTag"] == puts[0]["ETag"].strip('"') for o in objects)
