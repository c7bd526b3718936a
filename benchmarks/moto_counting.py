"""moto in server mode, counting every request it answers by service and billable kind.

The counts are what the cost figure is made of: S3 requests by price class, DynamoDB reads and
writes by table, SQS requests, Secrets Manager and EventBridge calls. A drop-in for the local
stack's ``MotoServer`` (same ``start``, ``stop`` and ``endpoint_url``).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from backdrop_local import s3events

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_DYNAMODB_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
_DYNAMODB_READS = {"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"}


def classify(environ: dict[str, Any], body: bytes) -> str:
    """``service:kind`` of one request, e.g. ``s3:PUT``, ``dynamodb:write:<table>``, ``sqs:SendMessage``."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    match = _SCOPE.search(auth)
    service = match.group(1) if match else ""
    query = environ.get("QUERY_STRING", "")
    if not service and "X-Amz-Credential=" in query:  # a presigned URL (Runflow fetching the input)
        service = "s3"
    method = environ.get("REQUEST_METHOD", "GET")
    if service == "s3":
        # S3's two price classes: PUT, COPY, POST, LIST ... and GET, HEAD (and everything else).
        listing = method == "GET" and ("list-type" in query or environ.get("PATH_INFO", "/").count("/") <= 1)
        return "s3:PUT" if method in ("PUT", "POST") or listing else "s3:GET"
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    operation = target.rsplit(".", 1)[-1] if target else ""
    if service == "sqs" and not operation:
        operation = _form_action(body)
    if service == "dynamodb":
        table = ""
        with contextlib.suppress(ValueError):
            table = str(json.loads(body or b"{}").get("TableName", ""))
        if operation in _DYNAMODB_WRITES:
            return f"dynamodb:write:{table}"
        if operation in _DYNAMODB_READS:
            return f"dynamodb:read:{table}"
        return f"dynamodb:other:{operation}"
    return f"{service or 'unknown'}:{operation or method}"


def _form_action(body: bytes) -> str:
    for pair in body.decode("latin-1").split("&"):
        if pair.startswith("Action="):
            return pair.split("=", 1)[1]
    return ""


class _Counting:
    def __init__(
        self, app: Callable[..., Iterable[bytes]], counts: Counter[str], lock: threading.Lock
    ) -> None:
        self._app = app
        self._counts = counts
        self._lock = lock

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        is_s3 = "/s3/aws4_request" in environ.get("HTTP_AUTHORIZATION", "")
        # Only small JSON or form bodies are read to classify; S3 bodies (objects) are left alone.
        if length and not is_s3 and length < 1_000_000:
            body = stream.read(length)
            environ["wsgi.input"] = io.BytesIO(body)
        else:
            body = b""
        kind = classify(environ, body)
        with self._lock:
            self._counts[kind] += 1
        return self._app(environ, start_response)


class CountingMotoServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.endpoint_url = ""

    def start(self) -> str:
        s3events.install()  # notifications carry versionId and sequencer, as the local stack's do
        app = _Counting(DomainDispatcherApplication(create_backend_app), self._counts, self._lock)
        self._server = make_server(self._host, 0, app, True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
        self._thread.start()
        self.endpoint_url = f"http://{self._host}:{self._server.server_port}"
        return self.endpoint_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)
