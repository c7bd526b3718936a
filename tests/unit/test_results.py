"""Where a job's outputs land in the results bucket: one folder per source key, and never the same
key for two different sources, whatever their names."""

from __future__ import annotations

import hashlib
import itertools
import unicodedata

import pytest

from backdrop.results import (
    MAX_KEY_BYTES,
    MAX_NAME_BYTES,
    extension_of,
    names_source,
    rendition_key,
    rendition_name,
    result_folder,
    result_key,
    result_metadata,
)
from backdrop.uploads import ImageType

UP, RES = "uploads/", "results/"


def key(source: str, extension: str = "png", index: int = 0) -> str:
    return result_key(source, UP, RES, extension, index)


# --- the layout -----------------------------------------------------------------------------


def test_one_folder_per_source_key_with_the_whole_name() -> None:
    assert key("uploads/shoes/red.jpg") == "results/shoes/red.jpg/result.png"
    assert result_folder("uploads/shoes/red.jpg", UP, RES) == "results/shoes/red.jpg/"


def test_extra_outputs_are_numbered_in_the_same_folder() -> None:
    keys = [key("uploads/shoes/red.jpg", "png", i) for i in range(3)]
    assert keys == [
        "results/shoes/red.jpg/result.png",
        "results/shoes/red.jpg/result-2.png",
        "results/shoes/red.jpg/result-3.png",
    ]


def test_renditions_have_their_own_names_in_the_same_folder() -> None:
    assert rendition_name("amazon", "jpg") == "rendition-amazon.jpg"
    assert (
        rendition_key("uploads/shoes/red.jpg", UP, RES, "amazon", "jpg")
        == "results/shoes/red.jpg/rendition-amazon.jpg"
    )
    assert rendition_key("uploads/shoes/red.jpg", UP, RES, "amazon", "jpg") != key(
        "uploads/shoes/red.jpg", "jpg"
    )


@pytest.mark.parametrize("name", ["", "Amazon", "a/b", "-x", "a.b", "x" * 65, "é"])
def test_rendition_names_are_checked(name: str) -> None:
    with pytest.raises(ValueError, match="rendition name"):
        rendition_name(name, "png")


@pytest.mark.parametrize("extension", ["", ".png", "PNG", "p/g", "toolongext"])
def test_extensions_are_checked(extension: str) -> None:
    with pytest.raises(ValueError, match="extension"):
        key("uploads/a.jpg", extension)


def test_extension_follows_the_image_type() -> None:
    assert [extension_of(kind) for kind in ImageType] == ["jpg", "png", "webp"]


def test_same_stem_different_extensions_get_different_folders() -> None:
    assert key("uploads/x/red.jpg") == "results/x/red.jpg/result.png"
    assert key("uploads/x/red.png") == "results/x/red.png/result.png"


def test_second_output_never_meets_a_source_named_like_it() -> None:
    assert key("uploads/x/pair.jpg", "png", 1) == "results/x/pair.jpg/result-2.png"
    assert key("uploads/x/pair-2.jpg") == "results/x/pair-2.jpg/result.png"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("uploads/shoes/red", "results/shoes/red/result.png"),  # no extension
        ("uploads/a.b/c.d.e.jpg", "results/a.b/c.d.e.jpg/result.png"),  # several dots
        ("uploads/x/.hidden", "results/x/.hidden/result.png"),
        ("uploads/x/red.jpg/", "results/x/red.jpg//result.png"),  # a key ending in a slash
        ("uploads/summer sale/red shoe (1).png", "results/summer sale/red shoe (1).png/result.png"),
    ],
)
def test_the_source_key_is_kept_whole(source: str, expected: str) -> None:
    assert key(source) == expected


def test_unicode_spellings_are_never_normalised_together() -> None:
    nfc = unicodedata.normalize("NFC", "uploads/café/crème.jpg")
    nfd = unicodedata.normalize("NFD", "uploads/café/crème.jpg")
    assert nfc != nfd
    assert key(nfc) == f"results/{nfc[len(UP) :]}/result.png"
    assert key(nfd) == f"results/{nfd[len(UP) :]}/result.png"
    assert key(nfc) != key(nfd)


def test_sources_outside_the_upload_prefix_have_their_own_folder() -> None:
    assert key("elsewhere/red.jpg") == "results/_outside-prefix/elsewhere/red.jpg/result.png"
    # The same relative name inside the prefix does not meet it.
    assert key("uploads/elsewhere/red.jpg") == "results/elsewhere/red.jpg/result.png"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # A key that would land in a reserved folder gets one more leading underscore.
        ("uploads/_long-keys/abc/x.jpg", "results/__long-keys/abc/x.jpg/result.png"),
        ("uploads/__long-keys/x.jpg", "results/___long-keys/x.jpg/result.png"),
        (
            "uploads/_outside-prefix/elsewhere/red.jpg",
            "results/__outside-prefix/elsewhere/red.jpg/result.png",
        ),
        ("uploads/_long-keys-2024/x.jpg", "results/__long-keys-2024/x.jpg/result.png"),
        # A key that has a reserved file name as a folder (or ends in one).
        ("uploads/x/red.jpg/result.png", "results/x/red.jpg/_result.png/result.png"),
        ("uploads/x/red.jpg/_result.png", "results/x/red.jpg/__result.png/result.png"),
        ("uploads/x/red.jpg/result-2.png/y.jpg", "results/x/red.jpg/_result-2.png/y.jpg/result.png"),
        ("uploads/x/rendition-amazon.jpg", "results/x/_rendition-amazon.jpg/result.png"),
        # Names that only look alike are left as they are.
        ("uploads/x/results.png", "results/x/results.png/result.png"),
        ("uploads/x/result", "results/x/result/result.png"),
        ("uploads/_x/long-keys/a.jpg", "results/_x/long-keys/a.jpg/result.png"),
    ],
)
def test_names_that_look_reserved_are_escaped(source: str, expected: str) -> None:
    assert key(source) == expected


