"""Refiner: 'none' maps patch masks exactly; 'guided' and 'bilateral' keep aligned masks and snap blocky ones to
real edges."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from autolabel.discovery.base import PatchRegion
from autolabel.geometry import PatchGeometry
from autolabel.masks import mask_iou
from autolabel.refine import REFINE_MODES, Refiner

PATCH = 8


def scene(geo: PatchGeometry, box: tuple[int, int, int, int], seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Resized RGB float image with one bright rectangle (x0, y0, x1, y1 in resized pixels), and its mask."""
    rng = np.random.default_rng(seed)
    h, w = geo.resized_h, geo.resized_w
    img = np.full((h, w, 3), 0.3, np.float32) + rng.normal(0, 0.02, (h, w, 3)).astype(np.float32)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = (0.9, 0.8, 0.7)
    truth = np.zeros((h, w), bool)
    truth[y0:y1, x0:x1] = True
    return np.clip(img, 0, 1), truth


def blocky_patch_mask(geo: PatchGeometry, truth: np.ndarray) -> np.ndarray:
    """Patches more than half covered by the object: what a discovery method at best returns."""
    padded = np.zeros((geo.padded_h, geo.padded_w), np.float32)
    padded[: geo.resized_h, : geo.resized_w] = truth
    coverage = cv2.resize(padded, (geo.grid_w, geo.grid_h), interpolation=cv2.INTER_AREA)
    return coverage > 0.5


GEOMETRIES = {"same size": (96, 128, None), "downscaled 4x": (384, 512, 128), "odd sizes": (301, 457, 128)}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_none_is_exactly_the_mapped_patch_mask(name: str) -> None:
    h, w, max_size = GEOMETRIES[name]
    geo = PatchGeometry.for_image(h, w, PATCH, max_size)
    image, _ = scene(geo, (20, 10, 60, 40))
    pm = np.random.default_rng(3).random((geo.grid_h, geo.grid_w)) > 0.6
    out = Refiner("none")(PatchRegion(pm), geo, image)
    assert out.shape == (h, w) and out.dtype == bool
    np.testing.assert_array_equal(out, geo.patch_mask_to_original(pm))


EDGE_MODES = ("guided", "bilateral")


@pytest.mark.parametrize("mode", EDGE_MODES)
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_edge_refinement_keeps_a_patch_aligned_mask(name: str, mode: str) -> None:
    h, w, max_size = GEOMETRIES[name]
    geo = PatchGeometry.for_image(h, w, PATCH, max_size)
    image, truth = scene(geo, (24, 16, 72, 56))  # edges on patch borders
    pm = blocky_patch_mask(geo, truth)
    truth_orig = geo.input_to_original(truth, "nearest")
    assert mask_iou(geo.patch_mask_to_original(pm), truth_orig) > 0.99
    out = Refiner(mode)(PatchRegion(pm), geo, image)
    assert out.shape == (h, w)
    assert mask_iou(out, truth_orig) > 0.97


@pytest.mark.parametrize("mode", EDGE_MODES)
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_edge_refinement_snaps_a_blocky_mask_to_the_real_edge(name: str, mode: str) -> None:
    h, w, max_size = GEOMETRIES[name]
    geo = PatchGeometry.for_image(h, w, PATCH, max_size)
    image, truth = scene(geo, (21, 13, 75, 45))  # edges 3-5 px off the patch grid
    pm = blocky_patch_mask(geo, truth)
    truth_orig = geo.input_to_original(truth, "nearest")
    raw_iou = mask_iou(geo.patch_mask_to_original(pm), truth_orig)
    refined_iou = mask_iou(Refiner(mode)(PatchRegion(pm), geo, image), truth_orig)
    assert raw_iou < 0.8
    assert refined_iou > 0.92
    assert refined_iou > raw_iou + 0.15


def test_guided_from_the_soft_map() -> None:
    geo = PatchGeometry.for_image(96, 128, PATCH, None)
    image, truth = scene(geo, (21, 13, 75, 45))
    pm = blocky_patch_mask(geo, truth)
    soft = cv2.GaussianBlur(pm.astype(np.float32), (3, 3), 0.8)
    soft = soft / soft.max()
    out = Refiner("guided", source="soft")(PatchRegion(pm, soft=soft), geo, image)
    assert mask_iou(out, truth) > 0.9


