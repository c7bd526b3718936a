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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Literal

from PIL import Image, ImageChops, ImageCms, ImageFilter

from backdrop.colours import Colour, parse_colour
from backdrop.products import Comparison

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
