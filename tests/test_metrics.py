"""Metrics against hand-computed answers: saliency IoU / accuracy / maxFβ, CorLoc, class-agnostic COCO AP."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from autolabel.masks import mask_to_rle
from autolabel.metrics import (SaliencyAccumulator, class_agnostic_gt, coco_ap, coco_gt_boxes, corloc, corloc_hits,
                               gt_to_bool, saliency_scores, to_unit_map, top_box, xywh_to_xyxy)

SHARED = Path(os.environ.get("AUTOLABEL_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
COCO_SUBSET = SHARED / "data" / "coco-train2017-subset" / "instances.json"

GT_2X3 = np.array([[255, 255, 0], [0, 0, 0]], dtype=np.uint8)


def fbeta(precision: float, recall: float, beta2: float = 0.3) -> float:
    return (1 + beta2) * precision * recall / (beta2 * precision + recall) if precision + recall else 0.0


def reference_fbeta_curve(pred: np.ndarray, gt: np.ndarray, beta2: float = 0.3) -> np.ndarray:
    """The papers' loop: threshold, count, precision, recall, Fβ — one threshold at a time."""
    curve = []
    for t in np.linspace(0, 1 - 1e-10, 255):
        fg = pred >= t
        tp = float(np.logical_and(fg, gt).sum())
        precision, recall = tp / (fg.sum() + 1e-20), tp / (gt.sum() + 1e-20)
        curve.append(fbeta(precision, recall, beta2))
    return np.array(curve)


# ------------------------------------------------------------------------------------------------ saliency
def test_binary_prediction_hand_computed() -> None:
    pred = np.array([[1, 0, 0], [1, 0, 0]], dtype=bool)
    acc = SaliencyAccumulator()
    one = acc.add(pred, GT_2X3, "tiny")
    assert one["iou"] == pytest.approx(1 / 3)
    assert one["accuracy"] == pytest.approx(4 / 6)
    # threshold 0: all 6 pixels are foreground (P = 2/6, R = 1); above 0: P = R = 1/2.
    assert fbeta(2 / 6, 1.0) == pytest.approx(0.43333 / 1.1, abs=1e-4)
    assert one["max_fbeta"] == pytest.approx(0.5)
    assert acc.result()["max_fbeta"] == pytest.approx(0.5)


def test_fbeta_is_averaged_over_images_before_the_max() -> None:
    binary = np.array([[1, 0, 0], [1, 0, 0]], dtype=bool)
    soft = np.array([[0.9, 0.6, 0.2], [0.2, 0.1, 0.0]], dtype=np.float32)
    scores = saliency_scores([binary, soft], [GT_2X3, GT_2X3])
    # The soft map reaches F = 1 for thresholds in (0.2, 0.6], where the binary map has F = 0.5.
    assert scores["max_fbeta"] == pytest.approx(0.75)
    assert 0.2 < scores["max_fbeta_threshold"] <= 0.6
    assert scores["iou"] == pytest.approx((1 / 3 + 1.0) / 2)
    assert scores["accuracy"] == pytest.approx((4 / 6 + 1.0) / 2)
    assert scores["n_images"] == 2


def test_one_threshold_for_all_images_not_one_per_image() -> None:
    low = np.array([[0.3, 0.3, 0.1], [0.1, 0.1, 0.1]])  # perfect for thresholds in (0.1, 0.3]
    high = np.array([[0.9, 0.8, 0.7], [0.7, 0.7, 0.7]])  # perfect for thresholds in (0.7, 0.8]
    scores = saliency_scores({"low": low, "high": high}, {"low": GT_2X3, "high": GT_2X3})
    # Best shared threshold is in (0.1, 0.3]: there "high" marks every pixel (P = 2/6, R = 1).
    assert scores["max_fbeta"] == pytest.approx((1.0 + fbeta(2 / 6, 1.0)) / 2)


