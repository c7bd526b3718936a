"""Content identity: the same bytes give the same digest whichever way S3 holds them, and other
bytes another digest; S3's stored full-object SHA-256 is used when present, never a composite one
or an ETag."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from backdrop import identity
from backdrop.identity import content_digest, stored_sha256
from backdrop.uploads import UploadRef

BUCKET = "identity-test"


def _bucket(s3: Any, *, versioned: bool) -> None:
    s3.create_bucket(Bucket=BUCKET)
    if versioned:
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})


def _ref(answer: dict[str, Any], key: str, size: int) -> UploadRef:
    return UploadRef(BUCKET, key, answer.get("VersionId"), answer.get("ETag"), size)


def test_plain_and_checksummed_uploads_of_the_same_bytes_share_a_digest(s3: Any) -> None:
    _bucket(s3, versioned=True)
    body = bytes(range(256)) * 9000  # 2.3 MB: several streamed chunks
    plain = s3.put_object(Bucket=BUCKET, Key="a.jpg", Body=body)
    checked = s3.put_object(Bucket=BUCKET, Key="b.jpg", Body=body, ChecksumAlgorithm="SHA256")
    other = s3.put_object(Bucket=BUCKET, Key="c.jpg", Body=body[:-1] + b"\x00")
    expected = hashlib.sha256(body).hexdigest()
    assert content_digest(s3, _ref(plain, "a.jpg", len(body))) == expected
    assert content_digest(s3, _ref(checked, "b.jpg", len(body))) == expected
    assert content_digest(s3, _ref(other, "c.jpg", len(body))) != expected


def test_the_notified_version_is_hashed_not_the_newest(s3: Any) -> None:
    _bucket(s3, versioned=True)
    first = s3.put_object(Bucket=BUCKET, Key="k.jpg", Body=b"first version")
    s3.put_object(Bucket=BUCKET, Key="k.jpg", Body=b"second version")
    assert content_digest(s3, _ref(first, "k.jpg", 13)) == hashlib.sha256(b"first version").hexdigest()


def test_a_stored_checksum_spares_reading_the_object(s3: Any, monkeypatch: Any) -> None:
    _bucket(s3, versioned=False)
    body = b"\xff\xd8\xff" + b"x" * 5000
    answer = s3.put_object(Bucket=BUCKET, Key="s.jpg", Body=body, ChecksumAlgorithm="SHA256")

    def no_stream(*args: Any) -> str:
        raise AssertionError("the object was read although S3 stores its SHA-256")

    monkeypatch.setattr(identity, "streamed_sha256", no_stream)
    assert content_digest(s3, _ref(answer, "s.jpg", len(body))) == hashlib.sha256(body).hexdigest()


def test_only_a_full_object_sha256_counts_as_identity() -> None:
    digest = hashlib.sha256(b"pixels").digest()
    encoded = base64.b64encode(digest).decode()
    assert stored_sha256({"ChecksumSHA256": encoded}) == digest.hex()
    assert stored_sha256({"ChecksumSHA256": encoded, "ChecksumType": "FULL_OBJECT"}) == digest.hex()
    assert stored_sha256({"ChecksumSHA256": f"{encoded}-3"}) is None  # composite: depends on parts
    assert stored_sha256({"ChecksumSHA256": encoded, "ChecksumType": "COMPOSITE"}) is None
    assert stored_sha256({"ChecksumCRC64NVME": "AAAAAAAAAAA="}) is None
    assert stored_sha256({"ChecksumSHA256": "not base64!"}) is None
    assert stored_sha256({"ETag": '"d41d8cd98f00b204e9800998ecf8427e-2"'}) is None
