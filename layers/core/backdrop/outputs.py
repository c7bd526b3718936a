"""Run outputs: deciding whether a URL named in a callback may be fetched, and streaming it into S3.

A valid signature makes a URL authentic, not safe. Before anything is fetched: https only, the host
must be on the allow-list, and every address it resolves to must be public (no loopback, private,
link-local, CGNAT or reserved ranges, and no IPv6 address that carries an IPv4 one). The
connection is pinned to the checked address so DNS cannot change between check and fetch;
redirects are followed by hand and every hop is checked again. The body is requested without
content encoding and read raw (an encoded answer is refused before its body is read, so a
compression bomb costs nothing), and streamed into S3 in parts with one part in memory at a time,
under a byte cap and a deadline. What is stored must be a PNG, JPEG or WebP by its first bytes;
the stored content type and the key's extension follow those bytes, never the answer's headers. A
body that ends before its ``Content-Length`` is a retryable failure. Nothing partial is ever
visible: a small body is one PUT after the whole of it was read, a large one a multipart upload
that is aborted on any failure. The final write (PUT, or completing the multipart upload) is
conditional on the result object the copier saw before it started, and the copier's lease is
confirmed before it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urljoin, urlsplit

import httpx
from botocore.exceptions import ClientError

from backdrop.errors import ErrorCode
from backdrop.uploads import SNIFF_BYTES, ImageType, sniff_image_type

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PART_SIZE = 5 * 1024 * 1024  # S3's multipart minimum: one part in memory is the memory bound.

Resolver = Callable[[str, int], list[str]]


class OutputRefused(Exception):
    """The output must not be fetched or stored: a permanent failure of the job."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class OutputCopyFailed(Exception):
    """The copy failed for a reason that may pass (timeout, expired URL, S3 error): retry later.
    ``http_status``: what the output URL answered, when that was the problem (403: expired)."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class ResultChanged(OutputCopyFailed):
    """The result object changed since it was checked (S3 refused the conditional write)."""


@dataclass(frozen=True)
class Destination:
    """Where an output goes, and what must still be there for the write to happen: ``expect_etag``
    is the ETag of the result object seen before the copy (None: there was none)."""

    bucket: str
    key: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    expect_etag: str | None = None


# Where an output of this image type goes: called once its first bytes said what it is, before
# anything is written (the key's extension follows the bytes). May raise OutputRefused.
Placement = Callable[[ImageType], Destination]


class Copier(Protocol):
    def __call__(
        self,
        url: str,
        *,
        s3: S3Client,
        place: Placement,
        policy: OutputPolicy,
        http: httpx.Client,
        deadline: float,
        resolve: Resolver,
        keep_lease: Callable[[], None],
    ) -> CopiedObject: ...


@dataclass(frozen=True)
class OutputPolicy:
    allowed_hosts: tuple[str, ...]
    max_bytes: int
    # One exact origin (scheme://host:port) exempt from the https and address rules; local stack only.
    insecure_origin: str = ""
    max_redirects: int = 3


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    address: str | None  # the checked address to connect to; None when not pinned (insecure origin)


@dataclass(frozen=True)
class CopiedObject:
    key: str
    size: int
    content_type: str


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OutputCopyFailed(f"cannot resolve {host}: {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


# IPv6 ranges refused whatever the rest of the address says. Most carry an IPv4 address that a
# translator, tunnel or the host's own stack turns into an IPv4 connection the IPv4 rules never
# see (``64:ff9b::a9fe:a9fe`` is 169.254.169.254 through NAT64), and ``ipaddress`` calls several of
# them global. No public host name resolves to one: getaddrinfo gives IPv4 answers as IPv4.
_FORBIDDEN_V6 = tuple(
    ipaddress.IPv6Network(network)
    for network in (
        "::ffff:0:0/96",  # IPv4-mapped
        "::ffff:0:0:0/96",  # IPv4-translated (RFC 2765)
        "::/96",  # IPv4-compatible, deprecated (RFC 4291); also :: and ::1
        "64:ff9b::/96",  # NAT64, well-known prefix (RFC 6052)
        "64:ff9b:1::/48",  # NAT64, local use (RFC 8215)
        "2002::/16",  # 6to4 (RFC 3056)
        "2001::/32",  # Teredo (RFC 4380)
        "fec0::/10",  # site-local, deprecated (RFC 3879)
    )
)


def address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and any(ip in network for network in _FORBIDDEN_V6):
        return False
    return bool(ip.is_global) and not ip.is_multicast


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def check_url(url: str, policy: OutputPolicy, resolve: Resolver = system_resolver) -> Target:
    """Decide whether ``url`` may be fetched; raise OutputRefused with the reason if not."""
    try:
        parts = urlsplit(url)
        port = parts.port
        # urlsplit drops control characters silently; httpx (which fetches) refuses them.
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise OutputRefused(ErrorCode.OUTPUT_URL_INVALID, f"output URL is malformed: {exc}") from exc
    host = (parts.hostname or "").lower()
    if not host or parts.scheme not in ("http", "https"):
        raise OutputRefused(ErrorCode.OUTPUT_URL_INVALID, f"output URL {url[:200]!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise OutputRefused(ErrorCode.OUTPUT_URL_INVALID, "output URL carries credentials")
    if policy.insecure_origin and _origin(url) == _origin(policy.insecure_origin):
        return Target(url=url, host=host, address=None)
    if parts.scheme != "https":
        raise OutputRefused(
            ErrorCode.OUTPUT_URL_INSECURE, f"output URL must use https, got {parts.scheme}://{host}"
        )
    if not host_allowed(host, policy.allowed_hosts):
        raise OutputRefused(ErrorCode.OUTPUT_HOST_NOT_ALLOWED, f"output host {host} is not on the allow-list")
    addresses = resolve(host, port or 443)
    if not addresses:
        raise OutputCopyFailed(f"{host} resolved to no address")
    for address in addresses:
        if not address_is_public(address):
            raise OutputRefused(
                ErrorCode.OUTPUT_ADDRESS_FORBIDDEN,
                f"output host {host} resolves to non-public address {address}",
            )
    return Target(url=url, host=host, address=addresses[0])


class _BodyReader:
    """Reads an httpx byte stream in fixed-size parts, enforcing the byte cap and the deadline."""

    def __init__(
        self, chunks: Iterator[bytes], max_bytes: int, deadline: float, expected: int | None = None
    ) -> None:
        self._chunks = chunks
        self._max = max_bytes
        self._deadline = deadline
        self._expected = expected  # the declared Content-Length, if any
        # Chunks as received; a part is built with one join, so no byte is copied twice.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.total = 0
        self._done = False

    def push_back(self, part: bytes) -> None:
        """Put bytes read before back in front, to be read again (they stay counted once)."""
        self._pending.insert(0, part)
        self._pending_bytes += len(part)

    def read_part(self, size: int) -> bytes:
        while self._pending_bytes < size and not self._done:
            if time.monotonic() > self._deadline:
                raise OutputCopyFailed("copy deadline passed while downloading the output")
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._done = True
                # A body cut short is not an image to store; the transport does not always notice
                # (an answer framed by Transfer-Encoding that also declares a longer length).
                if self._expected is not None and self.total != self._expected:
                    raise OutputCopyFailed(
                        f"output body ended after {self.total} of its {self._expected} declared bytes"
                    ) from None
                break
            self.total += len(chunk)
            if self.total > self._max:
                raise OutputRefused(ErrorCode.OUTPUT_TOO_LARGE, f"output exceeds the {self._max}-byte limit")
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
        if self._pending_bytes <= size:
            part, self._pending, self._pending_bytes = b"".join(self._pending), [], 0
            return part
        # Split only the last chunk: the part is exactly ``size`` bytes, the rest waits.
        last = self._pending.pop()
        overflow = self._pending_bytes - size
        self._pending.append(last[: len(last) - overflow])
        part = b"".join(self._pending)
        self._pending, self._pending_bytes = [last[len(last) - overflow :]], overflow
        return part


def _open(http: httpx.Client, target: Target, timeout: httpx.Timeout) -> httpx.Response:
    # No content encoding: the body is read raw, so that what is counted against the byte cap is
    # what is stored (a small gzip answer can expand to gigabytes).
    headers = {"Accept": "image/*", "Accept-Encoding": "identity"}
    extensions: dict[str, Any] = {}
    url = httpx.URL(target.url)
    if target.address is not None:
        # Connect to the address we checked; TLS still verifies the certificate for the real host.
        headers["Host"] = url.netloc.decode("ascii")
        extensions["sni_hostname"] = target.host
        url = url.copy_with(host=target.address)
    request = http.build_request("GET", url, headers=headers, extensions=extensions, timeout=timeout)
    return http.send(request, stream=True, follow_redirects=False)


def copy_output(
    url: str,
    *,
    s3: S3Client,
    place: Placement,
    policy: OutputPolicy,
    http: httpx.Client,
    deadline: float,
    resolve: Resolver = system_resolver,
    keep_lease: Callable[[], None] = lambda: None,
) -> CopiedObject:
    """Stream one output into the destination ``place`` gives for its image type; raises
    OutputRefused or OutputCopyFailed.

    ``keep_lease`` is called after every part and right before the object is published; it raises
    OutputCopyFailed when this copier may no longer write the result (its lease was lost)."""
    current = url
    for _hop in range(policy.max_redirects + 1):
        target = check_url(current, policy, resolve)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OutputCopyFailed("copy deadline passed before the download started")
        timeout = httpx.Timeout(min(10.0, remaining), connect=min(3.0, remaining))
        try:
            response = _open(http, target, timeout)
        except httpx.HTTPError as exc:
            raise OutputCopyFailed(f"fetching the output failed: {type(exc).__name__}: {exc}") from exc
        try:
            if response.is_redirect:
                location = response.headers.get("Location")
                if not location:
                    raise OutputRefused(ErrorCode.OUTPUT_URL_INVALID, "redirect without a Location header")
                current = urljoin(current, location)
                continue
            return _store(
                response,
                s3=s3,
                place=place,
                policy=policy,
                deadline=deadline,
                keep_lease=keep_lease,
            )
        except httpx.HTTPError as exc:
            raise OutputCopyFailed(f"reading the output failed: {type(exc).__name__}: {exc}") from exc
        finally:
            response.close()
    raise OutputRefused(ErrorCode.OUTPUT_TOO_MANY_REDIRECTS, f"more than {policy.max_redirects} redirects")


def _store(
    response: httpx.Response,
    *,
    s3: S3Client,
    place: Placement,
    policy: OutputPolicy,
    deadline: float,
    keep_lease: Callable[[], None],
) -> CopiedObject:
    if response.status_code >= 400:
        # Expired (403) or missing output URLs come back fresh from GET /v1/runs/{id}: retryable.
        raise OutputCopyFailed(
            f"output URL answered HTTP {response.status_code}", http_status=response.status_code
        )
    if response.status_code != 200:
        raise OutputRefused(ErrorCode.OUTPUT_BAD_RESPONSE, f"output URL answered HTTP {response.status_code}")
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        # Refused before a byte of the body is read: decoding it could cost any amount of memory.
        raise OutputRefused(
            ErrorCode.OUTPUT_ENCODED,
            f"output was sent with Content-Encoding {encoding[:50]!r}, none was asked for",
        )
    declared = response.headers.get("Content-Length")
    expected = int(declared) if declared and declared.isdigit() else None
    if expected is not None and expected > policy.max_bytes:
        raise OutputRefused(
            ErrorCode.OUTPUT_TOO_LARGE, f"output declares {declared} bytes, over {policy.max_bytes}"
        )
    reader = _BodyReader(response.iter_raw(), policy.max_bytes, deadline, expected)
    first = reader.read_part(PART_SIZE)
    if not first:  # refuse before writing: an empty object must not appear in the results bucket
        raise OutputRefused(ErrorCode.OUTPUT_EMPTY, "output body is empty")
    kind = sniff_image_type(first[:SNIFF_BYTES])
    if kind is None:
        served = response.headers.get("Content-Type", "").split(";")[0].strip().lower() or "no content type"
        raise OutputRefused(
            ErrorCode.OUTPUT_NOT_IMAGE,
            f"output is not a PNG, JPEG or WebP image by its first bytes (served as {served[:100]!r})",
        )
    reader.push_back(first)
    del first  # the upload reads it again; one part in memory at a time
    destination = place(kind)
    _upload(reader, s3=s3, destination=destination, content_type=kind.value, keep_lease=keep_lease)
    return CopiedObject(key=destination.key, size=reader.total, content_type=kind.value)


def _conditions(destination: Destination) -> dict[str, str]:
    """The S3 precondition that fences the write: the result is still the one seen before."""
    if destination.expect_etag is None:
        return {"IfNoneMatch": "*"}
    return {"IfMatch": destination.expect_etag}


def _precondition_failed(exc: Exception) -> bool:
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
        "PreconditionFailed",
        "412",
        "ConditionalRequestConflict",
    )


def _upload(
    reader: _BodyReader,
    *,
    s3: S3Client,
    destination: Destination,
    content_type: str,
    keep_lease: Callable[[], None],
) -> None:
    """Write the body: one PUT if its first part is all of it (the reader saw the body end, and
    checked its length), else a multipart upload that is aborted on any failure."""
    bucket, key = destination.bucket, destination.key
    first = reader.read_part(PART_SIZE)
    extra = {"ContentType": content_type, "Metadata": dict(destination.metadata)}
    try:
        if len(first) < PART_SIZE:
            keep_lease()
            s3.put_object(Bucket=bucket, Key=key, Body=first, **extra, **_conditions(destination))  # type: ignore[arg-type]
            return
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]  # type: ignore[arg-type]
    except (OutputRefused, OutputCopyFailed):
        raise
    except Exception as exc:
        if _precondition_failed(exc):
            raise ResultChanged(f"s3://{bucket}/{key} changed while it was being written") from exc
        raise OutputCopyFailed(f"writing s3://{bucket}/{key} failed: {exc}") from exc
    parts: list[dict[str, Any]] = []
    part, first = first, b""
    try:
        number = 1
        while part:
            etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part)[
                "ETag"
            ]
            parts.append({"ETag": etag, "PartNumber": number})
            number += 1
            part = b""  # let the uploaded part go before the next one is read
            keep_lease()
            part = reader.read_part(PART_SIZE)
        keep_lease()
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            **_conditions(destination),  # type: ignore[arg-type]
        )
    except BaseException as exc:
        # Leave no invisible parts behind (the lifecycle rule is only the backstop).
        with contextlib.suppress(Exception):  # the original failure is what matters
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        # A broken download is reported as such by copy_output, not as an S3 write failure.
        passthrough = OutputRefused | OutputCopyFailed | httpx.HTTPError
        if isinstance(exc, passthrough) or not isinstance(exc, Exception):
            raise
        if _precondition_failed(exc):
            raise ResultChanged(f"s3://{bucket}/{key} changed while it was being written") from exc
        raise OutputCopyFailed(f"writing s3://{bucket}/{key} failed: {exc}") from exc
