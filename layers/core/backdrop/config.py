"""Configuration of the Backdrop functions, read from the environment.

Read lazily (first use, not import) and validated once per execution environment, so a bad
deployment fails on its first invocation with a message naming the variable, and tests can set
the environment before anything reads it.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from backdrop.colours import Colour, ColourRules, parse_colour, parse_colour_rules
from backdrop.profiles import RenditionsError, Spec, parse_renditions


class ConfigError(ValueError):
    """A required setting is missing or malformed."""


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


# ASCII only: int() and float() also read other scripts' digits ("١٢" is 12), "1_000", and float()
# "nan" and "inf", none of which a template parameter can give.
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")

# Reads one variable: (environment, its name, the text an unset variable stands for) to the value.
# Every error names the variable.
Reader = Callable[[Mapping[str, str], str, str], Any]


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, default).strip()


def _integer(minimum: int) -> Reader:
    def read(env: Mapping[str, str], name: str, default: str) -> int:
        raw = env.get(name, "").strip() or default
        if not _INTEGER.fullmatch(raw):
            raise ConfigError(f"{name} must be an integer, got {raw!r}")
        value = int(raw)
        if value < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {value}")
        return value

    return read


def _number(minimum: float) -> Reader:
    def read(env: Mapping[str, str], name: str, default: str) -> float:
        raw = env.get(name, "").strip() or default
        value = float(raw) if _NUMBER.fullmatch(raw) else math.nan
        if not math.isfinite(value):  # also a literal too large for a float
            raise ConfigError(f"{name} must be a number, got {raw!r}")
        if value < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {value}")
        return value

    return read


def _decimal(env: Mapping[str, str], name: str, default: str) -> Decimal:
    raw = env.get(name, "").strip() or default
    if not _DECIMAL.fullmatch(raw):
        raise ConfigError(f"{name} must be a decimal number, got {raw!r}")
    return Decimal(raw)


def _bool(env: Mapping[str, str], name: str, default: str) -> bool:
    raw = env.get(name, "").strip().lower() or default
    if raw not in ("true", "false"):
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return raw == "true"


def _prefix(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, default).strip().lstrip("/")
    if raw and not raw.endswith("/"):
        raw += "/"
    return raw


def _choice(*allowed: str) -> Reader:
    def read(env: Mapping[str, str], name: str, default: str) -> str:
        raw = env.get(name, "").strip().lower() or default
        if raw not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
        return raw

    return read


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    if not raw:
        raise ConfigError(f"environment variable {name} is required")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an absolute http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _optional_url(env: Mapping[str, str], name: str, default: str) -> str:
    return _url(env, name, default) if env.get(name, "").strip() else ""


def _region(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name) or env.get("AWS_DEFAULT_REGION") or default


def _colour(env: Mapping[str, str], name: str, default: str) -> Colour:
    try:
        return parse_colour(env.get(name, default))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def _colour_rules(env: Mapping[str, str], name: str, default: str) -> ColourRules:
    try:
        # Rules must lie under the upload prefix, which is read as its own setting reads it.
        return parse_colour_rules(env.get(name, default), UPLOAD_PREFIX.load(env))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def _renditions(env: Mapping[str, str], name: str, default: str) -> Mapping[str, Spec]:
    try:
        return parse_renditions(env.get(name, default))
    except RenditionsError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def _hosts(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in env.get(name, default).split(",") if h.strip())


def _insecure_origin(env: Mapping[str, str], name: str, default: str) -> str:
    insecure = env.get(name, default).strip()
    if not insecure:
        return ""
    parts = urlsplit(insecure)
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed or out-of-range port
    except ValueError as exc:
        raise ConfigError(f"{name} has a bad port: {insecure!r}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"{name} must be scheme://host:port, got {insecure!r}")
    return _origin(insecure)


@dataclass(frozen=True)
class Variable:
    """Where one setting comes from: its environment variable, how it is read, the text an unset
    variable stands for, and the template parameter behind it in template.yaml's Globals, if any."""

    name: str
    read: Reader
    default: str = ""
    parameter: str | None = None
    # The parameter's own Default, where it differs from an unset variable's (a deployed stack
    # may choose a safer value than a function given nothing).
    parameter_default: str | None = None

    def load(self, env: Mapping[str, str]) -> Any:
        return self.read(env, self.name, self.default)


