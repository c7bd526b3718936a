"""HTTP routing of the local Runflow (a WSGI app served by werkzeug's threaded server).

Everything under ``/v1`` except ``/v1/health`` needs ``Authorization: Bearer <api key>``; errors
use Runflow's envelope ``{"code", "message", "errors"}``. ``/outputs/...`` stands in for the
storage bucket behind presigned URLs (the signature is the credential; files are streamed), and
``/_emulator/...`` controls faults and reports counters without auth: neither exists on the real
API.

``POST /v1/admin/runs/{run_id}/cancellation`` (body ``{"reason": str | null}``, 3 to 500
characters, optional; any accepted API key may call it, the emulator has no admin scope) cancels a
non-terminal run: 201 with the canceled run and a ``run.cancelled`` callback queued; 200 with the
run unchanged when it is terminal already; 404 ``RUN_NOT_FOUND`` otherwise.

Answers of the create, get-run and list-runs routes carry the rate-limit headers the
``rate_limit_headers`` setting asks for (see ``ratelimit``). A create that the
``create_answer_reset`` fault strikes gets no answer: its connection is shut down unanswered.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import Map, Rule
from werkzeug.serving import WSGIRequestHandler
from werkzeug.wrappers import Request, Response

from backdrop_local.runflow.errors import ApiError, DropConnection, field_error, validation_error
from backdrop_local.runflow.ids import new_id
from backdrop_local.runflow.outputs import FileStream
from backdrop_local.runflow.service import FileReply, Reply, RunflowService, dumps
from backdrop_local.runflow.views import ORG_ID, USER_ID

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024

_ROUTES = Map(
    [
        Rule("/v1/health", endpoint="health", methods=["GET"]),
        Rule("/v1/readiness", endpoint="readiness", methods=["GET"]),
        Rule("/v1/auth/me", endpoint="me", methods=["GET"]),
        Rule("/v1/models/<path:model>/runs", endpoint="create_run", methods=["POST"]),
        Rule("/v1/runs", endpoint="list_runs", methods=["GET"]),
        Rule("/v1/runs/<run_id>", endpoint="get_run", methods=["GET"]),
        Rule("/v1/runs/<run_id>/callback", endpoint="deliveries", methods=["GET"]),
        Rule("/v1/runs/<run_id>/callback-redeliveries", endpoint="redeliver", methods=["POST"]),
        Rule("/v1/admin/runs/<run_id>/cancellation", endpoint="cancel_run", methods=["POST"]),
        Rule("/v1/callback-secrets", endpoint="secrets", methods=["GET", "POST"]),
        Rule("/v1/callback-secrets/<secret_id>", endpoint="secret", methods=["GET", "PATCH", "DELETE"]),
        Rule("/outputs/<run_id>/<int:index>.png", endpoint="output", methods=["GET"]),
        Rule("/_emulator/faults", endpoint="faults", methods=["GET", "POST"]),
        Rule("/_emulator/stats", endpoint="stats", methods=["GET"]),
        Rule("/_emulator/output-faults", endpoint="output_faults", methods=["GET"]),
    ],
    strict_slashes=False,
)
_OPEN_ENDPOINTS = frozenset({"health", "readiness", "output", "faults", "stats", "output_faults"})
_RATE_LIMITED_ENDPOINTS = frozenset({"create_run", "get_run", "list_runs"})


class QuietRequestHandler(WSGIRequestHandler):
    """werkzeug logs every request to stderr by default; the emulator's clients are tests."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s", self.requestline, code)


def _json_response(status: int, data: Any = None, body: bytes | None = None) -> Response:
    if status == 204:
        return Response(status=204)
    payload = body if body is not None else dumps(data)
    return Response(payload, status=status, content_type="application/json")


def _error_response(error: ApiError) -> Response:
    response = _json_response(error.status, error.body())
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _drop(request: Request) -> Response:
    """Shut the connection down with no answer. The server's later attempt to write the response
    below fails on the closed socket, which werkzeug treats as a dropped connection."""
    connection = request.environ.get("werkzeug.socket")
    if not isinstance(connection, socket.socket):
        # Only werkzeug's server hands the socket over; elsewhere say what would have happened.
        return _error_response(ApiError(502, "BAD_GATEWAY", "The connection was reset (injected fault)"))
    with contextlib.suppress(OSError):  # the client went away first: nothing is left to drop
        connection.shutdown(socket.SHUT_RDWR)
    return Response(status=204)


