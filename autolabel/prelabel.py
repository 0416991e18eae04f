"""``autolabel prelabel``: push predictions for every task of a Label Studio project through its REST API.

The job is resumable and idempotent. Label Studio is the source of truth for what is done: a task that already
has a prediction for the current model version is skipped (checked when the task list is read, and once more
right before each ``POST /api/predictions``), so a job that was killed and restarted — by hand or by the
backend's job runner — ends with exactly one prediction per task and model version. Detections come from the
backend's :class:`~backend.predictor.Predictor`, so they land in (and are served from) the same content-hash
cache as ``/predict``. Progress is recorded in the store's ``jobs`` table (kind ``prelabel``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from datetime import timezone
from typing import Any, Callable

import click

from autolabel.lsclient import LabelStudio, LabelStudioError
from autolabel.store import Store, open_store
from autolabel.store import repository as repo

log = logging.getLogger("autolabel.prelabel")

JOB_KIND = "prelabel"
#: Seconds to wait for the model to load before a job gives up.
MODEL_LOAD_TIMEOUT_S = 600.0
#: At most this many per-task error messages are kept in the job's result.
MAX_KEPT_ERRORS = 50


class PrelabelError(RuntimeError):
    """The job cannot run at all (bad parameters, project unreachable, unusable label config)."""


class JobStopped(Exception):
    """The job was asked to stop; it is left queued so the next runner resumes it."""


@dataclass
class PrelabelParams:
    """What a prelabel job needs; stored as the job's ``params`` (the token too, so a restart can resume)."""

    ls_url: str
    token: str
    project: int
    method: str | None = None
    backbone: str | None = None
    batch: int = 8
    max_size: int | None = None

    def __post_init__(self) -> None:
        if not str(self.ls_url).startswith(("http://", "https://")):
            raise PrelabelError(f"--ls-url {self.ls_url!r} must start with http:// or https://")
        if not self.token:
            raise PrelabelError("a Label Studio token is required (--token or LABEL_STUDIO_API_KEY)")
        if int(self.project) < 1:
            raise PrelabelError(f"--project must be a positive Label Studio project id, got {self.project}")
        if int(self.batch) < 1:
            raise PrelabelError(f"--batch must be at least 1, got {self.batch}")
        self.project, self.batch = int(self.project), int(self.batch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "PrelabelParams":
        data = dict(data or {})
        missing = [k for k in ("ls_url", "token", "project") if not data.get(k)]
        if missing:
            raise PrelabelError(f"prelabel job parameters lack {', '.join(missing)}")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def public(self) -> dict[str, Any]:
        """Parameters without the token (for logs and messages)."""
        out = self.to_dict()
        out["token"] = "***"
        return out


def enqueue_prelabel(store: Store, params: PrelabelParams) -> int:
    """Record a queued prelabel job (run by ``autolabel prelabel`` or the backend's job runner); its id."""
    with store.write() as s:
        project = repo.get_project(s, params.project)
        return repo.create_job(s, JOB_KIND, params=params.to_dict(), project=project).id


def build_predictor(store: Store, params: PrelabelParams):
    """A Predictor with its own model (method/backbone/max_size of the job) and image fetcher."""
    from autolabel.pipeline import DEFAULT_METHOD, Pipeline
    from backend.fetch import ImageFetcher
    from backend.model import ModelHolder
    from backend.predictor import Predictor

    def factory() -> Pipeline:
        return Pipeline(method=params.method or DEFAULT_METHOD, backbone=params.backbone or "auto",
                        max_size=params.max_size)

    holder = ModelHolder(factory)
    holder.start_loading()
    return Predictor(store, holder, ImageFetcher(), model_wait_s=MODEL_LOAD_TIMEOUT_S)


def _set_job(store: Store, job_id: int, **fields: Any) -> None:
    with store.write() as s:
        job = repo.get_job(s, job_id)
        if job is None:
            raise PrelabelError(f"job {job_id} does not exist")
        for name, value in fields.items():
            setattr(job, name, value)
        job.heartbeat_at = repo.utcnow()


def run_prelabel_job(job_id: int, *, store: Store | None = None, predictor: Any = None,
                     client: LabelStudio | None = None, stop: threading.Event | None = None,
                     show_progress: bool = False,
                     on_task: Callable[[int, str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) prelabel job ``job_id`` to the end; returns its result counts.

    Args:
        store: the store holding the job (default: :func:`open_store`).
        predictor: a ``backend.predictor.Predictor`` to use (the backend passes its own, sharing its model);
            built from the job's method/backbone when None.
        client: Label Studio client (built from the job's URL and token when None).
        stop: when set, the job stops between tasks and is put back to 'queued'.
        show_progress: draw a tqdm progress bar on stderr.
        on_task: called with (task id, 'posted' | 'skipped' | 'failed') after each task (tests, logging).

    The job ends 'done' (per-task failures are counted and listed in its result) or 'failed' when it cannot
    run at all; a stopped job goes back to 'queued'.
    """
    store = store or open_store()
    with store.read() as s:
        job = repo.get_job(s, job_id)
        if job is None:
            raise PrelabelError(f"job {job_id} does not exist")
        if job.kind != JOB_KIND:
            raise PrelabelError(f"job {job_id} is a {job.kind!r} job, not {JOB_KIND!r}")
        raw_params = job.params
        result: dict[str, Any] = dict(job.result or {})
        owner = job.worker if job.status == "running" else None
        beat = job.heartbeat_at or job.started_at or job.created_at
    if owner and owner != repo.worker_name():
        from autolabel.jobrunner import DEFAULT_STALE_AFTER_S, worker_is_dead

        age = (repo.utcnow() - (beat if beat.tzinfo else beat.replace(tzinfo=timezone.utc))).total_seconds()
        if not worker_is_dead(owner) and age < DEFAULT_STALE_AFTER_S:
            raise PrelabelError(f"job {job_id} is being run by worker {owner} (heartbeat {age:.0f} s ago); "
                                "not running it twice")
    try:
        params = PrelabelParams.from_dict(raw_params)
    except (PrelabelError, TypeError, ValueError) as exc:
        with store.write() as s:
            repo.fail_job(s, job_id, f"bad parameters: {exc}")
        raise PrelabelError(f"job {job_id}: bad parameters: {exc}") from None
    _set_job(store, job_id, status="running", worker=repo.worker_name(), started_at=repo.utcnow(),
             error=None, finished_at=None)
    own_client = client is None
    ls = client or LabelStudio(params.ls_url, params.token)
    try:
        counts = _run(job_id, params, store, predictor, ls, stop, show_progress, on_task, result)
    except JobStopped:
        _set_job(store, job_id, status="queued", worker=None, message="stopped; will resume")
        log.info("prelabel job %d stopped, left queued", job_id)
        return {"status": "queued"}
    except Exception as exc:  # noqa: BLE001 - recorded on the job, then re-raised for the caller
        with store.write() as s:
            repo.fail_job(s, job_id, f"{type(exc).__name__}: {exc}")
        log.error("prelabel job %d failed: %s", job_id, exc)
        raise
    finally:
        if own_client:
            ls.close()
    message = (f"{counts['posted']} predicted, {counts['skipped']} already had model version "
               f"{counts['model_version']}, {counts['failed']} failed")
    with store.write() as s:
        repo.finish_job(s, job_id, result=counts, message=message)
    log.info("prelabel job %d done: %s", job_id, message)
    return counts


def _run(job_id: int, params: PrelabelParams, store: Store, predictor: Any, ls: LabelStudio,
         stop: threading.Event | None, show_progress: bool, on_task: Callable[[int, str], None] | None,
         previous: dict[str, Any]) -> dict[str, Any]:
    from backend.fetch import LabelStudioAccess
    from backend.label_config import LabelConfigError, parse_label_config

    try:
        project = ls.get_project(params.project)
    except LabelStudioError as exc:
        raise PrelabelError(f"cannot read Label Studio project {params.project}: {exc}") from None
    try:
        config = parse_label_config(project.get("label_config") or "")
    except LabelConfigError as exc:
        raise PrelabelError(f"project {params.project}: {exc}") from None
    if predictor is None:
        predictor = build_predictor(store, params)
    version = predictor.model.get(MODEL_LOAD_TIMEOUT_S).model_version
    access = LabelStudioAccess(params.ls_url.rstrip("/"), params.token)
    ls_project = str(params.project)

    todo: list[dict] = []
    total = skipped = 0
    for task, versions in ls.iter_task_versions(params.project):
        total += 1
        if version in versions:
            skipped += 1
        else:
            todo.append(task)
    counts: dict[str, Any] = {"model_version": version, "total": total, "posted": 0, "skipped": skipped,
                              "failed": 0, "errors": [], "resumed": bool(previous)}
    _set_job(store, job_id, total=total, done=skipped, progress=(skipped / total) if total else 1.0,
             message=f"{len(todo)} of {total} tasks to predict with {version}")
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=skipped, unit="task", desc=f"prelabel project {params.project}")
    try:
        for start in range(0, len(todo), params.batch):
            if stop is not None and stop.is_set():
                raise JobStopped()
            batch = todo[start:start + params.batch]
            preds = predictor.predict_tasks(batch, config, ls_project, access)
            for task, pred in zip(batch, preds, strict=True):
                state = _push(ls, task, pred, version, counts)
                if on_task is not None:
                    on_task(int(task["id"]), state)
                if bar is not None:
                    bar.update(1)
            done = counts["posted"] + counts["skipped"] + counts["failed"]
            with store.write() as s:
                repo.update_job_progress(s, job_id, done=done, total=total,
                                         message=f"{done}/{total} tasks ({counts['failed']} failed)")
                job = repo.get_job(s, job_id)
                if job is not None:
                    job.result = {k: v for k, v in counts.items()}
    finally:
        if bar is not None:
            bar.close()
    return counts


def _push(ls: LabelStudio, task: dict, pred: Any, version: str, counts: dict[str, Any]) -> str:
    """POST one task's prediction unless it is bad or Label Studio has one for ``version`` by now."""
    task_id = int(task["id"])
    if pred.errors:
        counts["failed"] += 1
        if len(counts["errors"]) < MAX_KEPT_ERRORS:
            counts["errors"].extend(pred.errors[: MAX_KEPT_ERRORS - len(counts["errors"])])
        return "failed"
    try:
        existing = ls.list_predictions(task=task_id)
        if any(p.get("model_version") == version for p in existing):
            counts["skipped"] += 1
            return "skipped"
        ls.create_prediction(task_id, pred.result, score=pred.score, model_version=version)
    except LabelStudioError as exc:
        counts["failed"] += 1
        if len(counts["errors"]) < MAX_KEPT_ERRORS:
            counts["errors"].append(f"task {task_id}: {exc}")
        return "failed"
    counts["posted"] += 1
    return "posted"


# ------------------------------------------------------------------------------------------------------ CLI
def _follow(store: Store, job_id: int, poll_s: float = 1.0) -> dict[str, Any]:
    """Show a queued job's progress (run by the backend) until it finishes."""
    from tqdm import tqdm

    bar = tqdm(unit="task", desc=f"prelabel job {job_id}")
    try:
        while True:
            with store.read() as s:
                job = repo.get_job(s, job_id)
                info = repo.job_to_dict(job) if job is not None else None
            if info is None:
                raise click.ClickException(f"job {job_id} disappeared from the store")
            if info["total"] is not None and bar.total != info["total"]:
                bar.total = info["total"]
            bar.n = info["done"] or 0
            bar.set_postfix_str(info["status"])
            bar.refresh()
            if info["status"] in ("done", "failed", "cancelled"):
                return info
            time.sleep(poll_s)
    finally:
        bar.close()


@click.command("prelabel")
@click.option("--ls-url", envvar="LABEL_STUDIO_URL", required=True,
              help="Label Studio URL (env LABEL_STUDIO_URL).")
@click.option("--token", envvar="LABEL_STUDIO_API_KEY", required=True,
              help="Label Studio legacy API token or personal access token (env LABEL_STUDIO_API_KEY).")
@click.option("--project", type=int, required=True, help="Label Studio project id.")
@click.option("--method", default=None, help="Discovery method (default: the pipeline's default).")
@click.option("--backbone", default=None, help="Backbone registry name or checkpoint (default: auto).")
@click.option("--batch", type=int, default=8, show_default=True, help="Tasks predicted between progress saves.")
@click.option("--max-size", type=int, default=None, help="Long side the network sees (default 448).")
@click.option("--db", "db_url", default=None, help="Store URL (default: env AUTOLABEL_DB_URL or the user file).")
@click.option("--queue", "queue_only", is_flag=True,
              help="Only queue the job for a running backend (`autolabel serve`) and exit.")
@click.option("--wait", is_flag=True, help="With --queue: follow the job's progress until it ends.")
@click.option("--job", "job_id", type=int, default=None, help="Resume this existing job instead of a new one.")
def prelabel_command(ls_url: str, token: str, project: int, method: str | None, backbone: str | None, batch: int,
                     max_size: int | None, db_url: str | None, queue_only: bool, wait: bool,
                     job_id: int | None) -> None:
    """Pre-label every task of a Label Studio project (resumable; tasks with a prediction are skipped)."""
    try:
        params = PrelabelParams(ls_url, token, project, method=method, backbone=backbone, batch=batch,
                                max_size=max_size)
    except PrelabelError as exc:
        raise click.BadParameter(str(exc)) from None
    store = open_store(db_url)
    if job_id is None:
        job_id = enqueue_prelabel(store, params)
        click.echo(f"prelabel job {job_id} queued", err=True)
    if queue_only:
        click.echo(str(job_id))
        if wait:
            info = _follow(store, job_id)
            click.echo(f"job {job_id}: {info['status']} {info.get('message') or info.get('error') or ''}")
            if info["status"] != "done":
                raise SystemExit(1)
        return
    try:
        counts = run_prelabel_job(job_id, store=store, show_progress=True)
    except PrelabelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"job {job_id}: {counts['posted']} predicted, {counts['skipped']} skipped (model version "
               f"{counts['model_version']}), {counts['failed']} failed")
    for err in counts["errors"][:10]:
        click.echo(f"  {err}", err=True)
    if counts["failed"]:
        raise SystemExit(2 if counts["posted"] or counts["skipped"] else 1)


if __name__ == "__main__":  # pragma: no cover - `python -m autolabel.prelabel`
    prelabel_command()