UPLOAD_PREFIX = Variable("BACKDROP_UPLOAD_PREFIX", _prefix, "uploads/", "UploadPrefix")


def _from(variable: Variable) -> Mapping[str, Variable]:
    return {"variable": variable}


@dataclass(frozen=True)
class Settings:
    """Every setting a Backdrop function may use, each declared once here with the variable it is
    read from (``load_settings``, ``ENV_NAMES`` and the operator command's parameter mapping are
    derived from these). Settings only some functions need may be empty; each function names what
    it needs (``require``) and fails its first invocation otherwise."""

    region: str = field(metadata=_from(Variable("AWS_REGION", _region, "us-east-1")))
    jobs_table: str = field(metadata=_from(Variable("BACKDROP_JOBS_TABLE", _text)))
    idempotency_table: str = field(metadata=_from(Variable("BACKDROP_IDEMPOTENCY_TABLE", _text)))
    ledger_table: str = field(metadata=_from(Variable("BACKDROP_LEDGER_TABLE", _text)))
    uploads_bucket: str = field(metadata=_from(Variable("BACKDROP_UPLOADS_BUCKET", _text)))
    upload_prefix: str = field(metadata=_from(UPLOAD_PREFIX))
    results_bucket: str = field(metadata=_from(Variable("BACKDROP_RESULTS_BUCKET", _text)))
    results_prefix: str = field(
        metadata=_from(Variable("BACKDROP_RESULTS_PREFIX", _prefix, "results/", "ResultsPrefix"))
    )
    copy_queue_url: str = field(metadata=_from(Variable("BACKDROP_COPY_QUEUE_URL", _optional_url)))
    uploads_queue_url: str = field(metadata=_from(Variable("BACKDROP_UPLOADS_QUEUE_URL", _optional_url)))
    runflow_base_url: str = field(
        metadata=_from(
            Variable("BACKDROP_RUNFLOW_BASE_URL", _url, "https://api.runflow.io", "RunflowBaseUrl")
        )
    )
    runflow_api_key_secret: str = field(metadata=_from(Variable("BACKDROP_RUNFLOW_API_KEY_SECRET", _text)))
    callback_secret_name: str = field(metadata=_from(Variable("BACKDROP_CALLBACK_SECRET", _text)))
    # The callback function cannot know its own URL without a template cycle, and needs none.
    callback_url: str = field(metadata=_from(Variable("BACKDROP_CALLBACK_URL", _optional_url)))
    default_colour: Colour = field(
        metadata=_from(Variable("BACKDROP_DEFAULT_COLOR", _colour, "255,255,255", "DefaultBackgroundColor"))
    )
    colour_rules: ColourRules = field(
        metadata=_from(
            Variable("BACKDROP_COLOR_RULES", _colour_rules, "", "ColorRules", parameter_default="{}")
        )
    )
    # Rendition name → how it is made from every result (``backdrop.profiles``); empty: none.
    renditions: Mapping[str, Spec] = field(
        metadata=_from(Variable("BACKDROP_RENDITIONS", _renditions, "", "Renditions", parameter_default="{}"))
    )
    # Runs per UTC day; 0 = unlimited (a stack caps it by default).
    daily_run_budget: int = field(
        metadata=_from(
            Variable("BACKDROP_DAILY_RUN_BUDGET", _integer(0), "0", "DailyRunBudget", parameter_default="500")
        )
    )
    # EventBridge bus for completion events; empty: none published (a stack uses its default bus).
    event_bus: str = field(
        metadata=_from(Variable("BACKDROP_EVENT_BUS", _text, "", "EventBusName", parameter_default="default"))
    )
    # Price of one run in USD, for the operator command's estimates and reports.
    price_per_run_usd: Decimal = field(
        metadata=_from(Variable("BACKDROP_PRICE_PER_RUN_USD", _decimal, "0.12", "PricePerRunUsd"))
    )
    presign_expiry_seconds: int = field(
        metadata=_from(
            Variable("BACKDROP_PRESIGN_EXPIRY_SECONDS", _integer(60), "3600", "PresignExpirySeconds")
        )
    )
    max_input_bytes: int = field(
        metadata=_from(Variable("BACKDROP_MAX_INPUT_BYTES", _integer(1), "52428800", "MaxInputBytes"))
    )
    max_output_bytes: int = field(
        metadata=_from(Variable("BACKDROP_MAX_OUTPUT_BYTES", _integer(1), "268435456", "MaxOutputBytes"))
    )
    allowed_output_hosts: tuple[str, ...] = field(
        metadata=_from(
            Variable(
                "BACKDROP_ALLOWED_OUTPUT_HOSTS",
                _hosts,
                "",
                "AllowedOutputHosts",
                parameter_default="*.runflow.io,*.r2.cloudflarestorage.com",
            )
        )
    )
    # Exactly one origin (scheme://host:port) that may be plain http or loopback. Empty in
    # production; the local stack sets it to its Runflow's origin.
    insecure_output_origin: str = field(
        metadata=_from(Variable("BACKDROP_INSECURE_OUTPUT_ORIGIN", _insecure_origin))
    )
    retention_days: int = field(
        metadata=_from(Variable("BACKDROP_RETENTION_DAYS", _integer(1), "90", "RetentionDays"))
    )
    runflow_timeout_seconds: float = field(
        metadata=_from(Variable("BACKDROP_RUNFLOW_TIMEOUT_SECONDS", _number(0.1), "10"))
    )
    submit_retry_budget_seconds: float = field(
        metadata=_from(Variable("BACKDROP_SUBMIT_RETRY_BUDGET_SECONDS", _number(0.0), "20"))
    )
    create_settle_seconds: float = field(
        metadata=_from(Variable("BACKDROP_CREATE_SETTLE_SECONDS", _number(0.0), "60"))
    )
    run_deadline_minutes: int = field(
        metadata=_from(Variable("BACKDROP_RUN_DEADLINE_MINUTES", _integer(1), "60", "RunDeadlineMinutes"))
    )
    reconcile_batch_size: int = field(
        metadata=_from(Variable("BACKDROP_RECONCILE_BATCH_SIZE", _integer(1), "100"))
    )
    reconcile_min_age_seconds: int = field(
        metadata=_from(Variable("BACKDROP_RECONCILE_MIN_AGE_SECONDS", _integer(0), "120"))
    )
    # The copy queue's visibility timeout: a copy message neither finished nor returned within it
    # may be lost, so the reconciler queues the copy again at most once per this window.
    copy_requeue_after_seconds: int = field(
        metadata=_from(Variable("BACKDROP_COPY_REQUEUE_AFTER_SECONDS", _integer(1), "1800"))
    )
    secrets_max_age_seconds: int = field(
        metadata=_from(Variable("BACKDROP_SECRETS_MAX_AGE_SECONDS", _integer(0), "300"))
    )
    # Reuse an earlier result for the same bytes and colour instead of a new run.
    reuse_results: bool = field(
        metadata=_from(Variable("BACKDROP_REUSE_RESULTS", _bool, "true", "ReuseResults"))
    )

    # What the copy worker does with the quality checks' verdict (README "The quality gate"):
    # off (no checks), flag (publish and record it), hold (a doubtful result waits for a person).
    quality_gate: str = field(
        metadata=_from(
            Variable("BACKDROP_QUALITY_GATE", _choice("off", "flag", "hold"), "flag", "QualityGate")
        )
    )
    # Where held results wait in the results bucket, apart from the published ones.
    review_prefix: str = field(
        metadata=_from(Variable("BACKDROP_REVIEW_PREFIX", _prefix, "review/", "ReviewPrefix"))
    )

    @property
    def holds_for_review(self) -> bool:
        return self.quality_gate == "hold"

    @property
    def runflow_origin(self) -> str:
        return _origin(self.runflow_base_url)

    def require(self, *names: str) -> Settings:
        """Fail, naming every missing variable, unless each named setting is set."""
        unknown = set(names) - set(VARIABLES)
        if unknown:
            raise ValueError(f"no such setting: {', '.join(sorted(unknown))}")
        missing = [
            variable.name for name, variable in VARIABLES.items() if name in names and not getattr(self, name)
        ]
        if missing:
            raise ConfigError(f"environment variable(s) required by this function: {', '.join(missing)}")
        return self


