"""Real image work end to end: the result's pixels, unreadable inputs, and the signed output URLs."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from backdrop_local.runflow import FaultSettings, LocalRunflow
from tests.integration.local_runflow.local_runflow_support import (
    DISC_COLOUR,
    MODEL_RUNS,
    ManualClock,
    Upstream,
    api,
    create,
    photo,
    run_body,
    running,
    wait_terminal,
)
from tests.support.images import solid

COLOUR = (30, 120, 220)


def _succeeded_run(
    client: httpx.Client, image_url: str, colour: tuple[int, int, int] = COLOUR
) -> dict[str, Any]:
    response = client.post(MODEL_RUNS, json=run_body(image_url, colour))
    assert response.status_code == 201, response.text
    run = wait_terminal(client, response.json()["id"])
    assert run["status_code"] == "succeeded", run
    return run


def _fetch_png(url: str) -> np.ndarray[Any, Any]:
    response = httpx.get(url, timeout=10.0, trust_env=False)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert int(response.headers["content-length"]) == len(response.content)
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_a_photo_comes_back_on_the_requested_colour(client: httpx.Client, photo_url: str) -> None:
    run = _succeeded_run(client, photo_url)
    output = run["output"]
    assert set(output) == {"outputs", "seed", "timing", "nsfw_detected"}
    assert output["seed"] is None and output["nsfw_detected"] is None
    assert output["outputs"][0]["type"] == "image" and output["outputs"][0]["content_type"] == "image/png"
    assert run["cost"] == "0.12" and run["failure_code"] is None and run["error"] is None
    assert run["duration_ms"] >= output["timing"]["inference_ms"] > 0

    pixels = _fetch_png(output["outputs"][0]["url"])
    assert pixels.shape == (300, 400, 3)
    corners = [pixels[4, 4], pixels[4, -5], pixels[-5, 4], pixels[-5, -5]]
    for corner in corners:
        assert np.abs(corner - np.array(COLOUR)).max() <= 25, corner
    centre = pixels[150, 200]
    assert np.abs(centre - np.array(COLOUR)).max() > 80, centre
    assert np.abs(centre - np.array(DISC_COLOUR)).max() <= 30, centre


def test_png_and_webp_inputs_are_read_too(client: httpx.Client, upstream: Upstream) -> None:
    webp = upstream.add_file("photo.webp", photo(160, 120, "WEBP"), "image/webp")
    run = _succeeded_run(client, webp, (255, 255, 255))
    pixels = _fetch_png(run["output"]["outputs"][0]["url"])
    assert pixels.shape == (120, 160, 3)
    assert np.abs(pixels[2, 2] - 255).max() <= 25


def _png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header is rewritten to claim ``width`` x ``height`` (a pixel bomb)."""
    data = bytearray(solid("PNG", (1, 1), (0, 0, 0)))
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.mark.parametrize(
    ("name", "content", "code"),
    [
        ("text.jpg", b"definitely not a picture", "INPUT_UNREADABLE"),
        ("truncated.jpg", photo(200, 150)[:1500], "INPUT_UNREADABLE"),
        ("bomb.png", _png_claiming(20_000, 20_000), "INPUT_UNREADABLE"),  # Pillow's own bomb guard
        ("big.png", _png_claiming(8_000, 7_500), "INPUT_UNREADABLE"),  # 60 MP: over the 50 MP limit
        ("gif.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "INPUT_UNREADABLE"),
        (None, b"", "INPUT_FETCH_FAILED"),
    ],
)
def test_unreadable_inputs_fail_the_run_not_the_server(
    client: httpx.Client, upstream: Upstream, name: str | None, content: bytes, code: str
) -> None:
    url = upstream.add_file(name, content) if name else upstream.missing_file_url()
    run_id = create(client, run_body(url))
    run = wait_terminal(client, run_id)
    assert run["status_code"] == "failed"
    assert run["failure_code"] == code
    assert run["failure_message"]
    assert run["error"]["code"] == code and run["output"] is None
    assert client.get("/v1/health").json() == {"ok": True}


def test_https_image_urls_off_the_machine_are_never_fetched(client: httpx.Client) -> None:
    response = client.post(MODEL_RUNS, json=run_body("https://images.example.com/photo.jpg"))
    assert response.status_code == 201
    run = wait_terminal(client, response.json()["id"])
    assert run["status_code"] == "failed" and run["failure_code"] == "INPUT_FETCH_FAILED"


def test_output_urls_expire_refuse_tampering_and_are_resigned(upstream: Upstream) -> None:
    url = upstream.add_file("small.jpg", photo(120, 90))
    clock = ManualClock()
    with (
        running(allow_http_origins=(upstream.origin,), output_ttl_seconds=60.0, clock=clock) as runflow,
        api(runflow) as client,
    ):
        run = _succeeded_run(client, url)
        signed = run["output"]["outputs"][0]["url"]
        parts = urlsplit(signed)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        base = f"{parts.scheme}://{parts.netloc}{parts.path}"
        assert set(query) == {"expires", "signature"}
        assert httpx.get(signed, trust_env=False).status_code == 200

        forged_expiry = f"{base}?{urlencode({**query, 'expires': int(query['expires']) + 3600})}"
        flipped = "0" if query["signature"][0] != "0" else "1"
        forged_signature = f"{base}?{urlencode({**query, 'signature': flipped + query['signature'][1:]})}"
        other_index = signed.replace("/0.png?", "/1.png?")
        for forged in (forged_expiry, forged_signature, other_index, base):
            assert httpx.get(forged, trust_env=False).status_code == 403, forged

        clock.advance(int(query["expires"]) - clock() - 0.5)
        assert httpx.get(signed, trust_env=False).status_code == 200  # still valid just before
        clock.advance(1.0)
        expired = httpx.get(signed, trust_env=False)
        assert expired.status_code == 403 and "expired" in expired.json()["message"].lower()

        fresh = client.get(f"/v1/runs/{run['id']}").json()["output"]["outputs"][0]["url"]
        assert fresh != signed
        assert httpx.get(fresh, trust_env=False).status_code == 200


def test_runs_that_wait_show_running_then_finish(
    runflow: LocalRunflow, client: httpx.Client, upstream: Upstream
) -> None:
    gate = threading.Event()
    held = upstream.add_file("held.jpg", photo(80, 60), gate=gate)
    run_id = create(client, run_body(held))
    assert upstream.fetch_started("held.jpg").wait(30)  # the run is fetching its input
    running_run = client.get(f"/v1/runs/{run_id}").json()
    assert running_run["status_code"] == "running" and running_run["started_at"] is not None
    assert running_run["completed_at"] is None
    assert runflow.stats()["runs_by_status"]["running"] == 1
    assert not runflow.wait_idle(0)
    gate.set()
    assert wait_terminal(client, run_id)["status_code"] == "succeeded"
    assert runflow.wait_idle(30)


def test_several_outputs_are_one_picture_in_distinct_files(
    runflow: LocalRunflow, client: httpx.Client, photo_url: str
) -> None:
    runflow.set_faults(FaultSettings(outputs_per_run=3))
    run = _succeeded_run(client, photo_url)
    items = run["output"]["outputs"]
    assert len(items) == 3 and all(item["content_type"] == "image/png" for item in items)
    contents = [httpx.get(item["url"], trust_env=False).content for item in items]
    assert len(set(contents)) == 3  # distinct files...
    images = [Image.open(io.BytesIO(content)) for content in contents]
    for image in images:
        image.load()
    assert all(image.tobytes() == images[0].tobytes() for image in images)  # ...of the same picture
    assert [image.info.get("Comment") for image in images] == [None, "output 1", "output 2"]
    assert images[0].size == (400, 300)
