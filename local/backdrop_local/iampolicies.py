"""The template's IAM policies as AWS would hold them for one stack, for ``backdrop_local.iamcheck``.

``template.yaml`` is translated by samtranslator (the library behind ``sam deploy``'s transform and
CloudFormation's ``AWS::Serverless`` transform), so each function's role gets exactly the inline
statements, policy templates and AWS managed policies SAM gives it (the basic execution role,
X-Ray, the SQS poller's role). Ref, Fn::GetAtt and Fn::Sub are then resolved against the stack's
parameter values and the real names and ARNs of its resources (a queue's URL, a secret's ARN with
its random suffix). Managed policies come from moto's copy of AWS's documents.

Bucket and queue policies are kept too: their Deny statements (only HTTPS to the buckets) apply
to every caller.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import boto3
from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]

from backdrop_local.aws import Resources, client
from backdrop_local.iamrecord import ACCOUNT_ID, POLICIES_SUFFIX, function_access_key
from backdrop_local.template import Template

_RESOURCE_POLICY_TYPES = {"AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy"}


def _managed_documents() -> dict[str, Any]:
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    documents: dict[str, Any] = json.loads(aws_managed_policies_data)
    return documents


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    statements = document.get("Statement", [])
    return list(statements) if isinstance(statements, list) else [statements]


_translated: dict[str, dict[str, Any]] = {}


def translate(template: Template) -> dict[str, Any]:
    """The template as CloudFormation sees it after the Serverless transform (intrinsics left in,
    so the stack's name and resources are resolved afterwards). Kept per template text and
    parameter values: every local stack of a test session translates the same one."""
    text = json.dumps([template.doc, template.parameters, template.region], sort_keys=True)
    if text not in _translated:
        _translated[text] = _translate(template)
    return copy.deepcopy(_translated[text])


def _translate(template: Template) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(template.doc))
    # As `sam package` leaves it: code locations are S3 URIs by the time the transform runs.
    for resource in doc["Resources"].values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):
                props[key] = f"s3://backdrop-packaged/{props[key]}"
    session = boto3.session.Session(
        region_name=template.region,
        aws_access_key_id="offline",
        aws_secret_access_key="offline",  # noqa: S106 - never used: nothing is called
    )
    parameters: dict[str, Any] = {
        **template.parameters,
        "AWS::Region": template.region,
        "AWS::AccountId": ACCOUNT_ID,
        # The transform keeps ${AWS::StackName} in the policies: resolved per stack below.
        "AWS::StackName": "backdrop",
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
    }
    translator = Translator({}, Parser(), boto_session=session)
    translated: dict[str, Any] = translator.translate(doc, parameters)
    translator.metrics.publish()  # to its no-op publisher; unpublished metrics warn at exit
    return translated


def expand(template: Template, refs: dict[str, str]) -> dict[str, Any]:
    """Each function's policies and the resource policies, resolved; ``refs`` gives what Ref of a
    resource is in this stack where it is not its name (a queue's URL, a secret's ARN)."""
    translated = translate(template)
    # Resolved against the SAM document (the logical ids the policies name), with this stack's refs;
    # a copy, so that the stack's own template (the functions' environment) is left as it is.
    resolver = copy.copy(template)
    resolver._refs = {**template._refs, **refs}
    managed = _managed_documents()
    functions: dict[str, Any] = {}
    for logical in template.functions():
        role_id = f"{logical}Role"
        role = translated["Resources"].get(role_id, {}).get("Properties", {})
        inline = [
            {
                "name": policy["PolicyName"],
                "statements": _statements(resolver.evaluate(copy.deepcopy(policy["PolicyDocument"]))),
            }
            for policy in role.get("Policies", [])
        ]
        managed_policies = []
        for arn in role.get("ManagedPolicyArns", []):
            arn = resolver.evaluate(arn)
            name = str(arn).rsplit("/", 1)[-1]
            if name not in managed:
                raise ValueError(f"{logical}: managed policy {arn} has no known document")
            managed_policies.append(
                {"name": name, "arn": arn, "statements": _statements(managed[name]["Document"])}
            )
        functions[logical] = {
            "access_key": function_access_key(template.stack_name, logical),
            "role": role_id,
            "inline": inline,
            "managed": managed_policies,
        }
    resource_policies = [
        {
            "name": logical,
            "statements": _statements(resolver.evaluate(copy.deepcopy(res["Properties"]["PolicyDocument"]))),
        }
        for logical, res in template.doc["Resources"].items()
        if res["Type"] in _RESOURCE_POLICY_TYPES
    ]
    return {"functions": functions, "resource_policies": resource_policies}


def stack_refs(template: Template, resources: Resources) -> dict[str, str]:
    """What Ref of a resource gives in this stack where it is not the name: a queue's URL, a
    secret's ARN (with the random suffix Secrets Manager adds)."""
    refs = {logical: url for logical, (url, _arn) in resources.queues.items()}
    sm = client("secretsmanager", resources.endpoint_url, resources.region)
    for logical in template.resources_of_type("AWS::SecretsManager::Secret"):
        refs[logical] = str(sm.describe_secret(SecretId=template.physical_id(logical))["ARN"])
    return refs


def write(template: Template, refs: dict[str, str], record_dir: Path) -> Path:
    """Appends this configuration of the stack's policies to ``<record_dir>/<stack>.policies.json``.
    A stack update adds a generation; each call is judged by the one in force when it was made."""
    path = record_dir / f"{template.stack_name}{POLICIES_SUFFIX}"
    record_dir.mkdir(parents=True, exist_ok=True)
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {
            "instance": template.stack_name,
            "account": ACCOUNT_ID,
            "region": template.region,
            "generations": [],
        }
    doc["generations"].append(
        {"since": round(time.time(), 3), "parameters": dict(template.parameters), **expand(template, refs)}
    )
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path
