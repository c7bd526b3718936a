"""Settings from the environment: a bad deployment fails with a message naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backdrop.colours import Colour
from backdrop.config import (
    ENV_NAMES,
    JOBS,
    RUN_CREATION,
    ConfigError,
    get_settings,
    load_settings,
    needs,
    reset_settings,
)
from backdrop.services import get_services, reset_services

BASE_ENV: dict[str, str] = {
    "AWS_REGION": "eu-west-1",
    "BACKDROP_JOBS_TABLE": "backdrop-jobs",
    "BACKDROP_IDEMPOTENCY_TABLE": "backdrop-idempotency",
    "BACKDROP_LEDGER_TABLE": "backdrop-ledger",
    "BACKDROP_UPLOADS_BUCKET": "uploads-bucket",
    "BACKDROP_RESULTS_BUCKET": "results-bucket",
    "BACKDROP_COPY_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/backdrop-copies",
    "BACKDROP_UPLOADS_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/backdrop-uploads",
    "BACKDROP_RUNFLOW_API_KEY_SECRET": "backdrop/runflow-api-key",
    "BACKDROP_CALLBACK_SECRET": "backdrop/callback-signing",
    "BACKDROP_CALLBACK_URL": "https://hooks.example.com/runflow/callback",
    "BACKDROP_ALLOWED_OUTPUT_HOSTS": "*.runflow.io",
}
# Each function names the settings it needs; the submit function's list, as an example.
SUBMIT_NEEDS = ("jobs_table", "idempotency_table", "uploads_bucket", "runflow_api_key_secret", "callback_url")
REQUIRED = [ENV_NAMES[name] for name in SUBMIT_NEEDS]


def env(**changes: str | None) -> dict[str, str]:
    result = dict(BASE_ENV)
    for name, value in changes.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


@pytest.mark.parametrize("name", REQUIRED)
@pytest.mark.parametrize("value", [None, "", "   "])
def test_required_variable_missing(name: str, value: str | None) -> None:
    settings = load_settings(env(**{name: value}))  # reading is lazy about what a function needs
    with pytest.raises(ConfigError, match=name):
        settings.require(*SUBMIT_NEEDS)


def test_every_missing_variable_is_named_at_once() -> None:
    settings = load_settings(env(BACKDROP_JOBS_TABLE=None, BACKDROP_CALLBACK_URL=None))
    with pytest.raises(ConfigError) as info:
        settings.require(*SUBMIT_NEEDS)
    assert "BACKDROP_JOBS_TABLE" in str(info.value) and "BACKDROP_CALLBACK_URL" in str(info.value)


def test_a_function_missing_a_setting_fails_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env(BACKDROP_CALLBACK_URL=None).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BACKDROP_CALLBACK_URL", raising=False)
    reset_settings()
    reset_services()
    with pytest.raises(ConfigError, match="BACKDROP_CALLBACK_URL"):
        get_services(SUBMIT_NEEDS)
    assert get_services(("jobs_table",)).settings.jobs_table == "backdrop-jobs"
    reset_services()


def test_defaults() -> None:
    minimal = {name: BASE_ENV[name] for name in REQUIRED if name != "BACKDROP_CALLBACK_URL"} | {
        "BACKDROP_ALLOWED_OUTPUT_HOSTS": "cdn.runflow.io"
    }
    s = load_settings(minimal)
    assert s.region == "us-east-1"
    assert s.upload_prefix == "uploads/"
    assert s.results_prefix == "results/"
    assert s.runflow_base_url == "https://api.runflow.io"
    assert s.runflow_origin == "https://api.runflow.io"
    assert s.callback_url == ""
    assert s.default_colour == Colour(255, 255, 255)
    assert s.presign_expiry_seconds == 3600
    assert s.max_input_bytes == 50 * 1024 * 1024
    assert s.max_output_bytes == 256 * 1024 * 1024
    assert s.allowed_output_hosts == ("cdn.runflow.io",)
    assert s.insecure_output_origin == ""
    assert s.retention_days == 90
    assert s.create_settle_seconds == 60.0
    assert s.copy_queue_url == "" and s.uploads_queue_url == "" and s.ledger_table == ""
    assert s.run_deadline_minutes == 60
    assert s.reconcile_batch_size == 100
    assert s.reconcile_min_age_seconds == 120
    assert s.secrets_max_age_seconds == 300


def test_region_from_either_variable() -> None:
    assert load_settings(env(AWS_REGION=None, AWS_DEFAULT_REGION="ap-south-1")).region == "ap-south-1"
    assert load_settings(env(AWS_REGION="eu-west-1", AWS_DEFAULT_REGION="ap-south-1")).region == "eu-west-1"


@pytest.mark.parametrize(
    ("raw", "prefix"),
    [
        ("incoming", "incoming/"),
        ("incoming/", "incoming/"),
        ("/incoming", "incoming/"),
        ("a/b", "a/b/"),
        ("", ""),
    ],
)
def test_prefixes_normalised(raw: str, prefix: str) -> None:
    s = load_settings(env(BACKDROP_UPLOAD_PREFIX=raw, BACKDROP_RESULTS_PREFIX=raw))
    assert s.upload_prefix == prefix
    assert s.results_prefix == prefix


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("BACKDROP_PRESIGN_EXPIRY_SECONDS", "an hour"),
        ("BACKDROP_MAX_OUTPUT_BYTES", "1.5"),
        ("BACKDROP_RETENTION_DAYS", "0"),
        ("BACKDROP_PRESIGN_EXPIRY_SECONDS", "30"),  # below the 60 s minimum
        ("BACKDROP_RECONCILE_BATCH_SIZE", "-1"),
        ("BACKDROP_CREATE_SETTLE_SECONDS", "soon"),
        ("BACKDROP_CREATE_SETTLE_SECONDS", "-1"),
    ],
)
def test_bad_numbers_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        load_settings(env(**{name: raw}))
    assert raw in str(info.value)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("BACKDROP_DAILY_RUN_BUDGET", "\u0661\u0662"),  # Arabic-Indic 12
        ("BACKDROP_MAX_INPUT_BYTES", "\uff11\uff10\uff12\uff14"),  # fullwidth 1024
        ("BACKDROP_RETENTION_DAYS", "\u0969\u0966"),  # Devanagari 30
        ("BACKDROP_RECONCILE_BATCH_SIZE", "1_000"),
        ("BACKDROP_RUN_DEADLINE_MINUTES", "9" * 19),
        ("BACKDROP_CREATE_SETTLE_SECONDS", "\u0666\u0660"),  # Arabic-Indic 60
        ("BACKDROP_CREATE_SETTLE_SECONDS", "nan"),
        ("BACKDROP_RUNFLOW_TIMEOUT_SECONDS", "inf"),
        ("BACKDROP_SUBMIT_RETRY_BUDGET_SECONDS", "Infinity"),
        ("BACKDROP_SUBMIT_RETRY_BUDGET_SECONDS", "1e999"),
        ("BACKDROP_RUNFLOW_TIMEOUT_SECONDS", "1_0.5"),
    ],
)
def test_numbers_only_in_ascii_digits_and_finite(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        load_settings(env(**{name: raw}))
    assert repr(raw) in str(info.value)


def test_numbers_in_usual_spellings_still_read() -> None:
    s = load_settings(
        env(
            BACKDROP_DAILY_RUN_BUDGET="+25",
            BACKDROP_CREATE_SETTLE_SECONDS="1e2",
            BACKDROP_RUNFLOW_TIMEOUT_SECONDS=".5",
            BACKDROP_SUBMIT_RETRY_BUDGET_SECONDS="20.",
        )
    )
    assert (s.daily_run_budget, s.create_settle_seconds, s.runflow_timeout_seconds) == (25, 100.0, 0.5)
    assert s.submit_retry_budget_seconds == 20.0


def test_colour_settings_only_in_ascii_digits() -> None:
    with pytest.raises(ConfigError, match="BACKDROP_DEFAULT_COLOR"):
        load_settings(env(BACKDROP_DEFAULT_COLOR="\uff12\uff15\uff15,255,255"))
    with pytest.raises(ConfigError, match="BACKDROP_COLOR_RULES: colour rule 'uploads/x/'"):
        load_settings(env(BACKDROP_COLOR_RULES='{"uploads/x/": "\u0661\u0662,\u0663\u0664,\u0665\u0666"}'))


def test_numbers_read() -> None:
    s = load_settings(env(BACKDROP_MAX_OUTPUT_BYTES=" 1024 ", BACKDROP_CREATE_SETTLE_SECONDS="2.5"))
    assert s.max_output_bytes == 1024
    assert s.create_settle_seconds == 2.5


def test_bad_default_colour() -> None:
    with pytest.raises(ConfigError, match="BACKDROP_DEFAULT_COLOR") as info:
        load_settings(env(BACKDROP_DEFAULT_COLOR="blue"))
    assert "'blue'" in str(info.value)
    assert load_settings(env(BACKDROP_DEFAULT_COLOR="#000000")).default_colour == Colour(0, 0, 0)


def test_allowed_hosts_parsed_and_required() -> None:
    s = load_settings(env(BACKDROP_ALLOWED_OUTPUT_HOSTS=" *.Runflow.io, cdn.example.com ,,"))
    assert s.allowed_output_hosts == ("*.runflow.io", "cdn.example.com")
    with pytest.raises(ConfigError, match="BACKDROP_ALLOWED_OUTPUT_HOSTS"):
        load_settings(env(BACKDROP_ALLOWED_OUTPUT_HOSTS=" , "))


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("BACKDROP_RUNFLOW_BASE_URL", "api.runflow.io"),
        ("BACKDROP_RUNFLOW_BASE_URL", "ftp://api.runflow.io"),
        ("BACKDROP_CALLBACK_URL", "/callback"),
        ("BACKDROP_COPY_QUEUE_URL", "backdrop-copies"),
    ],
)
def test_urls_must_be_absolute_http(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(env(**{name: raw}))


def test_urls_lose_trailing_slash() -> None:
    s = load_settings(
        env(BACKDROP_RUNFLOW_BASE_URL="http://localhost:9000/", BACKDROP_CALLBACK_URL="https://h/cb/")
    )
    assert s.runflow_base_url == "http://localhost:9000"
    assert s.callback_url == "https://h/cb"


@pytest.mark.parametrize(
    ("raw", "origin"),
    [
        ("http://localhost:9000", "http://localhost:9000"),
        ("http://LocalHost:9000/", "http://localhost:9000"),
        ("https://runflow.local:8443", "https://runflow.local:8443"),
    ],
)
def test_insecure_origin_accepted(raw: str, origin: str) -> None:
    s = load_settings(env(BACKDROP_INSECURE_OUTPUT_ORIGIN=raw))
    assert s.insecure_output_origin == origin


def test_insecure_origin_alone_is_enough() -> None:
    s = load_settings(
        env(BACKDROP_ALLOWED_OUTPUT_HOSTS="", BACKDROP_INSECURE_OUTPUT_ORIGIN="http://localhost:9000")
    )
    assert s.allowed_output_hosts == ()


@pytest.mark.parametrize(
    "raw",
    [
        "localhost:9000",  # no scheme
        "ftp://localhost:9000",
        "http://localhost:9000/outputs",  # a path is not an origin
        "http://:9000",
        "http://localhost:99999",  # port out of range
        "http://localhost:port",
    ],
)
def test_insecure_origin_must_be_an_origin(raw: str) -> None:
    with pytest.raises(ConfigError, match="BACKDROP_INSECURE_OUTPUT_ORIGIN"):
        load_settings(env(BACKDROP_INSECURE_OUTPUT_ORIGIN=raw))


def test_get_settings_caches_until_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    first = get_settings()
    assert first.jobs_table == "backdrop-jobs"
    monkeypatch.setenv("BACKDROP_JOBS_TABLE", "other-table")
    assert get_settings() is first
    reset_settings()
    assert get_settings().jobs_table == "other-table"


def test_get_settings_fails_on_first_use_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BACKDROP_MAX_INPUT_BYTES", "fifty megabytes")
    with pytest.raises(ConfigError, match="BACKDROP_MAX_INPUT_BYTES"):
        get_settings()


def test_colour_rules_read_and_bad_ones_named() -> None:
    s = load_settings(env(BACKDROP_COLOR_RULES='{"uploads/amazon/": "#FFFFFF"}'))
    assert s.colour_rules == (("uploads/amazon/", Colour(255, 255, 255)),)
    with pytest.raises(ConfigError, match="BACKDROP_COLOR_RULES: colour rule 'uploads/x/'"):
        load_settings(env(BACKDROP_COLOR_RULES='{"uploads/x/": "nope"}'))
    with pytest.raises(ConfigError, match=r"BACKDROP_COLOR_RULES: .*not under the upload prefix"):
        load_settings(env(BACKDROP_COLOR_RULES='{"other/": "#FFFFFF"}', BACKDROP_UPLOAD_PREFIX="uploads/"))


def test_budget_and_bus() -> None:
    s = load_settings(env(BACKDROP_DAILY_RUN_BUDGET="25", BACKDROP_EVENT_BUS="shop"))
    assert (s.daily_run_budget, s.event_bus) == (25, "shop")
    assert load_settings(env()).daily_run_budget == 0
    with pytest.raises(ConfigError, match="BACKDROP_DAILY_RUN_BUDGET"):
        load_settings(env(BACKDROP_DAILY_RUN_BUDGET="-1"))


def test_result_reuse_is_on_unless_turned_off() -> None:
    assert load_settings(BASE_ENV).reuse_results is True
    assert load_settings({**BASE_ENV, "BACKDROP_REUSE_RESULTS": "false"}).reuse_results is False
    assert load_settings({**BASE_ENV, "BACKDROP_REUSE_RESULTS": " TRUE "}).reuse_results is True
    with pytest.raises(ConfigError, match="BACKDROP_REUSE_RESULTS must be true or false, got 'off'"):
        load_settings({**BASE_ENV, "BACKDROP_REUSE_RESULTS": "off"})


def test_a_functions_needs_compose_from_named_groups_of_declared_settings() -> None:
    with pytest.raises(ValueError, match="no_such_setting"):
        needs("jobs_table", "no_such_setting")
    composed = JOBS | RUN_CREATION
    assert composed == {"jobs_table", "runflow_api_key_secret", "callback_url"}
    settings = load_settings(env(BACKDROP_JOBS_TABLE=None, BACKDROP_CALLBACK_URL=None))
    with pytest.raises(ConfigError) as info:
        settings.require(*composed)
    # Named in the declaration's order, whatever the group's.
    assert str(info.value).endswith("BACKDROP_JOBS_TABLE, BACKDROP_CALLBACK_URL")


def test_renditions_read_and_bad_ones_named() -> None:
    assert load_settings(env()).renditions == {}
    assert load_settings(env(BACKDROP_RENDITIONS="{}")).renditions == {}
    s = load_settings(env(BACKDROP_RENDITIONS='{"amazon": "amazon-main", "story": {"aspect": "9:16"}}'))
    assert list(s.renditions) == ["amazon", "story"]
    assert (s.renditions["amazon"].width, s.renditions["amazon"].height) == (2000, 2000)
    assert s.renditions["story"].aspect == (9, 16)
    with pytest.raises(ConfigError, match="BACKDROP_RENDITIONS: rendition 'story': fit must be one of"):
        load_settings(env(BACKDROP_RENDITIONS='{"story": {"aspect": "9:16", "fit": "stretch"}}'))
    with pytest.raises(ConfigError, match="BACKDROP_RENDITIONS: rendition 'amz': unknown profile 'amazon'"):
        load_settings(env(BACKDROP_RENDITIONS='{"amz": "amazon"}'))
    with pytest.raises(ConfigError, match="BACKDROP_RENDITIONS: Renditions is not valid JSON"):
        load_settings(env(BACKDROP_RENDITIONS="{amazon}"))


def test_reading_renditions_loads_no_imaging_library() -> None:
    # Every function reads the setting at cold start; only the copy worker may load Pillow or numpy.
    code = (
        "import sys; from backdrop.config import load_settings; "
        f"load_settings({{**{BASE_ENV!r}, 'BACKDROP_RENDITIONS': '{{\"a\": \"amazon-main\"}}'}}); "
        "print(sorted(m for m in ('PIL', 'numpy') if m in sys.modules))"
    )
    core = str(Path(__file__).resolve().parents[2] / "layers" / "core")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": core}
    )
    assert out.stdout.strip() == "[]"


def test_quality_gate_is_flag_unless_set_and_a_bad_value_names_the_variable() -> None:
    assert load_settings(BASE_ENV).quality_gate == "flag"
    assert load_settings(env(BACKDROP_QUALITY_GATE=" HOLD ")).quality_gate == "hold"
    assert load_settings(env(BACKDROP_QUALITY_GATE="off")).holds_for_review is False
    with pytest.raises(
        ConfigError, match="BACKDROP_QUALITY_GATE must be one of off, flag, hold, got 'strict'"
    ):
        load_settings(env(BACKDROP_QUALITY_GATE="strict"))


def test_review_prefix_is_never_empty_and_never_overlaps_the_results_prefix_when_holding() -> None:
    assert load_settings(BASE_ENV).review_prefix == "review/"
    assert load_settings(env(BACKDROP_REVIEW_PREFIX="/held")).review_prefix == "held/"
    with pytest.raises(ConfigError, match="BACKDROP_REVIEW_PREFIX must not be empty"):
        load_settings(env(BACKDROP_REVIEW_PREFIX=" "))
    for review, results in (
        ("results/review/", "results/"),
        ("out/", "out/results/"),
        ("results/", "results/"),
    ):
        overlapping = env(BACKDROP_REVIEW_PREFIX=review, BACKDROP_RESULTS_PREFIX=results)
        assert load_settings(overlapping).review_prefix == review  # unused unless the gate holds
        with pytest.raises(ConfigError) as info:
            load_settings(overlapping | {"BACKDROP_QUALITY_GATE": "hold"})
        assert "BACKDROP_REVIEW_PREFIX" in str(info.value) and "BACKDROP_RESULTS_PREFIX" in str(info.value)
    # Siblings that only share leading characters do not overlap.
    held = load_settings(env(BACKDROP_REVIEW_PREFIX="results-review/", BACKDROP_QUALITY_GATE="hold"))
    assert (held.review_prefix, held.results_prefix) == ("results-review/", "results/")
