"""Mask utilities: 4-connected components, boxes, IoU, COCO RLE, Label Studio brush RLE, polygons, guided filter."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from autolabel import masks as mu


def random_blobs(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.random((max(1, h // 6), max(1, w // 6))) > 0.6
    return cv2.resize(small.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


# ----------------------------------------------------------------------------------------------- components
def test_diagonal_neighbours_are_separate_components() -> None:
    m = np.zeros((4, 4), bool)
    m[0, 0] = m[1, 1] = m[2, 2] = True
    n, labels = mu.connected_components(m)
    assert n == 3
    assert len({labels[0, 0], labels[1, 1], labels[2, 2]}) == 3 and labels[3, 3] == 0


def test_edge_neighbours_join() -> None:
    m = np.zeros((3, 5), bool)
    m[1, :] = True
    m[0, 2] = True
    n, _ = mu.connected_components(m)
    assert n == 1


def test_component_at_and_largest_component() -> None:
    m = np.zeros((6, 8), bool)
    m[0:2, 0:2] = True      # 4 pixels
    m[3:6, 4:8] = True      # 12 pixels
    small = mu.component_at(m, 1, 1)
    assert small.sum() == 4 and small[0, 0] and not small[4, 5]
    assert not mu.component_at(m, 0, 7).any()  # seed pixel off → empty
    big = mu.largest_component(m)
    assert big.sum() == 12 and big[5, 7]
    assert not mu.largest_component(np.zeros((3, 3), bool)).any()


# ----------------------------------------------------------------------------------------------- boxes, IoU
def test_mask_box_is_tight_with_exclusive_end() -> None:
    m = np.zeros((10, 20), bool)
    m[2:5, 7:11] = True
    assert mu.mask_extent(m) == (2, 7, 4, 10)
    assert mu.mask_to_box(m) == (7.0, 2.0, 11.0, 5.0)
    assert mu.mask_to_box(np.zeros((3, 3), bool)) == (0.0, 0.0, 0.0, 0.0)
    assert mu.mask_extent(np.zeros((3, 3), bool)) is None
    full = np.ones((4, 6), bool)
    assert mu.mask_to_box(full) == (0.0, 0.0, 6.0, 4.0)


def test_box_iou_known_values() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    iou = mu.box_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0])
    np.testing.assert_allclose(iou[1], [0.0, 0.0, 0.0])  # degenerate box: no division by zero


def test_mask_iou() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert mu.mask_iou(a, b) == pytest.approx(4 / 12)
    assert mu.mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0


# -------------------------------------------------------------------------------------------------- COCO RLE
@pytest.mark.parametrize("h, w, seed", [(1, 1, 0), (7, 13, 1), (120, 97, 2), (300, 400, 3)])
def test_coco_rle_round_trip(h: int, w: int, seed: int) -> None:
    m = random_blobs(h, w, seed)
    rle = mu.mask_to_rle(m)
    assert rle["size"] == [h, w]
    assert isinstance(rle["counts"], str)
    np.testing.assert_array_equal(mu.rle_to_mask(rle), m)
    as_bytes = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    np.testing.assert_array_equal(mu.rle_to_mask(as_bytes), m)


def test_coco_rle_empty_and_full() -> None:
    for m in (np.zeros((5, 6), bool), np.ones((5, 6), bool)):
        np.testing.assert_array_equal(mu.rle_to_mask(mu.mask_to_rle(m)), m)


def test_uncompressed_coco_rle_is_column_major() -> None:
    # 2x3 image, column-major runs: 1 off, 2 on, 3 off → pixels (1,0) and (0,1) are on
    m = mu.rle_to_mask({"size": [2, 3], "counts": [1, 2, 3]})
    expected = np.array([[0, 1, 0], [1, 0, 0]], bool)
    np.testing.assert_array_equal(m, expected)


# ---------------------------------------------------------------------------------------- Label Studio brush
@pytest.mark.parametrize("h, w, seed", [(1, 1, 0), (9, 14, 4), (64, 80, 5)])
def test_labelstudio_brush_rle_round_trip(h: int, w: int, seed: int) -> None:
    m = random_blobs(h, w, seed)
    rle = mu.mask_to_ls_rle(m)
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in rle)
    # the SDK's own decoder gives a flat RGBA byte array, row-major; alpha is the mask at 255
    rgba = np.reshape(decode_rle(rle), (h, w, 4))
    np.testing.assert_array_equal(rgba[:, :, 3] == 255, m)
    assert set(np.unique(rgba[:, :, 3])) <= {0, 255}
    np.testing.assert_array_equal(mu.ls_rle_to_mask(rle, h, w), m)


# --------------------------------------------------------------------------------------------------- polygon
def test_rectangle_polygon_has_four_corners() -> None:
    m = np.zeros((20, 30), bool)
    m[5:15, 8:22] = True
    poly = mu.mask_to_polygon(m)
    assert sorted(poly) == sorted([(8.0, 5.0), (8.0, 14.0), (21.0, 14.0), (21.0, 5.0)])


def test_polygon_refills_to_the_mask() -> None:
    m = np.zeros((100, 120), np.uint8)
    cv2.circle(m, (60, 50), 30, 1, -1)
    poly = mu.mask_to_polygon(m.astype(bool), tolerance=1.0)
    assert len(poly) >= 8
    refill = np.zeros_like(m)
    cv2.fillPoly(refill, [np.round(np.array(poly)).astype(np.int32)], 1)
    assert mu.mask_iou(refill.astype(bool), m.astype(bool)) > 0.95


def test_polygon_takes_the_largest_part_and_empty_gives_none() -> None:
    m = np.zeros((30, 30), bool)
    m[1:4, 1:4] = True
    m[10:25, 10:25] = True
    poly = np.array(mu.mask_to_polygon(m))
    assert poly[:, 0].min() >= 10 and poly[:, 1].min() >= 10
    assert mu.mask_to_polygon(np.zeros((5, 5), bool)) == []


# ---------------------------------------------------------------------------------------------- guided filter
def test_guided_filter_keeps_constants_and_follows_guide_edges() -> None:
    guide = np.zeros((40, 40), np.float32)
    guide[:, 20:] = 1.0
    flat = mu.guided_filter(guide, np.full((40, 40), 0.7, np.float32), radius=4, eps=1e-3)
    np.testing.assert_allclose(flat, 0.7, atol=1e-4)
    blocky = np.zeros((40, 40), np.float32)
    blocky[:, 16:] = 1.0  # edge 4 px left of the guide's edge
    out = mu.guided_filter(guide, blocky, radius=6, eps=1e-4)
    first_on = np.argmax(out > 0.5, axis=1)
    assert (first_on > 16).all() and (first_on <= 20).all()  # the 0.5 level moved from 16 toward the edge
    steps = np.diff(out[20])
    assert int(np.argmax(steps)) == 19  # the sharpest step sits at the guide's edge (between 19 and 20)


def test_to_gray_is_the_channel_average() -> None:
    img = np.zeros((2, 2, 3), np.float32)
    img[..., 0] = 0.3
    img[..., 2] = 0.9
    np.testing.assert_allclose(mu.to_gray(img), 0.4)
