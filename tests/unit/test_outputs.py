"""Which output URLs may be fetched, and streaming them into the results bucket."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import httpx
import pytest

import backdrop.outputs as outputs
from backdrop.errors import ErrorCode
from backdrop.outputs import (
    CopiedObject,
    Destination,
    OutputCopyFailed,
    OutputPolicy,
    OutputRefused,
    Resolver,
    ResultChanged,
    Target,
    check_url,
    copy_output,
    system_resolver,
)
from backdrop.results import extension_of
from backdrop.uploads import ImageType
from tests.unit.output_fakes import PUBLIC_ADDRESS, FakeS3, OutputServer, fake_resolver

POLICY = OutputPolicy(allowed_hosts=("*.runflow.io", "cdn.example.com"), max_bytes=1000)
PUBLIC = fake_resolver()
META = {"job-id": "job-1", "run-id": "run-1"}
PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff"  # the shortest signature: it fits the 5-byte parts of ``small_parts``
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 "
KEY = "results/shoes/red.jpg/result.jpg"  # where a JPEG output goes (the key follows the bytes)


@pytest.fixture
def output_server() -> OutputServer:
    """This module's output server is an httpx mock: it tests the copy function alone."""
    return OutputServer()


def refused(url: str, policy: OutputPolicy = POLICY, resolve: Resolver = PUBLIC) -> str:
    with pytest.raises(OutputRefused) as info:
        check_url(url, policy, resolve)
    return info.value.code


# --- check_url ------------------------------------------------------------------------------


def test_https_on_allowed_host_with_public_address() -> None:
    target = check_url("https://a.runflow.io/out/result.png?X-Amz-Signature=1", POLICY, PUBLIC)
    assert target.host == "a.runflow.io"
    assert target.address == PUBLIC_ADDRESS
    assert target.url == "https://a.runflow.io/out/result.png?X-Amz-Signature=1"


def test_exact_host_on_the_list() -> None:
    assert check_url("https://cdn.example.com/x.png", POLICY, PUBLIC) == Target(
        url="https://cdn.example.com/x.png", host="cdn.example.com", address=PUBLIC_ADDRESS
    )
    assert refused("https://img.cdn.example.com/x.png") == "OUTPUT_HOST_NOT_ALLOWED"


def test_host_match_ignores_case_and_trailing_dot() -> None:
    assert check_url("https://A.RunFlow.IO./x.png", POLICY, PUBLIC).host == "a.runflow.io."


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://a.runflow.io/x", "a.runflow.io"),
        ("https://deep.sub.runflow.io/x?v=2", "deep.sub.runflow.io"),
        ("https://Deep.Sub.RUNFLOW.io:8443/x", "deep.sub.runflow.io"),
    ],
)
def test_wildcard_matches_subdomains(url: str, host: str) -> None:
    target = check_url(url, POLICY, PUBLIC)
    assert target == Target(url=url, host=host, address=PUBLIC_ADDRESS)


@pytest.mark.parametrize(
    "url",
    [
        "https://runflow.io.evil.com/x",
        "https://evilrunflow.io/x",
        "https://runflow.io/x",  # the wildcard is for subdomains only
        "https://.runflow.io/x",  # an empty label is not a subdomain
        "https://a.runflow.io.evil.com/x",
        "https://example.org/x",
    ],
)
def test_hosts_not_on_the_list(url: str) -> None:
    assert refused(url) == "OUTPUT_HOST_NOT_ALLOWED"


def test_http_refused() -> None:
    assert refused("http://a.runflow.io/x.png") == "OUTPUT_URL_INSECURE"


@pytest.mark.parametrize(
    "url", ["ftp://a.runflow.io/x", "file:///etc/passwd", "/relative/x.png", "https:///x"]
)
def test_not_http_urls(url: str) -> None:
    assert refused(url) == "OUTPUT_URL_INVALID"


@pytest.mark.parametrize("url", ["https://user:pw@a.runflow.io/x", "https://user@a.runflow.io/x"])
def test_credentials_in_url_refused(url: str) -> None:
    assert refused(url) == "OUTPUT_URL_INVALID"


