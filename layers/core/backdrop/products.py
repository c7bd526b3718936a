"""Finding the product in a result: the pixels the run kept from the original.

What this relies on, and nothing more:

1. The result is the original photo, upright (EXIF orientation applied), at the same size: the two
   are aligned pixel for pixel.
2. Where the product is, the run kept the original's pixels: result and original agree there up to
   compression noise. Both are compared after a box reduction to the working size (longer side at
   most ``MASK_LONG_SIDE``), which averages that noise down to ``NOISE_TOLERANCE`` or less.
3. Everywhere else the run put something on or near the job's colour, which differs from the
   original; except where the original already was on the colour. So a pixel is background when it
   changed, or when it is unchanged and within ``ON_COLOUR_TOLERANCE`` of the colour (a product shot
   already on white keeps its white, and that white is still background).
4. Between the two lies a soft edge of a few pixels where the result mixes both; its opacity is
   estimated from how far the result moved from the original towards the colour.

Nothing is assumed about how the background was shaded, how strong the shading is, how wide the
soft edge is, or how the result was encoded (PNG, or a JPEG: the tests use quality 85).
"""

from __future__ import annotations

import ctypes
import io
import math
import sys
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from backdrop.colours import Colour

MASK_LONG_SIDE = 1024  # working size of the comparison (longer side, px); the rendering upsamples it
NOISE_TOLERANCE = 12  # max channel difference still "unchanged" at the working size
ON_COLOUR_TOLERANCE = 10  # an unchanged pixel this close to the colour is background
EDGE_BAND_SHARE = 0.006  # soft edge searched up to this share of the shorter side outside the product
MAX_PIXELS = 50_000_000  # as the pipeline's own input limit
# Working px kept at full size around the product's soft edge: room for the resampling kernel of any
# rendition finer than the working size (3 working px) and for the mask's interpolation.
REGION_MARGIN = 5
# Bytes of the temporaries made a strip at a time out of the full-size result: below glibc's mmap
# threshold (MMAP_THRESHOLD_BYTES), they are reused from the heap rather than mapped afresh, page
# by page, for every strip.
STRIP_BYTES = 192 * 1024


def _return_freed_memory() -> None:
    """Hand every freed image buffer back to the system at once. glibc raises its mmap threshold
    to the size of the first large buffer freed, so later buffers of a few MB come from the heap,
    whose freed space it keeps: the process then holds the sum of every temporary image rather
    than their peak. A fixed threshold keeps resident memory close to what is in use."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    # One heap for every thread: what a thread frees (libvips resamples in one) goes back to the
    # heap that ``_release_free_heap`` trims, not into an arena of its own that outlives the job.
    mallopt(M_ARENA_MAX, 1)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 256 * 1024
_return_freed_memory()


def _release_free_heap() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``): what an earlier
    job left free in the heap would otherwise count on top of this job's peak."""
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to release
        return
    trim(0)


U8 = np.ndarray[Any, np.dtype[np.uint8]]
Box = tuple[float, float, float, float]


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _orientation(image: Image.Image) -> object:
    """The EXIF orientation from what the header already read: ``getexif()`` on a PNG would
    decode every pixel first."""
    raw = image.info.get("exif")
    exif = Image.Exif()
    if isinstance(raw, bytes):
        exif.load(raw)
    return exif.get(0x0112)


