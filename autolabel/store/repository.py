"""Repository functions over the store tables: each takes a Session from ``Store.read()`` / ``Store.write()``.

Functions that insert are race-safe across processes: a row another process created meanwhile is found
and reused (unique keys + savepoints), never duplicated.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from autolabel.store.models import (
    Annotation, AnnotationEvent, Image, ImageSource, Job, ModelVersion, Prediction, Project, Task, utcnow,
)

T = TypeVar("T")

ANNOTATION_ACTIONS = {"ANNOTATION_CREATED": "created", "ANNOTATION_UPDATED": "updated",
                      "ANNOTATION_DELETED": "deleted"}


def _get_or_insert(session: Session, find: Callable[[], T | None], make: Callable[[], T]) -> T:
    """Return ``find()`` or insert ``make()``; if a concurrent insert wins the unique key, return theirs."""
    found = find()
    if found is not None:
        return found
    try:
        with session.begin_nested():
            obj = make()
            session.add(obj)
        return obj
    except IntegrityError:
        found = find()
        if found is None:
            raise
        return found


def parse_ls_project(ls_project: str | int | None) -> int | None:
    """Label Studio's numeric project id from its "<id>.<created_ts>" string (None if it has none)."""
    if ls_project is None:
        return None
    head = str(ls_project).split(".", 1)[0].strip()
    return int(head) if head.isdigit() else None


# ------------------------------------------------------------------------------------------------ projects
def get_project(session: Session, ls_project: str | int) -> Project | None:
    """The project stored under exactly ``ls_project``, else the latest one with the same numeric LS id."""
    key = str(ls_project)
    found = session.scalar(select(Project).where(Project.ls_project == key))
    if found is not None:
        return found
    num = parse_ls_project(key)
    if num is None:
        return None
    return session.scalar(select(Project).where(Project.ls_project_id == num)
                          .order_by(Project.updated_at.desc(), Project.id.desc()).limit(1))


def upsert_project(session: Session, ls_project: str | int, *, label_config: str | None = None,
                   hostname: str | None = None, access_token: str | None = None, method: str | None = None,
                   backbone: str | None = None) -> Project:
    """Create or update a project; fields passed as None keep their stored value."""
    key = str(ls_project)
    project = _get_or_insert(
        session, lambda: session.scalar(select(Project).where(Project.ls_project == key)),
        lambda: Project(ls_project=key, ls_project_id=parse_ls_project(key)))
    for name, value in (("label_config", label_config), ("hostname", hostname), ("access_token", access_token),
                        ("method", method), ("backbone", backbone)):
        if value is not None and getattr(project, name) != value:
            setattr(project, name, value)
    session.flush()
    return project


# ------------------------------------------------------------------------------------------ images, tasks
def get_image(session: Session, sha256: str) -> Image | None:
    return session.scalar(select(Image).where(Image.sha256 == sha256))


def get_or_create_image(session: Session, sha256: str, *, width: int | None = None, height: int | None = None,
                        num_bytes: int | None = None) -> Image:
    """The image row of this content hash; missing width/height/size are filled in when given."""
    image = _get_or_insert(session, lambda: get_image(session, sha256),
                           lambda: Image(sha256=sha256, width=width, height=height, num_bytes=num_bytes))
    if width is not None and image.width is None:
        image.width, image.height = width, height
    if num_bytes is not None and image.num_bytes is None:
        image.num_bytes = num_bytes
    session.flush()
    return image


def lookup_source(session: Session, source: str) -> Image | None:
    """The image content last fetched from ``source`` (an absolute URL or file path), if any."""
    row = session.scalar(select(ImageSource).where(ImageSource.source == source))
    return row.image if row is not None else None


def remember_source(session: Session, source: str, image: Image) -> ImageSource:
    """Record that ``source`` served ``image`` (replacing what it served before)."""
    row = _get_or_insert(session, lambda: session.scalar(select(ImageSource).where(ImageSource.source == source)),
                         lambda: ImageSource(source=source, image_id=image.id))
    if row.image_id != image.id:
        row.image_id = image.id
    row.fetched_at = utcnow()
    session.flush()
    return row


def upsert_task(session: Session, project: Project | None, ls_task_id: int | None, *, source: str | None = None,
                image: Image | None = None) -> Task:
    """Create or update the task ``ls_task_id`` of ``project`` (source and image kept when passed as None)."""
    project_id = project.id if project is not None else None

    def find() -> Task | None:
        if ls_task_id is None:
            return None
        return session.scalar(select(Task).where(Task.project_id.is_(project_id) if project_id is None
                                                 else Task.project_id == project_id,
                                                 Task.ls_task_id == ls_task_id).limit(1))

    task = _get_or_insert(session, find, lambda: Task(project_id=project_id, ls_task_id=ls_task_id))
    if source is not None:
        task.source = source
    if image is not None:
        task.image_id = image.id
    session.flush()
    return task


