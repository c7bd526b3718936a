"""The demo's image model: steps 3 to 6 of a real local Runflow run (see
``backdrop_local.runflow.processing`` for steps 1 and 2, the input rules every run keeps).

3. Segment the subject with u2netp (see ``segmentation``): a soft mask, 1 = subject.
4. Soften the mask edge with a Gaussian blur of radius ``max(0.75, 0.0025 * min(width, height))``
   pixels, giving alpha in 0..1.
5. Composite ("shading_percent baked at 30%"): the new background is the flat colour, 30 % of it
   modulated by the original photo's low-frequency light and shadow, never by its texture:

   - ``L`` is the Rec. 709 luminance of the original pixel (weights 0.2126, 0.7152, 0.0722 on the
     0..255 sRGB values); ``b = 1`` on background pixels (``alpha < 0.5``), else 0.
   - ``sigma = 0.05 * min(width, height)`` pixels. The luminance is block-averaged on a grid of
     cells of ``k x k`` pixels, ``k = max(1, floor(sigma / 4))``: each cell holds
     ``N = sum(L * b)`` and ``D = sum(b)`` over its pixels.
   - ``N`` and ``D`` are blurred with the same Gaussian (``sigma / k`` cells, truncated at 3 of
     those, zero outside the image) and ``B = blur(N) / blur(D)``: normalised convolution, so
     only background pixels contribute and the subject does not bleed into the shading.
   - ``m`` is the median of ``B`` over the background: the smallest cell value with at least half
     of all background pixels in cells of that value or below (cells weighted by ``D``).
   - ``B`` is upsampled bilinearly to full size (pixel centres; cells no background reaches take
     ``m``), ``s = clip(B / m, 0, 2)`` (``s = 1`` everywhere if there is no background or
     ``m < 1``), ``background = clip(colour * (0.7 + 0.3 * s), 0, 255)`` and
     ``result = alpha * original + (1 - alpha) * background``, rounded to 8 bits.

   So 70 % of the new background is the flat colour and 30 % follows how much lighter or darker
   the old background was around each place (a soft falloff, a vignette, a shadow cast across the
   set), relative to its median; an evenly lit background becomes the colour, and stripes, grain
   or print on the old background (anything much finer than ``sigma``) do not show through.
6. Encode as PNG (RGB); the emulator writes the variants of ``outputs_per_run``.

Memory stays bounded: one image per worker, and the float32 arithmetic of step 5 runs over bands
of rows, so a 50 MP image needs its 8-bit copies plus one band of floats and the small cell grid
(about 80 cells on the shorter side), not a float copy of all. The blur runs on that grid, so it
costs next to nothing whatever the image size.
"""

from __future__ import annotations

import io
import math
import time
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from backdrop_demo.segmentation import subject_mask
from backdrop_local.runflow.processing import Colour, ProcessingFailed, decode_image

SHADING_SHARE = 0.30
SHADING_SIGMA_SHARE = 0.05  # Gaussian sigma of the shading, as a share of the shorter side
CELLS_PER_SIGMA = 4  # cells of the block-averaged grid per sigma
LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
_BAND_ROWS = 256


def soften(mask: Image.Image) -> Image.Image:
    radius = max(0.75, 0.0025 * min(mask.size))
    return mask.filter(ImageFilter.GaussianBlur(radius))


FloatMap = np.ndarray[Any, np.dtype[np.float64]]


