"""``backdrop review --serve``: the review page, in the reviewer's own browser.

A small HTTP server bound to 127.0.0.1 only, for one session: a random token (``secrets``) is
required on every request, in the URL's query for the page and its files, in a header for the JSON
API (a page of another origin can neither read the token nor set the header without a CORS
preflight, which is never answered), compared in constant time; anything else is 403. The Host
header must name the loopback address (a DNS-rebinding page names its own host). The URL, token
included, is the first line on stdout.

The page reads the held jobs from the API and shows the original and the held result through
presigned GET URLs of the operator's own credentials, valid for ``URL_SECONDS``; decisions are
POSTed to the API and go through ``review.decide``, as the command's do. Job text (keys, reasons,
notes) is the uploaders': the page only ever sets it as text, never as markup, and its Content
Security Policy allows no inline script at all.
"""

from __future__ import annotations

import hmac
import json
import secrets
import sys
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from backdrop.queues import Decision
from backdrop_cli.app import App
from backdrop_cli.contexts import NOTE_LIMIT, ReviewContext
from backdrop_cli.errors import OK
from backdrop_cli.review import decide, decided_doc, held_doc, held_items, operator_identity
from backdrop_cli.sending import StopFlag

HOST = "127.0.0.1"
TOKEN_HEADER = "X-Backdrop-Token"  # noqa: S105 (a header name, not a secret)
URL_SECONDS = 900  # presigned URLs: long enough to look, short enough not to matter if copied
DECISION_TIMEOUT_SECONDS = 120.0
MAX_BODY = 16_384
STATIC_FILES = {"review.js": "text/javascript", "review.css": "text/css"}
SHORTCUTS = {"a": "approve", "r": "reject (asks for a note)", "j": "next job", "k": "previous job"}


def static_text(name: str) -> str:
    return resources.files("backdrop_cli").joinpath("static", name).read_text(encoding="utf-8")


@dataclass
class ReviewPage:
    """What the page shows and does, for one stack and one reviewer."""

    app: App
    reviewer: str
    token: str
    stop: StopFlag

    def presign(self, bucket: str, key: str, version_id: str | None = None) -> str:
        params: dict[str, str] = {"Bucket": bucket, "Key": key}
        if version_id:
            params["VersionId"] = version_id
        url: str = self.app.stack.s3.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=URL_SECONDS
        )
        return url

    def image_origins(self) -> list[str]:
        """Where the presigned URLs point (for the Content Security Policy's img-src)."""
        stack = self.app.stack
        origins = []
        for bucket in (stack.uploads_bucket, stack.results_bucket):
            parts = urlsplit(self.presign(bucket, "x"))
            origins.append(f"{parts.scheme}://{parts.netloc}")
        return sorted(set(origins))

    def jobs(self) -> dict[str, Any]:
        docs = []
        for item in held_items(self.app):
            doc = held_doc(item)
            source = doc["source"]
            bucket = doc["result_bucket"] or self.app.stack.results_bucket
            result = next((k for k in doc["held_keys"] if k.rsplit("/", 1)[-1].startswith("result.")), None)
            doc["images"] = {
                "original": self.presign(source["bucket"], source["key"], source["version_id"]),
                "result": self.presign(bucket, result) if result else None,
            }
            for rendition in doc["renditions"].values():
                rendition["url"] = self.presign(bucket, rendition["key"]) if rendition["key"] else None
            docs.append(doc)
        return {
            "stack": self.app.stack.label,
            "reviewer": self.reviewer,
            "url_seconds": URL_SECONDS,
            "shortcuts": SHORTCUTS,
            "jobs": docs,
        }

    def decide(self, body: Any) -> tuple[HTTPStatus, dict[str, Any]]:
        """A decision the page POSTed: ``{job_id, decision, note}``."""
        if not isinstance(body, dict) or not isinstance(body.get("job_id"), str):
            return HTTPStatus.BAD_REQUEST, {"error": "a decision names a job_id"}
        if body.get("decision") not in {d.value for d in Decision}:
            return HTTPStatus.BAD_REQUEST, {"error": "decision is approve or reject"}
        decision = Decision(body["decision"])
        note = body.get("note")
        note = note.strip() if isinstance(note, str) and note.strip() else None
        if decision is Decision.REJECT and note is None:
            return HTTPStatus.BAD_REQUEST, {"error": "a rejection needs a note"}
        if note is not None and len(note) > NOTE_LIMIT:
            return HTTPStatus.BAD_REQUEST, {"error": f"a note is at most {NOTE_LIMIT} characters"}
        decided = decide(
            self.app,
            [body["job_id"]],
            decision,
            reviewer=self.reviewer,
            note=note if decision is Decision.REJECT else None,
            timeout=DECISION_TIMEOUT_SECONDS,
            stop=self.stop,
        )
        status = HTTPStatus.CONFLICT if decided.refused else HTTPStatus.OK
        if decided.unsent or decided.undecided:
            status = HTTPStatus.BAD_GATEWAY
        return status, decided_doc(decided)


class PageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, page: ReviewPage) -> None:
        super().__init__((HOST, port), Handler)
        self.page = page
        origins = " ".join(page.image_origins())
        self.policy = (
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            f"img-src 'self' {origins}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/?token={self.page.token}"


class Handler(BaseHTTPRequestHandler):
    server: PageServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests carry the token: never written to a log

    def _allowed(self, token: str | None) -> bool:
        port = self.server.server_address[1]
        host_ok = self.headers.get("Host") in {f"{HOST}:{port}", f"localhost:{port}"}
        return host_ok and token is not None and hmac.compare_digest(token, self.server.page.token)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", self.server.policy)
        self.send_header("Referrer-Policy", "no-referrer")  # the page's URL holds the token
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, doc: dict[str, Any]) -> None:
        body = json.dumps(doc, ensure_ascii=False, default=str).encode()
        self._send(status, body, "application/json; charset=utf-8")

    def _forbidden(self) -> None:
        self._send(HTTPStatus.FORBIDDEN, b"forbidden: this page needs its session's token\n", "text/plain")

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/api/jobs":
            if not self._allowed(self.headers.get(TOKEN_HEADER)):
                return self._forbidden()
            return self._answer(lambda: (HTTPStatus.OK, self.server.page.jobs()))
        query_token = parse_qs(url.query).get("token", [None])[0]
        if not self._allowed(query_token):
            return self._forbidden()
        if url.path == "/":
            html = static_text("review.html").replace("__TOKEN__", self.server.page.token)
            return self._send(HTTPStatus.OK, html.encode(), "text/html; charset=utf-8")
        name = url.path.removeprefix("/static/")
        if name in STATIC_FILES:
            body = static_text(name).encode()
            return self._send(HTTPStatus.OK, body, f"{STATIC_FILES[name]}; charset=utf-8")
        return self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        if not self._allowed(self.headers.get(TOKEN_HEADER)):
            return self._forbidden()
        if urlsplit(self.path).path != "/api/decisions":
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        length = self.headers.get("Content-Length", "")
        json_type = self.headers.get("Content-Type", "").startswith("application/json")
        if not json_type or not length.isdigit() or int(length) > MAX_BODY:
            self.close_connection = True  # the body, if any, is left unread
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "a JSON body of at most 16 KiB"})
        try:
            body = json.loads(self.rfile.read(int(length)) or b"null")
        except ValueError:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "the body is not JSON"})
        return self._answer(lambda: self.server.page.decide(body))

    def _answer(self, work: Callable[[], tuple[HTTPStatus, dict[str, Any]]]) -> None:
        """The API's answer; AWS's errors as a 502 the page shows (the server goes on)."""
        try:
            status, doc = work()
        except (BotoCoreError, ClientError) as exc:
            status, doc = HTTPStatus.BAD_GATEWAY, {"error": f"AWS: {exc}"}
        self._json(status, doc)


def serve(context: ReviewContext) -> int:
    app = context.app
    reviewer = context.reviewer or operator_identity(app.stack)
    app.rules  # noqa: B018 (the stack's parameters are read, and refused if wrong, before serving)
    # Ctrl-C ends the server at once (a decision in flight has been sent, or not: either is safe).
    page = ReviewPage(app, reviewer, secrets.token_urlsafe(24), StopFlag())
    server = PageServer(context.port, page)
    sys.stdout.write(server.url + "\n")  # the first line: tests and scripts read it
    sys.stdout.flush()
    app.ui.note(
        f"Review page for {app.stack.label}, deciding as {reviewer}: open the URL above"
        " (127.0.0.1 only; it holds this session's token). Ctrl-C stops it."
    )
    if context.open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return OK
