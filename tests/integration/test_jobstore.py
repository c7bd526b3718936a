"""The jobs table's conditional writes, against the real JobStore on a moto server over HTTP.

The expected rules are written out here, independently of the code's own transition table."""

from __future__ import annotations

import threading
from dataclasses import fields
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer

from backdrop.jobs import Job, Status, iso_from_epoch
from backdrop.jobstore import JobStore
from backdrop_local.aws import Resources

NOW = 1_780_000_000.0
RETENTION_DAYS = 7
R, H, S, C = Status.RECEIVED, Status.HELD, Status.SUBMITTED, Status.COPYING
NR = Status.NEEDS_REVIEW
ALLOWED = {
    (R, H), (H, H), (R, S), (H, S), (R, C), (S, C), (C, C), (C, Status.SUCCEEDED), (R, Status.REJECTED),
    (C, NR), (NR, Status.SUCCEEDED), (NR, Status.REJECTED),
    *((o, t) for o in (R, H, S, C, NR)
      for t in (Status.FAILED, Status.CANCELED, Status.TIMED_OUT, Status.SUPERSEDED)),
}  # fmt: skip
TARGETS = [s for s in Status if s is not Status.RECEIVED]  # nothing moves to received but a retry


def _job(job_id: str, status: Status = Status.RECEIVED, created_at: str | None = None, **extra: Any) -> Job:
    now = created_at or iso_from_epoch(NOW)
    return Job(
        job_id=job_id,
        status=status,
        source_bucket="uploads",
        source_key=extra.pop("source_key", "uploads/a.jpg"),
        color="255,255,255",
        created_at=now,
        updated_at=now,
        **extra,
    )


@pytest.fixture
def store(resources: Resources) -> JobStore:
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(resources.jobs_table)
    return JobStore(table, retention_days=RETENTION_DAYS, clock=lambda: NOW)


def raw_item(resources: Resources, job_id: str) -> dict[str, Any]:
    item = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=resources.jobs_table, Key={"job_id": {"S": job_id}}
    )["Item"]
    return {k: TypeDeserializer().deserialize(v) for k, v in item.items()}


# --- claim ---------------------------------------------------------------------------------------


def test_claim_creates_once_and_returns_what_is_stored(store: JobStore) -> None:
    job, created = store.claim(_job("job-1", color_source="default"))
    assert created and job.job_id == "job-1"
    again, created_again = store.claim(_job("job-1", source_key="uploads/other.jpg"))
    assert not created_again
    assert again.source_key == "uploads/a.jpg" and again.color_source == "default"  # the stored one


def test_claim_is_once_only_even_when_concurrent(store: JobStore) -> None:
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.claim(_job("job-c"))[1])) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1 and store.get("job-c") is not None


def test_get_missing_job(store: JobStore) -> None:
    assert store.get("nope") is None


# --- transitions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("current", list(Status))
@pytest.mark.parametrize("target", TARGETS)
def test_every_transition_allowed_or_refused(store: JobStore, current: Status, target: Status) -> None:
    store.claim(_job("job-t", current))
    move = store.try_transition("job-t", target)
    assert move.moved == ((current, target) in ALLOWED)
    assert move.job is not None
    assert move.job.status is (target if move.moved else current)
    assert store.get("job-t").status is move.job.status  # type: ignore[union-attr]


def test_nothing_moves_to_received_by_a_transition(store: JobStore) -> None:
    store.claim(_job("job-r", Status.FAILED))
    with pytest.raises(ValueError, match="received"):
        store.try_transition("job-r", Status.RECEIVED)


def test_missing_job_cannot_be_moved(store: JobStore) -> None:
    move = store.try_transition("nope", Status.SUBMITTED)
    assert not move.moved and move.job is None


