"""PNG at the chunk level (flat images, variants, padding to exact sizes) and the header probe of
instant processing. Every file is checked chunk by chunk, CRCs included, and opened with Pillow."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from backdrop_local.runflow import pngfile
from backdrop_local.runflow.processing import ProcessingFailed, probe_size
from tests.support.images import encoded


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found: list[tuple[bytes, bytes]] = []
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        found.append((kind, body))
        offset += 12 + length
    assert offset == len(data) and found[-1] == (b"IEND", b"")
    return found


def _joined(parts: list[pngfile.Part]) -> bytes:
    return b"".join(bytes(part) for part in parts)


def _opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_a_flat_png_is_every_pixel_the_colour() -> None:
    data = pngfile.flat_png(37, 5, (250, 1, 128))
    assert [kind for kind, _ in _chunks(data)] == [b"IHDR", b"IDAT", b"IEND"]
    image = _opened(data)
    assert image.mode == "RGB" and image.size == (37, 5)
    assert image.getcolors() == [(37 * 5, (250, 1, 128))]
    one = _opened(pngfile.flat_png(1, 1, (0, 0, 0)))
    assert one.size == (1, 1) and one.getpixel((0, 0)) == (0, 0, 0)
    with pytest.raises(ValueError):
        pngfile.flat_png(0, 4, (0, 0, 0))


def test_a_large_flat_png_stays_small() -> None:
    data = pngfile.flat_png(4000, 3000, (10, 20, 30))  # 36 MB of pixels
    assert len(data) < 100_000
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (4000, 3000)


def test_variants_carry_their_index_in_a_text_chunk() -> None:
    base = pngfile.flat_png(8, 6, (5, 6, 7))
    assert _joined(pngfile.with_variant(base, 0)) == base
    variant = _joined(pngfile.with_variant(base, 2))
    chunks = _chunks(variant)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]
    assert chunks[1][1] == b"Comment\x00output 2"
    image = _opened(variant)
    assert image.info["Comment"] == "output 2" and image.tobytes() == _opened(base).tobytes()
    with pytest.raises(ValueError):
        pngfile.with_variant(b"GIF89a not a png at all", 1)


@pytest.mark.parametrize(
    "extra",
    [
        0,
        12,  # one empty padding chunk
        13,
        5000,
        pngfile.PADDING_BLOCK + 12,  # exactly one full block
        pngfile.PADDING_BLOCK + 12 + 5,  # a full block would leave 5: two smaller chunks instead
        pngfile.PADDING_BLOCK + 12 + 12,  # one full block and an empty chunk
        3 * (pngfile.PADDING_BLOCK + 12) + 777,
    ],
)
def test_padding_reaches_the_exact_size(extra: int) -> None:
    base = pngfile.with_variant(pngfile.flat_png(16, 9, (90, 80, 70)), 1)
    natural = pngfile.size_of(base)
    data = _joined(pngfile.padded(base, natural + extra))
    assert len(data) == natural + extra
    chunks = _chunks(data)
    kinds = [kind for kind, _ in chunks]
    assert kinds[:3] == [b"IHDR", b"tEXt", b"IDAT"] and kinds[-1] == b"IEND"
    padding = [body for kind, body in chunks if kind == b"rfPd"]
    assert (len(padding) > 0) == (extra > 0)
    assert all(body == bytes(len(body)) and len(body) <= pngfile.PADDING_BLOCK for body in padding)
    image = _opened(data)
    assert image.size == (16, 9) and image.getpixel((15, 8)) == (90, 80, 70)
    assert image.info["Comment"] == "output 1"


@pytest.mark.parametrize("extra", [-1, 1, 11])
def test_padding_refuses_sizes_it_cannot_reach(extra: int) -> None:
    base = [pngfile.flat_png(4, 4, (1, 2, 3))]
    with pytest.raises(pngfile.PaddingImpossible):
        pngfile.padded(base, pngfile.size_of(base) + extra)


def test_two_hundred_megabytes_of_padding_is_a_few_shared_buffers() -> None:
    base = [pngfile.flat_png(4, 4, (1, 2, 3))]
    parts = pngfile.padded(base, 200_000_000)
    assert pngfile.size_of(parts) == 200_000_000
    distinct = {id(part) for part in parts}
    assert len(distinct) < 12  # the full blocks all share one buffer of zeros and one CRC


def test_probe_size_reads_the_upright_size_from_the_header() -> None:
    assert probe_size(encoded(Image.new("RGB", (40, 30)), "PNG")) == (40, 30)
    assert probe_size(encoded(Image.new("RGB", (40, 30)), "WEBP")) == (40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    assert probe_size(encoded(Image.new("RGB", (40, 30)), "JPEG", exif=exif)) == (30, 40)
    exif[0x0112] = 3  # rotate 180: no swap
    assert probe_size(encoded(Image.new("RGB", (40, 30)), "JPEG", exif=exif)) == (40, 30)
    # A body cut short after a valid header passes: only the header is read.
    noisy = Image.effect_noise((256, 256), 64).convert("RGB")
    whole = encoded(noisy, "JPEG", quality=95)
    assert len(whole) > 20_000
    assert probe_size(whole[:2_000]) == (256, 256)


@pytest.mark.parametrize(
    "data",
    [b"", b"plain text", encoded(Image.new("RGB", (8, 8)), "BMP")],
)
def test_probe_size_refuses_what_is_not_a_jpeg_png_or_webp(data: bytes) -> None:
    with pytest.raises(ProcessingFailed) as caught:
        probe_size(data)
    assert caught.value.code == "INPUT_UNREADABLE"


def test_probe_size_refuses_too_many_pixels() -> None:
    with pytest.raises(ProcessingFailed) as caught:
        probe_size(encoded(Image.new("RGB", (100, 100)), "PNG"), max_pixels=9_999)
    assert caught.value.code == "INPUT_UNREADABLE" and "pixels" in caught.value.message