class RunflowApp:
    def __init__(self, service: RunflowService, api_keys: frozenset[str]) -> None:
        if not api_keys:
            raise ValueError("at least one API key is needed")
        self._service = service
        self._keys = tuple(key.encode() for key in api_keys)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        request.max_content_length = MAX_REQUEST_BYTES
        response = self._dispatch(request)
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        try:
            endpoint, values = _ROUTES.bind_to_environ(request.environ).match()
        except MethodNotAllowed:
            return _error_response(ApiError(405, "METHOD_NOT_ALLOWED", "Method not allowed"))
        except NotFound:
            return _error_response(ApiError(404, "NOT_FOUND", "Not found"))
        except HTTPException as exc:  # e.g. a redirect for a non-canonical path
            return _error_response(ApiError(exc.code or 400, "BAD_REQUEST", exc.description or "Bad request"))
        authenticated = False
        try:
            if endpoint not in _OPEN_ENDPOINTS:
                self._authenticate(request)
                authenticated = True
            handler = getattr(self, f"_on_{endpoint}")
            result: Reply | FileReply | Response = handler(request, **values)
            response = self._response(result)
        except ApiError as error:
            response = _error_response(error)
        except RequestEntityTooLarge:
            response = _error_response(ApiError(413, "PAYLOAD_TOO_LARGE", "Request body is too large"))
        except DropConnection:
            return _drop(request)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = _error_response(ApiError(500, "INTERNAL_ERROR", "Internal server error"))
        if authenticated and endpoint in _RATE_LIMITED_ENDPOINTS:
            response.headers.update(self._service.rate_limit_headers(response.status_code == 429))
        return response

    @staticmethod
    def _response(result: Reply | FileReply | Response) -> Response:
        if isinstance(result, Response):
            return result
        if isinstance(result, FileReply):
            response = Response(
                FileStream(result.handle),
                status=result.status,
                content_type=result.content_type,
                direct_passthrough=True,
            )
            response.content_length = result.size
            return response
        return _json_response(result.status, result.data, result.body)

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        presented = token.strip().encode()
        # Compare against every key so timing does not tell which prefix matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        if scheme.lower() != "bearer" or not presented or not matched:
            self._service.store.bump("unauthorized_requests")
            raise ApiError(401, "UNAUTHORIZED", "Missing or invalid API key")

    @staticmethod
    def _json_body(request: Request, *, optional: bool = False) -> Any:
        raw = request.get_data(cache=True)
        if not raw.strip():
            if optional:
                return {}
            raise validation_error([field_error(["body"], "Field required", "missing")])
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise validation_error(
                [field_error(["body"], f"JSON decode error: {exc}", "json_invalid")],
                "Request body is not valid JSON",
            ) from exc

    # ------------------------------------------------------------------ endpoints
    def _on_health(self, request: Request) -> Reply:
        return Reply(200, {"ok": True})

    def _on_readiness(self, request: Request) -> Reply:
        return Reply(200, {"ok": True, "components": {"api": "ok", "workers": "ok", "callbacks": "ok"}})

    def _on_me(self, request: Request) -> Reply:
        return Reply(200, {"id": USER_ID, "org_id": ORG_ID, "auth_type": "api_key"})

    def _on_create_run(self, request: Request, model: str) -> Reply:
        body = self._json_body(request)
        key = request.headers.get("Idempotency-Key")
        return self._service.create_run(model, body, key or None, "req_" + new_id().replace("-", ""))

    def _on_list_runs(self, request: Request) -> Reply:
        return self._service.list_runs(request.args.to_dict())

    def _on_get_run(self, request: Request, run_id: str) -> Reply:
        return self._service.get_run(run_id)

    def _on_cancel_run(self, request: Request, run_id: str) -> Reply:
        return self._service.cancel_run(run_id, self._json_body(request, optional=True))

    def _on_deliveries(self, request: Request, run_id: str) -> Reply:
        return self._service.list_deliveries(run_id)

    def _on_redeliver(self, request: Request, run_id: str) -> Reply:
        return self._service.redeliver(run_id)

    def _on_secrets(self, request: Request) -> Reply:
        if request.method == "POST":
            return self._service.create_secret(self._json_body(request))
        return self._service.list_secrets()

    def _on_secret(self, request: Request, secret_id: str) -> Reply:
        if request.method == "PATCH":
            return self._service.update_secret(secret_id, self._json_body(request))
        if request.method == "DELETE":
            return self._service.delete_secret(secret_id)
        return self._service.get_secret(secret_id)

    def _on_output(self, request: Request, run_id: str, index: int) -> FileReply:
        return self._service.output_file(
            run_id, index, request.args.get("expires"), request.args.get("signature")
        )

    def _on_faults(self, request: Request) -> Reply:
        if request.method == "POST":
            return self._service.set_faults(self._json_body(request, optional=True))
        return Reply(200, self._service.faults_view())

    def _on_stats(self, request: Request) -> Reply:
        return Reply(200, self._service.stats())

    def _on_output_faults(self, request: Request) -> Reply:
        return Reply(200, self._service.output_faults())
