"""Renditions: publishable images per sales channel from one result, each with a verdict.

A rendition is drawn from the full-size result by a ``Spec`` (``backdrop.profiles``: the canvas,
fit, alignment, format and background, and the built-in profiles ``amazon-main``,
``google-shopping``, ``shopify-square``, ``zalando`` and ``thumbnail``), placed by what
``backdrop.products`` found, encoded, and judged.

Every rendition is sRGB (an sRGB ICC profile is embedded), has no alpha channel, and JPEGs are not
chroma-subsampled (4:4:4), so that flat colours survive the encoding.

The verdict (``verdict``) is measured on the encoded file read back; see ``judge``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pyvips
from PIL import Image, ImageCms

from backdrop.colours import Colour
from backdrop.products import Comparison, Region
from backdrop.profiles import ALIGNMENTS, LOSSY, MIN_QUALITY, Spec

# The profiles and their parser, also reachable from here (they live apart so that reading the
# setting never loads the imaging libraries).
from backdrop.profiles import PROFILES as PROFILES
from backdrop.profiles import RenditionsError as RenditionsError
from backdrop.profiles import parse_renditions as parse_renditions

JPEG_GUARD_PX = 16  # two 8x8 blocks: lossy ringing next to the product is not counted as background
FILL_TOLERANCE = 0.03  # measured fill may differ from the spec's by this much (pad)
PRODUCT_TOLERANCE = 32  # read back, a pixel this far from the colour is product (beyond ringing)
UPSCALE_WARN = 1.05  # the product enlarged more than this: softer than the channel expects
REDUCING_GAP = 3.0  # Pillow reduces by a whole factor first when the scale is under 1 / (2 x this)
BAND_ROWS = 96  # canvas rows of the product resampled at a time
SCAN_BYTES = 192 * 1024  # read-back pixels scanned at a time (4 bytes each): below glibc's mmap threshold
EXACT_SHARE_FAIL = 0.99  # share of background pixels exactly on the colour below which it fails

# libvips resamples the product (a third to a quarter of Pillow's CPU time for the same Lanczos3):
# one thread, as a function's CPU time is what it pays for, and no operation cache, as no
# resample is ever repeated and the cache would keep its pixels.
pyvips.cache_set_max(0)
pyvips.concurrency_set(1)


Rect = tuple[int, int, int, int]  # canvas px: left, top, right, bottom
Box = tuple[float, float, float, float]  # frame px


@cache
def srgb_icc() -> bytes:
    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


@dataclass(frozen=True)
class Layout:
    """Where the source's box lands: the canvas, the source box and its scale."""

    canvas: tuple[int, int]
    scale: float  # canvas px per source px
    origin: tuple[float, float]  # canvas position of the source's (0, 0)


def layout(spec: Spec, frame: tuple[int, int], bbox: tuple[float, float, float, float] | None) -> Layout:
    width, height = spec.canvas(frame)
    ax, ay = ALIGNMENTS[spec.align]
    if spec.fit == "pad":
        if bbox is None:
            raise ValueError("no product found: a padded rendition needs one")
        left, top, right, bottom = bbox
        box_w, box_h = right - left, bottom - top
        scale = spec.fill * min(width / box_w, height / box_h)
        margin_x, margin_y = width * (1 - spec.fill) / 2, height * (1 - spec.fill) / 2
        x = margin_x + (width * spec.fill - box_w * scale) * ax
        y = margin_y + (height * spec.fill - box_h * scale) * ay
        return Layout((width, height), scale, (x - left * scale, y - top * scale))
    fw, fh = frame
    pick = min if spec.fit == "contain" else max
    scale = pick(width / fw, height / fh)
    return Layout((width, height), scale, ((width - fw * scale) * ax, (height - fh * scale) * ay))


