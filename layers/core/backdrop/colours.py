"""Background colours: parsing what users write, and the canonical ``R,G,B`` form we store."""

from __future__ import annotations

import re
from typing import NamedTuple

_HEX = re.compile(r"#?([0-9a-fA-F]{6})")
_TRIPLE = re.compile(r"(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})")


class Colour(NamedTuple):
    red: int
    green: int
    blue: int

    def __str__(self) -> str:
        return f"{self.red},{self.green},{self.blue}"

    @property
    def hex(self) -> str:
        return f"#{self.red:02X}{self.green:02X}{self.blue:02X}"


def parse_colour(text: str) -> Colour:
    """Parse ``#RRGGBB``, ``RRGGBB`` or ``R,G,B``; raise ValueError naming the bad value."""
    value = text.strip()
    if m := _HEX.fullmatch(value):
        digits = m.group(1)
        return Colour(int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    if m := _TRIPLE.fullmatch(value):
        channels = tuple(int(g) for g in m.groups())
        if all(0 <= c <= 255 for c in channels):
            return Colour(*channels)
        raise ValueError(f"colour {text!r} has a channel outside 0..255")
    raise ValueError(f"colour {text!r} is not #RRGGBB, RRGGBB or R,G,B")
