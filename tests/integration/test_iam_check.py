"""The IAM check: calls recorded by a recording moto server over HTTP, judged against the template's
expanded policies (backdrop_local.iamrecord, iampolicies, iamcheck)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from backdrop_local import iamcheck, iampolicies
from backdrop_local.aws import SECRET_ACCESS_KEY, MotoServer, Resources, client, provision
from backdrop_local.iamrecord import classify, function_access_key
from backdrop_local.template import Template

ROOT = Path(__file__).resolve().parents[2]
_numbers = itertools.count()


@dataclass
class World:
    records: Path
    template: Template
    resources: Resources

    def as_function(self, service: str, logical: str, **config: Any) -> Any:
        """A client signing as ``logical``'s role, as the local stack's functions do."""
        return boto3.client(  # type: ignore[call-overload]
            service,
            endpoint_url=self.resources.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=function_access_key(self.template.stack_name, logical),
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=Config(**config),
        )


@pytest.fixture(scope="module")
def recording_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    # Not under an `iam` folder: these records hold calls denied on purpose, which the e2e session's
    # check must not judge.
    records = tmp_path_factory.mktemp("recorded-calls")
    server = MotoServer(record_dir=records, instance="recorded")
    endpoint = server.start()
    yield endpoint, records
    server.stop()


@pytest.fixture
def world(recording_moto: tuple[str, Path], tmp_path: Path) -> World:
    endpoint, _records = recording_moto
    template = Template(ROOT / "template.yaml", stack_name=f"iamchk{next(_numbers)}", region="us-east-1")
    resources = provision(template, endpoint, api_key="rf_live_test", callback_secret="whsec_test")
    # Each test judges only its own stack's calls: its policies alone in a folder, with a copy of
    # the records made so far.
    folder = tmp_path / "check"
    iampolicies.write(template, iampolicies.stack_refs(template, resources), folder)
    return World(folder, template, resources)


def judged(world: World, records: Path, *, unused: bool = False) -> iamcheck.Report:
    (world.records / "recorded.calls.jsonl").write_text((records / "recorded.calls.jsonl").read_text())
    return iamcheck.check([world.records], unused=unused)


def test_an_allowed_call_is_counted_and_not_reported(world: World, recording_moto: tuple[str, Path]) -> None:
    world.as_function("dynamodb", "CopyFunction").get_item(
        TableName=world.resources.jobs_table, Key={"job_id": {"S": "nothing-here"}}
    )
    report = judged(world, recording_moto[1])
    assert report.calls == 1 and report.other_calls > 0  # provisioning used the stack's own key
    assert not report.denied


def test_a_denied_call_is_reported_with_function_action_and_resource(
    world: World, recording_moto: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # The callback function may only queue copies: writing a result is the copy function's.
    world.as_function("s3", "CallbackFunction").put_object(
        Bucket=world.resources.results_bucket, Key="results/x/forged.png", Body=b"x"
    )
    report = judged(world, recording_moto[1])
    result_arn = f"arn:aws:s3:::{world.resources.results_bucket}/results/x/forged.png"
    assert list(report.denied) == [
        iamcheck.Denial(world.template.stack_name, "CallbackFunction", "s3:PutObject", result_arn)
    ]
    assert iamcheck.main([str(world.records)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "IAM calls=1 denied=1"
    assert f"CallbackFunction s3:PutObject on {result_arn}" in out


def test_a_presigned_get_is_the_signing_functions_call(
    world: World, recording_moto: tuple[str, Path]
) -> None:
    """Runflow fetches the upload through the submit function's presigned URL: AWS authorizes that
    GET with the submit function's role, so it is recorded as the submit function's call."""
    s3 = client("s3", world.resources.endpoint_url, "us-east-1")
    put = s3.put_object(Bucket=world.resources.uploads_bucket, Key="uploads/p/photo.png", Body=b"png")
    # As the submit function presigns (services.presign_s3): SigV4.
    url = world.as_function("s3", "SubmitFunction", signature_version="s3v4").generate_presigned_url(
        "get_object",
        Params={
            "Bucket": world.resources.uploads_bucket,
            "Key": "uploads/p/photo.png",
            "VersionId": put["VersionId"],
        },
    )
    assert httpx.get(url).content == b"png"
    lines = [
        json.loads(line) for line in (recording_moto[1] / "recorded.calls.jsonl").read_text().splitlines()
    ]
    [fetch] = [
        c for c in lines if c["key"] == function_access_key(world.template.stack_name, "SubmitFunction")
    ]
    assert fetch["action"] == "s3:GetObjectVersion"
    assert fetch["resource"] == f"arn:aws:s3:::{world.resources.uploads_bucket}/uploads/p/photo.png"
    assert not judged(world, recording_moto[1]).denied


def test_a_request_the_recorder_cannot_name_fails_the_check(
    world: World, recording_moto: tuple[str, Path]
) -> None:
    with pytest.raises(ClientError):  # moto has none set; the call is what counts
        world.as_function("s3", "CopyFunction").get_bucket_ownership_controls(
            Bucket=world.resources.results_bucket
        )
    report = judged(world, recording_moto[1])
    [denial] = report.denied
    assert denial.function == "CopyFunction" and denial.action == "s3:UNMAPPED"
    assert "ownershipControls" in denial.request


def test_unused_lists_each_statement_action_no_call_used(
    world: World, recording_moto: tuple[str, Path]
) -> None:
    world.as_function("dynamodb", "CopyFunction").get_item(
        TableName=world.resources.jobs_table, Key={"job_id": {"S": "nothing-here"}}
    )
    report = judged(world, recording_moto[1], unused=True)
    unused = set(report.unused)
    assert ("CopyFunction", "UpdateJobs", "dynamodb:UpdateItem") in unused
    assert ("CopyFunction", "UpdateJobs", "dynamodb:GetItem") not in unused  # the call used it
    # Kept for a failure path, with its reason: listed apart, not as unused.
    assert ("CopyFunction", "WriteResults", "s3:AbortMultipartUpload") not in unused
    assert ("CopyFunction", "WriteResults", "s3:AbortMultipartUpload") in [r[:3] for r in report.rare_unused]
    assert all(reason for *_key, reason in report.rare_unused)
    assert report.lines(show_unused=True)[0] == f"IAM calls=1 denied=0 unused={len(report.unused)}"


def test_bucket_policies_deny_plain_http_and_unknown_conditions_fail_loudly(world: World) -> None:
    doc = json.loads(next(world.records.glob("*.policies.json")).read_text())
    [generation] = doc["generations"]
    copy_role = generation["functions"]["CopyFunction"]
    result = f"arn:aws:s3:::{world.resources.results_bucket}/results/a.png"
    assert iamcheck.decide(copy_role, generation["resource_policies"], "s3:PutObject", result).allowed
    insecure = iamcheck.decide(
        copy_role, generation["resource_policies"], "s3:PutObject", result, {"aws:SecureTransport": "false"}
    )
    assert not insecure.allowed and insecure.explicit_deny
    odd = {
        "Effect": "Allow",
        "Action": "s3:*",
        "Resource": "*",
        "Condition": {"DateGreaterThan": {"aws:x": "1"}},
    }
    with pytest.raises(iamcheck.UnsupportedCondition):
        iamcheck.decide({"inline": [{"name": "p", "statements": [odd]}]}, [], "s3:GetObject", result)


def test_policies_are_the_template_expanded_as_sam_deploys_it(world: World) -> None:
    doc = json.loads(next(world.records.glob("*.policies.json")).read_text())
    functions = doc["generations"][0]["functions"]
    copy_role = functions["CopyFunction"]
    assert {m["name"] for m in copy_role["managed"]} >= {
        "AWSLambdaBasicExecutionRole",
        "AWSLambdaSQSQueueExecutionRole",  # SAM's, for the copy queue's event source
    }
    statements = {s["Sid"]: s for policy in copy_role["inline"] for s in policy["statements"]}
    assert statements["UpdateJobs"]["Resource"] == (
        f"arn:aws:dynamodb:us-east-1:123456789012:table/{world.resources.jobs_table}"
    )
    secret = client("secretsmanager", world.resources.endpoint_url, "us-east-1").describe_secret(
        SecretId=world.resources.callback_secret_name
    )
    callback = {s["Sid"]: s for p in functions["CallbackFunction"]["inline"] for s in p["statements"]}
    assert callback["ReadCallbackSigningSecret"]["Resource"] == secret["ARN"]  # Ref of a secret is its ARN


_AUTH = {
    "authorization": "AWS4-HMAC-SHA256 Credential=fn-s-CopyFunction/20261206/us-east-1/{}/aws4_request, x"
}


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "body", "expected"),
    [
        ("HEAD", "/b/uploads/a%20b.jpg", "", {}, b"", [("s3:GetObject", "arn:aws:s3:::b/uploads/a b.jpg")]),
        ("GET", "/b/k", "versionId=v1", {}, b"", [("s3:GetObjectVersion", "arn:aws:s3:::b/k")]),
        ("POST", "/b/k", "uploads=", {}, b"", [("s3:PutObject", "arn:aws:s3:::b/k")]),
        ("PUT", "/b/k", "partNumber=2&uploadId=u", {}, b"", [("s3:PutObject", "arn:aws:s3:::b/k")]),
        ("DELETE", "/b/k", "uploadId=u", {}, b"", [("s3:AbortMultipartUpload", "arn:aws:s3:::b/k")]),
        ("DELETE", "/b/k", "", {}, b"", [("s3:DeleteObject", "arn:aws:s3:::b/k")]),
        (
            "PUT",
            "/b/k",
            "",
            {"x-amz-copy-source": "/src/a%2Bb?versionId=v"},
            b"",
            [("s3:PutObject", "arn:aws:s3:::b/k"), ("s3:GetObjectVersion", "arn:aws:s3:::src/a+b")],
        ),
        (
            "POST",
            "/b",
            "delete=",
            {},
            b"<Delete><Object><Key>r/1.png</Key></Object><Object><Key>r/&amp;.png</Key></Object></Delete>",
            [("s3:DeleteObject", "arn:aws:s3:::b/r/1.png"), ("s3:DeleteObject", "arn:aws:s3:::b/r/&.png")],
        ),
        ("GET", "/b", "list-type=2&prefix=results%2F", {}, b"", [("s3:ListBucket", "arn:aws:s3:::b")]),
        ("GET", "/b", "versions=", {}, b"", [("s3:ListBucketVersions", "arn:aws:s3:::b")]),
    ],
)
def test_s3_requests_are_named_as_iam_names_them(
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    expected: list[tuple[str, str]],
) -> None:
    auth = {"authorization": _AUTH["authorization"].format("s3")}
    named = classify(method, "127.0.0.1:5000", path, query, {**auth, **headers}, body)
    assert named is not None
    key, service, calls = named
    assert (key, service) == ("fn-s-CopyFunction", "s3")
    assert [(c["action"], c["resource"]) for c in calls] == expected


def test_json_and_query_protocol_calls_name_their_resource() -> None:
    def named(service: str, target: str, params: dict[str, Any]) -> list[tuple[str, str]]:
        headers = {"authorization": _AUTH["authorization"].format(service), "x-amz-target": target}
        result = classify("POST", "h", "/", "", headers, json.dumps(params).encode())
        assert result is not None
        return [(c["action"], c["resource"]) for c in result[2]]

    table = "arn:aws:dynamodb:us-east-1:123456789012:table/t"
    assert named("dynamodb", "DynamoDB_20120810.Query", {"TableName": "t", "IndexName": "ByRunId"}) == [
        ("dynamodb:Query", f"{table}/index/ByRunId")
    ]
    assert named(
        "dynamodb",
        "DynamoDB_20120810.TransactWriteItems",
        {"TransactItems": [{"Update": {"TableName": "t"}}, {"ConditionCheck": {"TableName": "t"}}]},
    ) == [("dynamodb:UpdateItem", table), ("dynamodb:ConditionCheckItem", table)]
    assert named(
        "sqs", "AmazonSQS.SendMessageBatch", {"QueueUrl": "http://h/123456789012/q-copies", "Entries": []}
    ) == [("sqs:SendMessage", "arn:aws:sqs:us-east-1:123456789012:q-copies")]
    assert named("events", "AWSEvents.PutEvents", {"Entries": [{"Source": "backdrop"}]}) == [
        ("events:PutEvents", "arn:aws:events:us-east-1:123456789012:event-bus/default")
    ]
    # The older query protocol: the action and queue in the form body.
    headers = {"authorization": _AUTH["authorization"].format("sqs")}
    form = b"Action=DeleteMessage&QueueUrl=http%3A%2F%2Fh%2F123456789012%2Fq"
    result = classify("POST", "h", "/", "", headers, form)
    assert result is not None
    assert [(c["action"], c["resource"]) for c in result[2]] == [
        ("sqs:DeleteMessage", "arn:aws:sqs:us-east-1:123456789012:q")
    ]
    assert classify("GET", "h", "/b/k", "", {}, b"") is None  # unsigned: nobody's call