@dataclass(frozen=True)
class Coverage:
    """Where the product is on the canvas (its opacity): an L patch over the canvas rectangle the
    product can reach, 0 everywhere else (no patch: no product on the canvas)."""

    canvas: tuple[int, int]
    patch: Image.Image | None = None
    origin: tuple[int, int] = (0, 0)

    def bbox(self, table: list[int]) -> Rect | None:
        """The canvas box of the pixels ``table`` maps to non-zero."""
        if self.patch is None:
            return None
        box = self.patch.point(table).getbbox()
        if box is None:
            return None
        x, y = self.origin
        return (box[0] + x, box[1] + y, box[2] + x, box[3] + y)


@dataclass(frozen=True)
class Rendered:
    data: bytes
    coverage: Coverage
    layout: Layout
    colour: Colour  # the background colour
    quality: int | None


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    out = io.BytesIO()
    icc = srgb_icc()
    if fmt == "JPEG":
        image.save(out, "JPEG", quality=quality, subsampling=0, icc_profile=icc)
    elif fmt == "PNG":
        image.save(out, "PNG", compress_level=6, icc_profile=icc)
    elif fmt == "WEBP":
        image.save(out, "WEBP", quality=quality, method=4, icc_profile=icc)
    else:
        image.save(out, "AVIF", quality=quality, speed=8, subsampling="4:4:4", icc_profile=icc)
    return out.getvalue()


def _visible(plan: Layout, frame: tuple[int, int]) -> tuple[Rect, Box] | None:
    """The part of the frame that lands on the canvas, in canvas and frame coordinates."""
    width, height = plan.canvas
    (ox, oy), scale = plan.origin, plan.scale
    left, top = max(0.0, -ox / scale), max(0.0, -oy / scale)
    right = min(float(frame[0]), (width - ox) / scale)
    bottom = min(float(frame[1]), (height - oy) / scale)
    x0, y0 = round(ox + left * scale), round(oy + top * scale)
    x1, y1 = min(round(ox + right * scale), width), min(round(oy + bottom * scale), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1), (left, top, right, bottom)


def _product_rect(plan: Layout, visible: tuple[Rect, Box], found: Comparison) -> tuple[Rect, Box] | None:
    """The canvas pixels the product's soft edge can reach (its mask interpolated), inside the
    visible part, with the frame box they show; None when no product lands on the canvas."""
    (ox, oy), scale = plan.origin, plan.scale
    sx, sy = found.full_size[0] / found.size[0], found.full_size[1] / found.size[1]
    # The interpolation reaches a pixel, or a canvas pixel's worth of working pixels, further.
    soft = found.soft_box(math.ceil(max(1.0, 1 / (scale * min(sx, sy)))) + 1)
    if soft is None:
        return None
    (vx0, vy0, vx1, vy1), (left, top, right, bottom) = visible
    x0 = max(vx0, math.floor(ox + soft[0] * sx * scale))
    y0 = max(vy0, math.floor(oy + soft[1] * sy * scale))
    x1 = min(vx1, math.ceil(ox + soft[2] * sx * scale))
    y1 = min(vy1, math.ceil(oy + soft[3] * sy * scale))
    if x1 <= x0 or y1 <= y0:
        return None
    # Where the rectangle meets the visible part's edge, the visible box's own (rounded) mapping.
    box = (
        left if x0 == vx0 else (x0 - ox) / scale,
        top if y0 == vy0 else (y0 - oy) / scale,
        right if x1 == vx1 else (x1 - ox) / scale,
        bottom if y1 == vy1 else (y1 - oy) / scale,
    )
    return (x0, y0, x1, y1), box


def _full_size_box(region: Region, found: Comparison, plan: Layout, box: Box) -> Box | None:
    """The frame's ``box`` in the region's pixels when it is drawn from full size: the region holds
    it and the canvas is finer than the working size (or the region is the whole frame)."""
    working_scale = found.size[0] / found.full_size[0]
    if not (region.covers_frame or (plan.scale >= working_scale and region.holds(box))):
        return None
    x, y = region.offset
    width, height = region.size
    return (
        max(0.0, box[0] - x),
        max(0.0, box[1] - y),
        min(float(width), box[2] - x),
        min(float(height), box[3] - y),
    )


