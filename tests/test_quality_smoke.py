"""Quality smoke test: TokenCut + guided or bilateral refinement on the offline DINOv2-S/14 segments ECSSD's salient
objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autolabel.masks import mask_iou
from autolabel.pipeline import Pipeline

N_IMAGES = 8
MIN_MEAN_IOU = 0.5


def ecssd_pairs(shared_data: Path, n: int) -> list[tuple[Path, Path]]:
    images = shared_data / "ecssd" / "images"
    masks = shared_data / "ecssd" / "masks"
    if not images.is_dir() or not masks.is_dir():
        pytest.skip(f"ECSSD not found under {shared_data}")
    pairs = [(p, masks / f"{p.stem}.png") for p in sorted(images.glob("*.jpg"))]
    pairs = [(img, gt) for img, gt in pairs if gt.is_file()][:n]
    if len(pairs) < n:
        pytest.skip(f"fewer than {n} ECSSD image/mask pairs under {shared_data}")
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize("refine", ["guided", "bilateral"])
def test_tokencut_refined_segments_ecssd(shared_data: Path, imgfocus_backbone, refine: str) -> None:
    pipe = Pipeline("tokencut", backbone=imgfocus_backbone, max_size=448, refine=refine)
    ious = []
    for image_path, gt_path in ecssd_pairs(shared_data, N_IMAGES):
        det = pipe(image_path)
        with Image.open(gt_path) as gt_img:
            gt = np.asarray(gt_img.convert("L")) > 127
        assert det.image_size == gt.shape, image_path.name
        assert len(det) == 1
        ious.append(mask_iou(det.masks[0], gt))
    mean_iou = float(np.mean(ious))
    print(f"ECSSD first {N_IMAGES}, {refine}: mean IoU {mean_iou:.3f} ({', '.join(f'{v:.2f}' for v in ious)})")
    assert mean_iou > MIN_MEAN_IOU
