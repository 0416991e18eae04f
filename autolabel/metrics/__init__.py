"""Evaluation metrics in the papers' conventions: CorLoc, salient-object IoU/accuracy/maxFβ, class-agnostic COCO AP."""

from autolabel.metrics.coco_ap import STAT_NAMES, class_agnostic_gt, coco_ap
from autolabel.metrics.corloc import coco_gt_boxes, corloc, corloc_hits, top_box, xywh_to_xyxy
from autolabel.metrics.saliency import SaliencyAccumulator, gt_to_bool, saliency_scores, to_unit_map

__all__ = [
    "STAT_NAMES", "class_agnostic_gt", "coco_ap",
    "coco_gt_boxes", "corloc", "corloc_hits", "top_box", "xywh_to_xyxy",
    "SaliencyAccumulator", "gt_to_bool", "saliency_scores", "to_unit_map",
]
