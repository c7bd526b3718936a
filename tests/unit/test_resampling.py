"""The product's resampling by libvips is a faithful Lanczos3: the same pixels as Pillow's
``LANCZOS`` once both sample the same whole source pixels, and in a rendition the product lands
where Pillow's exact (sub-pixel) mapping puts it, within a pixel."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backdrop import products, renditions
from backdrop.products import Region
from backdrop.profiles import PROFILES, Spec
from tests.unit.imaging_fakes import WHITE, encode, photo, runflow

Pixels = np.ndarray[Any, np.dtype[np.uint8]]


def _texture(size: tuple[int, int] = (900, 700)) -> Pixels:
    """Fine texture up to the source's Nyquist frequency: stripes of a few pixels and grain."""
    width, height = size
    rng = np.random.default_rng(3)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 128 + 60 * np.sin(xs * 0.9) * np.cos(ys * 0.7) + rng.normal(0, 20, (height, width))
    channels = (base, np.roll(base, 5, axis=0), 255 - base)
    return np.ascontiguousarray(np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8))


def _vips(pixels: Pixels, box: tuple[float, float, float, float], size: tuple[int, int]) -> Pixels:
    resampled = renditions._lanczos3(pixels, box, size)
    assert resampled is not None
    return np.frombuffer(resampled.write_to_memory(), dtype=np.uint8).reshape(size[1], size[0], 3)


def _pillow(pixels: Pixels, box: tuple[float, float, float, float], size: tuple[int, int]) -> Pixels:
    return np.asarray(Image.fromarray(pixels, mode="RGB").resize(size, Image.Resampling.LANCZOS, box=box))


# The shrinks libvips is used for (below 2 x ``REDUCING_GAP``, where Pillow resamples in one pass).
@pytest.mark.parametrize("shrink", [1.04, 1.33, 1.75, 2.5, 4.0])
def test_libvips_lanczos3_is_pillows_lanczos_on_a_fine_texture(shrink: float) -> None:
    pixels = _texture()
    box = (10.4, 7.6, 880.3, 690.5)
    size = (round((box[2] - box[0]) / shrink), round((box[3] - box[1]) / shrink))
    ours = _vips(pixels, box, size).astype(np.int16)
    # Pillow sampling the same whole source pixels (libvips reads whole pixels; the box's edges are
    # rounded to the nearest pixel edge), with the same pixel-centre convention.
    whole = renditions.lanczos3_box(box, (pixels.shape[1], pixels.shape[0]))
    assert max(abs(a - b) for a, b in zip(whole, box, strict=True)) <= 0.5
    difference = np.abs(ours - _pillow(pixels, whole, size).astype(np.int16))
    # Within the kernel's reach of the box's edge, libvips repeats the edge pixel where Pillow
    # reads the pixels beyond the box (in a rendition those canvas pixels are background, not
    # drawn); inside, fixed-point weights round differently on a few pixels, nothing else.
    inner = difference[3:-3, 3:-3]
    assert inner.mean() < 0.5 and np.percentile(inner, 99.9) <= 4
    assert difference.mean() < 0.5
    # The check can tell: half a source pixel of misplacement on this texture is many levels.
    shifted = (whole[0] + 0.5, whole[1], whole[2] + 0.5, whole[3])
    assert np.abs(ours - _pillow(pixels, shifted, size).astype(np.int16)).mean() > 5 * difference.mean()


def test_enlargements_are_left_to_pillow() -> None:
    pixels = _texture((200, 150))
    assert renditions._lanczos3(pixels, (0.0, 0.0, 200.0, 150.0), (201, 150)) is None
    assert renditions._lanczos3(pixels, (0.0, 0.0, 200.0, 150.0), (100, 300)) is None
    assert renditions._lanczos3(pixels, (0.0, 0.0, 200.0, 150.0), (200, 150)) is not None


def _product_box(data: bytes) -> tuple[int, int, int, int]:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)
    beyond = (np.abs(pixels - 255).max(axis=2) > renditions.PRODUCT_TOLERANCE).astype(np.uint8) * 255
    box = Image.fromarray(beyond, mode="L").getbbox()
    assert box is not None
    return box


@pytest.mark.parametrize("name", ["amazon-main", "google-shopping", "zalando", "custom-png"])
def test_renditions_by_libvips_keep_the_product_where_pillow_puts_it(name: str) -> None:
    original, truth = photo(size=(2400, 1800), box=(700, 300, 1500, 1500))
    result = runflow(original, truth, WHITE)
    region, found = products.compare_region(encode(result), encode(original, "JPEG"), WHITE)
    assert region.pixels is not None  # what the pipeline renders from: libvips
    spec = PROFILES.get(name) or Spec(width=1000, height=1000, format="PNG", background=WHITE)
    data, verdict = renditions.make(spec, region, found)
    # The same region as a Pillow image: Pillow's Lanczos with its exact sub-pixel mapping.
    pillow = Region(region.image, region.offset, region.frame)
    assert pillow.pixels is None
    reference, expected = renditions.make(spec, pillow, found)
    assert (verdict["verdict"], verdict["reasons"]) == (expected["verdict"], expected["reasons"])
    assert verdict["checks"]["background_exact_share"] == expected["checks"]["background_exact_share"]
    assert abs(verdict["checks"]["fill"] - expected["checks"]["fill"]) <= 0.002
    ours, theirs = _product_box(data), _product_box(reference)
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 1, (ours, theirs)
    # Inside the product (a finely striped texture), under half a canvas pixel of placement apart.
    left, top, right, bottom = ours
    inner = (slice(top + 20, bottom - 20), slice(left + 20, right - 20))
    difference = np.abs(
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[inner].astype(np.int16)
        - np.asarray(Image.open(io.BytesIO(reference)).convert("RGB"))[inner].astype(np.int16)
    )
    assert difference.mean() < 8
