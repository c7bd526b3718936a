"""Runflow-Signature: lowercase hex HMAC-SHA256 of the raw body, current or previous secret.

Every expected signature below is a fixed vector, computed once outside Backdrop (``openssl dgst
-sha256 -hmac <secret>``) and written here, so a wrong key encoding, digest or hex form fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backdrop.signatures import is_well_formed, sign, verify

BODY = b'{"event":"run.completed","run_id":"0196a1b2","status":"succeeded","output":null}'
CURRENT = "whsec_current_0123456789"
PREVIOUS = "whsec_previous_9876543210"
OTHER = "whsec_someone_else"

# HMAC-SHA256(secret, BODY), lowercase hex.
SIGNED_WITH_CURRENT = "2fa0c9dd9d303f3f50f296c6c2afa45732d87384a1ebb60cc472faf93d060d06"
SIGNED_WITH_PREVIOUS = "92415b6f05a4de7fb85a47baad662d4fc4255b861f85de5d4d3661dda89d4401"
SIGNED_WITH_OTHER = "92ec691de8e443f763021cef271c4381334a11a6f36635ef2db6459418007420"
SIGNED_WITH_EMPTY_KEY = "877323487fcaf43a919635fa70cc9b69f3e3f583745face2ad556c52ad717f80"
# The secret is UTF-8 encoded before it keys the HMAC.
SIGNED_WITH_NON_ASCII = "fc96040958a3df865544454a09809dcf7f67447048d5aae2f39e11dd7bbda164"

# The sample callback event and the sample secret the README documents.
SAMPLE_EVENT = Path(__file__).resolve().parents[2] / "events" / "callback-run-completed.json"
SAMPLE_SECRET = "whsec_backdrop_sample_secret_not_for_production"
SAMPLE_SIGNATURE = "0d72cb1add8c8f3350a0f20b4f1af382b553c9f393d4fe4c7f057dd9f2af1eb1"


def test_sign_matches_fixed_vectors() -> None:
    assert sign(BODY, CURRENT) == SIGNED_WITH_CURRENT
    assert sign(BODY, PREVIOUS) == SIGNED_WITH_PREVIOUS
    assert sign(BODY, "whsec_clé") == SIGNED_WITH_NON_ASCII
    # RFC 4231, test case 2.
    assert (
        sign(b"what do ya want for nothing?", "Jefe")
        == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_sample_event_signature() -> None:
    body = json.loads(SAMPLE_EVENT.read_text())["body"].encode("utf-8")
    assert sign(body, SAMPLE_SECRET) == SAMPLE_SIGNATURE
    assert verify(body, SAMPLE_SIGNATURE, (SAMPLE_SECRET,))


def test_verify_with_current_secret() -> None:
    assert verify(BODY, SIGNED_WITH_CURRENT, (CURRENT, PREVIOUS))
    assert verify(BODY, SIGNED_WITH_CURRENT, (CURRENT,))


def test_verify_with_previous_secret_during_rotation() -> None:
    assert verify(BODY, SIGNED_WITH_PREVIOUS, (CURRENT, PREVIOUS))
    assert not verify(BODY, SIGNED_WITH_PREVIOUS, (CURRENT,))  # once the previous one is dropped


def test_verify_refuses_unknown_secret() -> None:
    assert not verify(BODY, SIGNED_WITH_OTHER, (CURRENT, PREVIOUS))
    assert verify(BODY, SIGNED_WITH_OTHER, (OTHER,))  # the vector itself is a good signature


@pytest.mark.parametrize(
    "changed",
    [
        BODY.replace(b"succeeded", b"succeedeD"),  # same length, one byte differs
        BODY.replace(b'"run_id":"0196a1b2"', b'"run_id":"0196a1b3"'),
        BODY + b" ",
        BODY[:-1],
        BODY.replace(b",", b", "),  # same JSON, other bytes
        b"",
    ],
)
def test_verify_refuses_a_changed_body(changed: bytes) -> None:
    assert changed != BODY
    assert not verify(changed, SIGNED_WITH_CURRENT, (CURRENT, PREVIOUS))
    assert not verify(changed, SIGNED_WITH_PREVIOUS, (CURRENT, PREVIOUS))


MALFORMED = {
    "uppercase": SIGNED_WITH_CURRENT.upper(),
    "one uppercase digit": SIGNED_WITH_CURRENT[:2] + SIGNED_WITH_CURRENT[2].upper() + SIGNED_WITH_CURRENT[3:],
    "63 chars": SIGNED_WITH_CURRENT[:63],
    "65 chars": SIGNED_WITH_CURRENT + "0",
    "sha256= prefix": "sha256=" + SIGNED_WITH_CURRENT,
    "non-hex": SIGNED_WITH_CURRENT[:63] + "g",
    "leading space": " " + SIGNED_WITH_CURRENT,
    "trailing newline": SIGNED_WITH_CURRENT + "\n",
    "empty": "",
}


def test_malformed_vectors_are_what_they_claim() -> None:
    assert len(MALFORMED["63 chars"]) == 63
    assert len(MALFORMED["65 chars"]) == 65
    assert MALFORMED["uppercase"] == "2FA0C9DD9D303F3F50F296C6C2AFA45732D87384A1EBB60CC472FAF93D060D06"
    assert MALFORMED["one uppercase digit"][:4] == "2fA0"


@pytest.mark.parametrize("signature", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_signatures_refused(signature: str) -> None:
    assert not is_well_formed(signature)
    assert not verify(BODY, signature, (CURRENT, PREVIOUS))


@pytest.mark.parametrize("signature", [SIGNED_WITH_CURRENT, "0" * 64, "abcdef0123456789" * 4])
def test_well_formed_is_64_lowercase_hex(signature: str) -> None:
    assert is_well_formed(signature)


def test_missing_signature_refused() -> None:
    assert not is_well_formed(None)
    assert not verify(BODY, None, (CURRENT,))


def test_empty_secrets_ignored() -> None:
    # An empty secret must never make a signature of the empty key acceptable.
    assert not verify(BODY, SIGNED_WITH_EMPTY_KEY, ("", ""))
    assert not verify(BODY, SIGNED_WITH_EMPTY_KEY, (CURRENT, ""))
    assert verify(BODY, SIGNED_WITH_CURRENT, ("", CURRENT))


def test_no_secrets_refuses_everything() -> None:
    assert not verify(BODY, SIGNED_WITH_CURRENT, ())


def test_secrets_may_be_any_iterable() -> None:
    assert verify(BODY, SIGNED_WITH_CURRENT, iter((PREVIOUS, CURRENT)))
