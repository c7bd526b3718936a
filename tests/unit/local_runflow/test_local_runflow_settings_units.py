"""Unit tests of the settings (types, bounds, choices), answer-time figures and rate-limit headers.
No sockets."""

from __future__ import annotations

from typing import Any

import pytest

from backdrop_local.runflow.faults import FaultSettings, FaultSettingsInvalid
from backdrop_local.runflow.ratelimit import RateLimitHeaders
from backdrop_local.runflow.store import summarise


def test_new_settings_have_their_documented_defaults() -> None:
    settings = FaultSettings()
    assert settings.idempotency_keys == "honour" and settings.rate_limit_headers == "none"
    assert settings.retry_after_s == 1.0 and settings.outputs_per_run == 1
    assert settings.processing == "real" and settings.instant_output_bytes == 0
    assert settings.create_answer_reset == settings.get_429 == settings.list_4xx == 0.0


def test_from_mapping_types_values_and_lists_every_problem() -> None:
    settings = FaultSettings.from_mapping({"retry_after_s": 2, "idempotency_keys": "ignore"})
    assert settings == FaultSettings(retry_after_s=2.0, idempotency_keys="ignore")
    assert isinstance(settings.retry_after_s, float)
    with pytest.raises(FaultSettingsInvalid) as caught:
        FaultSettings.from_mapping(
            {
                "idempotency_keys": "HONOUR",
                "outputs_per_run": 1.0,
                "instant_output_bytes": 2**40,
                "rate_limit_headers": ["both"],
                "retry_after_s": True,
                "get_429": 7,
            }
        )
    assert {p["loc"][-1]: p["type"] for p in caught.value.problems} == {
        "idempotency_keys": "literal_error",
        "outputs_per_run": "int_type",
        "instant_output_bytes": "value_error",
        "rate_limit_headers": "literal_error",
        "retry_after_s": "float_type",
        "get_429": "value_error",
    }
    messages = {p["loc"][-1]: p["msg"] for p in caught.value.problems}
    assert messages["idempotency_keys"] == "Input should be 'honour' or 'ignore'"


@pytest.mark.parametrize(
    "changes",
    [
        {"idempotency_keys": "never"},
        {"retry_after_s": 3601.0},
        {"rate_limit_headers": "x-ratelimit"},
        {"outputs_per_run": 0},
        {"outputs_per_run": 9},
        {"instant_output_bytes": -5},
        {"processing": "fast"},
    ],
)
def test_constructing_bad_settings_in_python_raises(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultSettings(**changes)


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
