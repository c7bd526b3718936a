"""Quality checks: good results pass, the four doubtful kinds are caught, a photo already on the
colour is not doubtful for that reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from PIL import Image

from backdrop import products, quality
from backdrop_local.runflow import doubtful
from tests.unit.imaging_fakes import MAKERS, WHITE, photo, runflow, sample

GOOD_SAMPLES = ("astronaut.jpg", "bottle.jpg", "coffee.webp", "rocket.jpg", "sneaker.jpg")


def _assess(result: Image.Image, original: Image.Image) -> dict[str, Any]:
    return quality.assess(products.compare(result, original, WHITE))


# Each doubtful kind (as the local Runflow's output faults make it) and the reason it must give.
REASONS = {"unchanged": "nothing removed", "blank": "nothing found", "cropped": "product cut", "halo": "halo"}


def _doubtful(original: Image.Image, good: Image.Image, mask: Image.Image) -> dict[str, Image.Image]:
    return {REASONS[kind]: doubtful.make(kind, original, good, mask, WHITE) for kind in doubtful.KINDS}


@pytest.mark.parametrize("maker", sorted(MAKERS))
@pytest.mark.parametrize("kind", ["studio", "on_white", "edge", "tiny"])
def test_good_results_pass(maker: str, kind: str) -> None:
    options = {
        "studio": {},
        "on_white": {"background": (255, 255, 255)},
        "edge": {"box": (-40, 30, 200, 210)},
        "tiny": {"box": (150, 110, 174, 134)},
    }[kind]
    original, truth = photo(**options)  # type: ignore[arg-type]
    assessed = _assess(MAKERS[maker](original, truth, WHITE), original)
    assert assessed["verdict"] == "pass", assessed
    assert json.loads(json.dumps(assessed)) == assessed
    assert set(assessed["checks"]) == {
        "product_share", "background_deviation", "background_texture",
        "product_fidelity", "cut_edge_share", "halo_share",
    }  # fmt: skip


@pytest.mark.parametrize("name", GOOD_SAMPLES)
@pytest.mark.parametrize("maker", sorted(MAKERS))
def test_sample_results_pass(name: str, maker: str) -> None:
    _, original, mask = sample(name)
    assessed = _assess(MAKERS[maker](original, mask, WHITE), original)
    assert assessed["verdict"] == "pass", assessed


def test_photo_already_on_the_colour_returned_unchanged_is_not_doubtful() -> None:
    original, _ = photo(background=(255, 255, 255))
    assessed = _assess(doubtful.unchanged(original), original)
    assert assessed["verdict"] == "pass", assessed
    assert 0.15 < assessed["checks"]["product_share"] < 0.3


@pytest.mark.parametrize("name", ("bottle.jpg", "coffee.webp"))
def test_doubtful_kinds_are_caught(name: str) -> None:
    _, original, mask = sample(name)
    good = runflow(original, mask, WHITE)
    cases = _doubtful(original, good, mask)
    for reason, result in cases.items():
        assessed = _assess(result, original)
        assert assessed["verdict"] == "doubt", (reason, assessed)
        # On a near-white sweep an unchanged photo is mostly "on the colour", so it may read as
        # a cut instead; a ring left standing also reads as the original carrying on.
        if reason in ("nothing found", "product cut"):
            assert any(r.startswith(reason) for r in assessed["reasons"]), (reason, assessed)


def test_doubtful_kinds_are_caught_with_their_reason() -> None:
    original, truth = photo()
    good = runflow(original, truth, WHITE)
    cases = _doubtful(original, good, truth)
    for reason, result in cases.items():
        assessed = _assess(result, original)
        assert any(r.startswith(reason) for r in assessed["reasons"]), (reason, assessed)


def test_halo_is_measured_as_such() -> None:
    original, truth = photo()
    assessed = _assess(doubtful.halo(runflow(original, truth, WHITE), original, truth), original)
    assert assessed["checks"]["halo_share"] > quality.MAX_HALO_SHARE
    assert any(r.startswith("halo") for r in assessed["reasons"])


def test_busy_background_kept_but_brightened_is_doubtful() -> None:
    original, truth = photo()
    # Every background pixel changed (so not "unchanged"), but the grain of the old set remains.
    from PIL import ImageEnhance

    brighter = ImageEnhance.Contrast(ImageEnhance.Brightness(original).enhance(1.2)).enhance(2.5)
    result = brighter.copy()
    result.paste(original, mask=truth)
    assessed = _assess(result, original)
    assert assessed["verdict"] == "doubt"
    assert any("background" in r for r in assessed["reasons"]), assessed