def _resample(
    region: Region, found: Comparison, plan: Layout, rect: Rect, box: Box
) -> tuple[Image.Image, bool]:
    """The frame's ``box`` resampled to the canvas ``rect``: from the full-size region when it holds
    the box and the canvas is finer than the working size, else from the working-size result.
    Returns the patch and whether it came from full size."""
    size = (rect[2] - rect[0], rect[3] - rect[1])
    inside = _full_size_box(region, found, plan, box)
    if inside is not None:
        resized = region.image.resize(size, Image.Resampling.LANCZOS, box=inside, reducing_gap=REDUCING_GAP)
        return resized, True
    working_scale = found.size[0] / found.full_size[0]
    kx, ky = working_scale, found.size[1] / found.full_size[1]
    small = (
        max(0.0, box[0] * kx),
        max(0.0, box[1] * ky),
        min(float(found.size[0]), box[2] * kx),
        min(float(found.size[1]), box[3] * ky),
    )
    # Enlarged (a background as made, around a product drawn at full size): the model's shading
    # is smooth, and bilinear costs a third of Lanczos.
    enlarged = plan.scale > working_scale
    method = Image.Resampling.BILINEAR if enlarged else Image.Resampling.LANCZOS
    return found.result_image().resize(size, method, box=small), False


def _coverage(plan: Layout, product: tuple[Rect, Box] | None, found: Comparison) -> Coverage:
    """Where the product is on the canvas (its opacity), from the mask interpolated: only over
    the product's rectangle (the rest of the canvas is 0 by construction)."""
    if product is None:
        return Coverage(plan.canvas)
    rect, box = product
    kx, ky = found.size[0] / found.full_size[0], found.size[1] / found.full_size[1]
    mask_box = (box[0] * kx, box[1] * ky, box[2] * kx, box[3] * ky)
    size = (rect[2] - rect[0], rect[3] - rect[1])
    patch = found.alpha_image().resize(size, Image.Resampling.BILINEAR, box=mask_box)
    return Coverage(plan.canvas, patch, rect[:2])


def render(spec: Spec, result: Image.Image | Region, found: Comparison) -> Rendered:
    """Draw and encode one rendition from the result (the full-size image, or the ``Region`` kept
    by ``products.compare_region``) and what ``found`` found in it.

    Only the canvas pixels the product can reach are resampled from full size; an exact background
    needs nothing else. A background as made takes the rest of the frame from the full-size image
    when it was given whole, else from the working-size result (the model's shading is smooth)."""
    region = result if isinstance(result, Region) else Region.whole(result)
    plan = layout(spec, region.frame, found.bbox())
    colour = spec.background or found.colour
    visible = _visible(plan, region.frame)
    product = _product_rect(plan, visible, found) if visible is not None else None
    coverage = _coverage(plan, product, found)
    if spec.background is not None:
        canvas = Image.new("RGB", plan.canvas, tuple(colour))
        if product is not None:
            _draw_product(canvas, region, found, plan, product, coverage)
    else:
        canvas = _as_made(region, found, plan, visible, product, coverage)
    quality = spec.quality if spec.format in LOSSY else None
    data = _encode(canvas, spec.format, spec.quality)
    while spec.max_bytes is not None and len(data) > spec.max_bytes and quality is not None:
        if quality <= MIN_QUALITY:
            break
        quality = max(MIN_QUALITY, quality - 10)
        data = _encode(canvas, spec.format, quality)
    return Rendered(data=data, coverage=coverage, layout=plan, colour=colour, quality=quality)


def _as_made(
    region: Region,
    found: Comparison,
    plan: Layout,
    visible: tuple[Rect, Box] | None,
    product: tuple[Rect, Box] | None,
    coverage: Coverage,
) -> Image.Image:
    """The result's own background over the canvas, the job's colour outside the frame; the
    product at full size over it where the frame was not resampled from full size."""
    if visible is None:
        return Image.new("RGB", plan.canvas, tuple(found.colour))
    rect = visible[0]
    base, fine = _resample(region, found, plan, *visible)
    if rect == (0, 0, *plan.canvas):
        canvas = base  # the frame fills the canvas: no second canvas-sized image
    else:
        canvas = Image.new("RGB", plan.canvas, tuple(found.colour))
        canvas.paste(base, rect[:2])
    del base
    working_scale = found.size[0] / found.full_size[0]
    if not fine and product is not None and plan.scale >= working_scale and region.holds(product[1]):
        # Blended by the product's opacity: the seam lies along its outline, not in the background.
        _draw_product(canvas, region, found, plan, product, coverage)
    return canvas


