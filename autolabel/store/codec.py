"""JSON form of :class:`~autolabel.detections.Detections` for the prediction cache.

The cache stores detections independently of any Label Studio label config (boxes, scores, COCO RLE masks,
labels, descriptors), so one cached result serves every project whatever its control names and labels;
regions are rendered per request with ``Detections.to_labelstudio``.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from autolabel import masks as mask_utils
from autolabel.detections import Detections

CODEC_VERSION = 1


def _json_safe(value: Any) -> Any:
    """Meta values reduced to what JSON holds (numbers, strings, lists, dicts); others become strings."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray) and value.size <= 64:
        return value.tolist()
    return str(value)


def detections_to_json(det: Detections) -> dict[str, Any]:
    """A JSON-serialisable dict that :func:`detections_from_json` turns back into equal detections."""
    out: dict[str, Any] = {
        "codec": CODEC_VERSION,
        "image_size": [int(det.image_size[0]), int(det.image_size[1])],
        "xyxy": [[round(float(v), 3) for v in box] for box in det.xyxy],
        "scores": [round(float(s), 6) for s in det.scores],
        "masks": None if det.masks is None else [mask_utils.mask_to_rle(m) for m in det.masks],
        "labels": None if det.labels is None else [str(x) for x in det.labels],
        "descriptors": None,
        "meta": _json_safe(det.meta),
    }
    if det.descriptors is not None:
        d = np.ascontiguousarray(det.descriptors, dtype=np.float32)
        out["descriptors"] = {"shape": list(d.shape), "float32_b64": base64.b64encode(d.tobytes()).decode()}
    return out


def detections_from_json(data: dict[str, Any]) -> Detections:
    """Inverse of :func:`detections_to_json`; raises ValueError on a record it cannot read."""
    if not isinstance(data, dict) or data.get("codec") != CODEC_VERSION:
        raise ValueError(f"not a codec-{CODEC_VERSION} detections record")
    h, w = (int(v) for v in data["image_size"])
    masks = None
    if data.get("masks") is not None:
        masks = np.zeros((len(data["masks"]), h, w), dtype=bool)
        for i, rle in enumerate(data["masks"]):
            masks[i] = mask_utils.rle_to_mask(rle)
    descriptors = None
    if data.get("descriptors"):
        raw = base64.b64decode(data["descriptors"]["float32_b64"])
        descriptors = np.frombuffer(raw, dtype=np.float32).reshape(data["descriptors"]["shape"]).copy()
    return Detections(np.asarray(data["xyxy"], dtype=np.float32).reshape(-1, 4), np.asarray(data["scores"]),
                      (h, w), masks=masks, descriptors=descriptors, labels=data.get("labels"),
                      meta=dict(data.get("meta") or {}))


def summary_score(det: Detections) -> float:
    """One score per image for Label Studio's prediction list: the mean object score (0 with no object)."""
    return round(float(np.mean(det.scores)), 5) if len(det) else 0.0
