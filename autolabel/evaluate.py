"""``autolabel eval``: score a ``autolabel discover`` results file against COCO instances or saliency masks.

The results file is a JSON list of COCO-style entries: ``file_name``, optional ``image_id``, ``bbox`` [x, y, w, h],
``segmentation`` (COCO RLE with string counts, or polygons), ``score``, ``category_id``. Entries are matched to the
ground truth by ``image_id`` when it is a GT id, else by ``file_name`` (exact path, then base name). A bad or
unmatched entry is reported and skipped; the evaluation goes on.

* COCO mode: CorLoc (top-scoring box per image) and class-agnostic box / mask AP, AP50, AR@100 (pycocotools).
* Saliency mode: per image, the union (or the top-scoring) of its predicted masks vs ``<stem>.png`` in the mask
  folder; mean IoU, pixel accuracy and maxFβ. RESULTS may also be a folder of predicted maps (``<stem>.png`` 8-bit
  soft maps or ``<stem>.npy`` float 0..1 arrays).

Every ground-truth image counts (an image without predictions is a miss / an empty mask) unless ``only_listed``
restricts the evaluation to the images that have at least one results entry.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Hashable, Sequence

import click
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask
from rich.console import Console
from rich.table import Table

from autolabel.masks import rle_to_mask
from autolabel.metrics.coco_ap import coco_ap
from autolabel.metrics.corloc import corloc, xywh_to_xyxy
from autolabel.metrics.saliency import SaliencyAccumulator

SALIENCY_MODES = ("union", "top")
MAP_SUFFIXES = (".png", ".npy")
MAX_PROBLEMS_SHOWN = 10


class EvalError(ValueError):
    """The evaluation cannot run at all (unreadable file, nothing matches, ...)."""


@dataclass
class EvalReport:
    """Metrics (flat dict of numbers) and human-readable notes on what was skipped and why."""

    metrics: dict[str, float]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ loading
def load_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as exc:
        raise EvalError(f"{what} {path}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"{what} {path}: cannot read it ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise EvalError(f"{what} {path}: not valid JSON ({exc})") from exc


def load_results(path: Path) -> list[dict]:
    """The results list of ``autolabel discover`` (a JSON list of entries)."""
    data = load_json(path, "results file")
    if not isinstance(data, list):
        raise EvalError(f"results file {path}: expected a JSON list of detections, got {type(data).__name__}")
    return data


def load_coco_gt(path: Path) -> dict:
    data = load_json(path, "COCO ground truth")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise EvalError(f"COCO ground truth {path}: expected a dict with 'images' and 'annotations' lists")
    return data


def mask_files(folder: Path, suffixes: Sequence[str] = (".png",)) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``folder`` with one of ``suffixes`` (case-insensitive)."""
    if not folder.is_dir():
        raise EvalError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            found.setdefault(path.stem, path)
    return found


