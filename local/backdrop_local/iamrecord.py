"""Records every AWS call the local stack's moto server serves, as IAM would see it.

Each function of the local stack signs its requests with an access key id of its own
(``function_access_key``), so the key in a request's SigV4 credential (the ``Authorization`` header,
or ``X-Amz-Credential`` of a presigned URL) names the function whose role AWS would authorize it
with. ``CallRecorder`` is a WSGI middleware in front of moto that turns each request into IAM
terms (``s3:GetObject`` on ``arn:aws:s3:::bucket/key``, ``sqs:SendMessage`` on a queue's ARN, ...)
and appends one JSON line per (action, resource) to ``<instance>.calls.jsonl``.
``backdrop_local.iamcheck`` evaluates those lines against the template's policies.

A request this module cannot name is recorded with the action ``<service>:UNMAPPED`` and the
request line, so the check fails on it and names it instead of letting it pass unseen.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

ACCOUNT_ID = "123456789012"  # moto's default account, the one the local stack lives in
_DEFAULT_REGION = "us-east-1"  # the local stack's region
CALLS_SUFFIX = ".calls.jsonl"
POLICIES_SUFFIX = ".policies.json"

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")
# Bodies read to name a call's resource (JSON and query protocols, S3's DeleteObjects); S3 object
# bodies are never read here.
_MAX_BODY = 16 * 1024 * 1024

# Batch forms authorized as their single action (IAM has no separate action for them).
_SINGLE_ACTION = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
_TRANSACT_ITEM_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}


def function_access_key(instance: str, logical_id: str) -> str:
    """The access key id a function of the local stack ``instance`` signs its requests with."""
    return f"fn-{instance}-{logical_id}"


def credential_of(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> tuple[str, str, str] | None:
    """(access key id, region, service) of a SigV4-signed request, header or presigned; None if unsigned."""
    match = _CREDENTIAL.search(headers.get("authorization", ""))
    if match:
        return match.group(1), match.group(2), match.group(3)
    scope = query.get("X-Amz-Credential", [""])[0]
    parts = scope.split("/")
    if len(parts) == 5 and parts[4] == "aws4_request":
        return parts[0], parts[2], parts[3]
    # S3's older signature (header or presigned URL) names no region or service: only S3 takes it.
    legacy = re.match(r"AWS ([^:\s]+):", headers.get("authorization", ""))
    if legacy:
        return legacy.group(1), _DEFAULT_REGION, "s3"
    if query.get("AWSAccessKeyId"):
        return query["AWSAccessKeyId"][0], _DEFAULT_REGION, "s3"
    return None


def _call(action: str, resource: str, **context: str) -> dict[str, Any]:
    call: dict[str, Any] = {"action": action, "resource": resource}
    if context:
        call["context"] = context
    return call


# ---------------------------------------------------------------------------------------------- S3
def _s3_object_calls(
    method: str, obj: str, query: Mapping[str, list[str]], headers: Mapping[str, str]
) -> list[dict[str, Any]]:
    version = "versionId" in query
    ctx = {"s3:VersionId": query["versionId"][0]} if version else {}
    if "uploadId" in query:
        if method == "DELETE":
            return [_call("s3:AbortMultipartUpload", obj)]
        if method == "GET":
            return [_call("s3:ListMultipartUploadParts", obj)]
        calls = [_call("s3:PutObject", obj)]  # UploadPart(Copy), CompleteMultipartUpload
        return calls + _copy_source(headers)
    if "uploads" in query and method == "POST":
        return [_call("s3:PutObject", obj)]  # CreateMultipartUpload
    for sub, name in (("tagging", "Tagging"), ("acl", "Acl")):
        if sub in query:
            verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}.get(method)
            if verb is None:
                break
            return [_call(f"s3:{verb}Object{'Version' if version else ''}{name}", obj, **ctx)]
    if "attributes" in query and method == "GET":
        return [_call(f"s3:GetObject{'Version' if version else ''}Attributes", obj, **ctx)]
    if any(not _plain_object_param(name) for name in query):
        return []  # a subresource not named above: recorded as unmapped
    if method in ("GET", "HEAD"):
        return [_call("s3:GetObjectVersion" if version else "s3:GetObject", obj, **ctx)]
    if method == "PUT":
        return [_call("s3:PutObject", obj), *_copy_source(headers)]
    if method == "DELETE":
        return [_call("s3:DeleteObjectVersion" if version else "s3:DeleteObject", obj, **ctx)]
    return []


def _plain_object_param(name: str) -> bool:
    """Query parameters that leave an object request's action as it is (version, part, presigning)."""
    lowered = name.lower()
    return lowered in ("versionid", "partnumber") or lowered.startswith(("x-amz-", "response-"))


