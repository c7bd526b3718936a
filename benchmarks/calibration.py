"""``BENCH calibration``: how often the quality checks (``backdrop.quality``) doubt a good result,
and how often they catch each doubtful kind, on the bundled samples and on generated photos.

Sets: ``samples`` (every photo in ``samples/``), ``product`` and ``portrait`` (generated, seeded:
``benchmarks.calibration_photos``). Each photo is JPEG bytes, processed as a run would process them.

Good results, made three ways, since Runflow's own formula is not published:

- ``runflow``: the local Runflow's real processing (``backdrop_demo.imaging``'s steps: decode,
  u2netp mask, softened edge, composite with 30 % of the old light), called directly;
- ``runflow_jpeg``: the same, re-encoded as a quality 85 JPEG;
- ``mask_shaded``: the true mask (the model's for the samples, which have no other) with a wide
  soft edge, on the colour darkened by 20 % of the old background's blurred light (another shading
  formula), as a quality 85 JPEG.

A ``runflow`` result is only counted as good when the model found the product faithfully: at
least ``MODEL_FAITHFUL`` of the surely-product pixels (the true mask, 2 px in from its edge) at 90 %
opacity or more in the model's mask, and as much of the surely-background ones (3 px or more out)
at 10 % or less. Otherwise both ``runflow`` results are counted apart, as model misses (a faded
sweater, a lost shoulder: a check that doubts them is right). The samples have no true mask.

Doubtful results: the four kinds of ``backdrop_local.runflow.doubtful`` (the local Runflow's output
faults) made from the ``runflow`` result with the model's mask. One that is no doubtful result in
fact is counted apart: ``unchanged`` or ``halo`` that leaves fewer than ``VISIBLE_PIXELS_SHARE`` of
the frame (and 25 px) off the colour by more than ``VISIBLE_DIFFERENCE`` away from the product (a
photo already on the colour returned unchanged, a ring of white left on white); ``blank`` or
``cropped`` that changes fewer than that many pixels by more than that (the model found nothing).

Prints a markdown table per set (false doubt on good results, catch rate per kind), the measured
distribution of each check against its threshold, and one ``BENCH calibration`` line; progress
on stderr. A few minutes with the defaults.

    .venv/bin/python -m benchmarks.calibration [--products 110] [--portraits 50] [--seed 22] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from backdrop import products, quality
from backdrop.colours import Colour
from backdrop_local.runflow import doubtful
from benchmarks.calibration_photos import Photo, generate
from benchmarks.common import ROOT, emit, note

SETS = ("samples", "product", "portrait")
GOOD_WAYS = ("runflow", "runflow_jpeg", "mask_shaded")
MODEL_FAITHFUL = 0.97
VISIBLE_DIFFERENCE = 24  # as quality.SAME_LOOK
VISIBLE_PIXELS_SHARE = 0.0005  # as quality.MIN_PRODUCT_SHARE
JPEG_QUALITY = 85
CHECKS = (
    ("product_share", "MIN_PRODUCT_SHARE", "MAX_PRODUCT_SHARE"),
    ("background_deviation", None, "MAX_BACKGROUND_DEVIATION"),
    ("background_texture", None, "MAX_BACKGROUND_TEXTURE"),
    ("product_fidelity", None, "MAX_PRODUCT_DIFFERENCE"),
    ("cut_edge_share", None, "MAX_CUT_EDGE_SHARE"),
    ("halo_share", None, "MAX_HALO_SHARE"),
)


@dataclass
class Outcome:
    """One assessed result."""

    set: str
    photo: str
    kind: str  # a good way, "model_miss", or a doubtful kind
    verdict: str
    reasons: list[str]
    checks: dict[str, float]


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    not_doubtful: Counter[tuple[str, str]] = field(default_factory=Counter)  # (set, kind) -> count


def sample_photos() -> Iterator[Photo]:
    for path in sorted((ROOT / "samples").iterdir()):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"):
            yield Photo(path.name, "samples", "sample", "", path.read_bytes(), None, (255, 255, 255))


def _jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def mask_shaded(original: Image.Image, mask: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """A wide soft edge and a 20 % shading from the old background's light: not the local
    Runflow's formula (it keeps 30 % of the light relative to its median, over a narrow edge)."""
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(3)), dtype=np.float32)[..., np.newaxis] / 255
    luminance = original.convert("L")
    hard = np.asarray(mask) >= 128
    median = int(np.median(np.asarray(luminance)[~hard])) if (~hard).any() else 255
    luminance.paste(median, mask=mask.point(lambda v: 255 if v >= 64 else 0))
    light = np.asarray(luminance.filter(ImageFilter.GaussianBlur(12)), dtype=np.float32)[..., np.newaxis]
    shade = np.array(colour, dtype=np.float32) * (1.0 - 0.2 * (1.0 - light / 255.0))
    mixed = alpha * np.asarray(original, dtype=np.float32) + (1 - alpha) * shade
    return _jpeg(Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), mode="RGB"))


