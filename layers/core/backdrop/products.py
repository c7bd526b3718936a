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

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageFilter, ImageOps

from backdrop.colours import Colour

MASK_LONG_SIDE = 1024  # working size of the comparison (longer side, px); the rendering upsamples it
NOISE_TOLERANCE = 12  # max channel difference still "unchanged" at the working size
ON_COLOUR_TOLERANCE = 10  # an unchanged pixel this close to the colour is background
EDGE_BAND_SHARE = 0.006  # soft edge searched up to this share of the shorter side outside the product
MAX_PIXELS = 50_000_000  # as the pipeline's own input limit

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


Mask = np.ndarray[Any, np.dtype[np.bool_]]


def _neighbours(mask: Mask) -> list[Mask]:
    """The 3x3 neighbourhood of every pixel, the frame's edge repeated (as Pillow's rank filters)."""
    padded = np.pad(mask, 1, mode="edge")
    height, width = mask.shape
    return [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]


def _erode(mask: Mask) -> Mask:
    """3x3 minimum of a boolean mask: in numpy, a fraction of the time of a rank filter."""
    eroded: Mask = np.logical_and.reduce(_neighbours(mask))
    return eroded


def _dilate3(mask: Mask) -> Mask:
    """3x3 maximum of a boolean mask."""
    dilated: Mask = np.logical_or.reduce(_neighbours(mask))
    return dilated


def _max_channel(image: Image.Image) -> Image.Image:
    red, green, blue = image.split()
    return ImageChops.lighter(ImageChops.lighter(red, green), blue)


def _reduce(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Box-average ``image`` down to ``size``; an integer reduction first, so that no temporary
    image of the full height is made."""
    if image.size == size:
        return image
    factor = max(1, min(image.width // size[0], image.height // size[1]))
    smaller = image.reduce(factor) if factor > 1 else image
    return smaller if smaller.size == size else smaller.resize(size, Image.Resampling.BOX)


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
    small, source = _reduce(result, size), _reduce(original, size)
    # Channel differences in Pillow (8-bit, one channel at a time): small temporary images.
    changed = np.asarray(_max_channel(ImageChops.difference(small, source)), dtype=np.uint8)
    flat = Image.new("RGB", size, tuple(colour))
    off_colour = np.asarray(_max_channel(ImageChops.difference(small, flat)), dtype=np.uint8)
    del flat
    on_colour = off_colour <= ON_COLOUR_TOLERANCE
    kept = (changed <= NOISE_TOLERANCE) & ~on_colour
    # Opening then closing: isolated specks where a background pixel happens to match the original
    # go, pinholes of noise inside the product close.
    kept = _erode(_dilate3(_dilate3(_erode(kept))))
    alpha = np.where(kept, 255, 0).astype(np.uint8)
    core = Image.fromarray(alpha, mode="L")
    # Soft edge: a pixel near the product that moved part of the way from the original to the
    # colour is that part background.
    band_radius = max(1, round(EDGE_BAND_SHARE * min(size)))
    band = (np.asarray(_dilate(core, band_radius)) > 0) & (alpha == 0) & ~on_colour
    flat = Image.new("RGB", size, tuple(colour))
    span = np.asarray(_max_channel(ImageChops.difference(source, flat)), dtype=np.float32) - NOISE_TOLERANCE
    moved = changed.astype(np.float32) - NOISE_TOLERANCE
    with np.errstate(divide="ignore", invalid="ignore"):
        opacity = np.clip(1.0 - moved / np.maximum(span, 1.0), 0.0, 1.0)
    alpha[band] = np.rint(opacity[band] * 254).astype(np.uint8)
    return Comparison(
        result=np.asarray(small, dtype=np.uint8),
        original=np.asarray(source, dtype=np.uint8),
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
