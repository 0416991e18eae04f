"""Local ViT checkpoint files: read them, normalise their layout to timm's, infer the architecture.

Supported: official DINO release files (plain state dicts, or full training checkpoints with ``teacher`` /
``student`` and ``module.`` / ``backbone.`` prefixes), DINOv2 release files (``register_tokens``,
``mask_token``, optionally chunked ``blocks.<chunk>.<i>``), and timm ViT state dicts, as ``.pth`` / ``.pt`` /
``.bin`` (torch pickles, loaded with ``weights_only=True``) or ``.safetensors``. Heads are dropped.

The number of attention heads is not stored in a state dict; DINO and DINOv2 use 64-dimensional heads, so
``embed_dim // 64`` is assumed unless the caller says otherwise.

Also home of the cache directory, atomic weight writes and the loading errors shared by the other modules.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
WRAPPER_KEYS = ("teacher", "model", "state_dict", "model_state", "module", "student")
DROP_PREFIXES = ("head.", "head_drop.", "dino_head.", "ibot_head.")
HEAD_DIM = 64
_SIZE_NAMES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge", 1536: "giant"}


class BackboneUnavailable(RuntimeError):
    """A backbone cannot be loaded; the message says why and how to supply its weights."""


class CheckpointError(BackboneUnavailable, ValueError):
    """A checkpoint file cannot be read or is not a ViT layout this package understands."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: {reason}")


def cache_dir() -> Path:
    """Directory for converted weights and small decisions: ``$AUTOLABEL_CACHE`` or the user cache dir."""
    env = os.environ.get("AUTOLABEL_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("autolabel"))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def save_state_dict_atomic(path: Path, state_dict: Mapping[str, torch.Tensor],
                           metadata: dict[str, str] | None = None) -> None:
    """Write ``state_dict`` as safetensors to ``path`` via a temp file in the same folder and a rename.

    Concurrent writers each write their own temp file; the last rename wins and readers never see a
    partial file.
    """
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """Raw object stored in a checkpoint file (a dict of tensors, possibly nested)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "file not found")
    if not p.is_file():
        raise CheckpointError(p, "not a regular file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise CheckpointError(p, f"not a readable safetensors file ({exc})") from exc
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError ...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(p, f"not a readable torch checkpoint ({type(exc).__name__}: {first_line}); "
                                 "expected a state dict saved with torch.save or a .safetensors file") from exc


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _has_vit_keys(sd: Mapping[str, Any]) -> bool:
    return any(k.endswith("patch_embed.proj.weight") for k in sd)


def unwrap_state_dict(obj: Any, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The ViT state dict inside ``obj`` and a description of where it was found (e.g. ``teacher``)."""
    where: list[str] = []
    for _ in range(4):
        if _is_tensor_dict(obj) and _has_vit_keys(obj):
            break
        if not isinstance(obj, Mapping):
            raise CheckpointError(path, f"contains a {type(obj).__name__}, not a state dict")
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            keys = ", ".join(list(map(str, obj.keys()))[:8])
            raise CheckpointError(path, "no ViT weights found (no 'patch_embed.proj.weight' and none of the keys "
                                        f"{', '.join(WRAPPER_KEYS)}); top-level keys: {keys}")
        where.append(inner)
        obj = obj[inner]
    else:
        raise CheckpointError(path, "no ViT weights found within 4 nested levels")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return tensors, "/".join(where) or "top level"


