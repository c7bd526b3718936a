"""What a background-color run does to an image: fetch, decode, segment, composite, encode.

1. Fetch ``image_url`` with one plain GET (no redirects followed, 30 s per network operation and
   30 s overall, at most 60 MB). Any status but 200 (redirects included), network errors and hosts
   the emulator may not contact fail the run with ``INPUT_FETCH_FAILED``; a body over the cap fails
   it with ``INPUT_TOO_LARGE``.
2. Decode JPEG, PNG or WebP with Pillow (first frame of animations), apply the EXIF orientation,
   flatten any transparency onto white, convert to RGB. Anything else (not an image, truncated,
   corrupt, more than 50 megapixels) fails the run with ``INPUT_UNREADABLE``.
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
6. Encode as PNG (RGB). With ``outputs_per_run`` above 1, output ``n > 0`` is the same PNG with a
   ``tEXt`` chunk ``Comment = "output n"`` (see ``pngfile``): same pixels, distinct bytes.

Memory stays bounded: one image per worker, and the float32 arithmetic of step 5 runs over bands
of rows, so a 50 MP image needs its 8-bit copies plus one band of floats and the small cell grid
(about 80 cells on the shorter side), not a float copy of all. The blur runs on that grid, so it
costs next to nothing whatever the image size.

``processing: "instant"`` (see ``instant``) replaces steps 2 to 6: only the image header is read
(``probe_size``), for the output's dimensions.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from backdrop_local.runflow.netpolicy import NetPolicy
from backdrop_local.runflow.segmentation import subject_mask

MAX_INPUT_BYTES = 60 * 1024 * 1024
FETCH_TIMEOUT_S = 30.0
MAX_PIXELS = 50_000_000
FORMATS = ("JPEG", "PNG", "WEBP")
SHADING_SHARE = 0.30
SHADING_SIGMA_SHARE = 0.05  # Gaussian sigma of the shading, as a share of the shorter side
CELLS_PER_SIGMA = 4  # cells of the block-averaged grid per sigma
LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
_BAND_ROWS = 256


class ProcessingFailed(Exception):
    """The run fails with ``code`` at ``stage``; ``message`` is shown to the client."""

    def __init__(self, code: str, message: str, stage: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.stage = stage


@dataclass(frozen=True)
class Colour:
    red: int
    green: int
    blue: int

    def array(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.array([self.red, self.green, self.blue], dtype=np.float32)


def fetch_image(
    client: httpx.Client,
    url: str,
    policy: NetPolicy,
    *,
    max_bytes: int = MAX_INPUT_BYTES,
    timeout: float = FETCH_TIMEOUT_S,
) -> bytes:
    if not policy.may_contact(url):
        raise ProcessingFailed(
            "INPUT_FETCH_FAILED",
            "image_url is not reachable from the local Runflow (only loopback hosts and allowed origins)",
            "fetch",
        )
    deadline = time.monotonic() + timeout
    try:
        with client.stream("GET", url, timeout=timeout, follow_redirects=False) as response:
            if response.status_code != 200:
                raise ProcessingFailed(
                    "INPUT_FETCH_FAILED", f"fetching image_url answered HTTP {response.status_code}", "fetch"
                )
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ProcessingFailed("INPUT_TOO_LARGE", f"image is larger than {max_bytes} bytes", "fetch")
            body = bytearray()
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise ProcessingFailed(
                        "INPUT_TOO_LARGE", f"image is larger than {max_bytes} bytes", "fetch"
                    )
                if time.monotonic() > deadline:
                    raise ProcessingFailed(
                        "INPUT_FETCH_FAILED", f"fetching image_url took longer than {timeout:g} s", "fetch"
                    )
            return bytes(body)
    except httpx.HTTPError as exc:
        raise ProcessingFailed(
            "INPUT_FETCH_FAILED", f"fetching image_url failed: {type(exc).__name__}", "fetch"
        ) from exc


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """RGB image, upright; raises ProcessingFailed(INPUT_UNREADABLE) for anything else."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as opened:
            # Checked on the header, before any pixel is decoded: bombs never get decompressed.
            if opened.width * opened.height > max_pixels:
                raise ProcessingFailed(
                    "INPUT_UNREADABLE",
                    f"image is {opened.width}x{opened.height}, more than {max_pixels} pixels",
                    "decode",
                )
            opened.load()
            upright = ImageOps.exif_transpose(opened)
            return _flatten_to_rgb(upright)
    except ProcessingFailed:
        raise
    except UnidentifiedImageError as exc:
        raise ProcessingFailed(
            "INPUT_UNREADABLE", "input is not a JPEG, PNG or WebP image", "decode"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ProcessingFailed("INPUT_UNREADABLE", f"image is too large: {exc}", "decode") from exc
    except Exception as exc:
        # Pillow signals truncated or corrupt data with OSError, ValueError, SyntaxError and more.
        raise ProcessingFailed(
            "INPUT_UNREADABLE", f"image could not be decoded ({type(exc).__name__}: {exc})", "decode"
        ) from exc


_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def probe_size(data: bytes, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of the upright image from its header alone, no pixel decoded.

    Refuses what ``decode_image`` refuses at the header (not JPEG/PNG/WebP, over ``max_pixels``)
    with INPUT_UNREADABLE; a body that is corrupt after a valid header passes.
    """
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise ProcessingFailed(
                    "INPUT_UNREADABLE", f"image is {width}x{height}, more than {max_pixels} pixels", "decode"
                )
            # Only EXIF already read with the header: getexif() on a PNG would decode the pixels.
            raw_exif = opened.info.get("exif")
            exif = Image.Exif()
            if isinstance(raw_exif, bytes):
                exif.load(raw_exif)
            orientation = exif.get(0x0112)
    except ProcessingFailed:
        raise
    except UnidentifiedImageError as exc:
        raise ProcessingFailed(
            "INPUT_UNREADABLE", "input is not a JPEG, PNG or WebP image", "decode"
        ) from exc
    except Exception as exc:
        raise ProcessingFailed(
            "INPUT_UNREADABLE", f"image header could not be read ({type(exc).__name__}: {exc})", "decode"
        ) from exc
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def _flatten_to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


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
    target = colour.array()
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
