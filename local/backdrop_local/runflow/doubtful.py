"""Doubtful results: the four ways a background replacement fails without any error, made from a
real result. One definition of each, used by the local Runflow's output faults, the quality tests
and the calibration (``benchmarks/calibration.py``).

``product`` below is the subject mask the run composited with (mode ``L``, 255 = subject),
thresholded at ``PRODUCT_LEVEL``; ``colour`` is the run's requested colour.

- ``unchanged``: the input photo as it is (decoded upright, RGB, as a run decodes it): nothing
  was removed.
- ``blank``: only the flat colour, at the input's size: nothing was found.
- ``cropped``: the result with the top ``CROP_SHARE`` (40 %) of the product's bounding box (every
  pixel of those rows within the box's columns, product or not) painted the flat colour: the top
  of the product was cut away. A result without product is left as it is.
- ``halo``: the result with a ring of the original photo left standing around the product: every
  pixel outside the product but within ``HALO_WIDTH_SHARE`` (4 %) of the shorter side of it
  (a square neighbourhood, at least 2 px) takes the original's pixel, as when a model keeps a band
  of the old background around hair, glass or a bottle. A result without product is left as it is.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFilter

CROP_SHARE = 0.4
HALO_WIDTH_SHARE = 0.04
PRODUCT_LEVEL = 128
KINDS = ("unchanged", "blank", "cropped", "halo")

Rgb = tuple[int, int, int]


def product_of(mask: Image.Image) -> Image.Image:
    """The product as a 0/255 mask: the subject mask at ``PRODUCT_LEVEL`` or above."""
    return mask.convert("L").point(lambda v: 255 if v >= PRODUCT_LEVEL else 0)


def unchanged(original: Image.Image) -> Image.Image:
    return original.convert("RGB").copy()


def blank(size: tuple[int, int], colour: Rgb) -> Image.Image:
    return Image.new("RGB", size, colour)


def crop_box(mask: Image.Image, part: float = CROP_SHARE) -> tuple[int, int, int, int] | None:
    """The box painted by ``cropped`` (left, top, right, bottom; right and bottom exclusive)."""
    box = product_of(mask).getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    return left, top, right, top + max(1, round((bottom - top) * part))


def cropped(result: Image.Image, mask: Image.Image, colour: Rgb, part: float = CROP_SHARE) -> Image.Image:
    cut = result.convert("RGB").copy()
    box = crop_box(mask, part)
    if box is not None:
        left, top, right, bottom = box
        ImageDraw.Draw(cut).rectangle((left, top, right - 1, bottom - 1), fill=colour)
    return cut


def halo_width(size: tuple[int, int], share: float = HALO_WIDTH_SHARE) -> int:
    return max(2, round(share * min(size)))


def halo_ring(mask: Image.Image, share: float = HALO_WIDTH_SHARE) -> Image.Image:
    """The ring ``halo`` restores (0/255): near the product, not in it."""
    product = product_of(mask)
    radius = halo_width(product.size, share)
    # A box blur is above 0 exactly where a product pixel lies within the square of that radius.
    near = product.filter(ImageFilter.BoxBlur(radius)).point(lambda v: 255 if v > 0 else 0)
    return Image.composite(Image.new("L", product.size, 0), near, product)


def halo(
    result: Image.Image, original: Image.Image, mask: Image.Image, share: float = HALO_WIDTH_SHARE
) -> Image.Image:
    return Image.composite(original.convert("RGB"), result.convert("RGB"), halo_ring(mask, share))


def make(
    kind: str, original: Image.Image, result: Image.Image, mask: Image.Image, colour: Rgb
) -> Image.Image:
    """The doubtful result of ``kind`` (one of ``KINDS``)."""
    if kind == "unchanged":
        return unchanged(original)
    if kind == "blank":
        return blank(original.size, colour)
    if kind == "cropped":
        return cropped(result, mask, colour)
    if kind == "halo":
        return halo(result, original, mask)
    raise ValueError(f"not a doubtful kind: {kind!r}")


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# The local Runflow's output faults, in the order they are tried (see ``faults``).
OUTPUT_FAULTS = ("output_unchanged", "output_blank", "output_cropped", "output_halo")


def faulted_output(fault: str, data: bytes, result_png: bytes | None, colour: Rgb) -> bytes | None:
    """Output 0 (PNG bytes) of a run whose ``fault`` (one of ``OUTPUT_FAULTS``) fired, made from the
    fetched input ``data`` and the real processing's ``result_png``; None when the output stays as
    it is. An instant run (``result_png`` None) has no product: only ``output_unchanged`` changes
    its flat output, which is ``blank`` already and has nothing to crop or ring."""
    from backdrop_local.runflow.processing import decode_image

    kind = fault.removeprefix("output_")
    if kind not in KINDS:
        raise ValueError(f"not an output fault: {fault!r}")
    if result_png is None and kind != "unchanged":
        return None
    original = decode_image(data)
    if kind == "unchanged":
        return encode_png(original)
    if kind == "blank":
        return encode_png(blank(original.size, colour))
    # The model's mask again (u2netp is deterministic): the one the run composited with.
    from backdrop_demo.segmentation import subject_mask

    assert result_png is not None
    with Image.open(io.BytesIO(result_png)) as opened:
        result = opened.convert("RGB")
    return encode_png(make(kind, original, result, subject_mask(original), colour))
