"""Validation of a create-run body, reported the way Runflow's FastAPI backend does (422, errors[]).

Strict where the model page is specific: the colours must be JSON integers (not booleans, not
``1.0``, not strings) in 0..255; ``image_url`` must be https unless its exact origin is allowed;
unknown fields, top-level or inside ``input``, are refused so that a misspelt field fails loudly
instead of being ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backdrop_local.runflow.errors import FieldError, field_error, validation_error
from backdrop_local.runflow.netpolicy import NetPolicy, parse_origin

COLOUR_FIELDS = ("color_red", "color_green", "color_blue")
INPUT_FIELDS = ("image_url", *COLOUR_FIELDS)
TOP_FIELDS = ("input", "callback_url", "metadata", "client_ref")
MAX_URL_LENGTH = 2048
MAX_CLIENT_REF_LENGTH = 255


@dataclass(frozen=True)
class RunRequest:
    input: dict[str, Any]
    callback_url: str | None
    metadata: dict[str, Any] | None
    client_ref: str | None


def _missing(loc: list[str | int]) -> FieldError:
    return field_error(loc, "Field required", "missing")


def _url(value: Any, loc: list[str | int], problem: Any, errors: list[FieldError]) -> str | None:
    if not isinstance(value, str):
        errors.append(field_error(loc, "Input should be a valid string", "string_type"))
        return None
    if len(value) > MAX_URL_LENGTH:
        errors.append(
            field_error(loc, f"URL should have at most {MAX_URL_LENGTH} characters", "string_too_long")
        )
        return None
    message = problem(value)
    if message:
        errors.append(
            field_error(loc, message, "url_parsing" if parse_origin(value) is None else "value_error")
        )
        return None
    return value


def validate_run_request(body: Any, policy: NetPolicy) -> RunRequest:
    """The request, or raises ApiError 422 listing every problem at once."""
    if not isinstance(body, dict):
        raise validation_error([field_error(["body"], "Input should be a valid dictionary", "dict_type")])
    errors: list[FieldError] = [
        field_error(["body", key], "Extra inputs are not permitted", "extra_forbidden")
        for key in body
        if key not in TOP_FIELDS
    ]
    clean_input: dict[str, Any] = {}
    raw_input = body.get("input")
    if "input" not in body:
        errors.append(_missing(["body", "input"]))
    elif not isinstance(raw_input, dict):
        errors.append(field_error(["body", "input"], "Input should be a valid dictionary", "dict_type"))
    else:
        errors.extend(
            field_error(["body", "input", key], "Extra inputs are not permitted", "extra_forbidden")
            for key in raw_input
            if key not in INPUT_FIELDS
        )
        if "image_url" not in raw_input:
            errors.append(_missing(["body", "input", "image_url"]))
        else:
            url = _url(
                raw_input["image_url"], ["body", "input", "image_url"], policy.image_url_problem, errors
            )
            if url is not None:
                clean_input["image_url"] = url
        for name in COLOUR_FIELDS:
            loc: list[str | int] = ["body", "input", name]
            if name not in raw_input:
                errors.append(_missing(loc))
                continue
            value = raw_input[name]
            if isinstance(value, bool) or not isinstance(value, int):
                errors.append(field_error(loc, "Input should be a valid integer", "int_type"))
            elif value < 0:
                errors.append(
                    field_error(loc, "Input should be greater than or equal to 0", "greater_than_equal")
                )
            elif value > 255:
                errors.append(
                    field_error(loc, "Input should be less than or equal to 255", "less_than_equal")
                )
            else:
                clean_input[name] = value

    callback_url = body.get("callback_url")
    if callback_url is not None:
        callback_url = _url(callback_url, ["body", "callback_url"], policy.callback_url_problem, errors)

    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        errors.append(field_error(["body", "metadata"], "Input should be a valid dictionary", "dict_type"))

    client_ref = body.get("client_ref")
    if client_ref is not None:
        if not isinstance(client_ref, str):
            errors.append(
                field_error(["body", "client_ref"], "Input should be a valid string", "string_type")
            )
        elif len(client_ref) > MAX_CLIENT_REF_LENGTH:
            errors.append(
                field_error(
                    ["body", "client_ref"],
                    f"String should have at most {MAX_CLIENT_REF_LENGTH} characters",
                    "string_too_long",
                )
            )
    if errors:
        raise validation_error(errors)
    # Key order as the model page lists the inputs.
    ordered = {key: clean_input[key] for key in INPUT_FIELDS}
    return RunRequest(input=ordered, callback_url=callback_url, metadata=metadata, client_ref=client_ref)
