"""``BENCH render``: every built-in rendition profile on a 12 MP and a 24 MP photo, against a naive
Pillow baseline measured in the same run.

Per photo size, a synthetic product shot (JPEG original) and its result (PNG, composited by the
local Runflow's own formula) are written to a scratch folder. Each variant then runs in a fresh
process, so that its peak resident memory is its own:

- ``backdrop``: ``backdrop.products.compare_region`` once (the product found, only its region kept
  at full size), then ``backdrop.renditions.make`` for each profile (rendering, encoding and the
  verdict read back from the encoded file);
- ``naive``: for each profile, decode the result, LANCZOS-resize it to fit the canvas and encode it
  in the profile's format and quality (no product, no exact background, no verdict);
- ``pyvips`` (only where pyvips is installed): for each profile, ``thumbnail_buffer`` and encode.

Figures: ms per photo (all profiles; median of the repeats) as CPU time of the process, which
other load on a shared machine moves far less than wall time (printed too), and peak extra RSS
(MB above the process's resident memory once the files are read, the libraries imported and
Pillow's format plugins loaded),
with the ratios. ``speed_ratio`` is the naive baseline's CPU time over ours.
Targets: ``speed_ratio`` >= 2, ``rss_vs_decoded`` (peak extra RSS / one decoded RGB photo) <= 2.
Import times and the unpacked size of the libraries go to stderr.

    .venv/bin/python -m benchmarks.render [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import emit, note

SIZES = {12: (4000, 3000), 24: (6000, 4000)}
CHILD_TIMEOUT_S = 600.0
IMPORT_PROBES = {
    "pillow+numpy": "import numpy, PIL.Image",
    "backdrop.renditions": "import backdrop.renditions, backdrop.quality",
    "pyvips": "import pyvips; pyvips.Image.black(1, 1)",
}
DISTRIBUTIONS = {
    "pillow+numpy": ("pillow", "numpy"),
    "pyvips": ("pyvips", "pyvips-binary", "cffi", "pycparser"),
}


def make_photo(size: tuple[int, int], folder: Path) -> tuple[Path, Path]:
    """A product shot of ``size`` (JPEG q90) and its result on white (PNG)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from backdrop_local.runflow import processing

    width, height = size
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, np.newaxis]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[np.newaxis, :]
    light = (0.8 + 0.2 * ys) * (0.9 + 0.1 * xs)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    for channel, base in enumerate((200, 188, 170)):
        pixels[..., channel] = np.clip(base * light, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    del pixels
    mask = Image.new("L", size, 0)
    box = (int(width * 0.3), int(height * 0.15), int(width * 0.7), int(height * 0.9))
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    stripes = Image.linear_gradient("L").resize((box[2] - box[0], box[3] - box[1]))
    product = Image.merge("RGB", (stripes, stripes.rotate(90), Image.new("L", stripes.size, 120)))
    image.paste(product, box[:2], mask.crop(box))
    original = folder / f"{width}x{height}.jpg"
    image.save(original, "JPEG", quality=90)
    result = processing.composite(image, processing.soften(mask), processing.Colour(255, 255, 255))
    result_path = folder / f"{width}x{height}-result.png"
    result.save(result_path, "PNG", compress_level=1)
    return original, result_path


def _naive(result: bytes) -> None:
    from PIL import Image

    from backdrop.renditions import PROFILES

    for spec in PROFILES.values():
        with Image.open(io.BytesIO(result)) as opened:
            image = opened.convert("RGB")
        width, height = spec.canvas(image.size)
        scale = min(width / image.width, height / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resized = image.resize(size, Image.Resampling.LANCZOS)
        del image
        out = io.BytesIO()
        resized.save(out, spec.format, quality=spec.quality)
        del resized


def _backdrop(result: bytes, original: bytes) -> None:
    from backdrop import products, renditions
    from backdrop.colours import Colour

    region, found = products.compare_region(result, original, Colour(255, 255, 255))
    for spec in renditions.PROFILES.values():
        renditions.make(spec, region, found)


def _pyvips(result: bytes) -> None:
    import pyvips  # type: ignore[import-not-found,unused-ignore]

    from backdrop.renditions import PROFILES

    for spec in PROFILES.values():
        width, height = spec.canvas((1, 1))
        image = pyvips.Image.thumbnail_buffer(result, width, height=height)
        suffix = {"JPEG": ".jpg", "WEBP": ".webp", "PNG": ".png", "AVIF": ".avif"}[spec.format]
        image.write_to_buffer(f"{suffix}[Q={spec.quality}]")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> float:
    """Resident memory now, with the kernel's high-water mark (VmHWM) reset to it."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def child(variant: str, original_path: str, result_path: str, repeats: int) -> dict[str, float]:
    original, result = Path(original_path).read_bytes(), Path(result_path).read_bytes()
    import numpy  # noqa: F401  (imported before the baseline, as a warm function would have it)
    from PIL import Image

    import backdrop.renditions

    # Pillow's format plugins and the sRGB profile, loaded as a warm function has them: otherwise
    # whichever run loads them first counts them as its own memory.
    Image.init()
    backdrop.renditions.srgb_icc()

    if variant == "pyvips":
        import pyvips  # noqa: F401

    baseline = reset_peak_rss()
    timings, cpu = [], []
    for _ in range(repeats):
        began, began_cpu = time.perf_counter(), time.process_time()
        if variant == "naive":
            _naive(result)
        elif variant == "backdrop":
            _backdrop(result, original)
        else:
            _pyvips(result)
        timings.append((time.perf_counter() - began) * 1000)
        cpu.append((time.process_time() - began_cpu) * 1000)
    return {
        "ms": statistics.median(timings),
        "cpu_ms": statistics.median(cpu),
        "peak_extra_rss_mb": _status_mb("VmHWM") - baseline,
    }


def run_child(variant: str, original: Path, result: Path, repeats: int) -> dict[str, float]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.render",
            "--child",
            variant,
            str(original),
            str(result),
            str(repeats),
        ],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"render benchmark ({variant}) failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def has_pyvips() -> bool:
    probe = subprocess.run([sys.executable, "-c", IMPORT_PROBES["pyvips"]], capture_output=True)
    return probe.returncode == 0


def import_ms(statement: str, runs: int = 3) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print((time.perf_counter() - t) * 1000)"
    samples = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        samples.append(float(done.stdout.strip()))
    return statistics.median(samples)


def unpacked_mb(distributions: tuple[str, ...]) -> float:
    total = 0
    for name in distributions:
        dist = metadata.distribution(name)
        for file in dist.files or ():
            path = Path(str(dist.locate_file(file)))
            if path.is_file() and "__pycache__" not in path.parts:
                total += path.stat().st_size
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one repeat per variant")
    parser.add_argument("--child", nargs=4, metavar=("VARIANT", "ORIGINAL", "RESULT", "REPEATS"))
    args = parser.parse_args()
    if args.child:
        variant, original, result, repeats = args.child
        print(json.dumps(child(variant, original, result, int(repeats))))
        return
    repeats = 1 if args.quick else 3
    variants = ["naive", "backdrop"] + (["pyvips"] if has_pyvips() else [])
    for library, statement in IMPORT_PROBES.items():
        if library != "pyvips" or "pyvips" in variants:
            note(f"import {library}: {import_ms(statement):.0f} ms")
    for library, names in DISTRIBUTIONS.items():
        try:
            note(f"unpacked size of {library} ({', '.join(names)}): {unpacked_mb(names):.1f} MB")
        except metadata.PackageNotFoundError:
            note(f"unpacked size of {library}: not installed")
    pairs: dict[str, Any] = {"profiles": 5}
    with tempfile.TemporaryDirectory(prefix="bench-render-") as scratch:
        for megapixels, size in SIZES.items():
            note(f"{megapixels} MP: making the photo and its result")
            original, result = make_photo(size, Path(scratch))
            decoded_mb = size[0] * size[1] * 3 / 2**20
            figures = {}
            for variant in variants:
                note(f"{megapixels} MP: {variant}, {repeats} repeat(s)")
                figures[variant] = run_child(variant, original, result, repeats)
                note(f"{megapixels} MP: {variant}: {figures[variant]}")
            ours, naive = figures["backdrop"], figures["naive"]
            pairs.update(
                {
                    f"mp{megapixels}_cpu_ms_per_photo": ours["cpu_ms"],
                    f"mp{megapixels}_naive_cpu_ms_per_photo": naive["cpu_ms"],
                    f"mp{megapixels}_speed_ratio": round(naive["cpu_ms"] / ours["cpu_ms"], 2),
                    f"mp{megapixels}_wall_ms_per_photo": ours["ms"],
                    f"mp{megapixels}_naive_wall_ms_per_photo": naive["ms"],
                    f"mp{megapixels}_peak_extra_rss_mb": ours["peak_extra_rss_mb"],
                    f"mp{megapixels}_naive_peak_extra_rss_mb": naive["peak_extra_rss_mb"],
                    f"mp{megapixels}_decoded_photo_mb": decoded_mb,
                    f"mp{megapixels}_rss_vs_decoded": round(ours["peak_extra_rss_mb"] / decoded_mb, 2),
                }
            )
            if "pyvips" in figures:
                pairs[f"mp{megapixels}_pyvips_naive_cpu_ms_per_photo"] = figures["pyvips"]["cpu_ms"]
                pairs[f"mp{megapixels}_pyvips_naive_peak_extra_rss_mb"] = figures["pyvips"][
                    "peak_extra_rss_mb"
                ]
    emit("render", **pairs)


if __name__ == "__main__":
    main()
