"""Detections: validation, subsets, COCO results entries and Label Studio regions (rectangle, brush, polygon)."""

from __future__ import annotations

import numpy as np
import pytest

from autolabel import masks as mu
from autolabel.detections import Detections

H, W = 60, 80
CONTROLS = [("rectanglelabels", "box", "image"), ("brushlabels", "brush", "image"),
            ("polygonlabels", "poly", "image")]


def two_objects(labels: list[str] | None = None) -> Detections:
    masks = np.zeros((2, H, W), bool)
    masks[0, 10:30, 5:25] = True
    masks[1, 40:60, 50:80] = True  # touches the bottom-right corner
    return Detections.from_masks(masks, [0.9, 0.4], descriptors=np.eye(2, 8, dtype=np.float32), labels=labels)


# ------------------------------------------------------------------------------------------------ validation
def test_validation_rejects_inconsistent_lengths() -> None:
    with pytest.raises(ValueError, match="scores"):
        Detections(np.zeros((2, 4)), np.zeros(3), (H, W))
    with pytest.raises(ValueError, match="masks shape"):
        Detections(np.zeros((1, 4)), np.zeros(1), (H, W), masks=np.zeros((1, H, W + 1), bool))
    with pytest.raises(ValueError, match="masks shape"):
        Detections(np.zeros((1, 4)), np.zeros(1), (H, W), masks=np.zeros((2, H, W), bool))
    with pytest.raises(ValueError, match="labels"):
        Detections(np.zeros((1, 4)), np.zeros(1), (H, W), labels=["a", "b"])
    with pytest.raises(ValueError, match="descriptors"):
        Detections(np.zeros((2, 4)), np.zeros(2), (H, W), descriptors=np.zeros((3, 8)))
    with pytest.raises(ValueError, match="descriptors"):
        Detections(np.zeros((2, 4)), np.zeros(2), (H, W), descriptors=np.zeros(2))


def test_arrays_are_normalised() -> None:
    det = Detections([1, 2, 3, 4], 0.5, (H, W), masks=np.zeros((1, H, W), np.uint8))
    assert det.xyxy.shape == (1, 4) and det.xyxy.dtype == np.float32
    assert det.scores.shape == (1,) and det.scores.dtype == np.float32
    assert det.masks.dtype == bool
    assert (det.height, det.width) == (H, W)
    with_desc = Detections([1, 2, 3, 4], 0.5, (H, W), descriptors=np.ones((1, 5), np.float64))
    assert with_desc.descriptors.dtype == np.float32


def test_empty() -> None:
    det = Detections.empty((H, W))
    assert len(det) == 0 and det.masks.shape == (0, H, W)
    assert det.to_coco(image_id=1) == []
    assert det.to_labelstudio(CONTROLS, label="Object") == []
    assert Detections.empty((H, W), with_masks=False).masks is None


def test_from_masks_boxes_are_tight() -> None:
    det = two_objects()
    np.testing.assert_array_equal(det.xyxy, [[5, 10, 25, 30], [50, 40, 80, 60]])
    assert det.image_size == (H, W)


def test_subset_by_index_and_boolean() -> None:
    det = two_objects(labels=["cat", "dog"])
    second = det.subset([1])
    assert len(second) == 1 and second.labels == ["dog"]
    np.testing.assert_array_equal(second.masks[0], det.masks[1])
    np.testing.assert_array_equal(second.descriptors, det.descriptors[1:])
    by_bool = det.subset(np.array([True, False]))
    assert by_bool.labels == ["cat"] and by_bool.scores[0] == pytest.approx(0.9)
    assert len(det.subset([])) == 0


# ------------------------------------------------------------------------------------------------------ COCO
def test_to_coco_entries() -> None:
    det = two_objects()
    entries = det.to_coco(image_id=42, file_name="a/b.jpg")
    assert len(entries) == 2
    first = entries[0]
    assert first["image_id"] == 42 and first["file_name"] == "a/b.jpg"
    assert first["bbox"] == [5.0, 10.0, 20.0, 20.0]  # x, y, w, h
    assert first["category_id"] == 1
    assert first["score"] == pytest.approx(0.9)
    assert isinstance(first["segmentation"]["counts"], str)
    assert first["segmentation"]["size"] == [H, W]
    for entry, mask in zip(entries, det.masks):
        np.testing.assert_array_equal(mu.rle_to_mask(entry["segmentation"]), mask)
        x, y, w, h = entry["bbox"]
        assert 0 <= x and 0 <= y and x + w <= W and y + h <= H
    assert "label" not in first


