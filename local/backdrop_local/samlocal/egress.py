"""Nothing goes out: the HTTP(S) proxy handed to the SAM CLI that forwards nothing
(``EgressTrap``), and the count of what docker-engine.sh's guard kept from leaving the bridge."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading


class EgressTrap:
    """An HTTP(S) proxy on loopback that forwards nothing. Handed to the SAM CLI as its proxy, it
    turns any request for a non-local host into an immediate refusal, and records it."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._attempts: list[str] = []
        self._thread = threading.Thread(target=self._serve, name="egress-trap", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    @property
    def attempts(self) -> list[str]:
        """Request lines that asked to go out (e.g. ``CONNECT sts.amazonaws.com:443 HTTP/1.1``)."""
        with self._lock:
            return list(self._attempts)

    def start(self) -> EgressTrap:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()

    def __enter__(self) -> EgressTrap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n" not in data and len(data) < 8192:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                line = data.split(b"\r\n", 1)[0].decode("latin-1", "replace") or "(no request line)"
                with self._lock:
                    self._attempts.append(line)
                with contextlib.suppress(OSError):
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def egress_dropped_packets() -> int | None:
    """Packets from the bridge that docker-engine.sh's egress guard refused to forward off this
    machine; None when the guard is not there (not root, no iptables, or another engine)."""
    try:
        result = subprocess.run(
            ["iptables", "-L", "DOCKER-USER", "-v", "-x", "-n"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    for line in result.stdout.splitlines():
        fields = line.split()
        # pkts bytes target prot opt in out source destination
        if len(fields) >= 7 and fields[2] == "DROP" and fields[5] == "docker0" and fields[6] == "!docker0":
            return int(fields[0])
    return None
