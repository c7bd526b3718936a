"""Renditions: publishable images per sales channel from one result, each with a verdict.

A rendition is made from the stored result and the original (no further run) by a ``Spec``:

- canvas: ``width`` x ``height``, or an ``aspect`` ("W:H") with an optional ``long_side`` (default:
  the photo's longer side, at most ``DEFAULT_LONG_SIDE``);
- ``fit``: ``pad`` (the product's bounding box, found by ``backdrop.products``, scaled so that it
  fills ``fill`` of the canvas in its tighter direction), ``contain`` (the whole frame inside the
  canvas) or ``cover`` (the whole frame over the canvas, the overflow cropped);
- ``align``: where the product (pad) or frame (contain, cover) sits: ``center``, ``top``,
  ``bottom``, ``left``, ``right`` or a corner (``top-left`` ...);
- ``format``: JPEG, PNG, WEBP or AVIF; ``quality`` (lossy formats); ``max_bytes`` (lossy formats
  step their quality down by 10, to ``MIN_QUALITY``, to fit);
- ``background``: ``job`` keeps the result's own background (the model's shading) and fills what
  lies outside the frame with the job's colour; a colour (``#RRGGBB`` or ``R,G,B``) is shown
  exactly on every pixel outside the product.

Every rendition is sRGB (an sRGB ICC profile is embedded), has no alpha channel, and JPEGs are not
chroma-subsampled (4:4:4), so that flat colours survive the encoding.

Built-in profiles (``PROFILES``; sources in the README and the research notes):

| profile | canvas | fit | background | format | limits |
|---|---|---|---|---|---|
| ``amazon-main`` | 2000x2000 | pad 85 %, centred | exactly 255,255,255 | JPEG q90 | 10 MB |
| ``google-shopping`` | 1500x1500 | pad 85 %, centred | exactly 255,255,255 | JPEG q90 | 16 MB |
| ``shopify-square`` | 2048x2048 | pad 85 %, centred | job's colour, as made | JPEG q90 | 20 MB |
| ``zalando`` | 1801x2600 | pad 85 %, centred | exactly 255,255,255 | JPEG q90 | 20 MB |
| ``thumbnail`` | 400x400 | contain, centred | job's colour, as made | WEBP q80 | 100 kB |

The verdict (``verdict``) is measured on the encoded file read back; see ``judge``.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Literal

from PIL import Image, ImageChops, ImageCms, ImageFilter

from backdrop.colours import Colour, parse_colour
from backdrop.products import Comparison, Region

Fit = Literal["pad", "contain", "cover"]
FITS: tuple[Fit, ...] = ("pad", "contain", "cover")
FORMATS = ("JPEG", "PNG", "WEBP", "AVIF")
LOSSY = frozenset({"JPEG", "WEBP", "AVIF"})
ALIGNMENTS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "top": (0.5, 0.0),
    "bottom": (0.5, 1.0),
    "left": (0.0, 0.5),
    "right": (1.0, 0.5),
    "top-left": (0.0, 0.0),
    "top-right": (1.0, 0.0),
    "bottom-left": (0.0, 1.0),
    "bottom-right": (1.0, 1.0),
}
MAX_LONG_SIDE = 10_000  # Amazon's maximum; also a bound on the memory a custom spec can ask for
DEFAULT_LONG_SIDE = 4096  # an aspect without long_side: the photo's longer side, at most this
MIN_QUALITY = 50
JPEG_GUARD_PX = 16  # two 8x8 blocks: lossy ringing next to the product is not counted as background
FILL_TOLERANCE = 0.03  # measured fill may differ from the spec's by this much (pad)
PRODUCT_TOLERANCE = 32  # read back, a pixel this far from the colour is product (beyond ringing)
UPSCALE_WARN = 1.05  # the product enlarged more than this: softer than the channel expects
READ_BACK_ROWS = 512  # rows of the read-back file compared with the colour at a time
EXACT_SHARE_FAIL = 0.99  # share of background pixels exactly on the colour below which it fails


@dataclass(frozen=True)
class Spec:
    """How one rendition is made and what it must satisfy (see the module docstring)."""

    width: int | None = None
    height: int | None = None
    aspect: tuple[int, int] | None = None
    long_side: int | None = None
    fit: Fit = "pad"
    fill: float = 0.85
    align: str = "center"
    format: str = "JPEG"
    quality: int = 90
    max_bytes: int | None = None
    background: Colour | None = None  # None: the job's colour, result as made
    profile: str | None = None  # the built-in profile's name, when it is one

    def canvas(self, frame: tuple[int, int]) -> tuple[int, int]:
        if self.width is not None and self.height is not None:
            return self.width, self.height
        aw, ah = self.aspect or (1, 1)
        side = self.long_side or min(max(frame), DEFAULT_LONG_SIDE)
        if aw >= ah:
            return side, max(1, round(side * ah / aw))
        return max(1, round(side * aw / ah)), side


PROFILES: dict[str, Spec] = {
    "amazon-main": Spec(
        width=2000, height=2000, fill=0.85, format="JPEG", quality=90,
        max_bytes=10_000_000, background=Colour(255, 255, 255), profile="amazon-main",
    ),
    "google-shopping": Spec(
        width=1500, height=1500, fill=0.85, format="JPEG", quality=90,
        max_bytes=16_000_000, background=Colour(255, 255, 255), profile="google-shopping",
    ),
    "shopify-square": Spec(
        width=2048, height=2048, fill=0.85, format="JPEG", quality=90,
        max_bytes=20_000_000, background=None, profile="shopify-square",
    ),
    "zalando": Spec(
        width=1801, height=2600, fill=0.85, format="JPEG", quality=90,
        max_bytes=20_000_000, background=Colour(255, 255, 255), profile="zalando",
    ),
    "thumbnail": Spec(
        width=400, height=400, fit="contain", format="WEBP", quality=80,
        max_bytes=100_000, background=None, profile="thumbnail",
    ),
}  # fmt: skip

SPEC_KEYS = frozenset(
    {"width", "height", "aspect", "long_side", "fit", "fill", "align", "format", "quality"}
    | {"max_bytes", "background", "profile"}
)
_ASPECT = re.compile(r"([1-9][0-9]{0,3})[:x]([1-9][0-9]{0,3})")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class RenditionsError(ValueError):
    """The ``Renditions`` value is not valid; the message names the bad entry."""


def _int(entry: str, key: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RenditionsError(
            f"rendition {entry!r}: {key} must be a whole number {low}..{high}, not {value!r}"
        )
    return value


def parse_spec(entry: str, value: object) -> Spec:
    """A profile's name, or a custom spec (an object; ``profile`` in it starts from that profile)."""
    if isinstance(value, str):
        if value not in PROFILES:
            raise RenditionsError(
                f"rendition {entry!r}: unknown profile {value!r} (known: {', '.join(sorted(PROFILES))})"
            )
        return PROFILES[value]
    if not isinstance(value, Mapping):
        raise RenditionsError(f"rendition {entry!r}: must be a profile name or an object, not {value!r}")
    unknown = sorted(set(value) - SPEC_KEYS)
    if unknown:
        raise RenditionsError(f"rendition {entry!r}: unknown setting(s) {', '.join(map(repr, unknown))}")
    base = parse_spec(entry, value["profile"]) if "profile" in value else Spec()
    changes: dict[str, Any] = {"profile": None, **_canvas_changes(entry, value, base)}
    # In this order, so that a spec with several mistakes is told about the same one each time.
    for key, parse in _SETTINGS:
        if key in value:
            changes[key] = parse(entry, value[key])
    spec = replace(base, **changes)
    # The largest canvas the spec can make (an aspect alone follows the photo, capped).
    width, height = spec.canvas((MAX_LONG_SIDE, MAX_LONG_SIDE))
    if width * height > 64_000_000:
        raise RenditionsError(f"rendition {entry!r}: canvas {width}x{height} is over 64 megapixels")
    return spec


