"""Secrets in AWS Secrets Manager, read through Powertools Parameters and held in memory.

Never logged: values are only ever handed to the HTTP client (API key) or HMAC (signing secrets).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aws_lambda_powertools.utilities import parameters

# Anyone who can reach the callback URL can send a well-formed signature that matches no secret.
# Such a callback may read the signing secrets afresh (a rotation looks the same) at most once per
# this many seconds per instance, so a flood of forgeries costs at most one read a minute, and a
# rotated secret is accepted at most this long after Runflow starts signing with it.
SIGNING_REFRESH_SECONDS = 60


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


class Secrets(Protocol):
    """The two secrets as the use cases read them: ``SecretReader`` below reads Secrets Manager;
    the unit tests' stand-in holds them in memory and rotates them on request."""

    def api_key(self, *, refresh: bool = False) -> str: ...

    def signing_secrets(self, *, refresh: bool = False) -> SigningSecrets: ...


class SecretReader:
    """Reads the two secrets Backdrop uses.

    The API key goes through Powertools' cache; ``refresh=True`` bypasses it once (only a 401 from
    Runflow asks for that, an answer to a request of ours). The signing secrets are held here, timed
    by ``clock`` (the services' clock): read on first use, again once they are ``max_age`` old, and
    on ``refresh=True`` only when the last read is at least ``SIGNING_REFRESH_SECONDS`` old, because
    callers of the callback URL decide how often a refresh is asked for.
    """

    def __init__(
        self,
        *,
        api_key_secret: str,
        signing_secret: str,
        max_age: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api_key_secret = api_key_secret
        self._signing_secret = signing_secret
        self._max_age = max_age
        self._clock = clock
        self._signing: SigningSecrets | None = None
        self._signing_read_at = 0.0
        self._signing_lock = threading.Lock()

    def api_key(self, *, refresh: bool = False) -> str:
        raw = parameters.get_secret(self._api_key_secret, max_age=self._max_age, force_fetch=refresh)
        return parse_api_key(raw)

    def signing_secrets(self, *, refresh: bool = False) -> SigningSecrets:
        """The signing secrets held in memory. ``refresh=True`` (a signature matched none of them)
        reads them afresh unless they were read less than ``SIGNING_REFRESH_SECONDS`` ago; then
        the ones held are returned and nothing is read."""
        with self._signing_lock:
            held = self._signing
            if held is not None:
                # Never more often than a refresh may read, whatever max_age says.
                keep_for = SIGNING_REFRESH_SECONDS if refresh else max(self._max_age, SIGNING_REFRESH_SECONDS)
                if self._clock() - self._signing_read_at < keep_for:
                    return held
            # Stamped before the read: a read that fails is not tried again by the next forgery
            # either (with nothing held yet, every callback needs the read, so it is tried again).
            self._signing_read_at = self._clock()
            raw = parameters.get_secret(self._signing_secret, max_age=self._max_age, force_fetch=True)
            self._signing = parse_signing_secrets(raw)
            return self._signing