# ----------------------------------------------------------------------------------------------- predictions
def get_cached_prediction(session: Session, sha256: str, model_version: str) -> Prediction | None:
    """The cached prediction for this image content and model version, if any."""
    return session.scalar(select(Prediction).join(Image, Prediction.image_id == Image.id)
                          .where(Image.sha256 == sha256, Prediction.model_version == model_version))


def put_prediction(session: Session, image: Image, model_version: str, regions: dict[str, Any], *,
                   score: float = 0.0, method: str | None = None, task: Task | None = None,
                   seconds: float | None = None) -> Prediction:
    """Cache a prediction; if one exists for (image, model_version) it is kept and returned (first wins)."""
    def find() -> Prediction | None:
        return session.scalar(select(Prediction).where(Prediction.image_id == image.id,
                                                       Prediction.model_version == model_version))

    return _get_or_insert(session, find, lambda: Prediction(
        image_id=image.id, model_version=model_version, regions=regions, score=float(score), method=method,
        task_id=task.id if task is not None else None, seconds=seconds))


def count_predictions(session: Session, model_version: str | None = None) -> int:
    from sqlalchemy import func

    query = select(func.count(Prediction.id))
    if model_version is not None:
        query = query.where(Prediction.model_version == model_version)
    return int(session.scalar(query) or 0)


# ----------------------------------------------------------------------------------------------- annotations
def record_annotation_event(session: Session, action: str, annotation: dict[str, Any], *,
                            task: dict[str, Any] | None = None, ls_project: str | int | None = None,
                            payload: dict[str, Any] | None = None) -> AnnotationEvent:
    """Apply one ANNOTATION_CREATED/UPDATED/DELETED webhook: update the annotation's state, append an event.

    Events arriving out of order (an update before its create) still produce one annotation row.
    Raises ValueError for an unknown action or an annotation without an integer ``id``.
    """
    state = ANNOTATION_ACTIONS.get(action)
    if state is None:
        raise ValueError(f"unknown annotation action {action!r}")
    ann_id = annotation.get("id") if isinstance(annotation, dict) else None
    if not isinstance(ann_id, int) or isinstance(ann_id, bool):
        raise ValueError("annotation has no integer 'id'")
    ls_task_id = (task or {}).get("id") if isinstance(task, dict) else None
    if ls_task_id is None:
        raw = annotation.get("task")
        ls_task_id = raw.get("id") if isinstance(raw, dict) else raw
    ls_task_id = ls_task_id if isinstance(ls_task_id, int) else None
    project = None
    if ls_project not in (None, ""):
        project = get_project(session, ls_project) or upsert_project(session, ls_project)
    task_row = upsert_task(session, project, ls_task_id) if ls_task_id is not None else None
    result = annotation.get("result")

    row = _get_or_insert(
        session, lambda: session.scalar(select(Annotation).where(Annotation.ls_annotation_id == ann_id)),
        lambda: Annotation(ls_annotation_id=ann_id, state=state))
    now = utcnow()
    row.state = state
    if project is not None:
        row.project_id = project.id
    if task_row is not None:
        row.task_id, row.ls_task_id = task_row.id, ls_task_id
    if state == "deleted":
        row.deleted_at = now
    else:
        row.result = result
        row.deleted_at = None
    row.updated_at = now
    event = AnnotationEvent(annotation_id=row.id, action=action, result=result, payload=payload, received_at=now)
    session.add(event)
    session.flush()
    return event


def get_annotation(session: Session, ls_annotation_id: int) -> Annotation | None:
    return session.scalar(select(Annotation).where(Annotation.ls_annotation_id == ls_annotation_id))


def list_annotations(session: Session, ls_project: str | int | None = None,
                     include_deleted: bool = False) -> list[Annotation]:
    """Current annotations (optionally of one project), oldest first."""
    query = select(Annotation).order_by(Annotation.id)
    if ls_project is not None:
        project = get_project(session, ls_project)
        if project is None:
            return []
        query = query.where(Annotation.project_id == project.id)
    if not include_deleted:
        query = query.where(Annotation.state != "deleted")
    return list(session.scalars(query))


# -------------------------------------------------------------------------------------------- model versions
def ensure_model_version(session: Session, name: str, *, backbone: str | None = None, method: str | None = None,
                         detector_checkpoint: str | None = None,
                         metrics: dict[str, Any] | None = None) -> ModelVersion:
    """The model version ``name`` (created on first use); given fields update the stored ones."""
    row = _get_or_insert(session, lambda: session.scalar(select(ModelVersion).where(ModelVersion.name == name)),
                         lambda: ModelVersion(name=name))
    for field, value in (("backbone", backbone), ("method", method),
                         ("detector_checkpoint", detector_checkpoint), ("metrics", metrics)):
        if value is not None and getattr(row, field) != value:
            setattr(row, field, value)
    session.flush()
    return row


