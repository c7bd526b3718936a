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
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from backdrop.colours import Colour, ColourRules, parse_colour, parse_colour_rules


class ConfigError(ValueError):
    """A required setting is missing or malformed."""


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


@dataclass(frozen=True)
class Settings:
    """Every setting a Backdrop function may use. Settings only some functions need may be empty;
    each function names what it needs (``require``) and fails its first invocation otherwise."""

    region: str
    jobs_table: str
    idempotency_table: str
    ledger_table: str
    uploads_bucket: str
    upload_prefix: str
    results_bucket: str
    results_prefix: str
    copy_queue_url: str
    uploads_queue_url: str
    runflow_base_url: str
    runflow_api_key_secret: str
    callback_secret_name: str
    callback_url: str
    default_colour: Colour
    colour_rules: ColourRules
    daily_run_budget: int  # runs per UTC day; 0 = unlimited
    event_bus: str  # EventBridge bus for completion events; empty: none published
    presign_expiry_seconds: int
    max_input_bytes: int
    max_output_bytes: int
    allowed_output_hosts: tuple[str, ...]
    # Exactly one origin (scheme://host:port) that may be plain http or loopback. Empty in
    # production; the local stack sets it to its Runflow's origin.
    insecure_output_origin: str
    retention_days: int
    runflow_timeout_seconds: float
    submit_retry_budget_seconds: float
    create_settle_seconds: float
    run_deadline_minutes: int
    reconcile_batch_size: int
    reconcile_min_age_seconds: int
    # The copy queue's visibility timeout: a copy message neither finished nor returned within it
    # may be lost, so the reconciler queues the copy again at most once per this window.
    copy_requeue_after_seconds: int
    secrets_max_age_seconds: int
    # Reuse an earlier result for the same bytes and colour instead of a new run (ReuseResults).
    reuse_results: bool

    @property
    def runflow_origin(self) -> str:
        return _origin(self.runflow_base_url)

    def require(self, *names: str) -> Settings:
        """Fail, naming every missing variable, unless each named setting is set."""
        missing = [ENV_NAMES[name] for name in names if not getattr(self, name)]
        if missing:
            raise ConfigError(f"environment variable(s) required by this function: {', '.join(missing)}")
        return self


# The environment variable behind each setting that a function may require.
ENV_NAMES = {
    "jobs_table": "BACKDROP_JOBS_TABLE",
    "idempotency_table": "BACKDROP_IDEMPOTENCY_TABLE",
    "ledger_table": "BACKDROP_LEDGER_TABLE",
    "uploads_bucket": "BACKDROP_UPLOADS_BUCKET",
    "results_bucket": "BACKDROP_RESULTS_BUCKET",
    "copy_queue_url": "BACKDROP_COPY_QUEUE_URL",
    "uploads_queue_url": "BACKDROP_UPLOADS_QUEUE_URL",
    "runflow_api_key_secret": "BACKDROP_RUNFLOW_API_KEY_SECRET",
    "callback_secret_name": "BACKDROP_CALLBACK_SECRET",
    "callback_url": "BACKDROP_CALLBACK_URL",
}


