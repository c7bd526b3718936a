"""Instant processing: the input is fetched as in a real run, the result is a precomputed flat PNG,
optionally padded to an exact size and streamed from disk without being held in memory."""

from __future__ import annotations

import io
import tracemalloc
from typing import Any

import httpx
import pytest
from PIL import Image

from backdrop_local.runflow import FaultSettings, LocalRunflow
from tests.integration.local_runflow.local_runflow_support import (
    Upstream,
    create,
    photo,
    png_chunks,
    run_body,
    wait_terminal,
)
from tests.support.images import solid

COLOUR = (12, 200, 99)


def _jpeg_with_orientation(width: int, height: int, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return solid("JPEG", (width, height), "red", exif=exif)


def _succeeded(client: httpx.Client, image_url: str) -> dict[str, Any]:
    run = wait_terminal(client, create(client, run_body(image_url, COLOUR)))
    assert run["status_code"] == "succeeded", run
    return run


def test_instant_results_are_the_colour_at_the_input_size(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream
) -> None:
    runflow.set_faults(FaultSettings(processing="instant", outputs_per_run=2))
    run = _succeeded(client, upstream.add_file("photo.jpg", photo(320, 200)))
    assert set(run["output"]["timing"]) == {"fetch_ms", "instant_ms", "total_ms"}
    first, second = run["output"]["outputs"]
    images = []
    for item in (first, second):
        response = httpx.get(item["url"], trust_env=False)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        png_chunks(response.content)
        image = Image.open(io.BytesIO(response.content))
        image.load()
        assert image.mode == "RGB" and image.size == (320, 200)
        assert image.getcolors() == [(320 * 200, COLOUR)]  # every pixel is the colour
        images.append(image)
    assert images[1].info["Comment"] == "output 1" and "Comment" not in images[0].info

    # The size is the upright one: EXIF orientation 6 turns a 40x30 photo into 30x40.
    turned = _succeeded(client, upstream.add_file("turned.jpg", _jpeg_with_orientation(40, 30, 6)))
    with Image.open(io.BytesIO(httpx.get(turned["output"]["outputs"][0]["url"]).content)) as image:
        assert image.size == (30, 40)


@pytest.mark.parametrize(
    ("name", "content", "code"),
    [
        (None, b"", "INPUT_FETCH_FAILED"),
        ("text.jpg", b"definitely not a picture", "INPUT_UNREADABLE"),
    ],
)
def test_instant_runs_fail_on_inputs_a_real_run_fails_on_first(
    runflow: LocalRunflow,
    client: httpx.Client,
    upstream: Upstream,
    name: str | None,
    content: bytes,
    code: str,
) -> None:
    runflow.set_faults(FaultSettings(processing="instant"))
    url = upstream.add_file(name, content) if name else upstream.missing_file_url()
    run = wait_terminal(client, create(client, run_body(url)))
    assert run["status_code"] == "failed" and run["failure_code"] == code


def test_instant_output_padded_to_exactly_one_megabyte(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream
) -> None:
    runflow.set_faults(FaultSettings(processing="instant", instant_output_bytes=1_000_000, outputs_per_run=2))
    run = _succeeded(client, upstream.add_file("photo.jpg", photo(64, 48)))
    for item in run["output"]["outputs"]:
        response = httpx.get(item["url"], trust_env=False)
        assert int(response.headers["content-length"]) == len(response.content) == 1_000_000
        chunks = png_chunks(response.content)
        kinds = [kind for kind, _ in chunks]
        assert kinds[0] == b"IHDR" and b"IDAT" in kinds and kinds[-1] == b"IEND"
        padding = [length for kind, length in chunks if kind == b"rfPd"]
        assert padding and kinds.index(b"rfPd") > kinds.index(b"IDAT")
        image = Image.open(io.BytesIO(response.content))
        image.load()
        assert image.size == (64, 48) and image.getpixel((63, 47)) == COLOUR


def test_an_unreachable_padding_size_fails_the_run(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream
) -> None:
    runflow.set_faults(FaultSettings(processing="instant", instant_output_bytes=100))
    run = wait_terminal(client, create(client, run_body(upstream.add_file("photo.jpg", photo(64, 48)))))
    assert run["status_code"] == "failed" and run["failure_code"] == "PROCESSING_FAILED"
    assert "instant_output_bytes=100" in run["failure_message"]


def test_a_fifty_megabyte_output_is_written_and_served_in_bounded_memory(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream
) -> None:
    size = 50_000_000
    runflow.set_faults(FaultSettings(processing="instant", instant_output_bytes=size))
    url = upstream.add_file("photo.jpg", photo(64, 48))
    tracemalloc.start()
    try:
        run = _succeeded(client, url)
        received = 0
        head = b""
        with httpx.stream("GET", run["output"]["outputs"][0]["url"], trust_env=False, timeout=60) as response:
            assert response.status_code == 200 and int(response.headers["content-length"]) == size
            for block in response.iter_bytes():
                if len(head) < 64:
                    head += block[:64]
                received += len(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size and head.startswith(b"\x89PNG\r\n\x1a\n")
    # Writing and serving in blocks: neither side ever held anything near the 50 MB. (About 10 MB
    # of the peak is werkzeug draining each request with a 10 MB read buffer, whatever the size.)
    assert peak < 25 * 1024 * 1024, peak
