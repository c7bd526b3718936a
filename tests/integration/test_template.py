"""Checks of template.yaml: it lints clean, and it keeps the properties an operator relies on.

Runs offline: `sam validate --lint` needs no AWS credentials, and the SAM transform check below uses
the samtranslator library that ships with aws-sam-cli.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode_str

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
CONFIG_PY = ROOT / "layers" / "core" / "backdrop" / "config.py"
LOCAL_ONLY_VARS = {"BACKDROP_INSECURE_OUTPUT_ORIGIN"}
COARSE_POLICY_TEMPLATES = {"S3CrudPolicy", "S3WritePolicy", "S3FullAccessPolicy", "DynamoDBCrudPolicy"}


# ---------------------------------------------------------------------------- helpers


def _plain(node: Any) -> Any:
    """cfn-lint's decoded nodes (dict_node, str_node, ...) as plain Python values."""
    return json.loads(json.dumps(node, default=str))


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, matches = decode_str(TEMPLATE.read_text(encoding="utf-8"))
    assert not matches, [str(m) for m in matches]
    assert decoded is not None
    return _plain(decoded)


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


def _props(resources: dict[str, Any], logical_id: str) -> dict[str, Any]:
    assert logical_id in resources, f"{logical_id} missing from template.yaml"
    return resources[logical_id].get("Properties", {})


