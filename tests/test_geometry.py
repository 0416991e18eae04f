"""PatchGeometry: resize/pad sizes and exact mapping of patch masks and boxes back to original pixels."""

from __future__ import annotations

import numpy as np
import pytest

from autolabel.geometry import PatchGeometry
from autolabel.masks import mask_to_box


@pytest.mark.parametrize("h, w, patch, max_size, resized, grid", [
    (480, 640, 16, 448, (336, 448), (21, 28)),       # downscale, multiple of the patch
    (640, 480, 14, 448, (448, 336), (32, 24)),       # portrait
    (100, 333, 14, 448, (100, 333), (8, 24)),        # small: never upscaled, padded up to the grid
    (1000, 777, 14, 448, (448, 348), (32, 25)),      # non-multiple after resize
    (1, 1, 8, 448, (1, 1), (1, 1)),                  # one pixel
    (1, 5000, 16, 448, (1, 448), (1, 28)),           # extreme aspect keeps ≥ 1 pixel
    (300, 200, 8, None, (300, 200), (38, 25)),       # no resize at all
])
def test_sizes(h: int, w: int, patch: int, max_size: int | None, resized: tuple[int, int],
               grid: tuple[int, int]) -> None:
    g = PatchGeometry.for_image(h, w, patch, max_size)
    assert (g.resized_h, g.resized_w) == resized
    assert (g.grid_h, g.grid_w) == grid
    assert g.padded_h == grid[0] * patch and g.padded_w == grid[1] * patch
    assert g.padded_h >= g.resized_h > g.padded_h - patch
    assert g.padded_w >= g.resized_w > g.padded_w - patch
    assert g.num_patches == grid[0] * grid[1]
    assert g.valid_patch_mask().shape == grid and g.valid_patch_mask().all()


def test_upscale_only_when_asked() -> None:
    assert PatchGeometry.for_image(100, 50, 16, 448).resized_h == 100
    g = PatchGeometry.for_image(100, 50, 16, 448, upscale=True)
    assert (g.resized_h, g.resized_w) == (448, 224)