def test_too_long_keys_go_under_long_keys_by_their_hash() -> None:
    source = "uploads/" + "d/" * 300 + "x" * 500 + ".jpg"
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert key(source) == f"results/_long-keys/{digest}/result.png"
    assert key(source, "png", 1) == f"results/_long-keys/{digest}/result-2.png"
    assert (
        rendition_key(source, UP, RES, "a" * 64, "webp")
        == f"results/_long-keys/{digest}/rendition-{'a' * 64}.webp"
    )


def test_long_keys_count_bytes_not_characters() -> None:
    # 400 three-byte characters: 400 characters, 1200 bytes once encoded.
    source = "uploads/" + "写" * 400 + ".jpg"
    assert len(f"results/{'写' * 400}.jpg/result.png") < MAX_KEY_BYTES
    assert key(source).startswith("results/_long-keys/")


def test_a_folder_with_room_for_every_name_is_kept() -> None:
    stem = "x" * (MAX_KEY_BYTES - MAX_NAME_BYTES - len("results/") - len("/"))
    assert result_folder(f"uploads/{stem}", UP, RES) == f"results/{stem}/"
    assert result_folder(f"uploads/{stem}y", UP, RES).startswith("results/_long-keys/")
    # The longest name Backdrop writes fits in the room kept.
    longest = rendition_key(f"uploads/{stem}", UP, RES, "r" * 64, "webp")
    assert len(longest.encode()) <= MAX_KEY_BYTES


# --- injectivity over tricky names ------------------------------------------------------------

PIECES = [
    "",
    "a",
    "red.jpg",
    "red.png",
    "red",
    "pair.jpg",
    "pair-2.jpg",
    "a.b.c",
    ".hidden",
    "result.png",
    "_result.png",
    "result-2.png",
    "rendition-x.jpg",
    "_long-keys",
    "__long-keys",
    "_outside-prefix",
    unicodedata.normalize("NFC", "é"),
    unicodedata.normalize("NFD", "é"),
]


def _sources() -> list[str]:
    relative = ["/".join(p) for n in (1, 2, 3) for p in itertools.product(PIECES, repeat=n)]
    sources = {UP + r for r in relative} | {"elsewhere/" + r for r in relative} | set(relative)
    sources |= {UP + "d/" * 300 + "x" * 500 + r for r in PIECES}  # long keys
    return sorted(sources)


def test_no_two_sources_share_a_result_key() -> None:
    names = [("result", i, ext) for i in range(2) for ext in ("png", "jpg")] + [("rendition", "x", "jpg")]
    owner: dict[str, str] = {}
    folders: set[str] = set()
    for source in _sources():
        folder = result_folder(source, UP, RES)
        assert folder.endswith("/") and folder.startswith(RES)
        folders.add(folder)
        for kind, which, ext in names:
            if kind == "result":
                assert isinstance(which, int)
                k = result_key(source, UP, RES, ext, which)
            else:
                assert isinstance(which, str)
                k = rendition_key(source, UP, RES, which, ext)
            assert k.startswith(folder) and "/" not in k[len(folder) :]
            assert len(k.encode()) <= MAX_KEY_BYTES
            assert owner.setdefault(k, source) == source, f"{source!r} and {owner[k]!r} share {k!r}"
    assert len(folders) == len(_sources())
    # No result object is also the folder of another source (a sync to disk would break on it).
    assert not any(k + "/" in folders for k in owner)


# --- metadata -----------------------------------------------------------------------------------


def test_metadata_names_the_source_exactly() -> None:
    nfc = unicodedata.normalize("NFC", "uploads/café.jpg")
    nfd = unicodedata.normalize("NFD", "uploads/café.jpg")
    metadata = result_metadata(
        job_id="j", run_id="r", source_bucket="b", source_key=nfc, source_version="v", colour="1,2,3"
    )
    assert metadata["source-key"] == "uploads/caf%C3%A9.jpg"
    assert names_source(metadata, "b", nfc)
    assert not names_source(metadata, "b", nfd)
    assert not names_source(metadata, "other-bucket", nfc)
    assert not names_source({}, "b", nfc)
    assert names_source({"Source-Bucket": "b", "Source-Key": "uploads/caf%C3%A9.jpg"}, "b", nfc)