def _of_type(resources: dict[str, Any], type_: str) -> dict[str, Any]:
    return {name: res for name, res in resources.items() if res["Type"] == type_}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _function_props(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    """A function's properties with Globals.Function merged underneath (shallow, env merged)."""
    globals_fn = template.get("Globals", {}).get("Function", {})
    own = _props(template["Resources"], logical_id)
    merged = {**globals_fn, **own}
    env = {
        **globals_fn.get("Environment", {}).get("Variables", {}),
        **own.get("Environment", {}).get("Variables", {}),
    }
    merged["Environment"] = {"Variables": env}
    return merged


def _iam_statements(resources: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every identity-policy statement: function inline Policies plus raw IAM resources."""
    for name, res in _of_type(resources, "AWS::Serverless::Function").items():
        for policy in _as_list(res.get("Properties", {}).get("Policies", [])):
            if isinstance(policy, dict) and "Statement" in policy:
                for statement in _as_list(policy["Statement"]):
                    yield name, statement
    for name, res in resources.items():
        props = res.get("Properties", {})
        if res["Type"] in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
            documents = [props.get("PolicyDocument", {})]
        elif res["Type"] == "AWS::IAM::Role":
            documents = [p.get("PolicyDocument", {}) for p in props.get("Policies", [])]
        else:
            continue
        for document in documents:
            for statement in _as_list(document.get("Statement", [])):
                yield name, statement


def _tls_only(resources: dict[str, Any], bucket_id: str) -> bool:
    for res in _of_type(resources, "AWS::S3::BucketPolicy").values():
        props = res["Properties"]
        if props.get("Bucket") != {"Ref": bucket_id}:
            continue
        for statement in _as_list(props["PolicyDocument"]["Statement"]):
            secure = statement.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")
            if statement.get("Effect") == "Deny" and str(secure).lower() == "false":
                return True
    return False


# ---------------------------------------------------------------------------- lint


def test_sam_validate_lint_passes() -> None:
    sam = Path(sys.executable).parent / "sam"
    assert sam.exists(), f"sam CLI not found next to {sys.executable}"
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    result = subprocess.run(
        [str(sam), "validate", "--lint", "--region", "us-east-1", "--template-file", str(TEMPLATE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    print(result.stdout)
    print(result.stderr, file=sys.stderr)
    assert result.returncode == 0, f"sam validate --lint failed:\n{result.stdout}\n{result.stderr}"


def test_transformed_template_lints_clean(template: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """cfn-lint 1.x lints SAM templates without running the SAM transform, so it cannot see the
    resources SAM generates (e.g. an HttpApi whose body references its function, which makes a
    circular dependency if that function's environment references the API). Transform offline and
    lint the CloudFormation that would actually be deployed."""
    from cfnlint.api import lint
    from samtranslator.translator.transform import transform

    class _ManagedPolicies:
        def load(self) -> dict[str, str]:
            names = ["AWSLambdaBasicExecutionRole", "AWSLambdaSQSQueueExecutionRole"]
            arns = {n: f"arn:aws:iam::aws:policy/service-role/{n}" for n in names}
            arns["AWSXrayWriteOnlyAccess"] = "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess"
            return arns

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    sam_template = json.loads(json.dumps(template))
    for res in sam_template["Resources"].values():  # sam build/package would upload these
        props = res.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = "s3://artifact-bucket/artifact.zip"
    cfn = transform(sam_template, {}, _ManagedPolicies())
    matches = lint(json.dumps(cfn), regions=["us-east-1"])
    assert not matches, "\n".join(str(m) for m in matches)


# ---------------------------------------------------------------------------- buckets


def test_results_and_uploads_buckets_differ_and_only_uploads_notifies(resources: dict[str, Any]) -> None:
    uploads, results = _props(resources, "UploadsBucket"), _props(resources, "ResultsBucket")
    assert uploads["BucketName"] != results["BucketName"]
    notifying = {
        name
        for name, res in _of_type(resources, "AWS::S3::Bucket").items()
        if res.get("Properties", {}).get("NotificationConfiguration")
    }
    assert notifying == {"UploadsBucket"}


def test_upload_notification_goes_to_queue_filtered_on_upload_prefix(resources: dict[str, Any]) -> None:
    uploads = resources["UploadsBucket"]
    queue_configs = uploads["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert len(queue_configs) == 1
    config = queue_configs[0]
    assert config["Event"] == "s3:ObjectCreated:*"
    assert config["Queue"] == {"Fn::GetAtt": ["UploadsQueue", "Arn"]}
    rules = config["Filter"]["S3Key"]["Rules"]
    assert {"Name": "prefix", "Value": {"Ref": "UploadPrefix"}} in rules
    assert "UploadsQueuePolicy" in _as_list(uploads.get("DependsOn", []))


@pytest.mark.parametrize("bucket_id", ["UploadsBucket", "ResultsBucket"])
def test_bucket_hardening(resources: dict[str, Any], bucket_id: str) -> None:
    props = _props(resources, bucket_id)
    block = props["PublicAccessBlockConfiguration"]
    for flag in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
        assert block.get(flag) is True, f"{bucket_id}: {flag} must be true"
    sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse and sse[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert _tls_only(resources, bucket_id), f"{bucket_id} needs a TLS-only (aws:SecureTransport) policy"
    rules = props["LifecycleConfiguration"]["Rules"]
    assert any(
        r.get("Status") == "Enabled"
        and r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation")
        for r in rules
    ), f"{bucket_id} must abort incomplete multipart uploads"


def test_uploads_bucket_is_versioned(resources: dict[str, Any]) -> None:
    assert _props(resources, "UploadsBucket")["VersioningConfiguration"]["Status"] == "Enabled"


# ---------------------------------------------------------------------------- queue


def test_queue_redrive_and_visibility_timeout(template: dict[str, Any], resources: dict[str, Any]) -> None:
    queue = _props(resources, "UploadsQueue")
    redrive = queue["RedrivePolicy"]
    assert int(redrive["maxReceiveCount"]) == 5
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["UploadsDeadLetterQueue", "Arn"]}
    submit_timeout = int(_function_props(template, "SubmitFunction")["Timeout"])
    assert int(queue["VisibilityTimeout"]) >= 6 * submit_timeout


def test_submit_sqs_event_reports_partial_failures_and_is_capped(template: dict[str, Any]) -> None:
    events = _function_props(template, "SubmitFunction")["Events"]
    sqs = [e["Properties"] for e in events.values() if e["Type"] == "SQS"]
    assert len(sqs) == 1
    assert sqs[0]["Queue"] == {"Fn::GetAtt": ["UploadsQueue", "Arn"]}
    assert "ReportBatchItemFailures" in sqs[0]["FunctionResponseTypes"]
    assert sqs[0]["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "SubmitMaxConcurrency"}
    param = template["Parameters"]["SubmitMaxConcurrency"]
    assert int(param["MinValue"]) >= 2 and int(param["MaxValue"]) <= 1000


# ---------------------------------------------------------------------------- table


def test_jobs_table(resources: dict[str, Any]) -> None:
    table = resources["JobsTable"]
    props = table["Properties"]
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["KeySchema"] == [{"AttributeName": "job_id", "KeyType": "HASH"}]
    attribute_types = {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]}
    indexes = {gsi["IndexName"]: gsi for gsi in props["GlobalSecondaryIndexes"]}
    assert indexes["ByRunId"]["KeySchema"] == [{"AttributeName": "run_id", "KeyType": "HASH"}]
    assert indexes["OpenJobs"]["KeySchema"] == [
        {"AttributeName": "open_shard", "KeyType": "HASH"},
        {"AttributeName": "created_at", "KeyType": "RANGE"},
    ]
    for name in ("job_id", "run_id", "open_shard", "created_at"):
        assert attribute_types[name] == "S"
    assert table.get("DeletionPolicy") == "Retain"


# ---------------------------------------------------------------------------- callback


def test_callback_function_route_and_reserved_concurrency(template: dict[str, Any]) -> None:
    callback = _function_props(template, "CallbackFunction")
    assert callback.get("ReservedConcurrentExecutions") is not None
    routes = [e["Properties"] for e in callback["Events"].values() if e["Type"] == "HttpApi"]
    assert any(
        r["Method"].upper() == "POST"
        and r["Path"] == "/runflow/callback"
        and r.get("ApiId") == {"Ref": "CallbackApi"}
        for r in routes
    ), routes
    assert template["Resources"]["CallbackApi"]["Type"] == "AWS::Serverless::HttpApi"


def test_callback_function_reads_the_runflow_api_key_and_no_other_secret(template: dict[str, Any]) -> None:
    # It reads a run the job has not recorded from Runflow before adopting it (GET /v1/runs/{id}).
    callback = _function_props(template, "CallbackFunction")
    secrets = [
        _plain(statement["Resource"])
        for policy in _as_list(callback["Policies"])
        for statement in _as_list(policy.get("Statement", []))
        if "secretsmanager:GetSecretValue" in _as_list(statement["Action"])
    ]
    assert sorted(secrets, key=str) == [{"Ref": "CallbackSigningSecret"}, {"Ref": "RunflowApiKeySecret"}]
    env = callback["Environment"]["Variables"]
    assert env["BACKDROP_RUNFLOW_API_KEY_SECRET"] == {"Ref": "RunflowApiKeySecret"}


# ---------------------------------------------------------------------------- IAM


def test_no_coarse_sam_policy_templates(resources: dict[str, Any]) -> None:
    for name, res in _of_type(resources, "AWS::Serverless::Function").items():
        for policy in _as_list(res.get("Properties", {}).get("Policies", [])):
            used = set(policy) if isinstance(policy, dict) else {policy}
            assert not used & COARSE_POLICY_TEMPLATES, f"{name} uses {used & COARSE_POLICY_TEMPLATES}"


def test_no_wildcard_actions_or_resources(resources: dict[str, Any]) -> None:
    statements = list(_iam_statements(resources))
    assert statements, "no IAM statements found"
    for name, statement in statements:
        actions = _as_list(statement.get("Action", []))
        assert "*" not in actions, f"{name}: {statement}"
        resources_ = _as_list(statement.get("Resource", []))
        assert resources_ != ["*"], f"{name}: {statement}"


# ---------------------------------------------------------------------------- environment / runtime


def _config_variables() -> set[str]:
    source = CONFIG_PY.read_text(encoding="utf-8")
    return set(re.findall(r"\"(BACKDROP_[A-Z_]+)\"", source))


def test_every_config_variable_is_set_for_every_function(template: dict[str, Any]) -> None:
    required = _config_variables() - LOCAL_ONLY_VARS
    assert required, f"no BACKDROP_* variables found in {CONFIG_PY}"
    for function_id in _of_type(template["Resources"], "AWS::Serverless::Function"):
        variables = _function_props(template, function_id)["Environment"]["Variables"]
        missing = sorted(required - set(variables))
        assert not missing, f"{function_id} lacks {missing}"
        for name in LOCAL_ONLY_VARS:
            assert name not in variables, f"{function_id} must not set {name} (local stack only)"
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    assert not sorted(required - set(shared)), "BACKDROP_* variables belong in Globals.Function"
    assert shared["POWERTOOLS_SERVICE_NAME"] == "backdrop"
    assert shared["POWERTOOLS_METRICS_NAMESPACE"] == "Backdrop"


def test_python312_layer_and_runtime(template: dict[str, Any]) -> None:
    layer = template["Resources"]["CoreLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    # Built by layers/core/Makefile: Lambda's python3.12 wheels from the hashed lock, then compiled.
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    recipe = (ROOT / layer["Properties"]["ContentUri"] / "Makefile").read_text()
    assert "build-CoreLayer:" in recipe
    assert "--python-version 3.12" in recipe and "--require-hashes" in recipe
    assert "python3.12" in layer["Properties"]["CompatibleRuntimes"]
    for function_id in _of_type(template["Resources"], "AWS::Serverless::Function"):
        props = _function_props(template, function_id)
        assert props["Runtime"] == "python3.12", function_id
        assert {"Ref": "CoreLayer"} in props["Layers"], function_id


# ---------------------------------------------------------------------------- the shop's systems


def _statements_of(resources: dict[str, Any], function_id: str) -> list[dict[str, Any]]:
    policies = _as_list(resources[function_id]["Properties"].get("Policies", []))
    return [s for p in policies if isinstance(p, dict) for s in _as_list(p.get("Statement", []))]


def test_completion_events_go_only_to_the_named_bus(resources: dict[str, Any]) -> None:
    bus_arn = {
        "Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/${EventBusName}"
    }
    for function_id in _of_type(resources, "AWS::Serverless::Function"):
        publishing = [
            s for s in _statements_of(resources, function_id) if "events:PutEvents" in _as_list(s["Action"])
        ]
        assert publishing, f"{function_id} ends jobs, so it announces them"
        for statement in publishing:
            assert _as_list(statement["Action"]) == ["events:PutEvents"]
            assert statement["Resource"] == bus_arn


def test_default_output_hosts_admit_runflow_and_its_presigned_storage_only(template: dict[str, Any]) -> None:
    from backdrop.config import load_settings
    from backdrop.outputs import host_allowed

    default = template["Parameters"]["AllowedOutputHosts"]["Default"]
    hosts = load_settings({"BACKDROP_ALLOWED_OUTPUT_HOSTS": default}).allowed_output_hosts
    assert host_allowed("files.runflow.io", hosts)
    # Where presigned R2 URLs point (Runflow's output URLs are presigned; its assets live in R2).
    assert host_allowed("0f1e2d3c4b5a69788796a5b4c3d2e1f0.r2.cloudflarestorage.com", hosts)
    # Public r2.dev buckets: any Cloudflare customer's, and never presigned.
    assert not host_allowed("pub-0f1e2d3c4b5a69788796a5b4c3d2e1f0.r2.dev", hosts)
    assert not host_allowed("r2.cloudflarestorage.com", hosts) and not host_allowed(
        "runflow.io.evil.example", hosts
    )


def test_parameters_for_rules_budget_and_bus(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    assert params["ColorRules"]["Default"] == "{}" and params["EventBusName"]["Default"] == "default"
    assert int(params["DailyRunBudget"]["MinValue"]) == 0 and int(params["DailyRunBudget"]["Default"]) > 0
    assert params["PricePerRunUsd"]["Default"] == "0.12"
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    assert shared["BACKDROP_COLOR_RULES"] == {"Ref": "ColorRules"}
    assert shared["BACKDROP_DAILY_RUN_BUDGET"] == {"Ref": "DailyRunBudget"}
    assert shared["BACKDROP_EVENT_BUS"] == {"Ref": "EventBusName"}
    assert params["Renditions"]["Default"] == "{}"
    assert shared["BACKDROP_RENDITIONS"] == {"Ref": "Renditions"}


def test_dashboard_shows_the_pipeline_and_is_an_output(template: dict[str, Any]) -> None:
    dashboard = template["Resources"]["Dashboard"]
    assert dashboard["Type"] == "AWS::CloudWatch::Dashboard"
    body = json.loads(dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
    metrics = {m[1] for w in body["widgets"] for m in w["properties"]["metrics"]}
    assert {
        "JobsSucceeded",
        "JobsFailed",
        "TimeToResult",
        "RunflowRetries",
        "ApproximateNumberOfMessagesVisible",
        "ApproximateAgeOfOldestMessage",
        "CallbacksRejected",
        "BytesCopied",
        "RunsReserved",
        "RunBudgetUsedPercent",
        "Throttles",
        "5xx",
    } <= metrics
    assert template["Outputs"]["DashboardName"]["Value"] == {"Ref": "Dashboard"}


def test_the_review_backlog_is_on_the_dashboard_with_an_alarm_on_its_age(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    body = json.loads(resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"])
    metrics = {m[1] for w in body["widgets"] for m in w["properties"]["metrics"]}
    assert {"ReviewBacklog", "OldestReviewAgeMinutes", "JobsHeldForReview", "DoubtfulPublished"} <= metrics
    alarm = resources["ReviewAgeAlarm"]["Properties"]
    assert (alarm["MetricName"], alarm["Statistic"]) == ("OldestReviewAgeMinutes", "Maximum")
    assert alarm["Threshold"] == {"Ref": "ReviewAlarmMinutes"}
    assert int(template["Parameters"]["ReviewAlarmMinutes"]["Default"]) == 1440
    assert template["Parameters"]["QualityGate"]["AllowedValues"] == ["off", "flag", "hold"]


def test_only_the_copy_function_touches_held_results(resources: dict[str, Any]) -> None:
    held = "/${ReviewPrefix}*"
    for name, function in _of_type(resources, "AWS::Serverless::Function").items():
        statements = [
            st for policy in function["Properties"].get("Policies", []) for st in policy["Statement"]
        ]
        on_held = [st for st in statements if str(st["Resource"]).find(held) >= 0]
        if name != "CopyFunction":
            assert on_held == [], name
            continue
        (statement,) = on_held
        assert set(statement["Action"]) == {
            "s3:GetObject",
            "s3:PutObject",
            "s3:AbortMultipartUpload",
            "s3:DeleteObject",
        }


def test_alarms_on_backlog_age_throttles_and_api_errors(resources: dict[str, Any]) -> None:
    alarms = {name: res["Properties"] for name, res in _of_type(resources, "AWS::CloudWatch::Alarm").items()}
    by_metric: dict[str, list[str]] = {}
    for name, props in alarms.items():
        by_metric.setdefault(props["MetricName"], []).append(name)
    assert len(by_metric["ApproximateAgeOfOldestMessage"]) == 2
    assert len(by_metric["Throttles"]) == 4
    assert by_metric["5xx"] == ["CallbackApi5xxAlarm"]
    budget = alarms["RunBudgetAlarm"]
    assert (budget["MetricName"], budget["Threshold"]) == ("RunBudgetUsedPercent", 80)
    assert resources["RunBudgetAlarm"]["Condition"] == "HasRunBudget"