@pytest.mark.parametrize("keep", [True, False])
def test_soft_map_parts_away_from_the_region_are_dropped_unless_asked(keep: bool) -> None:
    geo = PatchGeometry.for_image(96, 128, PATCH, None)
    image, truth = scene(geo, (16, 16, 48, 48))
    image[40:80, 88:120] = (0.9, 0.8, 0.7)  # a second bright object, high in the soft map, not in the region
    other = np.zeros_like(truth)
    other[40:80, 88:120] = True
    pm = blocky_patch_mask(geo, truth)
    soft = (pm | blocky_patch_mask(geo, other)).astype(np.float32)
    refiner = Refiner("guided", source="soft", keep_seed_component=keep)
    out = refiner(PatchRegion(pm, soft=soft), geo, image)
    assert out[truth].mean() > 0.97
    if keep:
        assert not out[other].any()
    else:
        assert out[other].mean() > 0.9


@pytest.mark.parametrize("mode", EDGE_MODES)
def test_edge_refinement_falls_back_to_the_raw_mask(mode: str) -> None:
    geo = PatchGeometry.for_image(96, 128, PATCH, None)
    image, _ = scene(geo, (16, 16, 48, 48))
    refiner = Refiner(mode)
    empty = np.zeros((geo.grid_h, geo.grid_w), bool)
    assert not refiner(PatchRegion(empty), geo, image).any()
    full = np.ones((geo.grid_h, geo.grid_w), bool)  # constant source map: nothing to filter
    assert refiner(PatchRegion(full), geo, image).all()
    pm = np.zeros((geo.grid_h, geo.grid_w), bool)
    pm[2:5, 3:7] = True
    np.testing.assert_array_equal(refiner(PatchRegion(pm), geo, None), geo.patch_mask_to_original(pm))


def test_bilateral_keeps_the_raw_mask_when_the_solve_disagrees_with_it() -> None:
    geo = PatchGeometry.for_image(96, 128, PATCH, None)
    image = np.full((96, 128, 3), 0.3, np.float32)
    image[:, 64:] = (0.9, 0.8, 0.7)  # a big bright half ...
    image[16:32, 16:32] = (0.2, 0.8, 0.3)  # ... and a small green square
    pm = np.zeros((geo.grid_h, geo.grid_w), bool)
    pm[2:4, 2:4] = True  # the whole green square
    pm[4:8, 8:10] = True  # and a sliver of the bright half, twice as large
    raw = geo.patch_mask_to_original(pm)
    solved = Refiner("bilateral", min_iou=0.0)(PatchRegion(pm), geo, image)
    assert solved[16:32, 16:32].all() and not solved[:, 64:].any()  # the sliver is smoothed away ...
    assert mask_iou(solved, raw) < 0.5
    guarded = Refiner("bilateral")(PatchRegion(pm), geo, image)
    np.testing.assert_array_equal(guarded, raw)  # ... so the default guard keeps the raw mask


@pytest.mark.parametrize("mode", REFINE_MODES)
def test_refining_all_regions_at_once_equals_one_by_one(mode: str) -> None:
    geo = PatchGeometry.for_image(301, 457, PATCH, 128)
    image, truth = scene(geo, (21, 13, 75, 45))
    other = np.zeros_like(truth)
    other[40:70, 90:120] = True
    image[other] = (0.2, 0.7, 0.3)
    regions = [PatchRegion(blocky_patch_mask(geo, truth)), PatchRegion(np.zeros((geo.grid_h, geo.grid_w), bool)),
               PatchRegion(blocky_patch_mask(geo, other))]
    refiner = Refiner(mode)
    together = refiner.refine_all(regions, geo, image)
    assert len(together) == 3 and not together[1].any()
    for region, mask in zip(regions, together):
        np.testing.assert_array_equal(mask, refiner(region, geo, image))


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown refinement"):
        Refiner("crf")
    with pytest.raises(ValueError, match="source"):
        Refiner("guided", source="edges")
    assert Refiner("none").params() == {"mode": "none"}
    assert Refiner("guided").params() == {"mode": "guided", "radius": 9, "eps": 1e-3, "source": "mask",
                                          "keep_seed_component": True}
    bilateral = Refiner("bilateral").params()
    assert bilateral["sigma_spatial"] == 16 and bilateral["lam"] == 256 and "radius" not in bilateral