# ASCII only: int() and float() also read other scripts' digits ("١٢" is 12), "1_000", and float()
# "nan" and "inf", none of which a template parameter can give.
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not _INTEGER.fullmatch(raw):
        raise ConfigError(f"{name} must be an integer, got {raw!r}")
    value = int(raw)
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    value = float(raw) if _NUMBER.fullmatch(raw) else math.nan
    if not math.isfinite(value):  # also a literal too large for a float
        raise ConfigError(f"{name} must be a number, got {raw!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return raw == "true"


def _prefix(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, default).strip().lstrip("/")
    if raw and not raw.endswith("/"):
        raw += "/"
    return raw


def _url(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    raw = env.get(name, "").strip() or (default or "")
    if not raw:
        raise ConfigError(f"environment variable {name} is required")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an absolute http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _optional_url(env: Mapping[str, str], name: str) -> str:
    return _url(env, name) if env.get(name, "").strip() else ""


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build and validate settings from a mapping (the process environment in production)."""
    try:
        default_colour = parse_colour(env.get("BACKDROP_DEFAULT_COLOR", "255,255,255"))
    except ValueError as exc:
        raise ConfigError(f"BACKDROP_DEFAULT_COLOR: {exc}") from exc
    hosts = tuple(
        h.strip().lower() for h in env.get("BACKDROP_ALLOWED_OUTPUT_HOSTS", "").split(",") if h.strip()
    )
    insecure = env.get("BACKDROP_INSECURE_OUTPUT_ORIGIN", "").strip()
    if insecure:
        parts = urlsplit(insecure)
        try:
            parts.port  # noqa: B018 - raises ValueError on a malformed or out-of-range port
        except ValueError as exc:
            raise ConfigError(f"BACKDROP_INSECURE_OUTPUT_ORIGIN has a bad port: {insecure!r}") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(f"BACKDROP_INSECURE_OUTPUT_ORIGIN must be scheme://host:port, got {insecure!r}")
        insecure = _origin(insecure)
    upload_prefix = _prefix(env, "BACKDROP_UPLOAD_PREFIX", "uploads/")
    try:
        rules = parse_colour_rules(env.get("BACKDROP_COLOR_RULES", ""), upload_prefix)
    except ValueError as exc:
        raise ConfigError(f"BACKDROP_COLOR_RULES: {exc}") from exc
    settings = Settings(
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        jobs_table=env.get("BACKDROP_JOBS_TABLE", "").strip(),
        idempotency_table=env.get("BACKDROP_IDEMPOTENCY_TABLE", "").strip(),
        ledger_table=env.get("BACKDROP_LEDGER_TABLE", "").strip(),
        uploads_bucket=env.get("BACKDROP_UPLOADS_BUCKET", "").strip(),
        upload_prefix=upload_prefix,
        results_bucket=env.get("BACKDROP_RESULTS_BUCKET", "").strip(),
        results_prefix=_prefix(env, "BACKDROP_RESULTS_PREFIX", "results/"),
        copy_queue_url=_optional_url(env, "BACKDROP_COPY_QUEUE_URL"),
        uploads_queue_url=_optional_url(env, "BACKDROP_UPLOADS_QUEUE_URL"),
        runflow_base_url=_url(env, "BACKDROP_RUNFLOW_BASE_URL", "https://api.runflow.io"),
        runflow_api_key_secret=env.get("BACKDROP_RUNFLOW_API_KEY_SECRET", "").strip(),
        callback_secret_name=env.get("BACKDROP_CALLBACK_SECRET", "").strip(),
        # The callback function cannot know its own URL without a template cycle, and needs none.
        callback_url=_optional_url(env, "BACKDROP_CALLBACK_URL"),
        default_colour=default_colour,
        colour_rules=rules,
        daily_run_budget=_int(env, "BACKDROP_DAILY_RUN_BUDGET", 0, minimum=0),
        event_bus=env.get("BACKDROP_EVENT_BUS", "").strip(),
        presign_expiry_seconds=_int(env, "BACKDROP_PRESIGN_EXPIRY_SECONDS", 3600, minimum=60),
        max_input_bytes=_int(env, "BACKDROP_MAX_INPUT_BYTES", 50 * 1024 * 1024, minimum=1),
        max_output_bytes=_int(env, "BACKDROP_MAX_OUTPUT_BYTES", 256 * 1024 * 1024, minimum=1),
        allowed_output_hosts=hosts,
        insecure_output_origin=insecure,
        retention_days=_int(env, "BACKDROP_RETENTION_DAYS", 90, minimum=1),
        runflow_timeout_seconds=_float(env, "BACKDROP_RUNFLOW_TIMEOUT_SECONDS", 10.0, minimum=0.1),
        submit_retry_budget_seconds=_float(env, "BACKDROP_SUBMIT_RETRY_BUDGET_SECONDS", 20.0, minimum=0.0),
        create_settle_seconds=_float(env, "BACKDROP_CREATE_SETTLE_SECONDS", 60.0, minimum=0.0),
        run_deadline_minutes=_int(env, "BACKDROP_RUN_DEADLINE_MINUTES", 60, minimum=1),
        reconcile_batch_size=_int(env, "BACKDROP_RECONCILE_BATCH_SIZE", 100, minimum=1),
        reconcile_min_age_seconds=_int(env, "BACKDROP_RECONCILE_MIN_AGE_SECONDS", 120, minimum=0),
        copy_requeue_after_seconds=_int(env, "BACKDROP_COPY_REQUEUE_AFTER_SECONDS", 1800, minimum=1),
        secrets_max_age_seconds=_int(env, "BACKDROP_SECRETS_MAX_AGE_SECONDS", 300, minimum=0),
        reuse_results=_bool(env, "BACKDROP_REUSE_RESULTS", True),
    )
    if not settings.allowed_output_hosts and not settings.insecure_output_origin:
        raise ConfigError("BACKDROP_ALLOWED_OUTPUT_HOSTS must name at least one host")
    return settings


@functools.cache
def get_settings() -> Settings:
    """Settings of this execution environment: read on first use, then reused."""
    return load_settings(os.environ)


def reset_settings() -> None:
    """Forget cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
