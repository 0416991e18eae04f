"""MaskCut (CutLER, Wang et al., CVPR'23): repeated Normalized Cuts for up to N objects per image.

Published algorithm: the TokenCut graph (τ = 0.15) and eigenproblem; foreground orientation: if ≥ 3 of the 4
corner patches fall in the partition, flip; else flip when the partition does not contain argmax|v|; seed = argmax of
the oriented vector; mask = its 4-connected component. Next iterations zero the features of patches already taken
(so they only get ε edges). A mask is dropped when its IoU with the previous one is > 0.5 or its area ≤ 1 % of the
image.

Differences: the published method runs on a 480×480 resize with ViT-B/8 and refines with a dense CRF; here the
resize follows the pipeline's geometry and refinement is the pipeline's (guided filter), so the CRF's "drop if
IoU(CRF, raw) < 0.5" test is applied to the refined mask by the pipeline when ``min_refined_iou`` is set there.
Scores decrease with the iteration index and the eigenvector contrast, so the first cut ranks first.
"""

from __future__ import annotations

import numpy as np

from autolabel import masks as mask_utils
from autolabel.discovery.base import DiscoveryMethod, PatchRegion, centred_soft_map, contrast_score
from autolabel.discovery.graph import l2_normalize, solve_fiedler, tokencut_graph
from autolabel.features import PatchFeatures


class MaskCut(DiscoveryMethod):
    """Up to ``n_objects`` objects by iterated Normalized Cut."""

    name = "maskcut"
    multi_object = True

    def __init__(self, feature: str = "auto", n_objects: int = 3, tau: float = 0.15, eps: float = 1e-5,
                 solver: str = "fast", max_iou_prev: float = 0.5, min_area_frac: float = 0.01) -> None:
        super().__init__(feature)
        self.n_objects = n_objects
        self.tau = tau
        self.eps = eps
        self.solver = solver
        self.max_iou_prev = max_iou_prev
        self.min_area_frac = min_area_frac

    def discover(self, feats: PatchFeatures) -> list[PatchRegion]:
        gh, gw = feats.grid
        n = gh * gw
        if n < 4:
            return []
        f = l2_normalize(self.select_features(feats)).clone()
        taken = np.zeros(n, dtype=bool)
        corners = [0, gw - 1, (gh - 1) * gw, n - 1]
        regions: list[PatchRegion] = []
        prev: np.ndarray | None = None
        for it in range(self.n_objects):
            if taken.all():
                break
            affinity = tokencut_graph(f, self.tau, self.eps)
            vec = solve_fiedler(affinity, self.solver)
            part = vec > vec.mean()
            top = int(np.argmax(np.abs(vec)))
            if sum(bool(part[c]) for c in corners) >= 3 or not part[top]:
                part = ~part
                vec = -vec
            vec_masked = np.where(taken, -np.inf, vec)
            seed = int(np.argmax(vec_masked))
            if not part[seed] or taken[seed]:
                break
            r, c = divmod(seed, gw)
            mask = mask_utils.component_at((part & ~taken).reshape(gh, gw), r, c)
            taken |= mask.ravel()
            f[mask.ravel()] = 0.0
            if mask.sum() <= self.min_area_frac * n:
                continue
            if prev is not None and mask_utils.mask_iou(mask, prev) > self.max_iou_prev:
                continue
            prev = mask
            others = taken & ~mask.ravel()  # patches of earlier objects count as background here
            centred = np.where(others, -np.abs(vec - vec.mean()), vec - vec.mean())
            soft = centred_soft_map(centred, part & ~others).reshape(gh, gw)
            score = (1.0 - 0.1 * it) * (0.5 + 0.5 * contrast_score(vec, mask.ravel()))
            regions.append(PatchRegion(mask, score=float(score), soft=soft, seed=(r, c)))
        return regions
