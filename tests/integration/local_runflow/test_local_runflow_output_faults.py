"""Doubtful results over real HTTP: each output fault makes the pixels its documentation describes,
from the real processing's result (and from an instant run), is counted, and is listed per run."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from backdrop_local.runflow import LocalRunflow
from backdrop_local.runflow.processing import decode_image
from tests.integration.local_runflow.local_runflow_support import (
    Upstream,
    create,
    photo,
    run_body,
    wait_terminal,
)

COLOUR = (30, 120, 220)
WIDTH, HEIGHT = 400, 300
# The support photo's disc: centre (200, 150), radius 0.27 of the shorter side.
RADIUS = 0.27 * HEIGHT
DISC = (200 - RADIUS, 150 - RADIUS, 200 + RADIUS, 150 + RADIUS)
Pixels = np.ndarray[Any, np.dtype[np.int64]]


def _set(client: httpx.Client, **settings: Any) -> None:
    answer = client.post("/_emulator/faults", json={"seed": 7, **settings})
    assert answer.status_code == 200, answer.text


def _output(client: httpx.Client, image_url: str) -> tuple[str, Pixels]:
    run = wait_terminal(client, create(client, run_body(image_url, COLOUR)))
    assert run["status_code"] == "succeeded", run
    response = httpx.get(run["output"]["outputs"][0]["url"], timeout=10.0, trust_env=False)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (WIDTH, HEIGHT)
    return run["id"], np.asarray(image).astype(np.int64)


@pytest.fixture
def source(upstream: Upstream) -> tuple[str, Pixels]:
    data = photo(WIDTH, HEIGHT)
    return upstream.add_file("photo.jpg", data), np.asarray(decode_image(data)).astype(np.int64)


@pytest.fixture
def good(client: httpx.Client, source: tuple[str, Pixels]) -> Pixels:
    """The unfaulted result of the same photo (the model is deterministic)."""
    return _output(client, source[0])[1]


def _fired(client: httpx.Client) -> dict[str, int]:
    fired = client.get("/_emulator/stats").json()["faults_fired"]
    return {name: count for name, count in fired.items() if name.startswith("output_") and count}


def test_unchanged_answers_the_input_pixels(
    client: httpx.Client, runflow: LocalRunflow, source: tuple[str, Pixels]
) -> None:
    # All four on: they are tried in order and only the first applies.
    _set(client, output_unchanged=1, output_blank=1, output_cropped=1, output_halo=1)
    run_id, pixels = _output(client, source[0])
    assert np.array_equal(pixels, source[1])
    assert _fired(client) == {"output_unchanged": 1}
    assert client.get("/_emulator/output-faults").json() == {"runs": {run_id: "output_unchanged"}}
    assert runflow.output_faults() == {run_id: "output_unchanged"}


def test_blank_answers_only_the_colour(client: httpx.Client, source: tuple[str, Pixels]) -> None:
    _set(client, output_blank=1, output_cropped=1, output_halo=1)
    _, pixels = _output(client, source[0])
    assert (pixels == np.array(COLOUR)).all()
    assert _fired(client) == {"output_blank": 1}


def test_cropped_paints_the_top_of_the_product_box(
    client: httpx.Client, source: tuple[str, Pixels], good: Pixels
) -> None:
    _set(client, output_cropped=1, output_halo=1)
    _, pixels = _output(client, source[0])
    differs = (pixels != good).any(axis=2)
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # What changed is a box painted the flat colour: the product's box (the model finds the disc
    # within a few px), its top 40 % only.
    assert (pixels[top:bottom, left:right] == np.array(COLOUR)).all()
    assert abs(top - DISC[1]) <= 4 and abs(left - DISC[0]) <= 4 and abs(right - DISC[2]) <= 4
    assert abs((bottom - top) - 0.4 * (DISC[3] - DISC[1])) <= 4
    centre_row = round(150 + RADIUS * 0.5)
    assert np.array_equal(pixels[centre_row:], good[centre_row:])  # the lower part is untouched
    assert _fired(client) == {"output_cropped": 1}


def test_halo_leaves_a_ring_of_the_original_background(
    client: httpx.Client, source: tuple[str, Pixels], good: Pixels
) -> None:
    _set(client, output_halo=1)
    _, pixels = _output(client, source[0])
    original = source[1]
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    outside = np.hypot(xs - 200 + 0.5, ys - 150 + 0.5) - RADIUS  # px outside the disc's edge
    width = round(0.04 * HEIGHT)  # 12 px, a square neighbourhood of the product
    ring = (outside > 3) & (outside < width - 3)
    assert np.array_equal(pixels[ring], original[ring])
    # The original background is grey, far from the colour the good result shows there.
    assert np.abs(good[ring] - original[ring]).max(axis=1).min() > 60
    far = outside > width * 1.5 + 3
    assert np.array_equal(pixels[far], good[far])
    inner = outside < -3
    assert np.array_equal(pixels[inner], good[inner])
    assert _fired(client) == {"output_halo": 1}


def test_with_instant_processing_unchanged_answers_the_input(
    client: httpx.Client, source: tuple[str, Pixels]
) -> None:
    _set(client, processing="instant", output_unchanged=1)
    _, pixels = _output(client, source[0])
    assert np.array_equal(pixels, source[1])
    # The others leave the instant output as it is: flat already, with no product to cut or ring.
    _set(client, processing="instant", output_cropped=1)
    _, flat = _output(client, source[0])
    assert (flat == np.array(COLOUR)).all()


def test_without_output_faults_nothing_is_listed(client: httpx.Client, good: Pixels) -> None:
    assert client.get("/_emulator/output-faults").json() == {"runs": {}}
    assert _fired(client) == {}