def _draw_product(
    canvas: Image.Image,
    region: Region,
    found: Comparison,
    plan: Layout,
    product: tuple[Rect, Box],
    coverage: Coverage,
) -> None:
    """The product's rectangle resampled onto ``canvas``, blended by its coverage.

    From full size, pasted a band of ``BAND_ROWS`` canvas rows at a time, each only between the
    first and the last column the product covers in it. The region's pixels (what
    ``compare_region`` keeps) are reduced by libvips's Lanczos3 (``_lanczos3``) in one pass, and
    the bands cut from it. A Pillow image, or an enlargement, is resampled by Pillow's ``LANCZOS``
    band by band (the corners of the rectangle around a round or slanted product never are), each
    band mapped to the same frame coordinates as one whole resize (a few pixels differ by one
    level, where rounding falls the other way)."""
    rect, box = product
    size = (rect[2] - rect[0], rect[3] - rect[1])
    inside = _full_size_box(region, found, plan, box)
    if inside is None or coverage.patch is None or _reduces(inside, size):
        patch, _ = _resample(region, found, plan, rect, box)
        canvas.paste(patch, rect[:2], coverage.patch)
        return
    pixels = region.pixels
    resampled = _lanczos3(pixels, inside, size) if pixels is not None else None
    if resampled is None:
        _draw_bands(canvas, rect, coverage, _pillow_bands(region.image, inside, size))
        return
    _draw_bands(canvas, rect, coverage, _vips_bands(resampled))


Bands = Callable[[int, int, int, int], Image.Image]  # (left, top, right, bottom) of the patch -> pixels


def _draw_bands(canvas: Image.Image, rect: Rect, coverage: Coverage, bands: Bands) -> None:
    """The patch over ``rect`` drawn a band of ``BAND_ROWS`` rows at a time, each between the first
    and the last column its coverage reaches, blended by the coverage."""
    assert coverage.patch is not None
    covered = np.asarray(coverage.patch)
    for top in range(0, rect[3] - rect[1], BAND_ROWS):
        bottom = min(rect[3] - rect[1], top + BAND_ROWS)
        columns = np.flatnonzero(covered[top:bottom].any(axis=0))
        if columns.size == 0:
            continue
        left, right = int(columns[0]), int(columns[-1]) + 1
        band = bands(left, top, right, bottom)
        canvas.paste(band, (rect[0] + left, rect[1] + top), coverage.patch.crop((left, top, right, bottom)))


def _pillow_bands(image: Image.Image, inside: Box, size: tuple[int, int]) -> Bands:
    """Bands of Pillow's Lanczos over ``inside`` resized to ``size``, each mapped to the same frame
    coordinates as one whole resize."""
    sx, sy = (inside[2] - inside[0]) / size[0], (inside[3] - inside[1]) / size[1]

    def band(left: int, top: int, right: int, bottom: int) -> Image.Image:
        box = (
            inside[0] + left * sx,
            inside[1] + top * sy,
            min(float(image.width), inside[0] + right * sx),
            min(float(image.height), inside[1] + bottom * sy),
        )
        return image.resize((right - left, bottom - top), Image.Resampling.LANCZOS, box=box)

    return band


def _vips_bands(resampled: Any) -> Bands:
    """Bands cut from a libvips resample, computed whole at once: one buffer (a band at a time,
    each band's buffers would be mapped afresh, page by page, past glibc's mmap threshold)."""
    width, height = resampled.width, resampled.height
    whole = np.frombuffer(resampled.write_to_memory(), dtype=np.uint8).reshape(height, width, 3)

    def band(left: int, top: int, right: int, bottom: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(whole[top:bottom, left:right]), mode="RGB")

    return band


