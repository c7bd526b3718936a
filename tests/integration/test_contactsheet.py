"""The demo's contact sheet, built from generated images without the stack."""

from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from backdrop_demo.contactsheet import (
    HEADER_H,
    PAD,
    ROW_H,
    SHEET_W,
    RenditionCell,
    SheetRow,
    build_contact_sheet,
    rendition_box,
    sheet_size,
    swatch_box,
    thumb_box,
    verdict_box,
    verdict_colour,
)
from PIL import Image

DODGER_BLUE = (30, 144, 255)
ZALANDO_GREY = (241, 241, 241)
GENERATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img" and values.get("src"):
            self.sources.append(str(values["src"]))
        if tag == "a" and values.get("href"):
            self.links.append(str(values["href"]))


def _rgb(value: object) -> tuple[int, int, int]:
    assert isinstance(value, tuple) and len(value) == 3
    return int(value[0]), int(value[1]), int(value[2])


def _photo(path: Path, size: tuple[int, int], colour: tuple[int, int, int], fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    image.save(path, format=fmt)
    return path


@pytest.fixture
def rows(tmp_path: Path) -> list[SheetRow]:
    out = tmp_path / "demo-output"
    red = _photo(out / "originals" / "demo" / "red photo.png", (320, 240), (220, 20, 20), "PNG")
    blue_result = _photo(out / "results" / "demo" / "red photo.png", (320, 240), DODGER_BLUE, "PNG")
    # An original outside the output directory: referenced with a ../ path.
    green = _photo(tmp_path / "elsewhere" / "green.webp", (200, 400), (20, 180, 40), "WEBP")
    return [
        SheetRow(
            label="demo/red photo.png",
            colour=DODGER_BLUE,
            colour_name="dodger-blue",
            status="succeeded",
            original=red,
            result=blue_result,
            runflow_ms=1234,
            processing_ms=321,
            end_to_end_s=4.56,
            result_key="results/demo/red photo.jpg/result.png",
        ),
        SheetRow(
            label="demo/green.webp",
            colour=ZALANDO_GREY,
            colour_name="zalando-grey",
            status="failed",
            original=green,
            result=None,
            error="RUNFLOW_FAILED: model said <no> & gave up " + "very " * 40 + "long",
            runflow_ms=None,
            end_to_end_s=7.0,
        ),
    ]


def test_html_references_existing_files_and_shows_jobs(tmp_path: Path, rows: list[SheetRow]) -> None:
    out = tmp_path / "demo-output"
    sheet = build_contact_sheet(rows, out, generated=GENERATED)

    assert sheet.html == out / "contact-sheet.html"
    text = sheet.html.read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(text)
    assert len(parser.sources) == 3  # two originals, one result
    for src in parser.sources + parser.links:
        assert not src.startswith(("/", "file:", "http")), src
        assert (out / unquote(src)).resolve().is_file(), src
    assert "red%20photo.png" in text
    assert "../elsewhere/green.webp" in text

    for expected in ("succeeded", "failed", "30,144,255", "241,241,241", "dodger-blue", "zalando-grey"):
        assert expected in text
    assert "rgb(30,144,255)" in text
    assert "model said &lt;no&gt; &amp; gave up" in text  # escaped, not markup
    assert "1,234" in text and ">321<" in text and "4.6" in text and "7.0" in text
    assert "2 jobs: 1 succeeded, 1 did not" in text


def test_png_grid_and_swatches(tmp_path: Path, rows: list[SheetRow]) -> None:
    out = tmp_path / "demo-output"
    sheet = build_contact_sheet(rows, out, generated=GENERATED)

    image = Image.open(sheet.png).convert("RGB")
    assert image.size == sheet_size(2) == (SHEET_W, HEADER_H + 2 * ROW_H + PAD)
    assert image.width > 2 * 200 and image.height > 2 * 200

    for index, row in enumerate(rows):
        left, top, right, bottom = swatch_box(index)
        inner = image.crop((left + 2, top + 2, right - 2, bottom - 2))
        colours = inner.getcolors(maxcolors=4)
        assert colours is not None and len(colours) == 1, colours
        assert colours[0][1] == row.colour

    def centre(box: tuple[int, int, int, int]) -> tuple[int, int]:
        return (box[0] + box[2]) // 2, (box[1] + box[3]) // 2

    # Thumbnails land in their cells: the original's red and the result's blue.
    r, g, b = _rgb(image.getpixel(centre(thumb_box(0, 0))))
    assert r > 180 and g < 60 and b < 60
    assert image.getpixel(centre(thumb_box(0, 1))) == DODGER_BLUE
    r, g, b = _rgb(image.getpixel(centre(thumb_box(1, 0))))
    assert g > 140 and r < 60
    # No result for the failed job: its cell holds no photo colours.
    colours = image.crop(thumb_box(1, 1)).getcolors(maxcolors=4096)
    assert colours is not None
    assert all(
        abs(c[0] - c[2]) < 40 for c in (_rgb(colour) for _, colour in colours)
    )  # greys only (placeholder text and frame)


def test_unreadable_and_missing_images_still_make_a_sheet(tmp_path: Path) -> None:
    out = tmp_path / "out"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    rows = [
        SheetRow(label="a.jpg", colour=(255, 255, 255), status="timed_out", original=broken),
        SheetRow(label="b.jpg", colour=(0, 0, 0), status="missing", original=tmp_path / "gone.jpg"),
    ]
    sheet = build_contact_sheet(rows, out, generated=GENERATED)
    assert Image.open(sheet.png).size == sheet_size(2)
    parser = _Images()
    parser.feed(sheet.html.read_text(encoding="utf-8"))
    assert parser.sources == [str(Path("..") / "broken.jpg")]  # missing files are not referenced


def test_renditions_drawn_with_their_verdicts(tmp_path: Path) -> None:
    out = tmp_path / "demo-output"
    original = _photo(out / "originals" / "demo" / "shoe.jpg", (300, 300), (220, 20, 20), "JPEG")
    amazon = _photo(out / "results" / "demo" / "shoe.jpg" / "amazon.jpg", (400, 400), DODGER_BLUE, "JPEG")
    thumb = _photo(out / "results" / "demo" / "shoe.jpg" / "thumb.png", (120, 120), (20, 180, 40), "PNG")
    renditions = (
        RenditionCell("amazon", "pass", (), amazon, "2000x2000 JPEG"),
        RenditionCell("thumb", "warn", ("the product touches the edge of the photo", "small"), thumb),
        RenditionCell("zalando", "fail", ("no product found in the result",), None),
    )
    rows = [
        SheetRow(label="demo/plain.jpg", colour=ZALANDO_GREY, status="succeeded", original=original),
        SheetRow(
            label="demo/shoe.jpg",
            colour=DODGER_BLUE,
            status="succeeded",
            original=original,
            renditions=renditions,
        ),
    ]
    sheet = build_contact_sheet(rows, out, generated=GENERATED)

    image = Image.open(sheet.png).convert("RGB")
    assert image.size == sheet_size(rows)
    assert image.height > sheet_size(2)[1]  # the row with renditions is taller
    # The second row's cells sit below the first row, whatever its height.
    assert swatch_box(1, rows)[1] == swatch_box(1)[1]
    left, top, right, bottom = swatch_box(1, rows)
    assert image.getpixel(((left + right) // 2, (top + bottom) // 2)) == DODGER_BLUE

    def centre(box: tuple[int, int, int, int]) -> tuple[int, int]:
        return (box[0] + box[2]) // 2, (box[1] + box[3]) // 2

    # Each rendition's thumbnail is its own file, and its badge has its verdict's colour.
    r, g, b = _rgb(image.getpixel(centre(rendition_box(1, 0, rows))))
    assert b > 200 and r < 80
    r, g, b = _rgb(image.getpixel(centre(rendition_box(1, 1, rows))))
    assert g > 140 and r < 60
    for position, verdict in enumerate(("pass", "warn", "fail")):
        left, top, right, bottom = verdict_box(1, position, rows)
        corner = image.getpixel((left + 1, top + 1))
        assert corner == verdict_colour(verdict), (verdict, corner)
    assert len({verdict_colour(v) for v in ("pass", "warn", "fail")}) == 3

    text = sheet.html.read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(text)
    assert "results/demo/shoe.jpg/amazon.jpg" in parser.sources
    assert "results/demo/shoe.jpg/thumb.png" in parser.sources
    for verdict in ("pass", "warn", "fail"):
        assert f'<span class="verdict {verdict}">{verdict}</span>' in text
    assert '">the product touches the edge of the photo</span>' in text  # the first reason shown
    assert "no product found in the result" in text and "2000x2000 JPEG" in text
    assert 'title="the product touches the edge of the photo; small"' in text  # every reason on hover
