"""Refiner: 'none' maps patch masks exactly; 'guided' keeps aligned masks and snaps blocky ones to real edges."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from autolabel.discovery.base import PatchRegion
from autolabel.geometry import PatchGeometry
from autolabel.masks import mask_iou
from autolabel.refine import Refiner

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


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_guided_keeps_a_patch_aligned_mask(name: str) -> None:
    h, w, max_size = GEOMETRIES[name]
    geo = PatchGeometry.for_image(h, w, PATCH, max_size)
    image, truth = scene(geo, (24, 16, 72, 56))  # edges on patch borders
    pm = blocky_patch_mask(geo, truth)
    truth_orig = geo.input_to_original(truth, "nearest")
    assert mask_iou(geo.patch_mask_to_original(pm), truth_orig) > 0.99
    out = Refiner("guided")(PatchRegion(pm), geo, image)
    assert out.shape == (h, w)
    assert mask_iou(out, truth_orig) > 0.97


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_guided_snaps_a_blocky_mask_to_the_real_edge(name: str) -> None:
    h, w, max_size = GEOMETRIES[name]
    geo = PatchGeometry.for_image(h, w, PATCH, max_size)
    image, truth = scene(geo, (21, 13, 75, 45))  # edges 3-5 px off the patch grid
    pm = blocky_patch_mask(geo, truth)
    truth_orig = geo.input_to_original(truth, "nearest")
    raw_iou = mask_iou(geo.patch_mask_to_original(pm), truth_orig)
    refined_iou = mask_iou(Refiner("guided")(PatchRegion(pm), geo, image), truth_orig)
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


def test_guided_falls_back_to_the_raw_mask() -> None:
    geo = PatchGeometry.for_image(96, 128, PATCH, None)
    image, _ = scene(geo, (16, 16, 48, 48))
    refiner = Refiner("guided")
    empty = np.zeros((geo.grid_h, geo.grid_w), bool)
    assert not refiner(PatchRegion(empty), geo, image).any()
    full = np.ones((geo.grid_h, geo.grid_w), bool)  # constant source map: nothing to filter
    assert refiner(PatchRegion(full), geo, image).all()
    pm = np.zeros((geo.grid_h, geo.grid_w), bool)
    pm[2:5, 3:7] = True
    np.testing.assert_array_equal(refiner(PatchRegion(pm), geo, None), geo.patch_mask_to_original(pm))


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown refinement"):
        Refiner("crf")
    with pytest.raises(ValueError, match="source"):
        Refiner("guided", source="edges")
    assert Refiner("none").params() == {"mode": "none"}
    assert Refiner("guided").params()["radius"] == 9
