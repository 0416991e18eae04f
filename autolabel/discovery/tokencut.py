"""TokenCut (Wang et al., CVPR'22): Normalized Cut on a binarised patch-similarity graph, one object.

Published algorithm: L2-normalised features, cosine affinity, A > τ → 1 else ε (τ = 0.2, ε = 1e-5); second-smallest
generalized eigenvector of (D − A) v = λ D v; bipartition v > mean(v); seed = argmax |v|; flip the partition when the
seed is outside it; the object is the 4-connected component containing the seed.

Differences from the paper: the eigen-solve uses :func:`~autolabel.discovery.graph.fiedler_vector` (deflated
Lanczos) instead of a dense generalized ``eigh`` (``solver="dense"`` keeps the reference); the region carries a soft
map (the oriented eigenvector rescaled to [0, 1], restricted by default to the seed's component) for guided-filter
refinement; the score is the contrast of the eigenvector inside vs. outside the object.
"""

from __future__ import annotations

import numpy as np
import torch

from autolabel import masks as mask_utils
from autolabel.discovery.base import DiscoveryMethod, PatchRegion
from autolabel.discovery.graph import binary_graph, cosine_affinity, fiedler_dense, fiedler_vector
from autolabel.features import PatchFeatures


def solve_fiedler(affinity: torch.Tensor, solver: str) -> np.ndarray:
    if solver == "dense":
        return fiedler_dense(affinity)
    if solver == "fast":
        return fiedler_vector(affinity)
    raise ValueError(f"unknown eigen-solver {solver!r}; choose 'fast' or 'dense'")


def rescale01(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def contrast_score(vec: np.ndarray, inside: np.ndarray) -> float:
    """How separated the eigenvector is inside vs. outside the object, in [0, 1]."""
    if inside.all() or not inside.any():
        return 0.0
    spread = float(vec.max() - vec.min())
    if spread <= 0:
        return 0.0
    return float(np.clip((vec[inside].mean() - vec[~inside].mean()) / spread, 0.0, 1.0))


class TokenCut(DiscoveryMethod):
    """Single salient object by Normalized Cut on patch features."""

    name = "tokencut"
    multi_object = False

    def __init__(self, feature: str = "auto", tau: float = 0.2, eps: float = 1e-5, solver: str = "fast",
                 soft_component_only: bool = False) -> None:
        super().__init__(feature)
        self.tau = tau
        self.eps = eps
        self.solver = solver
        self.soft_component_only = soft_component_only

    def discover(self, feats: PatchFeatures) -> list[PatchRegion]:
        gh, gw = feats.grid
        if gh * gw < 2:
            return [PatchRegion(np.ones((gh, gw), bool), score=0.0, soft=np.ones((gh, gw), np.float32),
                                seed=(0, 0))]
        affinity = binary_graph(cosine_affinity(self.select_features(feats)), self.tau, self.eps)
        vec = solve_fiedler(affinity, self.solver)
        part = vec > vec.mean()
        seed = int(np.argmax(np.abs(vec)))
        if not part[seed]:
            part = ~part
            vec = -vec
        grid_part = part.reshape(gh, gw)
        r, c = divmod(seed, gw)
        mask = mask_utils.component_at(grid_part, r, c)
        soft = rescale01(vec).reshape(gh, gw).astype(np.float32)
        if self.soft_component_only:  # other foreground components stay at the threshold level
            level = float(rescale01(np.append(vec, vec.mean()))[-1])
            soft = np.where(grid_part & ~mask, np.minimum(soft, level), soft).astype(np.float32)
        return [PatchRegion(mask, score=contrast_score(vec, mask.ravel()), soft=soft, seed=(r, c))]
