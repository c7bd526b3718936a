"""Secrets in AWS Secrets Manager, read through Powertools Parameters with an in-memory cache.

Never logged: values are only ever handed to the HTTP client (API key) or HMAC (signing secrets).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities import parameters


class SecretError(RuntimeError):
    """A secret is missing or not in the documented shape."""


@dataclass(frozen=True)
class SigningSecrets:
    current: str
    previous: str | None

    def all(self) -> tuple[str, ...]:
        return tuple(s for s in (self.current, self.previous) if s)


def parse_signing_secrets(raw: Any) -> SigningSecrets:
    """``{"current": "whsec_…", "previous": "whsec_…"}``; a bare string is taken as ``current``."""
    if isinstance(raw, str | bytes):
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            raw = json.loads(text)
        except ValueError:
            raw = {"current": text.strip()}
    if not isinstance(raw, dict):
        raise SecretError("callback signing secret must be a JSON object with 'current' (and 'previous')")
    current = raw.get("current")
    previous = raw.get("previous") or None
    if not isinstance(current, str) or not current.strip():
        raise SecretError("callback signing secret has no 'current' value")
    if previous is not None and not isinstance(previous, str):
        raise SecretError("callback signing secret 'previous' must be a string")
    return SigningSecrets(current.strip(), previous.strip() if previous else None)


def parse_api_key(raw: Any) -> str:
    """The API key as a plain string, or ``{"api_key": "…"}``."""
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text).get("api_key", "")
        except (ValueError, AttributeError) as exc:
            raise SecretError("Runflow API key secret is JSON without an 'api_key' string") from exc
        if not isinstance(value, str):
            raise SecretError("Runflow API key secret is JSON without an 'api_key' string")
        text = value.strip()
    if not text:
        raise SecretError("Runflow API key secret is empty")
    return text


class SecretReader:
    """Reads the two secrets Backdrop uses; ``refresh=True`` bypasses the cache once."""

    def __init__(self, *, api_key_secret: str, signing_secret: str, max_age: int) -> None:
        self._api_key_secret = api_key_secret
        self._signing_secret = signing_secret
        self._max_age = max_age

    def api_key(self, *, refresh: bool = False) -> str:
        raw = parameters.get_secret(self._api_key_secret, max_age=self._max_age, force_fetch=refresh)
        return parse_api_key(raw)

    def signing_secrets(self, *, refresh: bool = False) -> SigningSecrets:
        raw = parameters.get_secret(self._signing_secret, max_age=self._max_age, force_fetch=refresh)
        return parse_signing_secrets(raw)
