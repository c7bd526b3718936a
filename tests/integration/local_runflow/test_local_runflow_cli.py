"""``python -m backdrop_local.runflow``: prints its JSON line when ready, stops cleanly on SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import httpx
import pytest

from backdrop_local.runflow import FaultSettings
from backdrop_local.runflow.cli import add_fault_arguments, faults_from_args, main

ROOT = Path(__file__).resolve().parents[3]


def _env() -> dict[str, str]:
    paths = [str(ROOT / "local"), str(ROOT / "layers" / "core")]
    existing = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, *([existing] if existing else [])])}


def _first_line(stream: IO[str], timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


def test_cli_starts_prints_its_url_and_stops_on_sigterm() -> None:
    command = [
        sys.executable,
        "-m",
        "backdrop_local.runflow",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--api-key",
        "rf_live_cli",
        "--allow-http-origin",
        "http://127.0.0.1:5555",
        "--output-ttl",
        "60",
        "--workers",
        "1",
        "--seed",
        "7",
        "--create-callback-secret",
        "--create-429",
        "1.0",
        "--idempotency-keys",
        "ignore",
        "--outputs-per-run",
        "3",
        "--processing",
        "instant",
        "--rate-limit-headers",
        "x_ratelimit",
        "--retry-after-s",
        "2.5",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT
    )
    try:
        assert process.stdout is not None
        ready = json.loads(_first_line(process.stdout, timeout=15))
        assert ready["url"].startswith("http://127.0.0.1:")
        assert ready["callback_secret"].startswith("whsec_")
        assert httpx.get(f"{ready['url']}/v1/health", trust_env=False).json() == {"ok": True}
        headers = {"Authorization": "Bearer rf_live_cli"}
        assert httpx.get(f"{ready['url']}/v1/runs", headers=headers, trust_env=False).status_code == 200
        faults = httpx.get(f"{ready['url']}/_emulator/faults", trust_env=False).json()
        assert faults["create_429"] == 1.0 and faults["seed"] == 7
        assert faults["idempotency_keys"] == "ignore" and faults["outputs_per_run"] == 3
        assert faults["processing"] == "instant" and faults["rate_limit_headers"] == "x_ratelimit"
        assert faults["retry_after_s"] == 2.5 and faults["cancel_spelling"] == "canceled"
        secrets = httpx.get(f"{ready['url']}/v1/callback-secrets", headers=headers, trust_env=False).json()
        assert [s["is_current"] for s in secrets["items"]] == [True]

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)


def test_cli_refuses_to_bind_beyond_loopback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "backdrop_local.runflow", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=15,
    )
    assert result.returncode == 2, result
    assert result.stdout == "" and "loopback" in result.stderr


@pytest.mark.parametrize(
    "arguments",
    [
        ["--host", "192.168.1.10"],
        ["--processing-failure", "1.5"],
        ["--callback-retry-delays", "1,-2"],
        ["--idempotency-keys", "sometimes"],
        ["--outputs-per-run", "9"],
        ["--outputs-per-run", "1.5"],
        ["--instant-output-bytes", "-1"],
        ["--rate-limit-headers", "all"],
        ["--dispatch-delay-s", "soon"],
    ],
)
def test_cli_refuses_bad_settings_before_starting(
    arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--port", "0", *arguments])
    assert exited.value.code == 2
    assert capsys.readouterr().out == ""


def test_every_setting_is_a_flag_of_any_parser_that_adds_them() -> None:
    # As another command line (the local stack's) uses them: its own parser, the shared flags.
    parser = argparse.ArgumentParser()
    add_fault_arguments(parser)
    # faults_from_args reads one flag per field: this fails if any field has no flag.
    assert faults_from_args(parser.parse_args([])) == FaultSettings()
    args = parser.parse_args(
        [
            "--idempotency-keys=ignore",
            "--create-answer-reset=0.5",
            "--rate-limit-headers=both",
            "--retry-after-s=3",
            "--get-429=0.25",
            "--list-4xx=1",
            "--outcome-canceled=0.1",
            "--cancel-spelling=cancelled",
            "--outcome-partial=0.2",
            "--outcome-timed-out=0.3",
            "--outcome-expired=0.4",
            "--outcome-no-outputs=0.5",
            "--failure-output-envelope=0.6",
            "--dispatch-delay-s=1.5",
            "--list-lag-s=12",
            "--outputs-per-run=4",
            "--processing=instant",
            "--instant-output-bytes=1000000",
            "--create-429=0.05",
            "--output-unchanged=0.01",
            "--output-blank=0.02",
            "--output-cropped=0.03",
            "--output-halo=0.04",
        ]
    )
    assert faults_from_args(args) == FaultSettings(
        idempotency_keys="ignore",
        create_answer_reset=0.5,
        rate_limit_headers="both",
        retry_after_s=3.0,
        get_429=0.25,
        list_4xx=1.0,
        outcome_canceled=0.1,
        cancel_spelling="cancelled",
        outcome_partial=0.2,
        outcome_timed_out=0.3,
        outcome_expired=0.4,
        outcome_no_outputs=0.5,
        failure_output_envelope=0.6,
        dispatch_delay_s=1.5,
        list_lag_s=12.0,
        outputs_per_run=4,
        processing="instant",
        instant_output_bytes=1_000_000,
        create_429=0.05,
        output_unchanged=0.01,
        output_blank=0.02,
        output_cropped=0.03,
        output_halo=0.04,
    )


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert all(f"--{name.replace('_', '-')}" in shown for name in FaultSettings().to_dict())