def lanczos3_box(inside: Box, source: tuple[int, int]) -> Rect:
    """The whole source pixels that ``_lanczos3`` reduces for the frame box ``inside``: its edges
    rounded to the nearest pixel edge (at most half a source pixel, so under half a canvas pixel
    when reducing), inside the source."""
    left, top = max(0, round(inside[0])), max(0, round(inside[1]))
    right, bottom = min(source[0], round(inside[2])), min(source[1], round(inside[3]))
    return left, top, max(left + 1, right), max(top + 1, bottom)


def _lanczos3(pixels: np.ndarray[Any, np.dtype[np.uint8]], inside: Box, size: tuple[int, int]) -> Any:
    """A lazy libvips image: the source pixels of ``inside`` (rounded to whole pixels) reduced to
    ``size`` by Lanczos3 (``a`` = 3, widened by the shrink: the same kernel as Pillow's
    ``LANCZOS``, with the same pixel-centre convention). Read in place from ``pixels``: no copy
    of the source is made. None when that would enlarge on either axis, or the array is not laid
    out row after row (Pillow does those)."""
    height, width = pixels.shape[:2]
    left, top, right, bottom = lanczos3_box(inside, (width, height))
    if right - left < size[0] or bottom - top < size[1] or not pixels.flags.c_contiguous:
        return None
    source = pyvips.Image.new_from_memory(pixels.data, width, height, 3, "uchar")
    cropped = source.crop(left, top, right - left, bottom - top)
    reduced = cropped.reduce((right - left) / size[0], (bottom - top) / size[1], kernel="lanczos3")
    return reduced if (reduced.width, reduced.height) == size else None


def _reduces(box: Box, size: tuple[int, int]) -> bool:
    """Whether Pillow's resize reduces first (by a whole factor, ``REDUCING_GAP``): then the bands
    would not share one reduction's grid, and the patch is resampled whole."""
    return (box[2] - box[0]) / size[0] >= 2 * REDUCING_GAP or (box[3] - box[1]) / size[1] >= 2 * REDUCING_GAP


def _colour_space(image: Image.Image) -> str:
    icc = image.info.get("icc_profile")
    if not icc:
        return "sRGB (untagged)" if image.mode in ("RGB", "RGBA", "L") else image.mode
    try:
        description = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    except (ImageCms.PyCMSError, OSError):
        return "unreadable ICC profile"
    return str(description).strip()


def judge(spec: Spec, rendered: Rendered, found: Comparison) -> dict[str, Any]:
    """The verdict, measured on the encoded file read back.

    ``fail`` when: canvas size or format differ from the spec; the file has an alpha channel or
    is not sRGB; it is over ``max_bytes``; no product was found (pad); or, for an exact colour,
    under ``EXACT_SHARE_FAIL`` of the background pixels (those at least ``JPEG_GUARD_PX`` from the
    product in lossy formats, all in lossless ones) are exactly the colour, or the border ring
    (``max(2, 0.5 %)`` of the shorter side) is not.
    ``warn`` when: an exact background is pure to less than 100 %; the product's measured fill
    differs from the spec's by more than ``FILL_TOLERANCE`` (pad); the product touches the
    photo's frame (cropped when it was taken) or the rendition's edge; it was enlarged more than
    ``UPSCALE_WARN`` times.
    """
    file = _read_back(rendered, product=spec.background is not None)
    findings = _Findings()
    _judge_file(spec, rendered, file, found, findings)
    _judge_background(spec, rendered, file, findings)
    _judge_product(spec, rendered, file, found, findings)
    findings.checks["scale"] = round(float(rendered.layout.scale), 4)
    if rendered.layout.scale > UPSCALE_WARN:
        findings.warns.append(
            f"enlarged {rendered.layout.scale:.2f} times from the result: softer than the original"
        )
    verdict = "fail" if findings.fails else "warn" if findings.warns else "pass"
    return {
        "width": file.width,
        "height": file.height,
        "format": file.format,
        "bytes": len(rendered.data),
        "verdict": verdict,
        "reasons": findings.fails + findings.warns,
        "checks": findings.checks,
    }


