"""Where a job's outputs land in the results bucket."""

from __future__ import annotations

import pytest

from backdrop.results import MAX_KEY_BYTES, extension_for, result_key

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
