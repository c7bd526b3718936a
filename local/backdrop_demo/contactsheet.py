"""Contact sheet of a demo run: every job's original, result, colour, status, timings and renditions.

Two renderings of the same rows, both written into the output directory:

* ``contact-sheet.html``: self-contained (inline CSS, no scripts). Its ``<img>`` tags use paths relative
  to the sheet, so the whole directory can be zipped or moved and still open in a browser.
* ``contact-sheet.png``: a single image drawn with Pillow. Each row holds the original thumbnail, the
  result thumbnail, a swatch of the colour with its ``R,G,B``, and the status and timings; below them a
  strip of the job's renditions, each a small thumbnail labelled with its name, its verdict in the
  verdict's colour (pass green, warn amber, fail red) and its first reason. The font is Pillow's
  built-in one, so no font files are needed.

Nothing here knows about the stack. The functions take :class:`SheetRow` values and a directory, so
the sheet can be tested with generated images.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageDraw, ImageFont, ImageOps

HTML_NAME = "contact-sheet.html"
PNG_NAME = "contact-sheet.png"

RGB = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class RenditionCell:
    """One rendition of a job as the contact sheet shows it."""

    name: str  # the rendition's name in the stack's Renditions parameter, e.g. "amazon"
    verdict: str  # pass, warn or fail
    reasons: tuple[str, ...] = ()
    path: Path | None = None  # the rendition file on disk (None: not made or not downloaded)
    size: str = ""  # e.g. "2000x2000 JPEG"

    @property
    def first_reason(self) -> str:
        return self.reasons[0] if self.reasons else ""


@dataclass(frozen=True)
class SheetRow:
    """One job as the contact sheet shows it."""

    label: str  # what the job was about, e.g. the uploaded key
    colour: RGB  # the background colour the job asked for
    status: str  # the job's status: succeeded, failed, timed_out, ...
    original: Path | None = None  # the uploaded photo on disk
    result: Path | None = None  # the result on disk (None if there is none)
    colour_name: str = ""  # e.g. "default", "dodger-blue"
    error: str | None = None  # why the job did not succeed
    runflow_ms: int | None = None  # Runflow's duration_ms: run created to completed, queueing included
    processing_ms: int | None = None  # Runflow's started_at to completed_at: the work itself
    end_to_end_s: float | None = None  # upload until the job completed
    result_key: str | None = None  # where the result landed in the results bucket
    renditions: tuple[RenditionCell, ...] = ()  # in the order of the stack's Renditions parameter

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class ContactSheet:
    html: Path
    png: Path


# ---------------------------------------------------------------------------- PNG layout
PAD = 12
THUMB = 200  # thumbnails fit in a THUMB x THUMB box
SWATCH_W = 128
SWATCH_H = THUMB - 36  # the colour; its R,G,B text goes below it
TEXT_W = 380
HEADER_H = 84
RENDITION_THUMB = 96  # rendition thumbnails fit in a RENDITION_THUMB square
RENDITION_W = 150  # one rendition cell: its thumbnail and, below, name, verdict and first reason
RENDITION_LABEL_H = 56
RENDITIONS_H = RENDITION_THUMB + RENDITION_LABEL_H + PAD
ROW_H = THUMB + 2 * PAD
COLUMNS_X = (
    PAD,  # original
    2 * PAD + THUMB,  # result
    3 * PAD + 2 * THUMB,  # swatch
    4 * PAD + 2 * THUMB + SWATCH_W,  # status and timings
)
SHEET_W = COLUMNS_X[3] + TEXT_W + PAD

BACKGROUND: RGB = (250, 250, 250)
ROW_SHADES: tuple[RGB, RGB] = ((255, 255, 255), (243, 244, 246))
INK: RGB = (33, 37, 41)
MUTED: RGB = (108, 117, 125)
GOOD: RGB = (25, 135, 84)
BAD: RGB = (200, 35, 51)
BORDER: RGB = (173, 181, 189)


VERDICT_COLOURS: dict[str, RGB] = {"pass": GOOD, "warn": (214, 137, 16), "fail": BAD}


def verdict_colour(verdict: str) -> RGB:
    return VERDICT_COLOURS.get(verdict, MUTED)


def _row_height(row: SheetRow) -> int:
    return ROW_H + (RENDITIONS_H if row.renditions else 0)


def _sheet_width(rows: Sequence[SheetRow]) -> int:
    widest = max((len(r.renditions) for r in rows), default=0)
    return max(SHEET_W, PAD + widest * (RENDITION_W + PAD))


def sheet_size(rows: int | Sequence[SheetRow]) -> tuple[int, int]:
    """Width and height of the PNG for these rows (or this many rows without renditions)."""
    if isinstance(rows, int):
        return SHEET_W, HEADER_H + max(rows, 1) * ROW_H + PAD
    height = sum(_row_height(r) for r in rows) if rows else ROW_H
    return _sheet_width(rows), HEADER_H + height + PAD


def row_top(index: int, rows: Sequence[SheetRow] = ()) -> int:
    """Top of row ``index``; pass the rows when some have renditions (their rows are taller)."""
    above = rows[:index]
    return HEADER_H + sum(_row_height(r) for r in above) + (index - len(above)) * ROW_H


def swatch_box(index: int, rows: Sequence[SheetRow] = ()) -> tuple[int, int, int, int]:
    """The colour swatch of row ``index`` in the PNG: (left, top, right, bottom), right/bottom exclusive."""
    left = COLUMNS_X[2]
    top = row_top(index, rows) + PAD
    return left, top, left + SWATCH_W, top + SWATCH_H


def thumb_box(index: int, column: int, rows: Sequence[SheetRow] = ()) -> tuple[int, int, int, int]:
    """The box of the original (column 0) or result (column 1) thumbnail of row ``index``."""
    left = COLUMNS_X[column]
    top = row_top(index, rows) + PAD
    return left, top, left + THUMB, top + THUMB


def rendition_box(index: int, position: int, rows: Sequence[SheetRow]) -> tuple[int, int, int, int]:
    """The thumbnail box of rendition ``position`` of row ``index``; its label lies below it."""
    left = PAD + position * (RENDITION_W + PAD)
    top = row_top(index, rows) + ROW_H
    return left, top, left + RENDITION_THUMB, top + RENDITION_THUMB


def verdict_box(index: int, position: int, rows: Sequence[SheetRow]) -> tuple[int, int, int, int]:
    """The verdict badge of rendition ``position`` of row ``index``: filled with the verdict's colour."""
    left, _, _, bottom = rendition_box(index, position, rows)
    return left, bottom + 4, left + 44, bottom + 22