def read_gray_png(path: Path) -> np.ndarray:
    """An image file as (H, W) uint8 gray (0/255 masks stay 0/255); raises EvalError naming the file."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"))
    except (OSError, ValueError) as exc:
        raise EvalError(f"{path}: cannot read it as an image ({exc})") from exc


def read_predicted_map(path: Path) -> np.ndarray:
    """A predicted saliency map: 8-bit image file, or ``.npy`` array (float 0..1 or bool)."""
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise EvalError(f"{path}: cannot read it as a numpy array ({exc})") from exc
    return read_gray_png(path)


# ------------------------------------------------------------------------------------------------ entries
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def entry_problem(entry: Any, need_score: bool) -> str | None:
    """Why a results entry cannot be used, or None when it looks sound."""
    if not isinstance(entry, dict):
        return f"not a JSON object but {type(entry).__name__}"
    if "file_name" not in entry and "image_id" not in entry:
        return "neither 'file_name' nor 'image_id'"
    if "bbox" not in entry and "segmentation" not in entry:
        return "neither 'bbox' nor 'segmentation'"
    if "bbox" in entry:
        box = entry["bbox"]
        if not isinstance(box, list) or len(box) != 4 or not all(_number(v) for v in box):
            return f"'bbox' must be 4 numbers [x, y, w, h], got {box!r}"
        if box[2] < 0 or box[3] < 0:
            return f"'bbox' has a negative width or height: {box!r}"
    if "segmentation" in entry:
        seg = entry["segmentation"]
        is_rle = isinstance(seg, dict) and "counts" in seg and "size" in seg
        if not is_rle and not (isinstance(seg, list) and all(isinstance(p, list) for p in seg)):
            return "'segmentation' must be a COCO RLE {size, counts} or a list of polygons"
    if need_score and not _number(entry.get("score")):
        return f"'score' must be a number, got {entry.get('score')!r}"
    return None


def entry_label(entry: Any, index: int) -> str:
    if isinstance(entry, dict):
        name = entry.get("file_name", entry.get("image_id", "?"))
        return f"result #{index} ({name})"
    return f"result #{index}"


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """A results segmentation (RLE or polygons) as a bool (height, width) mask; ValueError on a size mismatch."""
    if isinstance(seg, dict):
        size = [int(v) for v in seg["size"]]
        if size != [height, width]:
            raise ValueError(f"mask size {size[0]}x{size[1]} differs from the image size {height}x{width}")
        return rle_to_mask(seg)
    rles = coco_mask.frPyObjects(seg, height, width)
    return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


def _as_rle(seg: Any, height: int, width: int) -> dict:
    if isinstance(seg, dict):
        size = [int(v) for v in seg["size"]]
        if size != [height, width]:
            raise ValueError(f"mask size {size[0]}x{size[1]} differs from the image size {height}x{width}")
        if isinstance(seg["counts"], list):
            return coco_mask.frPyObjects(seg, height, width)
        return seg
    return coco_mask.merge(coco_mask.frPyObjects(seg, height, width))


def _show(values: Sequence[Any], limit: int = 3) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:limit])
    return shown + (", ..." if len(values) > limit else "")


# ------------------------------------------------------------------------------------------------ COCO mode
class CocoMatcher:
    """Finds the GT image of a results entry: by GT ``image_id``, else by file name (exact, then base name)."""

    def __init__(self, gt: dict) -> None:
        self.images = {img["id"]: img for img in gt["images"]}
        self.by_name = {img.get("file_name"): img["id"] for img in gt["images"] if img.get("file_name")}
        base_counts: dict[str, int] = defaultdict(int)
        for name in self.by_name:
            base_counts[PurePath(name).name] += 1
        self.by_base = {PurePath(n).name: i for n, i in self.by_name.items() if base_counts[PurePath(n).name] == 1}
        self.int_ids = all(isinstance(i, int) for i in self.images)

    def _by_file(self, name: Any) -> Hashable | None:
        if not isinstance(name, str):
            return None
        if name in self.by_name:
            return self.by_name[name]
        return self.by_base.get(PurePath(name.replace("\\", "/")).name)

    def resolve(self, entry: dict) -> tuple[Hashable | None, str | None]:
        """(GT image id, None) or (None, reason)."""
        name = entry.get("file_name")
        if "image_id" in entry:
            image_id = entry["image_id"]
            if self.int_ids and isinstance(image_id, str) and image_id.isdigit():
                image_id = int(image_id)
            if image_id in self.images:
                gt_name = self.images[image_id].get("file_name")
                if isinstance(name, str) and gt_name and PurePath(name).name != PurePath(gt_name).name:
                    return None, (f"image_id {image_id!r} is {gt_name!r} in the ground truth but the entry "
                                  f"names {name!r}")
                return image_id, None
            found = self._by_file(name)
            if found is not None:
                return found, None
            return None, f"image_id {image_id!r} is not in the ground truth"
        found = self._by_file(name)
        if found is None:
            return None, f"file_name {name!r} matches no ground-truth image"
        return found, None


def match_coco_results(results: list, gt: dict) -> tuple[list[dict], list[str], int]:
    """Usable entries with their GT ``image_id`` set, the problems met, and how many entries were unmatched."""
    matcher = CocoMatcher(gt)
    matched: list[dict] = []
    problems: list[str] = []
    unmatched = 0
    for index, entry in enumerate(results):
        reason = entry_problem(entry, need_score=True)
        if reason:
            problems.append(f"{entry_label(entry, index)}: {reason}")
            continue
        image_id, reason = matcher.resolve(entry)
        if reason:
            unmatched += 1
            problems.append(f"{entry_label(entry, index)}: {reason}")
            continue
        img = matcher.images[image_id]
        item = dict(entry, image_id=image_id)
        try:
            if "segmentation" in entry:
                rle = _as_rle(entry["segmentation"], int(img["height"]), int(img["width"]))
                item["segmentation"] = rle
                if "bbox" not in entry:
                    item["bbox"] = [float(v) for v in coco_mask.toBbox(rle)]
        except (ValueError, TypeError, KeyError) as exc:
            problems.append(f"{entry_label(entry, index)}: bad segmentation ({exc})")
            continue
        matched.append(item)
    if results and not matched and unmatched:
        gt_names = [img.get("file_name", img["id"]) for img in gt["images"]]
        result_names = [e.get("file_name", e.get("image_id")) for e in results if isinstance(e, dict)]
        raise EvalError(f"none of the {len(results)} results matches a ground-truth image: results name "
                        f"{_show(result_names)} while the ground truth has {_show(gt_names)}")
    return matched, problems, unmatched


def evaluate_coco(results: list, gt: dict, only_listed: bool = False) -> EvalReport:
    """CorLoc and class-agnostic COCO box (and mask, when every prediction has one) AP / AR."""
    matched, problems, unmatched = match_coco_results(results, gt)
    notes: list[str] = []
    image_ids = [img["id"] for img in gt["images"]]
    if only_listed:
        listed = {item["image_id"] for item in matched}
        if not listed:
            raise EvalError("--only-listed: no results entry matches a ground-truth image")
        image_ids = [i for i in image_ids if i in listed]
        notes.append(f"only the {len(image_ids)} images with predictions are evaluated")
    wanted = set(image_ids)

    boxes: dict[Hashable, list[list[float]]] = defaultdict(list)
    scores: dict[Hashable, list[float]] = defaultdict(list)
    for item in matched:
        boxes[item["image_id"]].append(item["bbox"])
        scores[item["image_id"]].append(float(item["score"]))
    gt_boxes: dict[Hashable, list] = {i: [] for i in image_ids}
    for ann in gt["annotations"]:
        if ann.get("image_id") in wanted and not ann.get("iscrowd", 0):
            gt_boxes[ann["image_id"]].append(ann["bbox"])
    try:
        loc = corloc({k: xywh_to_xyxy(v) for k, v in boxes.items()},
                     {k: xywh_to_xyxy(v) for k, v in gt_boxes.items()}, {k: np.asarray(v) for k, v in scores.items()})
    except ValueError as exc:
        raise EvalError(f"CorLoc: {exc}") from exc

    with_masks = sum(1 for item in matched if "segmentation" in item)
    iou_types = ["bbox"]
    if matched and with_masks == len(matched):
        iou_types.append("segm")
    elif with_masks:
        notes.append(f"mask metrics skipped: only {with_masks} of {len(matched)} predictions have a segmentation")
    else:
        notes.append("mask metrics skipped: the predictions have no segmentation")
    try:
        ap = coco_ap(gt, matched, iou_types=iou_types, image_ids=image_ids)
    except (ValueError, KeyError, TypeError) as exc:
        raise EvalError(f"COCO AP: {exc}") from exc

    metrics: dict[str, float] = {"corloc": loc["corloc"]}
    for prefix in ("box", "mask"):
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"):
            if f"{prefix}_{key}" in ap:
                metrics[f"{prefix}_{key}"] = ap[f"{prefix}_{key}"]
    metrics.update(
        n_images=ap["n_images"],
        n_images_with_predictions=ap["n_images_with_predictions"],
        n_predictions=ap["n_predictions"],
        corloc_n_images=loc["n_images"],
        corloc_n_hits=loc["n_hits"],
        n_images_without_gt_box=loc["n_without_gt"],
        n_results=len(results),
        n_bad_results=len(problems) - unmatched,
        n_unmatched_results=unmatched,
    )
    return EvalReport(metrics, problems, notes)


# -------------------------------------------------------------------------------------------- saliency mode
def _stem(name: Any) -> str | None:
    return PurePath(name.replace("\\", "/")).stem if isinstance(name, str) and name else None


def group_by_stem(results: list, known: set[str]) -> tuple[dict[str, list[tuple[int, dict]]], list[str], int]:
    """Usable entries per GT stem, the problems met, and how many entries named an unknown image."""
    groups: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    problems: list[str] = []
    unmatched = 0
    for index, entry in enumerate(results):
        reason = entry_problem(entry, need_score=False)
        if reason is None and "segmentation" not in entry:
            reason = "no 'segmentation' mask"
        if reason is None and "score" in entry and not _number(entry["score"]):
            reason = f"'score' must be a number, got {entry['score']!r}"
        stem = _stem(entry.get("file_name")) if isinstance(entry, dict) else None
        if reason is None and stem is None:
            reason = "no 'file_name' (saliency masks are matched by file name)"
        if reason:
            problems.append(f"{entry_label(entry, index)}: {reason}")
            continue
        if stem not in known:
            unmatched += 1
            problems.append(f"{entry_label(entry, index)}: no ground-truth mask {stem}.png")
            continue
        groups[stem].append((index, entry))
    if results and not groups and unmatched:
        names = [e.get("file_name") for e in results if isinstance(e, dict)]
        raise EvalError(f"none of the {len(results)} results matches a ground-truth mask: results name "
                        f"{_show(names)} while the masks are {_show(sorted(known))}")
    return groups, problems, unmatched


def predicted_mask(entries: list[tuple[int, dict]], shape: tuple[int, int], mode: str,
                   problems: list[str]) -> np.ndarray:
    """Union (or top-scoring) of an image's decodable predicted masks; empty when there is none."""
    if mode not in SALIENCY_MODES:
        raise ValueError(f"saliency mode must be one of {SALIENCY_MODES}, got {mode!r}")
    out = np.zeros(shape, dtype=bool)
    decoded: list[tuple[float, np.ndarray]] = []
    for index, entry in entries:
        try:
            decoded.append((float(entry.get("score", 0.0)), decode_segmentation(entry["segmentation"], *shape)))
        except (ValueError, TypeError, KeyError) as exc:
            problems.append(f"{entry_label(entry, index)}: bad segmentation ({exc})")
    if not decoded:
        return out
    if mode == "top":
        return max(decoded, key=lambda pair: pair[0])[1]
    for _, mask in decoded:
        out |= mask
    return out


