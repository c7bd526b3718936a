"""Result leases in the ledger table, against a moto server over HTTP: one copier per object at a
time, a dead copier's lease runs out, and the last publication is remembered."""

from __future__ import annotations

import boto3
import pytest

from backdrop.ledger import Published, ResultLedger
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
