"""Photos, results made in several ways, and doubtful results, for the imaging tests.

Results are made four ways, so that nothing depends on one compositing formula:
``hard_cutout`` (product pasted on the flat colour), ``soft_shaded`` (a wide soft edge and a
20 % vertical shading, unlike the local Runflow's), ``runflow`` (the local Runflow's own
compositing, with a given mask instead of its model) and ``recompressed`` (any of them through a
quality 85 JPEG).

The doubtful kinds are defined once, in ``backdrop_local.runflow.doubtful`` (the local Runflow's
output faults use them too).

``tests/unit/data/sample_masks`` holds the local Runflow's model masks
(``backdrop_local.runflow.segmentation.subject_mask``) of the bundled samples, so that the tests
rebuild the local Runflow's results without running the model; they are derived from the samples
and carry the samples' licences (samples/LICENSES.md).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from backdrop.colours import Colour
from backdrop_local.runflow import processing
from tests.support.images import encoded

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ("astronaut.jpg", "bottle.jpg", "chelsea.png", "coffee.webp", "rocket.jpg", "sneaker.jpg")
WHITE = Colour(255, 255, 255)


def sample(name: str) -> tuple[bytes, Image.Image, Image.Image]:
    """The sample's bytes, its decoded image and the model's mask for it."""
    data = (ROOT / "samples" / name).read_bytes()
    mask = Image.open(ROOT / "tests" / "unit" / "data" / "sample_masks" / f"{Path(name).stem}.png")
    return data, processing.decode_image(data), mask.convert("L")


def photo(
    size: tuple[int, int] = (320, 240),
    box: tuple[int, int, int, int] = (90, 50, 230, 200),
    *,
    background: tuple[int, int, int] | None = None,
    product: tuple[int, int, int] = (30, 90, 160),
) -> tuple[Image.Image, Image.Image]:
    """A product shot: a textured ellipse on a studio background (a lit gradient with grain, or a
    flat ``background``). Returns the photo and the true mask (L, 255 = product)."""
    width, height = size
    rng = np.random.default_rng(7)
    if background is None:
        ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, np.newaxis, np.newaxis]
        xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
        base = np.array([200, 190, 175], dtype=np.float32) * (0.8 + 0.2 * ys) * (0.9 + 0.1 * xs)
        pixels = base + rng.normal(0.0, 6.0, (height, width, 3)).astype(np.float32)
    else:
        pixels = np.broadcast_to(np.array(background, dtype=np.float32), (height, width, 3)).copy()
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    texture = np.array(product, dtype=np.float32) + 40.0 * np.sin(
        np.arange(width, dtype=np.float32)[np.newaxis, :, np.newaxis] / 3.0
    )
    texture = texture + rng.normal(0.0, 4.0, (height, width, 3)).astype(np.float32)
    inside = (np.asarray(mask) > 0)[..., np.newaxis]
    pixels = np.where(inside, texture, pixels)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")
    return image, mask


def hard_cutout(original: Image.Image, mask: Image.Image, colour: Colour) -> Image.Image:
    flat = Image.new("RGB", original.size, tuple(colour))
    return Image.composite(original, flat, mask.point(lambda v: 255 if v >= 128 else 0))


def soft_shaded(original: Image.Image, mask: Image.Image, colour: Colour) -> Image.Image:
    """A wide soft edge, and shading that darkens the colour by 20 % of how dark the original's
    light was (its blurred luminance against white): another formula than the local Runflow's."""
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(3)), dtype=np.float32)[..., np.newaxis] / 255
    luminance = original.convert("L")
    # The old background's light only: the product is filled with the background's median first.
    median = int(np.median(np.asarray(luminance)[np.asarray(mask) < 128]))
    luminance.paste(median, mask=mask.point(lambda v: 255 if v >= 64 else 0))
    light = np.asarray(luminance.filter(ImageFilter.GaussianBlur(12)), dtype=np.float32)
    shade = np.array(colour, dtype=np.float32) * (1.0 - 0.2 * (1.0 - light[..., np.newaxis] / 255.0))
    mixed = alpha * np.asarray(original, dtype=np.float32) + (1 - alpha) * shade
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), mode="RGB")


def runflow(original: Image.Image, mask: Image.Image, colour: Colour) -> Image.Image:
    return processing.composite(original, processing.soften(mask), processing.Colour(*colour))


def recompressed(image: Image.Image, quality: int = 85) -> Image.Image:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


MAKERS = {
    "hard_cutout": hard_cutout,
    "soft_shaded": soft_shaded,
    "runflow": runflow,
    "runflow_jpeg": lambda o, m, c: recompressed(runflow(o, m, c)),
}


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    return encoded(image, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