def _saliency_metrics(acc: SaliencyAccumulator) -> dict[str, float]:
    if acc.count == 0:
        raise EvalError("no image could be scored")
    return acc.result()


def evaluate_saliency(results: list, masks_dir: Path, mode: str = "union", only_listed: bool = False) -> EvalReport:
    """Mean IoU / accuracy / maxFβ of the per-image union (or top) predicted mask against ``<stem>.png``."""
    gt_files = mask_files(masks_dir)
    if not gt_files:
        raise EvalError(f"{masks_dir}: no .png ground-truth masks in it")
    groups, problems, unmatched = group_by_stem(results, set(gt_files))
    stems = sorted(groups) if only_listed else sorted(gt_files)
    if only_listed and not stems:
        raise EvalError("--only-listed: no results entry matches a ground-truth mask")
    gt_failures = 0
    acc = SaliencyAccumulator()
    for stem in stems:
        try:
            gt = read_gray_png(gt_files[stem])
        except EvalError as exc:
            gt_failures += 1
            problems.append(f"{stem}: skipped, {exc}")
            continue
        pred = predicted_mask(groups.get(stem, []), gt.shape, mode, problems)
        acc.add(pred, gt, stem)
    metrics = _saliency_metrics(acc)
    metrics.update(
        n_images_with_predictions=sum(1 for s in stems if s in groups),
        n_results=len(results),
        n_bad_results=len(problems) - unmatched - gt_failures,
        n_unreadable_gt=gt_failures,
        n_unmatched_results=unmatched,
    )
    notes = [f"predicted masks per image: {mode}; binary masks, so maxFβ is the Fβ of the masks themselves"]
    if only_listed:
        notes.append(f"only the {len(stems)} images with predictions are evaluated")
    return EvalReport(metrics, problems, notes)


