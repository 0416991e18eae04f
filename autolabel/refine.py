"""Refinement: a patch region → a pixel mask at the original image size, optionally guided-filtered.

``none`` maps the patch mask back exactly (nearest, patch edges). ``guided`` follows "Two Tricks" (seed 002): the
region (binary patch mask, or its soft map) is upsampled bilinearly to the network-input pixels, standardised,
guided-filtered with the image's gray average as guide (radius 9, ε 1e-3 by default) and thresholded; the
filtered map is resized to the original size before thresholding so edges are smooth at full resolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from autolabel import masks as mask_utils
from autolabel.discovery.base import PatchRegion
from autolabel.geometry import PatchGeometry

REFINE_MODES = ("none", "guided")


@dataclass
class Refiner:
    """Turns patch regions into original-resolution masks.

    Attributes:
        mode: 'none' or 'guided'.
        radius, eps: guided-filter window radius (network-input pixels) and regulariser.
        source: 'mask' filters the binary patch mask, 'soft' the region's soft map (falls back to the mask).
        keep_seed_component: after filtering keep only the parts that overlap the raw patch mask.
    """

    mode: str = "guided"
    radius: int = 9
    eps: float = 1e-3
    source: str = "mask"
    keep_seed_component: bool = True

    def __post_init__(self) -> None:
        if self.mode not in REFINE_MODES:
            raise ValueError(f"unknown refinement {self.mode!r}; choose one of {REFINE_MODES}")
        if self.source not in ("mask", "soft"):
            raise ValueError(f"unknown refinement source {self.source!r}; choose 'mask' or 'soft'")

    def params(self) -> dict:
        return asdict(self) if self.mode != "none" else {"mode": "none"}

    def __call__(self, region: PatchRegion, geo: PatchGeometry, image: np.ndarray | None) -> np.ndarray:
        """(orig_h, orig_w) bool mask of ``region``; ``image`` is the resized RGB float input."""
        raw = geo.patch_mask_to_original(region.mask)
        if self.mode == "none" or image is None or not region.mask.any():
            return raw
        src_patch = region.mask.astype(np.float32)
        if self.source == "soft" and region.soft is not None:
            src_patch = region.soft.astype(np.float32)
        up = cv2.resize(src_patch, (geo.padded_w, geo.padded_h), interpolation=cv2.INTER_LINEAR)
        up = up[: geo.resized_h, : geo.resized_w]
        std = float(up.std())
        if std < 1e-6:
            return raw
        z = (up - float(up.mean())) / std
        threshold = (0.5 - float(up.mean())) / std  # the 0.5 level of the unstandardised map
        filtered = mask_utils.guided_filter(mask_utils.to_gray(image), z, self.radius, self.eps)
        full = geo.input_to_original(filtered.astype(np.float32), "linear")
        mask = full > threshold
        if self.keep_seed_component:
            n, labels = mask_utils.connected_components(mask)
            if n > 1:
                hits = np.unique(labels[raw & mask])
                mask = np.isin(labels, hits[hits > 0])
        return mask if mask.any() else raw
