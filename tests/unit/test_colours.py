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


@pytest.mark.parametrize(
    "text",
    [
        "\u0661\u0662,\u0663\u0664,\u0665\u0666",  # Arabic-Indic: ١٢,٣٤,٥٦
        "\u06f1\u06f2,\u06f3\u06f4,\u06f5\u06f6",  # Extended Arabic-Indic (Persian)
        "\uff11\uff12,\uff13\uff14,\uff15\uff16",  # fullwidth
        "\u0967\u0968,\u0969\u096a,\u096b\u096c",  # Devanagari
        "12,34,\uff15\uff16",  # one channel only
        "\U0001d7ce,0,0",  # mathematical bold digit zero
        "#\uff26\uff26\uff26\uff26\uff26\uff26",  # fullwidth hex letters
        "12\u00a0,34,56",  # no-break space
        "\u300012,34,56",  # ideographic space
        "12,\n34,56",
    ],
    ids=[
        "arabic-indic",
        "persian",
        "fullwidth",
        "devanagari",
        "mixed",
        "math-bold",
        "fullwidth-hex",
        "nbsp",
        "ideographic-space",
        "newline",
    ],
)
def test_only_ascii_digits_and_blanks(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_colour(text)
    assert repr(text) in str(info.value)


def test_metadata_in_other_digits_rejects_the_upload_naming_it() -> None:
    text = "\u0661\u0662,\u0663\u0664,\u0665\u0666"
    choice = choose_colour({"background-color": text}, "uploads/x.jpg", default=Colour(255, 255, 255))
    assert choice.colour is None and choice.source == "metadata"
    assert choice.problem is not None and repr(text) in choice.problem
    assert choice.recorded == text


def test_tabs_around_channels_still_read() -> None:
    assert parse_colour("\t12,\t34 ,56\t") == Colour(12, 34, 56)


def test_out_of_range_channel_says_so() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.255"):
        parse_colour("256,0,0")


# --- colour rules and the choice of colour ------------------------------------------------------

from backdrop.colours import choose_colour, parse_colour_rules  # noqa: E402

RULES = parse_colour_rules(
    '{"uploads/amazon/": "#FFFFFF", "uploads/amazon/fr/": "0,0,0", "uploads/brand/": "241,241,241"}',
    "uploads/",
)


def test_rules_are_read_longest_prefix_first() -> None:
    assert (
        ("uploads/amazon/fr/", Colour(0, 0, 0)),
        ("uploads/amazon/", Colour(255, 255, 255)),
        ("uploads/brand/", Colour(241, 241, 241)),
    ) == RULES
    assert parse_colour_rules("", "uploads/") == () == parse_colour_rules("{}", "uploads/")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["uploads/a/", "#FFFFFF"]', "must be a JSON object"),
        ('{"uploads/a/": "blue"}', "colour rule 'uploads/a/': colour 'blue' is not"),
        ('{"uploads/a/": "300,0,0"}', "outside 0..255"),
        ('{"incoming/a/": "#FFFFFF"}', "'incoming/a/' is not under the upload prefix 'uploads/'"),
        ('{"uploads/a/": 255}', "must be a string"),
    ],
)
def test_bad_rules_are_refused_naming_the_entry(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_colour_rules(text, "uploads/")


@pytest.mark.parametrize(
    ("metadata", "key", "override", "colour", "source"),
    [
        ({}, "uploads/amazon/fr/x.jpg", None, Colour(0, 0, 0), "rule:uploads/amazon/fr/"),
        ({}, "uploads/amazon/de/x.jpg", None, Colour(255, 255, 255), "rule:uploads/amazon/"),
        ({}, "uploads/other/x.jpg", None, Colour(10, 20, 30), "default"),
        ({"background-color": "#1E90FF"}, "uploads/amazon/x.jpg", None, Colour(30, 144, 255), "metadata"),
        (
            {"background-color": "#1E90FF"},
            "uploads/amazon/x.jpg",
            Colour(1, 2, 3),
            Colour(1, 2, 3),
            "override",
        ),
    ],
)
def test_choice_metadata_then_longest_rule_then_default(
    metadata: dict[str, str], key: str, override: Colour | None, colour: Colour, source: str
) -> None:
    choice = choose_colour(metadata, key, default=Colour(10, 20, 30), rules=RULES, override=override)
    assert (choice.colour, choice.source, choice.tag) == (colour, source, str(colour))


def test_invalid_metadata_is_never_replaced_by_a_rule() -> None:
    choice = choose_colour(
        {"background-color": "teal"}, "uploads/amazon/x.jpg", default=Colour(0, 0, 0), rules=RULES
    )
    assert choice.colour is None and choice.source == "metadata" and choice.tag == "invalid:teal"
    assert choice.recorded == "teal"
