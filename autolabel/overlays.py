"""Overlay pictures: masks tinted and boxes drawn over the image, saved as PNG for people to look at."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from autolabel.detections import Detections

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230]], dtype=np.float32)


def draw_overlay(image: np.ndarray, det: Detections, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 image with each object's mask tinted, its contour and box drawn and its score written.

    Detections in another frame (e.g. full size of an image decoded downscaled) are resized to the image.
    """
    det = det.resized(*image.shape[:2])
    out = image.astype(np.float32).copy()
    for i in range(len(det)):
        color = PALETTE[i % len(PALETTE)]
        if det.masks is not None:
            m = det.masks[i]
            out[m] = (1 - alpha) * out[m] + alpha * color
    out = out.clip(0, 255).astype(np.uint8)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    for i in range(len(det)):
        color = tuple(int(c) for c in PALETTE[i % len(PALETTE)])
        if det.masks is not None:
            contours, _ = cv2.findContours(det.masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, color, thickness)
        x0, y0, x1, y1 = (int(round(v)) for v in det.xyxy[i])
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), color, thickness)
        label = f"{det.labels[i] + ' ' if det.labels else ''}{det.scores[i]:.2f}"
        cv2.putText(out, label, (x0 + 2, max(12, y0 + 14)), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * thickness, color,
                    thickness, cv2.LINE_AA)
    return out


def save_overlay(path: str | Path, image: np.ndarray, det: Detections) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(draw_overlay(image, det), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write overlay {path}")
    return path