@dataclass(frozen=True)
class _Near:
    """The canvas pixels near the product: ``mask`` covers a box of the canvas from ``origin``."""

    mask: np.ndarray[Any, np.dtype[np.bool_]]
    origin: tuple[int, int]


@dataclass(frozen=True)
class _Scan:
    """What the read-back pixels show against the background colour."""

    exact: int  # background pixels (outside the product's neighbourhood) exactly on the colour
    background: int  # pixels outside the product's neighbourhood
    border_pure: bool  # every pixel of the border ring is exactly on the colour
    product: Rect | None  # box of the pixels beyond PRODUCT_TOLERANCE and near the product


@dataclass(frozen=True)
class _ReadBack:
    """What the encoded file shows when it is read back."""

    width: int
    height: int
    format: str
    alpha: bool
    colour_space: str
    scan: _Scan


@dataclass
class _Findings:
    fails: list[str] = field(default_factory=list)
    warns: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)


def _read_back(rendered: Rendered, *, product: bool) -> _ReadBack:
    """Decode the encoded file and scan its pixels (``product``: also find the product's box as
    the file shows it)."""
    with Image.open(io.BytesIO(rendered.data)) as image:
        width, height = image.size
        fmt = image.format or "unknown"
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        colour_space = _colour_space(image)
        image.load()
        pixels = image if image.mode == "RGB" else image.convert("RGB")
        near = _near(rendered.coverage, JPEG_GUARD_PX if fmt in LOSSY else 0)
        scan = _scan(pixels, rendered.colour, near, product=product)
    return _ReadBack(width, height, fmt, has_alpha, colour_space, scan)


def _ring(width: int, height: int) -> int:
    return max(2, round(0.005 * min(width, height)))


