"""How runs end: the terminal status each settles on, what its run object and callback then say.

A run whose processing worked would succeed. Before it does, the outcome settings are tried in
this order, and the first that fires decides (later ones are not rolled, so at most one applies):

1. ``outcome_canceled``: ``status_code`` ``canceled`` (or ``cancelled`` with ``cancel_spelling``),
   ``output`` null, ``failure_code`` ``CANCELED`` (``CANCELLED``), ``failure_message`` saying why;
   callback ``event`` ``run.cancelled`` with ``status`` equal to the ``status_code``, ``output`` null.
2. ``outcome_timed_out``: ``status_code`` ``timed_out``, ``failure_code`` ``TIMED_OUT``.
3. ``outcome_expired``: ``status_code`` ``expired``, ``failure_code`` ``EXPIRED``.
   Both: ``completed_at`` set, ``output`` null; callback ``event`` ``run.failed`` with ``status``
   ``timed_out`` / ``expired``.
4. ``outcome_partial``: ``status_code`` ``partial_succeeded`` keeping the first half of the
   outputs rounded up (1 of 1, 1 of 2, 2 of 3, ...); callback ``event`` ``run.partial_succeeded``,
   ``status`` ``partial_succeeded``, ``output`` the kept outputs.
5. ``outcome_no_outputs``: ``status_code`` ``succeeded`` with every output, but the callback's
   ``output.outputs`` is ``[]`` (``GET /v1/runs/{id}`` shows the real outputs).

Otherwise the run ``succeeded``: callback ``event`` ``run.completed``.

Failed runs (bad input, ``processing_failure``): ``status_code`` ``failed``, callback ``event``
``run.failed``, ``status`` ``failed``. For every run ending ``failed``, ``timed_out`` or ``expired``
the ``failure_output_envelope`` rate decides whether its callback's ``output`` is ``null`` or
``{"error": {"code": failure_code, "message": failure_message}}`` (both forms are documented).

Admin cancellation (``POST /v1/admin/runs/{id}/cancellation``) settles a non-terminal run the way
``outcome_canceled`` does, with the given ``reason`` as ``failure_message``. The choice of callback
shape is stored on the run, so a redelivery rebuilds the same shape with fresh output URLs.
"""

from __future__ import annotations

import math
from typing import Any

from backdrop_local.runflow.faults import FaultInjector
from backdrop_local.runflow.store import (
    CANCELATIONS,
    EXPIRED,
    FAILED,
    FAILURES,
    PARTIAL_SUCCEEDED,
    SUCCEEDED,
    TIMED_OUT,
    WITH_OUTPUT,
    OutputFile,
    Run,
)

OUTCOME_ORDER = (
    "outcome_canceled",
    "outcome_timed_out",
    "outcome_expired",
    "outcome_partial",
    "outcome_no_outputs",
)
EVENTS = {
    SUCCEEDED: "run.completed",
    PARTIAL_SUCCEEDED: "run.partial_succeeded",
    **{status: "run.failed" for status in FAILURES},
    **{status: "run.cancelled" for status in CANCELATIONS},
}
INJECTED_CANCEL_MESSAGE = "The run was canceled before it finished (injected outcome)"
ADMIN_CANCEL_MESSAGE = "The run was canceled by an administrator"
_FAILED_ENDINGS = {
    "outcome_timed_out": (TIMED_OUT, "The run did not finish within its time limit (injected outcome)"),
    "outcome_expired": (EXPIRED, "The run expired before it could be completed (injected outcome)"),
}


def kept_outputs(count: int) -> int:
    """Outputs a partial_succeeded run keeps: the first half, rounded up (never none)."""
    return max(1, math.ceil(count / 2))


def choose_success_outcome(faults: FaultInjector) -> str | None:
    """Which outcome setting (if any) replaces plain success for a run finishing now."""
    return faults.first(OUTCOME_ORDER)


def settle_success(
    run: Run,
    outcome: str | None,
    outputs: list[OutputFile],
    timing: dict[str, Any],
    faults: FaultInjector,
) -> None:
    """End ``run`` as a run whose processing worked, under ``outcome`` (see the module text)."""
    if outcome == "outcome_canceled":
        settle_canceled(run, faults.settings.cancel_spelling, INJECTED_CANCEL_MESSAGE)
        return
    if outcome in _FAILED_ENDINGS:
        status, message = _FAILED_ENDINGS[outcome]
        settle_failure(run, status, status.upper(), message, "processing", faults)
        return
    run.timing = timing
    if outcome == "outcome_partial":
        run.status_code = PARTIAL_SUCCEEDED
        run.outputs = outputs[: kept_outputs(len(outputs))]
        return
    run.status_code = SUCCEEDED
    run.outputs = list(outputs)
    run.callback_hides_outputs = outcome == "outcome_no_outputs"


def settle_failure(run: Run, status: str, code: str, message: str, stage: str, faults: FaultInjector) -> None:
    run.status_code = status
    run.failure_code = code
    run.failure_message = message
    run.failure_stage_code = stage
    run.outputs = []
    run.callback_error_envelope = faults.roll("failure_output_envelope")


def settle_failed(run: Run, code: str, message: str, stage: str, faults: FaultInjector) -> None:
    settle_failure(run, FAILED, code, message, stage, faults)


def settle_canceled(run: Run, spelling: str, message: str) -> None:
    if spelling not in CANCELATIONS:
        raise ValueError(f"not a cancel spelling: {spelling!r}")
    run.status_code = spelling
    run.failure_code = spelling.upper()
    run.failure_message = message
    run.failure_stage_code = None
    run.outputs = []


def callback_output(run: Run, output: dict[str, Any] | None) -> dict[str, Any] | None:
    """The callback's ``output`` for ``run``, given its run-object ``output``."""
    if run.status_code in WITH_OUTPUT:
        if output is not None and run.callback_hides_outputs:
            return {**output, "outputs": []}
        return output
    if run.status_code in FAILURES and run.callback_error_envelope:
        return {"error": {"code": run.failure_code, "message": run.failure_message}}
    return None
