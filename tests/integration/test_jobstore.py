"""The jobs table's conditional writes, against moto's DynamoDB over HTTP."""

from __future__ import annotations

import threading

import boto3
import pytest

from backdrop.jobs import Job, Status, now_iso
from backdrop.jobstore import JobStore, TransitionRefused
from backdrop_local.aws import Resources


def _job(job_id: str, created_at: str | None = None) -> Job:
    now = created_at or now_iso()
    return Job(
        job_id=job_id,
        status=Status.RECEIVED,
        source_bucket="uploads",
        source_key="uploads/a.jpg",
        source_version="v:1",
        color="255,255,255",
        created_at=now,
        updated_at=now,
    )


@pytest.fixture
def store(resources: Resources) -> JobStore:
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(resources.jobs_table)
    return JobStore(table, retention_days=7)


def test_claim_is_once_only_even_when_concurrent(store: JobStore) -> None:
    results: list[bool] = []

    def claim() -> None:
        results.append(store.claim(_job("job-1"))[1])

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert store.get("job-1") is not None


def test_transitions_only_move_forward(store: JobStore) -> None:
    store.claim(_job("job-2"))
    job = store.transition("job-2", Status.SUBMITTED, changes={"run_id": "run-2"})
    assert job.status is Status.SUBMITTED and job.run_id == "run-2"
    with pytest.raises(TransitionRefused) as refused:
        store.transition("job-2", Status.REJECTED)
    assert refused.value.current is not None and refused.value.current.status is Status.SUBMITTED
    store.transition("job-2", Status.COPYING)
    done = store.transition("job-2", Status.SUCCEEDED, changes={"result_keys": ["results/a.png"]})
    assert done.completed_at and done.result_keys == ["results/a.png"]
    for target in (Status.FAILED, Status.COPYING, Status.SUBMITTED, Status.TIMED_OUT):
        with pytest.raises(TransitionRefused):
            store.transition("job-2", target)
    assert store.get("job-2").status is Status.SUCCEEDED  # type: ignore[union-attr]


def test_missing_job_cannot_be_moved(store: JobStore) -> None:
    with pytest.raises(TransitionRefused) as refused:
        store.transition("nope", Status.SUBMITTED)
    assert refused.value.current is None


def test_terminal_jobs_leave_the_open_index_and_get_a_ttl(store: JobStore, resources: Resources) -> None:
    store.claim(_job("old-open", "2026-01-01T00:00:00.000Z"))
    store.claim(_job("old-done", "2026-01-01T00:00:01.000Z"))
    store.claim(_job("new-open", "2026-06-01T00:00:00.000Z"))
    store.transition(
        "old-done", Status.REJECTED, changes={"error_code": "EMPTY_OBJECT", "error_message": "x"}
    )
    open_ids = [j.job_id for j in store.open_jobs(created_before="2026-03-01T00:00:00.000Z", limit=10)]
    assert open_ids == ["old-open"]
    raw = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=resources.jobs_table, Key={"job_id": {"S": "old-done"}}
    )["Item"]
    assert "open_shard" not in raw and int(raw["expires_at"]["N"]) > 0


def test_find_by_run_id_and_record_error(store: JobStore) -> None:
    store.claim(_job("job-3"))
    store.transition("job-3", Status.SUBMITTED, changes={"run_id": "run-3"})
    found = store.find_by_run_id("run-3")
    assert found is not None and found.job_id == "job-3"
    assert store.find_by_run_id("unknown") is None
    assert store.record_error("job-3", Status.SUBMITTED, "COPY_FAILED", "timeout")
    assert not store.record_error("job-3", Status.COPYING, "COPY_FAILED", "timeout")
    job = store.get("job-3")
    assert job is not None and job.error_code == "COPY_FAILED" and job.attempts == 1