def evaluate_saliency_maps(maps_dir: Path, masks_dir: Path, only_listed: bool = False) -> EvalReport:
    """Predicted soft maps in a folder (``<stem>.png`` 8-bit or ``<stem>.npy``) against ``<stem>.png`` GT masks."""
    gt_files = mask_files(masks_dir)
    if not gt_files:
        raise EvalError(f"{masks_dir}: no .png ground-truth masks in it")
    pred_files = mask_files(maps_dir, MAP_SUFFIXES)
    shared = sorted(set(pred_files) & set(gt_files))
    if pred_files and not shared:
        raise EvalError(f"none of the {len(pred_files)} maps in {maps_dir} matches a ground-truth mask: maps are "
                        f"{_show(sorted(pred_files))} while the masks are {_show(sorted(gt_files))}")
    extra = sorted(set(pred_files) - set(gt_files))
    problems = [f"{pred_files[s].name}: no ground-truth mask {s}.png" for s in extra]
    stems = shared if only_listed else sorted(gt_files)
    if not stems:
        raise EvalError(f"{maps_dir}: no predicted maps in it")
    acc = SaliencyAccumulator()
    for stem in stems:
        try:
            gt = read_gray_png(gt_files[stem])
        except EvalError as exc:
            problems.append(f"{stem}: skipped, {exc}")
            continue
        if stem in pred_files:
            try:
                acc.add(read_predicted_map(pred_files[stem]), gt, stem)
                continue
            except (EvalError, ValueError) as exc:
                problems.append(f"{pred_files[stem].name}: scored as an empty map, {exc}")
        acc.add(np.zeros(gt.shape, dtype=bool), gt, stem)
    metrics = _saliency_metrics(acc)
    metrics.update(n_images_with_predictions=len(shared), n_results=len(pred_files),
                   n_unmatched_results=len(extra))
    return EvalReport(metrics, problems, ["predictions: soft maps from a folder"])