def test_malformed_port_refused() -> None:
    assert refused("https://a.runflow.io:99999/x") == "OUTPUT_URL_INVALID"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "169.254.169.254",
        "10.0.0.5",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.10",
        "100.64.0.1",
        "100.127.255.254",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "fd00::1",
        "fe80::1%eth0",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_refused(address: str) -> None:
    resolve = fake_resolver({"a.runflow.io": [address]})
    assert refused("https://a.runflow.io/x.png", resolve=resolve) == "OUTPUT_ADDRESS_FORBIDDEN"


def test_any_non_public_address_refuses_the_host() -> None:
    resolve = fake_resolver({"a.runflow.io": ["8.8.8.8", "10.0.0.1"]})
    assert refused("https://a.runflow.io/x.png", resolve=resolve) == "OUTPUT_ADDRESS_FORBIDDEN"


@pytest.mark.parametrize("address", ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    resolve = fake_resolver({"a.runflow.io": [address]})
    assert check_url("https://a.runflow.io/x.png", POLICY, resolve).address == address


# IPv6 addresses that carry an IPv4 one (here mostly 169.254.169.254, the instance metadata
# service), or are deprecated site-local: each is refused as a DNS answer and as a literal.
EMBEDDED_V4 = [
    ("ipv4-mapped", "::ffff:169.254.169.254"),
    ("ipv4-mapped-public", "::ffff:8.8.8.8"),
    ("ipv4-translated", "::ffff:0:a9fe:a9fe"),
    ("ipv4-compatible", "::169.254.169.254"),
    ("nat64-well-known", "64:ff9b::a9fe:a9fe"),
    ("nat64-local-use", "64:ff9b:1::a9fe:a9fe"),
    ("6to4", "2002:a9fe:a9fe::1"),
    ("teredo", "2001:0:a9fe:a9fe::1"),
    ("site-local", "fec0::1"),
]


@pytest.mark.parametrize(("name", "address"), EMBEDDED_V4, ids=[case[0] for case in EMBEDDED_V4])
def test_ipv6_carrying_ipv4_is_refused(name: str, address: str) -> None:
    resolve = fake_resolver({"a.runflow.io": [address]})
    assert refused("https://a.runflow.io/x.png", resolve=resolve) == "OUTPUT_ADDRESS_FORBIDDEN"
    # The same address written into the URL, on an allow-list that names it.
    literal = OutputPolicy(allowed_hosts=(address,), max_bytes=1000)
    assert refused(f"https://[{address}]/x.png", literal, fake_resolver({address: [address]})) == (
        "OUTPUT_ADDRESS_FORBIDDEN"
    )


@pytest.mark.parametrize(
    "address",
    [
        "2606:4700::6810:84e5",  # Cloudflare
        "2600:9000:2000::1",  # CloudFront
        "2001:4860:4860::8888",  # 2001:4860::/32, next to Teredo's 2001::/32
        "2a00:1450:4001:80b::200e",
        "2003:e1:bf00::1",  # next to 6to4's 2002::/16
    ],
)
def test_public_ipv6_still_passes(address: str) -> None:
    resolve = fake_resolver({"a.runflow.io": [address]})
    assert check_url("https://a.runflow.io/x.png", POLICY, resolve).address == address


def test_resolver_gets_host_and_port() -> None:
    seen: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        seen.append((host, port))
        return ["8.8.8.8"]

    check_url("https://a.runflow.io/x", POLICY, resolve)
    check_url("https://a.runflow.io:8443/x", POLICY, resolve)
    assert seen == [("a.runflow.io", 443), ("a.runflow.io", 8443)]


def test_host_is_checked_before_it_is_resolved() -> None:
    def resolve(host: str, port: int) -> list[str]:
        raise AssertionError("a host off the list must not even be resolved")

    assert refused("https://evil.com/x", resolve=resolve) == "OUTPUT_HOST_NOT_ALLOWED"


def test_no_address_is_retryable() -> None:
    with pytest.raises(OutputCopyFailed):
        check_url("https://a.runflow.io/x", POLICY, lambda h, p: [])


def test_literal_loopback_refused() -> None:
    policy = OutputPolicy(allowed_hosts=("127.0.0.1", "[::1]", "::1"), max_bytes=10)
    assert refused("https://127.0.0.1/x", policy, resolve=lambda h, p: [h]) == "OUTPUT_ADDRESS_FORBIDDEN"
    assert refused("https://[::1]/x", policy, resolve=lambda h, p: [h]) == "OUTPUT_ADDRESS_FORBIDDEN"


INSECURE = OutputPolicy(
    allowed_hosts=("*.runflow.io",), max_bytes=1000, insecure_origin="http://localhost:9000"
)


def test_insecure_origin_exempt() -> None:
    def resolve(host: str, port: int) -> list[str]:
        raise AssertionError("the insecure origin is not resolved or pinned")

    target = check_url("http://localhost:9000/outputs/r.png", INSECURE, resolve)
    assert target == Target(url="http://localhost:9000/outputs/r.png", host="localhost", address=None)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:9001/outputs/r.png",  # another port
        "http://localhost/outputs/r.png",  # default port 80
        "https://localhost:9000/outputs/r.png",  # another scheme
        "http://127.0.0.1:9000/outputs/r.png",  # same machine, another host name
    ],
)
def test_insecure_origin_is_that_origin_only(url: str) -> None:
    with pytest.raises(OutputRefused):
        check_url(url, INSECURE, fake_resolver({"localhost": ["127.0.0.1"]}))