def test_histogram_curve_equals_the_threshold_loop() -> None:
    rng = np.random.default_rng(3)
    acc = SaliencyAccumulator()
    for _ in range(5):
        gt = rng.random((23, 31)) > 0.6
        pred = np.clip(gt * 0.5 + rng.random(gt.shape) * 0.6, 0, 1).astype(np.float32)
        pred[0, :4] = [0.0, 1.0, acc.thresholds[17], np.nextafter(acc.thresholds[40], 0)]  # on and near edges
        np.testing.assert_allclose(acc.fbeta_curve(pred, gt), reference_fbeta_curve(pred, gt), atol=1e-12)
        as_png = np.round(pred * 255).astype(np.uint8)
        np.testing.assert_allclose(acc.fbeta_curve(as_png, gt), reference_fbeta_curve(as_png / 255.0, gt),
                                   atol=1e-12)
        binary = pred > 0.5
        np.testing.assert_allclose(acc.fbeta_curve(binary, gt), reference_fbeta_curve(binary * 1.0, gt), atol=1e-12)
        np.testing.assert_allclose(acc.fbeta_curve(binary.astype(np.int32), gt),
                                   reference_fbeta_curve(binary * 1.0, gt), atol=1e-12)


def test_8bit_and_float_maps_score_alike() -> None:
    rng = np.random.default_rng(4)
    gt = (rng.random((40, 50)) > 0.5).astype(np.uint8) * 255
    soft8 = rng.integers(0, 256, size=gt.shape, dtype=np.uint8)
    from_png = saliency_scores([soft8], [gt])
    from_float = saliency_scores([soft8.astype(np.float64) / 255.0], [gt])
    assert from_png == pytest.approx(from_float)


def test_gt_threshold_is_half_of_255() -> None:
    assert gt_to_bool(np.array([[127, 128]], dtype=np.uint8)).tolist() == [[False, True]]
    assert gt_to_bool(np.array([[0, 1]], dtype=np.uint8)).tolist() == [[False, True]]  # a 0/1 mask
    assert gt_to_bool(np.array([[0.5, 0.51]])).tolist() == [[False, True]]


def test_bad_maps_are_rejected_with_the_item_name() -> None:
    with pytest.raises(ValueError, match="img7"):
        SaliencyAccumulator().add(np.zeros((3, 3)), np.zeros((3, 4)), "img7")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_unit_map(np.array([[1.5]]))
    with pytest.raises(ValueError, match="2-D"):
        to_unit_map(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="no images"):
        SaliencyAccumulator().result()


def test_empty_prediction_scores_zero() -> None:
    one = SaliencyAccumulator().add(np.zeros((2, 3), dtype=bool), GT_2X3)
    assert one["iou"] == 0.0
    assert one["accuracy"] == pytest.approx(4 / 6)
    assert one["max_fbeta"] == pytest.approx(fbeta(2 / 6, 1.0))  # only "all foreground" at threshold 0 scores


# ------------------------------------------------------------------------------------------------ CorLoc
def test_xywh_to_xyxy() -> None:
    assert xywh_to_xyxy([[1, 2, 3, 4]]).tolist() == [[1, 2, 4, 6]]


def test_shifted_boxes_with_known_iou() -> None:
    gt = {"a": np.array([[0, 0, 10, 10]]), "b": np.array([[0, 0, 10, 10]]), "c": np.array([[0, 0, 10, 10]])}
    preds = {"a": np.array([[2, 0, 12, 10]]),  # IoU 80 / 120 = 0.667: hit
             "b": np.array([[5, 0, 15, 10]]),  # IoU 50 / 150 = 0.333: miss
             "c": np.array([[0, 0, 10, 20]])}  # IoU 100 / 200 = 0.5 exactly: hit
    assert corloc_hits(preds, gt) == {"a": True, "b": False, "c": True}
    result = corloc(preds, gt)
    assert result["corloc"] == pytest.approx(200 / 3)
    assert result["n_hits"] == 2 and result["n_images"] == 3