def _canvas_changes(entry: str, value: Mapping[str, Any], base: Spec) -> dict[str, Any]:
    """The canvas settings: width and height together, or an aspect with an optional long side."""
    changes: dict[str, Any] = {}
    if "width" in value or "height" in value:
        if "width" not in value or "height" not in value or "aspect" in value:
            raise RenditionsError(f"rendition {entry!r}: give width and height together, or aspect")
        changes["width"] = _int(entry, "width", value["width"], 1, MAX_LONG_SIDE)
        changes["height"] = _int(entry, "height", value["height"], 1, MAX_LONG_SIDE)
        changes["aspect"] = None
    elif "aspect" in value:
        changes.update(aspect=_aspect(entry, value["aspect"]), width=None, height=None)
    elif base.width is None and base.aspect is None:
        raise RenditionsError(f"rendition {entry!r}: needs width and height, or aspect")
    if "long_side" in value:
        if changes.get("aspect", base.aspect) is None:
            raise RenditionsError(f"rendition {entry!r}: long_side goes with aspect")
        changes["long_side"] = _int(entry, "long_side", value["long_side"], 1, MAX_LONG_SIDE)
    return changes


def _aspect(entry: str, aspect: object) -> tuple[int, int]:
    found = _ASPECT.fullmatch(aspect) if isinstance(aspect, str) else None
    if found is None:
        raise RenditionsError(f'rendition {entry!r}: aspect must be like "4:5", not {aspect!r}')
    return int(found[1]), int(found[2])


