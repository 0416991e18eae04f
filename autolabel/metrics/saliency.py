"""Salient-object metrics in the unsupervised-saliency papers' convention: IoU, pixel accuracy and maxFβ.

* Ground truth is foreground where its value > 0.5 on a 0..1 scale (8-bit masks stored 0/255: > 127.5).
* IoU and pixel accuracy use the prediction binarised at ``binarize_at`` (0.5), computed per image and then
  averaged over images.
* maxFβ: the soft prediction is thresholded at 255 levels ``linspace(0, 1 - 1e-10, 255)`` (foreground where
  value >= threshold); precision and recall per image, Fβ (β² = 0.3, 0/0 → 0) per image, averaged over images
  at each threshold, maximum over thresholds. A binary prediction only has two distinct operating points, so
  its maxFβ is simply its Fβ (or that of "everything foreground" at threshold 0, whichever is higher).

The implementation is exact but histogram-based: each pixel's value is turned once into the number of thresholds
it passes, and the per-threshold counts are suffix sums of two small histograms, so 1000 ECSSD images take seconds.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

NUM_THRESHOLDS = 255
BETA2 = 0.3
_EPS = 1e-20


def to_unit_map(values: np.ndarray, item: str = "map") -> np.ndarray:
    """A prediction or mask as float values on the 0..1 scale.

    bool → {0, 1}; 8-bit → value / 255 (16-bit → / 65535); other integers and floats must already lie in 0..1.
    An integer array whose values are only 0 and 1 is read as a binary mask, not as a nearly black 8-bit map.
    """
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise ValueError(f"{item}: expected a 2-D (H, W) map, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        top = int(arr.max()) if arr.size else 0
        low = int(arr.min()) if arr.size else 0
        if low < 0:
            raise ValueError(f"{item}: negative values in an integer map")
        if top <= 1:
            return arr.astype(np.float32)
        if arr.dtype == np.uint8 or top <= 255:
            return arr.astype(np.float32) / 255.0
        if arr.dtype == np.uint16 or top <= 65535:
            return arr.astype(np.float32) / 65535.0
        raise ValueError(f"{item}: integer values up to {top} are on no known scale")
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(f"{item}: float maps must hold finite values in [0, 1]")
        return arr.astype(np.float32)
    raise ValueError(f"{item}: unsupported dtype {arr.dtype}")


def gt_to_bool(gt: np.ndarray, item: str = "ground truth") -> np.ndarray:
    """Ground-truth foreground: value > 0.5 on the 0..1 scale (> 127.5 for 0/255 masks)."""
    return to_unit_map(gt, item) > 0.5


def fbeta_thresholds(num: int = NUM_THRESHOLDS) -> np.ndarray:
    """The papers' threshold list: ``num`` evenly spaced values from 0 to just below 1."""
    return np.linspace(0.0, 1.0 - 1e-10, num)