def _copy_source(headers: Mapping[str, str]) -> list[dict[str, Any]]:
    source = headers.get("x-amz-copy-source")
    if not source:
        return []
    path, _, qs = unquote(source).lstrip("/").partition("?")
    version = "versionId=" in qs
    return [_call("s3:GetObjectVersion" if version else "s3:GetObject", f"arn:aws:s3:::{path}")]


_BUCKET_GET = {
    "versions": "s3:ListBucketVersions",
    "uploads": "s3:ListBucketMultipartUploads",
    "location": "s3:GetBucketLocation",
    "versioning": "s3:GetBucketVersioning",
    "notification": "s3:GetBucketNotification",
    "policy": "s3:GetBucketPolicy",
    "tagging": "s3:GetBucketTagging",
    "acl": "s3:GetBucketAcl",
    "lifecycle": "s3:GetLifecycleConfiguration",
    "encryption": "s3:GetEncryptionConfiguration",
}
_BUCKET_PUT = {
    "versioning": "s3:PutBucketVersioning",
    "notification": "s3:PutBucketNotification",
    "policy": "s3:PutBucketPolicy",
    "tagging": "s3:PutBucketTagging",
    "acl": "s3:PutBucketAcl",
    "lifecycle": "s3:PutLifecycleConfiguration",
    "encryption": "s3:PutEncryptionConfiguration",
}


def _s3_bucket_calls(
    method: str, bucket: str, query: Mapping[str, list[str]], body: bytes
) -> list[dict[str, Any]]:
    arn = f"arn:aws:s3:::{bucket}"
    subresources = [k for k in query if k in _BUCKET_GET or k in _BUCKET_PUT or k == "delete"]
    if any(k not in subresources and not _list_param(k) for k in query):
        return []  # a subresource not named here: recorded as unmapped
    if method == "POST" and "delete" in query:
        keys = re.findall(rb"<Key>(.*?)</Key>(?:\s*<VersionId>(.*?)</VersionId>)?", body, re.DOTALL)
        return [
            _call("s3:DeleteObjectVersion" if version else "s3:DeleteObject", f"{arn}/{_xml_text(key)}")
            for key, version in keys
        ]
    if method == "GET" and subresources:
        action = _BUCKET_GET.get(subresources[0])
        return [_call(action, arn)] if action else []
    if method in ("GET", "HEAD"):
        prefix = query.get("prefix", [""])[0]
        return [_call("s3:ListBucket", arn, **({"s3:prefix": prefix} if method == "GET" else {}))]
    if method == "PUT":
        if not subresources:
            return [_call("s3:CreateBucket", arn)]
        action = _BUCKET_PUT.get(subresources[0])
        return [_call(action, arn)] if action else []
    if method == "DELETE" and not query:
        return [_call("s3:DeleteBucket", arn)]
    return []


_LIST_PARAMS = {
    "prefix",
    "delimiter",
    "list-type",
    "max-keys",
    "continuation-token",
    "start-after",
    "marker",
    "encoding-type",
    "fetch-owner",
    "key-marker",
    "version-id-marker",
    "max-uploads",
    "upload-id-marker",
}