def _fit(entry: str, fit: object) -> Fit:
    for known in FITS:
        if fit == known:
            return known
    raise RenditionsError(f"rendition {entry!r}: fit must be one of {', '.join(FITS)}")


def _fill(entry: str, fill: object) -> float:
    if isinstance(fill, bool) or not isinstance(fill, int | float) or not 0.05 <= fill <= 1.0:
        raise RenditionsError(f"rendition {entry!r}: fill must be a number 0.05..1, not {fill!r}")
    return float(fill)


def _align(entry: str, align: object) -> str:
    if not isinstance(align, str) or align not in ALIGNMENTS:
        raise RenditionsError(f"rendition {entry!r}: align must be one of {', '.join(ALIGNMENTS)}")
    return align


def _format(entry: str, value: object) -> str:
    fmt = value.upper() if isinstance(value, str) else None
    fmt = "JPEG" if fmt == "JPG" else fmt
    if fmt not in FORMATS:
        raise RenditionsError(f"rendition {entry!r}: format must be one of {', '.join(FORMATS)}")
    return fmt


def _quality(entry: str, quality: object) -> int:
    return _int(entry, "quality", quality, 1, 100)


def _max_bytes(entry: str, max_bytes: object) -> int:
    return _int(entry, "max_bytes", max_bytes, 1_000, 1_000_000_000)


def _background(entry: str, background: object) -> Colour | None:
    if background == "job":
        return None
    try:
        return parse_colour(background if isinstance(background, str) else "")
    except ValueError:
        raise RenditionsError(
            f'rendition {entry!r}: background must be "job" or a colour, not {background!r}'
        ) from None


# The settings besides the canvas, each read and checked by its own function.
_SETTINGS: tuple[tuple[str, Callable[[str, object], object]], ...] = (
    ("fit", _fit),
    ("fill", _fill),
    ("align", _align),
    ("format", _format),
    ("quality", _quality),
    ("max_bytes", _max_bytes),
    ("background", _background),
)


def parse_renditions(text: str) -> dict[str, Spec]:
    """The ``Renditions`` parameter: a JSON object, rendition name -> profile name or spec."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RenditionsError(f"Renditions is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RenditionsError("Renditions must be a JSON object: rendition name -> profile or spec")
    specs: dict[str, Spec] = {}
    for name, spec in value.items():
        if not _NAME.fullmatch(name):
            raise RenditionsError(
                f"rendition {name!r}: names are 1-64 of a-z, 0-9, '-' and '_', "
                "starting with a letter or digit"
            )
        specs[name] = parse_spec(name, spec)
    return specs


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
