"""Batch discovery over files and folders: the ``autolabel discover`` job.

Each image goes through the shared :class:`~autolabel.pipeline.Pipeline`; results are COCO results entries in the
original image's pixels. A bad file is reported with its reason and skipped; everything else is still written.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from autolabel.images import ImageLoadError, decode_image, iter_image_paths
from autolabel.overlays import save_overlay
from autolabel.pipeline import Pipeline

log = logging.getLogger("autolabel")


@dataclass
class DiscoverReport:
    results: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    processed: int = 0


def coco_image_ids(instances_json: str | Path) -> dict[str, int]:
    """file_name → image id from a COCO instances file (basename keys too)."""
    with open(instances_json) as f:
        data = json.load(f)
    ids: dict[str, int] = {}
    for img in data.get("images", []):
        ids[img["file_name"]] = img["id"]
        ids.setdefault(Path(img["file_name"]).name, img["id"])
    return ids


def display_name(path: Path, roots: list[Path]) -> str:
    """Path relative to the folder it was found in, else its base name."""
    for root in roots:
        if root.is_dir():
            try:
                return path.relative_to(root).as_posix()
            except ValueError:
                continue
    return path.name


def overlay_path(folder: str | Path, name: str) -> Path:
    """Overlay PNG for the image ``name``: the full name kept (a.jpg and a.png must not overwrite each other)."""
    return Path(folder) / (name.replace("/", "__") + ".png")


def write_json_atomic(path: str | Path, payload) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def discover_paths(paths: list[str | Path], pipeline: Pipeline, coco: str | Path | None = None,
                   overlays: str | Path | None = None, progress: bool = True) -> DiscoverReport:
    """Run ``pipeline`` over every image in ``paths``; bad files land in ``report.errors``."""
    roots = [Path(p) for p in paths]
    files = iter_image_paths(paths)
    ids = coco_image_ids(coco) if coco else None
    report = DiscoverReport()
    bar = tqdm(files, desc=f"discover ({pipeline.method.name})", unit="img", disable=not progress)
    for path in bar:
        name = display_name(path, roots)
        try:
            image, orig_size = decode_image(path, name=name)
            det = pipeline.run_array(image, orig_size)
        except ImageLoadError as exc:
            report.errors.append({"file_name": name, "error": exc.reason})
            tqdm.write(f"skipped {exc.item}: {exc.reason}")
            continue
        except Exception as exc:  # one broken image never stops the batch
            log.exception("discovery failed on %s", name)
            report.errors.append({"file_name": name, "error": f"{type(exc).__name__}: {exc}"})
            tqdm.write(f"skipped {name}: {type(exc).__name__}: {exc}")
            continue
        image_id = None
        if ids is not None:
            image_id = ids.get(name, ids.get(path.name))
            if image_id is None:
                tqdm.write(f"warning: {name} is not in {coco}; written without image_id")
        report.results.extend(det.to_coco(image_id=image_id, file_name=name))
        report.processed += 1
        if overlays:
            save_overlay(overlay_path(overlays, name), image, det)
    return report
