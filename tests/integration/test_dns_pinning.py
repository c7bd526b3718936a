"""The pinned fetch over real TLS: Backdrop connects to the address it checked, while TLS verifies the
certificate of the real host name (SNI) and the request names that host (Host header).

The host name is made up (``.test`` never resolves), so the only way to reach a server is the pin.
Two servers answer on the same port with valid certificates for that name: one on 127.0.0.2 (Linux
routes all of 127/8 to loopback) and a decoy on 127.0.0.1; which one answers shows where the
connection went.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from backdrop.outputs import Target, _open
from tests.support.tls import CertificateAuthority, ServerCertificate

HOST = "outputs.pinning.test"
PINNED = "127.0.0.2"
DECOY = "127.0.0.1"
NOWHERE = "127.0.0.3"  # nothing listens there
TIMEOUT = httpx.Timeout(30.0)


@dataclass(frozen=True)
class Seen:
    local_address: str  # the address the connection was made to, as the server saw it
    host_header: str | None
    path: str


class TLSServer(ThreadingHTTPServer):
    """HTTPS on one address; logs the SNI of every handshake and every request it answers."""

    daemon_threads = True

    def __init__(self, address: str, port: int, certificate: ServerCertificate, directory: Path) -> None:
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.context = certificate.server_context(directory)
        self.context.sni_callback = self._on_sni
        self.sni: list[str | None] = []
        self.requests: list[Seen] = []
        super().__init__((address, port), _Handler)
        self.label = f"{address} with a certificate for {', '.join(certificate.hostnames)}"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def _on_sni(self, _sock: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
        self.sni.append(server_name)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, client = super().get_request()
        # The handshake runs in the connection's own thread (see _Handler.handle).
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), client


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle(self) -> None:
        try:
            cast(ssl.SSLSocket, self.connection).do_handshake()
        except (ssl.SSLError, OSError):
            return  # the client refused the certificate
        super().handle()

    def do_GET(self) -> None:
        server = cast(TLSServer, self.server)
        server.requests.append(Seen(self.connection.getsockname()[0], self.headers.get("Host"), self.path))
        body = f"served by {server.label}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
def http(ca: CertificateAuthority) -> Iterator[httpx.Client]:
    with httpx.Client(verify=ca.client_context(), trust_env=False) as client:
        yield client


def _serve(server: TLSServer) -> TLSServer:
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def _stop(*servers: TLSServer) -> None:
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def pair(ca: CertificateAuthority, tmp_path: Path) -> Iterator[tuple[TLSServer, TLSServer]]:
    """The pinned server and the decoy on the same free port, both valid for HOST."""
    certificate = ca.issue(HOST)
    for _attempt in range(50):
        pinned = TLSServer(PINNED, 0, certificate, tmp_path)
        try:
            decoy = TLSServer(DECOY, pinned.port, certificate, tmp_path)
        except OSError:  # that port is taken on 127.0.0.1: take another
            pinned.server_close()
            continue
        break
    else:
        raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")
    yield _serve(pinned), _serve(decoy)
    _stop(pinned, decoy)


@pytest.fixture
def single(ca: CertificateAuthority, tmp_path: Path) -> Iterator[list[TLSServer]]:
    """Servers a test starts itself (stopped at the end)."""
    started: list[TLSServer] = []
    yield started
    _stop(*started)


def _fetch(http: httpx.Client, url: str, address: str) -> tuple[int, bytes, Any]:
    response = _open(http, Target(url=url, host=HOST, address=address), TIMEOUT)
    try:
        peer = response.extensions["network_stream"].get_extra_info("server_addr")
        return response.status_code, response.read(), peer
    finally:
        response.close()


def test_the_host_name_does_not_resolve() -> None:
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(HOST, 443)


def test_pinned_fetch_verifies_the_host_and_connects_to_the_pinned_address(
    http: httpx.Client, pair: tuple[TLSServer, TLSServer]
) -> None:
    pinned, decoy = pair
    port = pinned.port
    status, body, peer = _fetch(http, f"https://{HOST}:{port}/out/r.png?X-Amz-Signature=abc", PINNED)
    assert status == 200
    assert body == f"served by {PINNED} with a certificate for {HOST}".encode()
    assert peer == (PINNED, port)
    assert pinned.sni == [HOST]
    assert pinned.requests == [Seen(PINNED, f"{HOST}:{port}", "/out/r.png?X-Amz-Signature=abc")]
    assert decoy.sni == [] and decoy.requests == []


def test_the_pin_alone_decides_which_server_answers(
    http: httpx.Client, pair: tuple[TLSServer, TLSServer]
) -> None:
    pinned, decoy = pair
    port = pinned.port
    status, body, peer = _fetch(http, f"https://{HOST}:{port}/x.png", DECOY)
    assert (status, body, peer) == (
        200,
        f"served by {DECOY} with a certificate for {HOST}".encode(),
        (DECOY, port),
    )
    assert decoy.sni == [HOST]
    assert decoy.requests == [Seen(DECOY, f"{HOST}:{port}", "/x.png")]
    assert pinned.sni == [] and pinned.requests == []


def test_pin_to_an_address_where_nothing_listens_is_refused(
    http: httpx.Client, pair: tuple[TLSServer, TLSServer]
) -> None:
    pinned, decoy = pair
    with pytest.raises(httpx.ConnectError, match="Connection refused"):
        _fetch(http, f"https://{HOST}:{pinned.port}/x.png", NOWHERE)
    assert pinned.sni == decoy.sni == []
    assert pinned.requests == decoy.requests == []


def test_pinned_fetch_over_ipv6(
    http: httpx.Client, ca: CertificateAuthority, tmp_path: Path, single: list[TLSServer]
) -> None:
    server = _serve(TLSServer("::1", 0, ca.issue(HOST), tmp_path))
    single.append(server)
    status, body, peer = _fetch(http, f"https://{HOST}:{server.port}/v6.png", "::1")
    assert status == 200 and body == f"served by ::1 with a certificate for {HOST}".encode()
    assert peer[:2] == ("::1", server.port)
    assert server.sni == [HOST]
    assert server.requests == [Seen("::1", f"{HOST}:{server.port}", "/v6.png")]


def test_certificate_for_another_host_fails_verification(
    http: httpx.Client, ca: CertificateAuthority, tmp_path: Path, single: list[TLSServer]
) -> None:
    server = _serve(TLSServer(PINNED, 0, ca.issue("other.pinning.test"), tmp_path))
    single.append(server)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED") as info:
        _fetch(http, f"https://{HOST}:{server.port}/x.png", PINNED)
    assert "Hostname mismatch" in str(info.value)
    assert server.sni == [HOST]  # the connection got there; the certificate was what failed
    assert server.requests == []


def test_certificate_from_another_authority_fails_verification(
    http: httpx.Client, tmp_path: Path, single: list[TLSServer]
) -> None:
    stranger = CertificateAuthority("Some other CA")
    server = _serve(TLSServer(PINNED, 0, stranger.issue(HOST), tmp_path))
    single.append(server)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        _fetch(http, f"https://{HOST}:{server.port}/x.png", PINNED)
    assert server.sni == [HOST]
    assert server.requests == []