def test_top_scoring_box_is_judged_against_any_gt_box() -> None:
    gt = {"x": np.array([[100, 100, 120, 120], [0, 0, 10, 10]]), "y": np.array([[0, 0, 10, 10]])}
    preds = {"x": np.array([[50, 50, 60, 60], [0, 0, 10, 10]]), "y": np.array([[50, 50, 60, 60], [0, 0, 10, 10]])}
    scores = {"x": np.array([0.2, 0.9]), "y": np.array([0.9, 0.2])}
    assert corloc_hits(preds, gt, scores) == {"x": True, "y": False}


def test_images_without_prediction_are_misses() -> None:
    gt = {1: np.array([[0, 0, 10, 10]]), 2: np.array([[0, 0, 10, 10]]), 3: np.zeros((0, 4))}
    result = corloc({1: np.array([[0, 0, 10, 10]]), 9: np.array([[0, 0, 1, 1]])}, gt)
    assert result["corloc"] == pytest.approx(50.0)
    assert result["n_without_prediction"] == 1
    assert result["n_without_gt"] == 1
    assert result["n_unknown_predictions"] == 1


def test_crowd_gt_is_ignored() -> None:
    dataset = {
        "images": [{"id": 1, "width": 50, "height": 50}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1, "category_id": 3},
                        {"id": 2, "image_id": 1, "bbox": [30, 30, 10, 10], "iscrowd": 0, "category_id": 3}],
    }
    gt = coco_gt_boxes(dataset)
    assert gt[1].tolist() == [[30, 30, 40, 40]]
    assert corloc({1: np.array([[0, 0, 10, 10]])}, gt)["corloc"] == 0.0
    assert corloc({1: np.array([[30, 30, 40, 40]])}, gt)["corloc"] == 100.0


def test_several_boxes_need_scores() -> None:
    with pytest.raises(ValueError, match="no scores"):
        top_box(np.zeros((2, 4)), None, "img")
    assert top_box(np.zeros((0, 4)), None) is None


# ------------------------------------------------------------------------------------------------ COCO AP
def square(height: int, width: int, x0: int, y0: int, size: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y0 + size, x0:x0 + size] = True
    return mask


def tiny_coco() -> dict:
    """Two 60x80 images, three objects of two categories (polygons), one crowd region (RLE)."""
    crowd = mask_to_rle(square(60, 80, 50, 30, 20))
    return {
        "images": [{"id": 10, "file_name": "a.jpg", "width": 80, "height": 60},
                   {"id": 11, "file_name": "b.jpg", "width": 80, "height": 60}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400.0, "iscrowd": 0,
             "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
            {"id": 2, "image_id": 10, "category_id": 5, "bbox": [40, 5, 30, 20], "area": 600.0, "iscrowd": 0,
             "segmentation": [[40, 5, 70, 5, 70, 25, 40, 25]]},
            {"id": 3, "image_id": 11, "category_id": 5, "bbox": [0, 0, 40, 40], "area": 1600.0, "iscrowd": 0,
             "segmentation": [[0, 0, 40, 0, 40, 40, 0, 40]]},
            {"id": 4, "image_id": 11, "category_id": 3, "bbox": [50, 30, 20, 20], "area": 400.0, "iscrowd": 1,
             "segmentation": crowd},
        ],
    }


def box_mask(height: int, width: int, box: list[float]) -> np.ndarray:
    x, y, w, h = (int(v) for v in box)
    mask = np.zeros((height, width), dtype=bool)
    mask[y:y + h, x:x + w] = True
    return mask


def perfect_results(dataset: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 0.5 + 0.1 * i, "category_id": 99,
             "segmentation": mask_to_rle(box_mask(60, 80, a["bbox"]))}
            for i, a in enumerate(dataset["annotations"]) if not a["iscrowd"]]


def test_perfect_predictions_give_ap_one_and_print_nothing() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        metrics = coco_ap(tiny_coco(), perfect_results(tiny_coco()))
    assert out.getvalue() == ""
    for prefix in ("box", "mask"):
        assert metrics[f"{prefix}_AP"] == pytest.approx(1.0)
        assert metrics[f"{prefix}_AP50"] == pytest.approx(1.0)
        assert metrics[f"{prefix}_AR100"] == pytest.approx(1.0)
    assert metrics["n_images"] == 2 and metrics["n_images_with_predictions"] == 2 and metrics["n_predictions"] == 3
    assert all(isinstance(v, (float, int)) for v in metrics.values())
    json.dumps(metrics)


