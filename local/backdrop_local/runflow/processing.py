"""What a background-color run does to an image: fetch, decode, segment, composite, encode.

Steps 1 and 2 are the contract every run keeps (what it may fetch, what it accepts, with which error
codes) and live here; steps 3 to 6 are the demo's image model, in ``backdrop_demo.imaging`` (the
exact formula, step by step) and ``backdrop_demo.segmentation`` (u2netp), loaded on the first run
processed for real, so an emulator that only answers ``processing: "instant"`` never loads them.

1. Fetch ``image_url`` with one plain GET (no redirects followed, 30 s per network operation and
   30 s overall, at most 60 MB). Any status but 200 (redirects included), network errors and hosts
   the emulator may not contact fail the run with ``INPUT_FETCH_FAILED``; a body over the cap fails
   it with ``INPUT_TOO_LARGE``.
2. Decode JPEG, PNG or WebP with Pillow (first frame of animations), apply the EXIF orientation,
   flatten any transparency onto white, convert to RGB. Anything else (not an image, truncated,
   corrupt, more than 50 megapixels) fails the run with ``INPUT_UNREADABLE``.
3. Segment the subject with u2netp: a soft mask, 1 = subject.
4. Soften the mask edge with a Gaussian blur.
5. Composite on the flat colour, 30 % of it shaded by the old background's light and shadow.
6. Encode as PNG (RGB). With ``outputs_per_run`` above 1, output ``n > 0`` is the same PNG with a
   ``tEXt`` chunk ``Comment = "output n"`` (see ``pngfile``): same pixels, distinct bytes.

``processing: "instant"`` (see ``instant``) replaces steps 2 to 6: only the image header is read
(``probe_size``), for the output's dimensions.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from backdrop_local.runflow.netpolicy import NetPolicy

if TYPE_CHECKING:
    from backdrop_demo.imaging import composite, soften

# Steps 3 to 6 moved to the demo's package; these names are still imported from here by the unit
# tests and benchmarks/render.py. Resolved on first use (``__getattr__`` below), so importing the
# emulator does not load numpy's compositing or onnxruntime.
__all__ = [
    "Colour",
    "ProcessingFailed",
    "Renderer",
    "composite",
    "decode_image",
    "fetch_image",
    "probe_size",
    "real_renderer",
    "soften",
]
_IMAGE_MODEL = frozenset({"composite", "soften"})

MAX_INPUT_BYTES = 60 * 1024 * 1024
FETCH_TIMEOUT_S = 30.0
MAX_PIXELS = 50_000_000
FORMATS = ("JPEG", "PNG", "WEBP")


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


# What a real run does with the fetched bytes (steps 2 to 6): PNG bytes and each step's time in ms.
Renderer = Callable[[bytes, Colour], tuple[bytes, dict[str, int]]]


def real_renderer() -> Renderer:
    """The demo's image model (u2netp and the shaded composite), imported on the first real run."""
    from backdrop_demo.imaging import render as demo_render

    return demo_render


def __getattr__(name: str) -> Any:
    if name in _IMAGE_MODEL:
        from backdrop_demo import imaging

        return getattr(imaging, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
