"""The one interface every discovery method implements: patch features in, patch-level regions out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from autolabel.features import PatchFeatures


@dataclass
class PatchRegion:
    """One object found on the patch grid.

    Attributes:
        mask: (grid_h, grid_w) bool — the object's patches (one connected component for box methods).
        score: confidence in [0, 1] (methods define it; higher is more object-like).
        soft: optional (grid_h, grid_w) float map in [0, 1], larger = more foreground, > 0.5 exactly where the
            method's own threshold puts foreground (see :func:`centred_soft_map`); refinement with
            ``source='soft'`` filters it and thresholds at 0.5. When None the binary ``mask`` is refined.
        seed: optional (row, col) of the seed patch.
    """

    mask: np.ndarray
    score: float = 1.0
    soft: np.ndarray | None = None
    seed: tuple[int, int] | None = None


# ----------------------------------------------------------------------- helpers shared by the methods
def contrast_score(vec: np.ndarray, inside: np.ndarray) -> float:
    """How separated the eigenvector is inside vs. outside the object, in [0, 1]."""
    if inside.all() or not inside.any():
        return 0.0
    spread = float(vec.max() - vec.min())
    if spread <= 0:
        return 0.0
    return float(np.clip((vec[inside].mean() - vec[~inside].mean()) / spread, 0.0, 1.0))


def is_constant(features: torch.Tensor, rel_tol: float = 1e-6) -> bool:
    """True when all rows of an (N, D) feature matrix are (numerically) the same vector."""
    spread = (features - features.mean(dim=0, keepdim=True)).abs().max()
    return bool(spread <= rel_tol * max(float(features.abs().max()), 1e-12))


def centred_soft_map(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Soft map in [0, 1] that is > 0.5 exactly on ``inside``: 0.5 ± 0.5·|values|/max|values|."""
    scale = float(np.abs(values).max())
    mag = np.abs(values) / scale if scale > 0 else np.zeros_like(values, dtype=np.float64)
    return (0.5 + 0.5 * np.where(inside, mag, -mag)).astype(np.float32)


def scatter_to_grid(values: np.ndarray, valid: np.ndarray, fill: float | bool) -> np.ndarray:
    """Put per-valid-patch ``values`` back on the (grid_h, grid_w) grid, ``fill`` elsewhere."""
    out = np.full(valid.shape, fill, dtype=values.dtype)
    out[valid] = values
    return out


class DiscoveryMethod(ABC):
    """Training-free object discovery on one image's patch features.

    Subclasses set ``name`` and ``multi_object`` and implement :meth:`discover`. Hyper-parameters are
    constructor arguments with the published defaults.
    """

    name: ClassVar[str] = ""
    multi_object: ClassVar[bool] = False

    def __init__(self, feature: str = "auto") -> None:
        #: which feature kind to build the graph from ('q', 'k', 'v', 'tokens') or 'auto' = backbone's best.
        self.feature = feature

    @abstractmethod
    def discover(self, feats: PatchFeatures) -> list[PatchRegion]:
        """Regions for one image, most confident first. Never raises for a degenerate image: returns []."""

    def feature_kind(self, feats: PatchFeatures) -> str:
        """The feature kind to use: the constructor's, or for 'auto' the backbone's best (``feats.extra``)."""
        return feats.extra.get("feature", "k") if self.feature == "auto" else self.feature

    def select_features(self, feats: PatchFeatures) -> torch.Tensor:
        """(N, D) float32 features of :meth:`feature_kind`."""
        return feats.get(self.feature_kind(feats))

    def params(self) -> dict:
        """Hyper-parameters, for model-version strings and benchmark tables."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