# ---------------------------------------------------------------------------- public API
def build_contact_sheet(
    rows: Sequence[SheetRow],
    out_dir: Path,
    *,
    title: str = "Backdrop demo",
    generated: datetime | None = None,
) -> ContactSheet:
    """Write ``contact-sheet.html`` and ``contact-sheet.png`` into ``out_dir`` and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    return ContactSheet(
        html=write_html(rows, out_dir, title=title, generated=when),
        png=write_png(rows, out_dir, title=title, generated=when),
    )


def colour_text(colour: RGB) -> str:
    return ",".join(str(c) for c in colour)


def colour_hex(colour: RGB) -> str:
    return "#{:02X}{:02X}{:02X}".format(*colour)


def summary(rows: Sequence[SheetRow]) -> str:
    ok = sum(1 for r in rows if r.succeeded)
    return f"{len(rows)} jobs: {ok} succeeded, {len(rows) - ok} did not"


def timings_text(row: SheetRow) -> list[str]:
    lines = []
    if row.runflow_ms is not None:
        lines.append(f"Runflow {row.runflow_ms:,} ms")
        if row.processing_ms is not None:
            lines[-1] += f" (processing {row.processing_ms:,} ms)"
    if row.end_to_end_s is not None:
        lines.append(f"end-to-end {row.end_to_end_s:.1f} s")
    return lines


# ---------------------------------------------------------------------------- HTML
_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px;
       color: #212529; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; }
p.meta { color: #6c757d; margin: 0 0 16px; }
table { border-collapse: collapse; background: #fff; }
th, td { border-bottom: 1px solid #dee2e6; padding: 8px 10px; vertical-align: middle; text-align: left; }
th { background: #f1f3f5; font-weight: 600; }
tbody tr:nth-child(even) { background: #f8f9fa; }
td.img { width: 220px; text-align: center; }
td.img img { max-width: 200px; max-height: 200px; display: block; margin: auto;
             background: repeating-conic-gradient(#ddd 0% 25%, #fff 0% 50%) 50% / 16px 16px; }
.none { color: #adb5bd; font-style: italic; }
.swatch { width: 64px; height: 40px; border: 1px solid #adb5bd; border-radius: 4px; }
.status { font-weight: 600; color: #c82333; }
.status.succeeded { color: #198754; }
.error { color: #c82333; max-width: 320px; overflow-wrap: anywhere; }
.renditions { display: flex; gap: 10px; flex-wrap: wrap; }
.rendition { width: 120px; font-size: 12px; }
.rendition img { max-width: 96px; max-height: 96px; display: block; border: 1px solid #adb5bd; }
.verdict { font-weight: 600; color: #fff; border-radius: 3px; padding: 0 5px; }
.verdict.pass { background: #198754; }
.verdict.warn { background: #d68910; }
.verdict.fail { background: #c82333; }
.reason { color: #6c757d; overflow-wrap: anywhere; }
.key { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
"""


