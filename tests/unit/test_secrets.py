"""The two secrets Backdrop reads: the callback signing secret(s) and the Runflow API key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_lambda_powertools.utilities import parameters

from backdrop.secrets import (
    SIGNING_REFRESH_SECONDS,
    SecretError,
    SecretReader,
    SigningSecrets,
    parse_api_key,
    parse_signing_secrets,
)


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


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _reader(clock: _Clock | None = None, max_age: int = 300) -> SecretReader:
    return SecretReader(
        api_key_secret="backdrop/runflow",
        signing_secret="backdrop/callback",
        max_age=max_age,
        clock=clock or _Clock(),
    )


def _signing_reads(calls: _Calls) -> int:
    return sum(1 for name, _ in calls.calls if name == "backdrop/callback")


def test_reader_holds_the_signing_secrets_after_the_first_read(get_secret: _Calls) -> None:
    reader = _reader()
    assert reader.signing_secrets() == SigningSecrets("whsec_new", "whsec_old")
    assert reader.signing_secrets() == SigningSecrets("whsec_new", "whsec_old")
    # Read past Powertools' cache: the reader's own clock decides when the held value is old.
    assert get_secret.calls == [("backdrop/callback", {"max_age": 300, "force_fetch": True})]


def test_refresh_reads_at_most_once_per_refresh_interval(get_secret: _Calls) -> None:
    clock = _Clock()
    reader = _reader(clock)
    reader.signing_secrets()
    for _ in range(1000):  # a flood of signatures that match nothing, all in the same second
        reader.signing_secrets(refresh=True)
    assert _signing_reads(get_secret) == 1

    get_secret.values["backdrop/callback"] = '{"current": "whsec_rotated", "previous": "whsec_new"}'
    clock.now += SIGNING_REFRESH_SECONDS - 0.001
    assert reader.signing_secrets(refresh=True).current == "whsec_new"  # still the held value
    clock.now += 0.001
    assert reader.signing_secrets(refresh=True).current == "whsec_rotated"
    assert _signing_reads(get_secret) == 2
    assert reader.signing_secrets(refresh=True).current == "whsec_rotated"
    assert _signing_reads(get_secret) == 2


def test_held_secrets_are_read_again_once_max_age_old(get_secret: _Calls) -> None:
    clock = _Clock()
    reader = _reader(clock, max_age=300)
    reader.signing_secrets()
    clock.now += 299
    reader.signing_secrets()
    assert _signing_reads(get_secret) == 1
    clock.now += 1
    reader.signing_secrets()
    assert _signing_reads(get_secret) == 2


def test_a_max_age_below_the_refresh_interval_still_reads_at_most_once_per_interval(
    get_secret: _Calls,
) -> None:
    clock = _Clock()
    reader = _reader(clock, max_age=0)
    for _ in range(100):
        reader.signing_secrets()
    assert _signing_reads(get_secret) == 1
    clock.now += SIGNING_REFRESH_SECONDS
    reader.signing_secrets()
    assert _signing_reads(get_secret) == 2


def test_a_failed_refresh_keeps_the_held_secrets_and_is_not_retried_at_once(get_secret: _Calls) -> None:
    clock = _Clock()
    reader = _reader(clock)
    reader.signing_secrets()
    clock.now += SIGNING_REFRESH_SECONDS
    get_secret.values["backdrop/callback"] = '{"current": ""}'  # a bad value stored by mistake
    with pytest.raises(SecretError):
        reader.signing_secrets(refresh=True)
    assert reader.signing_secrets(refresh=True) == SigningSecrets("whsec_new", "whsec_old")
    assert _signing_reads(get_secret) == 2


def test_reader_api_key(get_secret: _Calls) -> None:
    assert _reader().api_key() == "rf_live_abc"
    assert get_secret.calls[0][0] == "backdrop/runflow"
    assert get_secret.calls[0][1]["max_age"] == 300
