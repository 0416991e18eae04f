"""Tasks → Label Studio predictions, with the content-hash prediction cache.

For each task and each Image of the label config: resolve the image location; if that location was fetched
before and a prediction for its content and the current model version is cached, render it without
downloading anything; otherwise download, hash, look the hash up, and only for new content run the pipeline
(then cache it). Tasks are handled one after another, so memory holds one image at a time. A bad task
(missing field, 404, corrupt bytes...) gets an empty result and a logged reason; the others go on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from autolabel.detections import Detections
from autolabel.images import ImageLoadError
from autolabel.store import Store
from autolabel.store import repository as repo
from autolabel.store.codec import detections_from_json, detections_to_json, summary_score
from backend.fetch import FetchError, ImageFetcher, LabelStudioAccess
from backend.label_config import Control, LabelConfig
from backend.model import ModelHolder, ModelUnavailable

log = logging.getLogger("autolabel.backend")

#: Seconds a /predict call waits for the model to finish loading (Label Studio itself waits 100 s).
MODEL_WAIT_S = 90.0


class ModelFailure(RuntimeError):
    """The pipeline raised something unexpected on one image (a bug or an input it cannot handle)."""


@dataclass
class TaskPrediction:
    """The prediction of one task, plus how it was made (for logs, tests and the prelabel job)."""

    result: list[dict]
    score: float
    model_version: str
    errors: list[str] = field(default_factory=list)
    cached: bool = True
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The entry Label Studio expects in ``results``."""
        return {"result": self.result, "score": self.score, "model_version": self.model_version}


def regions_for(det: Detections, controls: list[Control]) -> list[dict]:
    """Label Studio regions of ``det`` for each control, with labels that exist in that control."""
    regions: list[dict] = []
    for control in controls:
        target = det
        if det.labels is not None and any(lab not in control.labels for lab in det.labels):
            target = det.subset(range(len(det)))
            target.labels = [lab if lab in control.labels else control.default_label for lab in det.labels]
        regions.extend(target.to_labelstudio([(control.kind, control.from_name, control.to_name)],
                                             label=control.default_label))
    return regions


class Predictor:
    """Predicts Label Studio tasks with the process's model, the store's cache and an image fetcher."""

    def __init__(self, store: Store, model: ModelHolder, fetcher: ImageFetcher,
                 model_wait_s: float = MODEL_WAIT_S) -> None:
        self.store = store
        self.model = model
        self.fetcher = fetcher
        self.model_wait_s = model_wait_s

    def predict_tasks(self, tasks: list[Any], config: LabelConfig, ls_project: str | None = None,
                      access: LabelStudioAccess | None = None) -> list[TaskPrediction]:
        """One TaskPrediction per task, in task order. Raises ModelUnavailable if the model cannot load."""
        version = self.model.get(self.model_wait_s).model_version
        access = access or LabelStudioAccess.from_env()
        return [self.predict_task(task, config, version, ls_project, access) for task in tasks]

    def predict_task(self, task: Any, config: LabelConfig, version: str, ls_project: str | None,
                     access: LabelStudioAccess) -> TaskPrediction:
        t0 = time.perf_counter()
        out = TaskPrediction(result=[], score=0.0, model_version=version)
        task_id = task.get("id") if isinstance(task, dict) else None
        name = f"task {task_id}" if task_id is not None else "task without id"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            out.errors.append(f"{name}: has no 'data' object")
        else:
            scores = []
            for image_obj, controls in config.targets():
                value = data.get(image_obj.data_key)
                if value is None:
                    out.errors.append(f"{name}: data has no field {image_obj.data_key!r} "
                                      f"(needed by <Image name={image_obj.name!r}>)")
                    continue
                try:
                    det, cached = self._detections(value, task_id, version, ls_project, access)
                except (FetchError, ImageLoadError) as exc:
                    out.errors.append(f"{name}: {exc}")
                    continue
                except ModelFailure as exc:
                    log.error("%s: the pipeline failed", name, exc_info=exc.__cause__)
                    out.errors.append(f"{name}: {exc}")
                    continue
                out.cached = out.cached and cached
                out.result.extend(regions_for(det, controls))
                scores.append(summary_score(det))
            out.score = round(sum(scores) / len(scores), 5) if scores and not out.errors else 0.0
        if out.errors:
            out.result, out.score = [], 0.0
            for err in out.errors:
                log.warning("prediction skipped: %s", err)
        out.seconds = time.perf_counter() - t0
        return out

    def _detections(self, value: Any, task_id: Any, version: str, ls_project: str | None,
                    access: LabelStudioAccess) -> tuple[Detections, bool]:
        """Detections for one image value, and whether they came from the cache."""
        task_num = task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None
        resolved = self.fetcher.resolve(value, task_num, access)
        if resolved.key is not None:
            with self.store.read() as s:
                image = repo.lookup_source(s, resolved.key)
                hit = repo.get_cached_prediction(s, image.sha256, version) if image is not None else None
                if hit is not None:
                    return detections_from_json(hit.regions), True
        data = self.fetcher.read(resolved, access)
        sha = hashlib.sha256(data).hexdigest()
        with self.store.read() as s:
            hit = repo.get_cached_prediction(s, sha, version)
            record = hit.regions if hit is not None else None
        if record is not None:
            if resolved.key is not None:
                with self.store.write() as s:
                    repo.remember_source(s, resolved.key, repo.get_or_create_image(s, sha, num_bytes=len(data)))
            return detections_from_json(record), True

        t0 = time.perf_counter()
        try:
            det = self.model.run(data, name=resolved.item, timeout=self.model_wait_s)
        except (ImageLoadError, ModelUnavailable):
            raise
        except Exception as exc:  # noqa: BLE001 - one image breaking the pipeline must not sink the batch
            raise ModelFailure(f"pipeline failed on {resolved.item} ({type(exc).__name__}: {exc})") from exc
        seconds = time.perf_counter() - t0
        record = detections_to_json(det)
        method = getattr(getattr(self.model.get(0), "method", None), "name", None)
        with self.store.write() as s:
            image = repo.get_or_create_image(s, sha, width=det.width, height=det.height, num_bytes=len(data))
            if resolved.key is not None:
                repo.remember_source(s, resolved.key, image)
            task_row = None
            if task_num is not None:
                project = repo.get_project(s, ls_project) if ls_project else None
                task_row = repo.upsert_task(s, project, task_num, source=str(value)[:2048], image=image)
            repo.put_prediction(s, image, version, record, score=summary_score(det), method=method,
                                task=task_row, seconds=seconds)
        return det, False