def test_insecure_origin_credentials_still_refused() -> None:
    assert refused("http://u:p@localhost:9000/x", INSECURE) == "OUTPUT_URL_INVALID"


def test_system_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    infos = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 443)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 443)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:4700::1", 443, 0, 0)),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: infos)
    assert system_resolver("a.runflow.io", 443) == ["2606:4700::1", "8.8.8.8"]

    def fail(*a: object, **k: object) -> list[object]:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(OutputCopyFailed, match="cannot resolve"):
        system_resolver("nope.runflow.io", 443)


# --- copy_output ----------------------------------------------------------------------------


def copy(
    server: OutputServer,
    s3: FakeS3,
    url: str = "https://a.runflow.io/out/result.png",
    *,
    policy: OutputPolicy = POLICY,
    resolve: Resolver = PUBLIC,
    deadline: float | None = None,
    expect_etag: str | None = None,
    keep_lease: Callable[[], None] = lambda: None,
    placed: list[ImageType] | None = None,
) -> CopiedObject:
    def place(kind: ImageType) -> Destination:
        if placed is not None:
            placed.append(kind)
        return Destination(
            "results-bucket", f"results/shoes/red.jpg/result.{extension_of(kind)}", META, expect_etag
        )

    return copy_output(
        url,
        s3=s3,  # type: ignore[arg-type]
        place=place,
        policy=policy,
        http=server.client(),
        deadline=time.monotonic() + 5 if deadline is None else deadline,
        resolve=resolve,
        keep_lease=keep_lease,
    )


def stream(*chunks: bytes, seen: list[bytes] | None = None) -> Iterator[bytes]:
    for chunk in chunks:
        if seen is not None:
            seen.append(chunk)
        yield chunk


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> int:
    # Real S3 needs 5 MiB parts; the fake takes any size.
    monkeypatch.setattr(outputs, "PART_SIZE", 5)
    return 5


def test_small_body_is_one_put(output_server: OutputServer) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", PNG + b"-small", "image/png; charset=binary")
    stored = copy(output_server, s3)
    assert stored == CopiedObject(key="results/shoes/red.jpg/result.png", size=14, content_type="image/png")
    assert s3.ops() == ["put_object"]
    assert s3.objects[("results-bucket", "results/shoes/red.jpg/result.png")] == {
        "ETag": '"v1"',
        "Body": PNG + b"-small",
        "ContentType": "image/png",
        "Metadata": META,
    }


def test_request_pinned_to_checked_address(output_server: OutputServer) -> None:
    output_server.image("/out/result.png", JPEG)
    copy(output_server, FakeS3(), "https://a.runflow.io/out/result.png?X-Amz-Signature=abc&X-Amz-Expires=60")
    (request,) = output_server.requests
    assert request.url.host == PUBLIC_ADDRESS
    assert request.url.scheme == "https"
    assert request.url.query == b"X-Amz-Signature=abc&X-Amz-Expires=60"
    assert request.headers["Host"] == "a.runflow.io"
    assert request.extensions["sni_hostname"] == "a.runflow.io"
    assert request.headers["Accept"] == "image/*"
    assert request.headers["Accept-Encoding"] == "identity"