def _src(path: Path, out_dir: Path) -> str:
    """Relative, URL-quoted reference from the sheet to ``path``."""
    relative = os.path.relpath(path.resolve(), out_dir.resolve())
    return quote(Path(relative).as_posix())


def _img_cell(path: Path | None, out_dir: Path, alt: str) -> str:
    if path is None or not path.is_file():
        return '<td class="img"><span class="none">none</span></td>'
    src = _src(path, out_dir)
    return (
        f'<td class="img"><a href="{src}"><img src="{src}" alt="{html.escape(alt)}" loading="lazy"></a></td>'
    )


def _renditions_cell(row: SheetRow, out_dir: Path) -> str:
    esc = html.escape
    if not row.renditions:
        return '<td><span class="none">none</span></td>'
    cells = []
    for cell in row.renditions:
        if cell.path is not None and cell.path.is_file():
            src = _src(cell.path, out_dir)
            image = f'<a href="{src}"><img src="{src}" alt="{esc(cell.name)}" loading="lazy"></a>'
        else:
            image = '<span class="none">no file</span>'
        size = f"<br>{esc(cell.size)}" if cell.size else ""
        cells.append(
            f'<div class="rendition">{image}<b>{esc(cell.name)}</b> '
            f'<span class="verdict {esc(cell.verdict)}">{esc(cell.verdict)}</span>{size}'
            # Every reason in the tooltip; the first on the sheet, where space is short.
            f'<br><span class="reason" title="{esc("; ".join(cell.reasons))}">'
            f"{esc(cell.first_reason)}</span></div>"
        )
    return f'<td><div class="renditions">{"".join(cells)}</div></td>'


def render_html(rows: Sequence[SheetRow], out_dir: Path, *, title: str, generated: str) -> str:
    esc = html.escape
    body: list[str] = []
    for number, row in enumerate(rows, start=1):
        colour = colour_text(row.colour)
        name = f"<br>{esc(row.colour_name)}" if row.colour_name else ""
        runflow = f"{row.runflow_ms:,}" if row.runflow_ms is not None else "&ndash;"
        processing = f"{row.processing_ms:,}" if row.processing_ms is not None else "&ndash;"
        e2e = f"{row.end_to_end_s:.1f}" if row.end_to_end_s is not None else "&ndash;"
        result_key = f"<br>→ {esc(row.result_key)}" if row.result_key else ""
        body.append(
            "<tr>"
            f'<td class="num">{number}</td>'
            f'<td class="key">{esc(row.label)}{result_key}</td>'
            f"{_img_cell(row.original, out_dir, 'original ' + row.label)}"
            f"{_img_cell(row.result, out_dir, 'result ' + row.label)}"
            f'<td><div class="swatch" style="background: rgb({colour})" title="{colour_hex(row.colour)}">'
            f'</div><span class="key">{colour}</span>{name}</td>'
            f'<td class="status {esc(row.status.replace(" ", "-"))}">{esc(row.status)}</td>'
            f'<td class="error">{esc(row.error or "")}</td>'
            f'<td class="num">{runflow}</td>'
            f'<td class="num">{processing}</td>'
            f'<td class="num">{e2e}</td>'
            f"{_renditions_cell(row, out_dir)}"
            "</tr>"
        )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p class="meta">{esc(summary(rows))} · generated {esc(generated)}</p>
