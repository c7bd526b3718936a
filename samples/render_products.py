"""Render the two synthetic product shots in samples/: a bottle and a sneaker on a light studio sweep.

Deterministic (no randomness, no fonts, no files read): running it again writes the same pixels.
The output is CC0, like every file the Backdrop project renders itself (see LICENSES.md).

    .venv/bin/python samples/render_products.py
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
SS = 3  # supersampling factor: shapes are drawn this much larger, then reduced (anti-aliasing)

Point = tuple[float, float]
RGB = tuple[int, int, int]
Array = NDArray[np.float64]


# ---------------------------------------------------------------------------- helpers
def catmull_rom(points: Sequence[Point], steps: int = 20) -> list[Point]:
    """A closed smooth curve through ``points`` (centripetal-free, uniform Catmull-Rom)."""
    out: list[Point] = []
    n = len(points)
    for i in range(n):
        p0, p1, p2, p3 = (points[(i + k) % n] for k in (-1, 0, 1, 2))
        for s in range(steps):
            t = s / steps
            t2, t3 = t * t, t * t * t
            x = 0.5 * (
                2 * p1[0]
                + (-p0[0] + p2[0]) * t
                + (2 * p0[0] - 5 * p1[0] + 4 * p2[0] - p3[0]) * t2
                + (-p0[0] + 3 * p1[0] - 3 * p2[0] + p3[0]) * t3
            )
            y = 0.5 * (
                2 * p1[1]
                + (-p0[1] + p2[1]) * t
                + (2 * p0[1] - 5 * p1[1] + 4 * p2[1] - p3[1]) * t2
                + (-p0[1] + 3 * p1[1] - 3 * p2[1] + p3[1]) * t3
            )
            out.append((x, y))
    return out


def scaled(points: Sequence[Point]) -> list[Point]:
    return [(x * SS, y * SS) for x, y in points]


def polygon_mask(size: tuple[int, int], points: Sequence[Point]) -> Image.Image:
    """An L mask (supersampled canvas) filled inside the polygon given in 1x coordinates."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(scaled(points), fill=255)
    return mask


def studio_background(width: int, height: int, top: RGB, bottom: RGB) -> Array:
    """A seamless paper sweep: a vertical gradient with a soft light pool behind the product."""
    ys = np.linspace(0.0, 1.0, height)[:, None]
    xs = np.linspace(-1.0, 1.0, width)[None, :]
    t = np.clip((ys - 0.15) / 0.75, 0.0, 1.0)
    t = t * t * (3 - 2 * t)  # smoothstep
    base = np.empty((height, width, 3))
    for c in range(3):
        base[..., c] = top[c] + (bottom[c] - top[c]) * t
    pool = np.exp(-((xs / 0.9) ** 2) - ((ys - 0.55) / 0.45) ** 2)
    return np.clip(base + 10.0 * pool[..., None], 0, 255)