def _cell_sums(
    pixels: np.ndarray[Any, np.dtype[np.uint8]], alpha: np.ndarray[Any, np.dtype[np.uint8]], k: int
) -> tuple[FloatMap, FloatMap]:
    """Per cell of k x k pixels: the sum of background luminance and the background pixel count."""
    height, width = alpha.shape
    rows, cols = -(-height // k), -(-width // k)
    numerator = np.zeros((rows, cols), dtype=np.float64)
    weight = np.zeros((rows, cols), dtype=np.float64)
    band = k * max(1, _BAND_ROWS // k)  # whole cells per band
    for top in range(0, height, band):
        lum = pixels[top : top + band].astype(np.float32) @ LUMA
        background = (alpha[top : top + band] < 128).astype(np.float32)
        lum *= background
        # Pad to whole cells with zeros: no luminance and no weight outside the image.
        pad = ((0, -lum.shape[0] % k), (0, -width % k))
        first = top // k
        for source, target in ((lum, numerator), (background, weight)):
            whole = np.pad(source, pad)
            cells = whole.reshape(whole.shape[0] // k, k, whole.shape[1] // k, k).sum(axis=(1, 3))
            target[first : first + cells.shape[0]] = cells
    return numerator, weight


def _gaussian_blur(grid: FloatMap, sigma: float) -> FloatMap:
    """Separable Gaussian, truncated at 3 sigma, zero outside the grid."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / max(sigma, 1e-6)) ** 2)
    kernel /= kernel.sum()
    result = grid
    for axis in (0, 1):
        padding = [(0, 0), (0, 0)]
        padding[axis] = (radius, radius)
        padded = np.pad(result, padding)
        length = result.shape[axis]
        blurred = np.zeros_like(result)
        for shift, factor in enumerate(kernel):
            window = padded[shift : shift + length] if axis == 0 else padded[:, shift : shift + length]
            blurred += factor * window
        result = blurred
    return result


def _weighted_median(values: FloatMap, weights: FloatMap) -> float | None:
    mask = weights > 0
    if not mask.any():
        return None
    order = np.argsort(values[mask], kind="stable")
    ordered = values[mask][order]
    cumulative = np.cumsum(weights[mask][order])
    index = int(np.searchsorted(cumulative, cumulative[-1] / 2.0))
    return float(ordered[min(index, len(ordered) - 1)])


def _sample_positions(size: int, k: int, cells: int) -> tuple[np.ndarray[Any, Any], ...]:
    """For bilinear upsampling: lower cell, upper cell and the weight of the upper one per pixel."""
    centre = np.clip((np.arange(size, dtype=np.float32) + 0.5) / k - 0.5, 0.0, cells - 1)
    lower = np.floor(centre).astype(np.intp)
    upper = np.minimum(lower + 1, cells - 1)
    return lower, upper, (centre - lower).astype(np.float32)


def shading_map(
    pixels: np.ndarray[Any, np.dtype[np.uint8]], alpha: np.ndarray[Any, np.dtype[np.uint8]]
) -> tuple[np.ndarray[Any, np.dtype[np.float32]], int, float] | None:
    """The cell grid of ``B / m`` (step 5), its cell size ``k``; None when ``s = 1`` everywhere."""
    height, width = alpha.shape
    sigma = SHADING_SIGMA_SHARE * min(height, width)
    k = max(1, math.floor(sigma / CELLS_PER_SIGMA))
    numerator, weight = _cell_sums(pixels, alpha, k)
    blurred_weight = _gaussian_blur(weight, sigma / k)
    reached = blurred_weight > 0
    blurred = np.zeros_like(numerator)
    np.divide(_gaussian_blur(numerator, sigma / k), blurred_weight, out=blurred, where=reached)
    median = _weighted_median(blurred, weight)
    if median is None or median < 1.0:
        return None
    blurred[~reached] = median
    return (blurred / median).astype(np.float32), k, median


def composite(image: Image.Image, mask: Image.Image, colour: Colour) -> Image.Image:
    pixels = np.asarray(image, dtype=np.uint8)
    alpha = np.asarray(mask, dtype=np.uint8)
    height, width = alpha.shape
    shading = shading_map(pixels, alpha)
    if shading is not None:
        ratio, k, _ = shading
        columns = _sample_positions(width, k, ratio.shape[1])
        rows = _sample_positions(height, k, ratio.shape[0])
    target = np.array([colour.red, colour.green, colour.blue], dtype=np.float32)
    result = np.empty_like(pixels)
    for top in range(0, height, _BAND_ROWS):
        original = pixels[top : top + _BAND_ROWS].astype(np.float32)
        weight = alpha[top : top + _BAND_ROWS].astype(np.float32)[..., np.newaxis] / 255.0
        if shading is None:
            shade = np.ones((*original.shape[:2], 1), dtype=np.float32)
        else:
            lower, upper, frac = (part[top : top + _BAND_ROWS] for part in rows)
            band = ratio[lower] * (1.0 - frac[:, np.newaxis]) + ratio[upper] * frac[:, np.newaxis]
            left, right, cfrac = columns
            full = band[:, left] * (1.0 - cfrac) + band[:, right] * cfrac
            shade = np.clip(full, 0.0, 2.0)[..., np.newaxis]
        background = np.clip(target * ((1.0 - SHADING_SHARE) + SHADING_SHARE * shade), 0.0, 255.0)
        blended = weight * original + (1.0 - weight) * background
        result[top : top + _BAND_ROWS] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return Image.fromarray(result, mode="RGB")


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _ms(since: float) -> int:
    return round((time.perf_counter() - since) * 1000)


def render(data: bytes, colour: Colour) -> tuple[bytes, dict[str, int]]:
    """PNG bytes of the image on the new background, and how long each step took (ms)."""
    timing: dict[str, int] = {}
    started = time.perf_counter()
    image = decode_image(data)
    timing["decode_ms"] = _ms(started)
    step = time.perf_counter()
    try:
        mask = soften(subject_mask(image))
    except Exception as exc:
        raise ProcessingFailed("PROCESSING_FAILED", f"segmentation failed: {exc}", "processing") from exc
    timing["inference_ms"] = _ms(step)
    step = time.perf_counter()
    result = composite(image, mask, colour)
    del image, mask
    timing["composite_ms"] = _ms(step)
    step = time.perf_counter()
    png = encode_png(result)
    timing["encode_ms"] = _ms(step)
    return png, timing
