"""Unit tests of the settings (types, bounds, choices), the dice's order and thrift, how runs end
and what their callbacks then say, answer-time figures and rate-limit headers. No sockets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from backdrop_local.runflow import outcomes
from backdrop_local.runflow.callbacks import payload
from backdrop_local.runflow.faults import FaultInjector, FaultSettings, FaultSettingsInvalid
from backdrop_local.runflow.ids import uuid7
from backdrop_local.runflow.ratelimit import RateLimitHeaders
from backdrop_local.runflow.store import (
    CANCELED,
    EXPIRED,
    FAILED,
    PARTIAL_SUCCEEDED,
    RUN_STATUSES,
    SUCCEEDED,
    TERMINAL,
    OutputFile,
    Run,
    Store,
    summarise,
)

OUTPUT = {"outputs": [{"url": "https://x/0.png"}], "seed": None, "timing": None, "nsfw_detected": None}


def _run(status: str = "running", **changes: Any) -> Run:
    run = Run(
        id=str(uuid7()),
        request_id="req",
        input={},
        callback_url="http://127.0.0.1:9/hook",
        metadata=None,
        client_ref=None,
        created_at=datetime(2026, 5, 6, 10, 0, 0, tzinfo=UTC),
        status_code=status,
    )
    for key, value in changes.items():
        setattr(run, key, value)
    return run


def _files(count: int) -> list[OutputFile]:
    return [OutputFile(index=n, content_type="image/png", size=100 + n) for n in range(count)]


# ---------------------------------------------------------------------------- settings
def test_new_settings_have_their_documented_defaults() -> None:
    settings = FaultSettings()
    assert settings.idempotency_keys == "honour" and settings.rate_limit_headers == "none"
    assert settings.retry_after_s == 1.0 and settings.cancel_spelling == "canceled"
    assert settings.outputs_per_run == 1 and settings.processing == "real"
    assert settings.instant_output_bytes == 0 and settings.dispatch_delay_s == 0.0
    rates = (
        "create_answer_reset",
        "get_429",
        "list_4xx",
        "outcome_canceled",
        "outcome_partial",
        "outcome_timed_out",
        "outcome_expired",
        "outcome_no_outputs",
        "failure_output_envelope",
    )
    assert all(getattr(settings, name) == 0.0 for name in rates)


def test_from_mapping_types_values_and_lists_every_problem() -> None:
    settings = FaultSettings.from_mapping({"outputs_per_run": 8, "retry_after_s": 2, "processing": "instant"})
    assert settings == FaultSettings(outputs_per_run=8, retry_after_s=2.0, processing="instant")
    assert isinstance(settings.retry_after_s, float) and isinstance(settings.outputs_per_run, int)
    with pytest.raises(FaultSettingsInvalid) as caught:
        FaultSettings.from_mapping(
            {
                "outputs_per_run": 1.0,
                "instant_output_bytes": 2**40,
                "cancel_spelling": "CANCELED",
                "rate_limit_headers": ["both"],
                "retry_after_s": True,
                "get_429": 7,
            }
        )
    assert {p["loc"][-1]: p["type"] for p in caught.value.problems} == {
        "outputs_per_run": "int_type",
        "instant_output_bytes": "value_error",
        "cancel_spelling": "literal_error",
        "rate_limit_headers": "literal_error",
        "retry_after_s": "float_type",
        "get_429": "value_error",
    }
    messages = {p["loc"][-1]: p["msg"] for p in caught.value.problems}
    assert messages["cancel_spelling"] == "Input should be 'canceled' or 'cancelled'"


@pytest.mark.parametrize(
    "changes",
    [
        {"idempotency_keys": "never"},
        {"outputs_per_run": 0},
        {"outputs_per_run": 9},
        {"instant_output_bytes": -5},
        {"dispatch_delay_s": 3601.0},
        {"processing": "fast"},
    ],
)
def test_constructing_bad_settings_in_python_raises(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultSettings(**changes)


def test_the_first_outcome_that_fires_wins_and_later_ones_are_not_rolled() -> None:
    every = FaultInjector(FaultSettings(**dict.fromkeys(outcomes.OUTCOME_ORDER, 1.0)), 3)
    assert outcomes.choose_success_outcome(every) == "outcome_canceled"
    assert every.fired()["outcome_timed_out"] == 0
    assert outcomes.OUTCOME_ORDER == (
        "outcome_canceled",
        "outcome_timed_out",
        "outcome_expired",
        "outcome_partial",
        "outcome_no_outputs",
    )
    last = FaultInjector(FaultSettings(outcome_no_outputs=1.0), 3)
    assert outcomes.choose_success_outcome(last) == "outcome_no_outputs"
    assert outcomes.choose_success_outcome(FaultInjector(FaultSettings(), 3)) is None


def test_rates_of_zero_and_one_draw_no_random_number() -> None:
    def draws(settings: FaultSettings) -> list[bool]:
        injector = FaultInjector(settings, 5)
        return [injector.roll("get_429") for _ in range(40)]

    only = draws(FaultSettings(get_429=0.5))
    fixed_others = FaultSettings(get_429=0.5, outcome_partial=1.0, outcome_canceled=0.0)
    injector = FaultInjector(fixed_others, 5)
    mixed = []
    for _ in range(40):
        outcomes.choose_success_outcome(injector)  # canceled: 0 (no draw); ...partial: 1 (no draw)
        mixed.append(injector.roll("get_429"))
    assert mixed == only and True in only and False in only


# ---------------------------------------------------------------------------- endings
@pytest.mark.parametrize(("count", "kept"), [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (8, 4)])
def test_partial_keeps_the_first_half_rounded_up(count: int, kept: int) -> None:
    assert outcomes.kept_outputs(count) == kept
    run = _run()
    faults = FaultInjector(FaultSettings(), 1)
    outcomes.settle_success(run, "outcome_partial", _files(count), {"t": 1}, faults)
    assert run.status_code == PARTIAL_SUCCEEDED and [f.index for f in run.outputs] == list(range(kept))


@pytest.mark.parametrize(
    ("outcome", "status", "code", "event", "callback_output"),
    [
        (None, "succeeded", None, "run.completed", OUTPUT),
        ("outcome_no_outputs", "succeeded", None, "run.completed", {**OUTPUT, "outputs": []}),
        ("outcome_partial", "partial_succeeded", None, "run.partial_succeeded", OUTPUT),
        ("outcome_canceled", "canceled", "CANCELED", "run.cancelled", None),
        ("outcome_timed_out", "timed_out", "TIMED_OUT", "run.failed", None),
        ("outcome_expired", "expired", "EXPIRED", "run.failed", None),
    ],
)
def test_each_ending_and_its_callback(
    outcome: str | None, status: str, code: str | None, event: str, callback_output: Any
) -> None:
    run = _run()
    outcomes.settle_success(run, outcome, _files(1), {}, FaultInjector(FaultSettings(), 1))
    run.completed_at = datetime(2026, 5, 6, 10, 0, 2, tzinfo=UTC)
    assert run.status_code == status and run.failure_code == code
    body = payload(run, OUTPUT if status in ("succeeded", "partial_succeeded") else None)
    assert body["event"] == event and body["status"] == status
    assert body["output"] == callback_output
    assert body["duration_ms"] == 2000


def test_cancel_spelling_and_failure_envelope() -> None:
    run = _run()
    outcomes.settle_canceled(run, "cancelled", "stopped by ops")
    assert run.status_code == "cancelled" and run.failure_code == "CANCELLED"
    assert payload(run, None)["event"] == "run.cancelled" and payload(run, None)["status"] == "cancelled"
    with pytest.raises(ValueError):
        outcomes.settle_canceled(_run(), "Canceled", "x")

    enveloped = _run()
    always = FaultInjector(FaultSettings(failure_output_envelope=1.0), 1)
    outcomes.settle_failed(enveloped, "INPUT_UNREADABLE", "not an image", "decode", always)
    error = {"code": "INPUT_UNREADABLE", "message": "not an image"}
    assert payload(enveloped, None)["output"] == {"error": error}
    plain = _run()
    never = FaultInjector(FaultSettings(), 1)
    outcomes.settle_failed(plain, "INPUT_UNREADABLE", "not an image", "decode", never)
    assert plain.status_code == FAILED and payload(plain, None)["output"] is None


def test_statuses() -> None:
    assert RUN_STATUSES == (
        "queued",
        "dispatching",
        "running",
        "succeeded",
        "partial_succeeded",
        "failed",
        "timed_out",
        "expired",
        "canceled",
        "cancelled",
    )
    assert frozenset({"queued", "dispatching", "running"}).isdisjoint(TERMINAL)
    assert {SUCCEEDED, PARTIAL_SUCCEEDED, FAILED, EXPIRED, CANCELED} <= TERMINAL


def test_a_finished_run_is_never_settled_again() -> None:
    store = Store()
    run = _run(status="queued")
    store.create_run(lambda: run, lambda r: b"{}", None, "f")
    assert store.start_run(run.id) is not None and store.begin_running(run.id) is not None

    def cancel(target: Run) -> None:
        outcomes.settle_canceled(target, CANCELED, "stop")

    assert store.cancel_run(run.id, cancel, lambda r: []) == []
    assert store.cancel_run(run.id, cancel, lambda r: []) is None  # terminal: nothing to do

    def succeed(target: Run) -> None:
        target.status_code = SUCCEEDED

    assert store.finish_run(run.id, succeed, lambda r: []) is None  # the late result is dropped
    assert run.status_code == CANCELED
    assert not store.is_idle()  # the worker has not let go yet
    store.release_run(run.id)
    assert store.is_idle()
    stats = store.stats()
    assert stats["late_results_dropped"] == 1 and stats["admin_cancellations"] == 1
    assert stats["runs_by_status"]["canceled"] == 1


# ---------------------------------------------------------------------------- figures and headers
def test_answer_time_summary() -> None:
    assert summarise([]) == {"count": 0, "p50": None, "p99": None, "max": None}
    assert summarise([7.25]) == {"count": 1, "p50": 7.25, "p99": 7.25, "max": 7.25}
    hundred = [float(n) for n in range(100, 0, -1)]  # 100 down to 1
    assert summarise(hundred) == {"count": 100, "p50": 50.0, "p99": 99.0, "max": 100.0}
    assert summarise([1.0, 2.0, 3.0, 1000.0]) == {"count": 4, "p50": 2.0, "p99": 1000.0, "max": 1000.0}
    assert summarise([0.12345678])["p50"] == 0.123


def test_rate_limit_headers_per_mode() -> None:
    headers = RateLimitHeaders(clock=lambda: 1_000.4)
    assert headers.headers("none", 1.0, True) == {}
    assert headers.headers("retry_after", 0.2, True) == {"Retry-After": "1"}
    assert headers.headers("retry_after", 0.2, False) == {}
    assert headers.headers("x_ratelimit", 5.0, True) == {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "1006",
    }
    assert headers.headers("both", 0.0, True) == {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "1001",
        "Retry-After": "0",
    }
    assert headers.headers("both", 0.0, False)["X-RateLimit-Remaining"] == "994"  # the 6th request
