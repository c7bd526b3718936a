"""Making a job's renditions, and judging its result: from its stored result and the exact source
version it was made from.

The product is found once per job (``backdrop.products``); that one comparison gives the quality
checks of the result (``backdrop.quality``, when the gate is on) and each rendition, drawn, encoded
and judged (``backdrop.renditions``). Nothing here writes: the copy worker writes what is made
under the source's result lease, as it writes the result itself. A rendition that cannot be made
(a padded one when no product was found) is an entry with verdict ``fail`` and its reason, and no
file. Only the copy worker imports this module: it loads Pillow and numpy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from backdrop.colours import parse_colour
from backdrop.jobs import Job
from backdrop.observability import count, logger
from backdrop.outputs import OutputCopyFailed
from backdrop.products import Comparison, Region, compare_region
from backdrop.profiles import Spec, fingerprint
from backdrop.quality import assess
from backdrop.renditions import make
from backdrop.services import Services

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "AVIF": "avif"}
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "AVIF": "image/avif"}


@dataclass(frozen=True)
class Made:
    """One rendition: its encoded file (None: it could not be made) and its entry on the job (the
    ``key`` is set by whoever writes the file)."""

    name: str
    data: bytes | None
    entry: dict[str, Any]

    @property
    def extension(self) -> str:
        return EXTENSIONS[str(self.entry["format"])]

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[str(self.entry["format"])]


def reusable(configured: Mapping[str, Spec], earlier: Job) -> dict[str, dict[str, Any]]:
    """The earlier job's rendition entries made exactly as configured now (same name, same spec)."""
    return {
        name: entry
        for name, entry in earlier.renditions.items()
        if name in configured and entry.get("spec") == fingerprint(configured[name])
    }


def _read(services: Services, params: Mapping[str, Any], what: str) -> bytes:
    try:
        answer = services.s3.get_object(**params)
        return answer["Body"].read()
    except ClientError as exc:
        raise OutputCopyFailed(f"reading {what} to render from failed: {exc}") from exc


@dataclass(frozen=True)
class Judged:
    """What one comparison of a result with its original gave: the renditions made, and the
    quality checks (None: not assessed, the gate is off)."""

    made: list[Made]
    quality: dict[str, Any] | None


def make_all(
    services: Services,
    job: Job,
    result_key: str,
    specs: Mapping[str, Spec],
    *,
    deadline: float,
    keep_lease: Callable[[], None],
) -> list[Made]:
    """Every rendition in ``specs``, from ``result_key`` and the job's source version."""
    return judge(
        services, job, result_key, specs, assessed=False, deadline=deadline, keep_lease=keep_lease
    ).made


def judge(
    services: Services,
    job: Job,
    result_key: str,
    specs: Mapping[str, Spec],
    *,
    assessed: bool,
    deadline: float,
    keep_lease: Callable[[], None],
) -> Judged:
    """Every rendition in ``specs`` and (``assessed``) the quality checks, from ``result_key`` and
    the job's source version, decoded and compared once. Reads nothing when there is nothing to do."""
    if not specs and not assessed:
        return Judged([], None)
    result = _read(services, {"Bucket": services.settings.results_bucket, "Key": result_key}, "the result")
    source = job.upload().object_params()
    if not job.upload().versioned and job.source_etag:
        source["IfMatch"] = job.source_etag  # the very bytes the run was made from
    original = _read(services, source, "the original")
    try:
        # Only the product's region stays at full size: memory stays near one decoded photo.
        decoded, found = compare_region(result, original, parse_colour(job.color))
    except (ValueError, OSError) as exc:  # another shape than the original, or not decodable
        reason = f"the result cannot be compared with its original: {exc}"
        # A result nobody can check is doubtful by definition.
        quality = {"verdict": "doubt", "reasons": [reason], "checks": {}} if assessed else None
        return Judged([_not_made(name, spec, reason) for name, spec in specs.items()], quality)
    del result, original
    quality = assess(found) if assessed else None
    made: list[Made] = []
    for name, spec in specs.items():
        if time.monotonic() >= deadline:
            raise OutputCopyFailed("no time left to make the renditions")
        keep_lease()
        made.append(_make_one(name, spec, decoded, found))
    return Judged(made, quality)


def _make_one(name: str, spec: Spec, decoded: Region, found: Comparison) -> Made:
    try:
        data, verdict = make(spec, decoded, found)
    except ValueError as exc:  # nothing to place: a padded rendition without a product
        return _not_made(name, spec, str(exc))
    count(f"Renditions{verdict['verdict'].capitalize()}")
    return Made(name, data, {"key": None, **verdict, "spec": fingerprint(spec)})


def _not_made(name: str, spec: Spec, reason: str) -> Made:
    """A rendition that cannot be made: verdict ``fail`` with the reason, and no file."""
    logger.warning("Rendition not made", extra={"rendition": name, "reason": reason})
    count("RenditionsFailed")
    entry = {"key": None, "width": None, "height": None, "format": spec.format, "bytes": 0}
    return Made(name, None, {**entry, "verdict": "fail", "reasons": [reason], "spec": fingerprint(spec)})