# ------------------------------------------------------------------------------------------------ output
def metrics_table(report: EvalReport, title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.metrics.items():
        if isinstance(value, int) or (isinstance(value, float) and key.startswith("n_")):
            text = str(int(value))
        elif key == "corloc":
            text = f"{value:.2f} %"
        else:
            text = f"{value:.4f}"
        table.add_row(key, text)
    return table


def print_report(report: EvalReport, title: str, console: Console, errors: Console) -> None:
    console.print(metrics_table(report, title))
    for note in report.notes:
        errors.print(f"[dim]note:[/dim] {note}", highlight=False, soft_wrap=True)
    if report.problems:
        errors.print(f"[yellow]{len(report.problems)} problem(s):[/yellow]", highlight=False)
        for line in report.problems[:MAX_PROBLEMS_SHOWN]:
            errors.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
        if len(report.problems) > MAX_PROBLEMS_SHOWN:
            errors.print(f"  ... and {len(report.problems) - MAX_PROBLEMS_SHOWN} more", highlight=False)


def run_eval(results_path: Path, coco_path: Path | None = None, masks_dir: Path | None = None,
             saliency_mode: str = "union", only_listed: bool = False) -> EvalReport:
    """The whole ``eval`` command as a function; raises EvalError when it cannot run."""
    if (coco_path is None) == (masks_dir is None):
        raise EvalError("give exactly one of --coco INSTANCES.json or --saliency-masks DIR")
    if coco_path is not None:
        if results_path.is_dir():
            raise EvalError(f"{results_path}: COCO mode needs a results JSON file, not a folder")
        return evaluate_coco(load_results(results_path), load_coco_gt(coco_path), only_listed)
    assert masks_dir is not None
    if results_path.is_dir():
        return evaluate_saliency_maps(results_path, masks_dir, only_listed)
    return evaluate_saliency(load_results(results_path), masks_dir, saliency_mode, only_listed)


@click.command("eval")
@click.argument("results", type=click.Path(exists=True, path_type=Path))
@click.option("--coco", "coco_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="COCO instances JSON: report CorLoc and class-agnostic box/mask AP, AP50, AR@100.")
@click.option("--saliency-masks", "masks_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of <stem>.png ground-truth masks: report IoU, pixel accuracy and maxFβ.")
@click.option("--saliency-mode", type=click.Choice(SALIENCY_MODES), default="union", show_default=True,
              help="Per image, score the union of all predicted masks or only the top-scoring one.")
@click.option("--only-listed", is_flag=True,
              help="Evaluate only the images that have predictions (default: every ground-truth image counts).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the metrics dict to this JSON file.")
def eval_command(results: Path, coco_path: Path | None, masks_dir: Path | None, saliency_mode: str,
                 only_listed: bool, json_out: Path | None) -> None:
    """Score RESULTS (the JSON list written by `autolabel discover`, or a folder of saliency maps)."""
    if (coco_path is None) == (masks_dir is None):
        raise click.UsageError("give exactly one of --coco INSTANCES.json or --saliency-masks DIR")
    try:
        report = run_eval(results, coco_path, masks_dir, saliency_mode, only_listed)
    except EvalError as exc:
        raise click.ClickException(str(exc)) from exc
    title = f"{results.name} vs {coco_path.name if coco_path else masks_dir.name}"
    print_report(report, title, Console(), Console(stderr=True))
    if json_out is not None:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report.metrics, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"{json_out}: cannot write the metrics ({exc})") from exc
