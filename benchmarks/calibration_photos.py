"""Generated photos for the quality calibration: product shots and portraits with their true masks.

Everything is drawn with numpy and Pillow from one seed, so the same seed gives the same pixels
(no fonts, no files read). Shapes are drawn ``SS`` times larger and box-reduced, so edges are
anti-aliased and the true mask has partial opacity where a real photo would (hair strands, a
bottle's rim). Each photo is JPEG-encoded (quality 90) like a camera's, and handed out as those
bytes: the calibration processes them as a run would.

Product backgrounds (``PRODUCT_SCENES``): ``studio`` (a lit grey sweep with grain and a soft
shadow), ``gradient`` (two colours at an angle), ``wood`` (planks with warped grain), ``room`` (a
wall, a floor, furniture, a bright window), ``white`` (already on white, a faint shadow). Products:
a ball, a box, a bottle, a can, a shoe, a mug, with cylindrical light, a label band at a random
height (or none) and grain; besides
the scene, a photo can be ``edge`` (the product runs off the frame), ``tiny`` (1-2 % of the frame)
or ``glass`` (a transparent bottle: 60 % of the background shows through, with a highlight).

Portraits (``PORTRAIT_SCENES``: ``studio``, ``gradient``, ``room``, ``bokeh``, ``white``): head,
neck and shoulders running off the bottom of the frame, and hair: a cap plus 120 to 260 thin
strands (under a pixel wide) curling outwards, in the image and in the true mask alike.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SS = 3  # supersampling of shapes
SIZES = ((384, 288), (320, 320), (288, 384), (384, 256), (256, 384))
PRODUCT_SCENES = ("studio", "gradient", "wood", "room", "white")
PRODUCT_VARIANTS = ("plain", "plain", "edge", "tiny", "glass")
PORTRAIT_SCENES = ("studio", "gradient", "room", "bokeh", "white")
SHAPES = ("ball", "box", "bottle", "can", "shoe", "mug")
JPEG_QUALITY = 90

F32 = np.ndarray[Any, Any]  # float pixels (h, w, 3) or maps (h, w, 1)
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Photo:
    name: str
    group: str  # "product" or "portrait"
    scene: str
    variant: str
    data: bytes  # the JPEG a user would upload
    truth: Image.Image | None  # L, 255 = product (soft where partly covered); None: not known
    colour: tuple[int, int, int]  # the job's colour


def _grain(rng: np.random.Generator, height: int, width: int, sigma: float) -> F32:
    return rng.normal(0.0, sigma, (height, width, 1)).astype(np.float32)


def _axes(height: int, width: int) -> tuple[F32, F32]:
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, np.newaxis, np.newaxis]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
    return ys, xs


def _shadow(height: int, width: int, box: Box, strength: float) -> F32:
    """A soft floor shadow under the product's box: 1 = unshaded."""
    shadow = Image.new("L", (width, height), 0)
    left, top, right, bottom = box
    depth = max(4.0, 0.08 * (bottom - top))
    ImageDraw.Draw(shadow).ellipse((left, bottom - depth, right, bottom + depth), fill=255)
    blurred = shadow.filter(ImageFilter.GaussianBlur(max(3.0, 0.05 * (right - left))))
    return (1.0 - strength * np.asarray(blurred, dtype=np.float32) / 255.0)[..., np.newaxis]


def studio(rng: np.random.Generator, height: int, width: int, box: Box) -> F32:
    ys, xs = _axes(height, width)
    level = float(rng.uniform(165, 225))
    tint = np.array([1.0, 1.0, float(rng.uniform(0.93, 1.02))], dtype=np.float32)
    vignette = 1.0 - 0.12 * ((xs - 0.5) ** 2 + (ys - 0.5) ** 2)
    base = level * tint * (0.85 + 0.15 * ys) * vignette
    return base * _shadow(height, width, box, 0.35) + _grain(rng, height, width, float(rng.uniform(2, 6)))


