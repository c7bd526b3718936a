"""Which uploads are processed, what they are, and where their results land."""

from __future__ import annotations

import pytest

from backdrop.uploads import (
    MAX_KEY_BYTES,
    ImageType,
    UploadRef,
    decode_event_key,
    extension_for,
    in_upload_prefix,
    is_folder_marker,
    job_id_for,
    result_key,
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


# --- result keys ----------------------------------------------------------------------------


def test_result_key_mirrors_the_path_and_swaps_extension() -> None:
    assert (
        result_key("uploads/shoes/red.jpg", "uploads/", "results/", ".png", 0, "j") == "results/shoes/red.png"
    )


def test_result_key_extra_outputs_are_numbered() -> None:
    keys = [result_key("uploads/shoes/red.jpg", "uploads/", "results/", ".png", i, "j") for i in range(3)]
    assert keys == ["results/shoes/red.png", "results/shoes/red-2.png", "results/shoes/red-3.png"]


def test_result_key_without_extension() -> None:
    assert (
        result_key("uploads/shoes/red", "uploads/", "results/", ".webp", 0, "j") == "results/shoes/red.webp"
    )


def test_result_key_dotted_folder_is_not_an_extension() -> None:
    assert result_key("uploads/a.b/c", "uploads/", "results/", ".png", 0, "j") == "results/a.b/c.png"
    assert result_key("uploads/a.b/c.jpeg", "uploads/", "results/", ".png", 1, "j") == "results/a.b/c-2.png"


def test_result_key_dotfile_keeps_its_name() -> None:
    assert result_key("uploads/x/.hidden", "uploads/", "results/", ".png", 0, "j") == "results/x/.hidden.png"


def test_result_key_outside_the_prefix_is_kept_whole() -> None:
    assert (
        result_key("elsewhere/red.jpg", "uploads/", "results/", ".png", 0, "j") == "results/elsewhere/red.png"
    )


def test_result_key_too_long_falls_back_under_long_keys() -> None:
    source = "uploads/" + "d/" * 300 + "x" * 500 + ".jpg"
    job_id = "0123456789abcdef0123456789abcdef"
    key = result_key(source, "uploads/", "results/", ".png", 0, job_id)
    assert key == f"results/_long-keys/{job_id}.png"
    assert (
        result_key(source, "uploads/", "results/", ".png", 1, job_id) == f"results/_long-keys/{job_id}-2.png"
    )


def test_result_key_counts_bytes_not_characters() -> None:
    # 400 three-byte characters: 400 characters, 1200 bytes once encoded.
    source = "uploads/" + "写" * 400 + ".jpg"
    assert len(f"results/{'写' * 400}.png") < MAX_KEY_BYTES
    assert result_key(source, "uploads/", "results/", ".png", 0, "j1") == "results/_long-keys/j1.png"


def test_result_key_at_the_limit_is_kept() -> None:
    stem = "x" * (MAX_KEY_BYTES - len("results/") - len(".png"))
    key = result_key(f"uploads/{stem}.jpg", "uploads/", "results/", ".png", 0, "j")
    assert key == f"results/{stem}.png"
    assert len(key.encode()) == MAX_KEY_BYTES


@pytest.mark.parametrize(
    ("content_type", "path", "ext"),
    [
        ("image/png", "/out/result.webp", ".png"),
        ("image/webp; charset=binary", "/x", ".webp"),
        ("IMAGE/JPEG", "/x", ".jpg"),
        (None, "/out/result.webp", ".webp"),
        (None, "/out/result.JPEG", ".jpg"),
        ("application/octet-stream", "/out/result.jpg", ".jpg"),
        (None, "/out/result.exe", ".png"),
        (None, "/out/result", ".png"),
    ],
)
def test_extension_for(content_type: str | None, path: str, ext: str) -> None:
    assert extension_for(content_type, path) == ext