def _list_param(name: str) -> bool:
    return name in _LIST_PARAMS or name.lower().startswith("x-amz-")


def _xml_text(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&amp;", "&")):
        text = text.replace(entity, char)
    return text


def s3_calls(
    method: str,
    host: str,
    raw_path: str,
    query: Mapping[str, list[str]],
    headers: Mapping[str, str],
    body: bytes,
) -> list[dict[str, Any]]:
    path = unquote(raw_path)
    virtual = re.match(r"^(.+?)\.s3[.-]", host)
    if virtual:
        bucket, key = virtual.group(1), path.lstrip("/")
    else:
        bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return [_call("s3:ListAllMyBuckets", "*")] if method == "GET" else []
    if key:
        return _s3_object_calls(method, f"arn:aws:s3:::{bucket}/{key}", query, headers)
    return _s3_bucket_calls(method, bucket, query, body)


# ---------------------------------------------------------------------------------------------- others
def _queue_arn(region: str, url_or_name: str) -> str:
    if url_or_name.startswith("arn:"):
        return url_or_name
    parts = [p for p in urlsplit(url_or_name).path.split("/") if p] if "/" in url_or_name else []
    if len(parts) >= 2:
        return f"arn:aws:sqs:{region}:{parts[-2]}:{parts[-1]}"
    return f"arn:aws:sqs:{region}:{ACCOUNT_ID}:{url_or_name}"


def _table_arn(region: str, name: str, index: str | None = None) -> str:
    arn = name if name.startswith("arn:") else f"arn:aws:dynamodb:{region}:{ACCOUNT_ID}:table/{name}"
    return f"{arn}/index/{index}" if index else arn


def _bus_arn(region: str, name: str) -> str:
    return name if name.startswith("arn:") else f"arn:aws:events:{region}:{ACCOUNT_ID}:event-bus/{name}"


def _param(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name, "")
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value)


