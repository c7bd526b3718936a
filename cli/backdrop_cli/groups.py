"""The command's status groups, all taken from the core's (``backdrop.jobs``): a status added
there is counted, offered and retried here without an edit.

A failure is a retryable status (``RETRYABLE``: a terminal status other than succeeded and
superseded); the reports rank every one of them. A rejection is told apart where a command expects
it: a backfill sends the objects its plan says will be rejected on purpose (recorded, never
billed), so it neither fails the backfill nor is listed with the failures after a wait; a retry of
a rejected job asked for a run, so there it fails the command like the others."""

from __future__ import annotations

from backdrop.jobs import RETRYABLE, Status

FAILURES = RETRYABLE
FAILURES_BUT_REJECTED = RETRYABLE - {Status.REJECTED}

# What ``retry --status`` offers, as help lists it: rejected last (it needs --include-rejected).
RETRY_CHOICES = [s.value for s in Status if s in FAILURES_BUT_REJECTED] + [Status.REJECTED.value]
RETRY_BY_DEFAULT = "|".join(s.value for s in Status if s in FAILURES_BUT_REJECTED)