def test_pinned_with_port_and_ipv6(output_server: OutputServer) -> None:
    output_server.image("/x.png", JPEG)
    copy(
        output_server,
        FakeS3(),
        "https://a.runflow.io:8443/x.png",
        resolve=fake_resolver({"a.runflow.io": ["2606:4700::1111"]}),
    )
    (request,) = output_server.requests
    assert request.url.host == "2606:4700::1111"
    assert request.url.port == 8443
    assert request.headers["Host"] == "a.runflow.io:8443"
    assert request.extensions["sni_hostname"] == "a.runflow.io"


def test_insecure_origin_not_pinned(output_server: OutputServer) -> None:
    output_server.image("/outputs/r.png", JPEG)
    copy(output_server, FakeS3(), "http://localhost:9000/outputs/r.png", policy=INSECURE)
    (request,) = output_server.requests
    assert request.url.host == "localhost"
    assert "sni_hostname" not in request.extensions


def test_multipart_parts_in_order(output_server: OutputServer, small_parts: int) -> None:
    s3 = FakeS3()
    body = JPEG + b"defghijkl"  # 12 bytes: parts of 5, 5, 2
    output_server.routes["/out/result.png"] = httpx.Response(
        200, headers={"Content-Type": "image/webp"}, content=stream(JPEG, b"defghij", b"k", b"l")
    )
    stored = copy(output_server, s3)
    assert stored.size == 12
    assert stored.content_type == "image/jpeg"  # what the bytes are, not what the header said
    assert s3.ops() == [
        "create_multipart_upload",
        "upload_part",
        "upload_part",
        "upload_part",
        "complete_multipart_upload",
    ]
    start = s3.calls[0][1]
    assert start["ContentType"] == "image/jpeg"
    assert start["Metadata"] == META
    parts = [(c["PartNumber"], c["Body"]) for op, c in s3.calls if op == "upload_part"]
    assert parts == [(1, JPEG + b"de"), (2, b"fghij"), (3, b"kl")]
    complete = s3.calls[-1][1]
    assert complete["MultipartUpload"]["Parts"] == [
        {"ETag": '"etag-1"', "PartNumber": 1},
        {"ETag": '"etag-2"', "PartNumber": 2},
        {"ETag": '"etag-3"', "PartNumber": 3},
    ]
    assert s3.objects[("results-bucket", KEY)]["Body"] == body
    assert s3.aborted == []


def test_body_of_exactly_one_part(output_server: OutputServer, small_parts: int) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", JPEG + b"45")
    copy(output_server, s3)
    assert s3.ops() == ["create_multipart_upload", "upload_part", "complete_multipart_upload"]
    assert s3.objects[("results-bucket", KEY)]["Body"] == JPEG + b"45"


def test_body_over_cap_aborts_multipart(output_server: OutputServer, small_parts: int) -> None:
    s3 = FakeS3()
    policy = OutputPolicy(allowed_hosts=("*.runflow.io",), max_bytes=8)
    output_server.routes["/out/result.png"] = httpx.Response(
        200, headers={"Content-Type": "image/png"}, content=stream(JPEG + b"45", b"6789", b"0")
    )
    with pytest.raises(OutputRefused) as info:
        copy(output_server, s3, policy=policy)
    assert info.value.code == "OUTPUT_TOO_LARGE"
    assert s3.ops()[0] == "create_multipart_upload"
    assert s3.ops()[-1] == "abort_multipart_upload"
    assert s3.aborted == ["upload-1"]
    assert "complete_multipart_upload" not in s3.ops()
    assert s3.objects == {}


def test_body_over_cap_in_first_part_writes_nothing(output_server: OutputServer) -> None:
    s3 = FakeS3()
    policy = OutputPolicy(allowed_hosts=("*.runflow.io",), max_bytes=8)
    output_server.routes["/out/result.png"] = httpx.Response(
        200, headers={"Content-Type": "image/png"}, content=stream(b"12345", b"67890")
    )
    with pytest.raises(OutputRefused, match="OUTPUT_TOO_LARGE"):
        copy(output_server, s3, policy=policy)
    assert s3.calls == []


