"""Label Studio ML-backend protocol endpoints: /health, /setup, /predict, /webhook, /metrics, /versions, /jobs.

Client mistakes answer 4xx with ``{"error": ...}``; blocking work (store, downloads, the model) runs in
worker threads so /health stays fast while predictions run.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse

from autolabel.store import repository as repo
from backend import jobs
from backend.errors import ClientError
from backend.fetch import LabelStudioAccess
from backend.label_config import LabelConfig, LabelConfigError, parse_label_config
from backend.model import ModelUnavailable
from backend.state import BackendState

log = logging.getLogger("autolabel.backend")

#: /setup must answer within 3 s (Label Studio's timeout); wait at most this long for a loading model.
SETUP_MODEL_WAIT_S = 2.0
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Label Studio's bulk annotation events → (the per-annotation action stored for each item, the items' key).
BULK_ANNOTATION_ACTIONS = {"ANNOTATIONS_DELETED": ("ANNOTATION_DELETED", "annotations"),
                           "ANNOTATIONS_CREATED": ("ANNOTATION_CREATED", "annotation")}


def state_of(request: Request) -> BackendState:
    return request.app.state.backend


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; ClientError 400/413 on a missing, oversized or malformed body."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ClientError(413, f"request body too large ({declared} bytes, limit {MAX_BODY_BYTES})")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ClientError(413, f"request body too large ({len(raw)} bytes, limit {MAX_BODY_BYTES})")
    if not raw.strip():
        raise ClientError(400, "request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError(400, f"request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ClientError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _config(xml: Any, where: str) -> LabelConfig:
    if not isinstance(xml, str):
        raise ClientError(400, f"{where} must be a string with the label config XML")
    try:
        return parse_label_config(xml)
    except LabelConfigError as exc:
        raise ClientError(422, f"label config cannot be served: {exc}") from None


def _project_key(body: dict[str, Any], required: bool) -> str | None:
    project = body.get("project")
    if project is None or project == "":
        if required:
            raise ClientError(400, "field 'project' is missing")
        return None
    if isinstance(project, dict):
        project = project.get("id")
    if not isinstance(project, (str, int)) or isinstance(project, bool):
        raise ClientError(400, f"field 'project' must be a string like '<id>.<timestamp>', got {project!r}")
    return str(project)


# ----------------------------------------------------------------------------------------------- endpoints
async def health(request: Request) -> JSONResponse:
    st = state_of(request)
    body: dict[str, Any] = {"status": "UP", "model_class": st.model_class, "model_state": st.model.state}
    if st.model.model_version:
        body["model_version"] = st.model.model_version
    if st.model.error:
        body["model_error"] = st.model.error
    return JSONResponse(body)


def _current_version(st: BackendState) -> str:
    """The loaded model's version; while loading, the last recorded version for the configured settings."""
    if st.model.wait(SETUP_MODEL_WAIT_S):
        return st.model.model_version or ""
    method, backbone = st.settings.get("method"), st.settings.get("backbone")
    with st.store.read() as s:
        row = repo.latest_model_version(s, method=method,
                                        backbone=None if backbone in (None, "auto") else backbone)
        if row is not None:
            return row.name
    return f"autolabel-{method or 'model'}-loading"


async def setup(request: Request) -> JSONResponse:
    st = state_of(request)
    body = await json_body(request)
    ls_project = _project_key(body, required=True)
    schema = body.get("schema")
    hostname = body.get("hostname") if isinstance(body.get("hostname"), str) else None
    token = body.get("access_token") if isinstance(body.get("access_token"), str) else None

    def work() -> tuple[str, LabelStudioAccess]:
        with st.store.write() as s:
            if schema is None:
                project = repo.get_project(s, ls_project)
                if project is None or not project.label_config:
                    raise ClientError(400, f"field 'schema' is missing and project {ls_project!r} is unknown")
                _config(project.label_config, "stored label config")
            else:
                _config(schema, "field 'schema'")
            row = repo.upsert_project(s, ls_project, label_config=schema, hostname=hostname or None,
                                      access_token=token or None, method=st.settings.get("method"),
                                      backbone=st.settings.get("backbone"))
            access = LabelStudioAccess.from_env(hostname=row.hostname, access_token=row.access_token)
        return _current_version(st), access

    version, access = await to_thread.run_sync(work)
    _fix_webhook_auth(request, st, ls_project, access)
    return JSONResponse({"model_version": version})


def _fix_webhook_auth(request: Request, st: BackendState, ls_project: str, access: LabelStudioAccess) -> None:
    """With basic auth on, have Label Studio's webhook for this project send the credentials (in background)."""
    project_id = repo.parse_ls_project(ls_project)
    if st.webhook_auth is None or project_id is None or not access.url or not access.token:
        return
    hosts = [request.headers.get("host", "")]
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded:
        hosts.append(forwarded.split(",")[0].strip())
    path = request.scope.get("root_path", "").rstrip("/") + "/webhook"
    try:
        st.webhook_auth.schedule(access.url, access.token, project_id, [h for h in hosts if h], path)
    except RuntimeError as exc:  # e.g. no thread can be started at shutdown
        log.warning("cannot check Label Studio's webhook of project %s: %s", ls_project, exc)


