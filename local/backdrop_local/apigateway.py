"""A local HTTP API (API Gateway v2): each request becomes a payload-format-2.0 event.

As in AWS: header names are lowercased and repeated headers joined with commas; the body is passed
as text only for text/*, application/json, application/xml and application/javascript, and
base64-encoded otherwise (including when there is no Content-Type); a function error answers 500,
an integration taking longer than 30 s answers 503; an unknown route answers 404.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from backdrop_local.lambdas import InvokeResult

INTEGRATION_TIMEOUT_SECONDS = 30.0
_TEXT_TYPES = ("application/json", "application/xml", "application/javascript")

Invoker = Callable[[dict[str, Any]], InvokeResult]


def body_is_text(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";")[0].strip().lower()
    return media.startswith("text/") or media in _TEXT_TYPES


def http_api_event(request: Request, route_key: str, api_id: str, stage: str = "$default") -> dict[str, Any]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    raw = request.get_data(cache=False)
    is_text = body_is_text(request.headers.get("Content-Type"))
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": request.path,
        "rawQueryString": request.query_string.decode("latin-1"),
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": api_id,
            "domainName": request.host,
            "domainPrefix": request.host.split(".")[0],
            "http": {
                "method": request.method,
                "path": request.path,
                "protocol": request.environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
                "sourceIp": request.remote_addr or "127.0.0.1",
                "userAgent": request.headers.get("User-Agent", ""),
            },
            "requestId": uuid.uuid4().hex[:16],
            "routeKey": route_key,
            "stage": stage,
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": not is_text and bool(raw),
    }
    if request.args:
        event["queryStringParameters"] = {k: ",".join(request.args.getlist(k)) for k in request.args}
    if request.cookies:
        event["cookies"] = [f"{k}={v}" for k, v in request.cookies.items()]
    if raw:
        event["body"] = raw.decode("utf-8", errors="replace") if is_text else base64.b64encode(raw).decode()
    return event


def to_response(result: InvokeResult) -> Response:
    if not result.ok:
        return Response(json.dumps({"message": "Internal Server Error"}), 500, mimetype="application/json")
    payload = result.payload
    if not isinstance(payload, dict) or "statusCode" not in payload:
        # HTTP API 2.0 infers a 200 JSON response from any other return value.
        return Response(json.dumps(payload), 200, mimetype="application/json")
    body = payload.get("body") or ""
    data = base64.b64decode(body) if payload.get("isBase64Encoded") else str(body).encode()
    response = Response(data, int(payload["statusCode"]))
    for name, value in (payload.get("headers") or {}).items():
        response.headers[name] = str(value)
    for cookie in payload.get("cookies") or []:
        response.headers.add("Set-Cookie", cookie)
    return response


class LocalHttpApi:
    def __init__(
        self, routes: dict[tuple[str, str], Invoker], *, api_id: str, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._routes = routes
        self._api_id = api_id
        self._server: BaseWSGIServer = make_server(host, port, self._app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-http-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        invoker = self._routes.get((request.method, request.path))
        if invoker is None:
            response = Response(json.dumps({"message": "Not Found"}), 404, mimetype="application/json")
            return response(environ, start_response)
        event = http_api_event(request, f"{request.method} {request.path}", self._api_id)
        outcome: list[InvokeResult] = []
        worker = threading.Thread(target=lambda: outcome.append(invoker(event)), daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(INTEGRATION_TIMEOUT_SECONDS)
        if not outcome:
            response = Response(
                json.dumps({"message": "Service Unavailable"}), 503, mimetype="application/json"
            )
        else:
            response = to_response(outcome[0])
        response.headers["Apigw-Requestid"] = event["requestContext"]["requestId"]
        response.headers["X-Local-Integration-Ms"] = str(int((time.monotonic() - started) * 1000))
        return response(environ, start_response)