def test_declared_length_over_cap_refused_before_reading(output_server: OutputServer) -> None:
    s3 = FakeS3()
    read: list[bytes] = []
    output_server.routes["/out/result.png"] = httpx.Response(
        200,
        headers={"Content-Type": "image/png", "Content-Length": "5000"},
        content=stream(b"x" * 10, seen=read),
    )
    with pytest.raises(OutputRefused) as info:
        copy(output_server, s3)
    assert info.value.code == "OUTPUT_TOO_LARGE"
    assert "5000" in info.value.message
    assert read == []
    assert s3.calls == []


def test_empty_body_refused_and_nothing_written(output_server: OutputServer) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", b"")
    with pytest.raises(OutputRefused) as info:
        copy(output_server, s3)
    assert info.value.code == "OUTPUT_EMPTY"
    assert s3.objects == {}
    assert s3.calls == []


@pytest.mark.parametrize(
    "content_type", ["text/html", "application/json", "application/octet-stream", None, "image/png"]
)
def test_non_image_bytes_refused_whatever_the_content_type(
    output_server: OutputServer, content_type: str | None
) -> None:
    s3 = FakeS3()
    headers = {"Content-Type": content_type} if content_type else {}
    output_server.routes["/out/result.png"] = httpx.Response(200, headers=headers, content=stream(b"<html>"))
    with pytest.raises(OutputRefused) as info:
        copy(output_server, s3)
    assert info.value.code == "OUTPUT_NOT_IMAGE"
    assert s3.calls == []


@pytest.mark.parametrize(
    ("body", "served_as", "stored_as", "key"),
    [
        (PNG + b"rest", "image/jpeg", "image/png", "results/shoes/red.jpg/result.png"),
        (JPEG + b"rest", "image/png", "image/jpeg", "results/shoes/red.jpg/result.jpg"),
        (WEBP + b"rest", "application/octet-stream", "image/webp", "results/shoes/red.jpg/result.webp"),
        (PNG + b"rest", "", "image/png", "results/shoes/red.jpg/result.png"),
    ],
)
def test_stored_type_and_key_follow_the_bytes_not_the_header(
    output_server: OutputServer, body: bytes, served_as: str, stored_as: str, key: str
) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", body, served_as)
    placed: list[ImageType] = []
    stored = copy(output_server, s3, placed=placed)
    assert placed == [ImageType(stored_as)]
    assert stored == CopiedObject(key=key, size=len(body), content_type=stored_as)
    assert s3.objects[("results-bucket", key)]["ContentType"] == stored_as
    assert s3.objects[("results-bucket", key)]["Body"] == body


SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>'


@pytest.mark.parametrize(
    ("body", "served_as"),
    [
        (SVG, "image/svg+xml"),
        (b"<!doctype html><html><script>alert(1)</script></html>", "image/png"),
        (b"GIF89a\x01\x00\x01\x00", "image/gif"),
        (b"\x1f\x8b\x08\x00" + b"\0" * 20, "image/png"),  # gzip bytes without a Content-Encoding
        (b"\x89PN", "image/png"),  # a signature cut short
    ],
    ids=["svg-with-script", "html-labelled-png", "gif", "gzip-bytes", "truncated-signature"],
)
def test_anything_but_png_jpeg_or_webp_is_refused_before_a_write(
    output_server: OutputServer, body: bytes, served_as: str
) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", body, served_as)
    placed: list[ImageType] = []
    with pytest.raises(OutputRefused) as info:
        copy(output_server, s3, placed=placed)
    assert info.value.code == "OUTPUT_NOT_IMAGE" and served_as in info.value.message
    assert placed == [] and s3.calls == []


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate", "GZIP", "gzip, identity"])
def test_encoded_answer_is_refused_before_its_body_is_read(
    output_server: OutputServer, encoding: str
) -> None:
    s3 = FakeS3()
    read: list[bytes] = []
    output_server.routes["/out/result.png"] = httpx.Response(
        200,
        headers={"Content-Type": "image/png", "Content-Encoding": encoding},
        content=stream(b"\x1f\x8b" + b"\0" * 100, seen=read),
    )
    with pytest.raises(OutputRefused) as info:
        copy(output_server, s3)
    assert info.value.code == "OUTPUT_ENCODED"
    assert read == [] and s3.calls == []