def faithful(model: Image.Image, truth: Image.Image) -> bool:
    """The model's mask keeps the true product and removes the true background (see above)."""
    soft, true = np.asarray(model), np.asarray(truth)
    product = quality.inside(true >= 250, 2)
    background = ~quality.near(true > 5, 3)
    kept = float((soft[product] >= 230).mean()) if product.any() else 1.0
    removed = float((soft[background] <= 25).mean()) if background.any() else 1.0
    return kept >= MODEL_FAITHFUL and removed >= MODEL_FAITHFUL


def _enough(flags: np.ndarray[Any, np.dtype[np.bool_]]) -> bool:
    return int(flags.sum()) >= max(25, VISIBLE_PIXELS_SHARE * flags.size)


def doubtful_in_fact(
    kind: str, faulted: Image.Image, good: Image.Image, product: Image.Image, colour: tuple[int, int, int]
) -> bool:
    """Whether a doubtful kind visibly made a doubtful result (see the module text)."""
    pixels = np.asarray(faulted, dtype=np.int16)
    changed = np.abs(pixels - np.asarray(good, dtype=np.int16)).max(axis=2)
    if kind in ("blank", "cropped"):
        return _enough(changed > VISIBLE_DIFFERENCE)
    away = ~quality.near(np.asarray(product) >= 128, 3)
    off_colour = np.abs(pixels - np.array(colour, dtype=np.int16)).max(axis=2) > VISIBLE_DIFFERENCE
    return _enough(off_colour & away & (changed > 8))


def assess(result: Image.Image, original: Image.Image, colour: tuple[int, int, int]) -> dict[str, Any]:
    return quality.assess(products.compare(result, original, Colour(*colour)))


def calibrate_photo(photo: Photo, tally: Tally) -> None:
    from backdrop_demo.imaging import composite, soften
    from backdrop_demo.segmentation import subject_mask

    from backdrop_local.runflow.processing import Colour as RunColour
    from backdrop_local.runflow.processing import decode_image

    original = decode_image(photo.data)
    colour = photo.colour
    model = subject_mask(original)
    runflow = composite(original, soften(model), RunColour(*colour))
    truth = photo.truth if photo.truth is not None else model
    found = photo.truth is None or faithful(model, photo.truth)
    results = {
        "runflow": runflow,
        "runflow_jpeg": _jpeg(runflow),
        "mask_shaded": mask_shaded(original, truth, colour),
    }

    def record(kind: str, result: Image.Image) -> None:
        assessed = assess(result, original, colour)
        tally.outcomes.append(
            Outcome(
                photo.group, photo.name, kind, assessed["verdict"], assessed["reasons"], assessed["checks"]
            )
        )

    for way, result in results.items():
        record(way if found or way == "mask_shaded" else "model_miss", result)
    product = Image.fromarray(np.maximum(np.asarray(model), np.asarray(truth)), mode="L")
    for kind in doubtful.KINDS:
        faulted = doubtful.make(kind, original, runflow, model, colour)
        if not doubtful_in_fact(kind, faulted, runflow, product, colour):
            tally.not_doubtful[(photo.group, kind)] += 1
            continue
        record(kind, faulted)


def _rate(outcomes: Iterable[Outcome], verdict: str) -> tuple[int, int]:
    listed = list(outcomes)
    return sum(o.verdict == verdict for o in listed), len(listed)


def _cell(hit: int, total: int) -> str:
    return f"{hit}/{total} ({hit / total:.0%})" if total else "-"


