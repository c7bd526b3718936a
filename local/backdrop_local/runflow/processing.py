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
5. Composite ("shading_percent baked at 30%"): with ``L`` the Rec. 709 luminance of the original
   pixel (weights 0.2126, 0.7152, 0.0722 on the 0..255 sRGB values) and ``m`` the median of ``L``
   over the background region (alpha < 0.5), ``s = clip(L / m, 0, 2)`` (``s = 1`` everywhere if
   there is no background or ``m < 1``), ``background = clip(colour * (0.7 + 0.3 * s), 0, 255)``
   and ``result = alpha * original + (1 - alpha) * background``, rounded to 8 bits. So 70 % of the new
   background is the flat colour and 30 % follows the old background's shading relative to its
   median: shadows and gradients survive softly, and an evenly lit background becomes the colour.
   The median is read from a 1024-bin histogram (exact to a quarter of a grey level).
6. Encode as PNG (RGB).

Memory stays bounded: one image per worker, and the float32 arithmetic of step 5 runs over bands
of rows, so a 50 MP image needs its 8-bit copies plus one band of floats, not a float copy of all.
"""

from __future__ import annotations

import io
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
LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
_BAND_ROWS = 256
_HISTOGRAM_BINS = 1024


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


def _flatten_to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def soften(mask: Image.Image) -> Image.Image:
    radius = max(0.75, 0.0025 * min(mask.size))
    return mask.filter(ImageFilter.GaussianBlur(radius))


def _background_median(
    pixels: np.ndarray[Any, np.dtype[np.uint8]], alpha: np.ndarray[Any, np.dtype[np.uint8]]
) -> float | None:
    histogram = np.zeros(_HISTOGRAM_BINS, dtype=np.int64)
    for top in range(0, pixels.shape[0], _BAND_ROWS):
        band = pixels[top : top + _BAND_ROWS].astype(np.float32)
        background = alpha[top : top + _BAND_ROWS] < 128
        luminance = band[background] @ LUMA
        counts, _ = np.histogram(luminance, bins=_HISTOGRAM_BINS, range=(0.0, 256.0))
        histogram += counts
    total = int(histogram.sum())
    if total == 0:
        return None
    index = int(np.searchsorted(np.cumsum(histogram), (total + 1) / 2))
    return (index + 0.5) * 256.0 / _HISTOGRAM_BINS


def composite(image: Image.Image, mask: Image.Image, colour: Colour) -> Image.Image:
    pixels = np.asarray(image, dtype=np.uint8)
    alpha = np.asarray(mask, dtype=np.uint8)
    median = _background_median(pixels, alpha)
    target = colour.array()
    result = np.empty_like(pixels)
    for top in range(0, pixels.shape[0], _BAND_ROWS):
        original = pixels[top : top + _BAND_ROWS].astype(np.float32)
        weight = alpha[top : top + _BAND_ROWS].astype(np.float32)[..., np.newaxis] / 255.0
        if median is None or median < 1.0:
            shade = np.ones((*original.shape[:2], 1), dtype=np.float32)
        else:
            shade = np.clip((original @ LUMA) / median, 0.0, 2.0)[..., np.newaxis]
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