def soft_shadow(
    size: tuple[int, int], box: tuple[float, float, float, float], blur: float, strength: float
) -> Array:
    """A blurred ellipse, 0 (no shadow) .. strength; box in 1x coordinates."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse([v * SS for v in box], fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(blur * SS))
    return np.asarray(mask, dtype=np.float64)[..., None] / 255.0 * strength


def paint(canvas: Array, mask: Image.Image, colour: Array) -> None:
    """Composite ``colour`` (HxWx3, or broadcastable) onto ``canvas`` through ``mask``."""
    alpha = np.asarray(mask, dtype=np.float64)[..., None] / 255.0
    canvas[...] = canvas * (1 - alpha) + colour * alpha


def shaded(base: RGB, shade: Array, highlight: Array | None = None) -> Array:
    """``base`` colour times a shading field (HxW), plus an optional additive white highlight."""
    colour = np.asarray(base, dtype=np.float64)[None, None, :] * shade[..., None]
    if highlight is not None:
        colour = colour + (255.0 - colour) * highlight[..., None]
    return np.clip(colour, 0, 255)


def finish(canvas: Array, width: int, height: int) -> Image.Image:
    image = Image.fromarray(np.round(canvas).astype(np.uint8), "RGB")
    return image.resize((width, height), Image.Resampling.LANCZOS)


def cylinder_fields(width: int, height: int, centre_x: float, half_width: float) -> tuple[Array, Array]:
    """Shading and highlight of a vertical cylinder (supersampled canvas, 1x geometry)."""
    xs = (np.arange(width * SS) / SS - centre_x) / half_width
    u = np.clip(xs, -1.0, 1.0)
    lambert = 0.42 + 0.58 * np.sqrt(np.clip(1 - u * u, 0, 1)) * (0.85 + 0.15 * -u)
    highlight = 0.85 * np.exp(-(((u + 0.48) / 0.09) ** 2)) + 0.25 * np.exp(-(((u - 0.78) / 0.06) ** 2))
    ones = np.ones((height * SS, 1))
    return ones * lambert[None, :], ones * highlight[None, :]


# ---------------------------------------------------------------------------- the bottle
def render_bottle() -> Image.Image:
    width, height = 480, 640
    size = (width * SS, height * SS)
    cx = width / 2
    canvas = studio_background(width * SS, height * SS, (226, 229, 233), (246, 246, 245))

    floor_y = 566.0
    canvas *= 1 - soft_shadow(size, (cx - 130, floor_y - 20, cx + 150, floor_y + 22), 14, 0.30)
    canvas *= 1 - soft_shadow(size, (cx - 92, floor_y - 7, cx + 92, floor_y + 7), 3, 0.45)

    def half_width(y: float) -> float:
        if y < 190:  # neck
            return 27.0
        if y < 262:  # shoulder: cosine ease from the neck to the body
            t = (y - 190) / 72
            return 27.0 + (86.0 - 27.0) * (1 - math.cos(math.pi * t)) / 2
        radius = 16.0
        if y > floor_y - radius:  # rounded base
            dy = y - (floor_y - radius)
            return 86.0 - radius + math.sqrt(max(radius * radius - dy * dy, 0.0))
        return 86.0

    ys = [128 + i * 0.5 for i in range(int((floor_y - 128) * 2) + 1)]
    outline = [(cx + half_width(y), y) for y in ys] + [(cx - half_width(y), y) for y in reversed(ys)]
    body = polygon_mask(size, outline)
    shade, highlight = cylinder_fields(width, height, cx, 86.0)
    # Deeper colour towards the base, as thick glass looks.
    depth = np.linspace(1.04, 0.86, height * SS)[:, None]
    paint(canvas, body, shaded((24, 112, 122), shade * depth, highlight))

    # Label wrapped around the body: cream paper with a band and a round mark.
    label_box = (cx - 86, 330.0, cx + 86, 478.0)
    label = Image.new("L", size, 0)
    ImageDraw.Draw(label).rectangle([v * SS for v in label_box], fill=255)
    paint(canvas, label, shaded((241, 233, 214), 0.35 + 0.65 * shade, highlight * 0.45))
    band = Image.new("L", size, 0)
    ImageDraw.Draw(band).rectangle([(cx - 86) * SS, 350 * SS, (cx + 86) * SS, 362 * SS], fill=255)
    ImageDraw.Draw(band).rectangle([(cx - 86) * SS, 448 * SS, (cx + 86) * SS, 452 * SS], fill=255)
    paint(canvas, band, shaded((196, 84, 46), 0.35 + 0.65 * shade))
    mark = Image.new("L", size, 0)
    ImageDraw.Draw(mark).ellipse([(cx - 30) * SS, 376 * SS, (cx + 26) * SS, 432 * SS], fill=255)
    ImageDraw.Draw(mark).ellipse([(cx - 20) * SS, 386 * SS, (cx + 16) * SS, 422 * SS], fill=0)
    paint(canvas, mark, shaded((24, 112, 122), 0.35 + 0.65 * shade))

    # Screw cap with vertical ridges.
    cap_box = (cx - 33, 84.0, cx + 33, 136.0)
    cap = Image.new("L", size, 0)
    ImageDraw.Draw(cap).rounded_rectangle([v * SS for v in cap_box], radius=6 * SS, fill=255)
    cap_shade, cap_high = cylinder_fields(width, height, cx, 33.0)
    ridges = 1 - 0.12 * (np.sin(np.arange(width * SS) / SS * 1.9) > 0.6)[None, :]
    paint(canvas, cap, shaded((52, 54, 60), cap_shade * ridges, cap_high * 0.6))
    return finish(canvas, width, height)


def band_outline(x0: float, x1: float, y0: float, rise: float, half: float) -> list[Point]:
    """Outline of a band of half-width ``half`` around a curve rising ``rise`` from (x0, y0) to x1."""

    def centre(t: float) -> Point:
        return (x0 + (x1 - x0) * t, y0 - rise * math.sin(t * math.pi / 2))

    ts = [i / 80 for i in range(81)]
    left: list[Point] = []
    right: list[Point] = []
    for t in ts:
        (ax, ay), (bx, by) = centre(max(t - 0.01, 0.0)), centre(min(t + 0.01, 1.0))
        dx, dy = bx - ax, by - ay
        norm = math.hypot(dx, dy)
        nx, ny = -dy / norm * half, dx / norm * half
        x, y = centre(t)
        # Tapers towards its tip.
        k = 1.0 - 0.55 * t * t
        left.append((x + nx * k, y + ny * k))
        right.append((x - nx * k, y - ny * k))
    return left + right[::-1]


# ---------------------------------------------------------------------------- the sneaker
def render_sneaker() -> Image.Image:
    width, height = 640, 427
    size = (width * SS, height * SS)
    canvas = studio_background(width * SS, height * SS, (234, 232, 228), (248, 247, 244))

    canvas *= 1 - soft_shadow(size, (78, 318, 600, 356), 12, 0.30)
    canvas *= 1 - soft_shadow(size, (96, 330, 580, 346), 3, 0.40)

    rows = np.arange(height * SS)[:, None] / SS
    cols = np.arange(width * SS)[None, :] / SS

    def vertical(top_y: float, bottom_y: float, top: float, bottom: float) -> Array:
        t = np.clip((rows - top_y) / (bottom_y - top_y), 0, 1)
        return (top + (bottom - top) * t) * np.ones_like(cols)

    # Upper: heel on the left, toe on the right.
    upper_pts: list[Point] = [
        (98, 300),
        (92, 236),
        (104, 176),
        (132, 160),
        (176, 176),
        (214, 186),
        (236, 150),
        (262, 126),
        (292, 134),
        (318, 172),
        (382, 204),
        (460, 236),
        (532, 262),
        (574, 288),
        (566, 304),
        (330, 306),
    ]
    upper = polygon_mask(size, catmull_rom(upper_pts))
    upper_shade = vertical(130, 305, 1.06, 0.80) * (1.0 + 0.05 * np.cos((cols - 330) / 160))
    upper_high = 0.22 * np.exp(-(((rows - 200) / 22) ** 2)) * np.exp(-(((cols - 300) / 150) ** 2))
    paint(canvas, upper, shaded((200, 48, 52), upper_shade, upper_high))

    # Toe cap and heel counter: a darker suede overlay.
    toe = polygon_mask(size, catmull_rom([(470, 300), (478, 252), (532, 262), (576, 290), (566, 304)]))
    paint(canvas, toe, shaded((150, 30, 36), upper_shade))
    heel = polygon_mask(size, catmull_rom([(98, 300), (92, 240), (112, 200), (160, 214), (178, 300)]))
    paint(canvas, heel, shaded((150, 30, 36), upper_shade))

    # Collar lining visible at the ankle opening.
    collar = polygon_mask(size, catmull_rom([(112, 168), (136, 158), (176, 172), (214, 184), (170, 186)]))
    paint(canvas, collar, shaded((58, 58, 64), np.ones((height * SS, width * SS))))

    # Side stripe: a swept band from the heel towards the vamp, below the throat.
    stripe = Image.new("L", size, 0)
    ImageDraw.Draw(stripe).polygon(scaled(band_outline(150, 350, 294, 62, 10)), fill=255)
    stripe = Image.fromarray(np.minimum(np.asarray(stripe), np.asarray(upper)))
    paint(canvas, stripe, shaded((245, 245, 242), vertical(150, 305, 1.0, 0.86)))

    # Eyelets on both sides of the throat, laces crossing between them.
    near = [(240 + 27 * i, 168 + 13 * i) for i in range(5)]
    far = [(x + 12, y - 15) for x, y in near]
    laces = Image.new("L", size, 0)
    d = ImageDraw.Draw(laces)
    for i in range(len(near) - 1):
        for a, b in ((near[i], far[i + 1]), (far[i], near[i + 1])):
            d.line(scaled([a, b]), fill=255, width=5 * SS)
    paint(canvas, laces, shaded((250, 250, 248), vertical(140, 240, 1.0, 0.85)))
    holes = Image.new("L", size, 0)
    for x, y in near + far:
        ImageDraw.Draw(holes).ellipse([(x - 4) * SS, (y - 4) * SS, (x + 4) * SS, (y + 4) * SS], fill=255)
    paint(canvas, holes, np.asarray((70, 70, 76), dtype=np.float64))

    # Sole: white midsole over a gum outsole.
    midsole_pts: list[Point] = [
        (88, 296),
        (330, 302),
        (566, 300),
        (590, 312),
        (584, 326),
        (540, 332),
        (300, 334),
        (100, 330),
        (86, 314),
    ]
    midsole = polygon_mask(size, catmull_rom(midsole_pts, steps=12))
    paint(canvas, midsole, shaded((244, 243, 238), vertical(296, 334, 1.02, 0.86)))
    outsole_pts: list[Point] = [
        (96, 326),
        (300, 330),
        (540, 328),
        (586, 322),
        (572, 340),
        (300, 344),
        (104, 340),
    ]
    outsole = polygon_mask(size, catmull_rom(outsole_pts, steps=12))
    paint(canvas, outsole, shaded((176, 128, 82), vertical(326, 344, 1.0, 0.78)))
    return finish(canvas, width, height)


RENDERERS: dict[str, Callable[[], Image.Image]] = {
    "bottle.jpg": render_bottle,
    "sneaker.jpg": render_sneaker,
}


def main() -> None:
    for name, render in RENDERERS.items():
        path = HERE / name
        render().save(path, format="JPEG", quality=90, optimize=True)
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