def gradient(rng: np.random.Generator, height: int, width: int, box: Box) -> F32:
    ys, xs = _axes(height, width)
    first, second = rng.uniform(40, 235, 3), rng.uniform(40, 235, 3)
    angle = float(rng.uniform(0, math.pi))
    t = np.clip(0.5 + (xs - 0.5) * math.cos(angle) + (ys - 0.5) * math.sin(angle), 0.0, 1.0)
    mixed = first.astype(np.float32) * (1 - t) + second.astype(np.float32) * t
    return mixed + _grain(rng, height, width, 2.0)


def wood(rng: np.random.Generator, height: int, width: int, box: Box) -> F32:
    ys, xs = _axes(height, width)
    warp = (
        np.asarray(
            Image.fromarray((rng.random((height // 16 + 2, width // 16 + 2)) * 255).astype(np.uint8)).resize(
                (width, height), Image.Resampling.BICUBIC
            ),
            dtype=np.float32,
        )[..., np.newaxis]
        / 255.0
    )
    rings = np.sin((ys * float(rng.uniform(30, 70)) + 2.5 * warp + xs * 3.0) * math.pi)
    brown = np.array([float(rng.uniform(120, 180)), float(rng.uniform(75, 115)), float(rng.uniform(40, 70))])
    planks = (np.floor(xs * float(rng.integers(3, 7))) % 2) * 0.08
    pixels = brown.astype(np.float32) * (0.85 + 0.12 * rings - planks)
    edges = (np.abs((xs * width) % (width / 4.0)) < 1.5).astype(np.float32) * 0.4
    return pixels * (1.0 - edges) * _shadow(height, width, box, 0.3) + _grain(rng, height, width, 4.0)


def room(rng: np.random.Generator, height: int, width: int, box: Box) -> F32:
    wall = rng.uniform(120, 230, 3)
    canvas = Image.new("RGB", (width, height), tuple(int(v) for v in wall))
    draw = ImageDraw.Draw(canvas)
    floor = round(height * float(rng.uniform(0.6, 0.75)))
    draw.rectangle((0, floor, width, height), fill=tuple(int(v) for v in rng.uniform(50, 150, 3)))
    for _ in range(int(rng.integers(4, 9))):
        x, y = float(rng.uniform(-0.1, 1.0)) * width, float(rng.uniform(0.05, 0.8)) * height
        w, h = float(rng.uniform(0.1, 0.35)) * width, float(rng.uniform(0.1, 0.4)) * height
        colour = tuple(int(v) for v in rng.uniform(20, 240, 3))
        draw.rectangle((x, y, x + w, y + h), fill=colour, outline=(30, 30, 30), width=2)
    window = float(rng.uniform(0.0, 0.7)) * width
    draw.rectangle((window, 0.08 * height, window + 0.25 * width, 0.45 * height), fill=(250, 250, 245))
    draw.line(
        (window + 0.125 * width, 0.08 * height, window + 0.125 * width, 0.45 * height),
        fill=(90, 90, 90),
        width=3,
    )
    blurred = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))
    return np.asarray(blurred, dtype=np.float32) + _grain(rng, height, width, 3.0)


def white(rng: np.random.Generator, height: int, width: int, box: Box) -> F32:
    pixels = np.full((height, width, 3), 255.0, dtype=np.float32)
    return pixels * _shadow(height, width, box, float(rng.uniform(0.0, 0.15)))


def bokeh(rng: np.random.Generator, height: int, width: int, box: Box) -> F32:
    canvas = Image.new("RGB", (width, height), tuple(int(v) for v in rng.uniform(10, 90, 3)))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(15, 35))):
        x, y, r = float(rng.uniform(0, width)), float(rng.uniform(0, height)), float(rng.uniform(8, 40))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.uniform(60, 255, 3)))
    blurred = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(4, 9))))
    return np.asarray(blurred, dtype=np.float32) + _grain(rng, height, width, 2.5)


