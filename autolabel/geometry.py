"""Resize / pad-to-patch-grid geometry, kept so patch masks map back to original pixels exactly.

An image of size (H, W) is resized (aspect kept) so that its long side is ``max_size`` (never upscaled
unless ``upscale``), then zero-padded bottom/right to a multiple of the patch size. ``PatchGeometry``
records every size involved and converts between patch-grid, network-input and original-pixel coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PatchGeometry:
    """Geometry of one image on the backbone's patch grid.

    Attributes:
        orig_h, orig_w: size of the original (EXIF-corrected) image in pixels.
        resized_h, resized_w: size after the aspect-preserving resize (the network sees this content).
        patch: patch size in pixels.
        grid_h, grid_w: patch grid after padding bottom/right to a multiple of ``patch``.
    """

    orig_h: int
    orig_w: int
    resized_h: int
    resized_w: int
    patch: int
    grid_h: int
    grid_w: int

    @classmethod
    def for_image(cls, orig_h: int, orig_w: int, patch: int, max_size: int | None = 448,
                  upscale: bool = False) -> "PatchGeometry":
        """Geometry for an ``orig_h`` x ``orig_w`` image resized to long side ``max_size`` then padded."""
        if orig_h < 1 or orig_w < 1:
            raise ValueError(f"image size must be positive, got {orig_w}x{orig_h}")
        scale = 1.0
        if max_size is not None:
            long_side = max(orig_h, orig_w)
            if long_side > max_size or upscale:
                scale = max_size / long_side
        rh = max(1, int(round(orig_h * scale)))
        rw = max(1, int(round(orig_w * scale)))
        return cls(orig_h, orig_w, rh, rw, patch, math.ceil(rh / patch), math.ceil(rw / patch))

    @property
    def padded_h(self) -> int:
        return self.grid_h * self.patch

    @property
    def padded_w(self) -> int:
        return self.grid_w * self.patch

    @property
    def num_patches(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def scale_x(self) -> float:
        """Original pixels per network-input pixel along x."""
        return self.orig_w / self.resized_w

    @property
    def scale_y(self) -> float:
        return self.orig_h / self.resized_h

    def valid_patch_mask(self) -> np.ndarray:
        """(grid_h, grid_w) bool: patches that hold at least one pixel of real (unpadded) image."""
        valid = np.zeros((self.grid_h, self.grid_w), dtype=bool)
        valid[: math.ceil(self.resized_h / self.patch), : math.ceil(self.resized_w / self.patch)] = True
        return valid

    def patch_box_to_pixels(self, r0: int, c0: int, r1: int, c1: int) -> tuple[float, float, float, float]:
        """Inclusive patch rows r0..r1 / cols c0..c1 → xyxy box in original pixels, clipped to the image.

        Follows the papers' convention: the box spans ``min*patch`` to ``(max+1)*patch`` in network-input
        pixels, clipped to the resized image, then scaled to the original image.
        """
        x0 = min(c0 * self.patch, self.resized_w) * self.scale_x
        y0 = min(r0 * self.patch, self.resized_h) * self.scale_y
        x1 = min((c1 + 1) * self.patch, self.resized_w) * self.scale_x
        y1 = min((r1 + 1) * self.patch, self.resized_h) * self.scale_y
        return (float(x0), float(y0), float(x1), float(y1))

    def patch_map_to_input(self, patch_map: np.ndarray) -> np.ndarray:
        """Upsample a (grid_h, grid_w) map by the patch size (nearest) and crop to the resized image.

        The result has shape (resized_h, resized_w): every network-input pixel takes its patch's value.
        """
        if patch_map.shape != (self.grid_h, self.grid_w):
            raise ValueError(f"patch map shape {patch_map.shape} != grid {(self.grid_h, self.grid_w)}")
        up = np.repeat(np.repeat(patch_map, self.patch, axis=0), self.patch, axis=1)
        return up[: self.resized_h, : self.resized_w]

    def input_to_original(self, input_map: np.ndarray, interpolation: str = "nearest") -> np.ndarray:
        """Resize a (resized_h, resized_w) map to the original image size.

        ``nearest`` keeps exact patch boundaries for binary masks; ``linear`` is for soft maps.
        """
        import cv2

        if input_map.shape[:2] != (self.resized_h, self.resized_w):
            raise ValueError(f"map shape {input_map.shape[:2]} != resized {(self.resized_h, self.resized_w)}")
        if (self.resized_h, self.resized_w) == (self.orig_h, self.orig_w):
            return input_map
        flag = cv2.INTER_NEAREST_EXACT if interpolation == "nearest" else cv2.INTER_LINEAR
        src = input_map.astype(np.uint8) if input_map.dtype == bool else input_map
        out = cv2.resize(src, (self.orig_w, self.orig_h), interpolation=flag)
        return out.astype(bool) if input_map.dtype == bool else out

    def patch_mask_to_original(self, patch_mask: np.ndarray) -> np.ndarray:
        """Exact binary (grid_h, grid_w) patch mask → (orig_h, orig_w) bool pixel mask."""
        return self.input_to_original(self.patch_map_to_input(patch_mask.astype(bool)), "nearest")