def list_model_versions(session: Session) -> list[ModelVersion]:
    """All model versions, oldest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def latest_model_version(session: Session, *, backbone: str | None = None,
                         method: str | None = None) -> ModelVersion | None:
    """The newest model version, optionally with the given backbone/method."""
    query = select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1)
    if backbone is not None:
        query = query.where(ModelVersion.backbone == backbone)
    if method is not None:
        query = query.where(ModelVersion.method == method)
    return session.scalar(query)


# ------------------------------------------------------------------------------------------------------ jobs
def worker_name() -> str:
    """"host:pid" naming this process as a job worker."""
    return f"{socket.gethostname()}:{os.getpid()}"


def create_job(session: Session, kind: str, *, params: dict[str, Any] | None = None,
               project: Project | None = None, total: int | None = None) -> Job:
    """A new job in status 'queued'."""
    job = Job(kind=kind, status="queued", params=params, project_id=project.id if project else None,
              total=total, progress=0.0, done=0)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(session: Session, *, kind: str | None = None, status: str | None = None,
              limit: int = 100) -> list[Job]:
    """Jobs, newest first."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if status is not None:
        query = query.where(Job.status == status)
    return list(session.scalars(query))


def claim_next_job(session: Session, kind: str, worker: str | None = None) -> Job | None:
    """Atomically move the oldest queued job of ``kind`` to 'running' for ``worker``; None if none is queued.

    Safe with several processes: the UPDATE only succeeds if the job is still queued.
    """
    worker = worker or worker_name()
    while True:
        job_id = session.scalar(select(Job.id).where(Job.kind == kind, Job.status == "queued")
                                .order_by(Job.id).limit(1))
        if job_id is None:
            return None
        now = utcnow()
        claimed = session.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                                  .values(status="running", worker=worker, started_at=now, heartbeat_at=now))
        if claimed.rowcount == 1:
            job = session.get(Job, job_id)
            session.refresh(job)
            return job


def _job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise KeyError(f"job {job_id} does not exist")
    return job


def start_job(session: Session, job_id: int, worker: str | None = None) -> Job:
    job = _job(session, job_id)
    now = utcnow()
    job.status, job.worker, job.started_at, job.heartbeat_at = "running", worker or worker_name(), now, now
    session.flush()
    return job


def update_job_progress(session: Session, job_id: int, *, done: int | None = None, total: int | None = None,
                        progress: float | None = None, message: str | None = None) -> Job:
    """Record progress (``progress`` defaults to done/total) and refresh the heartbeat."""
    job = _job(session, job_id)
    if total is not None:
        job.total = total
    if done is not None:
        job.done = done
    if progress is None and job.total:
        progress = job.done / job.total
    if progress is not None:
        job.progress = max(0.0, min(1.0, float(progress)))
    if message is not None:
        job.message = message
    job.heartbeat_at = utcnow()
    session.flush()
    return job


def finish_job(session: Session, job_id: int, result: dict[str, Any] | None = None,
               message: str | None = None) -> Job:
    job = _job(session, job_id)
    job.status, job.progress, job.finished_at = "done", 1.0, utcnow()
    if result is not None:
        job.result = result
    if message is not None:
        job.message = message
    session.flush()
    return job


def fail_job(session: Session, job_id: int, error: str) -> Job:
    job = _job(session, job_id)
    job.status, job.error, job.finished_at = "failed", error, utcnow()
    session.flush()
    return job


def cancel_job(session: Session, job_id: int) -> Job:
    job = _job(session, job_id)
    if job.status in ("queued", "running"):
        job.status, job.finished_at = "cancelled", utcnow()
    session.flush()
    return job


def requeue_stale_jobs(session: Session, stale_after_s: float, kind: str | None = None) -> list[int]:
    """Put 'running' jobs whose heartbeat is older than ``stale_after_s`` back to 'queued' (a dead worker's)."""
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=stale_after_s)
    query = select(Job).where(Job.status == "running")
    if kind is not None:
        query = query.where(Job.kind == kind)
    ids = []
    for job in session.scalars(query):
        beat = job.heartbeat_at or job.started_at or job.created_at
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=timezone.utc)
        if beat < cutoff:
            job.status, job.worker = "queued", None
            job.message = f"requeued: no heartbeat for more than {stale_after_s:g} s"
            ids.append(job.id)
    session.flush()
    return ids


def job_to_dict(job: Job) -> dict[str, Any]:
    """JSON view of a job (times as ISO 8601 UTC)."""
    def iso(t: datetime | None) -> str | None:
        if t is None:
            return None
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).isoformat()

    return {"id": job.id, "kind": job.kind, "status": job.status, "project_id": job.project_id,
            "params": job.params, "progress": job.progress, "done": job.done, "total": job.total,
            "message": job.message, "error": job.error, "result": job.result, "worker": job.worker,
            "created_at": iso(job.created_at), "started_at": iso(job.started_at),
            "heartbeat_at": iso(job.heartbeat_at), "finished_at": iso(job.finished_at)}
