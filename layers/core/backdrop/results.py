"""Result objects: where a job's outputs go in the results bucket, and what is recorded on them."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

from backdrop.runs import OutputRef

_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}
MAX_KEY_BYTES = 1024  # S3's limit on an object key


def extension_for(content_type: str | None, url_path: str) -> str:
    """File extension of an output: from its content type, else from its URL path."""
    if content_type:
        ext = _EXTENSIONS.get(content_type.split(";")[0].strip().lower())
        if ext:
            return ext
    ext = posixpath.splitext(url_path)[1].lower()
    if ext in (".png", ".jpg", ".jpeg", ".webp"):
        return ".jpg" if ext == ".jpeg" else ext
    return ".png"


def result_key(
    source_key: str, upload_prefix: str, results_prefix: str, extension: str, index: int, job_id: str
) -> str:
    """Mirror the source key under the results prefix with the output's extension.

    ``uploads/shoes/red.jpg`` → ``results/shoes/red.png``; extra outputs of one run get ``-2``, ``-3``.
    A key that would exceed S3's 1024-byte limit is placed under ``_long-keys/<job_id>`` instead
    (the job record keeps the source key, so nothing is ambiguous).
    """
    relative = source_key[len(upload_prefix) :] if source_key.startswith(upload_prefix) else source_key
    stem, _ = posixpath.splitext(relative)
    if not stem or stem.endswith("/"):
        stem = relative
    suffix = "" if index == 0 else f"-{index + 1}"
    key = f"{results_prefix}{stem}{suffix}{extension}"
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        key = f"{results_prefix}_long-keys/{job_id}{suffix}{extension}"
    return key


def output_key(
    output: OutputRef, index: int, *, source_key: str, upload_prefix: str, results_prefix: str, job_id: str
) -> str:
    extension = extension_for(output.content_type, urlsplit(output.url).path)
    return result_key(source_key, upload_prefix, results_prefix, extension, index, job_id)


def result_metadata(
    *, job_id: str, run_id: str, source_bucket: str, source_key: str, source_version: str, colour: str
) -> Mapping[str, str]:
    """User metadata on every result object: which job, run and source version wrote it."""
    return {
        "job-id": job_id,
        "run-id": run_id,
        "source-bucket": source_bucket,
        # Keys may be any unicode; S3 metadata must be ASCII.
        "source-key": quote(source_key, safe="/"),
        "source-version": source_version,
        "background-color": colour,
    }
