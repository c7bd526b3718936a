"""Completion events on EventBridge: one per job attempt that ends, tied to the transition that
won, never lost when the publish fails, never sent twice by racing republishers. EventBridge is
moto's (over HTTP), with a rule that routes the stack's events to a queue the test reads."""

from __future__ import annotations

import json
import time
from typing import Any

from backdrop.callbacks import handle_callback
from backdrop.events import SCHEMA_VERSION, announce
from backdrop.jobs import Status
from backdrop.outcomes import Outcome
from backdrop.reconciliation import reconcile
from backdrop.signatures import sign
from backdrop.submission import submit_upload
from backdrop.uploads import UploadRef
from tests.support.images import solid
from tests.unit.world import World, metric_total


def upload(world: World, key: str, body: bytes | None = None) -> UploadRef:
    answer = world.put_upload(key, solid(colour=(1, 2, 3)) if body is None else body)
    return UploadRef(world.resources.uploads_bucket, key, answer["VersionId"], answer["ETag"], None)


def failed_callback(world: World, job_id: str, run_id: str) -> int:
    body = json.dumps(
        {
            "event": "run.failed",
            "run_id": run_id,
            "status": "failed",
            "output": {"error": {"code": "INPUT_UNREADABLE", "message": "bad bytes"}},
            "metadata": {"job_id": job_id, "attempt": "1"},
        }
    ).encode()
    return handle_callback(body, sign(body, "whsec_current"), world.services).status_code


def test_rejected_upload_publishes_one_event_with_the_documented_detail(world: World) -> None:
    result = submit_upload(upload(world, "uploads/empty.jpg", b""), world.services)
    assert result.outcome is Outcome.REJECTED
    (event,) = world.events()
    assert event["source"] == "backdrop" and event["detail-type"] == "Job Rejected"
    detail: dict[str, Any] = event["detail"]
    item = world.item(str(result.job_id))
    assert detail == {
        "schema_version": SCHEMA_VERSION,
        "event_id": f"{result.job_id}:1",
        "job_id": result.job_id,
        "attempt": 1,
        "status": "rejected",
        "source": {
            "bucket": world.resources.uploads_bucket,
            "key": "uploads/empty.jpg",
            "version_id": item["source_version_id"],
            "etag": item["source_etag"],
        },
        "result": None,
        "color": "255,255,255",
        "color_source": "default",
        "run_id": None,
        "error": {"code": "EMPTY_OBJECT", "message": "the uploaded object is empty (0 bytes)"},
        "superseded_by": None,
        "reused": False,
        "reused_from": None,
        "renditions": None,
        "quality": None,
        "review": None,
        "created_at": item["created_at"],
        "completed_at": item["completed_at"],
        "duration_ms": 0,
    }
    assert "event_shard" not in item and item["event_published_at"]
    assert metric_total("EventsPublished") == 1


def test_duplicate_callbacks_publish_once(world: World) -> None:
    result = submit_upload(upload(world, "uploads/a.jpg"), world.services)
    assert result.job_id and result.run_id
    for _ in range(3):
        assert failed_callback(world, result.job_id, result.run_id) == 200
    events = world.events()
    assert [e["detail-type"] for e in events] == ["Job Failed"]
    assert events[0]["detail"]["error"] == {"code": "INPUT_UNREADABLE", "message": "bad bytes"}


def test_event_lost_to_an_eventbridge_outage_is_republished_once(world: World) -> None:
    result = submit_upload(upload(world, "uploads/b.jpg"), world.services)
    assert result.job_id and result.run_id
    working = world.services.settings
    world.services.settings = type(working)(**{**working.__dict__, "event_bus": "no-such-bus"})
    failed_callback(world, result.job_id, result.run_id)
    assert world.events() == [] and world.item(result.job_id)["event_shard"] == "pending"
    assert metric_total("EventsDeferred") == 1
    world.services.settings = working  # EventBridge is back
    world.clock.advance(30)
    reconcile(world.services, deadline=time.monotonic() + 30)
    assert world.events() == []  # too fresh: its own publisher may still be at it
    world.clock.advance(60)
    assert reconcile(world.services, deadline=time.monotonic() + 30).as_dict()["events_republished"] == 1
    assert [e["detail"]["job_id"] for e in world.events()] == [result.job_id]
    world.clock.advance(600)
    assert "events_republished" not in reconcile(world.services, deadline=time.monotonic() + 30).as_dict()
    assert world.events() == []


def test_two_republishers_send_one_event(world: World) -> None:
    result = submit_upload(upload(world, "uploads/c.jpg", b""), world.services)
    job_id = str(result.job_id)
    job = world.job(job_id)
    world.ddb.update_item(  # as if its publish had failed
        TableName=world.resources.jobs_table,
        Key={"job_id": {"S": job_id}},
        UpdateExpression="SET event_shard = :p REMOVE event_published_at",
        ExpressionAttributeValues={":p": {"S": "pending"}},
    )
    world.events()
    claims = [world.store.claim_announcement(job_id, job.attempt) for _ in range(2)]
    assert claims == [True, False]
    assert announce(world.services, world.job(job_id))
    assert len(world.events()) == 1


def test_superseded_and_succeeded_have_their_own_detail_types(world: World) -> None:
    old = upload(world, "uploads/d.jpg")
    upload(world, "uploads/d.jpg")
    assert submit_upload(old, world.services).outcome is Outcome.SUPERSEDED
    (event,) = world.events()
    assert event["detail-type"] == "Job Superseded" and event["detail"]["superseded_by"]


def test_retry_waits_for_the_previous_attempts_event(world: World) -> None:
    result = submit_upload(upload(world, "uploads/e.jpg"), world.services)
    assert result.job_id and result.run_id
    failed_callback(world, result.job_id, result.run_id)
    world.ddb.update_item(
        TableName=world.resources.jobs_table,
        Key={"job_id": {"S": result.job_id}},
        UpdateExpression="SET event_shard = :p",
        ExpressionAttributeValues={":p": {"S": "pending"}},
    )
    assert not world.store.begin_retry(world.job(result.job_id)).moved
    assert world.store.mark_announced(result.job_id, 1)
    assert world.store.begin_retry(world.job(result.job_id)).moved
    assert world.job(result.job_id).status is Status.RECEIVED