def test_identity_encoding_is_stored(output_server: OutputServer) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", PNG + b"x", **{"Content-Encoding": "identity"})
    assert copy(output_server, s3).content_type == "image/png"


def test_short_small_body_is_retryable_and_writes_nothing(output_server: OutputServer) -> None:
    s3 = FakeS3()
    output_server.routes["/out/result.png"] = httpx.Response(
        200, headers={"Content-Type": "image/png", "Content-Length": "100"}, content=stream(PNG, b"abc")
    )
    with pytest.raises(OutputCopyFailed, match="ended after 11 of its 100 declared bytes") as info:
        copy(output_server, s3)
    assert not isinstance(info.value, OutputRefused)
    assert s3.calls == [] and s3.objects == {}


def test_short_large_body_aborts_its_multipart_upload(output_server: OutputServer, small_parts: int) -> None:
    s3 = FakeS3()
    output_server.routes["/out/result.png"] = httpx.Response(
        200,
        headers={"Content-Type": "image/jpeg", "Content-Length": "14"},
        content=stream(JPEG + b"45", b"67890", b"ab"),
    )
    with pytest.raises(OutputCopyFailed, match="ended after 12 of its 14"):
        copy(output_server, s3)
    assert "complete_multipart_upload" not in s3.ops() and s3.aborted == ["upload-1"]
    assert s3.objects == {}


def test_refusal_by_the_placement_writes_nothing(output_server: OutputServer) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", PNG + b"x")

    def taken(kind: ImageType) -> Destination:
        raise OutputRefused(ErrorCode.RESULT_KEY_TAKEN, "another source's result")

    with pytest.raises(OutputRefused, match="RESULT_KEY_TAKEN"):
        copy_output(
            "https://a.runflow.io/out/result.png",
            s3=s3,  # type: ignore[arg-type]
            place=taken,
            policy=POLICY,
            http=output_server.client(),
            deadline=time.monotonic() + 5,
            resolve=PUBLIC,
        )
    assert s3.calls == []


@pytest.mark.parametrize("status", [403, 404, 410, 500, 503])
def test_error_statuses_are_retryable(output_server: OutputServer, status: int) -> None:
    s3 = FakeS3()
    output_server.routes["/out/result.png"] = httpx.Response(status, text="<Error>AccessDenied</Error>")
    with pytest.raises(OutputCopyFailed, match=str(status)):
        copy(output_server, s3)
    assert s3.calls == []


def test_unexpected_success_status_refused(output_server: OutputServer) -> None:
    output_server.routes["/out/result.png"] = httpx.Response(
        206, headers={"Content-Type": "image/png"}, content=b"x"
    )
    with pytest.raises(OutputRefused, match="OUTPUT_BAD_RESPONSE"):
        copy(output_server, FakeS3())


def test_network_error_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out")

    server = OutputServer(routes={"/out/result.png": handler})
    with pytest.raises(OutputCopyFailed, match="ConnectTimeout"):
        copy(server, FakeS3())


def test_read_error_mid_body_is_retryable(output_server: OutputServer, small_parts: int) -> None:
    def broken() -> Iterator[bytes]:
        yield JPEG + b"45"
        raise httpx.ReadError("connection reset")

    s3 = FakeS3()
    output_server.routes["/out/result.png"] = httpx.Response(
        200, headers={"Content-Type": "image/png"}, content=broken()
    )
    with pytest.raises(OutputCopyFailed, match="reading the output failed: ReadError"):
        copy(output_server, s3)
    assert s3.aborted == ["upload-1"]
    assert s3.objects == {}


