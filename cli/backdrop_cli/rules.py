"""The pipeline's rules as the stack's functions apply them, from the stack's template parameters.

Nothing here decides anything of its own: the functions' settings are built by the core's own
``load_settings`` from the environment the template gives them (the parameter → variable mapping
is the core's settings declaration, ``PARAMETER_ENV``, as in the template's Globals), and colours,
job identity and rejections are the core's functions. So ``plan`` predicts exactly the job ids and
rejections the submit path will make.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from backdrop.colours import Colour, ColourChoice, choose_colour
from backdrop.config import PARAMETER_ENV, RESOURCE_PARAMETERS, ConfigError, Settings, load_settings
from backdrop.submission import rejection_of
from backdrop.uploads import SourceObject, job_id_for
from backdrop_cli.errors import BadUsage


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
        return cls(
            settings=settings,
            price_per_run=settings.price_per_run_usd,
            submit_concurrency=_int(parameters, "SubmitMaxConcurrency"),
            reconcile_interval_minutes=_int(parameters, "ReconcileIntervalMinutes"),
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


def _int(parameters: Mapping[str, str], name: str) -> int:
    """A parameter of the stack's resources (not of a function's environment)."""
    raw = parameters.get(name, "")
    try:
        return int(raw) if raw.strip() else RESOURCE_PARAMETERS[name]
    except ValueError as exc:
        raise BadUsage(f"the stack's {name} is not an integer: {raw!r}") from exc


def usd(amount: Decimal) -> str:
    return f"${amount:,.2f}"
