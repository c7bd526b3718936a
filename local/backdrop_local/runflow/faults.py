"""Fault injection: settings, their validation, and the seeded dice that decide each fault.

Rates are probabilities in 0..1; ``callback_delay_s`` is a number of seconds (0..3600) added before
the first attempt of every automatic callback delivery. All decisions come from one
``random.Random``, so with a seed and the same sequence of events the same faults fire. A rate of
exactly 0 or 1 consumes no random number, so fixed settings never shift the sequence of others.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from backdrop_local.runflow.errors import FieldError, field_error

MAX_CALLBACK_DELAY_S = 3600.0
RATE_FIELDS = frozenset(
    {
        "create_429",
        "create_5xx",
        "create_answer_lost",
        "callback_drop",
        "callback_duplicate",
        "output_fetch_error",
        "processing_failure",
    }
)


@dataclass(frozen=True)
class FaultSettings:
    create_429: float = 0.0  # POST /runs answers 429 RATE_LIMITED before creating anything
    create_5xx: float = 0.0  # POST /runs answers 503 MODEL_UNAVAILABLE before creating anything
    create_answer_lost: float = 0.0  # POST /runs creates (or replays) the run, then answers 504
    callback_drop: float = 0.0  # the run's callback is never delivered (no delivery record at all)
    callback_duplicate: float = 0.0  # the run's callback is delivered twice (two deliveries)
    callback_delay_s: float = 0.0  # seconds to wait before the first attempt of an automatic delivery
    output_fetch_error: float = 0.0  # a GET of an output URL answers 500
    processing_failure: float = 0.0  # the run ends failed with PROCESSING_FAILED

    def __post_init__(self) -> None:
        problems = _problems(asdict(self))
        if problems:
            raise ValueError("; ".join(f"{p['loc'][-1]}: {p['msg']}" for p in problems))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FaultSettings:
        """Settings from JSON; keys left out are 0. Raises FaultSettingsInvalid listing every problem."""
        known = {f.name for f in fields(cls)}
        problems = [
            field_error(["body", key], "Extra inputs are not permitted", "extra_forbidden")
            for key in data
            if key not in known
        ]
        values = {key: value for key, value in data.items() if key in known}
        problems.extend(_problems(values))
        if problems:
            raise FaultSettingsInvalid(problems)
        return cls(**{key: float(value) for key, value in values.items()})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class FaultSettingsInvalid(ValueError):
    def __init__(self, problems: list[FieldError]) -> None:
        super().__init__("invalid fault settings")
        self.problems = problems


def _problems(values: Mapping[str, Any]) -> list[FieldError]:
    problems: list[FieldError] = []
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(field_error(["body", key], "Input should be a valid number", "float_type"))
            continue
        upper = MAX_CALLBACK_DELAY_S if key == "callback_delay_s" else 1.0
        if not 0.0 <= float(value) <= upper:
            problems.append(
                field_error(["body", key], f"Input should be between 0 and {upper:g}", "value_error")
            )
    return problems


class FaultInjector:
    """Current settings plus the seeded random source; safe to use from any thread."""

    def __init__(self, settings: FaultSettings, seed: int | None) -> None:
        self._lock = threading.Lock()
        self._settings = settings
        self._seed = seed
        self._rng = random.Random(seed)
        self._fired: dict[str, int] = {f.name: 0 for f in fields(FaultSettings) if f.name in RATE_FIELDS}

    @property
    def settings(self) -> FaultSettings:
        with self._lock:
            return self._settings

    @property
    def seed(self) -> int | None:
        with self._lock:
            return self._seed

    def configure(self, settings: FaultSettings, seed: int | None = None, *, reseed: bool = False) -> None:
        with self._lock:
            self._settings = settings
            if reseed:
                self._seed = seed
                self._rng = random.Random(seed)

    def roll(self, name: str) -> bool:
        """True if the fault ``name`` fires this time."""
        if name not in RATE_FIELDS:
            raise ValueError(f"{name} is not a fault rate")
        with self._lock:
            rate = float(getattr(self._settings, name))
            if rate <= 0.0:
                return False
            fired = rate >= 1.0 or self._rng.random() < rate
            if fired:
                self._fired[name] += 1
            return fired

    def fired(self) -> dict[str, int]:
        with self._lock:
            return dict(self._fired)
