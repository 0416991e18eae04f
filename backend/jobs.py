"""Job records of the backend: START_TRAINING webhooks become 'train' jobs; GET /jobs and /jobs/{id} show jobs.

Only records live here (the store's ``jobs`` table); workers that run jobs (``autolabel prelabel``) claim them
with ``autolabel.store.repository.claim_next_job`` and report through ``update_job_progress`` / ``finish_job``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from autolabel.store import Store
from autolabel.store import repository as repo
from autolabel.store.models import JOB_STATUSES
from backend.errors import ClientError

TRAIN_JOB = "train"


def record_training_job(store: Store, ls_project: str | int | None, payload: dict[str, Any]) -> dict[str, Any]:
    """Queue a 'train' job for a START_TRAINING webhook; returns the job as JSON."""
    with store.write() as s:
        project = None
        if ls_project not in (None, ""):
            project = repo.get_project(s, ls_project) or repo.upsert_project(s, ls_project)
        params = {"ls_project": str(ls_project) if ls_project is not None else None,
                  "model_version": (payload.get("model_version") if isinstance(payload, dict) else None)}
        job = repo.create_job(s, TRAIN_JOB, params=params, project=project)
        return repo.job_to_dict(job)


def _query_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise ClientError(400, f"query parameter {name!r} must be a non-negative integer, got {raw!r}")
    return int(raw)


def list_jobs_response(store: Store, request: Request) -> JSONResponse:
    kind = request.query_params.get("kind")
    status = request.query_params.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise ClientError(400, f"unknown job status {status!r}; one of {', '.join(JOB_STATUSES)}")
    limit = min(_query_int(request, "limit", 100), 1000)
    with store.read() as s:
        jobs = [repo.job_to_dict(j) for j in repo.list_jobs(s, kind=kind, status=status, limit=limit)]
    return JSONResponse({"jobs": jobs})


def get_job_response(store: Store, job_id: str) -> JSONResponse:
    if not job_id.isdigit():
        raise ClientError(400, f"job id must be an integer, got {job_id!r}")
    with store.read() as s:
        job = repo.get_job(s, int(job_id))
        if job is None:
            raise ClientError(404, f"job {job_id} does not exist")
        return JSONResponse(repo.job_to_dict(job))