def test_redirect_to_allowed_host_followed(output_server: OutputServer) -> None:
    s3 = FakeS3()
    output_server.routes["/out/result.png"] = httpx.Response(
        302, headers={"Location": "https://b.runflow.io/signed/r.png?s=1"}
    )
    output_server.image("/signed/r.png", JPEG + b"al")
    resolve = fake_resolver({"a.runflow.io": ["8.8.8.8"], "b.runflow.io": ["8.8.4.4"]})
    stored = copy(output_server, s3, resolve=resolve)
    assert stored.size == 5
    first, second = output_server.requests
    assert (first.url.host, first.headers["Host"]) == ("8.8.8.8", "a.runflow.io")
    assert (second.url.host, second.headers["Host"]) == ("8.8.4.4", "b.runflow.io")
    assert second.extensions["sni_hostname"] == "b.runflow.io"
    assert second.url.query == b"s=1"


def test_relative_redirect_followed(output_server: OutputServer) -> None:
    output_server.routes["/out/result.png"] = httpx.Response(307, headers={"Location": "/moved/r.png"})
    output_server.image("/moved/r.png", JPEG + b"al")
    copy(output_server, FakeS3())
    assert [r.url.path for r in output_server.requests] == ["/out/result.png", "/moved/r.png"]
    assert output_server.requests[1].headers["Host"] == "a.runflow.io"


@pytest.mark.parametrize(
    ("location", "code"),
    [
        ("https://127.0.0.1/latest/meta-data", "OUTPUT_HOST_NOT_ALLOWED"),
        ("http://a.runflow.io/r.png", "OUTPUT_URL_INSECURE"),
        ("https://internal.runflow.io/r.png", "OUTPUT_ADDRESS_FORBIDDEN"),
        ("https://evil.com/r.png", "OUTPUT_HOST_NOT_ALLOWED"),
    ],
)
def test_redirect_to_forbidden_target_refused(output_server: OutputServer, location: str, code: str) -> None:
    s3 = FakeS3()
    output_server.routes["/out/result.png"] = httpx.Response(302, headers={"Location": location})
    resolve = fake_resolver({"internal.runflow.io": ["127.0.0.1"]})
    with pytest.raises(OutputRefused) as info:
        copy(output_server, s3, resolve=resolve)
    assert info.value.code == code
    assert len(output_server.requests) == 1  # the forbidden target was never contacted
    assert s3.calls == []


def test_too_many_redirects(output_server: OutputServer) -> None:
    output_server.routes["/loop"] = httpx.Response(302, headers={"Location": "/loop"})
    with pytest.raises(OutputRefused) as info:
        copy(output_server, FakeS3(), "https://a.runflow.io/loop")
    assert info.value.code == "OUTPUT_TOO_MANY_REDIRECTS"
    assert len(output_server.requests) == 4  # the first request and 3 redirects, the default


def test_redirect_limit_is_the_policys() -> None:
    server = OutputServer()
    server.routes["/loop"] = httpx.Response(302, headers={"Location": "/loop"})
    policy = OutputPolicy(allowed_hosts=("*.runflow.io",), max_bytes=1000, max_redirects=1)
    with pytest.raises(OutputRefused, match="OUTPUT_TOO_MANY_REDIRECTS"):
        copy(server, FakeS3(), "https://a.runflow.io/loop", policy=policy)
    assert len(server.requests) == 2


def test_redirect_without_location(output_server: OutputServer) -> None:
    output_server.routes["/out/result.png"] = httpx.Response(302)
    with pytest.raises(OutputRefused, match="OUTPUT_URL_INVALID"):
        copy(output_server, FakeS3())


def test_deadline_already_passed(output_server: OutputServer) -> None:
    output_server.image("/out/result.png", JPEG)
    with pytest.raises(OutputCopyFailed, match="deadline"):
        copy(output_server, FakeS3(), deadline=time.monotonic() - 1)
    assert output_server.requests == []


