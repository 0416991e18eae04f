"""The one pipeline: image → backbone features → discovery method → regions → refinement → ``Detections``.

The CLI, the Label Studio backend and the benchmark all run images through :class:`Pipeline`. It loads the backbone
once; calls are thread-safe (no per-call state) and record per-stage timings in ``detections.meta["timings"]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any

import numpy as np
import torch

from autolabel import masks as mask_utils
from autolabel.backbones.vit import ViTBackbone
from autolabel.detections import Detections
from autolabel.discovery import DiscoveryMethod, PatchRegion, create_method
from autolabel.features import PatchFeatures
from autolabel.images import ImageSource, decode_image
from autolabel.refine import REFINE_MODES, Refiner

log = logging.getLogger("autolabel")

DEFAULT_METHOD = "tokencut"
DEFAULT_MAX_SIZE = 448
DEFAULT_REFINE = "guided"


def default_max_size() -> int:
    """Long side the network sees: env AUTOLABEL_MAX_SIZE or 448."""
    return int(os.environ.get("AUTOLABEL_MAX_SIZE", DEFAULT_MAX_SIZE))


def default_refine() -> str:
    """Refinement mode when none is given: env AUTOLABEL_REFINE or 'guided'."""
    mode = os.environ.get("AUTOLABEL_REFINE") or DEFAULT_REFINE
    if mode not in REFINE_MODES:
        raise ValueError(f"AUTOLABEL_REFINE={mode!r} is not a refinement mode; choose one of {REFINE_MODES}")
    return mode


def default_method_params() -> dict[str, Any]:
    """Method hyper-parameters when none are given: env AUTOLABEL_METHOD_PARAMS (a JSON object) or none."""
    raw = os.environ.get("AUTOLABEL_METHOD_PARAMS", "").strip()
    if not raw:
        return {}
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"AUTOLABEL_METHOD_PARAMS is not valid JSON ({exc}): {raw!r}") from None
    if not isinstance(params, dict):
        raise ValueError(f"AUTOLABEL_METHOD_PARAMS must be a JSON object like {{\"tau\": 0.4}}, got {raw!r}")
    return params


class Pipeline:
    """Discovery pipeline bound to one backbone, one method and one refinement.

    Args:
        method: discovery method name (see ``autolabel.discovery.METHODS``) or an instance.
        backbone: registry name, checkpoint path, 'auto', or a loaded :class:`ViTBackbone`.
        max_size: long side of the network input (default env AUTOLABEL_MAX_SIZE or 448).
        refine: 'guided', 'bilateral' or 'none', or a :class:`Refiner` (default env AUTOLABEL_REFINE or
            'guided').
        layer, feature: override the backbone's registered best block / feature kind.
        box_from: 'mask' (tight box of the refined mask) or 'patches' (papers' convention: patch component box).
        method_params: hyper-parameters for the method's constructor (default env AUTOLABEL_METHOD_PARAMS, a JSON
            object, or none); ignored when ``method`` is an instance.
        min_refined_iou: drop a region whose refined mask overlaps its raw patch mask less than this (MaskCut's
            CRF check); 0 keeps all.
    """

    def __init__(self, method: str | DiscoveryMethod = DEFAULT_METHOD, backbone: str | ViTBackbone = "auto",
                 max_size: int | None = None, refine: str | Refiner | None = None, layer: int | None = None,
                 feature: str | None = None, box_from: str = "mask", method_params: dict | None = None,
                 min_refined_iou: float = 0.0, device: str = "cpu") -> None:
        if isinstance(method, DiscoveryMethod):
            self.method = method
        else:
            params = default_method_params() if method_params is None else method_params
            try:
                self.method = create_method(method, **params)
            except TypeError as exc:  # an unknown hyper-parameter name
                raise ValueError(f"method {method!r} cannot take parameters {params}: {exc}") from None
        if isinstance(backbone, ViTBackbone):
            self.backbone = backbone
        else:
            from autolabel.backbones.loading import load_backbone

            self.backbone = load_backbone(backbone, device=device)
        self.refiner = refine if isinstance(refine, Refiner) else Refiner(mode=refine or default_refine())
        self.max_size = max_size or default_max_size()
        self.layer = self.backbone.spec.layer_index if layer is None else layer % self.backbone.num_layers
        self.feature = feature or self.backbone.spec.best_feature
        if box_from not in ("mask", "patches"):
            raise ValueError(f"box_from must be 'mask' or 'patches', got {box_from!r}")
        self.box_from = box_from
        self.min_refined_iou = min_refined_iou
        log.info("pipeline: method=%s backbone=%s layer=%d feature=%s max_size=%d refine=%s",
                 self.method.name, self.backbone.version, self.layer, self.feature, self.max_size,
                 self.refiner.mode)

    # --------------------------------------------------------------------------------------------- identity
    def config(self) -> dict[str, Any]:
        """Everything that determines the output, for model-version strings and benchmark tables."""
        return {
            "method": self.method.name, "method_params": self.method.params(), "backbone": self.backbone.version,
            "layer": self.layer, "feature": self.feature, "max_size": self.max_size,
            "refine": self.refiner.params(), "box_from": self.box_from, "min_refined_iou": self.min_refined_iou,
        }

    @property
    def model_version(self) -> str:
        """``autolabel-<method>-<backbone>-<config hash>``: changes whenever the output would."""
        digest = hashlib.sha256(json.dumps(self.config(), sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"autolabel-{self.method.name}-{self.backbone.name}-{digest}"

    # ----------------------------------------------------------------------------------------------- stages
    def features(self, image: np.ndarray, orig_size: tuple[int, int] | None = None) -> PatchFeatures:
        feats = self.backbone.extract(image, layer=self.layer, max_size=self.max_size, orig_size=orig_size)
        feats.extra["feature"] = self.feature
        return feats

    def regions_to_detections(self, regions: list[PatchRegion], feats: PatchFeatures) -> Detections:
        """Refine regions to original-resolution masks and boxes, with per-object descriptors."""
        geo = feats.geometry
        size = (geo.orig_h, geo.orig_w)
        if not regions:
            return Detections.empty(size)
        masks, boxes, scores, descs = [], [], [], []
        tokens = feats.tokens if feats.tokens is not None else feats.get(self.feature)
        tokens = torch.nn.functional.normalize(tokens.reshape(tokens.shape[0], -1).float(), dim=-1)
        for region, mask in zip(regions, self.refiner.refine_all(regions, geo, feats.image)):
            if self.min_refined_iou > 0:
                if mask_utils.mask_iou(mask, geo.patch_mask_to_original(region.mask)) < self.min_refined_iou:
                    continue
            if self.box_from == "patches":
                ext = mask_utils.mask_extent(region.mask)
                box = geo.patch_box_to_pixels(*ext) if ext else (0.0, 0.0, 0.0, 0.0)
            else:
                box = mask_utils.mask_to_box(mask)
            sel = torch.from_numpy(region.mask.ravel())
            desc = tokens[sel].mean(dim=0) if sel.any() else tokens.mean(dim=0)
            masks.append(mask)
            boxes.append(box)
            scores.append(region.score)
            descs.append(torch.nn.functional.normalize(desc, dim=0).numpy())
        if not masks:
            return Detections.empty(size)
        return Detections(np.array(boxes), np.array(scores), size, masks=np.stack(masks),
                          descriptors=np.stack(descs).astype(np.float32))

    def detect(self, feats: PatchFeatures) -> Detections:
        """Discovery + refinement on already extracted features, with discovery/refine timings."""
        t0 = time.perf_counter()
        regions = self.method.discover(feats)
        t1 = time.perf_counter()
        det = self.regions_to_detections(regions, feats)
        t2 = time.perf_counter()
        det.meta["timings"] = {"discovery": t1 - t0, "refine": t2 - t1}
        det.meta["model_version"] = self.model_version
        return det

    def run_array(self, image: np.ndarray, orig_size: tuple[int, int] | None = None) -> Detections:
        """Detections for a decoded RGB uint8 image, with backbone/discovery/refine timings.

        ``orig_size`` (height, width): the full image size when ``image`` was decoded downscaled; results are
        given in those pixels.
        """
        t0 = time.perf_counter()
        feats = self.features(image, orig_size)
        backbone = time.perf_counter() - t0
        det = self.detect(feats)
        det.meta["timings"] = {"backbone": backbone, **det.meta["timings"]}
        return det

    def __call__(self, source: ImageSource, name: str | None = None) -> Detections:
        """Decode ``source`` (path, bytes, file, PIL image or array) and discover objects in it.

        Raises :class:`autolabel.images.ImageLoadError` naming the item when it cannot be decoded.
        """
        t0 = time.perf_counter()
        image, orig_size = decode_image(source, name=name)
        decode = time.perf_counter() - t0
        det = self.run_array(image, orig_size)
        det.meta["timings"] = {"decode": decode, **det.meta["timings"]}
        return det