def test_to_coco_without_ids_masks_or_with_labels() -> None:
    det = Detections(np.array([[1.234567, 2, 3, 4]]), [0.5], (H, W))
    (entry,) = det.to_coco(category_id=7)
    assert "image_id" not in entry and "file_name" not in entry and "segmentation" not in entry
    assert entry["bbox"] == [1.23, 2.0, 1.77, 2.0] and entry["category_id"] == 7
    labelled = two_objects(labels=["cat", "dog"]).to_coco()
    assert [e["label"] for e in labelled] == ["cat", "dog"]


# ---------------------------------------------------------------------------------------------- Label Studio
def test_labelstudio_regions_for_every_control() -> None:
    det = two_objects()
    regions = det.to_labelstudio(CONTROLS, label="Object")
    assert len(regions) == 6
    assert len({r["id"] for r in regions}) == 6
    for r in regions:
        assert r["to_name"] == "image"
        assert (r["original_width"], r["original_height"]) == (W, H)
        assert r["value"][r["type"]] == ["Object"]
        assert r["from_name"] == {"rectanglelabels": "box", "brushlabels": "brush", "polygonlabels": "poly"}[r["type"]]
    scores = [r["score"] for r in regions if r["type"] == "rectanglelabels"]
    assert scores == [pytest.approx(0.9), pytest.approx(0.4)]


def test_labelstudio_rectangle_percentages() -> None:
    det = two_objects()
    rects = [r["value"] for r in det.to_labelstudio([CONTROLS[0]], label="Object")]
    assert rects[0]["x"] == pytest.approx(100 * 5 / W) and rects[0]["y"] == pytest.approx(100 * 10 / H)
    assert rects[0]["width"] == pytest.approx(100 * 20 / W) and rects[0]["height"] == pytest.approx(100 * 20 / H)
    for v in rects:
        assert 0 <= v["x"] and 0 <= v["y"]
        assert v["x"] + v["width"] <= 100 + 1e-9 and v["y"] + v["height"] <= 100 + 1e-9
        assert v["rotation"] == 0
    assert rects[1]["x"] + rects[1]["width"] == pytest.approx(100)  # the corner object reaches the edge


def test_labelstudio_brush_decodes_to_the_mask() -> None:
    det = two_objects()
    brushes = [r["value"] for r in det.to_labelstudio([CONTROLS[1]], label="Object")]
    for value, mask in zip(brushes, det.masks):
        assert value["format"] == "rle"
        np.testing.assert_array_equal(mu.ls_rle_to_mask(value["rle"], H, W), mask)


def test_labelstudio_polygon_points_are_percent_inside_the_image() -> None:
    det = two_objects()
    polys = [r["value"] for r in det.to_labelstudio([CONTROLS[2]], label="Object")]
    assert len(polys) == 2
    for value in polys:
        pts = np.array(value["points"])
        assert value["closed"] is True and len(pts) >= 3
        assert (pts >= 0).all() and (pts <= 100).all()
    first = np.array(polys[0]["points"])
    assert first[:, 0].min() == pytest.approx(100 * 5 / W) and first[:, 1].min() == pytest.approx(100 * 10 / H)


def test_labelstudio_uses_per_object_labels_over_the_default() -> None:
    det = two_objects(labels=["cat", "dog"])
    regions = det.to_labelstudio([CONTROLS[0]], label="Object")
    assert [r["value"]["rectanglelabels"] for r in regions] == [["cat"], ["dog"]]


def test_labelstudio_errors_and_skips() -> None:
    det = two_objects()
    with pytest.raises(ValueError, match="label"):
        det.to_labelstudio(CONTROLS)
    with pytest.raises(ValueError, match="keypointlabels"):
        det.to_labelstudio([("keypointlabels", "kp", "image")], label="Object")
    boxes_only = Detections(det.xyxy, det.scores, (H, W))
    regions = boxes_only.to_labelstudio(CONTROLS, label="Object")
    assert [r["type"] for r in regions] == ["rectanglelabels", "rectanglelabels"]


def test_tiny_mask_gets_no_degenerate_polygon() -> None:
    masks = np.zeros((1, H, W), bool)
    masks[0, 5, 5] = True  # one pixel: a polygon would have < 3 points
    det = Detections.from_masks(masks, [0.3])
    types = [r["type"] for r in det.to_labelstudio(CONTROLS, label="Object")]
    assert types == ["rectanglelabels", "brushlabels"]
