"""Which uploads are processed, what they are, and which job each version is."""

from __future__ import annotations

import pytest

from backdrop.uploads import (
    ImageType,
    UploadRef,
    decode_event_key,
    in_upload_prefix,
    is_folder_marker,
    job_id_for,
    sniff_image_type,
)

# --- keys in S3 notifications -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("uploads/summer+sale/red+shoe.jpg", "uploads/summer sale/red shoe.jpg"),
        ("uploads/summer%20sale/red.jpg", "uploads/summer sale/red.jpg"),
        ("uploads/a%2Bb.jpg", "uploads/a+b.jpg"),
        ("uploads/caf%C3%A9/%E5%86%99%E7%9C%9F.png", "uploads/café/写真.png"),
        ("uploads/100%25.png", "uploads/100%.png"),
        ("uploads/plain.webp", "uploads/plain.webp"),
    ],
)
def test_decode_event_key(raw: str, key: str) -> None:
    assert decode_event_key(raw) == key


def test_folder_markers() -> None:
    assert is_folder_marker("uploads/shoes/", 0)
    assert is_folder_marker("uploads/", 0)
    assert not is_folder_marker("uploads/shoes/red.jpg", 0)  # an empty file is not a folder
    assert not is_folder_marker("uploads/shoes", 0)


def test_upload_prefix() -> None:
    assert in_upload_prefix("uploads/a.jpg", "uploads/")
    assert not in_upload_prefix("results/a.png", "uploads/")
    assert not in_upload_prefix("uploads-old/a.jpg", "uploads/")


# --- sniffing -------------------------------------------------------------------------------

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + b"\x00" * 20
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 16
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 16


@pytest.mark.parametrize(
    ("head", "kind"), [(JPEG, ImageType.JPEG), (PNG, ImageType.PNG), (WEBP, ImageType.WEBP)]
)
def test_sniff_images(head: bytes, kind: ImageType) -> None:
    assert sniff_image_type(head) is kind


@pytest.mark.parametrize(
    "head",
    [
        b"hello, this is a text file\n",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
        b"<svg xmlns='http://www.w3.org/2000/svg'></svg>",
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00",
        b"\x89PNG\r\n",  # PNG signature cut short
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # RIFF, but audio
        b"RIFF\x24\x00\x00",  # RIFF cut before the form type
        b"",
    ],
)
def test_sniff_refuses_non_images(head: bytes) -> None:
    assert sniff_image_type(head) is None


def test_sniff_ignores_what_the_name_claims() -> None:
    # Only the bytes count: a PNG body is PNG whatever the key says, text is never an image.
    assert sniff_image_type(PNG) is ImageType.PNG
    assert sniff_image_type(b"not really a jpeg") is None


# --- job identity ---------------------------------------------------------------------------

BASE = UploadRef("uploads-bucket", "uploads/shoes/red.jpg", "v1", '"etag-1"', 1000)


def test_job_id_is_deterministic() -> None:
    again = UploadRef("uploads-bucket", "uploads/shoes/red.jpg", "v1", '"etag-1"', 1000)
    assert job_id_for(BASE, "255,255,255") == job_id_for(again, "255,255,255")
    assert len(job_id_for(BASE, "255,255,255")) == 32


@pytest.mark.parametrize(
    ("other", "colour"),
    [
        (UploadRef("uploads-bucket", "uploads/shoes/red.jpg", "v2", '"etag-1"', 1000), "255,255,255"),
        (UploadRef("other-bucket", "uploads/shoes/red.jpg", "v1", '"etag-1"', 1000), "255,255,255"),
        (UploadRef("uploads-bucket", "uploads/shoes/blue.jpg", "v1", '"etag-1"', 1000), "255,255,255"),
        (BASE, "0,0,0"),
    ],
)
def test_job_id_differs(other: UploadRef, colour: str) -> None:
    assert job_id_for(other, colour) != job_id_for(BASE, "255,255,255")


def test_job_id_uses_etag_without_versioning() -> None:
    a = UploadRef("b", "uploads/x.jpg", None, '"etag-1"', 1)
    b = UploadRef("b", "uploads/x.jpg", "null", '"etag-2"', 1)  # "null": unversioned bucket
    same_as_a = UploadRef("b", "uploads/x.jpg", "null", "etag-1", 1)  # quotes do not matter
    assert job_id_for(a, "1,2,3") != job_id_for(b, "1,2,3")
    assert job_id_for(a, "1,2,3") == job_id_for(same_as_a, "1,2,3")
    assert a.version_tag == "e:etag-1"
    assert UploadRef("b", "k", "abc", '"e"', 1).version_tag == "v:abc"
    assert UploadRef("b", "k", None, None, 1).version_tag == "-"


def test_field_boundaries_do_not_collide() -> None:
    # "ab" + "c" must not be the same material as "a" + "bc".
    one = UploadRef("ab", "c", "v", None, 1)
    two = UploadRef("a", "bc", "v", None, 1)
    assert job_id_for(one, "1,2,3") != job_id_for(two, "1,2,3")


def test_same_version_compares_version_ids_or_etags() -> None:
    a = UploadRef("b", "k", "v1", '"e1"', 1)
    assert a.same_version(UploadRef("b", "k", "v1", '"other"', 2))
    assert not a.same_version(UploadRef("b", "k", "v2", '"e1"', 1))
    unversioned = UploadRef("b", "k", None, '"e1"', 1)
    assert unversioned.same_version(UploadRef("b", "k", "null", "e1", 1))
    assert not unversioned.same_version(UploadRef("b", "k", None, '"e2"', 1))
    assert a.version == "v1" and unversioned.version == "e1"