def test_changes_are_set_and_none_removes(store: JobStore, resources: Resources) -> None:
    store.claim(_job("job-2", error_code="RUNFLOW_UNAVAILABLE", error_message="503"))
    move = store.try_transition(
        "job-2", Status.SUBMITTED, changes={"run_id": "run-2", "error_code": None, "error_message": None}
    )
    assert move.moved and move.job and move.job.run_id == "run-2" and move.job.error_code is None
    item = raw_item(resources, "job-2")
    assert "error_code" not in item and "error_message" not in item
    assert item["updated_at"] == iso_from_epoch(NOW) and item["open_shard"] == "open"


def test_terminal_moves_leave_the_open_index_and_get_the_ttl(store: JobStore, resources: Resources) -> None:
    store.claim(_job("job-3"))
    store.try_transition(
        "job-3", Status.REJECTED, changes={"error_code": "EMPTY_OBJECT", "error_message": "x"}
    )
    item = raw_item(resources, "job-3")
    assert "open_shard" not in item
    assert item["expires_at"] == int(NOW) + RETENTION_DAYS * 86400
    assert item["completed_at"] == iso_from_epoch(NOW)


def test_only_if_guards_an_attribute(store: JobStore) -> None:
    store.claim(_job("job-4", create_pending_since="2026-01-01T00:00:00.000Z"))
    refused = store.try_transition(
        "job-4", Status.SUBMITTED, only_if={"create_pending_since": "2026-02-02T00:00:00.000Z"}
    )
    assert not refused.moved and refused.job and refused.job.status is Status.RECEIVED
    assert not store.try_transition("job-4", Status.SUBMITTED, only_if={"create_pending_since": None}).moved
    assert store.try_transition(
        "job-4", Status.SUBMITTED, only_if={"create_pending_since": "2026-01-01T00:00:00.000Z"}
    ).moved


def test_update_open_checks_the_status_and_guards(store: JobStore) -> None:
    store.claim(_job("job-5"))
    assert store.update_open(
        "job-5", Status.RECEIVED, {"create_pending_since": "t1"}, only_if={"create_pending_since": None}
    )
    # A second attempt that read the job before the first set its mark loses.
    assert not store.update_open(
        "job-5", Status.RECEIVED, {"create_pending_since": "t2"}, only_if={"create_pending_since": None}
    )
    assert store.get("job-5").create_pending_since == "t1"  # type: ignore[union-attr]
    assert not store.update_open("job-5", Status.SUBMITTED, {"run_status": "x"})
    assert store.update_open("job-5", Status.RECEIVED, {"create_pending_since": None})
    assert store.get("job-5").create_pending_since is None  # type: ignore[union-attr]


def test_record_error_counts_only_while_the_status_holds(store: JobStore) -> None:
    store.claim(_job("job-6", Status.SUBMITTED))
    assert store.record_error("job-6", Status.SUBMITTED, "RUNFLOW_UNAVAILABLE", "x" * 2000)
    assert store.record_error("job-6", Status.SUBMITTED, "RUNFLOW_UNAVAILABLE", "again")
    assert not store.record_error("job-6", Status.COPYING, "COPY_FAILED", "timeout")
    job = store.get("job-6")
    assert job and job.retryable_errors == 2 and job.error_message == "again"
    store.record_error("job-6", Status.SUBMITTED, "X", "y" * 2000)
    assert len(store.get("job-6").error_message or "") == 1000  # type: ignore[union-attr]


def test_find_by_run_id(store: JobStore) -> None:
    store.claim(_job("job-7"))
    store.try_transition("job-7", Status.SUBMITTED, changes={"run_id": "run-7"})
    found = store.find_by_run_id("run-7")
    assert found is not None and found.job_id == "job-7" and found.status is Status.SUBMITTED
    assert store.find_by_run_id("unknown") is None


# --- retries -------------------------------------------------------------------------------------


