"""Fault injection and test modes: settings, their validation, and the seeded dice that decide each fault.

Every setting is a field of ``FaultSettings``, a key of ``POST /_emulator/faults`` (a POST replaces
all settings: keys left out take their defaults, so an empty body clears every fault) and a
command-line flag of the same name with dashes (``--create-answer-reset 0.1``). Bad values are
refused listing every problem (422 with Runflow's envelope over HTTP, ``ValueError`` in Python).

Rates: probabilities in 0..1, default 0.

- ``create_429``: ``POST /runs`` answers 429 ``RATE_LIMITED`` before creating anything.
- ``create_5xx``: ``POST /runs`` answers 503 ``MODEL_UNAVAILABLE`` before creating anything.
- ``create_answer_lost``: ``POST /runs`` creates (or replays) the run, then answers 504
  ``GATEWAY_TIMEOUT``.
- ``create_answer_reset``: ``POST /runs`` creates (or replays) the run, then closes the connection
  without any HTTP answer (the client sees the server disconnect). Tried after
  ``create_answer_lost``, so at most one of the two strikes a request.
- ``get_429``: ``GET /v1/runs/{id}`` and ``GET /v1/runs`` answer 429 ``RATE_LIMITED``.
- ``list_4xx``: ``GET /v1/runs`` answers 403 ``PERMISSION_DENIED``, as for a key without list
  permission (tried after ``get_429``).
- ``callback_drop``: the run's callback is never delivered (no delivery record at all).
- ``callback_duplicate``: the run's callback is delivered twice (two deliveries, same bytes).
- ``output_fetch_error``: a GET of an output URL answers 500.
- ``processing_failure``: the run ends ``failed`` with ``PROCESSING_FAILED`` (before fetching).
- ``outcome_canceled``, ``outcome_timed_out``, ``outcome_expired``, ``outcome_partial``,
  ``outcome_no_outputs``: terminal outcomes of a run that would otherwise succeed, decided when
  it finishes; tried in that order and at most one applies (see ``outcomes``).
- ``output_unchanged``, ``output_blank``, ``output_cropped``, ``output_halo``: doubtful results,
  the way a background replacement fails without any error (see ``doubtful`` for the exact
  pixels). Decided when the run's processing has finished, before the outcome settings; tried in
  that order and at most one applies. Applied to every output of the run:

  - ``output_unchanged``: the input photo as it is (decoded upright, as PNG like every output);
  - ``output_blank``: only the flat colour, at the input's size;
  - ``output_cropped``: the top 40 % of the product's bounding box (the model's mask at 50 %)
    painted the flat colour;
  - ``output_halo``: the original photo left standing in a ring around the product, 4 % of the
    shorter side wide.

  With ``processing: "instant"`` the output is flat already: ``output_unchanged`` answers the
  decoded input (a corrupt body then fails the run with ``INPUT_UNREADABLE``, as a real run
  would), the three others leave it as it is (there is no product). A faulted run whose outcome
  then ends it without outputs still counts the fault as fired. ``GET /_emulator/output-faults``
  lists every run an output fault struck: ``{"runs": {run_id: setting}}``.
- ``failure_output_envelope``: the callback of a run ending ``failed``, ``timed_out`` or ``expired``
  carries ``output: {"error": {"code", "message"}}`` instead of ``null`` (decided when it ends).

Numbers:

- ``callback_delay_s`` (seconds, 0..3600, default 0): added before the first attempt of every
  automatic callback delivery.
- ``list_lag_s`` (seconds, 0..3600, default 0): a run appears in ``GET /v1/runs`` only this long
  after it was created, as when a search index lags behind the store (``GET /v1/runs/{id}`` shows
  it at once). The run's age is checked at each list, so a change applies to every run.
- ``dispatch_delay_s`` (seconds, 0..3600, default 0): how long a run stays ``dispatching`` before
  it turns ``running``. The run keeps its worker meanwhile; a change of the setting applies to runs
  already waiting.
- ``retry_after_s`` (seconds, 0..3600, default 1): the ``Retry-After`` value (rounded up to whole
  seconds) and the offset of ``X-RateLimit-Reset`` from now; see ``rate_limit_headers``.
- ``outputs_per_run`` (integer, 1..8, default 1): how many outputs a succeeded run has.
- ``instant_output_bytes`` (integer, 0..1073741824 = 1 GiB, default 0): with ``processing:
  "instant"``, each output is padded to exactly this many bytes (0 keeps the natural size).

Choices:

- ``idempotency_keys``: ``"honour"`` (default; same key and body replay the first answer, another
  body is 409 ``CONFLICT``) or ``"ignore"`` (the create route ignores ``Idempotency-Key``: every
  POST creates a new, billed run).
- ``rate_limit_headers``: ``"none"`` (default; newest docs: 429s carry no headers),
  ``"retry_after"`` (429s carry ``Retry-After``), ``"x_ratelimit"`` (every answer of the create,
  get and list routes carries ``X-RateLimit-Limit/-Remaining/-Reset``) or ``"both"``.
- ``cancel_spelling``: ``"canceled"`` (default, newest docs) or ``"cancelled"`` (older crawl):
  the ``status_code`` and callback ``status`` of canceled runs.
- ``processing``: ``"real"`` (default; u2netp segmentation) or ``"instant"`` (fetch the input as
  usual, then answer a precomputed flat-colour PNG; see ``instant``).

All decisions come from one ``random.Random``, so with a seed and the same sequence of events the
same faults fire. A rate of exactly 0 or 1 consumes no random number, so fixed settings never
shift the sequence of others.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from backdrop_local.runflow.errors import FieldError, field_error

MAX_DELAY_S = 3600.0
MAX_OUTPUTS = 8
MAX_INSTANT_OUTPUT_BYTES = 1024**3

IdempotencyMode = Literal["honour", "ignore"]
RateLimitHeaderMode = Literal["none", "retry_after", "x_ratelimit", "both"]
CancelSpelling = Literal["canceled", "cancelled"]
ProcessingMode = Literal["real", "instant"]


@dataclass(frozen=True)
class Rule:
    """How a setting is typed and bounded; ``help`` is the command-line help text."""

    kind: Literal["rate", "seconds", "int", "choice"]
    help: str
    high: float = 1.0
    low: float = 0.0
    choices: tuple[str, ...] = ()


def _rate(help_text: str) -> dict[str, Rule]:
    return {"rule": Rule("rate", help_text)}


def _seconds(help_text: str) -> dict[str, Rule]:
    return {"rule": Rule("seconds", help_text, high=MAX_DELAY_S)}


def _int(help_text: str, low: int, high: int) -> dict[str, Rule]:
    return {"rule": Rule("int", help_text, high=high, low=low)}


def _choice(help_text: str, *choices: str) -> dict[str, Rule]:
    return {"rule": Rule("choice", help_text, choices=choices)}


@dataclass(frozen=True)
class FaultSettings:
    """Every fault and test mode (see the module text); the defaults are Runflow behaving well."""

    create_429: float = field(default=0.0, metadata=_rate("POST /runs answers 429 before creating"))
    create_5xx: float = field(default=0.0, metadata=_rate("POST /runs answers 503 before creating"))
    create_answer_lost: float = field(default=0.0, metadata=_rate("POST /runs creates, then answers 504"))
    callback_drop: float = field(default=0.0, metadata=_rate("a run's callback is never delivered"))
    callback_duplicate: float = field(default=0.0, metadata=_rate("a run's callback is delivered twice"))
    callback_delay_s: float = field(
        default=0.0, metadata=_seconds("seconds before a callback's first attempt")
    )
    output_fetch_error: float = field(default=0.0, metadata=_rate("a GET of an output URL answers 500"))
    processing_failure: float = field(default=0.0, metadata=_rate("a run fails with PROCESSING_FAILED"))
    idempotency_keys: IdempotencyMode = field(
        default="honour",
        metadata=_choice("honour or ignore Idempotency-Key on POST /runs", "honour", "ignore"),
    )
    create_answer_reset: float = field(
        default=0.0, metadata=_rate("POST /runs creates, then closes the connection unanswered")
    )
    rate_limit_headers: RateLimitHeaderMode = field(
        default="none",
        metadata=_choice(
            "rate-limit headers on create/get/list", "none", "retry_after", "x_ratelimit", "both"
        ),
    )
    retry_after_s: float = field(default=1.0, metadata=_seconds("Retry-After and X-RateLimit-Reset offset"))
    get_429: float = field(default=0.0, metadata=_rate("GET /v1/runs/{id} and GET /v1/runs answer 429"))
    list_4xx: float = field(default=0.0, metadata=_rate("GET /v1/runs answers 403 PERMISSION_DENIED"))
    outcome_canceled: float = field(default=0.0, metadata=_rate("a run that would succeed ends canceled"))
    cancel_spelling: CancelSpelling = field(
        default="canceled", metadata=_choice("status of canceled runs", "canceled", "cancelled")
    )
    outcome_partial: float = field(
        default=0.0, metadata=_rate("a run that would succeed ends partial_succeeded")
    )
    outcome_timed_out: float = field(default=0.0, metadata=_rate("a run that would succeed ends timed_out"))
    outcome_expired: float = field(default=0.0, metadata=_rate("a run that would succeed ends expired"))
    outcome_no_outputs: float = field(
        default=0.0, metadata=_rate("a succeeded run's callback lists no outputs")
    )
    failure_output_envelope: float = field(
        default=0.0, metadata=_rate("a failed run's callback output is an error envelope")
    )
    dispatch_delay_s: float = field(default=0.0, metadata=_seconds("seconds a run stays dispatching"))
    list_lag_s: float = field(
        default=0.0, metadata=_seconds("seconds after its creation before a run is listed by GET /v1/runs")
    )
    outputs_per_run: int = field(default=1, metadata=_int("outputs of a succeeded run", 1, MAX_OUTPUTS))
    processing: ProcessingMode = field(
        default="real", metadata=_choice("real (u2netp) or instant (precomputed) results", "real", "instant")
    )
    instant_output_bytes: int = field(
        default=0,
        metadata=_int(
            "pad instant outputs to exactly this many bytes (0: natural)", 0, MAX_INSTANT_OUTPUT_BYTES
        ),
    )
    output_unchanged: float = field(default=0.0, metadata=_rate("a run's output is its input, unchanged"))
    output_blank: float = field(default=0.0, metadata=_rate("a run's output is only the colour"))
    output_cropped: float = field(
        default=0.0, metadata=_rate("the top 40 percent of the product box is painted the colour")
    )
    output_halo: float = field(
        default=0.0, metadata=_rate("a ring of the original background is left around the product")
    )

    def __post_init__(self) -> None:
        problems = _problems(asdict(self))
        if problems:
            raise ValueError("; ".join(f"{p['loc'][-1]}: {p['msg']}" for p in problems))
        for name, value in asdict(self).items():
            # FaultSettings(create_429=1) is fine, and stored as the float it stands for.
            object.__setattr__(self, name, coerce(name, value))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FaultSettings:
        """Settings from JSON; keys left out take their defaults. Raises FaultSettingsInvalid listing
        every problem."""
        problems = [
            field_error(["body", key], "Extra inputs are not permitted", "extra_forbidden")
            for key in data
            if key not in RULES
        ]
        values = {key: value for key, value in data.items() if key in RULES}
        problems.extend(_problems(values))
        if problems:
            raise FaultSettingsInvalid(problems)
        return cls(**{key: coerce(key, value) for key, value in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RULES: dict[str, Rule] = {item.name: item.metadata["rule"] for item in fields(FaultSettings)}
RATE_FIELDS = frozenset(name for name, rule in RULES.items() if rule.kind == "rate")


class FaultSettingsInvalid(ValueError):
    def __init__(self, problems: list[FieldError]) -> None:
        super().__init__("invalid fault settings")
        self.problems = problems


def coerce(name: str, value: Any) -> Any:
    """A validated JSON value as the field's Python type (JSON integers are fine for rates)."""
    return float(value) if RULES[name].kind in ("rate", "seconds") else value


