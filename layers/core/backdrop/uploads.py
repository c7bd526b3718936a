"""Uploaded photos: which objects are ours to process, what they are, and where results go."""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_plus

# Bytes read from the start of an object to decide its type; enough for every signature below.
SNIFF_BYTES = 32


class ImageType(StrEnum):
    JPEG = "image/jpeg"
    PNG = "image/png"
    WEBP = "image/webp"


@dataclass(frozen=True)
class UploadRef:
    """One object version as an S3 notification names it (key already URL-decoded)."""

    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    size: int | None

    def object_params(self) -> dict[str, Any]:
        """S3 parameters naming exactly this object version (``"null"`` is an unversioned bucket)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if self.version_id and self.version_id != "null":
            params["VersionId"] = self.version_id
        return params

    @property
    def version_tag(self) -> str:
        """What distinguishes this upload from another at the same key."""
        if self.version_id and self.version_id != "null":
            return f"v:{self.version_id}"
        if self.etag:
            return f"e:{self.etag.strip('"')}"
        return "-"


def is_folder_marker(key: str, size: int | None) -> bool:
    """Console "create folder" writes a zero-byte object whose key ends in a slash."""
    return key.endswith("/")


def in_upload_prefix(key: str, prefix: str) -> bool:
    return key.startswith(prefix)


def sniff_image_type(head: bytes) -> ImageType | None:
    """The image type by its first bytes (never by file name); None if not JPEG, PNG or WebP."""
    if head.startswith(b"\xff\xd8\xff"):
        return ImageType.JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ImageType.PNG
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ImageType.WEBP
    return None


def job_id_for(upload: UploadRef, colour_tag: str) -> str:
    """Deterministic job identity: bucket + key + version (or ETag) + colour.

    A redelivered notification for the same object version yields the same id, so the
    conditional write that creates the job is what stops a second paid run.
    """
    material = "\x1f".join((upload.bucket, upload.key, upload.version_tag, colour_tag))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


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


MAX_KEY_BYTES = 1024  # S3's limit on an object key


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


def decode_event_key(raw: str) -> str:
    """Keys in S3 notifications are URL-encoded with ``+`` for space (``quote`` or ``quote_plus``)."""
    return unquote_plus(raw)
