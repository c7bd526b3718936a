"""Runflow callbacks: authenticate, find the job, record what the run said, and answer at once.

The callback does no heavy work (Runflow asks for a 2xx within a few seconds): it verifies the
signature, records the run's outcome on the job with a conditional write, queues the copy and
answers.

The signing secret belongs to the Runflow organisation, so a valid signature proves only that the
body came from someone holding it, not that the run is the job's its metadata names. A run the job
has not recorded yet (the create's answer is still on its way, or was lost) is therefore read from
Runflow (``GET /v1/runs/{id}``, within ``ADOPTION_READ_SECONDS``) and adopted only if its
``client_ref`` is this attempt's reference; what is then recorded is the run object Runflow
returned, not the callback's body.

Answers (Runflow retries on 5xx and network errors only):
- 401 missing or wrong signature; nothing is read or changed;
- 400/413 malformed (not strict JSON: NaN and Infinity included) or oversized body;
- 200 recorded, duplicate, late, for a job we do not know, or ``run_refused`` (Runflow does not
  say the run is this job's): a retry would not help;
- 503 the outcome could not be recorded, the copy not queued (AWS unavailable), or the run could
  not be read from Runflow: retry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backdrop.completion import apply_run_report
from backdrop.jobs import Job
from backdrop.observability import count, logger
from backdrop.outcomes import Outcome, RetryLater
from backdrop.runs import RunflowError, RunflowRejected, RunResult, run_result_from_callback
from backdrop.services import Services
from backdrop.signatures import is_well_formed, verify

MAX_BODY_BYTES = 256 * 1024  # a callback envelope is a few KB; anything near this is not Runflow
# Runflow waits for the answer (and the function's timeout is 10 s): the run is read within this.
ADOPTION_READ_SECONDS = 3.0


class MalformedBody(ValueError):
    """The body is not a strict JSON object."""


def _non_standard(constant: str) -> Any:
    raise MalformedBody(f"body is not strict JSON: {constant} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: a number JSON can write but no float can hold
        raise MalformedBody(f"body is not strict JSON: {text[:40]} is out of range")
    return value


def load_envelope(body: bytes) -> Mapping[str, Any]:
    """The callback body as a JSON object, refusing what strict JSON has no value for (NaN,
    Infinity, -Infinity, numbers out of a float's range): Python's parser accepts them, and they
    would fail deep inside the outcome's recording instead of being refused here."""
    try:
        envelope = json.loads(body, parse_constant=_non_standard, parse_float=_finite)
    except MalformedBody:
        raise
    except ValueError as exc:  # also UnicodeDecodeError, and integers too long to convert
        raise MalformedBody("body is not JSON") from exc
    if not isinstance(envelope, Mapping):
        raise MalformedBody("body is not a JSON object")
    return envelope


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
        envelope = load_envelope(body)
    except MalformedBody as exc:
        return _refuse(400, str(exc))
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
    authoritative = False
    if not job.status.is_terminal and job.run_id != run.run_id:
        vouched = _run_vouched_for(job, run, services)
        if isinstance(vouched, CallbackAnswer):
            return vouched
        run, authoritative = vouched, True
    try:
        result = apply_run_report(job, run, services, authoritative=authoritative)
    except RetryLater as exc:
        return CallbackAnswer(503, {"result": "retry", "detail": str(exc)})
    return CallbackAnswer(200, {"result": result.outcome.value, "job_id": job.job_id})


def _run_vouched_for(job: Job, run: RunResult, services: Services) -> RunResult | CallbackAnswer:
    """The run as Runflow has it, if Runflow says it is this attempt's (its ``client_ref``);
    otherwise the answer to give: refused, a late run of an earlier attempt, or retry later."""
    try:
        read = services.runflow().get_run(run.run_id, budget_seconds=ADOPTION_READ_SECONDS)
    except RunflowRejected as exc:
        if exc.http_status == 404:
            return _refuse_run(job, run, None, "Runflow does not know the run")
        logger.warning("Could not read the callback's run", extra={"reason": str(exc)})
        return CallbackAnswer(503, {"result": "retry", "detail": f"cannot read the run: {exc}"})
    except RunflowError as exc:
        logger.warning("Could not read the callback's run", extra={"reason": str(exc)})
        return CallbackAnswer(503, {"result": "retry", "detail": f"cannot read the run: {exc}"})
    if read.run_id != run.run_id or read.client_ref is None:
        return _refuse_run(job, run, read.client_ref, "Runflow's run object does not name it")
    if read.client_ref != job.run_ref:
        if read.client_ref in _earlier_refs(job):
            # Our own earlier attempt's run, late: not a forgery, and never this attempt's.
            count("RunsMismatched")
            logger.warning("Callback of an earlier attempt's run; it writes nothing")
            return CallbackAnswer(200, {"result": Outcome.RUN_MISMATCH.value, "job_id": job.job_id})
        return _refuse_run(job, run, read.client_ref, "the run belongs to another reference")
    if not read.is_terminal:
        # Runflow calls back only once a run is finished; its run object will say so shortly.
        return CallbackAnswer(503, {"result": "retry", "detail": f"Runflow shows the run {read.status}"})
    if job.run_id is None:
        logger.info("Adopting the run Runflow confirms as this attempt's", extra={"run_status": read.status})
    return read


def _earlier_refs(job: Job) -> set[str]:
    return {Job.ref_of(job.job_id, attempt) for attempt in range(1, job.attempt)}


def _refuse_run(job: Job, run: RunResult, client_ref: str | None, reason: str) -> CallbackAnswer:
    """A signed callback whose run Runflow does not attribute to this attempt: nothing changes. 200,
    since Runflow retrying it would get the same answer."""
    count("AdoptionsRefused")
    logger.warning(
        "Callback's run refused: Runflow does not say it is this job's",
        extra={"reason": reason, "run_client_ref": client_ref, "expected_client_ref": job.run_ref},
    )
    return CallbackAnswer(200, {"result": Outcome.RUN_REFUSED.value, "job_id": job.job_id})


def _find_job(job_id: Any, run_id: str, services: Services) -> Job | None:
    if isinstance(job_id, str) and job_id:
        job = services.jobs.get(job_id)
        if job is not None:
            return job
    return services.jobs.find_by_run_id(run_id)
