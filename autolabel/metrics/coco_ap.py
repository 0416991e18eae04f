"""Class-agnostic COCO AP / AR (box and mask) with pycocotools.

All ground-truth categories are merged into one ("object"), crowd regions stay crowd (ignored, as COCO does),
and predictions in COCO results format (bbox xywh, segmentation RLE, score) are scored on the ground-truth images
only. pycocotools' printing is captured; the answer is a flat dict of floats such as ``box_AP``, ``box_AP50``,
``box_AR100``, ``mask_AP`` (pycocotools' -1.0 means "no ground truth in that area range").
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Hashable, Iterable, Sequence

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

AGNOSTIC_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = {"bbox": "box", "segm": "mask"}


def class_agnostic_gt(dataset: dict) -> dict:
    """A copy of a COCO instances dict with one category; fills ``id``/``iscrowd``/``area`` where missing."""
    out = {key: value for key, value in dataset.items() if key not in ("annotations", "categories")}
    out["images"] = copy.deepcopy(dataset.get("images", []))
    out["categories"] = [dict(AGNOSTIC_CATEGORY)]
    annotations = []
    for index, ann in enumerate(dataset.get("annotations", []), start=1):
        ann = dict(ann)
        ann["category_id"] = AGNOSTIC_CATEGORY["id"]
        ann.setdefault("id", index)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        annotations.append(ann)
    out["annotations"] = annotations
    return out


def _coco_from_dict(dataset: dict) -> COCO:
    api = COCO()
    api.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def _detections_dataset(gt: dict, results: Sequence[dict], iou_type: str) -> dict:
    """The predictions as a COCO dataset over the GT images (areas: box area for bbox, mask area for segm)."""
    annotations = []
    for index, res in enumerate(results, start=1):
        ann = {"id": index, "image_id": res["image_id"], "category_id": AGNOSTIC_CATEGORY["id"],
               "score": float(res["score"]), "iscrowd": 0}
        if iou_type == "bbox":
            x, y, w, h = (float(v) for v in res["bbox"])
            ann.update(bbox=[x, y, w, h], area=w * h)
        else:
            rle = dict(res["segmentation"])
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
            ann.update(segmentation=rle, area=float(coco_mask.area(rle)),
                       bbox=[float(v) for v in coco_mask.toBbox(rle)])
        annotations.append(ann)
    return {"images": gt["images"], "categories": gt["categories"], "annotations": annotations}


def _run_eval(gt_api: COCO, dt_api: COCO, iou_type: str, image_ids: list) -> np.ndarray:
    evaluator = COCOeval(gt_api, dt_api, iou_type)
    evaluator.params.imgIds = image_ids
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def coco_ap(gt_dataset: dict, results: Iterable[dict], iou_types: Sequence[str] = ("bbox", "segm"),
            image_ids: Iterable[Hashable] | None = None) -> dict[str, float]:
    """Class-agnostic COCO metrics of ``results`` against ``gt_dataset`` (a COCO instances dict).

    Args:
        gt_dataset: COCO instances dict; its categories are merged into one.
        results: COCO results entries with ``image_id``, ``score`` and ``bbox`` (for "bbox") or
            ``segmentation`` RLE (for "segm"); their ``category_id`` is ignored.
        iou_types: any of "bbox", "segm".
        image_ids: evaluate on these GT images only (default: every GT image).

    Returns ``box_*`` / ``mask_*`` for every name in :data:`STAT_NAMES`, plus ``n_images``,
    ``n_images_with_predictions``, ``n_predictions`` and ``n_predictions_outside_gt`` (dropped).
    """
    gt = class_agnostic_gt(gt_dataset)
    known = [img["id"] for img in gt["images"]]
    if image_ids is not None:
        wanted = set(image_ids)
        unknown = wanted - set(known)
        if unknown:
            raise ValueError(f"{len(unknown)} requested image id(s) are not in the ground truth, "
                             f"e.g. {sorted(map(str, unknown))[:3]}")
        known = [i for i in known if i in wanted]
    if not known:
        raise ValueError("the ground truth has no images to evaluate")
    keep = set(known)
    results = list(results)
    kept = [res for res in results if res.get("image_id") in keep]
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown IoU type {iou_type!r}; use one of {sorted(IOU_TYPES)}")
        field = "bbox" if iou_type == "bbox" else "segmentation"
        missing = sum(1 for res in kept if field not in res)
        if missing:
            raise ValueError(f"{missing} prediction(s) have no {field!r}; {iou_type} AP needs it on every one")
    gt_api = _coco_from_dict(gt)
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        dt_api = _coco_from_dict(_detections_dataset(gt, kept, iou_type))
        stats = _run_eval(gt_api, dt_api, iou_type, sorted(known))
        prefix = IOU_TYPES[iou_type]
        metrics.update({f"{prefix}_{name}": float(value) for name, value in zip(STAT_NAMES, stats)})
    metrics.update(
        n_images=len(known),
        n_images_with_predictions=len({res["image_id"] for res in kept}),
        n_predictions=len(kept),
        n_predictions_outside_gt=len(results) - len(kept),
    )
    return metrics
