"""``autolabel eval`` end to end on small hand-built ground truths (and the shared data when present)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from autolabel.evaluate import EvalError, eval_command, run_eval
from autolabel.masks import mask_to_rle

SHARED = Path(os.environ.get("AUTOLABEL_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
ECSSD_MASKS = SHARED / "data" / "ecssd" / "masks"
COCO_SUBSET = SHARED / "data" / "coco-train2017-subset" / "instances.json"


def block(rows: slice, cols: slice, shape: tuple[int, int] = (20, 20)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def entry(name: str, mask: np.ndarray, score: float) -> dict:
    return {"file_name": name, "bbox": [0, 0, 1, 1], "segmentation": mask_to_rle(mask), "score": score,
            "category_id": 1}


@pytest.fixture()
def saliency_case(tmp_path: Path) -> tuple[Path, Path]:
    """Masks a, b, c (a 10x10 square each); a predicted in two halves, b exactly, c not at all."""
    masks = tmp_path / "masks"
    masks.mkdir()
    square = block(slice(0, 10), slice(0, 10))
    for stem in ("a", "b", "c"):
        Image.fromarray(square.astype(np.uint8) * 255).save(masks / f"{stem}.png")
    results = [entry("images/a.jpg", block(slice(0, 10), slice(0, 5)), 0.9),
               entry("images/a.jpg", block(slice(0, 10), slice(5, 10)), 0.3),
               entry("b.jpg", square, 0.8)]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    return path, masks


def invoke(*args: str):
    return CliRunner().invoke(eval_command, [str(a) for a in args])


def test_saliency_union_top_and_missing_images(saliency_case: tuple[Path, Path], tmp_path: Path) -> None:
    results, masks = saliency_case
    out = tmp_path / "out" / "metrics.json"
    run = invoke(results, "--saliency-masks", masks, "--json", out)
    assert run.exit_code == 0, run.output
    assert "iou" in run.output and "max_fbeta" in run.output
    union = json.loads(out.read_text())
    assert union["iou"] == pytest.approx(2 / 3)  # a: 1, b: 1, c: empty prediction 0
    assert union["n_images"] == 3 and union["n_images_with_predictions"] == 2
    assert union["accuracy"] == pytest.approx((1 + 1 + 300 / 400) / 3)

    run = invoke(results, "--saliency-masks", masks, "--saliency-mode", "top", "--json", out)
    assert run.exit_code == 0, run.output
    assert json.loads(out.read_text())["iou"] == pytest.approx((0.5 + 1 + 0) / 3)

    listed = run_eval(results, masks_dir=masks, only_listed=True).metrics
    assert listed["iou"] == pytest.approx(1.0) and listed["n_images"] == 2


def test_bad_entries_are_reported_and_skipped(saliency_case: tuple[Path, Path], tmp_path: Path) -> None:
    results, masks = saliency_case
    entries = json.loads(results.read_text())
    entries.append(entry("c.jpg", np.ones((7, 9), dtype=bool), 0.5))  # wrong size
    entries.append({"file_name": "c.jpg", "score": 0.5})  # no mask at all
    entries.append(entry("zzz.jpg", np.ones((20, 20), dtype=bool), 0.5))  # no such GT mask
    results.write_text(json.dumps(entries))
    run = invoke(results, "--saliency-masks", masks, "--json", tmp_path / "m.json")
    assert run.exit_code == 0, run.output
    assert "7x9 differs from the image size 20x20" in run.output
    assert "no ground-truth mask zzz.png" in run.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["iou"] == pytest.approx(2 / 3)
    assert metrics["n_bad_results"] == 2 and metrics["n_unmatched_results"] == 1


def test_folder_of_soft_maps(saliency_case: tuple[Path, Path], tmp_path: Path) -> None:
    _, masks = saliency_case
    maps = tmp_path / "maps"
    maps.mkdir()
    soft = np.where(block(slice(0, 10), slice(0, 10)), 0.8, 0.1)
    Image.fromarray(np.round(soft * 255).astype(np.uint8)).save(maps / "a.png")
    np.save(maps / "b.npy", soft.astype(np.float32))
    metrics = run_eval(maps, masks_dir=masks).metrics
    assert metrics["iou"] == pytest.approx(2 / 3)  # c has no map: empty
    assert metrics["n_images_with_predictions"] == 2
    # Shared best threshold (0.1, 0.8]: a and b are perfect, c (empty map) scores 0.
    assert metrics["max_fbeta"] == pytest.approx(2 / 3)


def test_mismatched_names_and_missing_files(saliency_case: tuple[Path, Path], tmp_path: Path) -> None:
    _, masks = saliency_case
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([entry("x.jpg", np.ones((20, 20), dtype=bool), 1.0)]))
    run = invoke(wrong, "--saliency-masks", masks)
    assert run.exit_code == 1
    assert "none of the 1 results matches a ground-truth mask" in run.output and "'x.jpg'" in run.output
    run = invoke(tmp_path / "absent.json", "--saliency-masks", masks)
    assert run.exit_code == 2 and "does not exist" in run.output
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    run = invoke(broken, "--saliency-masks", masks)
    assert run.exit_code == 1 and "not valid JSON" in run.output
    run = invoke(wrong)
    assert run.exit_code == 2 and "exactly one of" in run.output
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvalError, match="no .png"):
        run_eval(wrong, masks_dir=empty)


# ------------------------------------------------------------------------------------------------ COCO mode
def write_coco(tmp_path: Path) -> Path:
    instances = {
        "images": [{"id": 5, "file_name": "one.jpg", "width": 40, "height": 30},
                   {"id": 6, "file_name": "two.jpg", "width": 40, "height": 30},
                   {"id": 7, "file_name": "three.jpg", "width": 40, "height": 30}],
        "categories": [{"id": 2, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0,
             "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
            {"id": 2, "image_id": 6, "category_id": 2, "bbox": [20, 10, 10, 10], "area": 100, "iscrowd": 0,
             "segmentation": [[20, 10, 30, 10, 30, 20, 20, 20]]},
            {"id": 3, "image_id": 7, "category_id": 2, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0,
             "segmentation": [[5, 5, 25, 5, 25, 25, 5, 25]]},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    return path


def box_entry(box: list[float], score: float, **where: object) -> dict:
    x, y, w, h = box
    mask = block(slice(y, y + h), slice(x, x + w), (30, 40))
    return dict(where, bbox=box, segmentation=mask_to_rle(mask), score=score, category_id=1)


def test_coco_mode_matches_by_name_and_id(tmp_path: Path) -> None:
    gt = write_coco(tmp_path)
    results = [
        box_entry([0, 0, 10, 10], 0.9, file_name="some/dir/one.jpg"),  # by base name: hit
        box_entry([20, 10, 10, 10], 0.9, image_id=6, file_name="two.jpg"),  # by id: hit
        box_entry([0, 0, 5, 5], 0.2, image_id=6),  # lower-scoring extra box
        box_entry([0, 0, 10, 10], 0.9, image_id=6, file_name="three.jpg"),  # conflicting id and name
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "m.json"
    run = invoke(path, "--coco", gt, "--json", out)
    assert run.exit_code == 0, run.output
    assert "image_id 6 is 'two.jpg' in the ground truth but the entry names 'three.jpg'" in run.output
    metrics = json.loads(out.read_text())
    assert metrics["corloc"] == pytest.approx(200 / 3)  # image 7 has no prediction: a miss
    assert metrics["box_AP50"] == pytest.approx(metrics["mask_AP50"])
    assert metrics["box_AR100"] == pytest.approx(2 / 3)
    assert metrics["n_images"] == 3 and metrics["n_images_with_predictions"] == 2
    assert metrics["n_unmatched_results"] == 1


def test_coco_mode_without_masks_and_with_unknown_names(tmp_path: Path) -> None:
    gt = write_coco(tmp_path)
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps([{"file_name": "one.jpg", "bbox": [0, 0, 10, 10], "score": 1.0}]))
    report = run_eval(path, coco_path=gt, only_listed=True)
    assert report.metrics["box_AP"] == pytest.approx(1.0) and report.metrics["corloc"] == 100.0
    assert "mask_AP" not in report.metrics
    assert any("mask metrics skipped" in note for note in report.notes)
    path.write_text(json.dumps([{"file_name": "nine.jpg", "bbox": [0, 0, 10, 10], "score": 1.0}]))
    run = invoke(path, "--coco", gt)
    assert run.exit_code == 1 and "none of the 1 results matches a ground-truth image" in run.output


# ------------------------------------------------------------------------------------------------ shared data
@pytest.mark.skipif(not ECSSD_MASKS.is_dir(), reason="shared ECSSD masks not present")
def test_ecssd_masks_scored_against_themselves(tmp_path: Path) -> None:
    paths = sorted(ECSSD_MASKS.glob("*.png"))[:5]
    results = [entry(p.stem + ".jpg", np.asarray(Image.open(p).convert("L")) > 127, 1.0) for p in paths]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    metrics = run_eval(path, masks_dir=ECSSD_MASKS, only_listed=True).metrics
    assert metrics["n_images"] == 5
    assert metrics["iou"] == pytest.approx(1.0) and metrics["max_fbeta"] == pytest.approx(1.0)


@pytest.mark.skipif(not COCO_SUBSET.exists(), reason="shared COCO subset not present")
def test_shared_coco_subset_through_the_command(tmp_path: Path) -> None:
    dataset = json.loads(COCO_SUBSET.read_text())
    names = {img["id"]: img["file_name"] for img in dataset["images"]}
    results = [{"file_name": names[a["image_id"]], "bbox": a["bbox"], "score": 1.0, "category_id": 1}
               for a in dataset["annotations"] if not a["iscrowd"]]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "m.json"
    run = invoke(path, "--coco", COCO_SUBSET, "--json", out)
    assert run.exit_code == 0, run.output
    metrics = json.loads(out.read_text())
    assert metrics["box_AP50"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["corloc"] == pytest.approx(100.0)
