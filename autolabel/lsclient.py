"""A small Label Studio REST client: projects, imports, task paging, predictions, annotations, ML backends,
Data Manager actions and exports.

Two kinds of credentials are accepted, told apart by their shape:

* a legacy API token (40 hex characters) → header ``Authorization: Token <token>``;
* a personal access token (a JWT refresh token, three dot-separated parts) → exchanged at
  ``POST /api/token/refresh/`` for a short-lived access token sent as ``Authorization: Bearer <access>``;
  it is renewed before it expires and once more when Label Studio answers 401.

Every failed call raises :class:`LabelStudioError` naming the method, path, status and Label Studio's answer.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import httpx

#: Renew a personal-access-token's access token this many seconds before it expires.
ACCESS_RENEW_MARGIN_S = 30.0


class LabelStudioError(RuntimeError):
    """A Label Studio REST call failed (transport error or HTTP status >= 400)."""

    def __init__(self, method: str, path: str, status: int | None, detail: str) -> None:
        where = f"{method} {path}"
        super().__init__(f"{where} failed ({status if status is not None else 'no answer'}): {detail}")
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail


def is_personal_access_token(token: str) -> bool:
    """True when ``token`` looks like a JWT (a personal access token), False for a legacy API token."""
    return token.count(".") == 2 and len(token) > 40


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (unix seconds) of a JWT, read without verifying it; None when absent or unreadable."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return float(json.loads(base64.urlsafe_b64decode(payload))["exp"])
    except (IndexError, KeyError, ValueError, TypeError):
        return None


class LabelStudioAuth(httpx.Auth):
    """httpx auth flow for a legacy token or a personal access token (refresh → access, renewed as needed)."""

    requires_response_body = True

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token.strip()
        self.timeout = timeout
        self.personal = is_personal_access_token(self.token)
        self._access: str | None = None
        self._access_expiry = 0.0
        self._lock = threading.Lock()

    def header(self, force_refresh: bool = False) -> str:
        """The ``Authorization`` header value to send now."""
        if not self.personal:
            return f"Token {self.token}"
        with self._lock:
            if force_refresh or self._access is None or time.time() > self._access_expiry - ACCESS_RENEW_MARGIN_S:
                self._refresh()
            return f"Bearer {self._access}"

    def _refresh(self) -> None:
        url = f"{self.base_url}/api/token/refresh/"
        try:
            resp = httpx.post(url, json={"refresh": self.token}, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise LabelStudioError("POST", "/api/token/refresh/", None, f"{type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise LabelStudioError("POST", "/api/token/refresh/", resp.status_code,
                                   f"personal access token refused: {resp.text[:300]}")
        access = resp.json().get("access")
        if not access:
            raise LabelStudioError("POST", "/api/token/refresh/", resp.status_code, "answer has no 'access' token")
        self._access = access
        self._access_expiry = _jwt_expiry(access) or (time.time() + 240.0)

    def auth_flow(self, request: httpx.Request):  # type: ignore[override]
        request.headers["Authorization"] = self.header()
        response = yield request
        if response.status_code == 401 and self.personal:
            request.headers["Authorization"] = self.header(force_refresh=True)
            yield request


class LabelStudio:
    """Thin synchronous client of one Label Studio server.

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8080``.
        token: legacy API token or personal access token.
        timeout: seconds per request (Data Manager "retrieve predictions" calls get ``long_timeout``).
    """

    def __init__(self, url: str, token: str, timeout: float = 30.0, long_timeout: float = 600.0) -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio URL {url!r} must start with http:// or https://")
        if not token:
            raise ValueError("a Label Studio API token is required")
        self.url = url.rstrip("/")
        self.long_timeout = long_timeout
        self.auth = LabelStudioAuth(self.url, token, timeout)
        self.http = httpx.Client(base_url=self.url, auth=self.auth, timeout=timeout, follow_redirects=True)

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "LabelStudio":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; raise :class:`LabelStudioError` on a transport error or a status >= 400."""
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LabelStudioError(method, path, None, f"{type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise LabelStudioError(method, path, resp.status_code, resp.text[:1000])
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def auth_header(self) -> str:
        """``Authorization`` header value (for fetching ``/data/upload/...`` files with the same credentials)."""
        return self.auth.header()

    # ------------------------------------------------------------------ users / server
    def whoami(self) -> dict:
        return self._json("GET", "/api/current-user/whoami")

    def version(self) -> dict:
        return self._json("GET", "/api/version")

    def create_personal_access_token(self) -> str:
        """A new personal access token (JWT refresh token) of the current user."""
        return self._json("POST", "/api/token/")["token"]

    # ------------------------------------------------------------------ projects
    def create_project(self, title: str, label_config: str, **fields: Any) -> dict:
        if len(title) < 3:
            raise ValueError(f"project title {title!r} is too short (Label Studio needs at least 3 characters)")
        return self._json("POST", "/api/projects", json={"title": title, "label_config": label_config, **fields})

    def get_project(self, project: int) -> dict:
        return self._json("GET", f"/api/projects/{project}")

    def update_project(self, project: int, **fields: Any) -> dict:
        return self._json("PATCH", f"/api/projects/{project}", json=fields)

    def list_projects(self) -> list[dict]:
        return list(self._paged("/api/projects", {}, "results"))

    def delete_project(self, project: int) -> None:
        self.request("DELETE", f"/api/projects/{project}")

    # ------------------------------------------------------------------ import
    def import_files(self, project: int, paths: Sequence[str | Path]) -> dict:
        """Upload image files; each becomes one task whose data points at ``/data/upload/<project>/<file>``."""
        files = []
        handles = []
        try:
            for i, p in enumerate(paths):
                path = Path(p)
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: not a file, cannot import it")
                fh = open(path, "rb")
                handles.append(fh)
                mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                # Label Studio reads request.FILES as a dict: every file needs its own field name.
                files.append((f"file{i}", (path.name, fh, mime)))
            return self._json("POST", f"/api/projects/{project}/import", files=files,
                              timeout=self.long_timeout)
        finally:
            for fh in handles:
                fh.close()

    def import_tasks(self, project: int, tasks: Sequence[dict]) -> dict:
        """Import task dicts (``{"data": {...}}`` or plain data dicts)."""
        return self._json("POST", f"/api/projects/{project}/import", json=list(tasks), timeout=self.long_timeout)

    def add_local_storage(self, project: int, path: str | Path, title: str = "local files",
                          regex_filter: str | None = None, use_blob_urls: bool = True) -> dict:
        """Connect a local-files import storage (``path`` must lie under LS's LOCAL_FILES_DOCUMENT_ROOT).

        Label Studio serves ``/data/local-files/?d=<path relative to the root>`` only for files inside a
        storage of a project the user may see, so tasks that point at local files need one.
        """
        body: dict[str, Any] = {"project": project, "path": str(path), "title": title,
                                "use_blob_urls": use_blob_urls}
        if regex_filter is not None:
            body["regex_filter"] = regex_filter
        return self._json("POST", "/api/storages/localfiles", json=body)

    def sync_local_storage(self, storage: int) -> dict:
        """Scan a local-files storage and create a task per matching file."""
        return self._json("POST", f"/api/storages/localfiles/{storage}/sync", timeout=self.long_timeout)

    # ------------------------------------------------------------------ tasks
    def _paged(self, path: str, params: dict, key: str, page_size: int = 100) -> Iterator[dict]:
        page = 1
        while True:
            try:
                data = self._json("GET", path, params={**params, "page": page, "page_size": page_size})
            except LabelStudioError as exc:
                if exc.status == 404 and page > 1:  # Django pagination: past the last page
                    return
                raise
            items = data.get(key, []) if isinstance(data, dict) else data
            yield from items
            if isinstance(data, list) or not items:
                return
            total = data.get("total", data.get("count"))
            if data.get("next") is None and "next" in data:
                return
            if total is not None and page * page_size >= int(total):
                return
            page += 1

    def iter_tasks(self, project: int, page_size: int = 100, fields: str = "all",
                   include: Sequence[str] | None = None) -> Iterator[dict]:
        """All tasks of a project, page by page.

        ``fields="all"`` includes predictions and annotations; ``include`` keeps only the named task fields
        (e.g. ``["id", "data", "predictions_model_versions"]``), which keeps big brush results off the wire.
        """
        params: dict[str, Any] = {"project": project, "fields": fields}
        if include:
            params["include"] = ",".join(include)
        yield from self._paged("/api/tasks", params, "tasks", page_size)

    def iter_task_versions(self, project: int, page_size: int = 500) -> Iterator[tuple[dict, set[str]]]:
        """(task with ``id`` and ``data``, set of model versions it has predictions for), page by page."""
        for task in self.iter_tasks(project, page_size, include=["id", "data", "predictions_model_versions"]):
            raw = task.pop("predictions_model_versions", "") or ""
            versions = set(raw) if isinstance(raw, list) else {v.strip() for v in str(raw).split(",")}
            yield task, {v for v in versions if v}

    def tasks(self, project: int, page_size: int = 100) -> list[dict]:
        return list(self.iter_tasks(project, page_size))

    def task_ids(self, project: int, page_size: int = 500) -> list[int]:
        return [t["id"] for t in self.iter_tasks(project, page_size, fields="task_only")]

    def get_task(self, task: int) -> dict:
        return self._json("GET", f"/api/tasks/{task}")

    # ------------------------------------------------------------------ predictions
    def create_prediction(self, task: int, result: list[dict], score: float | None = None,
                          model_version: str | None = None) -> dict:
        body: dict[str, Any] = {"task": task, "result": result}
        if score is not None:
            body["score"] = float(score)
        if model_version is not None:
            body["model_version"] = model_version
        return self._json("POST", "/api/predictions", json=body)

    def list_predictions(self, task: int | None = None, project: int | None = None) -> list[dict]:
        params: dict[str, Any] = {}
        if task is not None:
            params["task"] = task
        if project is not None:
            params["project"] = project
        data = self._json("GET", "/api/predictions", params=params)
        return data.get("results", []) if isinstance(data, dict) else data

    def delete_prediction(self, prediction: int) -> None:
        self.request("DELETE", f"/api/predictions/{prediction}")

    # ------------------------------------------------------------------ annotations
    def create_annotation(self, task: int, result: list[dict], **fields: Any) -> dict:
        return self._json("POST", f"/api/tasks/{task}/annotations", json={"result": result, **fields})

    def update_annotation(self, annotation: int, result: list[dict], **fields: Any) -> dict:
        return self._json("PATCH", f"/api/annotations/{annotation}", json={"result": result, **fields})

    def delete_annotation(self, annotation: int) -> None:
        self.request("DELETE", f"/api/annotations/{annotation}")

    def list_annotations(self, task: int) -> list[dict]:
        return self._json("GET", f"/api/tasks/{task}/annotations")

    # ------------------------------------------------------------------ ML backends
    def add_ml_backend(self, project: int, url: str, title: str = "autolabel", is_interactive: bool = False,
                       basic_auth: tuple[str, str] | None = None, webhook_auth: bool = True,
                       **fields: Any) -> dict:
        """Connect an ML backend; Label Studio checks ``/health`` and ``/setup`` before it answers.

        Label Studio 1.23.2 registers ``<url>/webhook`` for the project without the backend's basic-auth
        credentials, so a backend behind basic auth would answer its annotation events with 401. With
        ``basic_auth`` and ``webhook_auth`` (default) the credentials are added to that webhook's headers.
        """
        body: dict[str, Any] = {"url": url, "project": project, "title": title, "is_interactive": is_interactive,
                                **fields}
        if basic_auth is not None:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        backend = self._json("POST", "/api/ml", json=body)
        if basic_auth is not None and webhook_auth:
            self.add_webhook_basic_auth(project, url.rstrip("/") + "/webhook", basic_auth)
        return backend

    def add_webhook_basic_auth(self, project: int, webhook_url: str, basic_auth: tuple[str, str]) -> list[dict]:
        """Add ``Authorization: Basic ...`` to the project's webhooks that post to ``webhook_url``."""
        token = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
        changed = []
        for hook in self.list_webhooks(project):
            if hook.get("url") == webhook_url:
                headers = dict(hook.get("headers") or {})
                headers["Authorization"] = f"Basic {token}"
                changed.append(self.update_webhook(hook["id"], headers=headers))
        return changed

    def list_ml_backends(self, project: int) -> list[dict]:
        return self._json("GET", "/api/ml", params={"project": project})

    def get_ml_backend(self, backend: int) -> dict:
        return self._json("GET", f"/api/ml/{backend}")

    def delete_ml_backend(self, backend: int) -> None:
        self.request("DELETE", f"/api/ml/{backend}")

    def train_ml_backend(self, backend: int, use_ground_truth: bool = False) -> Any:
        """``POST /api/ml/{id}/train``: Label Studio sends START_TRAINING to the backend's webhook."""
        return self._json("POST", f"/api/ml/{backend}/train", json={"use_ground_truth": use_ground_truth},
                          timeout=self.long_timeout)

    # ------------------------------------------------------------------ Data Manager
    def dm_action(self, project: int, action: str, selected: Iterable[int] | None = None,
                  timeout: float | None = None) -> Any:
        """Run a Data Manager action on all tasks (``selected=None``) or on the given task ids."""
        if selected is None:
            items: dict[str, Any] = {"all": True, "excluded": []}
        else:
            items = {"all": False, "included": [int(i) for i in selected]}
        return self._json("POST", "/api/dm/actions", params={"id": action, "project": project},
                          json={"selectedItems": items}, timeout=timeout or self.long_timeout)

    def retrieve_predictions(self, project: int, selected: Iterable[int] | None = None) -> Any:
        """The Data Manager's "Retrieve predictions" (one synchronous /predict call to the backend)."""
        return self.dm_action(project, "retrieve_tasks_predictions", selected)

    # ------------------------------------------------------------------ webhooks
    def list_webhooks(self, project: int | None = None) -> list[dict]:
        params = {"project": project} if project is not None else {}
        return self._json("GET", "/api/webhooks", params=params)

    def update_webhook(self, webhook: int, **fields: Any) -> dict:
        return self._json("PATCH", f"/api/webhooks/{webhook}", json=fields)

    # ------------------------------------------------------------------ export
    def export(self, project: int, export_type: str = "JSON", download_all_tasks: bool = True) -> bytes:
        """``GET /api/projects/<id>/export?exportType=...`` as raw bytes (JSON, COCO zip, ...)."""
        resp = self.request("GET", f"/api/projects/{project}/export",
                            params={"exportType": export_type, "download_all_tasks": str(download_all_tasks).lower()},
                            timeout=self.long_timeout)
        return resp.content

    def export_json(self, project: int) -> list[dict]:
        return json.loads(self.export(project, "JSON"))
