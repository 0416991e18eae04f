"""CorLoc (correct localisation) in the object-discovery papers' convention.

An image is correctly localised when its predicted box (the top-scoring one, or the only one) has IoU >= 0.5
with ANY of its ground-truth boxes. Every image with ground truth counts: an image without a prediction is a
miss. Boxes are xyxy pixels and IoU has no +1 (see :func:`autolabel.masks.box_iou`); COCO boxes are xywh and
crowd regions are dropped before calling (see :func:`coco_gt_boxes`).
"""

from __future__ import annotations

from typing import Hashable, Iterable, Mapping

import numpy as np

from autolabel.masks import box_iou

IOU_THRESHOLD = 0.5


def xywh_to_xyxy(boxes: np.ndarray | Iterable[Iterable[float]]) -> np.ndarray:
    """(n, 4) [x, y, w, h] → (n, 4) [x0, y0, x1, y1] float64."""
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([arr[:, :2], arr[:, :2] + arr[:, 2:]], axis=1)


def coco_gt_boxes(dataset: dict) -> dict[Hashable, np.ndarray]:
    """Non-crowd ground-truth boxes (xyxy) per image id of a COCO instances dict; every image gets an entry."""
    boxes: dict[Hashable, list[list[float]]] = {img["id"]: [] for img in dataset.get("images", [])}
    for ann in dataset.get("annotations", []):
        if ann.get("iscrowd", 0):
            continue
        boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    return {key: xywh_to_xyxy(value) for key, value in boxes.items()}


def top_box(boxes: np.ndarray, scores: np.ndarray | None, item: str = "image") -> np.ndarray | None:
    """The box CorLoc judges: the top-scoring one (first on ties), the only one, or None when there is none."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return None
    if scores is None:
        if len(boxes) > 1:
            raise ValueError(f"{item}: {len(boxes)} boxes but no scores to pick the top one")
        return boxes[0]
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{item}: {len(boxes)} boxes but {len(scores)} scores")
    return boxes[int(np.argmax(scores))]


def corloc_hits(pred_boxes: Mapping[Hashable, np.ndarray], gt_boxes: Mapping[Hashable, np.ndarray],
                pred_scores: Mapping[Hashable, np.ndarray] | None = None,
                iou_threshold: float = IOU_THRESHOLD) -> dict[Hashable, bool]:
    """Per ground-truth image: is its top predicted box within ``iou_threshold`` IoU of any GT box?

    Images whose ground truth has no box cannot be localised and are left out of the answer.
    """
    hits: dict[Hashable, bool] = {}
    for key, gt in gt_boxes.items():
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        if len(gt) == 0:
            continue
        scores = None if pred_scores is None else pred_scores.get(key)
        box = top_box(pred_boxes.get(key, np.zeros((0, 4))), scores, str(key))
        hits[key] = box is not None and bool((box_iou(box[None], gt) >= iou_threshold).any())
    return hits


def corloc(pred_boxes: Mapping[Hashable, np.ndarray], gt_boxes: Mapping[Hashable, np.ndarray],
           pred_scores: Mapping[Hashable, np.ndarray] | None = None,
           iou_threshold: float = IOU_THRESHOLD) -> dict[str, float]:
    """CorLoc in percent over the ground-truth images, with the counts behind it.

    Returns ``corloc`` (0..100), ``n_images`` (images with at least one GT box: the denominator), ``n_hits``,
    ``n_without_prediction`` (counted as misses), ``n_without_gt`` (images with no usable GT box, left out) and
    ``n_unknown_predictions`` (predicted images absent from the ground truth, ignored).
    """
    hits = corloc_hits(pred_boxes, gt_boxes, pred_scores, iou_threshold)
    if not hits:
        raise ValueError("no ground-truth image has a box; CorLoc is undefined")
    has_pred = {key for key, boxes in pred_boxes.items() if np.asarray(boxes).size}
    n_hits = sum(hits.values())
    return {
        "corloc": 100.0 * n_hits / len(hits),
        "n_images": len(hits),
        "n_hits": n_hits,
        "n_without_prediction": sum(1 for key in hits if key not in has_pred),
        "n_without_gt": len(gt_boxes) - len(hits),
        "n_unknown_predictions": len(has_pred - set(gt_boxes)),
    }
