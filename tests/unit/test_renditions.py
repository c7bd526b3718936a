"""Rendition profiles, the ``Renditions`` parameter, rendering and verdicts read back from the file."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backdrop import products, profiles, renditions
from backdrop.colours import Colour
from backdrop.profiles import PROFILES, RenditionsError, Spec, parse_renditions
from tests.unit.imaging_fakes import MAKERS, SAMPLES, WHITE, encode, photo, runflow, sample

GREEN = Colour(20, 120, 60)


def _found(maker: str = "runflow", colour: Colour = WHITE, **kwargs: Any) -> tuple[Image.Image, Any]:
    original, truth = photo(**kwargs)
    result = MAKERS[maker](original, truth, colour)
    return result, products.compare(result, original, colour)


def _decoded(data: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --- the parameter -------------------------------------------------------------------------------


def test_parameter_maps_names_to_profiles_and_custom_specs() -> None:
    specs = parse_renditions(
        '{"amazon": "amazon-main", "story": {"aspect": "9:16", "long_side": 1920, "fit": "cover",'
        ' "align": "top", "format": "webp", "quality": 70, "max_bytes": 500000, "background": "#000000"},'
        ' "sq": {"profile": "thumbnail", "width": 200, "height": 200, "background": "job"}}'
    )
    assert specs["amazon"] is PROFILES["amazon-main"]
    story = specs["story"]
    assert story.canvas((4000, 3000)) == (1080, 1920)
    assert (story.fit, story.align, story.format, story.quality) == ("cover", "top", "WEBP", 70)
    assert story.max_bytes == 500_000 and story.background == Colour(0, 0, 0)
    assert specs["sq"].canvas((1, 1)) == (200, 200) and specs["sq"].format == "WEBP"
    assert specs["sq"].background is None
    assert parse_renditions("") == {}
    square = parse_renditions('{"sq": {"aspect": "1:1"}}')["sq"]
    assert square.canvas((640, 480)) == (640, 640) and square.canvas((8000, 6000)) == (4096, 4096)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "must be a JSON object"),
        ("{", "not valid JSON"),
        ('{"a": "ebay"}', "rendition 'a': unknown profile 'ebay'"),
        ('{"a": 3}', "rendition 'a': must be a profile name or an object"),
        ('{"a": {"width": 10}}', "rendition 'a': give width and height together"),
        ('{"a": {"aspect": "wide"}}', "rendition 'a': aspect must be like"),
        ('{"a": {"width": 10, "height": 10, "fit": "stretch"}}', "rendition 'a': fit must be one of"),
        ('{"a": {"width": 10, "height": 10, "format": "GIF"}}', "rendition 'a': format must be one of"),
        ('{"a": {"width": 10, "height": 10, "quality": 0}}', "rendition 'a': quality must be"),
        ('{"a": {"width": 10, "height": 10, "background": "teal"}}', "rendition 'a': background must be"),
        (
            '{"a": {"width": 10, "height": 10, "colour": "#fff"}}',
            "rendition 'a': unknown setting(s) 'colour'",
        ),
        ('{"a": {"fit": "pad"}}', "rendition 'a': needs width and height, or aspect"),
        ('{"A b": "thumbnail"}', "rendition 'A b': names are"),
        ('{"a": {"width": 10000, "height": 10000}}', "over 64 megapixels"),
    ],
)
def test_bad_parameter_values_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(RenditionsError) as caught:
        parse_renditions(text)
    assert message in str(caught.value)


def test_builtin_profiles_are_documented_exactly() -> None:
    amazon = PROFILES["amazon-main"]
    assert (amazon.width, amazon.height, amazon.fit, amazon.fill, amazon.align) == (
        2000,
        2000,
        "pad",
        0.85,
        "center",
    )
    assert (amazon.format, amazon.max_bytes, amazon.background) == ("JPEG", 10_000_000, Colour(255, 255, 255))
    assert PROFILES["zalando"].canvas((1, 1)) == (1801, 2600)
    assert PROFILES["shopify-square"].canvas((1, 1)) == (2048, 2048)
    assert PROFILES["google-shopping"].canvas((1, 1)) == (1500, 1500)
    assert set(PROFILES) == {"amazon-main", "google-shopping", "shopify-square", "zalando", "thumbnail"}
    for name, spec in PROFILES.items():
        assert f"``{name}``" in (profiles.__doc__ or "")
        assert spec.profile == name


# --- amazon-main, exactly ------------------------------------------------------------------------


@pytest.mark.parametrize("maker", ["hard_cutout", "runflow_jpeg"])
def test_amazon_main_is_exact_on_results_made_in_several_ways(maker: str) -> None:
    result, found = _found(maker, GREEN, size=(640, 480), box=(180, 100, 460, 400))
    data, verdict = renditions.make(PROFILES["amazon-main"], result, found)
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (2000, 2000))
    assert "sRGB" in verdict["checks"]["colour_space"] and len(data) <= 10_000_000
    pixels = _decoded(data)
    off_white = np.abs(pixels.astype(np.int16) - 255).max(axis=2) > 32
    rows, cols = np.flatnonzero(off_white.any(axis=1)), np.flatnonzero(off_white.any(axis=0))
    # The product's bounding box is centred and its longer side is 85 % of the canvas.
    # (Measured beyond ringing and the soft edge: a few pixels more than the product itself.)
    assert abs((rows[-1] + 1 - rows[0]) - 1700) <= 20
    assert abs((cols[0] + cols[-1] + 1) / 2 - 1000) <= 6 and abs((rows[0] + rows[-1] + 1) / 2 - 1000) <= 6
    # Exactly (255, 255, 255) outside the product, beyond the 8x8 blocks that touch it.
    far = np.ones_like(off_white)
    far[max(0, rows[0] - 16) : rows[-1] + 17, max(0, cols[0] - 16) : cols[-1] + 17] = False
    assert (pixels[far] == 255).all()
    # The only reason for a warning: the small test photo is enlarged.
    assert verdict["verdict"] == "warn" and len(verdict["reasons"]) == 1, verdict["reasons"]
    assert verdict["reasons"][0].startswith("enlarged")
    assert verdict["checks"]["background_exact_share"] == 1.0 and verdict["checks"]["border_pure"]
    assert set(verdict) == {"width", "height", "format", "bytes", "verdict", "reasons", "checks"}
    assert json.loads(json.dumps(verdict)) == verdict  # plain values, ready for the job and the event


@pytest.mark.parametrize("name", SAMPLES)
def test_samples_get_exact_backgrounds(name: str) -> None:
    _, original, mask = sample(name)
    result = runflow(original, mask, WHITE)
    found = products.compare(result, original, WHITE)
    spec = Spec(width=600, height=600, fill=0.85, background=WHITE)
    _, verdict = renditions.make(spec, result, found)
    assert verdict["checks"]["background_exact_share"] == 1.0
    assert verdict["checks"]["border_pure"]
    assert abs(verdict["checks"]["fill"] - 0.85) <= renditions.FILL_TOLERANCE
    assert verdict["verdict"] in ("pass", "warn")


# --- the verdict ---------------------------------------------------------------------------------


def test_product_touching_the_frame_edge_warns() -> None:
    result, found = _found(box=(-40, 30, 200, 210))
    _, verdict = renditions.make(Spec(width=300, height=300, background=WHITE), result, found)
    assert verdict["verdict"] == "warn"
    assert verdict["checks"]["touches_frame_edge"] is True
    assert any("cropped" in reason for reason in verdict["reasons"])


def test_tiny_product_is_enlarged_with_a_warning() -> None:
    result, found = _found("hard_cutout", box=(150, 110, 174, 134))
    _, verdict = renditions.make(Spec(width=400, height=400, background=WHITE), result, found)
    assert verdict["verdict"] == "warn"
    assert verdict["checks"]["scale"] > 10
    assert abs(verdict["checks"]["fill"] - 0.85) <= renditions.FILL_TOLERANCE


def test_product_already_on_white_passes() -> None:
    original, _ = photo(background=(255, 255, 255))
    found = products.compare(original.copy(), original, WHITE)
    _, verdict = renditions.make(Spec(width=120, height=120, background=WHITE), original, found)
    assert verdict["verdict"] == "pass", verdict["reasons"]


def test_no_product_fails_a_padded_rendition() -> None:
    original, _ = photo()
    blank = Image.new("RGB", original.size, (255, 255, 255))
    found = products.compare(blank, original, WHITE)
    with pytest.raises(ValueError, match="no product"):
        renditions.make(PROFILES["amazon-main"], blank, found)
    _, verdict = renditions.make(Spec(width=100, height=100, fit="contain", background=WHITE), blank, found)
    assert verdict["verdict"] == "fail" and "no product in the rendition" in verdict["reasons"]


def test_bytes_over_the_limit_lower_quality_then_fail() -> None:
    result, found = _found("soft_shaded")
    spec = Spec(width=300, height=300, format="WEBP", quality=95, max_bytes=1_000, background=None)
    data, verdict = renditions.make(spec, result, found)
    assert verdict["checks"]["quality"] == renditions.MIN_QUALITY
    assert verdict["verdict"] == "fail" and verdict["bytes"] == len(data) > 1_000
    assert any("over the limit" in reason for reason in verdict["reasons"])


def test_job_background_keeps_the_result_and_does_not_judge_purity() -> None:
    result, found = _found("runflow", GREEN, size=(640, 480), box=(180, 100, 460, 400))
    _, verdict = renditions.make(PROFILES["thumbnail"], result, found)
    assert (verdict["format"], verdict["width"], verdict["height"]) == ("WEBP", 400, 400)
    assert verdict["verdict"] == "pass", verdict["reasons"]
    assert verdict["checks"]["background_exact_share"] < 1.0


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "AVIF"])
def test_formats_and_fits(fmt: str) -> None:
    result, found = _found("hard_cutout", GREEN)
    for fit in ("contain", "cover", "pad"):
        spec = Spec(
            aspect=(4, 5), long_side=250, fit=fit, format=fmt, quality=80, background=GREEN, align="top"
        )
        data, verdict = renditions.make(spec, result, found)
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.size, image.mode) == (fmt, (200, 250), "RGB")
        assert verdict["format"] == fmt and verdict["checks"]["alpha"] is False
        if fmt == "PNG":
            assert verdict["checks"]["background_exact_share"] == 1.0


def test_cover_crops_and_aligns() -> None:
    result, found = _found("hard_cutout")
    top = renditions.layout(Spec(width=320, height=100, fit="cover", align="top"), result.size, found.bbox())
    bottom = renditions.layout(
        Spec(width=320, height=100, fit="cover", align="bottom"), result.size, found.bbox()
    )
    assert top.scale == bottom.scale == 1.0
    assert top.origin == (0.0, 0.0) and bottom.origin == (0.0, -140.0)


def test_exact_colour_that_jpeg_cannot_hold_fails() -> None:
    result, found = _found("hard_cutout", Colour(12, 200, 47))
    spec = Spec(width=300, height=300, format="JPEG", background=Colour(12, 200, 47))
    _, verdict = renditions.make(spec, result, found)
    exact = verdict["checks"]["background_exact_share"]
    # Whatever JPEG does to this colour, the verdict says what the file holds.
    assert (verdict["verdict"] == "fail") == (
        exact < renditions.EXACT_SHARE_FAIL or not verdict["checks"]["border_pure"]
    )


# --- the region kept for rendering ---------------------------------------------------------------


@pytest.mark.parametrize("colour", [WHITE, GREEN])
def test_region_renders_the_same_verdicts_as_the_whole_result(colour: Colour) -> None:
    original, truth = photo(size=(2400, 1800), box=(700, 300, 1500, 1500))
    result = runflow(original, truth, colour)
    region, found = products.compare_region(encode(result), encode(original, "JPEG"), colour)
    whole, _ = products.compare_bytes(encode(result), encode(original, "JPEG"), colour)
    # Only the product's box is kept at full size, and it holds the result's own pixels.
    assert region.frame == (2400, 1800) and region.image.width * region.image.height < 2400 * 1800 / 2
    x, y = region.offset
    box = (x, y, x + region.image.width, y + region.image.height)
    assert np.array_equal(np.asarray(region.image), np.asarray(whole.crop(box)))
    for name, spec in PROFILES.items():
        data, verdict = renditions.make(spec, region, found)
        _, expected = renditions.make(spec, whole, found)
        assert (verdict["verdict"], verdict["reasons"]) == (expected["verdict"], expected["reasons"]), name
        checks, reference = verdict["checks"], expected["checks"]
        assert abs(checks["fill"] - reference["fill"]) <= 0.002, name
        assert checks["border_pure"] == reference["border_pure"], name
        if spec.background is not None:
            assert checks["background_exact_share"] == reference["background_exact_share"] == 1.0, name
        # The product itself comes from full size: it matches the whole result's rendition.
        if spec.fit == "pad":
            ours = _decoded(data).astype(np.int16)
            theirs = _decoded(renditions.make(spec, whole, found)[0]).astype(np.int16)
            height, width = ours.shape[:2]
            centre = (slice(height // 2 - 50, height // 2 + 50), slice(width // 2 - 50, width // 2 + 50))
            difference = np.abs(ours[centre] - theirs[centre])
            # The same pixels up to a sub-pixel shift of the sampling grid and the JPEG's rounding.
            assert difference.mean() < 0.5 and difference.max() <= 12, name


def test_product_drawn_in_bands_matches_one_whole_resize() -> None:
    original, truth = photo(size=(2400, 1800), box=(700, 300, 1500, 1500))
    result = runflow(original, truth, WHITE)
    region, found = products.compare_region(encode(result), encode(original, "JPEG"), WHITE)
    spec = Spec(width=1000, height=1000, format="PNG", background=WHITE)
    data, verdict = renditions.make(spec, region, found)
    assert verdict["verdict"] == "pass", verdict["reasons"]
    # The reference: the product's whole rectangle resampled at once, pasted by its coverage.
    plan = renditions.layout(spec, region.frame, found.bbox())
    visible = renditions._visible(plan, region.frame)
    assert visible is not None
    product = renditions._product_rect(plan, visible, found)
    assert product is not None
    rect, box = product
    inside = renditions._full_size_box(region, found, plan, box)
    assert inside is not None
    size = (rect[2] - rect[0], rect[3] - rect[1])
    # Drawn by libvips from the region's own pixels; Pillow's Lanczos of the same whole pixels
    # (tests/unit/test_resampling.py holds the two to each other).
    assert region.pixels is not None
    whole = renditions._lanczos3(region.pixels, inside, size)
    assert whole is not None
    patch = Image.frombytes("RGB", size, whole.write_to_memory())
    reference = Image.new("RGB", plan.canvas, tuple(WHITE))
    reference.paste(patch, rect[:2], renditions._coverage(plan, product, found).patch)
    difference = np.abs(_decoded(data).astype(np.int16) - np.asarray(reference).astype(np.int16))
    assert difference.max() == 0
    pillow = Image.new("RGB", plan.canvas, tuple(WHITE))
    pillow_box = renditions.lanczos3_box(inside, region.size)
    pillow.paste(
        region.image.resize(size, Image.Resampling.LANCZOS, box=pillow_box),
        rect[:2],
        renditions._coverage(plan, product, found).patch,
    )
    against_pillow = np.abs(_decoded(data).astype(np.int16) - np.asarray(pillow).astype(np.int16))
    # libvips rounds its fixed-point weights differently: a level or two on a few pixels.
    assert against_pillow.mean() < 0.2 and against_pillow.max() <= 2
    # Bands skip the rectangle's empty corners: more than one band, each narrower than the rectangle.
    assert size[1] > renditions.BAND_ROWS


@pytest.mark.parametrize(
    ("x", "y", "on_border"),
    [(10, 100, False), (0, 0, True), (300, 210, True), (300, 100, True), (150, 210, True)],
)
def test_verdict_sees_one_off_pixel_anywhere_in_the_file(x: int, y: int, on_border: bool) -> None:
    """The read-back is scanned a strip at a time: one pixel off the colour is seen wherever it is."""
    result, found = _found("hard_cutout", size=(640, 480), box=(180, 100, 460, 400))
    spec = Spec(width=301, height=211, format="PNG", background=WHITE)
    rendered = renditions.render(spec, result, found)
    clean = renditions.judge(spec, rendered, found)
    assert clean["verdict"] == "pass" and clean["checks"]["background_exact_share"] == 1.0
    with Image.open(io.BytesIO(rendered.data)) as file:
        icc = file.info["icc_profile"]
        canvas = file.convert("RGB")
    canvas.putpixel((x, y), (255, 254, 255))
    out = io.BytesIO()
    canvas.save(out, "PNG", icc_profile=icc)
    verdict = renditions.judge(spec, replace(rendered, data=out.getvalue()), found)
    near = np.count_nonzero(np.asarray(rendered.coverage.patch))  # lossless: no guard around the product
    background = 301 * 211 - near
    assert verdict["checks"]["background_exact_share"] == round(1 - 1 / background, 6)
    assert verdict["checks"]["border_pure"] is not on_border
    assert verdict["verdict"] == ("fail" if on_border else "warn")


def test_pixels_near_the_product_are_exactly_those_within_the_guard() -> None:
    """The guard around the product (background pixels closer than it are not judged) is a square
    of exactly ``radius`` pixels, clipped to the canvas: checked against a brute-force dilation."""
    rng = np.random.default_rng(3)
    for _ in range(100):
        width, height = (int(v) for v in rng.integers(5, 50, 2))
        pw, ph = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
        ox, oy = int(rng.integers(0, width - pw + 1)), int(rng.integers(0, height - ph + 1))
        patch = ((rng.random((ph, pw)) > 0.92) * rng.integers(1, 256, (ph, pw))).astype(np.uint8)
        radius = int(rng.integers(0, 8))
        covered = np.zeros((height, width), dtype=bool)
        covered[oy : oy + ph, ox : ox + pw] = patch > 0
        expected = np.zeros_like(covered)
        for y, x in zip(*np.nonzero(covered), strict=True):
            expected[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1] = True
        near = renditions._near(
            renditions.Coverage((width, height), Image.fromarray(patch), (ox, oy)), radius
        )
        got = np.zeros_like(covered)
        if near is not None:
            (nx, ny), (nh, nw) = near.origin, near.mask.shape
            assert nx >= 0 and ny >= 0 and nx + nw <= width and ny + nh <= height
            got[ny : ny + nh, nx : nx + nw] = near.mask
        assert np.array_equal(got, expected)
