"""Background colours as users write them in object metadata."""

from __future__ import annotations

import pytest

from backdrop.colours import Colour, parse_colour


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#FFA07A", Colour(255, 160, 122)),
        ("#ffa07a", Colour(255, 160, 122)),
        ("FFA07A", Colour(255, 160, 122)),
        ("00ff00", Colour(0, 255, 0)),
        ("255,160,122", Colour(255, 160, 122)),
        (" 12 , 34 ,56 ", Colour(12, 34, 56)),
        ("0,0,0", Colour(0, 0, 0)),
        ("255, 255, 255", Colour(255, 255, 255)),
    ],
)
def test_accepted_forms(text: str, expected: Colour) -> None:
    assert parse_colour(text) == expected


def test_canonical_and_hex_forms() -> None:
    colour = parse_colour("#0a0B0c")
    assert str(colour) == "10,11,12"
    assert colour.hex == "#0A0B0C"
    assert parse_colour(str(colour)) == colour


@pytest.mark.parametrize(
    "text", ["256,0,0", "0,0,999", "#GGGGGG", "red", "", "   ", "1,2", "1,2,3,4", "#FFF", "-1,0,0"]
)
def test_rejected_forms_name_the_bad_value(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_colour(text)
    assert repr(text) in str(info.value)


def test_out_of_range_channel_says_so() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.255"):
        parse_colour("256,0,0")
