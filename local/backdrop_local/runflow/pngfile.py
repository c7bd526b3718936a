"""PNG at the chunk level: flat-colour images made without pixels in memory, output variants and
padding to an exact size, all valid PNG (every chunk length and CRC right; Pillow opens them).

- ``flat_png``: an 8-bit RGB PNG of one colour. The first row is stored as is (filter 0) and every
  further row with the "Up" filter, so it is all zeros and compresses to almost nothing; the rows
  are fed to zlib in blocks, so a 50 MP image never exists as pixels.
- ``with_variant``: output ``n > 0`` of a run is output 0 with a ``tEXt`` chunk
  ``Comment = "output n"`` right after ``IHDR``: the same pixels, different bytes.
- ``padded``: private ancillary chunks of type ``rfPd`` (ancillary, private, safe to copy) full of
  zeros, inserted before ``IEND`` so readers that only want the header never reach them, make the
  file exactly the size asked for. A chunk costs 12 bytes besides its data, so a size between the
  natural size and 12 bytes more cannot be reached (``PaddingImpossible``).

Functions return lists of byte strings (``Part``) to be written one after another, so a 200 MB
padded file is a few small buffers repeated, not 200 MB in memory.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

SIGNATURE = b"\x89PNG\r\n\x1a\n"
IHDR_END = len(SIGNATURE) + 8 + 13 + 4  # signature, IHDR length/type, 13 data bytes, CRC
CHUNK_OVERHEAD = 12  # length, type, CRC
PADDING_TYPE = b"rfPd"
PADDING_BLOCK = 1024 * 1024  # data bytes per padding chunk
_ROW_BLOCK_BYTES = 1024 * 1024
_ZEROS = bytes(PADDING_BLOCK)
_ZEROS_CRC = zlib.crc32(_ZEROS, zlib.crc32(PADDING_TYPE))
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))

Part = bytes | memoryview


class PaddingImpossible(ValueError):
    pass


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def flat_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    if width < 1 or height < 1:
        raise ValueError("a PNG needs at least one pixel")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(b"\x00" + bytes(rgb) * width)]
    up_row = b"\x02" + bytes(3 * width)  # "Up" filter: each byte equals the one above
    rows_per_block = max(1, _ROW_BLOCK_BYTES // len(up_row))
    block = up_row * rows_per_block
    left = height - 1
    while left > 0:
        take = min(left, rows_per_block)
        parts.append(compressor.compress(block if take == rows_per_block else up_row * take))
        left -= take
    parts.append(compressor.flush())
    return SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + _IEND


def with_variant(png: Part, index: int) -> list[Part]:
    """Output ``index`` of a run whose output 0 is ``png`` (see the module text)."""
    view = memoryview(png)
    if bytes(view[: len(SIGNATURE)]) != SIGNATURE or bytes(view[12:16]) != b"IHDR":
        raise ValueError("not a PNG")
    if index == 0:
        return [view]
    return [view[:IHDR_END], chunk(b"tEXt", b"Comment\x00" + f"output {index}".encode()), view[IHDR_END:]]


def size_of(parts: list[Part]) -> int:
    return sum(len(part) for part in parts)


def padded(parts: list[Part], total: int) -> list[Part]:
    """``parts`` (a PNG ending in ``IEND``) grown to exactly ``total`` bytes with padding chunks."""
    natural = size_of(parts)
    if total == natural:
        return parts
    extra = total - natural
    if extra < CHUNK_OVERHEAD:
        raise PaddingImpossible(
            f"{total} bytes cannot be reached: the PNG is {natural} bytes and padding adds at least "
            f"{CHUNK_OVERHEAD}"
        )
    last = parts[-1]
    if bytes(memoryview(last)[-len(_IEND) :]) != _IEND:
        raise ValueError("the PNG does not end with IEND")
    head = [*parts[:-1], memoryview(last)[: -len(_IEND)]]
    return [*head, *_padding(extra), _IEND]


def _padding(extra: int) -> Iterator[bytes]:
    """Chunks totalling exactly ``extra`` bytes (``extra >= CHUNK_OVERHEAD``)."""
    full_header = struct.pack(">I", PADDING_BLOCK) + PADDING_TYPE
    full_crc = struct.pack(">I", _ZEROS_CRC)
    left = extra
    while True:
        room = left - CHUNK_OVERHEAD  # data bytes if this were the last chunk
        if room <= PADDING_BLOCK:
            yield chunk(PADDING_TYPE, bytes(room))
            return
        if room - PADDING_BLOCK < CHUNK_OVERHEAD:
            # A full block would leave less than one chunk's overhead: end with two smaller ones.
            yield chunk(PADDING_TYPE, bytes(room - CHUNK_OVERHEAD))
            yield chunk(PADDING_TYPE, b"")
            return
        # Full blocks share one buffer of zeros and its precomputed CRC.
        yield full_header
        yield _ZEROS
        yield full_crc
        left -= PADDING_BLOCK + CHUNK_OVERHEAD
