"""Mask utilities in one place: components, boxes, polygons, COCO RLE, Label Studio brush RLE, guided filter."""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as coco_mask


def connected_components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """4-connected components of a bool mask: (count, int32 labels with 0 = background)."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    return n - 1, labels


def component_at(mask: np.ndarray, row: int, col: int) -> np.ndarray:
    """The 4-connected component of ``mask`` containing (row, col); empty if that pixel is off."""
    if not mask[row, col]:
        return np.zeros_like(mask, dtype=bool)
    _, labels = connected_components(mask)
    return labels == labels[row, col]


def largest_component(mask: np.ndarray) -> np.ndarray:
    n, labels = connected_components(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    counts[0] = 0
    return labels == int(np.argmax(counts))


def mask_extent(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive (r0, c0, r1, c1) of the mask's on-pixels, or None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight xyxy pixel box (x1, y1 exclusive) of a bool mask; zeros when empty."""
    ext = mask_extent(mask)
    if ext is None:
        return (0.0, 0.0, 0.0, 0.0)
    r0, c0, r1, c1 = ext
    return (float(c0), float(r0), float(c1 + 1), float(r1 + 1))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes (no +1), shapes (n,4) x (m,4) → (n,m)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return float(inter / union) if union else 0.0


# ------------------------------------------------------------------------------------------------ encodings
def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO RLE with string counts: {"size": [h, w], "counts": str}."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (string or bytes counts, or uncompressed list counts) to a bool mask."""
    if isinstance(rle.get("counts"), list):
        rle = coco_mask.frPyObjects(rle, *rle["size"])
    elif isinstance(rle.get("counts"), str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return coco_mask.decode(rle).astype(bool)


def mask_to_ls_rle(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a bool mask (rendered as 0/255 so it is visible)."""
    from label_studio_sdk.converter.brush import mask2rle

    return [int(v) for v in mask2rle((mask.astype(np.uint8) * 255))]


def ls_rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Decode a Label Studio brush RLE to a bool (height, width) mask."""
    from label_studio_sdk.converter.brush import decode_rle

    flat = decode_rle(rle)
    return np.reshape(flat, (height, width, 4))[:, :, 3] > 127


def mask_to_polygon(mask: np.ndarray, tolerance: float = 1.0) -> list[tuple[float, float]]:
    """Outer contour of the mask's largest part as (x, y) pixel points, simplified (Douglas-Peucker)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    contour = max(contours, key=cv2.contourArea)
    if tolerance > 0:
        contour = cv2.approxPolyDP(contour, tolerance, True)
    return [(float(x), float(y)) for x, y in contour.reshape(-1, 2)]


# ------------------------------------------------------------------------------------------------ filtering
def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int = 9, eps: float = 1e-3) -> np.ndarray:
    """Gray-guide guided filter (He et al.) with box means; ``guide`` and ``src`` are float (H, W)."""
    guide = guide.astype(np.float32)
    src = src.astype(np.float32)
    ksize = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, ksize, normalize=True, borderType=cv2.BORDER_REFLECT)

    mean_i = box(guide)
    mean_p = box(src)
    cov_ip = box(guide * src) - mean_i * mean_p
    var_i = box(guide * guide) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB float in [0, 1] → (H, W) gray as the plain channel average."""
    return image.astype(np.float32).mean(axis=2)
