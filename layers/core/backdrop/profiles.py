"""Rendition profiles: the ``Renditions`` setting's specs, read and checked without any imaging
library (every function validates the setting at cold start; only the copy worker renders).

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

How a spec is drawn and judged: ``backdrop.renditions``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from backdrop.colours import Colour, parse_colour

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


def fingerprint(spec: Spec) -> str:
    """A short digest of everything that makes the rendition: two renditions with the same name
    and fingerprint were made the same way (a reused result's renditions are copied only then)."""
    canonical = json.dumps(asdict(spec), sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