def dynamodb_calls(operation: str, region: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    if operation in ("TransactWriteItems", "TransactGetItems"):
        calls = []
        for item in params.get("TransactItems", []):
            for kind, body in item.items():
                action = f"dynamodb:{_TRANSACT_ITEM_ACTIONS.get(kind, kind)}"
                calls.append(_call(action, _table_arn(region, body["TableName"])))
        return calls
    if operation in ("BatchGetItem", "BatchWriteItem"):
        return [_call(f"dynamodb:{operation}", _table_arn(region, t)) for t in params.get("RequestItems", {})]
    table = _param(params, "TableName")
    if not table:
        return [_call(f"dynamodb:{operation}", "*")]
    index = _param(params, "IndexName") if operation in ("Query", "Scan") else ""
    return [_call(f"dynamodb:{operation}", _table_arn(region, table, index or None))]


def sqs_calls(operation: str, region: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    action = f"sqs:{_SINGLE_ACTION.get(operation, operation)}"
    target = _param(params, "QueueUrl") or _param(params, "QueueName")
    return [_call(action, _queue_arn(region, target) if target else "*")]


def events_calls(operation: str, region: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    if operation == "PutEvents":
        buses = {str(entry.get("EventBusName") or "default") for entry in params.get("Entries", [])}
        return [_call("events:PutEvents", _bus_arn(region, bus)) for bus in sorted(buses or {"default"})]
    bus = _param(params, "EventBusName") or (_param(params, "Name") if "EventBus" in operation else "")
    return [_call(f"events:{operation}", _bus_arn(region, bus) if bus else "*")]


def secretsmanager_calls(
    operation: str, region: str, params: Mapping[str, Any], secret_arn: Callable[[str, str], str]
) -> list[dict[str, Any]]:
    secret = _param(params, "SecretId")
    return [_call(f"secretsmanager:{operation}", secret_arn(region, secret) if secret else "*")]


def _default_secret_arn(region: str, secret: str) -> str:
    """A secret's ARN (its random suffix included), from moto's own state in this process."""
    if secret.startswith("arn:"):
        return secret
    try:
        from moto.secretsmanager.models import secretsmanager_backends

        return str(secretsmanager_backends[ACCOUNT_ID][region].describe_secret(secret).arn)
    except Exception:  # not (yet) there: name it as IAM would with the suffix unknown
        return f"arn:aws:secretsmanager:{region}:{ACCOUNT_ID}:secret:{secret}"


def classify(
    method: str,
    host: str,
    raw_path: str,
    query_string: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_arn: Callable[[str, str], str] = _default_secret_arn,
) -> tuple[str, str, list[dict[str, Any]]] | None:
    """(access key id, service, calls) of one signed request; None for an unsigned one."""
    query = parse_qs(query_string, keep_blank_values=True)
    credential = credential_of(headers, query)
    if credential is None:
        return None
    key, region, service = credential
    if service == "s3":
        calls = s3_calls(method, host, raw_path, query, headers, body)
    else:
        target = headers.get("x-amz-target", "")
        params: dict[str, Any]
        if target:
            operation = target.rsplit(".", 1)[-1]
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                params = {}
        else:
            params = {**query, **parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)}
            operation = _param(params, "Action")
        if not operation:
            calls = []
        elif service == "dynamodb":
            calls = dynamodb_calls(operation, region, params)
        elif service == "sqs":
            calls = sqs_calls(operation, region, params)
        elif service == "events":
            calls = events_calls(operation, region, params)
        elif service == "secretsmanager":
            calls = secretsmanager_calls(operation, region, params, secret_arn)
        else:
            calls = [_call(f"{service}:{operation}", "*")]
    if not calls:
        request = f"{method} {raw_path}{'?' + query_string if query_string else ''}"
        calls = [{"action": f"{service}:UNMAPPED", "resource": "*", "request": request[:300]}]
    return key, service, calls


def _needs_body(service: str, method: str, query_string: str, headers: Mapping[str, str]) -> bool:
    if service == "s3":
        return method == "POST" and "delete" in parse_qs(query_string, keep_blank_values=True)
    return True


# ---------------------------------------------------------------------------------------------- WSGI
class CallRecorder:
    """WSGI middleware: records each signed request to ``path`` (JSON lines), then hands it to ``app``.
    Recording never changes what moto answers; a request it fails to read is recorded as UNMAPPED."""

    def __init__(self, app: Callable[..., Iterable[bytes]], path: Path) -> None:
        self._app = app
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = path.open("a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            record = self._classify(environ)
        except Exception as exc:  # never break moto; make the check fail loudly instead
            record = ("", "?", [{"action": "?:UNMAPPED", "resource": "*", "request": f"unreadable: {exc!r}"}])
        statuses: list[int] = []

        def recording_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            statuses.append(int(status.split(" ", 1)[0]))
            return start_response(status, headers, exc_info)

        result = self._app(environ, recording_start_response)
        if record is not None:
            key, service, calls = record
            head = {"t": round(time.time(), 3), "key": key, "service": service}
            status = statuses[0] if statuses else 0
            lines = "".join(
                json.dumps({**head, **call, "status": status}, separators=(",", ":")) + "\n" for call in calls
            )
            with self._lock:
                if not self._file.closed:
                    self._file.write(lines)
                    self._file.flush()
        return result

    def _classify(self, environ: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]]] | None:
        headers = {
            name[5:].replace("_", "-").lower(): str(value)
            for name, value in environ.items()
            if name.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = str(environ["CONTENT_TYPE"])
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        query_string = str(environ.get("QUERY_STRING", ""))
        query = parse_qs(query_string, keep_blank_values=True)
        credential = credential_of(headers, query)
        if credential is None:
            return None
        body = b""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if _needs_body(credential[2], method, query_string, headers) and 0 < length <= _MAX_BODY:
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
        raw_path = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or "").split("?", 1)[0]
        if not raw_path:
            raw_path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace")
        return classify(method, headers.get("host", ""), raw_path, query_string, headers, body)
