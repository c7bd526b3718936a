"""Where the local Runflow may send traffic: loopback hosts, plus explicitly allowed origins.

The emulator never contacts anything off the machine. A host counts as loopback when it is an IP
literal in 127.0.0.0/8 or ::1, or the name ``localhost`` (RFC 6761 reserves it for loopback); any
other name is refused without a DNS lookup, so no name can resolve the emulator off the machine.
Allowed origins are exact ``scheme://host:port`` triples given by the operator (for instance the
local S3's origin), and they are the only place plain-http ``image_url`` values may point.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(url: str) -> Origin | None:
    """``(scheme, host, port)`` of an http(s) URL with a host, or None if it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return (scheme, parts.hostname.lower().rstrip("."), port if port is not None else _DEFAULT_PORTS[scheme])


def is_loopback_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def format_origin(origin: Origin) -> str:
    scheme, host, port = origin
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


@dataclass(frozen=True)
class NetPolicy:
    allowed_origins: frozenset[Origin] = frozenset()

    @classmethod
    def from_origins(cls, origins: Iterable[str]) -> NetPolicy:
        parsed: set[Origin] = set()
        for raw in origins:
            origin = parse_origin(raw)
            parts = urlsplit(raw)
            if origin is None or parts.path not in ("", "/") or parts.query or parts.fragment:
                raise ValueError(f"not an origin (scheme://host:port): {raw!r}")
            parsed.add(origin)
        return cls(frozenset(parsed))

    def may_contact(self, url: str) -> bool:
        """True if the emulator may open a connection to ``url`` at all."""
        origin = parse_origin(url)
        if origin is None:
            return False
        return origin in self.allowed_origins or is_loopback_host(origin[1])

    def image_url_problem(self, url: str) -> str | None:
        """Why ``url`` is not acceptable as ``image_url`` at creation time, or None.

        Runflow requires HTTPS; plain http passes only for an exactly allowed origin. Whether the
        host is reachable from here is checked when the run fetches it (the run then fails).
        """
        origin = parse_origin(url)
        if origin is None:
            return "URL must be an absolute http(s) URL with a host"
        if origin[0] != "https" and origin not in self.allowed_origins:
            return "URL must use https"
        return None

    def callback_url_problem(self, url: str) -> str | None:
        origin = parse_origin(url)
        if origin is None:
            return "URL must be an absolute http(s) URL with a host"
        if not self.may_contact(url):
            return "the local Runflow only delivers callbacks to loopback hosts or allowed origins"
        return None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~50 ms; one context serves every client in the process.
    return httpx.create_ssl_context()


def http_client(**options: Any) -> httpx.Client:
    """An httpx client for the emulator's outgoing calls: no proxies from the environment (they
    could route traffic off the machine) and no redirects (a redirect could point anywhere)."""
    return httpx.Client(trust_env=False, follow_redirects=False, verify=_tls_context(), **options)
