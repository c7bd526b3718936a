"""Runflow callbacks: authenticate, find the job, record what the run said, and answer at once.

The callback does no heavy work (Runflow asks for a 2xx within a few seconds): it verifies the
signature, records the run's outcome on the job with a conditional write, queues the copy and
answers. Answers (Runflow retries on 5xx and network errors only):
- 401 missing or wrong signature; nothing is read or changed;
- 400/413 malformed or oversized body;
- 200 recorded, duplicate, late, or for a job we do not know (a retry would not help);
- 503 the outcome could not be recorded or the copy not queued (AWS unavailable): retry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backdrop.completion import apply_run_report
from backdrop.jobs import Job
from backdrop.observability import count, logger
from backdrop.outcomes import Outcome, RetryLater
from backdrop.runs import run_result_from_callback
from backdrop.services import Services
from backdrop.signatures import is_well_formed, verify

MAX_BODY_BYTES = 256 * 1024  # a callback envelope is a few KB; anything near this is not Runflow


@dataclass(frozen=True)
class CallbackAnswer:
    status_code: int
    body: dict[str, Any] = field(default_factory=dict)


def _refuse(status: int, reason: str) -> CallbackAnswer:
    count("CallbacksRejected")
    logger.warning("Callback refused", extra={"http_status": status, "reason": reason})
    return CallbackAnswer(status, {"error": reason})


def authenticate(body: bytes, signature: str | None, services: Services) -> bool:
    """Check against the secrets held in memory, then against freshly read ones (a rotation), which
    are read at most once per ``SIGNING_REFRESH_SECONDS`` (see ``SecretReader``)."""
    if not is_well_formed(signature):
        return False  # never costs a secret read
    held = services.secrets.signing_secrets()
    if verify(body, signature, held.all()):
        return True
    fresh = services.secrets.signing_secrets(refresh=True)
    # The same object: nothing was read (too soon after the last read), so nothing new to try.
    return fresh is not held and verify(body, signature, fresh.all())


def handle_callback(body: bytes, signature: str | None, services: Services) -> CallbackAnswer:
    if len(body) > MAX_BODY_BYTES:
        return _refuse(413, f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    if not authenticate(body, signature, services):
        return _refuse(401, "missing or invalid Runflow-Signature")
    try:
        envelope = json.loads(body)
    except ValueError:
        return _refuse(400, "body is not JSON")
    if not isinstance(envelope, Mapping):
        return _refuse(400, "body is not a JSON object")
    run = run_result_from_callback(envelope)
    if not run.run_id or not run.status:
        return _refuse(400, "callback lacks run_id or status")
    logger.append_keys(run_id=run.run_id)

    job = _find_job(run.metadata.get("job_id"), run.run_id, services)
    if job is None:
        count("CallbacksUnmatched")
        logger.warning("Signed callback for an unknown job", extra={"event": envelope.get("event")})
        return CallbackAnswer(200, {"result": Outcome.UNKNOWN_JOB.value})
    logger.append_keys(job_id=job.job_id)
    try:
        result = apply_run_report(job, run, services, authoritative=False)
    except RetryLater as exc:
        return CallbackAnswer(503, {"result": "retry", "detail": str(exc)})
    return CallbackAnswer(200, {"result": result.outcome.value, "job_id": job.job_id})


def _find_job(job_id: Any, run_id: str, services: Services) -> Job | None:
    if isinstance(job_id, str) and job_id:
        job = services.jobs.get(job_id)
        if job is not None:
            return job
    return services.jobs.find_by_run_id(run_id)