async def predict(request: Request) -> JSONResponse:
    st = state_of(request)
    body = await json_body(request)
    tasks = body.get("tasks")
    if tasks is None:
        raise ClientError(400, "field 'tasks' is missing")
    if not isinstance(tasks, list) or not tasks:
        raise ClientError(400, "field 'tasks' must be a non-empty list of tasks")
    ls_project = _project_key(body, required=False)
    xml = body.get("label_config")

    def work() -> list[dict]:
        hostname = token = None
        stored = None
        if ls_project is not None:
            with st.store.read() as s:
                project = repo.get_project(s, ls_project)
                if project is not None:
                    stored, hostname, token = project.label_config, project.hostname, project.access_token
        if xml is not None:
            config = _config(xml, "field 'label_config'")
            if ls_project is not None and xml != stored:
                with st.store.write() as s:
                    repo.upsert_project(s, ls_project, label_config=xml)
        elif stored:
            config = _config(stored, f"stored label config of project {ls_project!r}")
        elif ls_project is None:
            raise ClientError(400, "no 'label_config' and no 'project': cannot tell what to predict")
        else:
            raise ClientError(404, f"unknown project {ls_project!r} and no 'label_config' given: "
                                   "connect the backend to the project (/setup) or send label_config")
        access = LabelStudioAccess.from_env(hostname=hostname, access_token=token)
        try:
            predictions = st.predictor.predict_tasks(tasks, config, ls_project, access)
        except ModelUnavailable as exc:
            raise ClientError(503, str(exc), {"Retry-After": "5"} if exc.loading else None) from None
        return [p.to_json() for p in predictions]

    results = await to_thread.run_sync(work)
    return JSONResponse({"results": results})


async def webhook(request: Request) -> JSONResponse:
    st = state_of(request)
    body = await json_body(request)
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise ClientError(400, "field 'action' is missing")
    project = body.get("project")
    ls_project = project.get("id") if isinstance(project, dict) else project
    if action in repo.ANNOTATION_ACTIONS:
        annotation = body.get("annotation")
        if not isinstance(annotation, dict):
            raise ClientError(400, f"{action} event has no 'annotation' object")
        task = body.get("task") if isinstance(body.get("task"), dict) else None

        def record() -> int:
            with st.store.write() as s:
                try:
                    event = repo.record_annotation_event(s, action, annotation, task=task, ls_project=ls_project,
                                                         payload=body)
                except ValueError as exc:
                    raise ClientError(400, f"{action} event: {exc}") from None
                return event.id

        event_id = await to_thread.run_sync(record)
        return JSONResponse({"status": "ok", "event_id": event_id}, status_code=201)
    if action in BULK_ANNOTATION_ACTIONS:
        return await _record_bulk(st, action, body, ls_project)
    if action == "START_TRAINING":
        job = await to_thread.run_sync(jobs.record_training_job, st.store, ls_project, body)
        return JSONResponse({"status": "ok", "job_id": job["id"]}, status_code=201)
    return JSONResponse({"status": "Unknown event"}, status_code=200)


async def _record_bulk(st: BackendState, action: str, body: dict[str, Any], ls_project: Any) -> JSONResponse:
    """ANNOTATIONS_DELETED ``{"annotations": [{"id": N}, ...]}`` / ANNOTATIONS_CREATED ``{"annotation": [...]}``.

    Each item is stored as one ANNOTATION_DELETED / ANNOTATION_CREATED event (its payload keeps the original
    action, the item and the project id); a bad item is reported and the others are still stored.
    """
    single, key = BULK_ANNOTATION_ACTIONS[action]
    items = body.get(key)
    if not isinstance(items, list) or not items:
        raise ClientError(400, f"{action} event has no non-empty '{key}' list")
    project = body.get("project")
    project_ref = {"id": project.get("id")} if isinstance(project, dict) else project

    def record() -> tuple[list[int], list[str]]:
        event_ids: list[int] = []
        errors: list[str] = []
        with st.store.write() as s:
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    errors.append(f"{key}[{i}]: not an object")
                    continue
                payload = {"action": action, key: [item], "project": project_ref}
                try:
                    event = repo.record_annotation_event(s, single, item, ls_project=ls_project, payload=payload)
                except ValueError as exc:
                    errors.append(f"{key}[{i}]: {exc}")
                    continue
                event_ids.append(event.id)
        return event_ids, errors

    event_ids, errors = await to_thread.run_sync(record)
    if not event_ids:
        raise ClientError(400, f"{action} event: nothing stored; " + "; ".join(errors))
    if errors:
        log.warning("%s event: %d of %d items skipped: %s", action, len(errors), len(items), "; ".join(errors))
    return JSONResponse({"status": "ok", "event_ids": event_ids, "errors": errors}, status_code=201)


async def metrics(request: Request) -> JSONResponse:
    return JSONResponse({})


async def versions(request: Request) -> JSONResponse:
    st = state_of(request)

    def names() -> list[str]:
        with st.store.read() as s:
            return [v.name for v in repo.list_model_versions(s)]

    return JSONResponse({"versions": await to_thread.run_sync(names)})


async def list_jobs(request: Request) -> JSONResponse:
    return await to_thread.run_sync(jobs.list_jobs_response, state_of(request).store, request)


async def get_job(request: Request) -> JSONResponse:
    return await to_thread.run_sync(jobs.get_job_response, state_of(request).store, request.path_params["job_id"])
