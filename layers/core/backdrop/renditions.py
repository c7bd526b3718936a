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
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from PIL import Image, ImageChops, ImageCms, ImageFilter

from backdrop.colours import Colour
from backdrop.products import Comparison
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
EXACT_SHARE_FAIL = 0.99  # share of background pixels exactly on the colour below which it fails


@cache
def _srgb_icc() -> bytes:
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
    icc = _srgb_icc()
    if fmt == "JPEG":
        image.save(out, "JPEG", quality=quality, subsampling=0, icc_profile=icc)
    elif fmt == "PNG":
        image.save(out, "PNG", compress_level=6, icc_profile=icc)
    elif fmt == "WEBP":
        image.save(out, "WEBP", quality=quality, method=4, icc_profile=icc)
    else:
        image.save(out, "AVIF", quality=quality, speed=8, subsampling="4:4:4", icc_profile=icc)
    return out.getvalue()


def render(spec: Spec, result: Image.Image, found: Comparison) -> Rendered:
    """Draw and encode one rendition from the full-size ``result`` and what ``found`` found in it."""
    frame = result.size
    plan = layout(spec, frame, found.bbox())
    width, height = plan.canvas
    colour = spec.background or found.colour
    coverage = Image.new("L", (width, height), 0)
    patch: Image.Image | None = None
    # The part of the frame that lands on the canvas, in source and canvas coordinates.
    left = max(0.0, -plan.origin[0] / plan.scale)
    top = max(0.0, -plan.origin[1] / plan.scale)
    right = min(float(frame[0]), (width - plan.origin[0]) / plan.scale)
    bottom = min(float(frame[1]), (height - plan.origin[1]) / plan.scale)
    x0, y0 = round(plan.origin[0] + left * plan.scale), round(plan.origin[1] + top * plan.scale)
    x1, y1 = round(plan.origin[0] + right * plan.scale), round(plan.origin[1] + bottom * plan.scale)
    size = (min(x1, width) - x0, min(y1, height) - y0)
    if size[0] > 0 and size[1] > 0:
        box = (left, top, right, bottom)
        patch = result.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        sx, sy = found.size[0] / frame[0], found.size[1] / frame[1]
        mask_box = (left * sx, top * sy, right * sx, bottom * sy)
        alpha = found.alpha_image().resize(size, Image.Resampling.BILINEAR, box=mask_box)
        coverage.paste(alpha, (x0, y0))
        del alpha
    # The canvas is allocated only now, after the resizing's temporary images are gone.
    canvas = Image.new("RGB", (width, height), tuple(colour))
    if patch is not None:
        # Exact colour: only the product's pixels come from the result. As made: the whole frame.
        canvas.paste(
            patch,
            (x0, y0),
            coverage.crop((x0, y0, x0 + size[0], y0 + size[1])) if spec.background is not None else None,
        )
        del patch
    quality = spec.quality if spec.format in LOSSY else None
    data = _encode(canvas, spec.format, spec.quality)
    while spec.max_bytes is not None and len(data) > spec.max_bytes and quality is not None:
        if quality <= MIN_QUALITY:
            break
        quality = max(MIN_QUALITY, quality - 10)
        data = _encode(canvas, spec.format, quality)
    return Rendered(data=data, coverage=coverage, layout=plan, colour=colour, quality=quality)


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
    distance: Image.Image  # L: each pixel's distance to the background colour (max over channels)


@dataclass
class _Findings:
    fails: list[str] = field(default_factory=list)
    warns: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)


def _read_back(rendered: Rendered) -> _ReadBack:
    with Image.open(io.BytesIO(rendered.data)) as image:
        width, height = image.size
        fmt = image.format or "unknown"
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        colour_space = _colour_space(image)
        # Distance to the colour, max over the channels, one channel at a time (memory: the
        # decoded file and two single-channel images).
        readback = image if image.mode == "RGB" else image.convert("RGB")
        distance: Image.Image | None = None
        for index, value in enumerate(rendered.colour):
            lut = [abs(level - value) for level in range(256)]
            channel = readback.getchannel(index).point(lut)
            distance = channel if distance is None else ImageChops.lighter(distance, channel)
        del readback
    assert distance is not None
    return _ReadBack(width, height, fmt, has_alpha, colour_space, distance)


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
    width, height, distance = file.width, file.height, file.distance
    guard = JPEG_GUARD_PX if file.format in LOSSY else 0
    near_product = _near(rendered.coverage.point(_ANY), guard)
    counts = distance.histogram(mask=ImageChops.invert(near_product))
    total = sum(counts)
    share = counts[0] / total if total else 1.0
    ring = max(2, round(0.005 * min(width, height)))
    strips = (
        (0, 0, width, ring),
        (0, height - ring, width, height),
        (0, 0, ring, height),
        (width - ring, 0, width, height),
    )
    border_pure = all(distance.crop(strip).getextrema()[1] == 0 for strip in strips)
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
    if spec.background is not None:
        far = file.distance.point([255 if level > PRODUCT_TOLERANCE else 0 for level in range(256)])
        product = ImageChops.multiply(far, near_product)
    else:
        product = rendered.coverage.point(_HALF)
    bbox = product.getbbox()
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


def _near(mask: Image.Image, radius: int) -> Image.Image:
    """Pixels within ``radius`` (square) of a 0/255 mask: a box blur is above 0 wherever a 255 is
    near, in linear time at any radius."""
    if radius <= 0:
        return mask
    return mask.filter(ImageFilter.BoxBlur(radius)).point(_ANY)


def make(spec: Spec, result: Image.Image, found: Comparison) -> tuple[bytes, dict[str, Any]]:
    """The encoded rendition and its verdict (the job's ``renditions`` entry without ``key``)."""
    rendered = render(spec, result, found)
    return rendered.data, judge(spec, rendered, found)
