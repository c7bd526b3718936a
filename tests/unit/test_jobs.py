"""The job state machine and the job record as stored in DynamoDB."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

import backdrop.jobs as jobs_module
from backdrop.jobs import ALLOWED_FROM, OPEN, OPEN_SHARD, TERMINAL, Job, Status, can_move, now_iso, parse_iso

FORWARD = [
    (Status.RECEIVED, Status.SUBMITTED),
    (Status.SUBMITTED, Status.COPYING),
    (Status.RECEIVED, Status.COPYING),  # the callback overtook the submit record
    (Status.COPYING, Status.COPYING),  # a retried copy
    (Status.COPYING, Status.SUCCEEDED),
    (Status.RECEIVED, Status.REJECTED),
]
FORWARD += [(s, t) for s in OPEN for t in (Status.FAILED, Status.CANCELED, Status.TIMED_OUT)]


@pytest.mark.parametrize(("current", "target"), FORWARD)
def test_allowed_moves(current: Status, target: Status) -> None:
    assert can_move(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (Status.SUBMITTED, Status.RECEIVED),
        (Status.COPYING, Status.SUBMITTED),
        (Status.COPYING, Status.RECEIVED),
        (Status.SUBMITTED, Status.SUBMITTED),
        (Status.RECEIVED, Status.SUCCEEDED),
        (Status.SUBMITTED, Status.SUCCEEDED),
        (Status.SUBMITTED, Status.REJECTED),
        (Status.COPYING, Status.REJECTED),
    ],
)
def test_forbidden_moves(current: Status, target: Status) -> None:
    assert not can_move(current, target)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_is_final(terminal: Status) -> None:
    assert terminal.is_terminal
    assert all(not can_move(terminal, target) for target in Status)


def test_nothing_moves_back_to_received() -> None:
    assert all(not can_move(s, Status.RECEIVED) for s in Status)


def test_only_rejected_and_succeeded_have_a_single_source() -> None:
    assert ALLOWED_FROM[Status.REJECTED] == {Status.RECEIVED}
    assert ALLOWED_FROM[Status.SUCCEEDED] == {Status.COPYING}


def test_open_and_terminal_partition_statuses() -> None:
    assert set(Status) == OPEN | TERMINAL
    assert not OPEN & TERMINAL
    assert {Status.RECEIVED, Status.SUBMITTED, Status.COPYING} == OPEN


def _job(status: Status, **extra: object) -> Job:
    return Job(
        job_id="j1",
        status=status,
        source_bucket="uploads-bucket",
        source_key="uploads/café/red shoe.jpg",
        source_version="v:abc",
        color="255,0,0",
        created_at="2026-05-06T10:00:00.000Z",
        updated_at="2026-05-06T10:00:01.000Z",
        **extra,  # type: ignore[arg-type]
    )


def test_item_round_trip_full() -> None:
    job = _job(
        Status.SUCCEEDED,
        source_etag='"e1"',
        source_size=1234,
        run_id="run-1",
        result_bucket="results-bucket",
        result_keys=["results/café/red shoe.png", "results/café/red shoe-2.png"],
        error_code="X",
        error_message="y",
        completed_at="2026-05-06T10:01:00.000Z",
        submitted_at="2026-05-06T10:00:02.000Z",
        runflow_duration_ms=4200,
        runflow_request_id="req-1",
        attempts=2,
    )
    assert Job.from_item(job.to_item()) == job


def test_item_round_trip_minimal_has_no_empty_attributes() -> None:
    job = _job(Status.RECEIVED)
    item = job.to_item()
    assert None not in item.values()
    assert "result_keys" not in item  # DynamoDB rejects empty sets; nothing written when none
    assert Job.from_item(item) == job


def test_from_item_accepts_dynamodb_numbers() -> None:
    item = _job(Status.SUBMITTED).to_item() | {
        "source_size": Decimal(1234),
        "attempts": Decimal(3),
        "runflow_duration_ms": Decimal(99),
    }
    job = Job.from_item(item)
    assert (job.source_size, job.attempts, job.runflow_duration_ms) == (1234, 3, 99)
    assert isinstance(job.attempts, int)


@pytest.mark.parametrize("status", sorted(OPEN))
def test_open_jobs_carry_open_shard(status: Status) -> None:
    assert _job(status).to_item()["open_shard"] == OPEN_SHARD
    assert _job(status).is_open


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_terminal_jobs_do_not_carry_open_shard(status: Status) -> None:
    assert "open_shard" not in _job(status).to_item()
    assert not _job(status).is_open


def test_now_iso_string_order_is_time_order(monkeypatch: pytest.MonkeyPatch) -> None:
    moments = [
        datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 0, 0, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),
        datetime(2026, 1, 1, 9, 59, 59, 0, tzinfo=UTC),
        datetime(2026, 1, 1, 10, 0, 0, 0, tzinfo=UTC),
        datetime(2026, 10, 1, 0, 0, 0, 0, tzinfo=UTC),
    ]

    class Clock(datetime):
        value = moments[0]

        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return cls.value

    monkeypatch.setattr(jobs_module, "datetime", Clock)
    stamps = []
    for moment in moments:
        Clock.value = moment
        stamps.append(now_iso())
    assert len({len(s) for s in stamps}) == 1  # fixed width
    assert sorted(stamps) == stamps
    assert len(set(stamps)) == len(stamps)
    assert stamps[1] == "2026-01-01T00:00:00.000Z"
    assert [parse_iso(s) for s in stamps[1:]] == [
        m.replace(microsecond=m.microsecond // 1000 * 1000) for m in moments[1:]
    ]


def test_now_iso_is_utc_now() -> None:
    stamp = now_iso()
    assert stamp.endswith("Z")
    assert abs((parse_iso(stamp) - datetime.now(UTC)).total_seconds()) < 5
