"""Feature extraction from a timm ViT: q / k / v / output tokens and CLS attention of chosen blocks.

The image is resized (long side ``max_size``), normalised with ImageNet mean/std and zero-padded bottom/right
to the patch grid; :class:`~autolabel.geometry.PatchGeometry` keeps that geometry so patch masks map back to
original pixels exactly. The forward pass stops after the deepest requested block.
"""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from autolabel.backbones.registry import BackboneSpec
from autolabel.features import PatchFeatures
from autolabel.geometry import PatchGeometry

log = logging.getLogger("autolabel")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ViTBackbone:
    """A loaded ViT with the geometry and hooks discovery needs. Thread-safe for inference (no state)."""

    def __init__(self, model: torch.nn.Module, spec: BackboneSpec, weights_tag: str, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.spec = spec
        self.weights_tag = weights_tag
        self.device = torch.device(device)
        self.patch_size = int(spec.patch_size)
        self.num_layers = len(model.blocks)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        """Backbone part of model version strings: name and weights identifier."""
        return f"{self.spec.name}@{self.weights_tag}"

    def geometry(self, height: int, width: int, max_size: int | None = 448) -> PatchGeometry:
        return PatchGeometry.for_image(height, width, self.patch_size, max_size)

    def preprocess(self, image: np.ndarray, max_size: int | None = 448, orig_size: tuple[int, int] | None = None
                   ) -> tuple[torch.Tensor, np.ndarray, PatchGeometry]:
        """RGB uint8 (H, W, 3) → normalised, padded (1, 3, Hp, Wp) tensor, resized RGB float image, geometry.

        ``orig_size`` is the (height, width) results must be mapped to when ``image`` was decoded downscaled.
        """
        geo = self.geometry(*(orig_size or image.shape[:2]), max_size)
        if (geo.resized_h, geo.resized_w) != image.shape[:2]:
            pil = Image.fromarray(image).resize((geo.resized_w, geo.resized_h), Image.Resampling.BICUBIC)
            resized = np.asarray(pil, dtype=np.float32) / 255.0
        else:
            resized = image.astype(np.float32) / 255.0
        norm = (resized - IMAGENET_MEAN) / IMAGENET_STD
        x = torch.from_numpy(np.ascontiguousarray(norm.transpose(2, 0, 1)))[None]
        x = F.pad(x, (0, geo.padded_w - geo.resized_w, 0, geo.padded_h - geo.resized_h))
        return x, resized, geo

    def _resolve_layers(self, layers: Iterable[int] | None) -> list[int]:
        if layers is None:
            return [self.spec.layer_index]
        out = sorted({int(layer) % self.num_layers for layer in layers})
        return out

    @torch.inference_mode()
    def extract_layers(self, image: np.ndarray, layers: Iterable[int] | None = None, max_size: int | None = 448,
                       orig_size: tuple[int, int] | None = None) -> dict[int, PatchFeatures]:
        """Features of several blocks in one forward pass, keyed by non-negative block index."""
        x, resized, geo = self.preprocess(image, max_size, orig_size)
        wanted = self._resolve_layers(layers)
        model = self.model
        x = x.to(self.device)
        tokens = model.patch_embed(x)
        tokens = model._pos_embed(tokens)
        tokens = model.patch_drop(tokens)
        tokens = model.norm_pre(tokens)
        npre = self.num_prefix_tokens
        out: dict[int, PatchFeatures] = {}
        for i, blk in enumerate(model.blocks):
            if i > wanted[-1]:
                break
            if i in wanted:
                attn = blk.attn
                b, n, _ = tokens.shape
                qkv = attn.qkv(blk.norm1(tokens)).reshape(b, n, 3, attn.num_heads, attn.head_dim)
                q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, hd)
                q, k = attn.q_norm(q), attn.k_norm(k)
                cls_attn = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)[0, :, 0, npre:]
                tokens = blk(tokens)
                block_out = model.norm(tokens) if i == self.num_layers - 1 else tokens
                out[i] = PatchFeatures(
                    geometry=geo,
                    q=q[0, :, npre:].transpose(0, 1).contiguous().cpu(),
                    k=k[0, :, npre:].transpose(0, 1).contiguous().cpu(),
                    v=v[0, :, npre:].transpose(0, 1).contiguous().cpu(),
                    tokens=block_out[0, npre:].contiguous().cpu(),
                    cls_attn=cls_attn.contiguous().cpu(),
                    cls_token=block_out[0, 0].contiguous().cpu(),
                    image=resized,
                    layer=i,
                    backbone=self.spec.name,
                )
            else:
                tokens = blk(tokens)
        return out

    def extract(self, image: np.ndarray, layer: int | None = None, max_size: int | None = 448,
                orig_size: tuple[int, int] | None = None) -> PatchFeatures:
        """Features of one block (default: the registry's best layer for this backbone)."""
        layers = None if layer is None else [layer]
        feats = self.extract_layers(image, layers, max_size, orig_size)
        return next(iter(feats.values()))