def _scan(pixels: Image.Image, colour: Colour, near: _Near | None, *, product: bool) -> _Scan:
    """Count the pixels exactly on ``colour`` (all, and near the product), check the border ring
    and, with ``product``, box the pixels beyond ``PRODUCT_TOLERANCE`` near the product.

    A strip of rows at a time, as 32-bit words (Pillow keeps RGB as R, G, B and a pad byte): one
    comparison a pixel for exactness, and every temporary small enough to be reused from the
    heap rather than mapped afresh."""
    width, height = pixels.size
    ring = _ring(width, height)
    key = colour.red | colour.green << 8 | colour.blue << 16
    rows = max(1, SCAN_BYTES // (4 * width))
    exact_all = exact_near = 0
    border_pure = True
    found: list[int] = [width, height, 0, 0]
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        raw = pixels.crop((0, top, width, bottom)).tobytes("raw", "RGBX")
        exact = (np.frombuffer(raw, dtype="<u4").reshape(bottom - top, width) & 0xFFFFFF) == key
        exact_all += int(np.count_nonzero(exact))
        if border_pure:
            border_pure = _border_pure(exact, top, height, ring)
        if near is None:
            continue
        (nx, ny), (nh, nw) = near.origin, near.mask.shape
        y0, y1 = max(top, ny), min(bottom, ny + nh)
        if y0 >= y1:
            continue
        inside = near.mask[y0 - ny : y1 - ny]
        exact_near += int(np.count_nonzero(exact[y0 - top : y1 - top, nx : nx + nw] & inside))
        if product:
            channels = np.frombuffer(raw, dtype=np.uint8).reshape(bottom - top, width, 4)
            beyond = _beyond(channels[y0 - top : y1 - top, nx : nx + nw], colour) & inside
            _extend(found, beyond, nx, y0)
    near_count = int(np.count_nonzero(near.mask)) if near is not None else 0
    box = (found[0], found[1], found[2], found[3]) if found[2] > found[0] else None
    return _Scan(exact_all - exact_near, width * height - near_count, border_pure, box)


def _border_pure(exact: np.ndarray[Any, np.dtype[np.bool_]], top: int, height: int, ring: int) -> bool:
    """Whether the strip's part of the border ring (``exact`` holds rows from ``top``) is exact."""
    if not (exact[:, :ring].all() and exact[:, -ring:].all()):
        return False
    if top < ring and not exact[: ring - top].all():
        return False
    return bool(exact[max(0, height - ring - top) :].all())


def _beyond(channels: np.ndarray[Any, np.dtype[np.uint8]], colour: Colour) -> np.ndarray[Any, Any]:
    """Pixels (R, G, B, pad bytes) with a channel more than ``PRODUCT_TOLERANCE`` from the colour."""
    beyond = np.zeros(channels.shape[:2], dtype=np.bool_)
    for index, value in enumerate(colour):
        if value - PRODUCT_TOLERANCE > 0:
            beyond |= channels[..., index] < value - PRODUCT_TOLERANCE
        if value + PRODUCT_TOLERANCE < 255:
            beyond |= channels[..., index] > value + PRODUCT_TOLERANCE
    return beyond


def _extend(box: list[int], flags: np.ndarray[Any, np.dtype[np.bool_]], x: int, y: int) -> None:
    """Grow ``box`` (left, top, right, bottom) over the set ``flags``, whose (0, 0) is at (x, y)."""
    rows = np.flatnonzero(flags.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(flags.any(axis=0))
    box[0], box[1] = min(box[0], x + int(cols[0])), min(box[1], y + int(rows[0]))
    box[2], box[3] = max(box[2], x + int(cols[-1]) + 1), max(box[3], y + int(rows[-1]) + 1)


def _judge_file(
    spec: Spec, rendered: Rendered, file: _ReadBack, found: Comparison, findings: _Findings
) -> None:
    """The file itself: canvas, format, alpha, colour space and size."""
    width, height = file.width, file.height
    expected = spec.canvas(found.full_size)
    findings.checks.update(
        width=width,
        height=height,
        aspect=round(width / height, 4),
        format=file.format,
        colour_space=file.colour_space,
        alpha=file.alpha,
        bytes=len(rendered.data),
        max_bytes=spec.max_bytes,
        quality=rendered.quality,
    )
    fails = findings.fails
    if (width, height) != expected:
        fails.append(f"canvas is {width}x{height}, the spec asks {expected[0]}x{expected[1]}")
    if file.format != spec.format:
        fails.append(f"format is {file.format}, the spec asks {spec.format}")
    if file.alpha:
        fails.append("the file has an alpha channel")
    if not file.colour_space.startswith("sRGB"):
        fails.append(f"colour space is {file.colour_space!r}, not sRGB")
    if spec.max_bytes is not None and len(rendered.data) > spec.max_bytes:
        fails.append(f"{len(rendered.data)} bytes, over the limit of {spec.max_bytes}")


def _judge_background(spec: Spec, rendered: Rendered, file: _ReadBack, findings: _Findings) -> None:
    """How exactly the background shows the colour."""
    scan = file.scan
    share = scan.exact / scan.background if scan.background else 1.0
    findings.checks.update(background_exact_share=round(share, 6), border_pure=scan.border_pure)
    if spec.background is not None:
        if share < EXACT_SHARE_FAIL:
            findings.fails.append(f"only {share:.2%} of the background is exactly {rendered.colour}")
        elif share < 1.0:
            findings.warns.append(f"{1 - share:.3%} of the background is not exactly {rendered.colour}")
        if not scan.border_pure:
            ring = _ring(file.width, file.height)
            findings.fails.append(f"the border ring ({ring} px) is not exactly {rendered.colour}")


def _judge_product(
    spec: Spec, rendered: Rendered, file: _ReadBack, found: Comparison, findings: _Findings
) -> None:
    """Where the product is and how much of the canvas it fills: as the file shows it, beyond
    ringing from the colour near the product (exact background), else where its coverage is at
    least half."""
    bbox = file.scan.product if spec.background is not None else rendered.coverage.bbox(_HALF)
    if bbox is None:
        findings.checks.update(fill=0.0, touches_frame_edge=found.touches_edge(), touches_canvas_edge=False)
        findings.fails.append("no product in the rendition")
        return
    width, height = file.width, file.height
    left, top, right, bottom = bbox
    fill = max((right - left) / width, (bottom - top) / height)
    centre = ((left + right) / 2 / width, (top + bottom) / 2 / height)
    on_canvas_edge = left == 0 or top == 0 or right == width or bottom == height
    findings.checks.update(
        fill=round(fill, 4),
        product_centre=[round(centre[0], 4), round(centre[1], 4)],
        touches_frame_edge=found.touches_edge(),
        touches_canvas_edge=on_canvas_edge,
    )
    if spec.fit == "pad" and abs(fill - spec.fill) > FILL_TOLERANCE:
        findings.warns.append(f"the product fills {fill:.1%} of the canvas, the spec asks {spec.fill:.0%}")
    if found.touches_edge():
        findings.warns.append("the product touches the edge of the photo: it was probably cropped when taken")
    if on_canvas_edge and spec.fit != "cover":
        findings.warns.append("the product touches the edge of the rendition")


_HALF = [0] * 128 + [255] * 128


def _near(coverage: Coverage, radius: int) -> _Near | None:
    """Pixels within ``radius`` (square, exactly) of the product's coverage, as a mask over the
    coverage's box widened by ``radius`` (clipped to the canvas). None: no coverage at all."""
    patch, (x, y) = coverage.patch, coverage.origin
    reach = patch.getbbox() if patch is not None else None
    if patch is None or reach is None:
        return None
    covered = np.asarray(patch.crop(reach)) > 0
    if radius <= 0:
        return _Near(covered, (x + reach[0], y + reach[1]))
    height, width = covered.shape
    # Shifted by 2 x radius, then each pixel takes the OR of the next 2 x radius + 1 along both
    # axes: pixel (i, j) of ``near`` is the square of side 2 x radius + 1 centred on
    # (i - radius, j - radius) of ``covered``.
    near = np.zeros((height + 2 * radius, width + 2 * radius), dtype=np.bool_)
    near[2 * radius :, 2 * radius :] = covered
    _or_ahead(near, 2 * radius + 1, axis=0)
    _or_ahead(near, 2 * radius + 1, axis=1)
    left, top = x + reach[0] - radius, y + reach[1] - radius
    canvas_width, canvas_height = coverage.canvas
    x0, y0 = max(0, -left), max(0, -top)
    x1 = min(near.shape[1], canvas_width - left)
    y1 = min(near.shape[0], canvas_height - top)
    return _Near(near[y0:y1, x0:x1], (left + x0, top + y0))


def _or_ahead(flags: np.ndarray[Any, np.dtype[np.bool_]], window: int, *, axis: int) -> None:
    """In place, every element becomes the OR of itself and the next ``window - 1`` along ``axis``
    (past the end: none): doubling spans, about log2(window) passes over whole rows of memory,
    between two buffers (an OR into its own overlapping input would copy it every pass)."""

    def part(array: np.ndarray[Any, Any], start: int | None, stop: int | None) -> np.ndarray[Any, Any]:
        return array[start:stop] if axis == 0 else array[:, start:stop]

    source, target = flags, np.empty_like(flags)
    span = 1
    while span < window:
        step = min(span, window - span)
        np.logical_or(part(source, None, -step), part(source, step, None), out=part(target, None, -step))
        part(target, -step, None)[...] = part(source, -step, None)
        source, target = target, source
        span += step
    if source is not flags:
        flags[...] = source


def make(spec: Spec, result: Image.Image | Region, found: Comparison) -> tuple[bytes, dict[str, Any]]:
    """The encoded rendition and its verdict (the job's ``renditions`` entry without ``key``).

    ``result``: the full-size result, or the ``Region`` that ``products.compare_region`` kept (the
    same renditions from a fraction of the memory)."""
    rendered = render(spec, result, found)
    return rendered.data, judge(spec, rendered, found)
