"""The settings declaration (``backdrop.config``) and template.yaml say the same thing: each
parameter-backed setting's Globals variable is ``!Ref`` that parameter with the declared default,
and each tuning knob written out in Globals has the value an unset variable is read as."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode_str

from backdrop.config import ENV_NAMES, PARAMETER_ENV, RESOURCE_PARAMETERS, VARIABLES, load_settings

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, matches = decode_str(TEMPLATE.read_text(encoding="utf-8"))
    assert not matches and decoded is not None
    return dict(json.loads(json.dumps(decoded, default=str)))


@pytest.fixture(scope="module")
def shared(template: dict[str, Any]) -> dict[str, Any]:
    return dict(template["Globals"]["Function"]["Environment"]["Variables"])


def test_every_parameter_backed_setting_is_its_parameter_with_its_default(
    template: dict[str, Any], shared: dict[str, Any]
) -> None:
    backed = [v for v in VARIABLES.values() if v.parameter]
    assert {v.parameter for v in backed} >= {"DailyRunBudget", "ReuseResults", "PricePerRunUsd"}
    for variable in backed:
        assert shared[variable.name] == {"Ref": variable.parameter}, variable.name
        default = str(template["Parameters"][variable.parameter]["Default"])
        assert default == (variable.parameter_default or variable.default), variable.parameter


def test_every_globals_variable_of_the_template_is_declared(
    template: dict[str, Any], shared: dict[str, Any]
) -> None:
    assert {name for name in shared if name.startswith("BACKDROP_")} <= set(ENV_NAMES.values())
    for name, value in shared.items():
        parameter = value.get("Ref") if isinstance(value, dict) else None
        if name.startswith("BACKDROP_") and parameter in template["Parameters"]:
            assert PARAMETER_ENV.get(parameter) == name, f"{name} is declared without its parameter"


def test_tuning_knobs_written_in_globals_are_the_defaults(shared: dict[str, Any]) -> None:
    knobs = [v for v in VARIABLES.values() if not v.parameter and isinstance(shared.get(v.name), str)]
    assert {v.name for v in knobs} >= {
        "BACKDROP_RUNFLOW_TIMEOUT_SECONDS",
        "BACKDROP_COPY_REQUEUE_AFTER_SECONDS",
    }
    env = {"BACKDROP_ALLOWED_OUTPUT_HOSTS": "*.runflow.io"}
    for variable in knobs:
        assert variable.load({variable.name: shared[variable.name]}) == variable.load({}), variable.name
    assert load_settings(env) == load_settings(env | {v.name: shared[v.name] for v in knobs})


def test_the_operator_commands_resource_parameters_have_the_templates_defaults(
    template: dict[str, Any],
) -> None:
    for parameter, default in RESOURCE_PARAMETERS.items():
        assert int(template["Parameters"][parameter]["Default"]) == default, parameter