@pytest.mark.parametrize("h, w", [(0, 5), (5, 0), (-1, 3)])
def test_empty_size_is_rejected(h: int, w: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        PatchGeometry.for_image(h, w, 14)


def test_scales_are_original_over_resized() -> None:
    g = PatchGeometry.for_image(900, 1200, 14, 448)
    assert g.scale_x == pytest.approx(1200 / 448)
    assert g.scale_y == pytest.approx(900 / 336)


def test_patch_map_upsampling_is_cropped_to_the_resized_image() -> None:
    g = PatchGeometry.for_image(20, 30, 8, None)  # grid 3x4, padded 24x32
    patch_map = np.arange(12).reshape(3, 4)
    up = g.patch_map_to_input(patch_map)
    assert up.shape == (20, 30)
    ys, xs = np.mgrid[0:20, 0:30]
    np.testing.assert_array_equal(up, patch_map[ys // 8, xs // 8])
    with pytest.raises(ValueError, match="grid"):
        g.patch_map_to_input(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="resized"):
        g.input_to_original(np.zeros((24, 32)))


def test_identity_geometry_maps_patch_masks_exactly() -> None:
    g = PatchGeometry.for_image(37, 53, 8, 448)  # not resized, not a multiple of 8
    pm = np.random.default_rng(0).random((g.grid_h, g.grid_w)) > 0.5
    out = g.patch_mask_to_original(pm)
    ys, xs = np.mgrid[0:37, 0:53]
    assert out.dtype == bool and out.shape == (37, 53)
    np.testing.assert_array_equal(out, pm[ys // 8, xs // 8])


def test_integer_downscale_maps_patch_masks_exactly() -> None:
    g = PatchGeometry.for_image(672, 896, 14, 448)  # exactly 2x
    assert (g.resized_h, g.resized_w) == (336, 448)
    pm = np.random.default_rng(1).random((g.grid_h, g.grid_w)) > 0.5
    out = g.patch_mask_to_original(pm)
    ys, xs = np.mgrid[0:672, 0:896]
    np.testing.assert_array_equal(out, pm[ys // 28, xs // 28])


@pytest.mark.parametrize("h, w, patch", [(1000, 777, 14), (333, 501, 16), (97, 61, 8)])
def test_non_integer_scale_maps_each_pixel_to_the_patch_under_its_centre(h: int, w: int, patch: int) -> None:
    g = PatchGeometry.for_image(h, w, patch, 448 if h > 448 or w > 448 else 40)
    pm = np.random.default_rng(2).random((g.grid_h, g.grid_w)) > 0.5
    out = g.patch_mask_to_original(pm)
    assert out.shape == (h, w)
    # A pixel centre lying exactly on an input-pixel border may round either way: allow both sides, no more.
    cy = (np.arange(h) + 0.5) * g.resized_h / h
    cx = (np.arange(w) + 0.5) * g.resized_w / w
    r_lo, r_hi = (np.floor(cy - 1e-6).astype(int) // patch, np.floor(cy + 1e-6).astype(int) // patch)
    c_lo, c_hi = (np.floor(cx - 1e-6).astype(int) // patch, np.floor(cx + 1e-6).astype(int) // patch)
    ok = np.zeros((h, w), bool)
    for rows in (r_lo, r_hi):
        for cols in (c_lo, c_hi):
            ok |= out == pm[np.clip(rows, 0, g.grid_h - 1)[:, None], np.clip(cols, 0, g.grid_w - 1)[None, :]]
    assert ok.all()
    # and the mask keeps its share of the image
    assert abs(out.mean() - g.patch_map_to_input(pm).mean()) < 0.01


def test_patch_box_matches_the_mapped_mask_box() -> None:
    g = PatchGeometry.for_image(1000, 777, 14, 448)
    pm = np.zeros((g.grid_h, g.grid_w), bool)
    pm[3:10, 5:20] = True
    box = np.array(g.patch_box_to_pixels(3, 5, 9, 19))
    mapped = np.array(mask_to_box(g.patch_mask_to_original(pm)))
    assert np.abs(box - mapped).max() <= max(g.scale_x, g.scale_y)
    assert box[0] == pytest.approx(5 * 14 * g.scale_x)
    assert box[3] == pytest.approx(10 * 14 * g.scale_y)


def test_patch_box_is_clipped_to_the_image() -> None:
    g = PatchGeometry.for_image(20, 30, 8, None)  # the last row/column of patches is partly padding
    assert g.patch_box_to_pixels(0, 0, g.grid_h - 1, g.grid_w - 1) == (0.0, 0.0, 30.0, 20.0)
    g_big = PatchGeometry.for_image(1000, 777, 14, 448)
    x0, y0, x1, y1 = g_big.patch_box_to_pixels(0, 0, g_big.grid_h - 1, g_big.grid_w - 1)
    assert (x0, y0) == (0.0, 0.0)
    assert x1 == pytest.approx(777) and y1 == pytest.approx(1000)


def test_one_pixel_image() -> None:
    g = PatchGeometry.for_image(1, 1, 14, 448)
    assert g.patch_box_to_pixels(0, 0, 0, 0) == (0.0, 0.0, 1.0, 1.0)
    np.testing.assert_array_equal(g.patch_mask_to_original(np.ones((1, 1), bool)), np.ones((1, 1), bool))
    assert not g.patch_mask_to_original(np.zeros((1, 1), bool)).any()


def test_soft_maps_resize_linearly_to_the_original_size() -> None:
    g = PatchGeometry.for_image(900, 1200, 14, 448)
    soft = np.tile(np.linspace(0, 1, g.resized_w, dtype=np.float32), (g.resized_h, 1))
    out = g.input_to_original(soft, "linear")
    assert out.shape == (900, 1200) and out.dtype == np.float32
    assert (np.diff(out[450]) >= -1e-6).all()
    assert out.min() >= 0 and out.max() <= 1