# Each setting's variable, in declaration order.
VARIABLES: dict[str, Variable] = {f.name: f.metadata["variable"] for f in fields(Settings)}
# The environment variable behind each setting.
ENV_NAMES: dict[str, str] = {name: variable.name for name, variable in VARIABLES.items()}
# Template parameter → the functions' environment variable (template.yaml, Globals).
PARAMETER_ENV: dict[str, str] = {v.parameter: v.name for v in VARIABLES.values() if v.parameter}
# Template parameters of the stack's resources rather than of a function's environment, which the
# operator command reads for its estimates, with their template.yaml defaults.
RESOURCE_PARAMETERS: dict[str, int] = {"SubmitMaxConcurrency": 5, "ReconcileIntervalMinutes": 5}


def needs(*names: str) -> frozenset[str]:
    """A named group of settings a function needs (its variables must be set); groups compose with ``|``."""
    unknown = set(names) - set(VARIABLES)
    if unknown:
        raise ValueError(f"no such setting: {', '.join(sorted(unknown))}")
    return frozenset(names)


# What the functions need, in groups by concern; each handler composes its own (``NEEDS``).
JOBS = needs("jobs_table")
IDEMPOTENCY = needs("idempotency_table")
RUN_BUDGET = needs("ledger_table")
UPLOADS = needs("uploads_bucket")
RESULTS = needs("results_bucket")
RUNFLOW = needs("runflow_api_key_secret")  # reading runs
RUN_CREATION = RUNFLOW | needs("callback_url")  # a new run names where Runflow calls back
CALLBACK_SIGNATURES = needs("callback_secret_name")
COPY_QUEUE = needs("copy_queue_url")
UPLOADS_QUEUE = needs("uploads_queue_url")


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build and validate settings from a mapping (the process environment in production)."""
    settings = Settings(**{name: variable.load(env) for name, variable in VARIABLES.items()})
    if not settings.allowed_output_hosts and not settings.insecure_output_origin:
        raise ConfigError(f"{ENV_NAMES['allowed_output_hosts']} must name at least one host")
    _check_review_prefix(settings)
    return settings


def _check_review_prefix(settings: Settings) -> None:
    """Held results must never be found under the results prefix, nor published ones under the
    review prefix: a shop reading one must not see the other's objects."""
    review, results = settings.review_prefix, settings.results_prefix
    if not review:
        raise ConfigError(f"{ENV_NAMES['review_prefix']} must not be empty")
    if settings.holds_for_review and (review.startswith(results) or results.startswith(review)):
        raise ConfigError(
            f"{ENV_NAMES['review_prefix']} ({review!r}) and {ENV_NAMES['results_prefix']} ({results!r}) "
            "must not overlap (neither may be a prefix of the other) when the quality gate is hold"
        )


@functools.cache
def get_settings() -> Settings:
    """Settings of this execution environment: read on first use, then reused."""
    return load_settings(os.environ)


def reset_settings() -> None:
    """Forget cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