def strip_prefixes(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Keep the keys under the ViT's wrapper prefix (``module.backbone.`` ...) without it; returns the prefix."""
    marker = "patch_embed.proj.weight"
    prefixes = sorted((k[: -len(marker)] for k in sd if k.endswith(marker)), key=len)
    prefix = prefixes[0] if prefixes else ""
    if not prefix:
        return dict(sd), ""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, prefix


def to_timm_layout(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2 release names → timm names; heads and training-only tensors dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(DROP_PREFIXES) or key == "mask_token":
            continue
        key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)  # DINOv2 block chunks
        key = re.sub(r"^blocks\.(\d+)\.gamma_([12])$", r"blocks.\1.ls\2.gamma", key)
        out[key] = value
    if "register_tokens" in out:
        # DINOv2 adds the position of CLS to CLS only, registers come after; timm folds that into cls_token.
        pos = out.pop("pos_embed")
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    return out


@dataclass(frozen=True)
class VitArchitecture:
    """What the tensors say about a ViT, and the timm name + kwargs that rebuild it."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    grid: int
    reg_tokens: int
    layer_scale: bool
    class_token: bool
    no_embed_class: bool
    mlp_ratio: float
    qkv_bias: bool
    in_chans: int
    timm_name: str = ""
    timm_kwargs: dict = field(default_factory=dict)

    @property
    def img_size(self) -> int:
        return self.grid * self.patch_size


def _require(sd: Mapping[str, torch.Tensor], key: str, ndim: int, path: str | os.PathLike) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(path, f"not a ViT layout this package understands: missing {key!r}")
    tensor = sd[key]
    if tensor.ndim != ndim:
        raise CheckpointError(path, f"{key!r} has shape {tuple(tensor.shape)}, expected {ndim} dimensions")
    return tensor


def _timm_base_name(embed_dim: int, patch_size: int, layer_scale: bool, reg_tokens: int) -> str:
    import timm

    size = _SIZE_NAMES.get(embed_dim, "base")
    if layer_scale and patch_size == 14:
        candidate = f"vit_{size}_patch14_reg{reg_tokens}_dinov2" if reg_tokens else f"vit_{size}_patch14_dinov2"
    else:
        candidate = f"vit_{size}_patch{patch_size}_224"
    return candidate if timm.is_model(candidate) else "vit_base_patch16_224"


def infer_architecture(sd: Mapping[str, torch.Tensor], path: str | os.PathLike = "<state dict>",
                       num_heads: int | None = None) -> VitArchitecture:
    """Architecture of a timm-layout ViT state dict; raises :class:`CheckpointError` for other layouts."""
    proj = _require(sd, "patch_embed.proj.weight", 4, path)
    embed_dim, in_chans, ph, pw = (int(s) for s in proj.shape)
    if ph != pw:
        raise CheckpointError(path, f"non-square patches {ph}x{pw} are not supported")
    pos = _require(sd, "pos_embed", 3, path)
    _require(sd, "blocks.0.attn.qkv.weight", 2, path)
    if any(".mlp.w12." in k for k in sd):
        raise CheckpointError(path, "SwiGLU MLP blocks (DINOv2 ViT-g) are not supported")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    class_token = "cls_token" in sd
    reg_tokens = int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
    n_pos = int(pos.shape[1])
    side = math.isqrt(n_pos)
    if side * side == n_pos:  # positions for patches only: prefix tokens carry no position of their own
        grid, no_embed_class = side, class_token or reg_tokens > 0
    else:
        side = math.isqrt(n_pos - 1)
        if not class_token or side * side != n_pos - 1:
            raise CheckpointError(path, f"pos_embed has {n_pos} positions: neither a square grid nor "
                                        "CLS + square grid")
        grid, no_embed_class = side, False
    heads = num_heads or max(1, embed_dim // HEAD_DIM)
    if embed_dim % heads:
        raise CheckpointError(path, f"embed dim {embed_dim} is not divisible by {heads} heads")
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = float(fc1.shape[0]) / embed_dim if fc1 is not None else 4.0
    layer_scale = "blocks.0.ls1.gamma" in sd
    qkv_bias = "blocks.0.attn.qkv.bias" in sd
    kwargs: dict[str, Any] = dict(
        patch_size=ph, embed_dim=embed_dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias, img_size=grid * ph, in_chans=in_chans, class_token=class_token,
        reg_tokens=reg_tokens, no_embed_class=no_embed_class, init_values=1e-5 if layer_scale else None,
        dynamic_img_size=True,
    )
    return VitArchitecture(
        embed_dim=embed_dim, depth=depth, num_heads=heads, patch_size=ph, grid=grid, reg_tokens=reg_tokens,
        layer_scale=layer_scale, class_token=class_token, no_embed_class=no_embed_class, mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias, in_chans=in_chans,
        timm_name=_timm_base_name(embed_dim, ph, layer_scale, reg_tokens), timm_kwargs=kwargs,
    )


@dataclass
class LoadedCheckpoint:
    """A checkpoint file read into a timm-layout state dict with its inferred architecture."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    arch: VitArchitecture
    sha256: str
    layout: str

    @property
    def weights_tag(self) -> str:
        return self.sha256[:12]


def load_checkpoint(path: str | os.PathLike, num_heads: int | None = None) -> LoadedCheckpoint:
    """Read a local ViT checkpoint (DINO / DINOv2 / timm; .pth, .pt, .bin, .safetensors)."""
    p = Path(path).expanduser()
    raw = read_checkpoint_file(p)
    nested, where = unwrap_state_dict(raw, p)
    flat, prefix = strip_prefixes(nested)
    sd = to_timm_layout(flat)
    arch = infer_architecture(sd, p, num_heads)
    layout = where + (f" with prefix {prefix!r}" if prefix else "")
    return LoadedCheckpoint(path=p, state_dict=sd, arch=arch, sha256=file_sha256(p), layout=layout)


def build_timm_model(ckpt: LoadedCheckpoint) -> torch.nn.Module:
    """timm ViT with the checkpoint's architecture and weights (strict: every tensor must match)."""
    import timm

    model = timm.create_model(ckpt.arch.timm_name, pretrained=False, num_classes=0, **ckpt.arch.timm_kwargs)
    try:
        result = model.load_state_dict(ckpt.state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(ckpt.path, f"weights do not fit the inferred architecture "
                                         f"({ckpt.arch.timm_name}): {str(exc).splitlines()[-1].strip()}") from exc
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing {', '.join(result.missing_keys[:6])}")
        if result.unexpected_keys:
            parts.append(f"unexpected {', '.join(result.unexpected_keys[:6])}")
        raise CheckpointError(ckpt.path, f"weights do not fit the inferred architecture "
                                         f"({ckpt.arch.timm_name}): {'; '.join(parts)}")
    return model
