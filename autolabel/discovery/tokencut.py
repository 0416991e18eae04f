"""TokenCut (Wang et al., CVPR'22): Normalized Cut on a binarised patch-similarity graph, one object.

Published algorithm: L2-normalised features, cosine affinity, A > τ → 1 else ε (τ = 0.2, ε = 1e-5); second-smallest
generalized eigenvector of (D − A) v = λ D v; bipartition v > mean(v); seed = argmax |v|; flip the partition when the
seed is outside it; the object is the 4-connected component containing the seed.

``keep="partition"`` returns the whole foreground side of the cut instead of the seed's component: the paper's
saliency-detection setting (several salient parts count), while the default is its object-localisation setting.

Differences from the paper: the eigen-solve uses :func:`~autolabel.discovery.graph.fiedler_vector` (deflated
Lanczos) instead of a dense generalized ``eigh`` (``solver="dense"`` keeps the reference); the region carries a soft
map (the oriented eigenvector centred on the bipartition threshold, see ``centred_soft_map``) for refinement; the
score is the contrast of the eigenvector inside vs. outside the object.
"""

from __future__ import annotations

import numpy as np

from autolabel import masks as mask_utils
from autolabel.discovery.base import DiscoveryMethod, PatchRegion, centred_soft_map, contrast_score
from autolabel.discovery.graph import solve_fiedler, tokencut_graph
from autolabel.features import PatchFeatures


class TokenCut(DiscoveryMethod):
    """Single salient object by Normalized Cut on patch features."""

    name = "tokencut"
    multi_object = False

    def __init__(self, feature: str = "auto", tau: float = 0.2, eps: float = 1e-5, solver: str = "fast",
                 keep: str = "component") -> None:
        super().__init__(feature)
        if keep not in ("component", "partition"):
            raise ValueError(f"keep must be 'component' or 'partition', got {keep!r}")
        self.tau = tau
        self.eps = eps
        self.solver = solver
        self.keep = keep

    def discover(self, feats: PatchFeatures) -> list[PatchRegion]:
        gh, gw = feats.grid
        if gh * gw < 2:
            return [PatchRegion(np.ones((gh, gw), bool), score=0.0, soft=np.ones((gh, gw), np.float32),
                                seed=(0, 0))]
        affinity = tokencut_graph(self.select_features(feats), self.tau, self.eps)
        vec = solve_fiedler(affinity, self.solver)
        part = vec > vec.mean()
        seed = int(np.argmax(np.abs(vec)))
        if not part[seed]:
            part = ~part
            vec = -vec
        grid_part = part.reshape(gh, gw)
        r, c = divmod(seed, gw)
        mask = mask_utils.component_at(grid_part, r, c) if self.keep == "component" else grid_part
        soft = centred_soft_map(vec - vec.mean(), part).reshape(gh, gw)
        return [PatchRegion(mask, score=contrast_score(vec, mask.ravel()), soft=soft, seed=(r, c))]
