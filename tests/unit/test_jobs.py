"""The job state machine, the job record as stored in DynamoDB, and the timestamps jobs carry."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from backdrop import jobs
from backdrop.events import DETAIL_TYPES
from backdrop.jobs import (
    OPEN_SHARD,
    Job,
    JobChanges,
    Status,
    can_move,
    failure,
    format_iso,
    iso_from_epoch,
    parse_iso,
)
from backdrop.outcomes import ENDED, Outcome
from backdrop.runs import OutputRef

R, H, S, C = Status.RECEIVED, Status.HELD, Status.SUBMITTED, Status.COPYING
OK, FAILED, CANCELED, REJECTED = Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.REJECTED
TIMED_OUT, SUPERSEDED, REVIEW = Status.TIMED_OUT, Status.SUPERSEDED, Status.NEEDS_REVIEW

# The lifecycle as the README documents it, written out here rather than read from the code.
EXPECTED_MOVES = {
    (R, H), (H, H), (R, S), (H, S), (R, C), (S, C), (C, C), (C, OK), (R, REJECTED),
    (C, REVIEW), (REVIEW, OK), (REVIEW, REJECTED),
    *((o, t) for o in (R, H, S, C, REVIEW) for t in (FAILED, CANCELED, TIMED_OUT, SUPERSEDED)),
}  # fmt: skip
DOCUMENTED_OPEN = {"received", "held", "submitted", "copying", "needs_review"}
DOCUMENTED_TERMINAL = {"succeeded", "failed", "canceled", "rejected", "timed_out", "superseded"}


@pytest.mark.parametrize("current", list(Status))
@pytest.mark.parametrize("target", list(Status))
def test_every_move_is_allowed_or_refused_as_documented(current: Status, target: Status) -> None:
    assert can_move(current, target) == ((current, target) in EXPECTED_MOVES)


def test_statuses_are_the_documented_ones_and_terminal_ones_never_move_on() -> None:
    assert {s.value for s in Status} == DOCUMENTED_OPEN | DOCUMENTED_TERMINAL
    for status in Status:
        assert status.is_terminal == (status.value in DOCUMENTED_TERMINAL)
        if status.is_terminal:
            assert not any(can_move(status, target) for target in Status)


def test_status_groups_are_exported_once_each_as_documented() -> None:
    assert {s.value for s in jobs.OPEN} == DOCUMENTED_OPEN
    assert {s.value for s in jobs.TERMINAL} == DOCUMENTED_TERMINAL
    # ``rejected`` is retried only when an operator asks for it (the same bytes fail again).
    assert {s.value for s in jobs.RETRYABLE} == {"failed", "canceled", "timed_out", "rejected"}
    for status in Status:
        assert status.is_open == (status in jobs.OPEN) != status.is_terminal


def test_every_terminal_status_has_the_outcome_of_ending_a_job_there() -> None:
    assert set(ENDED) == set(jobs.TERMINAL)
    assert all(ENDED[status].value == status.value for status in jobs.TERMINAL)
    assert Outcome.SUCCEEDED is ENDED[Status.SUCCEEDED]
    assert set(DETAIL_TYPES) == set(jobs.TERMINAL)  # and a completion event's detail type


def _job(status: Status, **extra: object) -> Job:
    return Job(
        job_id="j1",
        status=status,
        source_bucket="uploads-bucket",
        source_key="uploads/café/red shoe.jpg",
        color="255,0,0",
        created_at="2026-05-06T10:00:00.000Z",
        updated_at="2026-05-06T10:00:01.000Z",
        **extra,  # type: ignore[arg-type]
    )


def test_item_round_trip_full() -> None:
    job = _job(
        Status.SUCCEEDED,
        source_version_id="3HL4kqtJlcpXroDTDmJ",
        source_etag="e1",
        source_size=1234,
        color_source="rule:uploads/café/",
        run_id="run-1",
        run_status="partial_succeeded",
        output_urls=[
            OutputRef("https://a.runflow.io/1.png", "image/png"),
            OutputRef("https://a.runflow.io/2"),
        ],
        result_bucket="results-bucket",
        result_keys=["results/café/red shoe.jpg/result.png", "results/café/red shoe.jpg/result-2.png"],
        error_code="X",
        error_message="y",
        completed_at="2026-05-06T10:01:00.000Z",
        submitted_at="2026-05-06T10:00:02.000Z",
        runflow_duration_ms=4200,
        runflow_request_id="req-1",
        retryable_errors=2,
        create_pending_since="2026-05-06T10:00:01.500Z",
        superseded_by="j2",
        quality={
            "verdict": "doubt",
            "reasons": ["nothing found"],
            "checks": {"subject_share": 0.0, "halo": 1.5},
        },
        held_keys=["review/j1/result.png", "review/j1/rendition-amazon.jpg"],
        review={"decision": "approve", "note": None, "reviewer": "ana", "at": "2026-05-06T10:02:00.000Z"},
        attempt=3,
        history=[{"attempt": 1, "status": "failed", "error_code": "UNAUTHORIZED"}],
    )
    item = job.to_item()
    assert item["output_urls"] == [
        {"url": "https://a.runflow.io/1.png", "content_type": "image/png"},
        {"url": "https://a.runflow.io/2"},
    ]
    assert Job.from_item(item) == job
    # DynamoDB holds no floats: the measured checks are stored as Decimals and read back as numbers.
    assert item["quality"]["checks"] == {"subject_share": Decimal(0), "halo": Decimal("1.5")}
    assert item["review"] == {
        "decision": "approve",
        "reviewer": "ana",
        "at": "2026-05-06T10:02:00.000Z",
        "note": None,
    }


def test_item_of_a_new_job_has_no_empty_attributes() -> None:
    job = _job(Status.RECEIVED)
    item = job.to_item()
    assert item == {
        "job_id": "j1",
        "status": "received",
        "source_bucket": "uploads-bucket",
        "source_key": "uploads/café/red shoe.jpg",
        "color": "255,0,0",
        "created_at": "2026-05-06T10:00:00.000Z",
        "updated_at": "2026-05-06T10:00:01.000Z",
        "retryable_errors": 0,
        "attempt": 1,
        "open_shard": "open",
    }
    assert Job.from_item(item) == job


def test_from_item_accepts_dynamodb_numbers() -> None:
    item = _job(Status.SUBMITTED).to_item() | {
        "source_size": Decimal(1234),
        "retryable_errors": Decimal(3),
        "runflow_duration_ms": Decimal(99),
        "attempt": Decimal(2),
    }
    job = Job.from_item(item)
    assert (job.source_size, job.retryable_errors, job.runflow_duration_ms, job.attempt) == (1234, 3, 99, 2)
    assert isinstance(job.retryable_errors, int) and isinstance(job.attempt, int)


@pytest.mark.parametrize("status", sorted(DOCUMENTED_OPEN))
def test_open_jobs_carry_open_shard(status: str) -> None:
    assert _job(Status(status)).to_item()["open_shard"] == OPEN_SHARD
    assert _job(Status(status)).is_open


@pytest.mark.parametrize("status", sorted(DOCUMENTED_TERMINAL))
def test_terminal_jobs_do_not_carry_open_shard(status: str) -> None:
    assert "open_shard" not in _job(Status(status)).to_item()
    assert not _job(Status(status)).is_open


def test_each_attempt_has_its_own_runflow_reference() -> None:
    assert _job(Status.RECEIVED).run_ref == "j1"
    assert _job(Status.RECEIVED, attempt=2).run_ref == "j1-2"


def test_upload_rebuilt_from_the_recorded_identity() -> None:
    job = _job(Status.SUBMITTED, source_version_id="v7", source_etag="e7", source_size=9)
    upload = job.upload()
    assert (upload.bucket, upload.key, upload.version_id, upload.etag, upload.size) == (
        "uploads-bucket",
        "uploads/café/red shoe.jpg",
        "v7",
        "e7",
        9,
    )
    assert upload.object_params() == {
        "Bucket": "uploads-bucket",
        "Key": "uploads/café/red shoe.jpg",
        "VersionId": "v7",
    }


@pytest.mark.parametrize(
    ("moment", "stamp"),
    [
        (datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "2025-12-31T23:59:59.999Z"),
        (datetime(2026, 1, 1, 0, 0, 0, 0, tzinfo=UTC), "2026-01-01T00:00:00.000Z"),
        (datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=UTC), "2026-01-01T00:00:00.001Z"),
        (datetime(2026, 10, 1, 9, 5, 7, 250000, tzinfo=UTC), "2026-10-01T09:05:07.250Z"),
    ],
)
def test_timestamps_are_fixed_width_utc(moment: datetime, stamp: str) -> None:
    assert format_iso(moment) == stamp
    assert iso_from_epoch(moment.timestamp()) == stamp


def test_timestamp_string_order_is_time_order() -> None:
    stamps = [
        "2025-12-31T23:59:59.999Z",
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T00:00:00.001Z",
        "2026-01-01T09:59:59.000Z",
        "2026-01-01T10:00:00.000Z",
    ]
    assert sorted(stamps, key=parse_iso) == stamps == sorted(stamps)


@pytest.mark.parametrize(
    "text",
    [
        "2026-05-06T10:00:00Z",
        "2026-05-06T10:00:00+00:00",
        "2026-05-06T10:00:00.000+00:00",
        "2026-05-06T12:00:00+02:00",
    ],
)
def test_parse_iso_reads_every_form_runflow_and_backdrop_write(text: str) -> None:
    assert parse_iso(text) == datetime(2026, 5, 6, 10, 0, 0, tzinfo=UTC)


def test_every_change_a_job_write_may_make_is_an_attribute_of_the_record() -> None:
    attributes = {f.name for f in fields(Job)}
    assert set(JobChanges.__annotations__) <= attributes
    # The status and what goes with a move are the job store's own writes, never a change.
    assert not {"job_id", "status", "updated_at", "completed_at", "expires_at", "event_shard"} & set(
        JobChanges.__annotations__
    )


def test_the_record_holds_every_attribute_the_job_store_writes() -> None:
    item = _job(
        Status.FAILED,
        expires_at=1_800_000_000,
        event_shard="pending",
        event_claimed_at=1_700_000_000,
        event_published_at="2026-05-06T10:00:09.000Z",
    ).to_item()
    assert (item["expires_at"], item["event_shard"], item["event_claimed_at"]) == (
        1_800_000_000,
        "pending",
        1_700_000_000,
    )
    job = Job.from_item(
        item | {"expires_at": Decimal(1_800_000_000), "event_claimed_at": Decimal(1_700_000_000)}
    )
    assert (job.expires_at, job.event_claimed_at, job.event_published_at) == (
        1_800_000_000,
        1_700_000_000,
        "2026-05-06T10:00:09.000Z",
    )


def test_a_failure_keeps_its_code_and_at_most_1000_characters_of_its_message() -> None:
    assert failure("RUN_FAILED", "x" * 1500) == {"error_code": "RUN_FAILED", "error_message": "x" * 1000}