def test_categories_are_merged_into_one() -> None:
    agnostic = class_agnostic_gt(tiny_coco())
    assert [c["id"] for c in agnostic["categories"]] == [1]
    assert {a["category_id"] for a in agnostic["annotations"]} == {1}
    assert {a["category_id"] for a in tiny_coco()["annotations"]} == {3, 5}  # the input is left alone


def test_loose_box_counts_at_50_not_at_75() -> None:
    dataset = tiny_coco()
    dataset["annotations"] = [dataset["annotations"][2]]  # one 40x40 box in image 11
    loose = [{"image_id": 11, "bbox": [0, 0, 40, 60], "score": 1.0}]  # IoU 1600 / 2400 = 0.667
    metrics = coco_ap(dataset, loose, iou_types=("bbox",))
    assert metrics["box_AP50"] == pytest.approx(1.0)
    assert metrics["box_AP75"] == pytest.approx(0.0)
    assert "mask_AP" not in metrics


def test_prediction_on_crowd_region_is_not_a_false_positive() -> None:
    dataset = tiny_coco()
    results = perfect_results(dataset)
    results.append({"image_id": 11, "bbox": [50, 30, 20, 20], "score": 0.99,
                    "segmentation": mask_to_rle(box_mask(60, 80, [50, 30, 20, 20]))})
    metrics = coco_ap(dataset, results)
    assert metrics["box_AP"] == pytest.approx(1.0)
    assert metrics["mask_AP"] == pytest.approx(1.0)
    # The same box where no crowd is: a false positive ranked first in image 11.
    dataset["annotations"] = dataset["annotations"][:3]
    assert coco_ap(dataset, results)["box_AP"] < 1.0


def test_predictions_outside_gt_are_dropped_and_missing_ones_count() -> None:
    dataset = tiny_coco()
    results = [r for r in perfect_results(dataset) if r["image_id"] == 10]
    results.append({"image_id": 777, "bbox": [0, 0, 5, 5], "score": 1.0,
                    "segmentation": mask_to_rle(box_mask(60, 80, [0, 0, 5, 5]))})
    metrics = coco_ap(dataset, results)
    assert metrics["n_predictions_outside_gt"] == 1
    assert metrics["n_images_with_predictions"] == 1
    assert metrics["box_AR100"] == pytest.approx(2 / 3)
    only_10 = coco_ap(dataset, results, image_ids=[10])
    assert only_10["box_AP"] == pytest.approx(1.0) and only_10["n_images"] == 1


def test_no_predictions_give_zero() -> None:
    metrics = coco_ap(tiny_coco(), [])
    assert metrics["box_AP"] == 0.0 and metrics["mask_AR100"] == 0.0 and metrics["n_predictions"] == 0


def test_missing_segmentation_is_reported() -> None:
    with pytest.raises(ValueError, match="segmentation"):
        coco_ap(tiny_coco(), [{"image_id": 10, "bbox": [10, 10, 20, 20], "score": 1.0}])


@pytest.mark.skipif(not COCO_SUBSET.exists(), reason="shared COCO subset not present")
def test_shared_coco_subset_scored_against_its_own_boxes() -> None:
    dataset = json.loads(COCO_SUBSET.read_text())
    results = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 1.0, "category_id": 1}
               for a in dataset["annotations"] if not a["iscrowd"]]
    metrics = coco_ap(dataset, results, iou_types=("bbox",))
    assert metrics["box_AP50"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["box_AR100"] == pytest.approx(1.0, abs=1e-3)
    gt = coco_gt_boxes(dataset)
    first = {key: boxes[:1] for key, boxes in gt.items()}
    assert corloc(first, gt)["corloc"] == pytest.approx(100.0)
