"""``Detections``: the one result type (boxes, masks, scores, descriptors, labels) and its converters.

Boxes are xyxy floats in original-image pixels; masks are (n, H, W) bool at the original image size.
Converters produce COCO results JSON entries and Label Studio prediction regions (rectangle, brush, polygon).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from autolabel import masks as mask_utils


@dataclass
class Detections:
    """Objects found in one image.

    Attributes:
        xyxy: (n, 4) float32 boxes in original-image pixels.
        masks: (n, H, W) bool masks at the original image size, or None.
        scores: (n,) float32 in [0, 1].
        descriptors: (n, d) float32 per-object descriptors (for clustering into pseudo-classes), or None.
        labels: optional list of n label strings (None = class-agnostic "Object").
        image_size: (height, width) of the original image.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]
    masks: np.ndarray | None = None
    descriptors: np.ndarray | None = None
    labels: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        n = len(self.xyxy)
        if len(self.scores) != n:
            raise ValueError(f"{n} boxes but {len(self.scores)} scores")
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=bool)
            if self.masks.shape != (n, *self.image_size):
                raise ValueError(f"masks shape {self.masks.shape} != {(n, *self.image_size)}")
        if self.descriptors is not None:
            self.descriptors = np.asarray(self.descriptors, dtype=np.float32)
            if self.descriptors.ndim != 2 or len(self.descriptors) != n:
                raise ValueError(f"{n} boxes but descriptors of shape {self.descriptors.shape}")
        if self.labels is not None and len(self.labels) != n:
            raise ValueError(f"{n} boxes but {len(self.labels)} labels")

    @classmethod
    def empty(cls, image_size: tuple[int, int], with_masks: bool = True) -> "Detections":
        masks = np.zeros((0, *image_size), dtype=bool) if with_masks else None
        return cls(np.zeros((0, 4)), np.zeros(0), image_size, masks=masks)

    @classmethod
    def from_masks(cls, masks: np.ndarray, scores: Sequence[float], descriptors: np.ndarray | None = None,
                   labels: list[str] | None = None) -> "Detections":
        """Boxes from the masks' tight extents (an empty mask gets a zero box)."""
        masks = np.asarray(masks, dtype=bool)
        boxes = np.array([mask_utils.mask_to_box(m) for m in masks], dtype=np.float32).reshape(-1, 4)
        return cls(boxes, np.asarray(scores), masks.shape[1:] if masks.ndim == 3 else (0, 0), masks=masks,
                   descriptors=descriptors, labels=labels)

    def __len__(self) -> int:
        return len(self.xyxy)

    @property
    def height(self) -> int:
        return self.image_size[0]

    @property
    def width(self) -> int:
        return self.image_size[1]

    def subset(self, index: Iterable[int] | np.ndarray) -> "Detections":
        idx = np.asarray(list(index) if not isinstance(index, np.ndarray) else index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(int)
        return Detections(
            self.xyxy[idx], self.scores[idx], self.image_size,
            masks=None if self.masks is None else self.masks[idx],
            descriptors=None if self.descriptors is None else self.descriptors[idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
            meta=dict(self.meta),
        )

    def resized(self, height: int, width: int) -> "Detections":
        """The same objects in a (height, width) frame: boxes scaled, masks resized (nearest)."""
        if (height, width) == tuple(self.image_size):
            return self
        import cv2

        sx, sy = width / self.width, height / self.height
        masks = None
        if self.masks is not None:
            masks = np.zeros((len(self), height, width), dtype=bool)
            for i, m in enumerate(self.masks):
                masks[i] = cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        return Detections(self.xyxy * np.array([sx, sy, sx, sy], np.float32), self.scores, (height, width),
                          masks=masks, descriptors=self.descriptors, labels=self.labels, meta=dict(self.meta))

    # ------------------------------------------------------------------ COCO
    def to_coco(self, image_id: int | str | None = None, file_name: str | None = None,
                category_id: int = 1) -> list[dict]:
        """COCO results entries: bbox [x, y, w, h], RLE segmentation with string counts, score."""
        out = []
        for i in range(len(self)):
            x0, y0, x1, y1 = (float(v) for v in self.xyxy[i])
            entry: dict = {}
            if file_name is not None:
                entry["file_name"] = file_name
            if image_id is not None:
                entry["image_id"] = image_id
            entry["bbox"] = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
            if self.masks is not None:
                entry["segmentation"] = mask_utils.mask_to_rle(self.masks[i])
            entry["score"] = round(float(self.scores[i]), 5)
            entry["category_id"] = category_id
            if self.labels is not None:
                entry["label"] = self.labels[i]
            out.append(entry)
        return out

    # ----------------------------------------------------------- Label Studio
    def to_labelstudio(self, controls: Sequence[tuple[str, str, str]], label: str | None = None) -> list[dict]:
        """Label Studio prediction regions.

        Args:
            controls: (kind, from_name, to_name) per control to fill, kind one of 'rectanglelabels',
                'brushlabels', 'polygonlabels'.
            label: label for class-agnostic objects (used where ``labels`` is None); must exist in the control.
        """
        h, w = self.image_size
        regions: list[dict] = []
        for i in range(len(self)):
            lab = self.labels[i] if self.labels is not None else label
            if lab is None:
                raise ValueError("a label is needed for Label Studio regions")
            for kind, from_name, to_name in controls:
                value: dict
                if kind == "rectanglelabels":
                    x0, y0, x1, y1 = (float(v) for v in self.xyxy[i])
                    value = {"x": 100.0 * x0 / w, "y": 100.0 * y0 / h, "width": 100.0 * (x1 - x0) / w,
                             "height": 100.0 * (y1 - y0) / h, "rotation": 0}
                elif kind == "brushlabels":
                    if self.masks is None:
                        continue
                    value = {"format": "rle", "rle": mask_utils.mask_to_ls_rle(self.masks[i])}
                elif kind == "polygonlabels":
                    if self.masks is None:
                        continue
                    poly = mask_utils.mask_to_polygon(self.masks[i])
                    if len(poly) < 3:
                        continue
                    value = {"points": [[100.0 * x / w, 100.0 * y / h] for x, y in poly], "closed": True}
                else:
                    raise ValueError(f"unsupported Label Studio control type {kind!r}")
                value[kind] = [lab]
                regions.append({
                    "id": uuid.uuid4().hex[:10], "from_name": from_name, "to_name": to_name, "type": kind,
                    "original_width": w, "original_height": h, "image_rotation": 0,
                    "value": value, "score": round(float(self.scores[i]), 5),
                })
        return regions
