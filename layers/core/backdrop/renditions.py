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
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from PIL import Image, ImageChops, ImageCms, ImageFilter

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
READ_BACK_ROWS = 512  # rows of the read-back file compared with the colour at a time
EXACT_SHARE_FAIL = 0.99  # share of background pixels exactly on the colour below which it fails


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
class Rendered:
    data: bytes
    coverage: Image.Image  # L, canvas size: where the product is (its opacity)
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


Rect = tuple[int, int, int, int]  # canvas px: left, top, right, bottom
Box = tuple[float, float, float, float]  # frame px


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


def _resample(
    region: Region, found: Comparison, plan: Layout, rect: Rect, box: Box
) -> tuple[Image.Image, bool]:
    """The frame's ``box`` resampled to the canvas ``rect``: from the full-size region when it holds
    the box and the canvas is finer than the working size, else from the working-size result.
    Returns the patch and whether it came from full size."""
    size = (rect[2] - rect[0], rect[3] - rect[1])
    working_scale = found.size[0] / found.full_size[0]
    if region.covers_frame or (plan.scale >= working_scale and region.holds(box)):
        x, y = region.offset
        width, height = region.image.size
        inside = (
            max(0.0, box[0] - x),
            max(0.0, box[1] - y),
            min(float(width), box[2] - x),
            min(float(height), box[3] - y),
        )
        return region.image.resize(size, Image.Resampling.LANCZOS, box=inside, reducing_gap=3.0), True
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


def _coverage(plan: Layout, product: tuple[Rect, Box] | None, found: Comparison) -> Image.Image:
    """Where the product is on the canvas (its opacity), from the mask interpolated."""
    coverage = Image.new("L", plan.canvas, 0)
    if product is not None:
        rect, box = product
        kx, ky = found.size[0] / found.full_size[0], found.size[1] / found.full_size[1]
        mask_box = (box[0] * kx, box[1] * ky, box[2] * kx, box[3] * ky)
        size = (rect[2] - rect[0], rect[3] - rect[1])
        coverage.paste(found.alpha_image().resize(size, Image.Resampling.BILINEAR, box=mask_box), rect[:2])
    return coverage


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
        # The patch first, the canvas once the resampling's temporary image is gone.
        patch = _resample(region, found, plan, *product)[0] if product is not None else None
        canvas = Image.new("RGB", plan.canvas, tuple(colour))
        if patch is not None and product is not None:
            canvas.paste(patch, product[0][:2], coverage.crop(product[0]))
            del patch
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
    coverage: Image.Image,
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
        patch, _ = _resample(region, found, plan, *product)
        # Blended by the product's opacity: the seam lies along its outline, not in the background.
        canvas.paste(patch, product[0][:2], coverage.crop(product[0]))
    return canvas


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
    file = _read_back(rendered)
    findings = _Findings()
    _judge_file(spec, rendered, file, found, findings)
    near_product = _judge_background(spec, rendered, file, findings)
    _judge_product(spec, rendered, file, found, near_product, findings)
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
class _ReadBack:
    """What the encoded file shows when it is read back."""

    width: int
    height: int
    format: str
    alpha: bool
    colour_space: str
    off: Image.Image  # L: how far each pixel is from the background colour (see ``_levels``)


@dataclass
class _Findings:
    fails: list[str] = field(default_factory=list)
    warns: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)


# Per channel: 0 exactly on the colour, NEAR_FLAG within PRODUCT_TOLERANCE, 255 beyond. Converted to
# L (weights 0.299, 0.587, 0.114, rounded), any off channel gives at least 1 and at most NEAR_FLAG
# while all are within the tolerance, and any channel beyond it gives at least 29 (blue alone).
NEAR_FLAG = 5


def _levels(pixels: Image.Image, colour: Colour) -> Image.Image:
    """L: 0 where a pixel is exactly ``colour``, 1..``NEAR_FLAG`` where it is within
    ``PRODUCT_TOLERANCE``, above ``NEAR_FLAG`` beyond it. One table and one conversion, a strip
    at a time: beside the decoded file, only a strip's temporaries."""
    table = [
        0 if level == value else NEAR_FLAG if abs(level - value) <= PRODUCT_TOLERANCE else 255
        for value in colour
        for level in range(256)
    ]
    width, height = pixels.size
    levels = Image.new("L", (width, height), 0)
    for row in range(0, height, READ_BACK_ROWS):
        strip = pixels.crop((0, row, width, min(height, row + READ_BACK_ROWS)))
        levels.paste(strip.point(table).convert("L"), (0, row))
    return levels