def open_upright(data: bytes, *, at_least: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``data`` as RGB, upright, transparency flattened onto white (as the run does).

    With ``at_least``, a JPEG is decoded at the smallest of its built-in reduced scales (1/2, 1/4,
    1/8) still at least that size: a fraction of the time and memory of a full decode.
    """
    image = Image.open(io.BytesIO(data))
    if image.width * image.height > MAX_PIXELS:
        raise ValueError(f"image is {image.width}x{image.height}, more than {MAX_PIXELS} pixels")
    if at_least is not None and image.format == "JPEG":
        wanted = at_least
        if _orientation(image) in (5, 6, 7, 8):
            wanted = (at_least[1], at_least[0])
        image.draft("RGB", wanted)
    image.load()
    # In place: otherwise an upright photo is copied, twice the memory of one decoded photo.
    ImageOps.exif_transpose(image, in_place=True)
    return _flatten(image)


def working_size(size: tuple[int, int], long_side: int = MASK_LONG_SIDE) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _dilate(mask: Image.Image, radius: int) -> Image.Image:
    """Square dilation of a 0/255 mask in linear time (a box blur is > 0 wherever a 255 is near)."""
    if radius <= 0:
        return mask
    return mask.filter(ImageFilter.BoxBlur(radius)).point(lambda v: 255 if v > 0 else 0)


@dataclass(frozen=True)
class Comparison:
    """The result and the original at the working size, and what was found in them."""

    result: U8  # (h, w, 3)
    original: U8  # (h, w, 3)
    changed: U8  # (h, w) max channel |result - original|
    alpha: U8  # (h, w) product opacity 0..255
    colour: Colour
    full_size: tuple[int, int]  # (width, height) of the result

    @property
    def size(self) -> tuple[int, int]:
        return self.alpha.shape[1], self.alpha.shape[0]

    @property
    def kept(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        return self.alpha >= 128

    @property
    def share(self) -> float:
        """The product's share of the frame."""
        return float(self.kept.mean())

    def bbox(self) -> Box | None:
        """The product's bounding box in full-size pixel coordinates (left, top, right, bottom)."""
        kept = self.kept
        rows, cols = np.flatnonzero(kept.any(axis=1)), np.flatnonzero(kept.any(axis=0))
        if rows.size == 0:
            return None
        sx, sy = self.full_size[0] / self.size[0], self.full_size[1] / self.size[1]
        return (cols[0] * sx, rows[0] * sy, (cols[-1] + 1) * sx, (rows[-1] + 1) * sy)

    def touches_edge(self) -> bool:
        """The product reaches the photo's frame: it was probably cropped when the photo was taken."""
        kept = self.kept
        return bool(kept[0].any() or kept[-1].any() or kept[:, 0].any() or kept[:, -1].any())

    def alpha_image(self) -> Image.Image:
        return Image.fromarray(self.alpha, mode="L")

    def result_image(self) -> Image.Image:
        """The whole result at the working size."""
        return Image.fromarray(self.result, mode="RGB")

    def soft_box(self, margin: int = 0) -> tuple[int, int, int, int] | None:
        """The box of every pixel with any product opacity (working px), widened by ``margin`` and
        clipped to the frame; None when there is none."""
        any_alpha = self.alpha > 0
        rows, cols = np.flatnonzero(any_alpha.any(axis=1)), np.flatnonzero(any_alpha.any(axis=0))
        if rows.size == 0:
            return None
        width, height = self.size
        return (
            max(0, int(cols[0]) - margin),
            max(0, int(rows[0]) - margin),
            min(width, int(cols[-1]) + 1 + margin),
            min(height, int(rows[-1]) + 1 + margin),
        )


@dataclass(frozen=True, eq=False)
class Region:
    """The full-size pixels of a result that rendering needs: a box around the product, or the
    whole frame when the result was given whole. The rest of the frame is in the ``Comparison``,
    at the working size.

    ``source`` is a Pillow image, or the box's pixels as a contiguous (h, w, 3) array (what
    ``compare_region`` keeps: 3 bytes a pixel, which libvips reads in place); a Pillow image of an
    array is made only when something asks for ``image``."""

    source: Image.Image | U8
    offset: tuple[int, int]  # the source's top-left in the frame
    frame: tuple[int, int]  # the frame's full size (width, height)

    @classmethod
    def whole(cls, image: Image.Image) -> Region:
        return cls(image, (0, 0), image.size)

    @property
    def pixels(self) -> U8 | None:
        """The source as an (h, w, 3) array, when it is one."""
        return self.source if isinstance(self.source, np.ndarray) else None

    @cached_property
    def image(self) -> Image.Image:
        """The source as a Pillow RGB image."""
        if isinstance(self.source, Image.Image):
            return self.source
        return Image.fromarray(self.source, mode="RGB")

    @property
    def size(self) -> tuple[int, int]:
        """The source's (width, height)."""
        if isinstance(self.source, Image.Image):
            return self.source.size
        return self.source.shape[1], self.source.shape[0]

    @property
    def covers_frame(self) -> bool:
        return self.offset == (0, 0) and self.size == self.frame

    def holds(self, box: Box) -> bool:
        """Whether ``box`` (frame px) lies inside the region."""
        x, y = self.offset
        width, height = self.size
        left, top, right, bottom = box
        slack = 1e-6
        return (
            left >= x - slack
            and top >= y - slack
            and right <= x + width + slack
            and bottom <= y + height + slack
        )


Mask = np.ndarray[Any, np.dtype[np.bool_]]


def _neighbourhood(mask: Mask, combine: Any) -> Mask:
    """``combine`` (``np.logical_and``: 3x3 minimum; ``np.logical_or``: maximum) over the 3x3
    neighbourhood of every pixel, the frame's edge repeated (as Pillow's rank filters): separable,
    in place, without stacking the nine shifted copies."""
    height, width = mask.shape
    padded = np.pad(mask, 1, mode="edge")
    rows = padded[:, 0:width].copy()
    combine(rows, padded[:, 1 : width + 1], out=rows)
    combine(rows, padded[:, 2 : width + 2], out=rows)
    out = rows[0:height].copy()
    combine(out, rows[1 : height + 1], out=out)
    combine(out, rows[2 : height + 2], out=out)
    return out


def _erode(mask: Mask) -> Mask:
    """3x3 minimum of a boolean mask: in numpy, a fraction of the time of a rank filter."""
    return _neighbourhood(mask, np.logical_and)


def _dilate3(mask: Mask) -> Mask:
    """3x3 maximum of a boolean mask."""
    return _neighbourhood(mask, np.logical_or)


def _distance(pixels: U8, other: U8) -> U8:
    """Max over the channels of ``|pixels - other|`` (``other``: pixels of the same shape, or one
    colour), a band of rows at a time so that the temporaries stay small. The channels are taken
    as three strided planes: numpy's reduction over a last axis of 3 costs ten times as much."""
    distance = np.empty(pixels.shape[:2], dtype=np.uint8)
    rows = max(1, STRIP_BYTES // (3 * pixels.shape[1]))
    for row in range(0, pixels.shape[0], rows):
        part = pixels[row : row + rows]
        against = other if other.ndim == 1 else other[row : row + rows]
        apart = np.maximum(part, against)
        apart -= np.minimum(part, against)
        out = distance[row : row + rows]
        np.maximum(apart[..., 0], apart[..., 1], out=out)
        np.maximum(out, apart[..., 2], out=out)
    return distance


def _reduce(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Box-average ``image`` down to ``size``, a strip of output rows at a time: the resampling's
    temporary images (its source rows at the output's width) stay within ``STRIP_BYTES`` (the
    same pixels as one whole resize)."""
    if image.size == size:
        return image
    reduced = Image.new("RGB", size)
    scale = image.height / size[1]
    rows = max(1, int(STRIP_BYTES / (4 * size[0] * (scale + 1))))
    for row in range(0, size[1], rows):
        end = min(size[1], row + rows)
        box = (0.0, row * scale, float(image.width), min(float(image.height), end * scale))
        reduced.paste(image.resize((size[0], end - row), Image.Resampling.BOX, box=box), (0, row))
    return reduced


def compare(result: Image.Image, original: Image.Image, colour: Colour) -> Comparison:
    """Find the product (see the module docstring for what this relies on).

    ``result`` is the run's output (RGB, full size); ``original`` the upright input (RGB, any size
    with the same aspect: it is reduced to the working size too).
    """
    if result.mode != "RGB" or original.mode != "RGB":
        raise ValueError("result and original must be RGB")
    if abs(result.width * original.height - result.height * original.width) > max(result.size):
        raise ValueError(f"result {result.size} and original {original.size} do not have the same shape")
    size = working_size(result.size)
    # As arrays at once (they are kept in the comparison): no working-size image is held twice.
    small = np.asarray(_reduce(result, size), dtype=np.uint8)
    source = np.asarray(_reduce(original, size), dtype=np.uint8)
    changed = _distance(small, source)
    flat = np.array(tuple(colour), dtype=np.uint8)
    on_colour = _distance(small, flat) <= ON_COLOUR_TOLERANCE
    kept = (changed <= NOISE_TOLERANCE) & ~on_colour
    # Opening then closing: isolated specks where a background pixel happens to match the original
    # go, pinholes of noise inside the product close.
    kept = _erode(_dilate3(_dilate3(_erode(kept))))
    alpha = np.where(kept, np.uint8(255), np.uint8(0))  # uint8 at once: no 8-byte temporary
    core = Image.fromarray(alpha, mode="L")
    # Soft edge: a pixel near the product that moved part of the way from the original to the
    # colour is that part background.
    band_radius = max(1, round(EDGE_BAND_SHARE * min(size)))
    band = (np.asarray(_dilate(core, band_radius)) > 0) & (alpha == 0) & ~on_colour
    # In floats on the band's pixels only: whole-frame float temporaries would cost more memory
    # than the working-size images themselves.
    span = _distance(source, flat)[band]
    moved = changed[band].astype(np.float32) - NOISE_TOLERANCE
    opacity = np.clip(1.0 - moved / np.maximum(span.astype(np.float32) - NOISE_TOLERANCE, 1.0), 0.0, 1.0)
    alpha[band] = np.rint(opacity * 254).astype(np.uint8)
    return Comparison(
        result=small,
        original=source,
        changed=changed,
        alpha=alpha,
        colour=colour,
        full_size=result.size,
    )


def compare_bytes(result: bytes, original: bytes, colour: Colour) -> tuple[Image.Image, Comparison]:
    """Decode both files and compare them; the full-size result is returned for rendering."""
    with Image.open(io.BytesIO(result)) as header:
        width, height = header.size
        if _orientation(header) in (5, 6, 7, 8):
            width, height = height, width
    size = working_size((width, height))
    # The original first, reduced at once: only one full-size photo is ever in memory.
    source = _reduce(open_upright(original, at_least=size), size)
    decoded = open_upright(result)
    return decoded, compare(decoded, source, colour)


def compare_region(result: bytes, original: bytes, colour: Colour) -> tuple[Region, Comparison]:
    """As ``compare_bytes``, but only the product's box (widened by ``REGION_MARGIN`` working px)
    is kept at full size, and the full-size result is dropped as soon as the product is found: the
    renditions never hold a whole decoded result beside their own canvases."""
    _release_free_heap()
    decoded, found = compare_bytes(result, original, colour)
    frame = decoded.size
    soft = found.soft_box(REGION_MARGIN) or (0, 0, 0, 0)
    sx, sy = frame[0] / found.size[0], frame[1] / found.size[1]
    left, top = math.floor(soft[0] * sx), math.floor(soft[1] * sy)
    right, bottom = min(frame[0], math.ceil(soft[2] * sx)), min(frame[1], math.ceil(soft[3] * sy))
    if (left, top, right, bottom) == (0, 0, *frame):
        return Region.whole(decoded), found
    # Copied a strip at a time into 3 bytes a pixel (Pillow keeps 4): beside the decoded result,
    # the copy costs three quarters of a crop.
    pixels = np.empty((bottom - top, right - left, 3), dtype=np.uint8)
    rows = max(1, STRIP_BYTES // (4 * max(1, right - left)))
    for row in range(top, bottom, rows):
        end = min(bottom, row + rows)
        pixels[row - top : end - top] = np.asarray(decoded.crop((left, row, right, end)), dtype=np.uint8)
    del decoded
    # Kept as the array: the renditions resample it with libvips in place, with no Pillow copy.
    return Region(pixels, (left, top), frame), found
