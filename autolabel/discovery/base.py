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
        soft: optional (grid_h, grid_w) float map in [0, 1], larger = more foreground; refinement filters it
            to get pixel-accurate masks. When None the binary ``mask`` is refined instead.
        seed: optional (row, col) of the seed patch.
    """

    mask: np.ndarray
    score: float = 1.0
    soft: np.ndarray | None = None
    seed: tuple[int, int] | None = None


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
