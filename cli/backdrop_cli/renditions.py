"""A job's renditions as the pipeline records them: the job item's ``renditions``, a map from
rendition name to ``{key, width, height, format, bytes, verdict, reasons}`` (verdict ``pass``,
``warn`` or ``fail``). Read from the stored item, so that ``status``, ``report`` and ``render``
show every attribute the pipeline wrote."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from backdrop_cli.ui import table

VERDICTS = ("pass", "warn", "fail")


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Rendition:
    name: str
    key: str | None
    width: int | None
    height: int | None
    format: str | None
    bytes: int | None
    verdict: str
    reasons: tuple[str, ...]

    @classmethod
    def from_stored(cls, name: str, raw: Any) -> Rendition:
        # An entry that is not a map (never written so by the pipeline) still shows, as unknown.
        data: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        reasons = data.get("reasons")
        return cls(
            name=name,
            key=_text(data.get("key")),
            width=_int(data.get("width")),
            height=_int(data.get("height")),
            format=_text(data.get("format")),
            bytes=_int(data.get("bytes")),
            verdict=str(data.get("verdict") or "unknown"),
            reasons=tuple(str(r) for r in reasons) if isinstance(reasons, list | tuple) else (),
        )

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}" if self.width and self.height else "-"

    def doc(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "bytes": self.bytes,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
        }


def renditions_of(item: Mapping[str, Any] | None) -> dict[str, Rendition]:
    """The job's renditions by name (sorted), from its stored item; none when it has none."""
    stored = (item or {}).get("renditions")
    if not isinstance(stored, Mapping):
        return {}
    return {str(name): Rendition.from_stored(str(name), stored[name]) for name in sorted(stored)}


def renditions_doc(item: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {name: r.doc() for name, r in renditions_of(item).items()}


def count_verdicts(items: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per rendition name, how many jobs have it with each verdict (every verdict listed)."""
    counts: dict[str, Counter[str]] = {}
    for item in items:
        for name, rendition in renditions_of(item).items():
            counts.setdefault(name, Counter())[rendition.verdict] += 1
    return {
        name: {verdict: counter[verdict] for verdict in (*VERDICTS, *sorted(set(counter) - set(VERDICTS)))}
        for name, counter in sorted(counts.items())
    }


def renditions_table(renditions: Mapping[str, Rendition], bucket: str, title: str = "Renditions") -> Table:
    grid = table("name", "~key", "size", "format", ">bytes", "verdict", "~reasons", title=title)
    for r in renditions.values():
        grid.add_row(
            r.name,
            f"s3://{bucket}/{r.key}" if r.key else "-",
            r.size,
            r.format or "-",
            f"{r.bytes:,}" if r.bytes is not None else "-",
            r.verdict,
            "; ".join(r.reasons) or "-",
        )
    return grid


def verdicts_table(counts: Mapping[str, Mapping[str, int]]) -> Table:
    grid = table("rendition", ">pass", ">warn", ">fail", title="Renditions: verdicts per profile")
    for name, by_verdict in counts.items():
        grid.add_row(name, *(str(by_verdict.get(v, 0)) for v in VERDICTS))
    return grid