def _read_back(rendered: Rendered) -> _ReadBack:
    with Image.open(io.BytesIO(rendered.data)) as image:
        width, height = image.size
        fmt = image.format or "unknown"
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        colour_space = _colour_space(image)
        image.load()
        pixels = image if image.mode == "RGB" else image.convert("RGB")
        off = _levels(pixels, rendered.colour)
    return _ReadBack(width, height, fmt, has_alpha, colour_space, off)


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


def _judge_background(spec: Spec, rendered: Rendered, file: _ReadBack, findings: _Findings) -> Image.Image:
    """How exactly the background shows the colour; returns the mask of pixels near the product."""
    width, height, off = file.width, file.height, file.off
    guard = JPEG_GUARD_PX if file.format in LOSSY else 0
    near_product = _near(rendered.coverage, guard)
    # The background's histogram: the whole canvas's less the part near the product.
    counts = off.histogram()
    reach = near_product.getbbox()
    if reach is not None:
        near = off.crop(reach).histogram(mask=near_product.crop(reach))
        counts = [all_ - near_ for all_, near_ in zip(counts, near, strict=True)]
    total = sum(counts)
    share = counts[0] / total if total else 1.0
    ring = max(2, round(0.005 * min(width, height)))
    strips = (
        (0, 0, width, ring),
        (0, height - ring, width, height),
        (0, 0, ring, height),
        (width - ring, 0, width, height),
    )
    border_pure = all(off.crop(strip).getextrema()[1] == 0 for strip in strips)
    findings.checks.update(background_exact_share=round(share, 6), border_pure=border_pure)
    if spec.background is not None:
        if share < EXACT_SHARE_FAIL:
            findings.fails.append(f"only {share:.2%} of the background is exactly {rendered.colour}")
        elif share < 1.0:
            findings.warns.append(f"{1 - share:.3%} of the background is not exactly {rendered.colour}")
        if not border_pure:
            findings.fails.append(f"the border ring ({ring} px) is not exactly {rendered.colour}")
    return near_product


def _judge_product(
    spec: Spec,
    rendered: Rendered,
    file: _ReadBack,
    found: Comparison,
    near_product: Image.Image,
    findings: _Findings,
) -> None:
    """Where the product is and how much of the canvas it fills."""
    # The product as the file shows it: beyond ringing from the colour (exact), else its coverage.
    bbox = _product_bbox(spec, rendered, file, near_product)
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


_ANY = [0] + [255] * 255
_HALF = [0] * 128 + [255] * 128
_FAR = [255 if level > NEAR_FLAG else 0 for level in range(256)]


def _product_bbox(spec: Spec, rendered: Rendered, file: _ReadBack, near_product: Image.Image) -> Rect | None:
    """The product's box as the file shows it: beyond ringing from the colour and near the
    product (exact background), else where its coverage is at least half."""
    if spec.background is None:
        return rendered.coverage.point(_HALF).getbbox()
    reach = near_product.getbbox()
    if reach is None:
        return None
    far = file.off.crop(reach).point(_FAR)
    inside = ImageChops.multiply(far, near_product.crop(reach)).getbbox()
    if inside is None:
        return None
    return (inside[0] + reach[0], inside[1] + reach[1], inside[2] + reach[0], inside[3] + reach[1])


def _near(coverage: Image.Image, radius: int) -> Image.Image:
    """Pixels within ``radius`` (square) of the product's coverage, as a 0/255 mask: a box blur is
    above 0 wherever a covered pixel is near, in linear time at any radius. Blurred only around
    the coverage's box: elsewhere nothing is near."""
    reach = coverage.getbbox()
    if radius <= 0 or reach is None:
        return coverage.point(_ANY)
    width, height = coverage.size
    around = (
        max(0, reach[0] - radius - 1),
        max(0, reach[1] - radius - 1),
        min(width, reach[2] + radius + 1),
        min(height, reach[3] + radius + 1),
    )
    near = Image.new("L", coverage.size, 0)
    near.paste(coverage.crop(around).point(_ANY).filter(ImageFilter.BoxBlur(radius)).point(_ANY), around[:2])
    return near


def make(spec: Spec, result: Image.Image | Region, found: Comparison) -> tuple[bytes, dict[str, Any]]:
    """The encoded rendition and its verdict (the job's ``renditions`` entry without ``key``).

    ``result``: the full-size result, or the ``Region`` that ``products.compare_region`` kept (the
    same renditions from a fraction of the memory)."""
    rendered = render(spec, result, found)
    return rendered.data, judge(spec, rendered, found)
