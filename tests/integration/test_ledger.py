"""Result leases and content records in the ledger table, against a moto server over HTTP: one
copier per object at a time, a dead copier's lease runs out, and the last publication is
remembered; one job runs a content at a time, the others wait and are handed back when it ends."""

from __future__ import annotations

import boto3
import pytest

from backdrop.ledger import ContentLedger, Published, ResultLedger
from backdrop_local.aws import Resources


class Clock:
    def __init__(self) -> None:
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(resources: Resources, clock: Clock) -> ResultLedger:
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(resources.ledger_table)
    return ResultLedger(table, clock=clock)


def test_one_holder_at_a_time(ledger: ResultLedger) -> None:
    lease = ledger.acquire("uploads", "uploads/a.jpg", "job-1", 60)
    assert lease is not None and lease.published is None
    assert ledger.acquire("uploads", "uploads/a.jpg", "job-2", 60) is None
    assert ledger.acquire("uploads", "uploads/a.jpg", "job-1", 60) is None  # not even the same job
    assert ledger.acquire("uploads", "uploads/b.jpg", "job-2", 60) is not None  # another object


def test_lease_of_a_dead_holder_runs_out(ledger: ResultLedger, clock: Clock) -> None:
    dead = ledger.acquire("u", "k", "job-1", 60)
    assert dead is not None
    clock.now += 59
    assert ledger.acquire("u", "k", "job-2", 60) is None
    clock.now += 2
    taken = ledger.acquire("u", "k", "job-2", 60)
    assert taken is not None
    # The old holder finds out when it tries to renew or release: it may write nothing more.
    assert not ledger.renew(dead, 60)
    assert not ledger.release(dead, Published("job-1", "run-1", "v1", "t", ("results/k.jpg/result.png",)))
    assert ledger.release(taken)


def test_renewal_keeps_others_out(ledger: ResultLedger, clock: Clock) -> None:
    lease = ledger.acquire("u", "k", "job-1", 60)
    assert lease is not None
    clock.now += 50
    assert ledger.renew(lease, 60)
    clock.now += 50
    assert ledger.acquire("u", "k", "job-2", 60) is None


def test_release_records_what_was_published(ledger: ResultLedger) -> None:
    lease = ledger.acquire("u", "k", "job-1", 60)
    assert lease is not None
    published = Published(
        "job-1",
        "run-1",
        "v1",
        "2026-01-01T00:00:00.000Z",
        ("results/k.jpg/result.png", "results/k.jpg/result-2.png"),
    )
    assert ledger.release(lease, published)
    nxt = ledger.acquire("u", "k", "job-2", 60)
    assert nxt is not None and nxt.published == published
    assert ledger.release(nxt)  # released without publishing: the last publication stays
    again = ledger.acquire("u", "k", "job-3", 60)
    assert again is not None and again.published == published


DIGEST = "ab" * 32
COLOUR = "255,255,255"


@pytest.fixture
def contents(resources: Resources, clock: Clock) -> ContentLedger:
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(resources.ledger_table)
    return ContentLedger(table, clock=clock)


def test_one_job_holds_a_content_and_the_others_wait_for_it(contents: ContentLedger) -> None:
    assert contents.hold(DIGEST, COLOUR, "job-1#1", 1_780_003_600) is not None
    assert contents.hold(DIGEST, COLOUR, "job-2#1", 1_780_003_600) is None
    assert contents.hold(DIGEST, COLOUR, "job-1#1", 1_780_003_600) is not None  # the holder again
    assert contents.hold(DIGEST, "0,0,0", "job-3#1", 1_780_003_600) is not None  # another colour
    assert contents.wait(DIGEST, COLOUR, "job-2#1") == "job-1#1"
    assert contents.wait(DIGEST, COLOUR, "job-4#2") == "job-1#1"
    assert contents.release(DIGEST, COLOUR, "job-2#1") is None  # a waiter holds nothing
    assert contents.release(DIGEST, COLOUR, "job-1#1") == ["job-2#1", "job-4#2"]
    assert contents.get(DIGEST, COLOUR).holder is None
    assert contents.wait(DIGEST, COLOUR, "job-2#1") is None  # nothing to wait for now
    assert contents.hold(DIGEST, COLOUR, "job-2#1", 1_780_003_600) is not None


def test_a_content_lease_ends_at_its_deadline(contents: ContentLedger, clock: Clock) -> None:
    assert contents.hold(DIGEST, COLOUR, "job-1#1", clock.now + 3600) is not None
    clock.now += 3601
    assert contents.wait(DIGEST, COLOUR, "job-2#1") is None
    assert contents.hold(DIGEST, COLOUR, "job-2#1", clock.now + 3600) is not None
    assert contents.release(DIGEST, COLOUR, "job-1#1") is None  # the expired holder frees nothing


def test_done_records_the_latest_success_and_is_forgotten_only_by_its_own_job(
    contents: ContentLedger,
) -> None:
    contents.record_done(DIGEST, COLOUR, "job-1", ["results/a.jpg/result.png"])
    contents.record_done(DIGEST, COLOUR, "job-2", ["results/b.jpg/result.png"])
    contents.forget_done(DIGEST, COLOUR, "job-1")  # stale: job-2's record stays
    record = contents.get(DIGEST, COLOUR)
    assert record.done_job_id == "job-2" and record.done_keys == ("results/b.jpg/result.png",)
    contents.forget_done(DIGEST, COLOUR, "job-2")
    assert contents.get(DIGEST, COLOUR).done_job_id is None