def test_retry_starts_a_numbered_attempt_keeping_the_history(store: JobStore, resources: Resources) -> None:
    store.claim(_job("job-8"))
    store.try_transition("job-8", Status.SUBMITTED, changes={"run_id": "run-a"})
    failed = store.try_transition(
        "job-8", Status.FAILED, changes={"error_code": "UNAUTHORIZED", "error_message": "bad key"}
    ).job
    assert failed is not None
    move = store.begin_retry(failed)
    assert move.moved and move.job
    assert (move.job.status, move.job.attempt, move.job.run_id, move.job.error_code) == (R, 2, None, None)
    assert move.job.history == [
        {
            "attempt": 1,
            "status": "failed",
            "run_id": "run-a",
            "error_code": "UNAUTHORIZED",
            "error_message": "bad key",
            "completed_at": iso_from_epoch(NOW),
        }
    ]
    item = raw_item(resources, "job-8")
    assert item["open_shard"] == "open" and "expires_at" not in item and "completed_at" not in item


def test_retry_clears_everything_of_the_finished_attempt(store: JobStore, resources: Resources) -> None:
    # Written out here: what belongs to one attempt, Runflow's request id for its run included.
    of_the_attempt = {
        "run_id": "run-x",
        "run_status": "failed",
        "output_urls": [{"url": "https://a.runflow.io/1.png"}],
        "result_bucket": "results",
        "result_keys": ["results/a/result.png"],
        "error_code": "RUN_FAILED",
        "error_message": "boom",
        "submitted_at": iso_from_epoch(NOW - 60),
        "runflow_duration_ms": 4200,
        "runflow_request_id": "req-x",
        "create_pending_since": iso_from_epoch(NOW - 61),
        "copy_requeued_at": iso_from_epoch(NOW - 30),
        "reserved_on": "2026-05-06",
        "superseded_by": "job-y",
        "event_published_at": iso_from_epoch(NOW - 1),
    }
    kept = {"source_version_id": "v1", "source_etag": "e1", "source_size": 10, "color_source": "default"}
    store.claim(_job("job-8b", Status.SUBMITTED, retryable_errors=3, **kept))
    raw_put = raw_item(resources, "job-8b") | of_the_attempt
    boto3.resource("dynamodb", region_name="us-east-1").Table(resources.jobs_table).put_item(Item=raw_put)
    failed = store.try_transition("job-8b", Status.FAILED).job
    assert failed is not None and failed.runflow_request_id == "req-x"
    assert store.begin_retry(failed).moved
    item = raw_item(resources, "job-8b")
    assert not set(of_the_attempt) & set(item)
    assert "expires_at" not in item and "completed_at" not in item
    assert item["retryable_errors"] == 0 and item["attempt"] == 2 and item["status"] == "received"
    assert {name: item[name] for name in kept} == kept


def test_every_attribute_the_store_writes_is_part_of_the_record(resources: Resources) -> None:
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(resources.jobs_table)
    store = JobStore(table, retention_days=RETENTION_DAYS, clock=lambda: NOW, announce=True)
    store.claim(_job("job-8c"))
    store.try_transition("job-8c", Status.SUBMITTED, changes={"run_id": "run-c"})
    store.record_error("job-8c", Status.SUBMITTED, "RUNFLOW_UNAVAILABLE", "503")
    store.try_transition("job-8c", Status.FAILED, changes={"error_code": "RUN_FAILED"})
    assert store.claim_announcement("job-8c", 1)
    claimed = raw_item(resources, "job-8c")
    assert store.mark_announced("job-8c", 1)
    published = raw_item(resources, "job-8c")
    record = {f.name for f in fields(Job)}
    assert {"event_shard", "event_claimed_at", "expires_at"} <= set(claimed) <= record
    assert "event_published_at" in published and set(published) <= record
    job = store.get("job-8c")
    assert job is not None and job.to_item() == published


