"""The parts of backdrop_local.samlocal that need no Docker engine: the egress trap (also against the
SAM CLI's own weekly version check), the SAM CLI's environment, the local template and env-vars files."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from backdrop_local.samlocal import (
    LOCAL_ONLY_VARIABLES,
    EgressTrap,
    local_template,
    prepare_sam_app_dir,
    sam_environment,
    sam_executable,
    write_env_vars,
)

ENDPOINT = "http://172.17.0.1:4566"  # a value only: nothing here contacts it


def test_trap_records_and_refuses_what_asks_to_go_out() -> None:
    with EgressTrap() as trap:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": trap.url, "https": trap.url})
        )
        # .invalid never resolves (RFC 2606), and the trap never forwards anyway.
        with pytest.raises(urllib.error.URLError):
            opener.open("https://sts.example.invalid/", timeout=5)
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open("http://sts.example.invalid/", timeout=5)
        assert refused.value.code == 403
        assert trap.attempts == [
            "CONNECT sts.example.invalid:443 HTTP/1.1",
            "GET http://sts.example.invalid/ HTTP/1.1",
        ]


def test_sam_environment_points_every_aws_endpoint_at_the_local_one(tmp_path: Path) -> None:
    base = {
        "PATH": "/usr/bin",
        "AWS_PROFILE": "prod",
        "AWS_ENDPOINT_URL_S3": "https://s3.example.invalid",
        "BACKDROP_JOBS_TABLE": "from-my-shell",
        "POWERTOOLS_LOG_LEVEL": "DEBUG",
        "https_proxy": "http://corporate.example.invalid:3128",
    }
    env = sam_environment(
        ENDPOINT, app_dir=tmp_path, proxy_url="http://127.0.0.1:9", local_hosts=["172.17.0.1"], base=base
    )
    assert env["PATH"] == "/usr/bin"
    # Nothing of the caller's AWS or project settings: SAM would pass a declared name to the functions.
    for gone in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "BACKDROP_JOBS_TABLE", "POWERTOOLS_LOG_LEVEL"):
        assert gone not in env
    assert env["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_STS"] == ENDPOINT
    assert env["AWS_CONFIG_FILE"] == env["AWS_SHARED_CREDENTIALS_FILE"] == os.devnull
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert env["SAM_CLI_TELEMETRY"] == "0"
    assert env["https_proxy"] == env["HTTPS_PROXY"] == "http://127.0.0.1:9"
    assert env["NO_PROXY"] == "127.0.0.1,localhost,172.17.0.1"


def run_generate_event(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # A SAM command that needs no Docker and, like `local invoke`, runs SAM's weekly version check.
    return subprocess.run(
        [str(sam_executable()), "local", "generate-event", "s3", "put"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sam_cli_version_check_is_marked_done_and_the_trap_would_catch_it(tmp_path: Path) -> None:
    with EgressTrap() as trap:
        env = sam_environment(ENDPOINT, app_dir=tmp_path, proxy_url=trap.url, local_hosts=["172.17.0.1"])
        # Overdue: SAM CLI asks the package index for its latest version (https), and the trap
        # refuses it.
        (tmp_path / "metadata.json").write_text(json.dumps({"lastVersionCheck": 0}))
        result = run_generate_event(env)
        assert result.returncode == 0, result.stderr
        assert len(trap.attempts) == 1, trap.attempts
        method, target, _ = trap.attempts[0].split()
        assert (method, target.rsplit(":", 1)[1]) == ("CONNECT", "443")
        # As SamLocal prepares it: nothing asks to go out.
        prepare_sam_app_dir(tmp_path)
        before = len(trap.attempts)
        result = run_generate_event(env)
        assert result.returncode == 0, result.stderr
        assert trap.attempts[before:] == []


def write_built(tmp_path: Path, variables: dict[str, str]) -> Path:
    built = tmp_path / "template.yaml"
    built.write_text(
        "Globals:\n  Function:\n    Environment:\n      Variables:\n"
        + "".join(f"        {k}: {json.dumps(v)}\n" for k, v in variables.items())
        + "Resources:\n  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n"
        + "      CodeUri: Fn\n      Handler: app.handler\n      Environment:\n        Variables:\n"
        + "          OWN:\n            Ref: AWS::Region\n"
    )
    return built


def test_local_template_declares_only_what_is_missing(tmp_path: Path) -> None:
    built = write_built(tmp_path, {"BACKDROP_JOBS_TABLE": "jobs", "AWS_ENDPOINT_URL": ""})
    derived = local_template(built)
    assert derived == tmp_path / "template.samlocal.json"  # beside it: CodeUri stays relative
    doc = json.loads(derived.read_text())
    assert doc["Globals"]["Function"]["Environment"]["Variables"] == {
        "BACKDROP_JOBS_TABLE": "jobs",
        "AWS_ENDPOINT_URL": "",
        "BACKDROP_INSECURE_OUTPUT_ORIGIN": "",
    }
    assert doc["Resources"]["Fn"]["Properties"]["Environment"]["Variables"] == {"OWN": {"Ref": "AWS::Region"}}


def test_local_template_is_the_built_one_once_the_template_declares_them(tmp_path: Path) -> None:
    built = write_built(tmp_path, dict.fromkeys(LOCAL_ONLY_VARIABLES, ""))
    assert local_template(built) == built


def test_env_vars_file_has_an_entry_per_function(tmp_path: Path) -> None:
    path = write_env_vars(
        tmp_path / "env.json",
        ["A", "B"],
        {"AWS_ENDPOINT_URL": ENDPOINT},
        per_function={"B": {"BACKDROP_CALLBACK_URL": "", "AWS_ENDPOINT_URL": "http://172.17.0.1:1"}},
    )
    assert json.loads(path.read_text()) == {
        "A": {"AWS_ENDPOINT_URL": ENDPOINT},
        "B": {"AWS_ENDPOINT_URL": "http://172.17.0.1:1", "BACKDROP_CALLBACK_URL": ""},
    }
