"""A person's decision on a held result: the review request sent on the copy queue."""

from __future__ import annotations

import pytest

from backdrop.queues import CopyRequest, Decision, RenderRequest, ReviewRequest


def test_a_review_request_reads_back_what_it_wrote() -> None:
    approve = ReviewRequest("j1", Decision.APPROVE, "ana")
    assert approve.body() == '{"review":"j1","decision":"approve","note":null,"reviewer":"ana"}'
    assert ReviewRequest.parse(approve.body()) == approve
    reject = ReviewRequest("j1", Decision.REJECT, "ana", "halo around the bottle")
    assert ReviewRequest.parse(reject.body()) == reject


def test_other_messages_on_the_copy_queue_are_not_review_requests() -> None:
    for other in (CopyRequest("j1", "r1").body(), RenderRequest("j1").body(), "not json", "[1]"):
        assert ReviewRequest.parse(other) is None
    assert RenderRequest.parse(ReviewRequest("j1", Decision.APPROVE, "ana").body()) is None


@pytest.mark.parametrize(
    "body",
    [
        '{"review":"","decision":"approve","reviewer":"ana"}',
        '{"review":"j1","decision":"maybe","reviewer":"ana"}',
        '{"review":"j1","decision":"reject","note":3,"reviewer":"ana"}',
        '{"review":"j1","decision":"approve","reviewer":" "}',
        '{"review":"j1","decision":"approve"}',
    ],
)
def test_a_malformed_review_request_is_refused(body: str) -> None:
    with pytest.raises(ValueError):
        ReviewRequest.parse(body)
