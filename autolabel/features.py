"""Patch features of one image as produced by a backbone, the input of every discovery method."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from autolabel.geometry import PatchGeometry

FEATURE_KINDS = ("q", "k", "v", "tokens")


@dataclass
class PatchFeatures:
    """Features of one image at one backbone layer, CLS (and register tokens) removed.

    Attributes:
        geometry: how the patch grid maps back to original pixels.
        q, k, v: (N, heads, head_dim) per-head attention projections of the chosen layer, or None.
        tokens: (N, dim) output tokens of the chosen layer (after the block), or None.
        cls_attn: (heads, N) attention of the CLS query to every patch at the chosen layer (FOUND), or None.
        cls_token: (dim,) CLS output token of the chosen layer, used as an image descriptor.
        image: (resized_h, resized_w, 3) float32 RGB in [0, 1] — the network input before normalisation;
            colour-aware methods (deep-spectral) and refinement use it.
        layer: index of the block the features come from.
        backbone: registry name of the backbone.
    """

    geometry: PatchGeometry
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    cls_attn: torch.Tensor | None = None
    cls_token: torch.Tensor | None = None
    image: np.ndarray | None = None
    layer: int = -1
    backbone: str = ""
    extra: dict = field(default_factory=dict)

    def get(self, kind: str) -> torch.Tensor:
        """(N, D) float32 features of ``kind`` ('q', 'k', 'v' heads concatenated, or 'tokens')."""
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {kind!r}; choose one of {FEATURE_KINDS}")
        t = getattr(self, kind)
        if t is None:
            raise ValueError(f"features of kind {kind!r} were not extracted for layer {self.layer}")
        return t.reshape(t.shape[0], -1).float()

    @property
    def grid(self) -> tuple[int, int]:
        return (self.geometry.grid_h, self.geometry.grid_w)
