"""Refinement: a patch region → a pixel mask at the original image size, optionally snapped to image edges.

``none`` maps the patch mask back exactly (nearest, patch edges). The two edge-aware modes work in network-input
pixels, resize the refined map to the original size and threshold it there, so edges are smooth at full resolution:

- ``guided`` follows "Two Tricks" (seed 002): the region (binary patch mask, or its soft map) is upsampled
  bilinearly, standardised and guided-filtered with the image's gray average as guide (radius 9, ε 1e-3).
- ``bilateral`` is TokenCut's saliency refinement: the fast bilateral solver (:mod:`autolabel.bilateral`) on the
  patch-exact mask with the published σ spatial 16, luma 16, chroma 8 and λ 256. If the solved mask overlaps the raw
  one by IoU < ``min_iou`` (0.5), the solve disagrees with the discovery rather than sharpening it, and the raw
  mask is kept.

Both then keep only the parts that overlap the raw patch mask (``keep_seed_component``) and fall back to the raw
mask when nothing is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from autolabel import masks as mask_utils
from autolabel.bilateral import BilateralGrid, BilateralSolver
from autolabel.discovery.base import PatchRegion
from autolabel.geometry import PatchGeometry

REFINE_MODES = ("none", "guided", "bilateral")
MODE_PARAMS = {
    "none": (),
    "guided": ("radius", "eps", "source", "keep_seed_component"),
    "bilateral": ("sigma_spatial", "sigma_luma", "sigma_chroma", "lam", "min_iou", "keep_seed_component"),
}


@dataclass
class Refiner:
    """Turns patch regions into original-resolution masks.

    Attributes:
        mode: 'none', 'guided' or 'bilateral'.
        radius, eps: guided-filter window radius (network-input pixels) and regulariser.
        source: guided only — 'mask' filters the binary patch mask, 'soft' the region's soft map (falls back to
            the mask).
        sigma_spatial, sigma_luma, sigma_chroma, lam: bilateral-solver grid σ (pixels, 0..255 colour units) and
            smoothness weight.
        min_iou: bilateral only — keep the raw mask when the solved one overlaps it less than this.
        keep_seed_component: after refining keep only the parts that overlap the raw patch mask.
    """

    mode: str = "guided"
    radius: int = 9
    eps: float = 1e-3
    source: str = "mask"
    sigma_spatial: float = 16.0
    sigma_luma: float = 16.0
    sigma_chroma: float = 8.0
    lam: float = 256.0
    min_iou: float = 0.5
    keep_seed_component: bool = True

    def __post_init__(self) -> None:
        if self.mode not in REFINE_MODES:
            raise ValueError(f"unknown refinement {self.mode!r}; choose one of {REFINE_MODES}")
        if self.source not in ("mask", "soft"):
            raise ValueError(f"unknown refinement source {self.source!r}; choose 'mask' or 'soft'")

    def params(self) -> dict:
        """The settings that shape this mode's output (part of the pipeline's model version)."""
        return {"mode": self.mode, **{name: getattr(self, name) for name in MODE_PARAMS[self.mode]}}

    def __call__(self, region: PatchRegion, geo: PatchGeometry, image: np.ndarray | None) -> np.ndarray:
        """(orig_h, orig_w) bool mask of ``region``; ``image`` is the resized RGB float input."""
        return self.refine_all([region], geo, image)[0]

    def refine_all(self, regions: list[PatchRegion], geo: PatchGeometry, image: np.ndarray | None
                   ) -> list[np.ndarray]:
        """Masks of all regions of one image; the bilateral grid and its system are built once for them all."""
        solver = None
        if self.mode == "bilateral" and image is not None and any(r.mask.any() for r in regions):
            grid = BilateralGrid.from_image(image, self.sigma_spatial, self.sigma_luma, self.sigma_chroma)
            solver = BilateralSolver(grid, self.lam)
        return [self._refine(region, geo, image, solver) for region in regions]

    def _refine(self, region: PatchRegion, geo: PatchGeometry, image: np.ndarray | None,
                solver: BilateralSolver | None) -> np.ndarray:
        raw = geo.patch_mask_to_original(region.mask)
        if self.mode == "none" or image is None or not region.mask.any():
            return raw
        if self.mode == "guided":
            mask = self._guided(region, geo, image)
        else:
            mask = self._bilateral(region, geo, raw, solver)
        if mask is None:
            return raw
        if self.keep_seed_component:
            n, labels = mask_utils.connected_components(mask)
            if n > 1:
                hits = np.unique(labels[raw & mask])
                mask = np.isin(labels, hits[hits > 0])
        return mask if mask.any() else raw

    def _guided(self, region: PatchRegion, geo: PatchGeometry, image: np.ndarray) -> np.ndarray | None:
        src_patch = region.mask.astype(np.float32)
        if self.source == "soft" and region.soft is not None:
            src_patch = region.soft.astype(np.float32)
        up = cv2.resize(src_patch, (geo.padded_w, geo.padded_h), interpolation=cv2.INTER_LINEAR)
        up = up[: geo.resized_h, : geo.resized_w]
        std = float(up.std())
        if std < 1e-6:
            return None
        z = (up - float(up.mean())) / std
        threshold = (0.5 - float(up.mean())) / std  # the 0.5 level of the unstandardised map
        filtered = mask_utils.guided_filter(mask_utils.to_gray(image), z, self.radius, self.eps)
        return geo.input_to_original(filtered.astype(np.float32), "linear") > threshold

    def _bilateral(self, region: PatchRegion, geo: PatchGeometry, raw: np.ndarray, solver: BilateralSolver
                   ) -> np.ndarray | None:
        solved = solver.solve(geo.patch_map_to_input(region.mask.astype(np.float32)))
        mask = geo.input_to_original(solved.astype(np.float32), "linear") > 0.5
        return mask if mask_utils.mask_iou(mask, raw) >= self.min_iou else None
