"""Runflow-Signature: lowercase hex HMAC-SHA256 of the raw body, current or previous secret."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from backdrop.signatures import is_well_formed, sign, verify

BODY = b'{"event":"run.completed","run_id":"0196a1b2","status":"succeeded","output":null}'
CURRENT = "whsec_current_0123456789"
PREVIOUS = "whsec_previous_9876543210"


def test_sign_is_hmac_sha256_lowercase_hex() -> None:
    expected = hmac.new(CURRENT.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, CURRENT) == expected
    assert is_well_formed(expected)


def test_verify_with_current_secret() -> None:
    assert verify(BODY, sign(BODY, CURRENT), (CURRENT, PREVIOUS))


def test_verify_with_previous_secret_during_rotation() -> None:
    assert verify(BODY, sign(BODY, PREVIOUS), (CURRENT, PREVIOUS))


def test_verify_refuses_unknown_secret() -> None:
    assert not verify(BODY, sign(BODY, "whsec_someone_else"), (CURRENT, PREVIOUS))


def test_verify_refuses_body_changed_by_one_byte() -> None:
    signature = sign(BODY, CURRENT)
    changed = BODY.replace(b"succeeded", b"succeedeD")
    assert len(changed) == len(BODY)
    assert not verify(changed, signature, (CURRENT,))
    assert not verify(BODY + b" ", signature, (CURRENT,))
    assert not verify(BODY[:-1], signature, (CURRENT,))


@pytest.mark.parametrize(
    "mangle",
    [
        str.upper,
        lambda s: s[:-1],  # short
        lambda s: s + "0",  # long
        lambda s: s[:-1] + "g",  # not hex
        lambda s: "sha256=" + s,  # prefixed
        lambda s: " " + s[1:],
        lambda s: "",
    ],
)
def test_malformed_signatures_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    good = sign(BODY, CURRENT)
    assert not verify(BODY, mangle(good), (CURRENT,))


def test_missing_signature_refused() -> None:
    assert not verify(BODY, None, (CURRENT,))


def test_empty_secrets_ignored() -> None:
    # An empty secret must never make a signature of the empty key acceptable.
    assert not verify(BODY, sign(BODY, ""), ("", ""))
    assert not verify(BODY, sign(BODY, ""), (CURRENT, ""))
    assert verify(BODY, sign(BODY, CURRENT), ("", CURRENT))


def test_no_secrets_refuses_everything() -> None:
    assert not verify(BODY, sign(BODY, CURRENT), ())
