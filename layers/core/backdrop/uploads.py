"""Uploaded photos: which objects are ours to process, what they are, and which version is current."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

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
        if self.versioned:
            params["VersionId"] = self.version_id
        return params

    @property
    def versioned(self) -> bool:
        return bool(self.version_id) and self.version_id != "null"

    @property
    def version(self) -> str:
        """The version id, or the ETag on an unversioned bucket: what a result records as its source."""
        return self.version_tag[2:] if self.version_tag != "-" else ""

    def same_version(self, other: UploadRef) -> bool:
        if self.versioned or other.versioned:
            return self.version_id == other.version_id
        return (self.etag or "").strip('"') == (other.etag or "").strip('"')

    @property
    def version_tag(self) -> str:
        """What distinguishes this upload from another at the same key."""
        if self.versioned:
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


def decode_event_key(raw: str) -> str:
    """Keys in S3 notifications are URL-encoded with ``+`` for space (``quote`` or ``quote_plus``)."""
    return unquote_plus(raw)


@dataclass(frozen=True)
class SourceObject:
    """An object version as S3 describes it: identity, user metadata and (if read) its first bytes."""

    upload: UploadRef
    metadata: Mapping[str, str] = field(default_factory=dict)
    head: bytes | None = None


_MISSING = ("404", "NoSuchKey", "NoSuchVersion")


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _MISSING


def read_source(
    s3: S3Client, bucket: str, key: str, *, version_id: str | None = None, sniff: bool = True
) -> SourceObject | None:
    """The object (the current version, or the one named), None if it does not exist (deleted, or
    only a delete marker is left). With ``sniff``, one ranged GET returns its identity, metadata and
    first bytes together; an empty object cannot be ranged, so it costs a HEAD instead."""
    params: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version_id and version_id != "null":
        params["VersionId"] = version_id
    answer: Mapping[str, Any]
    head: bytes | None = None
    try:
        if sniff:
            try:
                got = s3.get_object(**params, Range=f"bytes=0-{SNIFF_BYTES - 1}")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                    raise
                answer = s3.head_object(**params)
                head = b""
            else:
                head = got["Body"].read(SNIFF_BYTES)
                got["Body"].close()
                answer = got
        else:
            answer = s3.head_object(**params)
    except ClientError as exc:
        if _missing(exc):
            return None
        raise
    size = _total_size(answer)
    return SourceObject(
        upload=UploadRef(bucket, key, answer.get("VersionId"), answer.get("ETag"), size),
        metadata={k.lower(): v for k, v in answer.get("Metadata", {}).items()},
        head=head,
    )


def _total_size(answer: Mapping[str, Any]) -> int:
    """Whole object size: from ``Content-Range: bytes 0-31/12345`` when the GET was ranged."""
    content_range = str(answer.get("ContentRange") or "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    return int(answer.get("ContentLength", 0))
