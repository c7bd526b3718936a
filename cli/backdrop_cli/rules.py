"""The pipeline's rules as the stack's functions apply them, from the stack's template parameters.

Nothing here decides anything of its own: the functions' settings are built by the core's own
``load_settings`` from the environment the template gives them (the same parameter → variable
mapping as the template's Globals), and colours, job identity and rejections are the core's
functions. So ``plan`` predicts exactly the job ids and rejections the submit path will make.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from backdrop.colours import Colour, ColourChoice, choose_colour
from backdrop.config import ConfigError, Settings, load_settings
from backdrop.submission import rejection_of
from backdrop.uploads import SourceObject, job_id_for
from backdrop_cli.errors import BadUsage

# Template parameter → the functions' environment variable (template.yaml, Globals).
PARAMETER_ENV = {
    "DefaultBackgroundColor": "BACKDROP_DEFAULT_COLOR",
    "ColorRules": "BACKDROP_COLOR_RULES",
    "UploadPrefix": "BACKDROP_UPLOAD_PREFIX",
    "ResultsPrefix": "BACKDROP_RESULTS_PREFIX",
    "MaxInputBytes": "BACKDROP_MAX_INPUT_BYTES",
    "MaxOutputBytes": "BACKDROP_MAX_OUTPUT_BYTES",
    "AllowedOutputHosts": "BACKDROP_ALLOWED_OUTPUT_HOSTS",
    "DailyRunBudget": "BACKDROP_DAILY_RUN_BUDGET",
    "RetentionDays": "BACKDROP_RETENTION_DAYS",
    "RunDeadlineMinutes": "BACKDROP_RUN_DEADLINE_MINUTES",
    "PresignExpirySeconds": "BACKDROP_PRESIGN_EXPIRY_SECONDS",
    "ReuseResults": "BACKDROP_REUSE_RESULTS",
}

DEFAULT_PRICE = "0.12"  # template.yaml PricePerRunUsd default
DEFAULT_SUBMIT_CONCURRENCY = 5  # template.yaml SubmitMaxConcurrency default


@dataclass(frozen=True)
class Rules:
    settings: Settings
    price_per_run: Decimal
    submit_concurrency: int
    reconcile_interval_minutes: int

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> Rules:
        env = {var: parameters[name] for name, var in PARAMETER_ENV.items() if name in parameters}
        try:
            settings = load_settings(env)
        except ConfigError as exc:
            raise BadUsage(f"the stack's parameters are not valid: {exc}") from exc
        raw_price = parameters.get("PricePerRunUsd", DEFAULT_PRICE)
        try:
            price = Decimal(raw_price)
        except InvalidOperation as exc:
            raise BadUsage(f"the stack's PricePerRunUsd is not a number: {raw_price!r}") from exc
        return cls(
            settings=settings,
            price_per_run=price,
            submit_concurrency=_int(parameters, "SubmitMaxConcurrency", DEFAULT_SUBMIT_CONCURRENCY),
            reconcile_interval_minutes=_int(parameters, "ReconcileIntervalMinutes", 5),
        )

    @property
    def upload_prefix(self) -> str:
        return self.settings.upload_prefix

    @property
    def daily_run_budget(self) -> int:
        return self.settings.daily_run_budget

    def colour(self, source: SourceObject, override: Colour | None) -> ColourChoice:
        """The colour the submit path gives this object version (``override``: ``--color``)."""
        return choose_colour(
            source.metadata,
            source.upload.key,
            default=self.settings.default_colour,
            rules=self.settings.colour_rules,
            override=override,
        )

    def job_id(self, source: SourceObject, choice: ColourChoice) -> str:
        return job_id_for(source.upload, choice.tag)

    def rejection(self, source: SourceObject, choice: ColourChoice) -> tuple[str, str] | None:
        """Why the submit path would reject it (error code, message), in its order, or None."""
        if choice.colour is None:
            return "INVALID_COLOR", choice.problem or "invalid colour"
        return rejection_of(source, self.settings.max_input_bytes)

    def cost(self, runs: int) -> Decimal:
        return self.price_per_run * runs


def _int(parameters: Mapping[str, str], name: str, default: int) -> int:
    raw = parameters.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError as exc:
        raise BadUsage(f"the stack's {name} is not an integer: {raw!r}") from exc


def usd(amount: Decimal) -> str:
    return f"${amount:,.2f}"
