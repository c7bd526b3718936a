"""The two secrets Backdrop reads: the callback signing secret(s) and the Runflow API key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_lambda_powertools.utilities import parameters

from backdrop.secrets import SecretError, SecretReader, SigningSecrets, parse_api_key, parse_signing_secrets


def test_signing_secrets_json_with_previous() -> None:
    parsed = parse_signing_secrets(json.dumps({"current": "whsec_new", "previous": "whsec_old"}))
    assert parsed == SigningSecrets("whsec_new", "whsec_old")
    assert parsed.all() == ("whsec_new", "whsec_old")


def test_signing_secrets_json_without_previous() -> None:
    for raw in (
        '{"current": " whsec_new "}',
        '{"current": "whsec_new", "previous": ""}',
        b'{"current":"whsec_new"}',
    ):
        parsed = parse_signing_secrets(raw)
        assert parsed == SigningSecrets("whsec_new", None)
        assert parsed.all() == ("whsec_new",)


def test_signing_secrets_dict_as_given() -> None:
    assert parse_signing_secrets({"current": "a", "previous": "b"}).all() == ("a", "b")


def test_bare_string_is_current() -> None:
    assert parse_signing_secrets("whsec_plain\n") == SigningSecrets("whsec_plain", None)


@pytest.mark.parametrize(
    "raw",
    [
        '{"previous": "whsec_old"}',
        '{"current": ""}',
        '{"current": "   "}',
        '{"current": 42}',
        "",
        "[1, 2]",
    ],
)
def test_signing_secrets_without_current(raw: str) -> None:
    with pytest.raises(SecretError):
        parse_signing_secrets(raw)


def test_previous_must_be_a_string() -> None:
    with pytest.raises(SecretError, match="previous"):
        parse_signing_secrets('{"current": "a", "previous": 123}')


def test_error_messages_do_not_leak_the_secret() -> None:
    with pytest.raises(SecretError) as info:
        parse_signing_secrets('{"current": "", "previous": "whsec_topsecret"}')
    assert "topsecret" not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("rf_live_abc", "rf_live_abc"),
        ("  rf_live_abc\n", "rf_live_abc"),
        (b"rf_live_abc", "rf_live_abc"),
        ('{"api_key": "rf_live_abc"}', "rf_live_abc"),
        ('{"api_key": " rf_live_abc ", "other": 1}', "rf_live_abc"),
    ],
)
def test_api_key_forms(raw: Any, key: str) -> None:
    assert parse_api_key(raw) == key


@pytest.mark.parametrize(
    "raw", ["", "   ", '{"api_key": ""}', '{"other": "x"}', '{"api_key": null}', "{not json"]
)
def test_api_key_missing(raw: str) -> None:
    with pytest.raises(SecretError):
        parse_api_key(raw)


class _Calls:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, **kwargs: Any) -> Any:
        self.calls.append((name, kwargs))
        return self.values[name]


@pytest.fixture
def get_secret(monkeypatch: pytest.MonkeyPatch) -> _Calls:
    fake = _Calls(
        {
            "backdrop/callback": '{"current": "whsec_new", "previous": "whsec_old"}',
            "backdrop/runflow": '{"api_key": "rf_live_abc"}',
        }
    )
    monkeypatch.setattr(parameters, "get_secret", fake)
    return fake


def _reader() -> SecretReader:
    return SecretReader(api_key_secret="backdrop/runflow", signing_secret="backdrop/callback", max_age=300)


def test_reader_uses_cache_by_default(get_secret: _Calls) -> None:
    assert _reader().signing_secrets() == SigningSecrets("whsec_new", "whsec_old")
    assert get_secret.calls == [("backdrop/callback", {"max_age": 300, "force_fetch": False})]


def test_reader_refresh_forces_a_fetch(get_secret: _Calls) -> None:
    _reader().signing_secrets(refresh=True)
    assert get_secret.calls == [("backdrop/callback", {"max_age": 300, "force_fetch": True})]


def test_reader_api_key(get_secret: _Calls) -> None:
    assert _reader().api_key() == "rf_live_abc"
    assert get_secret.calls[0][0] == "backdrop/runflow"
    assert get_secret.calls[0][1]["max_age"] == 300
