"""Finding the product from the result and the original, on results made in several ways."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backdrop import products
from backdrop.colours import Colour
from tests.unit.imaging_fakes import MAKERS, SAMPLES, WHITE, encode, photo, runflow, sample


def _agreement(found: products.Comparison, truth: Image.Image) -> float:
    """Share of pixels on which the found product and the true one agree."""
    expected = np.asarray(truth.resize(found.size, Image.Resampling.BOX)) >= 128
    return float((found.kept == expected).mean())


@pytest.mark.parametrize("maker", sorted(MAKERS))
@pytest.mark.parametrize("colour", [WHITE, Colour(20, 120, 60)])
def test_product_found_in_results_made_in_several_ways(maker: str, colour: Colour) -> None:
    original, truth = photo()
    result = MAKERS[maker](original, truth, colour)
    found = products.compare(result, original, colour)
    assert _agreement(found, truth) > 0.97  # the rest is the soft edge, which may go either way
    assert found.bbox() is not None
    left, top, right, bottom = found.bbox() or (0, 0, 0, 0)
    assert abs(left - 90) <= 4 and abs(top - 50) <= 4 and abs(right - 231) <= 4 and abs(bottom - 201) <= 4
    assert not found.touches_edge()


@pytest.mark.parametrize("name", SAMPLES)
def test_product_found_in_the_samples_local_runflow_results(name: str) -> None:
    _, original, mask = sample(name)
    found = products.compare(runflow(original, mask, WHITE), original, WHITE)
    # The cat's white fur is on the colour and unchanged, so it counts as background (rule 3).
    assert _agreement(found, mask) > (0.85 if name == "chelsea.png" else 0.95)


def test_photo_already_on_white_keeps_only_the_product() -> None:
    original, truth = photo(background=(255, 255, 255))
    # The run leaves a photo already on the colour as it is: its white is still background.
    found = products.compare(original.copy(), original, WHITE)
    assert _agreement(found, truth) > 0.99


def test_product_touching_the_frame_edge_is_reported() -> None:
    original, truth = photo(box=(-40, 30, 200, 210))
    found = products.compare(MAKERS["runflow"](original, truth, WHITE), original, WHITE)
    assert found.touches_edge()
    assert (found.bbox() or (1, 1, 1, 1))[0] == 0


def test_tiny_product_is_found() -> None:
    original, truth = photo(box=(150, 110, 174, 134))
    found = products.compare(MAKERS["hard_cutout"](original, truth, WHITE), original, WHITE)
    assert 0.004 < found.share < 0.01
    assert _agreement(found, truth) > 0.995


def test_compare_bytes_decodes_the_original_reduced_and_upright() -> None:
    original, truth = photo(size=(1280, 960), box=(360, 200, 920, 800))
    result = runflow(original, truth, WHITE)
    decoded, found = products.compare_bytes(encode(result), encode(original, "JPEG"), WHITE)
    assert decoded.size == (1280, 960)
    assert found.size == (1024, 768)
    assert _agreement(found, truth) > 0.98


def test_result_of_another_shape_is_refused() -> None:
    original, _ = photo()
    with pytest.raises(ValueError, match="same shape"):
        products.compare(original.resize((100, 300)), original, WHITE)


def test_result_without_a_product_keeps_an_empty_region() -> None:
    original, _ = photo()
    blank = Image.new("RGB", original.size, (255, 255, 255))
    region, found = products.compare_region(encode(blank), encode(original, "JPEG"), WHITE)
    assert found.share == 0.0 and found.bbox() is None
    assert region.frame == original.size and region.image.width * region.image.height == 0
