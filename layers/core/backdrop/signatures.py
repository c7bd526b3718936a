"""Runflow callback signatures: lowercase hex HMAC-SHA256 of the exact raw body, no timestamp."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def is_well_formed(signature: str | None) -> bool:
    """64 lowercase hex characters; checked first so the constant-time compare sees equal lengths."""
    return signature is not None and _SIGNATURE.fullmatch(signature) is not None


def verify(body: bytes, signature: str | None, secrets: Iterable[str]) -> bool:
    """True if ``signature`` matches ``body`` under any of the secrets (current, then previous)."""
    if not is_well_formed(signature):
        return False
    assert signature is not None
    matched = False
    for secret in secrets:
        if secret:
            # No early exit: each configured secret costs the same, whichever one matches.
            matched |= hmac.compare_digest(sign(body, secret), signature)
    return matched