def test_deadline_passing_mid_download(
    output_server: OutputServer, small_parts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(outputs, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    def slow() -> Iterator[bytes]:
        yield JPEG + b"45"
        clock[0] += 60  # a slow output: a minute per chunk
        yield b"67890"
        yield b"abc"

    s3 = FakeS3()
    output_server.routes["/out/result.png"] = httpx.Response(
        200, headers={"Content-Type": "image/png"}, content=slow()
    )
    with pytest.raises(OutputCopyFailed, match="deadline"):
        copy(output_server, s3, deadline=1030.0)
    assert s3.aborted == ["upload-1"]
    assert s3.objects == {}


def test_s3_put_failure_is_retryable(output_server: OutputServer) -> None:
    s3 = FakeS3()
    s3.fail["put_object"] = RuntimeError("SlowDown")
    output_server.image("/out/result.png", JPEG)
    with pytest.raises(OutputCopyFailed, match="SlowDown"):
        copy(output_server, s3)


def test_s3_part_failure_aborts(output_server: OutputServer, small_parts: int) -> None:
    s3 = FakeS3()
    s3.fail["upload_part"] = RuntimeError("InternalError")
    output_server.image("/out/result.png", JPEG + b"4567890")
    with pytest.raises(OutputCopyFailed, match="InternalError"):
        copy(output_server, s3)
    assert s3.aborted == ["upload-1"]


# --- the write fence and the lease ------------------------------------------------------------


def test_first_result_is_written_only_if_none_exists(output_server: OutputServer) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", JPEG)
    s3.objects[("results-bucket", KEY)] = {
        "ETag": '"other"',
        "Body": b"written meanwhile",
    }
    with pytest.raises(ResultChanged):
        copy(output_server, s3, expect_etag=None)
    assert s3.objects[("results-bucket", KEY)]["Body"] == b"written meanwhile"
    (put,) = [kwargs for op, kwargs in s3.calls if op == "put_object"]
    assert put["IfNoneMatch"] == "*"


def test_replacing_a_result_requires_the_one_seen(output_server: OutputServer) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", JPEG)
    s3.objects[("results-bucket", KEY)] = {"ETag": '"seen"', "Body": b"old"}
    copy(output_server, s3, expect_etag='"seen"')
    assert s3.objects[("results-bucket", KEY)]["Body"] == JPEG
    s3.objects[("results-bucket", KEY)]["ETag"] = '"changed"'
    with pytest.raises(ResultChanged):
        copy(output_server, s3, expect_etag='"seen"')


def test_multipart_completion_is_fenced_too(output_server: OutputServer, small_parts: int) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", JPEG + b"3456789ab")
    s3.objects[("results-bucket", KEY)] = {"ETag": '"changed"', "Body": b"newer"}
    with pytest.raises(ResultChanged):
        copy(output_server, s3, expect_etag='"seen"')
    (complete,) = [kwargs for op, kwargs in s3.calls if op == "complete_multipart_upload"]
    assert complete["IfMatch"] == '"seen"'
    assert s3.aborted and s3.objects[("results-bucket", KEY)]["Body"] == b"newer"


def test_lease_confirmed_after_every_part_and_before_publishing(
    output_server: OutputServer, small_parts: int
) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", JPEG + b"3456789ab")  # three parts of 5, 5 and 2 bytes
    moments: list[list[str]] = []
    copy(output_server, s3, keep_lease=lambda: moments.append(s3.ops()))
    assert [m[-1] for m in moments] == ["upload_part", "upload_part", "upload_part", "upload_part"]
    assert s3.ops()[-1] == "complete_multipart_upload"


def test_lost_lease_publishes_nothing(output_server: OutputServer, small_parts: int) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", JPEG + b"3456789ab")
    calls = {"n": 0}

    def keep_lease() -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OutputCopyFailed("the result lease was lost")

    with pytest.raises(OutputCopyFailed, match="lease was lost"):
        copy(output_server, s3, keep_lease=keep_lease)
    assert "complete_multipart_upload" not in s3.ops() and s3.aborted
    assert ("results-bucket", KEY) not in s3.objects


def test_small_result_confirms_the_lease_before_its_one_put(output_server: OutputServer) -> None:
    s3 = FakeS3()
    output_server.image("/out/result.png", JPEG + b"al")

    def lost() -> None:
        raise OutputCopyFailed("the result lease was lost")

    with pytest.raises(OutputCopyFailed):
        copy(output_server, s3, keep_lease=lost)
    assert s3.ops() == []


@pytest.mark.parametrize("bad", ["https://a.runflow.io/ok\n.png", "https://a.runflow.io/" + "x" * 70000])
def test_urls_httpx_cannot_fetch_are_refused_not_raised(bad: str) -> None:
    assert refused(bad) == "OUTPUT_URL_INVALID"