def table(tally: Tally, photos: Counter[str]) -> list[str]:
    lines = [
        "| set | photos | false doubt on good results | model misses doubted "
        "| unchanged caught | blank caught | cropped caught | halo caught |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in (*SETS, "all"):
        mine = [o for o in tally.outcomes if name in ("all", o.set)]
        good = [o for o in mine if o.kind in GOOD_WAYS]
        false_doubt = _rate(good, "doubt")
        cells = [name, str(photos[name] if name != "all" else sum(photos.values())), _cell(*false_doubt)]
        cells.append(_cell(*_rate((o for o in mine if o.kind == "model_miss"), "doubt")))
        for kind in doubtful.KINDS:
            caught = _rate((o for o in mine if o.kind == kind), "doubt")
            skipped = sum(v for (s, k), v in tally.not_doubtful.items() if k == kind and name in ("all", s))
            cells.append(_cell(*caught) + (f", {skipped} not doubtful" if skipped else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.3g}" if values else "-"


def distribution(tally: Tally) -> list[str]:
    """Per check: its threshold, the good results' spread, and the share of each kind over it."""
    lines = [
        "| check | doubtful when | good: median | good: 99th pct | good: max | "
        + " | ".join(f"{kind} over" for kind in doubtful.KINDS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(doubtful.KINDS),
    ]
    by_kind: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in tally.outcomes:
        by_kind["good" if outcome.kind in GOOD_WAYS else outcome.kind].append(outcome)
    for check, low_name, high_name in CHECKS:
        low = getattr(quality, low_name) if low_name else None
        high = getattr(quality, high_name)

        def over(outcome: Outcome, low: float | None = low, high: float = high, check: str = check) -> bool:
            value = outcome.checks.get(check, 0.0)
            return value > high or (low is not None and value < low)

        values = [o.checks.get(check, 0.0) for o in by_kind["good"]]
        rule = f"< {low:g} or > {high:g}" if low is not None else f"> {high:g}"
        cells = [f"`{check}`", rule, _pct(values, 50), _pct(values, 99), _pct(values, 100)]
        for kind in doubtful.KINDS:
            cells.append(_cell(sum(over(o) for o in by_kind[kind]), len(by_kind[kind])))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=110)
    parser.add_argument("--portraits", type=int, default=50)
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--quick", action="store_true", help="20 products and 10 portraits")
    parser.add_argument("--list-doubted", action="store_true", help="name every good result doubted")
    parser.add_argument("--dump", type=Path, help="write every assessed result here (JSON lines)")
    args = parser.parse_args()
    if args.quick:
        args.products, args.portraits = 20, 10
    began = time.monotonic()
    tally = Tally()
    photos: Counter[str] = Counter()
    every = [*sample_photos(), *generate(args.products, args.portraits, args.seed)]
    for number, photo in enumerate(every, 1):
        calibrate_photo(photo, tally)
        photos[photo.group] += 1
        if number % 20 == 0 or number == len(every):
            note(f"calibration: {number}/{len(every)} photos, {time.monotonic() - began:.0f} s")
    if args.dump:
        with args.dump.open("w") as out:
            for outcome in tally.outcomes:
                out.write(json.dumps(asdict(outcome)) + "\n")
    print("\n".join(table(tally, photos)))
    print()
    print("\n".join(distribution(tally)))
    if args.list_doubted:
        for outcome in tally.outcomes:
            if outcome.kind in (*GOOD_WAYS, "model_miss") and outcome.verdict == "doubt":
                print(f"- {outcome.kind} {outcome.photo}: {'; '.join(outcome.reasons)}")
            if outcome.kind in doubtful.KINDS and outcome.verdict == "pass":
                print(f"- missed {outcome.kind} {outcome.photo}: {outcome.checks}")
    good = _rate((o for o in tally.outcomes if o.kind in GOOD_WAYS), "doubt")
    caught = {kind: _rate((o for o in tally.outcomes if o.kind == kind), "doubt") for kind in doubtful.KINDS}
    emit(
        "calibration",
        photos=sum(photos.values()),
        good_results=good[1],
        false_doubt=round(good[0] / max(good[1], 1), 4),
        model_misses=sum(o.kind == "model_miss" for o in tally.outcomes),
        **{f"caught_{kind}": round(hit / max(total, 1), 4) for kind, (hit, total) in caught.items()},
        seconds=round(time.monotonic() - began, 1),
    )


if __name__ == "__main__":
    main()