<table>
<thead><tr><th>#</th><th>Upload → result key</th><th>Original</th><th>Result</th><th>Colour</th>
<th>Status</th><th>Error</th>
<th title="Runflow duration_ms: run created to completed, queueing included">Runflow ms</th>
<th title="Runflow started_at to completed_at">Processing ms</th><th>End-to-end s</th>
<th>Renditions: verdict, first reason</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
</body>
</html>
"""


def write_html(
    rows: Sequence[SheetRow], out_dir: Path, *, title: str = "Backdrop demo", generated: str = ""
) -> Path:
    path = out_dir / HTML_NAME
    path.write_text(render_html(rows, out_dir, title=title, generated=generated), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- PNG
def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def _checkerboard(size: tuple[int, int], cell: int = 8) -> Image.Image:
    board = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(board)
    for y in range(0, size[1], cell):
        for x in range((y // cell) % 2 * cell, size[0], 2 * cell):
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(221, 221, 221))
    return board


def _thumbnail(path: Path, size: int) -> Image.Image:
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            board = _checkerboard(rgba.size)
            board.paste(rgba, (0, 0), rgba)
            return board
        return image.convert("RGB")


def _draw_thumb(
    sheet: Image.Image, draw: ImageDraw.ImageDraw, path: Path | None, box: tuple[int, ...]
) -> None:
    left, top, right, bottom = box
    problem = "none"
    if path is not None and path.is_file():
        try:
            thumb = _thumbnail(path, right - left)
        except OSError as exc:  # unreadable image: say so in its cell rather than lose the whole sheet
            problem = f"unreadable: {exc.__class__.__name__}"
        else:
            x = left + (right - left - thumb.width) // 2
            y = top + (bottom - top - thumb.height) // 2
            sheet.paste(thumb, (x, y))
            draw.rectangle((x - 1, y - 1, x + thumb.width, y + thumb.height), outline=BORDER)
            return
    draw.rectangle((left, top, right - 1, bottom - 1), outline=BORDER)
    draw.text(((left + right) // 2, (top + bottom) // 2), problem, fill=MUTED, font=_font(14), anchor="mm")


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while draw.textlength(word, font=font) > width:  # a single overlong word: hard-break it
            cut = len(word)
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and draw.textlength(last + "…", font=font) > width:
            last = last[:-1]
        lines[-1] = last + "…"
    return lines


def _draw_renditions(
    sheet: Image.Image, draw: ImageDraw.ImageDraw, rows: Sequence[SheetRow], index: int
) -> None:
    font = _font(13)
    for position, cell in enumerate(rows[index].renditions):
        _draw_thumb(sheet, draw, cell.path, rendition_box(index, position, rows))
        left, top, right, bottom = verdict_box(index, position, rows)
        draw.rectangle((left, top, right - 1, bottom - 1), fill=verdict_colour(cell.verdict))
        draw.text(
            ((left + right) // 2, (top + bottom) // 2),
            cell.verdict,
            fill=(255, 255, 255),
            font=font,
            anchor="mm",
        )
        draw.text((right + 6, top + 2), cell.name, fill=INK, font=font)
        y = bottom + 3
        for line in _wrap(draw, cell.first_reason, font, RENDITION_W, 2):
            draw.text((left, y), line, fill=MUTED, font=font)
            y += 15


def render_png(rows: Sequence[SheetRow], *, title: str, generated: str) -> Image.Image:
    sheet = Image.new("RGB", sheet_size(rows), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    title_font, body_font, small_font, status_font = _font(22), _font(15), _font(13), _font(18)

    draw.text((PAD, PAD), title, fill=INK, font=title_font)
    draw.text((PAD, PAD + 32), f"{summary(rows)} · {generated}", fill=MUTED, font=small_font)
    width = sheet.width
    draw.line((0, HEADER_H - 1, width, HEADER_H - 1), fill=BORDER)
    headings = ("original", "result", "colour", "status")
    for x, heading in zip(COLUMNS_X, headings, strict=True):
        draw.text((x, HEADER_H - 6), heading.upper(), fill=MUTED, font=small_font, anchor="ls")

    for index, row in enumerate(rows):
        top = row_top(index, rows)
        draw.rectangle((0, top, width - 1, top + _row_height(row) - 1), fill=ROW_SHADES[index % 2])
        _draw_thumb(sheet, draw, row.original, thumb_box(index, 0, rows))
        _draw_thumb(sheet, draw, row.result, thumb_box(index, 1, rows))
        _draw_renditions(sheet, draw, rows, index)

        left, s_top, right, s_bottom = swatch_box(index, rows)
        draw.rectangle((left, s_top, right - 1, s_bottom - 1), fill=row.colour)
        draw.rectangle((left - 1, s_top - 1, right, s_bottom), outline=BORDER)
        draw.text((left, s_bottom + 6), colour_text(row.colour), fill=INK, font=body_font)
        if row.colour_name:
            draw.text((left, s_bottom + 22), row.colour_name, fill=MUTED, font=small_font)

        x = COLUMNS_X[3]
        y = top + PAD
        draw.text((x, y), row.status, fill=GOOD if row.succeeded else BAD, font=status_font)
        y += 26
        for line in _wrap(draw, row.label, small_font, TEXT_W, 2):
            draw.text((x, y), line, fill=INK, font=small_font)
            y += 17
        for line in timings_text(row):
            draw.text((x, y), line, fill=INK, font=body_font)
            y += 20
        if row.result_key:
            # The built-in font has no arrows; keep to ASCII here.
            for line in _wrap(draw, f"result: {row.result_key}", small_font, TEXT_W, 2):
                draw.text((x, y), line, fill=MUTED, font=small_font)
                y += 17
        if row.error:
            remaining = max((top + ROW_H - PAD - y) // 17, 1)
            for line in _wrap(draw, row.error, small_font, TEXT_W, remaining):
                draw.text((x, y), line, fill=BAD, font=small_font)
                y += 17
    return sheet


def write_png(
    rows: Sequence[SheetRow], out_dir: Path, *, title: str = "Backdrop demo", generated: str = ""
) -> Path:
    path = out_dir / PNG_NAME
    render_png(rows, title=title, generated=generated).save(path, optimize=True)
    return path
