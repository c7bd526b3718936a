"""Background colours: parsing what users write, the canonical ``R,G,B`` form we store, and which
colour an upload gets (its own metadata, else the longest matching prefix rule, else the default)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

COLOUR_METADATA_KEY = "background-color"

# ASCII digits and blanks only, as the template's pattern: ``\d`` and ``int()`` also take other
# scripts' digits (Arabic-Indic ``١٢,٣٤,٥٦`` read as 12,34,56, fullwidth ones too), and ``\s``
# other spaces.
_BLANKS = " \t"
_HEX = re.compile(r"#?([0-9a-fA-F]{6})")
_TRIPLE = re.compile(r"([0-9]{1,3})[ \t]*,[ \t]*([0-9]{1,3})[ \t]*,[ \t]*([0-9]{1,3})")


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
    value = text.strip(_BLANKS)
    if m := _HEX.fullmatch(value):
        digits = m.group(1)
        return Colour(int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    if m := _TRIPLE.fullmatch(value):
        channels = tuple(int(g) for g in m.groups())
        if all(0 <= c <= 255 for c in channels):
            return Colour(*channels)
        raise ValueError(f"colour {text!r} has a channel outside 0..255")
    raise ValueError(f"colour {text!r} is not #RRGGBB, RRGGBB or R,G,B")


@dataclass(frozen=True)
class ColourChoice:
    colour: Colour | None  # None: the object's metadata names no valid colour
    tag: str  # what the job's identity is made of: "R,G,B", or "invalid:<text>"
    source: str  # "override", "metadata", "rule:<prefix>" or "default"
    problem: str | None = None

    @property
    def recorded(self) -> str:
        """The job's ``color``: ``R,G,B``, or the bad value itself (trimmed) when it is invalid."""
        return str(self.colour) if self.colour else self.tag.removeprefix("invalid:")[:200]


def choose_colour(
    metadata: Mapping[str, str],
    key: str,
    *,
    default: Colour,
    rules: Sequence[tuple[str, Colour]] = (),
    override: Colour | None = None,
) -> ColourChoice:
    """The colour for an object: an operator's explicit ``override`` (a backfill with --color), else
    its ``background-color`` metadata, else the longest prefix rule that matches its key, else
    ``default``. Invalid metadata is never replaced by a rule or the default."""
    if override is not None:
        return ColourChoice(override, str(override), "override")
    text = metadata.get(COLOUR_METADATA_KEY)
    if text is not None:
        try:
            colour = parse_colour(text)
        except ValueError as exc:
            return ColourChoice(None, f"invalid:{text}", "metadata", f"metadata {COLOUR_METADATA_KEY}: {exc}")
        return ColourChoice(colour, str(colour), "metadata")
    for prefix, colour in sorted(rules, key=lambda rule: len(rule[0]), reverse=True):
        if key.startswith(prefix):
            return ColourChoice(colour, str(colour), f"rule:{prefix}")
    return ColourChoice(default, str(default), "default")


ColourRules = tuple[tuple[str, Colour], ...]


def parse_colour_rules(text: str, upload_prefix: str) -> ColourRules:
    """``{"uploads/amazon/": "#FFFFFF", ...}``: key prefixes under the upload prefix → colours in any
    form the metadata accepts. Raises ValueError naming the first bad entry; never guesses."""
    if not text.strip():
        return ()
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"colour rules are not valid JSON ({exc.args[0]}): {text[:200]!r}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"colour rules must be a JSON object of prefix to colour, got {text[:200]!r}")
    rules: list[tuple[str, Colour]] = []
    for prefix, value in raw.items():
        if not isinstance(prefix, str) or not prefix.startswith(upload_prefix):
            raise ValueError(
                f"colour rule prefix {prefix!r} is not under the upload prefix {upload_prefix!r}"
            )
        if not isinstance(value, str):
            raise ValueError(f"colour rule {prefix!r}: the colour must be a string, got {value!r}")
        try:
            rules.append((prefix, parse_colour(value)))
        except ValueError as exc:
            raise ValueError(f"colour rule {prefix!r}: {exc}") from exc
    return tuple(sorted(rules, key=lambda rule: len(rule[0]), reverse=True))
