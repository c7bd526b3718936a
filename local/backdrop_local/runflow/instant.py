"""``processing: "instant"``: results without the model, to measure what is around it.

An instant run fetches ``image_url`` exactly as a real run does (same rules, same failures), then
reads only the image header for the upright size (``processing.probe_size``: anything that is not
a JPEG, PNG or WebP, or is over 50 MP, fails with ``INPUT_UNREADABLE`` as in a real run; a corrupt
body behind a valid header passes) and answers a PNG of that size filled with the requested colour
(``pngfile.flat_png``). No decoding, segmentation or compositing. Output ``n > 0`` is the variant
``pngfile.with_variant`` describes.

With ``instant_output_bytes`` above 0 every output is padded (``pngfile.padded``) to exactly that
many bytes, still a valid PNG; a size that cannot be reached (below the natural size, or less
than 12 bytes above it) fails the run with ``PROCESSING_FAILED``.

It stays cheap by caching: the natural PNG per (size, colour) in memory (the last 64), and each
finished output file per (size, colour, n, bytes) on disk (the last 8); a run's outputs are hard
links to those files, so a thousand identical 200 MB outputs cost one 200 MB file and no copying.
Distinct outputs keep their disk space until the emulator stops, as real outputs do.

The run's ``output.timing`` is ``{"fetch_ms", "instant_ms", "total_ms"}``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from backdrop_local.runflow import pngfile
from backdrop_local.runflow.outputs import OutputDirectory
from backdrop_local.runflow.processing import Colour, ProcessingFailed, probe_size
from backdrop_local.runflow.store import OutputFile

PNG_CACHE_ENTRIES = 64
FILE_CACHE_ENTRIES = 8

Size = tuple[int, int]
Rgb = tuple[int, int, int]


class InstantResults:
    def __init__(self, outputs: OutputDirectory) -> None:
        self._outputs = outputs
        self._lock = threading.Lock()
        self._pngs: OrderedDict[tuple[Size, Rgb], bytes] = OrderedDict()
        self._files: OrderedDict[tuple[Size, Rgb, int, int], Path] = OrderedDict()

    def produce(
        self, run_id: str, image: bytes, colour: Colour, count: int, total_bytes: int
    ) -> list[OutputFile]:
        """Write the run's ``count`` outputs for the fetched ``image``; raises ProcessingFailed."""
        size = probe_size(image)
        rgb = (colour.red, colour.green, colour.blue)
        produced: list[OutputFile] = []
        for index in range(count):
            # One lock for building and linking: a build happens once per distinct output, two
            # workers asking for the same one must not both write 200 MB, and no file is evicted
            # between being found and being linked.
            with self._lock:
                written = self._outputs.link(run_id, index, self._file(size, rgb, index, total_bytes))
            produced.append(OutputFile(index=index, content_type="image/png", size=written))
        return produced

    def _file(self, size: Size, rgb: Rgb, index: int, total_bytes: int) -> Path:
        key = (size, rgb, index, total_bytes)
        cached = self._files.get(key)
        if cached is not None and cached.exists():
            self._files.move_to_end(key)
            return cached
        parts = pngfile.with_variant(self._png(size, rgb), index)
        if total_bytes:
            try:
                parts = pngfile.padded(parts, total_bytes)
            except pngfile.PaddingImpossible as exc:
                raise ProcessingFailed(
                    "PROCESSING_FAILED", f"instant_output_bytes={total_bytes}: {exc}", "processing"
                ) from exc
        (width, height), (red, green, blue) = size, rgb
        name = f"{width}x{height}-{red}-{green}-{blue}-{index}-{total_bytes}.png"
        path = self._outputs.scratch("_instant") / name
        partial = path.with_suffix(".part")
        with partial.open("wb") as out:
            for part in parts:
                out.write(part)
        partial.replace(path)
        self._files[key] = path
        while len(self._files) > FILE_CACHE_ENTRIES:
            # Runs that link the evicted file keep their copy; only the cache's name goes.
            _, evicted = self._files.popitem(last=False)
            evicted.unlink(missing_ok=True)
        return path

    def _png(self, size: Size, rgb: Rgb) -> bytes:
        key = (size, rgb)
        png = self._pngs.get(key)
        if png is None:
            png = pngfile.flat_png(size[0], size[1], rgb)
            self._pngs[key] = png
            while len(self._pngs) > PNG_CACHE_ENTRIES:
                self._pngs.popitem(last=False)
        else:
            self._pngs.move_to_end(key)
        return png
