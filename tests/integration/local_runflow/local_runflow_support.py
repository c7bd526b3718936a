"""Helpers for the local Runflow's integration tests: a loopback "upstream" and test images.

The upstream plays both other parties a Runflow client deals with: the store that serves input
images (as an S3 presigned GET would) and the receiver of callbacks, whose answers a test can
script (e.g. 500, 500, 200). A file can be gated: its GET is recorded as started and then held
until the test opens the gate, so a test sees a run in ``running`` without racing a timer.
``SilentReceiver`` accepts connections and never answers (for the callback attempt timeout).
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from backdrop_local.runflow import LocalRunflow

API_KEY = "rf_live_local"
MODEL_RUNS = "/v1/models/runflow/background-color/runs"
DISC_COLOUR = (150, 20, 30)
TERMINAL = (
    "succeeded",
    "partial_succeeded",
    "failed",
    "timed_out",
    "expired",
    "canceled",
    "cancelled",
)
GATE_LIMIT_S = 60.0  # a gated GET is released by the test; this only bounds a test that forgot


def photo(width: int = 400, height: int = 300, fmt: str = "JPEG") -> bytes:
    """A dark red disc on a light grey background with a gentle gradient (a product-shot stand-in)."""
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, np.newaxis, np.newaxis]
    background = np.broadcast_to(205 + 20 * x - 10 * y, (height, width, 3))
    image = Image.fromarray(np.rint(background).astype(np.uint8), mode="RGB")
    radius = min(width, height) * 0.27
    cx, cy = width / 2, height / 2
    ImageDraw.Draw(image).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=DISC_COLOUR)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival, to compare with timestamps in run objects


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@dataclass
class _File:
    data: bytes
    content_type: str
    delay_s: float
    gate: threading.Event | None
    started: threading.Event  # set when a GET of the file arrives


@dataclass
class _Receiver:
    answers: list[int]
    location: str | None
    answer_delay_s: float
    gate: threading.Event | None = None  # scripted answers wait for it


class Upstream:
    """Serves ``GET /files/...`` and records ``POST /callbacks/<name>`` on a free loopback port."""

    def __init__(self) -> None:
        self._files: dict[str, _File] = {}
        self._receivers: dict[str, _Receiver] = {}
        self._received: list[Received] = []
        self._cond = threading.Condition()
        self._server: BaseWSGIServer | None = None

    def start(self) -> Upstream:
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True, request_handler=_Quiet)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def origin(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    def add_file(
        self,
        name: str,
        data: bytes,
        content_type: str = "image/jpeg",
        delay_s: float = 0.0,
        gate: threading.Event | None = None,
    ) -> str:
        """Serve ``data``; with ``gate``, each GET waits until the gate is set before answering."""
        self._files[name] = _File(data, content_type, delay_s, gate, threading.Event())
        return f"{self.origin}/files/{name}"

    def fetch_started(self, name: str) -> threading.Event:
        """Set once a GET of the file ``name`` has arrived."""
        return self._files[name].started

    def missing_file_url(self) -> str:
        return f"{self.origin}/files/does-not-exist.jpg"

    def callback_url(
        self,
        name: str = "hook",
        *,
        answers: list[int] | None = None,
        location: str | None = None,
        answer_delay_s: float = 0.0,
        gate: threading.Event | None = None,
    ) -> str:
        """URL of a receiver answering ``answers`` in turn, then 200 for ever; scripted answers
        carry ``Location: location`` when given, and with ``gate`` are held (the request recorded
        as received) until the test opens it; every answer waits ``answer_delay_s`` first."""
        self._receivers[name] = _Receiver(list(answers or []), location, answer_delay_s, gate)
        return f"{self.origin}/callbacks/{name}"

    def received(self, name: str = "hook") -> list[Received]:
        with self._cond:
            return [r for r in self._received if r.path == f"/callbacks/{name}"]

    def wait_for(self, count: int, name: str = "hook", timeout: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len([r for r in self._received if r.path == f"/callbacks/{name}"]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        got = self.received(name)
        assert len(got) >= count, f"expected {count} callbacks on {name}, got {len(got)}"
        return got

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self._respond(Request(environ))(environ, start_response)

    def _respond(self, request: Request) -> Response:
        if request.method == "GET" and request.path.startswith("/files/"):
            entry = self._files.get(request.path.removeprefix("/files/"))
            if entry is None:
                return Response("not found", status=404)
            entry.started.set()
            if entry.gate is not None:
                entry.gate.wait(GATE_LIMIT_S)
            if entry.delay_s:
                time.sleep(entry.delay_s)
            return Response(entry.data, content_type=entry.content_type)
        if request.method == "POST" and request.path.startswith("/callbacks/"):
            name = request.path.removeprefix("/callbacks/")
            with self._cond:
                self._received.append(
                    Received(
                        request.path, dict(request.headers), request.get_data(), time.monotonic(), time.time()
                    )
                )
                receiver = self._receivers.setdefault(name, _Receiver([], None, 0.0))
                scripted = bool(receiver.answers)
                status = receiver.answers.pop(0) if scripted else 200
                self._cond.notify_all()
            if scripted and receiver.gate is not None:
                receiver.gate.wait(GATE_LIMIT_S)
            if receiver.answer_delay_s:
                time.sleep(receiver.answer_delay_s)
            response = Response(f"answer {status}", status=status)
            if scripted and receiver.location is not None:
                response.headers["Location"] = receiver.location
            return response
        return Response("no such route", status=404)


class SilentReceiver:
    """A loopback port that accepts connections and never answers; records when each arrived."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._held: list[socket.socket] = []
        self.arrivals: list[float] = []  # time.monotonic() of each accepted connection
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        port: int = self._listener.getsockname()[1]
        return f"http://127.0.0.1:{port}/callbacks/silent"

    def start(self) -> SilentReceiver:
        self._listener.settimeout(0.1)
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.arrivals.append(time.monotonic())
            self._held.append(connection)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        for connection in self._held:
            connection.close()
        self._listener.close()