def test_two_operators_retrying_the_same_job_start_one_attempt(store: JobStore) -> None:
    store.claim(_job("job-9", Status.TIMED_OUT))
    seen_by_both = store.get("job-9")  # both read attempt 1 before either retries
    assert seen_by_both is not None
    assert store.begin_retry(seen_by_both).moved
    second = store.begin_retry(seen_by_both)
    assert not second.moved and second.job and second.job.attempt == 2
    assert store.get("job-9").attempt == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [R, H, S, C, Status.SUCCEEDED, Status.SUPERSEDED])
def test_only_failed_canceled_and_timed_out_jobs_are_retried(store: JobStore, status: Status) -> None:
    store.claim(_job("job-10", status))
    assert not store.begin_retry(store.get("job-10")).moved  # type: ignore[arg-type]


def test_rejected_jobs_are_retried_only_on_request(store: JobStore) -> None:
    store.claim(_job("job-11", Status.REJECTED))
    job = store.get("job-11")
    assert job is not None
    assert not store.begin_retry(job).moved
    assert store.begin_retry(job, include_rejected=True).moved


# --- reading many --------------------------------------------------------------------------------


def test_open_jobs_page_oldest_first_before_a_time(store: JobStore) -> None:
    for i in range(130):  # more than one query page (100)
        store.claim(_job(f"open-{i:03d}", created_at=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}.000Z"))
    store.claim(_job("done", Status.FAILED, created_at="2026-01-01T00:00:00.500Z"))
    store.claim(_job("too-new", created_at="2026-06-01T00:00:00.000Z"))
    ids = [j.job_id for j in store.open_jobs(created_before="2026-03-01T00:00:00.000Z", limit=500)]
    assert ids == [f"open-{i:03d}" for i in range(130)]
    assert [j.job_id for j in store.open_jobs(created_before="2026-03-01T00:00:00.000Z", limit=3)] == [
        "open-000",
        "open-001",
        "open-002",
    ]


def test_held_jobs_never_crowd_the_open_jobs_out_and_are_listed_on_their_own(store: JobStore) -> None:
    # 150 held results, older than every other open job: more than a query page (100).
    for i in range(150):
        store.claim(_job(f"held-{i:03d}", NR, created_at=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}.000Z"))
    store.claim(_job("copying", C, created_at="2026-01-02T00:00:00.000Z"))
    store.claim(_job("received", created_at="2026-01-03T00:00:00.000Z"))
    before = "2026-03-01T00:00:00.000Z"
    assert [j.job_id for j in store.open_jobs(created_before=before, limit=2)] == ["copying", "received"]
    backlog = list(store.review_backlog())
    assert [j.job_id for j in backlog] == [f"held-{i:03d}" for i in range(150)]
    assert {j.status for j in backlog} == {NR}


def test_a_held_jobs_event_is_noted_once_and_its_held_time_kept(store: JobStore) -> None:
    store.claim(_job("held", NR, created_at="2026-01-01T00:00:00.000Z"))
    store.claim(_job("copying", C))
    assert store.mark_review_announced("held") and not store.mark_review_announced("held")
    assert not store.mark_review_announced("copying")  # only a held job's
    held = store.get("held")
    assert held is not None and held.event_published_at == iso_from_epoch(NOW)
    assert held.updated_at == "2026-01-01T00:00:00.000Z"  # the backlog's age counts from it


def test_jobs_of_one_object_newest_first(store: JobStore) -> None:
    store.claim(_job("v1", created_at="2026-01-01T00:00:00.000Z", source_key="uploads/x.jpg"))
    store.claim(_job("v2", created_at="2026-01-02T00:00:00.000Z", source_key="uploads/x.jpg"))
    store.claim(_job("other", created_at="2026-01-03T00:00:00.000Z", source_key="uploads/y.jpg"))
    assert [j.job_id for j in store.jobs_for_source("uploads", "uploads/x.jpg")] == ["v2", "v1"]
    assert store.jobs_for_source("another-bucket", "uploads/x.jpg") == []