SCENES: dict[str, Callable[[np.random.Generator, int, int, Box], F32]] = {
    "studio": studio,
    "gradient": gradient,
    "wood": wood,
    "room": room,
    "white": white,
    "bokeh": bokeh,
}


def _reduce(mask: Image.Image, size: tuple[int, int]) -> F32:
    return np.asarray(mask.resize(size, Image.Resampling.BOX), dtype=np.float32)[..., np.newaxis] / 255.0


def _shape(draw: ImageDraw.ImageDraw, shape: str, box: Box) -> None:
    """The product's silhouette in ``box`` (supersampled coordinates), filled 255."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    if shape == "ball":
        draw.ellipse(box, fill=255)
    elif shape == "box":
        draw.rounded_rectangle(box, radius=0.08 * min(w, h), fill=255)
    elif shape == "bottle":
        draw.rounded_rectangle((left, top + 0.35 * h, right, bottom), radius=0.15 * w, fill=255)
        draw.polygon(
            [
                (left, top + 0.4 * h),
                (left + 0.35 * w, top + 0.18 * h),
                (left + 0.65 * w, top + 0.18 * h),
                (right, top + 0.4 * h),
            ],
            fill=255,
        )
        draw.rectangle((left + 0.35 * w, top, left + 0.65 * w, top + 0.2 * h), fill=255)
    elif shape == "can":
        draw.rectangle((left, top + 0.06 * h, right, bottom - 0.06 * h), fill=255)
        draw.ellipse((left, top, right, top + 0.12 * h), fill=255)
        draw.ellipse((left, bottom - 0.12 * h, right, bottom), fill=255)
    elif shape == "shoe":
        draw.polygon(
            [
                (left, bottom), (left, top + 0.35 * h), (left + 0.15 * w, top),
                (left + 0.4 * w, top + 0.05 * h), (left + 0.5 * w, top + 0.45 * h),
                (right - 0.1 * w, top + 0.6 * h), (right, bottom - 0.15 * h), (right, bottom),
            ],
            fill=255,
        )  # fmt: skip
    else:  # mug: a cylinder and a handle
        draw.rounded_rectangle((left, top, left + 0.75 * w, bottom), radius=0.06 * w, fill=255)
        draw.ellipse((left + 0.6 * w, top + 0.2 * h, right, bottom - 0.25 * h), fill=255)
        draw.ellipse((left + 0.72 * w, top + 0.35 * h, right - 0.1 * w, bottom - 0.4 * h), fill=0)


def _product_box(rng: np.random.Generator, width: int, height: int, variant: str, shape: str) -> Box:
    aspect = {"ball": 1.0, "box": 0.8, "bottle": 0.4, "can": 0.55, "shoe": 1.6, "mug": 1.1}[shape]
    share = float(rng.uniform(0.012, 0.025)) if variant == "tiny" else float(rng.uniform(0.12, 0.35))
    area = share * width * height / 0.8  # the silhouettes fill about 80 % of their box
    w = min(0.9 * width, math.sqrt(area * aspect))
    h = min(0.9 * height, w / aspect)
    cx, cy = float(rng.uniform(0.35, 0.65)) * width, float(rng.uniform(0.4, 0.6)) * height
    if variant == "edge":  # runs off one side of the frame
        side = int(rng.integers(4))
        cx = [w * 0.25, width - w * 0.25, cx, cx][side]
        cy = [cy, cy, h * 0.25, height - h * 0.25][side]
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _product_look(rng: np.random.Generator, height: int, width: int, box: Box) -> F32:
    """Base colour with cylindrical light across the box, a label band with stripes, and grain."""
    _, xs = _axes(height, width)
    left, top, right, bottom = box
    across = np.clip((xs * width - left) / max(right - left, 1.0), 0.0, 1.0)
    light = 0.65 + 0.45 * np.sin(across * math.pi)
    base = rng.uniform(20, 230, 3).astype(np.float32)
    pixels = base * light
    ys, _ = _axes(height, width)
    row = ys * height
    # A label at a random height (or none), so no cut line meets it at the same place every time.
    start, depth = float(rng.uniform(0.1, 0.75)), float(rng.uniform(0.0, 0.3))
    band = (row > top + start * (bottom - top)) & (row < top + (start + depth) * (bottom - top))
    label = rng.uniform(20, 240, 3).astype(np.float32) * (0.9 + 0.1 * np.sign(np.sin(xs * width / 3.0)))
    pixels = np.where(band, label * light, pixels)
    return pixels + _grain(rng, height, width, 3.0)


def _encode(pixels: F32) -> tuple[bytes, Image.Image]:
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), image


def product(index: int, seed: int) -> Photo:
    rng = np.random.default_rng([seed, 1, index])
    width, height = SIZES[index % len(SIZES)]
    scene = PRODUCT_SCENES[index % len(PRODUCT_SCENES)]
    variant = PRODUCT_VARIANTS[(index // len(PRODUCT_SCENES)) % len(PRODUCT_VARIANTS)]
    shape = "bottle" if variant == "glass" else SHAPES[int(rng.integers(len(SHAPES)))]
    box = _product_box(rng, width, height, variant, shape)
    big = Image.new("L", (width * SS, height * SS), 0)
    _shape(ImageDraw.Draw(big), shape, tuple(v * SS for v in box))  # type: ignore[arg-type]
    alpha = _reduce(big, (width, height))
    background = SCENES[scene](rng, height, width, box)
    look = _product_look(rng, height, width, box)
    if variant == "glass":
        # Transparent: the background shows through a tinted body, with a bright highlight stripe.
        _, xs = _axes(height, width)
        across = (xs * width - box[0]) / max(box[2] - box[0], 1.0)
        highlight = np.exp(-(((across - 0.3) / 0.06) ** 2)) * 0.6
        tint = rng.uniform(60, 200, 3).astype(np.float32)
        look = (0.6 * background + 0.4 * tint) * (1 - highlight) + 255.0 * highlight
    data, _ = _encode(background * (1 - alpha) + look * alpha)
    truth = Image.fromarray(np.rint(alpha[..., 0] * 255).astype(np.uint8), mode="L")
    name = f"product-{index:03d}-{scene}-{variant}-{shape}"
    return Photo(name, "product", scene, variant, data, truth, _pick_colour(rng))


def _pick_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    roll = float(rng.random())
    if roll < 0.75:
        return (255, 255, 255)
    return (241, 241, 241) if roll < 0.9 else (30, 144, 255)


def _hair(draw: ImageDraw.ImageDraw, rng: np.random.Generator, head: Box, strands: int) -> None:
    """Strands from the upper half of the head's outline, curling outwards (supersampled coords)."""
    left, top, right, bottom = head
    cx, cy = (left + right) / 2, (top + bottom) / 2
    rx, ry = (right - left) / 2 * 1.06, (bottom - top) / 2 * 1.06
    for _ in range(strands):
        angle = float(rng.uniform(math.pi * 0.95, math.pi * 2.05))
        x, y = cx + rx * math.cos(angle), cy + ry * math.sin(angle)
        length = float(rng.uniform(0.08, 0.3)) * rx
        bend = float(rng.uniform(-0.6, 0.6))
        points = []
        for step in range(9):
            t = step / 8
            direction = angle + bend * t
            points.append((x + math.cos(direction) * length * t, y + math.sin(direction) * length * t))
        draw.line(points, fill=255, width=int(rng.integers(1, 3)) * SS // 2 or 1)


def portrait(index: int, seed: int) -> Photo:
    rng = np.random.default_rng([seed, 2, index])
    width, height = SIZES[(index + 2) % len(SIZES)]
    scene = PORTRAIT_SCENES[index % len(PORTRAIT_SCENES)]
    s = SS
    head_w = float(rng.uniform(0.22, 0.32)) * min(width, height) * 1.4
    cx = float(rng.uniform(0.4, 0.6)) * width
    head_top = float(rng.uniform(0.12, 0.25)) * height
    head = (cx - head_w / 2, head_top, cx + head_w / 2, head_top + head_w * 1.3)
    body = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(body)
    draw.ellipse(tuple(v * s for v in head), fill=255)
    neck_top = head[3] - 0.1 * head_w
    draw.rectangle(
        ((cx - 0.18 * head_w) * s, neck_top * s, (cx + 0.18 * head_w) * s, (head[3] + 0.35 * head_w) * s),
        fill=255,
    )
    shoulders = (cx - 1.4 * head_w, head[3] + 0.25 * head_w, cx + 1.4 * head_w, height + 1.5 * head_w)
    draw.ellipse(tuple(v * s for v in shoulders), fill=255)
    hair = Image.new("L", body.size, 0)
    hair_draw = ImageDraw.Draw(hair)
    cap = (head[0] - 0.06 * head_w, head[1] - 0.08 * head_w, head[2] + 0.06 * head_w, head[1] + 0.5 * head_w)
    hair_draw.ellipse(tuple(v * s for v in cap), fill=255)
    _hair(hair_draw, rng, tuple(v * s for v in cap), int(rng.integers(120, 260)))  # type: ignore[arg-type]
    body_alpha, hair_alpha = _reduce(body, (width, height)), _reduce(hair, (width, height))
    alpha = np.maximum(body_alpha, hair_alpha)
    box = (shoulders[0], head[1], shoulders[2], float(height))
    background = SCENES[scene](rng, height, width, box)
    skin = rng.choice(
        np.array([[224, 172, 140], [198, 134, 100], [141, 85, 60], [90, 56, 40], [240, 200, 170]])
    )
    ys, xs = _axes(height, width)
    face_light = 0.8 + 0.25 * np.exp(-(((xs * width - cx) / head_w) ** 2))
    people: F32 = np.where(ys * height > head[3] + 0.2 * head_w, rng.uniform(20, 220, 3), skin).astype(
        np.float32
    )
    people = people * face_light + _grain(rng, height, width, 3.0)
    hair_colour = rng.choice(
        np.array([[30, 22, 18], [90, 60, 35], [200, 170, 110], [150, 60, 30], [120, 120, 120]])
    )
    strand_light = 0.85 + 0.3 * rng.random((height, width, 1)).astype(np.float32)
    people = people * (1 - hair_alpha) + hair_colour.astype(np.float32) * strand_light * hair_alpha
    features = Image.new("L", (width, height), 0)
    fdraw = ImageDraw.Draw(features)
    eye_y = head[1] + 0.5 * (head[3] - head[1])
    for side in (-1, 1):
        ex = cx + side * 0.2 * head_w
        fdraw.ellipse(
            (ex - 0.06 * head_w, eye_y - 0.03 * head_w, ex + 0.06 * head_w, eye_y + 0.03 * head_w), fill=255
        )
    mouth_y = head[1] + 0.78 * (head[3] - head[1])
    fdraw.line((cx - 0.15 * head_w, mouth_y, cx + 0.15 * head_w, mouth_y), fill=200, width=2)
    dark = np.asarray(features, dtype=np.float32)[..., np.newaxis] / 255.0
    people = people * (1 - 0.7 * dark)
    data, _ = _encode(background * (1 - alpha) + people * alpha)
    truth = Image.fromarray(np.rint(alpha[..., 0] * 255).astype(np.uint8), mode="L")
    return Photo(f"portrait-{index:03d}-{scene}", "portrait", scene, "hair", data, truth, _pick_colour(rng))


def generate(products: int, portraits: int, seed: int) -> Iterator[Photo]:
    for index in range(products):
        yield product(index, seed)
    for index in range(portraits):
        yield portrait(index, seed)
