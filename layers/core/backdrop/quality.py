"""Measured quality checks on a result: is it doubtful, and why.

Every check works on the comparison of the result with the original (``backdrop.products``) at
its working size, needs no reference image and no person, and has a threshold below:

- ``product_share``: the share of the frame the run kept. Doubtful under ``MIN_PRODUCT_SHARE``
  (nothing found) or over ``MAX_PRODUCT_SHARE`` (nothing removed).
- ``background_deviation``: the 95th percentile of the background's max channel distance to the
  colour (0..255), away from the product. Doubtful over ``MAX_BACKGROUND_DEVIATION``.
- ``background_texture``: the 95th percentile of the background's fine detail (distance to its
  5x5 local mean, 0..255). Doubtful over ``MAX_BACKGROUND_TEXTURE``.
- ``product_fidelity``: the mean max channel difference from the original inside the product,
  away from its edge (0..255). Doubtful over ``MAX_PRODUCT_DIFFERENCE``.
- ``cut_edge_share``: the share of the outline across which the original carries on (it looks
  the same a little inside and a little outside, along the outline's normal): the product went on
  where the result stops. Doubtful over ``MAX_CUT_EDGE_SHARE``.
- ``halo_share``: the share of the product's rim that looks like the background the run removed
  nearby (an old background left standing). Doubtful over ``MAX_HALO_SHARE``.

A photo already on the job's colour keeps its background unchanged, and that is no reason for doubt:
unchanged pixels on the colour count as background (see ``backdrop.products``), so its product
share is the product's own, its background is on the colour, and its outline has contrast.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backdrop.products import NOISE_TOLERANCE, Comparison

MIN_PRODUCT_SHARE = 0.0005
MAX_PRODUCT_SHARE = 0.97
MAX_BACKGROUND_DEVIATION = 96  # the model's shading may move the background ~30 % off the colour
MAX_BACKGROUND_TEXTURE = 16  # shading is smooth; kept texture (wood grain, a room) is not
MAX_PRODUCT_DIFFERENCE = 10
MAX_CUT_EDGE_SHARE = 0.08  # calibrated: see the README (quality checks)
MAX_HALO_SHARE = 0.3
RING_SHARE = 0.01  # rim and outline rings, share of the shorter side (at least 2 px)
WINDOW_SHARE = 0.04  # neighbourhood for local means, share of the shorter side (at least 4 px)
SAME_LOOK = 24  # max channel distance under which two smoothed colours look the same
# The cut check looks CUT_DISTANCE rings either side of the outline and asks for a closer match:
# a product going on looks alike within CUT_SAME_LOOK, where an edge of low contrast rarely does
# (the calibration's choice: half the good results' false cuts, for 1 in 30 cuts missed).
CUT_DISTANCE = 2
CUT_SAME_LOOK = 12

Bool2 = np.ndarray[Any, np.dtype[np.bool_]]
F32 = np.ndarray[Any, np.dtype[np.float32]]


def box_sum(values: F32, radius: int) -> F32:
    """Sum over the (2r+1)^2 square around each pixel, zero outside, by prefix sums, one axis at a
    time. ``values`` hold whole numbers (masks, 8-bit pixels), so the sums are exact in 32-bit
    integers (255 x 2^23 pixels at most): half the memory traffic of floats in 64 bits."""
    size = 2 * radius + 1
    extra = [(0, 0)] * (values.ndim - 2)
    whole = values.astype(np.int32)
    rows = np.pad(whole, [(radius + 1, radius), (0, 0), *extra]).cumsum(0, dtype=np.int32)
    down = rows[size:] - rows[:-size]
    cols = np.pad(down, [(0, 0), (radius + 1, radius), *extra]).cumsum(1, dtype=np.int32)
    return (cols[:, size:] - cols[:, :-size]).astype(np.float32)


def near(mask: Bool2, radius: int) -> Bool2:
    return np.asarray(box_sum(mask.astype(np.float32), radius) > 0.5) if radius > 0 else mask


def inside(mask: Bool2, radius: int) -> Bool2:
    """Erosion: pixels whose whole square neighbourhood is in ``mask``."""
    if radius <= 0:
        return mask
    count = (2 * radius + 1) ** 2
    return np.asarray(box_sum(mask.astype(np.float32), radius) > count - 0.5)


def local_mean(image: F32, where: Bool2, radius: int) -> tuple[F32, F32]:
    """Mean of ``image`` over the ``where`` pixels in each neighbourhood, and how many there were."""
    weight = box_sum(where.astype(np.float32), radius)
    total = box_sum(image * where[..., np.newaxis], radius)
    mean = (total / np.maximum(weight, 1.0)[..., np.newaxis]).astype(np.float32)
    return mean, weight


def _share(flags: Bool2, among: Bool2) -> float:
    return float(flags[among].mean()) if among.any() else 0.0


def _cut_share(found: Comparison, smooth_original: F32, distance: int) -> float:
    """Share of the outline across which the original carries on: the original looks the same
    (within ``CUT_SAME_LOOK``) ``distance`` px inside and ``distance`` px outside the product,
    along the outline's normal.
    A true outline is where the product met its old background, so the original changes there."""
    kept = found.kept.astype(np.float32)
    soft = box_sum(kept, 2) / 25.0
    outline = (soft > 0.3) & (soft < 0.7)
    if not outline.any():
        return 0.0
    gy, gx = np.gradient(soft)
    length = np.hypot(gx, gy)
    ys, xs = np.nonzero(outline & (length > 1e-3))
    if ys.size == 0:
        return 0.0
    ny, nx = gy[ys, xs] / length[ys, xs], gx[ys, xs] / length[ys, xs]  # points into the product
    height, width = kept.shape

    def at(sign: float) -> tuple[F32, np.ndarray[Any, np.dtype[np.bool_]]]:
        yy = np.rint(ys + sign * distance * ny).astype(np.intp)
        xx = np.rint(xs + sign * distance * nx).astype(np.intp)
        valid = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        yy, xx = np.clip(yy, 0, height - 1), np.clip(xx, 0, width - 1)
        return smooth_original[yy, xx], valid

    inner, inner_ok = at(1.0)
    outer, outer_ok = at(-1.0)
    valid = inner_ok & outer_ok
    if not valid.any():
        return 0.0
    same = np.abs(inner - outer).max(axis=1) < CUT_SAME_LOOK
    return float(same[valid].mean())


def assess(found: Comparison) -> dict[str, Any]:
    """``{verdict: pass|doubt, reasons, checks: {name: value}}`` for one result."""
    height, width = found.alpha.shape
    short = min(width, height)
    ring = max(2, round(RING_SHARE * short))
    window = max(4, round(WINDOW_SHARE * short))
    kept = found.kept
    removed = found.alpha == 0
    share = found.share
    checks: dict[str, Any] = {"product_share": round(share, 4)}
    reasons: list[str] = []
    if share < MIN_PRODUCT_SHARE:
        reasons.append(f"nothing found: the product is {share:.2%} of the frame")
    elif share > MAX_PRODUCT_SHARE:
        reasons.append(f"nothing removed: {share:.1%} of the frame is unchanged")

    result = found.result.astype(np.float32)
    original = found.original.astype(np.float32)
    colour = np.array(found.colour, dtype=np.float32)
    # Background away from the soft edge: only what the run painted.
    background = removed & ~near(kept, window)
    if background.any():
        deviation = np.abs(result - colour).max(axis=2)
        checks["background_deviation"] = round(float(np.percentile(deviation[background], 95)), 1)
        smooth, _ = local_mean(result, background, 2)
        texture = np.abs(result - smooth).max(axis=2)
        checks["background_texture"] = round(float(np.percentile(texture[background], 95)), 1)
        if checks["background_deviation"] > MAX_BACKGROUND_DEVIATION:
            reasons.append(
                f"background off the colour: 95 % within {checks['background_deviation']:.0f} "
                f"(limit {MAX_BACKGROUND_DEVIATION})"
            )
        if checks["background_texture"] > MAX_BACKGROUND_TEXTURE:
            reasons.append(
                f"background not plain: detail {checks['background_texture']:.0f} "
                f"(limit {MAX_BACKGROUND_TEXTURE})"
            )
    else:
        checks.update(background_deviation=0.0, background_texture=0.0)

    core = inside(kept, ring)
    checks["product_fidelity"] = round(float(found.changed[core].mean()), 2) if core.any() else 0.0
    if checks["product_fidelity"] > MAX_PRODUCT_DIFFERENCE:
        reasons.append(
            f"product altered: mean difference {checks['product_fidelity']:.1f} "
            f"(limit {MAX_PRODUCT_DIFFERENCE})"
        )

    cut, halo = 0.0, 0.0
    if kept.any() and removed.any():
        # Smoothed a little, so texture and compression noise do not decide a pixel's look.
        smooth_original, _ = local_mean(original, np.ones_like(kept), 1)
        band = near(kept, ring)
        cut = _cut_share(found, smooth_original, CUT_DISTANCE * ring)
        # Rim: kept pixels next to the outline. Halo where they look like what the run removed
        # around them (the old background, left standing).
        rim = kept & ~inside(kept, ring)
        removed_far = removed & ~band
        removed_look, removed_weight = local_mean(original, removed_far, window)
        smooth_result, _ = local_mean(result, kept, 1)
        like_removed = np.abs(smooth_result - removed_look).max(axis=2) < SAME_LOOK
        like_removed &= np.abs(removed_look - colour).max(axis=2) > NOISE_TOLERANCE
        halo = _share(like_removed & (removed_weight > 0), rim)
    checks["cut_edge_share"] = round(cut, 4)
    checks["halo_share"] = round(halo, 4)
    if cut > MAX_CUT_EDGE_SHARE:
        reasons.append(f"product cut: the original carries on across {cut:.0%} of the outline")
    if halo > MAX_HALO_SHARE:
        reasons.append(f"halo: {halo:.0%} of the product's rim looks like the removed background")
    return {"verdict": "doubt" if reasons else "pass", "reasons": reasons, "checks": checks}
