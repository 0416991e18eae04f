"""FOUND (Siméoni et al., CVPR'23), training-free part: find the background, the object is the rest.

Published algorithm: per-head CLS→patch attention A_h; μ = mean attention (all heads, all patches);
S_h = fraction of patches whose attention in head h exceeds μ; head weight w_h = log(Σ_h' S_h' / S_h) (with the
official code's ε = 1e-10 added to every S_h); the features of each head are scaled by w_h, concatenated and
L2-normalised; background seed = argmin_p Σ_h w_h A_h(p); background = patches whose cosine to the seed > 0.3;
foreground = complement. (FOUND then trains a 1×1 conv on these masks; that learned part is not used here.)

Differences from the paper: 'tokens' have no heads, so they are split into ``heads`` equal chunks of the feature
dimension; padding-only patches (none with the usual geometry) are left out. The result is one saliency region
(the whole foreground, possibly several components, as published); ``split_components=True`` returns one region
per 4-connected component instead, largest first. The soft map is 0.5 at the 0.3 threshold, rising linearly to 1
at the patch least similar to the seed and falling to 0 at cosine 1.
"""

from __future__ import annotations

import numpy as np
import torch

from autolabel import masks as mask_utils
from autolabel.discovery.base import DiscoveryMethod, PatchRegion, contrast_score, is_constant, scatter_to_grid
from autolabel.discovery.graph import l2_normalize
from autolabel.features import PatchFeatures

#: the official code's guard against empty heads
EPS = 1e-10


def head_weights(cls_attn: torch.Tensor) -> torch.Tensor:
    """(heads, N) CLS attention → (heads,) sparsity weights w_h = log(Σ S / S_h) (all equal when uninformative)."""
    attn = cls_attn.double()
    sparsity = (attn > attn.mean()).double().mean(dim=1) + EPS
    return torch.log(sparsity.sum() / sparsity)


def per_head_features(feats: PatchFeatures, kind: str, heads: int) -> torch.Tensor:
    """(N, heads, head_dim) features of ``kind``; 'tokens' are split into ``heads`` equal chunks."""
    feats.get(kind)  # validates the kind and raises the standard error when it was not extracted
    t = getattr(feats, kind)
    if t.dim() == 3:
        if t.shape[1] != heads:
            raise ValueError(f"FOUND: {kind!r} has {t.shape[1]} heads but cls_attn has {heads}")
        return t.float()
    if t.shape[1] % heads:
        raise ValueError(f"FOUND: cannot split {kind!r} of dim {t.shape[1]} into {heads} heads")
    return t.float().reshape(t.shape[0], heads, -1)


def soft_from_similarity(sim: np.ndarray, tau: float) -> np.ndarray:
    """1 − similarity rescaled piecewise so that the background threshold ``tau`` maps to 0.5."""
    lo = float(sim.min())
    below = 0.5 + 0.5 * (tau - sim) / max(tau - lo, 1e-12)
    above = 0.5 - 0.5 * (sim - tau) / max(1.0 - tau, 1e-12)
    return np.clip(np.where(sim > tau, above, below), 0.0, 1.0).astype(np.float32)


class Found(DiscoveryMethod):
    """Foreground = everything not similar to the least-attended (background) patch."""

    name = "found"
    multi_object = False

    def __init__(self, feature: str = "auto", bkg_threshold: float = 0.3, split_components: bool = False) -> None:
        super().__init__(feature)
        self.bkg_threshold = bkg_threshold
        self.split_components = split_components

    def discover(self, feats: PatchFeatures) -> list[PatchRegion]:
        if feats.cls_attn is None:
            raise ValueError("FOUND needs the CLS attention (feats.cls_attn), which was not extracted")
        valid = feats.geometry.valid_patch_mask()
        keep = torch.from_numpy(valid.ravel())
        attn = feats.cls_attn[:, keep]
        heads = attn.shape[0]
        per_head = per_head_features(feats, self.feature_kind(feats), heads)[keep]
        if per_head.shape[0] == 0 or is_constant(per_head.reshape(per_head.shape[0], -1)):
            return []
        weights = head_weights(attn)
        desc = l2_normalize((per_head.double() * weights[None, :, None]).reshape(per_head.shape[0], -1).float())
        seed = int(torch.argmin((attn.double() * weights[:, None]).sum(dim=0)))
        sim = (desc @ desc[seed]).double().numpy()
        foreground = sim <= self.bkg_threshold
        if not foreground.any():
            return []
        fg_grid = scatter_to_grid(foreground, valid, False)
        soft = scatter_to_grid(soft_from_similarity(sim, self.bkg_threshold), valid, np.float32(0.0))
        if not self.split_components:
            return [self._region(fg_grid, soft, -sim, valid)]
        count, labels = mask_utils.connected_components(fg_grid)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        regions = []
        for label in np.argsort(-sizes, kind="stable") + 1:
            part = labels == label
            regions.append(self._region(part, np.where(part, soft, np.minimum(soft, 1.0 - soft)), -sim, valid))
        return regions

    @staticmethod
    def _region(mask: np.ndarray, soft: np.ndarray, fg_strength: np.ndarray, valid: np.ndarray) -> PatchRegion:
        """One region; its seed is its most foreground patch, its score the similarity contrast."""
        r, c = np.unravel_index(int(np.argmax(np.where(mask, soft, -1.0))), mask.shape)
        score = contrast_score(fg_strength, mask[valid])
        return PatchRegion(mask, score=score, soft=soft.astype(np.float32), seed=(int(r), int(c)))
