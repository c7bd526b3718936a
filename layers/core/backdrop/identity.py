"""Content identity: what an upload's pixels are, as a SHA-256 digest of the object's bytes.

Two uploads with the same digest hold the same bytes (a SHA-256 collision is not an accident that
happens), so the result of one is the result of the other for the same colour. The digest is:
- S3's own full-object SHA-256 checksum when S3 stores one (an upload sent with
  ``ChecksumAlgorithm=SHA256``, or a multipart upload with a ``FULL_OBJECT`` SHA-256): one HEAD, no
  bytes read. That value is, by definition, the SHA-256 of the whole object, so both ways give the
  same digest for the same bytes;
- otherwise the object read once, streamed through SHA-256 in fixed-size chunks (constant memory).

Never the ETag: a multipart upload's ETag depends on its part sizes (the same bytes uploaded twice
get two ETags), and a KMS-encrypted object's ETag is not a digest of its bytes at all. Nor a
composite checksum (``<digest>-<parts>``): it too depends on the part sizes. Nor S3's default
CRC64NVME: 64 bits are a checksum against transmission errors, not an identity.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from backdrop.uploads import UploadRef

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Streamed in chunks of this size: memory stays flat whatever the photo's size.
CHUNK_BYTES = 1024 * 1024
DIGEST_ALGORITHM = "sha256"


def stored_sha256(answer: Mapping[str, Any]) -> str | None:
    """The full-object SHA-256 S3 stores for an object (from a HEAD or GET with checksum mode on),
    as lowercase hex, or None when S3 has none, or only a composite (per-part) one."""
    value = answer.get("ChecksumSHA256")
    if not isinstance(value, str) or not value:
        return None
    kind = answer.get("ChecksumType")
    if kind not in (None, "FULL_OBJECT") or "-" in value:
        return None  # COMPOSITE: a checksum of the parts' checksums, "<base64>-<parts>"
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == hashlib.sha256().digest_size else None


def streamed_sha256(s3: S3Client, upload: UploadRef) -> str:
    """SHA-256 of exactly this object version, read once in ``CHUNK_BYTES`` chunks."""
    params = upload.object_params()
    if not upload.versioned and upload.etag:
        params["IfMatch"] = upload.etag  # unversioned: the bytes hashed are the bytes notified
    body = s3.get_object(**params)["Body"]
    digest = hashlib.sha256()
    try:
        for chunk in body.iter_chunks(CHUNK_BYTES):
            digest.update(chunk)
    finally:
        body.close()
    return digest.hexdigest()


def content_digest(s3: S3Client, upload: UploadRef) -> str:
    """The SHA-256 (hex) of the object version's bytes: S3's stored checksum if it has a full-object
    one, else computed by streaming the object once."""
    params = upload.object_params()
    if not upload.versioned and upload.etag:
        params["IfMatch"] = upload.etag
    stored = stored_sha256(s3.head_object(**params, ChecksumMode="ENABLED"))
    return stored if stored is not None else streamed_sha256(s3, upload)
