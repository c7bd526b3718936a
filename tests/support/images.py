"""Images the tests upload or hand to Runflow, encoded in memory with Pillow."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

RED = (200, 40, 40)


def encoded(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    """``image`` as the bytes of a ``fmt`` file (Pillow's save ``options``: exif, quality...)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def solid(
    fmt: str = "JPEG",
    size: tuple[int, int] = (8, 6),
    colour: tuple[int, int, int] | str = RED,
    **options: Any,
) -> bytes:
    """A plain ``size`` image of one ``colour``, as a ``fmt`` file."""
    return encoded(Image.new("RGB", size, colour), fmt, **options)