class SaliencyAccumulator:
    """Scores images one at a time (memory stays flat) and averages them on :meth:`result`."""

    def __init__(self, num_thresholds: int = NUM_THRESHOLDS, beta2: float = BETA2, binarize_at: float = 0.5) -> None:
        self.thresholds = fbeta_thresholds(num_thresholds)
        self.beta2 = float(beta2)
        self.binarize_at = float(binarize_at)
        self._fbeta_sum = np.zeros(num_thresholds, dtype=np.float64)
        self._iou_sum = 0.0
        self._acc_sum = 0.0
        self.count = 0
        # Binary and 8-bit maps pass a fixed number of thresholds per value: look them up once.
        self._levels_binary = np.searchsorted(self.thresholds, np.array([0.0, 1.0]), side="right")
        self._levels_u8 = np.searchsorted(self.thresholds, np.arange(256) / 255.0, side="right")

    def _levels_passed(self, pred: np.ndarray, unit: np.ndarray) -> np.ndarray:
        """For every pixel, how many thresholds t satisfy t <= value (0..num_thresholds)."""
        if pred.dtype == bool or np.issubdtype(pred.dtype, np.integer):
            top = int(pred.max(initial=0))
            index = pred if pred.dtype == np.uint8 else pred.astype(np.uint8 if top <= 255 else np.intp)
            if top <= 1:
                return self._levels_binary[index]
            if top <= 255:  # read on the 0..255 scale by to_unit_map
                return self._levels_u8[index]
        values = unit.astype(np.float64)
        num = len(self.thresholds)
        if num < 2:
            return np.searchsorted(self.thresholds, values, side="right")
        # Evenly spaced thresholds: divide, then fix the one-off rounding at bin edges (~3x searchsorted speed).
        passed = np.minimum((values / self.thresholds[1]).astype(np.int64) + 1, num)
        passed += (passed < num) & (self.thresholds[np.minimum(passed, num - 1)] <= values)
        passed -= (passed > 0) & (self.thresholds[np.maximum(passed - 1, 0)] > values)
        return passed

    def fbeta_curve(self, pred: np.ndarray, gt_fg: np.ndarray, item: str = "prediction") -> np.ndarray:
        """Per-threshold Fβ of one image (``gt_fg`` is the boolean ground truth)."""
        pred = np.asarray(pred)
        return self._curve(pred, to_unit_map(pred, item), np.asarray(gt_fg, dtype=bool))

    def _curve(self, pred: np.ndarray, unit: np.ndarray, gt_fg: np.ndarray) -> np.ndarray:
        num = len(self.thresholds)
        passed = self._levels_passed(pred, unit).ravel()
        fg = gt_fg.ravel()
        # hist[k] = pixels passing exactly k thresholds; a pixel is predicted foreground at threshold i iff k > i.
        hist_all = np.bincount(passed, minlength=num + 1)
        hist_fg = np.bincount(passed[fg], minlength=num + 1)
        predicted = np.cumsum(hist_all[::-1])[::-1][1:].astype(np.float64)
        true_pos = np.cumsum(hist_fg[::-1])[::-1][1:].astype(np.float64)
        precision = true_pos / (predicted + _EPS)
        recall = true_pos / (float(fg.sum()) + _EPS)
        denom = self.beta2 * precision + recall
        return np.where(denom > 0, (1.0 + self.beta2) * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)

    def add(self, pred: np.ndarray, gt: np.ndarray, item: str = "image") -> dict[str, float]:
        """Score one image; returns its IoU, accuracy and best Fβ. Raises ValueError naming ``item`` on bad input."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"{item}: prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
        gt_fg = gt_to_bool(gt, f"{item} (ground truth)")
        unit = to_unit_map(pred, f"{item} (prediction)")
        curve = self._curve(pred, unit, gt_fg)
        binary = unit > self.binarize_at
        inter = np.logical_and(binary, gt_fg).sum()
        union = np.logical_or(binary, gt_fg).sum()
        iou = float(inter / union) if union else 1.0  # both empty: a perfect answer
        accuracy = float((binary == gt_fg).mean()) if gt_fg.size else 1.0
        self._fbeta_sum += curve
        self._iou_sum += iou
        self._acc_sum += accuracy
        self.count += 1
        return {"iou": iou, "accuracy": accuracy, "max_fbeta": float(curve.max())}

    def result(self) -> dict[str, float]:
        """Averages over the images added: iou, accuracy, max_fbeta (+ the threshold reaching it), n_images."""
        if self.count == 0:
            raise ValueError("no images were scored")
        mean_f = self._fbeta_sum / self.count
        best = int(np.argmax(mean_f))
        return {
            "iou": self._iou_sum / self.count,
            "accuracy": self._acc_sum / self.count,
            "max_fbeta": float(mean_f[best]),
            "max_fbeta_threshold": float(self.thresholds[best]),
            "n_images": self.count,
        }


def saliency_scores(predictions: Mapping[str, np.ndarray] | Iterable[np.ndarray],
                    ground_truths: Mapping[str, np.ndarray] | Iterable[np.ndarray],
                    **options: float) -> dict[str, float]:
    """Mean IoU, pixel accuracy and maxFβ of paired predictions and ground truths (dicts keyed alike, or lists)."""
    acc = SaliencyAccumulator(**options)
    if isinstance(predictions, Mapping) and isinstance(ground_truths, Mapping):
        missing = sorted(set(ground_truths) - set(predictions))
        if missing:
            raise ValueError(f"no prediction for {len(missing)} image(s), e.g. {missing[:3]}")
        for key, gt in ground_truths.items():
            acc.add(predictions[key], gt, str(key))
    else:
        preds, gts = list(predictions), list(ground_truths)
        if len(preds) != len(gts):
            raise ValueError(f"{len(preds)} predictions but {len(gts)} ground truths")
        for i, (pred, gt) in enumerate(zip(preds, gts)):
            acc.add(pred, gt, f"image #{i}")
    return acc.result()
