"""The IAM check's part in `make sam-local` that needs no Docker engine: each function's container
signs as that function (SAM hands a container the SAM CLI's own credentials), SAM's own STS call
needs no permission, and the run's calls are judged with the template's policies."""

from __future__ import annotations

import json
from pathlib import Path

from backdrop_local import iamcheck
from backdrop_local.aws import ACCESS_KEY_ID
from backdrop_local.iamrecord import CALLS_SUFFIX, POLICIES_SUFFIX
from backdrop_local.samcheck import iam_check
from backdrop_local.samlocal import SamLocal, api_functions

ROOT = Path(__file__).resolve().parents[2]
KEYS = {name: f"fn-sam-{name}" for name in ("SubmitFunction", "CallbackFunction", "CopyFunction")}


def _sam(tmp_path: Path) -> SamLocal:
    return SamLocal(
        endpoint_url="http://172.17.0.1:4566",  # a value only: nothing here contacts it
        image="backdrop-lambda-python3.12",
        template=ROOT / "template.yaml",
        state_dir=tmp_path,
        sam=Path("/nonexistent/sam"),
        function_keys=KEYS,
    )


def test_each_invoke_runs_sam_with_that_functions_key(tmp_path: Path) -> None:
    sam = _sam(tmp_path)
    assert sam.env_for(["CopyFunction"])["AWS_ACCESS_KEY_ID"] == "fn-sam-CopyFunction"
    assert sam.env_for(["SubmitFunction"])["AWS_ACCESS_KEY_ID"] == "fn-sam-SubmitFunction"
    # A function without its own key, or several at once, keep the shared local key.
    assert sam.env_for(["ReconcileFunction"])["AWS_ACCESS_KEY_ID"] == ACCESS_KEY_ID
    assert sam.env_for(["CopyFunction", "SubmitFunction"])["AWS_ACCESS_KEY_ID"] == ACCESS_KEY_ID


def test_start_api_serves_the_callback_function_under_its_key(tmp_path: Path) -> None:
    assert api_functions(ROOT / "template.yaml") == ["CallbackFunction"]
    assert _sam(tmp_path).env_for(api_functions(ROOT / "template.yaml"))["AWS_ACCESS_KEY_ID"] == (
        "fn-sam-CallbackFunction"
    )


def test_sam_clis_own_account_lookup_needs_no_permission() -> None:
    assert iamcheck.decide({"inline": [], "managed": []}, [], "sts:GetCallerIdentity", "*").allowed


def test_the_runs_calls_are_judged_and_a_denial_named(tmp_path: Path) -> None:
    role = {
        "access_key": "fn-sam-CopyFunction",
        "inline": [
            {
                "name": "CopyFunctionRolePolicy0",
                "statements": [
                    {"Sid": "UpdateJobs", "Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": "*"}
                ],
            }
        ],
        "managed": [],
    }
    (tmp_path / f"sam{POLICIES_SUFFIX}").write_text(
        json.dumps(
            {
                "instance": "sam",
                "generations": [{"since": 0, "functions": {"CopyFunction": role}, "resource_policies": []}],
            }
        )
    )
    calls = [
        {
            "t": 1,
            "key": "fn-sam-CopyFunction",
            "action": "dynamodb:GetItem",
            "resource": "arn:t",
            "status": 200,
        },
        {
            "t": 2,
            "key": "fn-sam-CopyFunction",
            "action": "sqs:SendMessage",
            "resource": "arn:q",
            "status": 200,
        },
        {
            "t": 3,
            "key": "fn-sam-CopyFunction",
            "action": "sts:GetCallerIdentity",
            "resource": "*",
            "status": 200,
        },
    ]
    (tmp_path / f"sam{CALLS_SUFFIX}").write_text("".join(json.dumps(c) + "\n" for c in calls))
    lines = iam_check(tmp_path)
    assert lines[0] == "IAM calls=3 denied=1"
    assert lines[1] == "  DENIED (1x) sam CopyFunction sqs:SendMessage on arn:q"