def problem(name: str, value: Any) -> FieldError | None:
    """Why ``value`` is not acceptable for the setting ``name``, or None."""
    rule = RULES[name]
    loc: list[str | int] = ["body", name]
    if rule.kind == "choice":
        if not isinstance(value, str) or value not in rule.choices:
            listed = ", ".join(repr(c) for c in rule.choices[:-1]) + f" or {rule.choices[-1]!r}"
            return field_error(loc, f"Input should be {listed}", "literal_error")
        return None
    if rule.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return field_error(loc, "Input should be a valid integer", "int_type")
    elif isinstance(value, bool) or not isinstance(value, int | float):
        return field_error(loc, "Input should be a valid number", "float_type")
    if not rule.low <= value <= rule.high:
        return field_error(loc, f"Input should be between {rule.low:g} and {rule.high:g}", "value_error")
    return None


def _problems(values: Mapping[str, Any]) -> list[FieldError]:
    return [found for key, value in values.items() if (found := problem(key, value)) is not None]


class FaultInjector:
    """Current settings plus the seeded random source; safe to use from any thread."""

    def __init__(self, settings: FaultSettings, seed: int | None) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._settings = settings
        self._seed = seed
        self._rng = random.Random(seed)
        self._fired: dict[str, int] = {name: 0 for name in RULES if name in RATE_FIELDS}

    @property
    def settings(self) -> FaultSettings:
        with self._lock:
            return self._settings

    @property
    def seed(self) -> int | None:
        with self._lock:
            return self._seed

    def configure(self, settings: FaultSettings, seed: int | None = None, *, reseed: bool = False) -> None:
        with self._changed:
            self._settings = settings
            if reseed:
                self._seed = seed
                self._rng = random.Random(seed)
            self._changed.notify_all()

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

    def first(self, names: tuple[str, ...]) -> str | None:
        """The first of ``names`` (tried in order) that fires, or None; later ones are not rolled."""
        for name in names:
            if self.roll(name):
                return name
        return None

    def wait_dispatch(self, since: float, keep_waiting: Callable[[], bool]) -> bool:
        """Wait until ``dispatch_delay_s`` (as currently set) has passed since ``since`` (a
        ``time.monotonic()`` value); False as soon as ``keep_waiting()`` turns false."""
        while True:
            # keep_waiting() may take the store's lock, which is held around rolls: never call it
            # while holding this one.
            if not keep_waiting():
                return False
            with self._changed:
                left = since + self._settings.dispatch_delay_s - time.monotonic()
                if left <= 0:
                    return True
                # Woken early by a settings change; the short cap notices cancels and stops.
                self._changed.wait(min(left, 0.1))

    def fired(self) -> dict[str, int]:
        with self._lock:
            return dict(self._fired)
