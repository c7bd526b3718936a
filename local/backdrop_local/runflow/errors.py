"""The error envelope every Runflow endpoint answers with: ``{"code", "message", "errors"}``."""

from __future__ import annotations

from typing import Any

FieldError = dict[str, Any]  # pydantic style: {"loc": [...], "msg": str, "type": str}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "errors": self.errors}


def field_error(loc: list[str | int], msg: str, kind: str) -> FieldError:
    return {"loc": loc, "msg": msg, "type": kind}


def validation_error(errors: list[FieldError], message: str = "Request validation failed") -> ApiError:
    return ApiError(422, "VALIDATION_ERROR", message, errors)


class DropConnection(Exception):
    """The server closes the client's connection without sending any HTTP answer."""
