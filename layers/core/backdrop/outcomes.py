"""What a use case did with a job: one vocabulary for submission, callbacks, copies and the reconciler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from backdrop.jobs import TERMINAL, Status


class Outcome(StrEnum):
    SUBMITTED = "submitted"  # a run was created (or an earlier attempt's run adopted)
    HELD = "held"  # waiting for the daily run budget
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELED = "canceled"
    SUCCEEDED = "succeeded"
    SUPERSEDED = "superseded"
    TIMED_OUT = "timed_out"
    COPY_QUEUED = "copy_queued"  # the run's outcome is recorded; the copy worker finishes the job
    NOT_FINISHED = "not_finished"  # the run is still going
    WAITING = "waiting"  # open, and left to something else to move on (a callback, the reconciler)
    IGNORED = "ignored"  # not a job: outside the upload prefix, a folder marker, a vanished object
    UNKNOWN_JOB = "unknown_job"
    RUN_MISMATCH = "run_mismatch"  # a run that is not the job's (a duplicate run): never writes
    RUN_REFUSED = "run_refused"  # Runflow does not say the run is this attempt's: never adopted
    HELD_FOR_REVIEW = "held_for_review"  # a doubtful result waits for a person (``needs_review``)
    RENDERED = "rendered"  # a succeeded job's renditions made again from its stored result (no run)
    ALREADY_DONE = "already_done"  # the job was already past this point (duplicate, late or replayed)


# What a use case that ended a job in each terminal status did with it. Stated, and checked at
# import: a terminal status added without an outcome fails here, not on the job that first ends so.
ENDED: Mapping[Status, Outcome] = MappingProxyType(
    {
        Status.SUCCEEDED: Outcome.SUCCEEDED,
        Status.FAILED: Outcome.FAILED,
        Status.CANCELED: Outcome.CANCELED,
        Status.REJECTED: Outcome.REJECTED,
        Status.TIMED_OUT: Outcome.TIMED_OUT,
        Status.SUPERSEDED: Outcome.SUPERSEDED,
    }
)
if set(ENDED) != TERMINAL:
    raise RuntimeError(f"terminal statuses without an outcome: {sorted(TERMINAL - set(ENDED))}")


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    job_id: str | None = None
    run_id: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "job_id": self.job_id,
            "run_id": self.run_id,
            "detail": self.detail,
        }


class RetryLater(Exception):
    """The work could not be done now (Runflow or AWS unavailable, another worker busy with the same
    object): the job stays open; the message is retried, ``after_seconds`` from now if given."""

    def __init__(self, message: str, *, after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.after_seconds = after_seconds
