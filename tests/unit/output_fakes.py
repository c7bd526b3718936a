"""Fakes for the unit tests of the output copy itself (one function, no network): an in-memory S3
client that honours the write preconditions, and an httpx MockTransport output server."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from botocore.exceptions import ClientError

# A public address the fake resolver hands out for allowed output hosts.
PUBLIC_ADDRESS = "93.184.216.34"


class FakeS3:
    """In-memory S3 client: the calls the core makes, recorded, and the objects they leave."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.aborted: list[str] = []
        self.fail: dict[str, Exception] = {}
        self._next = 0

    def _record(self, op: str, kwargs: dict[str, Any]) -> None:
        self.calls.append((op, kwargs))
        if op in self.fail:
            raise self.fail[op]

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]

    def _check(self, kwargs: dict[str, Any]) -> None:
        """S3's write preconditions: If-None-Match: * (no object) and If-Match: <etag>."""
        existing = self.objects.get((kwargs["Bucket"], kwargs["Key"]))
        etag = existing["ETag"] if existing else None
        if kwargs.get("IfNoneMatch") == "*" and existing is not None:
            raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "PutObject")
        if "IfMatch" in kwargs and kwargs["IfMatch"] != etag:
            raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "PutObject")

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self._record("put_object", kwargs)
        self._check(kwargs)
        self._next += 1
        self.objects[(kwargs["Bucket"], kwargs["Key"])] = {
            "ETag": f'"v{self._next}"',
            "Body": bytes(kwargs["Body"]),
            "ContentType": kwargs.get("ContentType"),
            "Metadata": dict(kwargs.get("Metadata", {})),
        }
        return {"ETag": self.objects[(kwargs["Bucket"], kwargs["Key"])]["ETag"]}

    def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self._record("create_multipart_upload", kwargs)
        self._next += 1
        upload_id = f"upload-{self._next}"
        self.uploads[upload_id] = {"kwargs": kwargs, "parts": {}}
        return {"UploadId": upload_id}

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        self._record("upload_part", kwargs)
        number = kwargs["PartNumber"]
        self.uploads[kwargs["UploadId"]]["parts"][number] = bytes(kwargs["Body"])
        return {"ETag": f'"etag-{number}"'}

    def complete_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self._record("complete_multipart_upload", kwargs)
        self._check(kwargs)
        upload = self.uploads.pop(kwargs["UploadId"])
        self._next += 1
        numbers = [p["PartNumber"] for p in kwargs["MultipartUpload"]["Parts"]]
        start = upload["kwargs"]
        self.objects[(kwargs["Bucket"], kwargs["Key"])] = {
            "ETag": f'"v{self._next}"',
            "Body": b"".join(upload["parts"][n] for n in numbers),
            "ContentType": start.get("ContentType"),
            "Metadata": dict(start.get("Metadata", {})),
        }
        return {}

    def abort_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self._record("abort_multipart_upload", kwargs)
        self.uploads.pop(kwargs["UploadId"], None)
        self.aborted.append(kwargs["UploadId"])
        return {}

    def generate_presigned_url(self, operation: str, Params: Mapping[str, Any], ExpiresIn: int) -> str:
        self.calls.append(
            ("generate_presigned_url", {"operation": operation, **Params, "ExpiresIn": ExpiresIn})
        )
        version = f"&versionId={Params['VersionId']}" if "VersionId" in Params else ""
        return (
            f"https://{Params['Bucket']}.s3.amazonaws.com/{Params['Key']}?X-Amz-Expires={ExpiresIn}{version}"
        )


@dataclass
class OutputServer:
    """An httpx MockTransport handler: answers by URL path, records every request."""

    routes: dict[str, Callable[[httpx.Request], httpx.Response] | httpx.Response] = field(
        default_factory=dict
    )
    requests: list[httpx.Request] = field(default_factory=list)

    def image(self, path: str, body: bytes, content_type: str = "image/png", **headers: str) -> None:
        def answer(request: httpx.Request) -> httpx.Response:
            # A fresh stream per request, read as a network body is (raw, once).
            head = {"Content-Type": content_type, "Content-Length": str(len(body)), **headers}
            return httpx.Response(200, headers=head, content=iter([body] if body else []))

        self.routes[path] = answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get(request.url.path)
        if route is None:
            return httpx.Response(404, text="no such output")
        return route(request) if callable(route) else route

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


def fake_resolver(table: Mapping[str, list[str]] | None = None) -> Callable[[str, int], list[str]]:
    """Every host resolves to PUBLIC_ADDRESS unless the table says otherwise."""

    def resolve(host: str, port: int) -> list[str]:
        return list((table or {}).get(host, [PUBLIC_ADDRESS]))

    return resolve