class ManualClock:
    """A wall clock for the emulator (output URL expiry, X-RateLimit-Reset) that moves only when
    told to."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@contextmanager
def running(**options: Any) -> Iterator[LocalRunflow]:
    runflow = LocalRunflow(**options)
    runflow.start()
    try:
        yield runflow
    finally:
        runflow.stop()


def api(runflow: LocalRunflow, key: str = API_KEY) -> httpx.Client:
    return httpx.Client(
        base_url=runflow.url, headers={"Authorization": f"Bearer {key}"}, timeout=10.0, trust_env=False
    )


def run_body(image_url: str, colour: tuple[int, int, int] = (30, 120, 220), **extra: Any) -> dict[str, Any]:
    red, green, blue = colour
    return {
        "input": {"image_url": image_url, "color_red": red, "color_green": green, "color_blue": blue},
        **extra,
    }


def create(client: httpx.Client, body: dict[str, Any]) -> str:
    """POST a run; asserts the 201 and returns the run id."""
    response = client.post(MODEL_RUNS, json=body)
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


def wait_terminal(client: httpx.Client, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    return wait_status(client, run_id, TERMINAL, timeout)


def wait_status(
    client: httpx.Client, run_id: str, statuses: tuple[str, ...], timeout: float = 60.0
) -> dict[str, Any]:
    """The run once its status is one of ``statuses`` (or as it is when ``timeout`` runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = client.get(f"/v1/runs/{run_id}").json()
        if run["status_code"] in statuses or time.monotonic() > deadline:
            return run
        time.sleep(0.02)


def png_chunks(data: bytes) -> list[tuple[bytes, int]]:
    """(type, data length) of each chunk of a PNG, checking the signature, every CRC and that
    ``IEND`` ends the file exactly."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    chunks: list[tuple[bytes, int]] = []
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(body, zlib.crc32(kind)), f"bad CRC on {kind!r} at {offset}"
        chunks.append((kind, length))
        offset += 12 + length
    assert offset == len(data) and chunks[-1] == (b"IEND", 0)
    return chunks
