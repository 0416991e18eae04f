"""Fetch the image bytes a Label Studio task points to.

Supported task values:

* ``/data/upload/<project>/<file>`` and other paths relative to Label Studio → GET ``<LS URL><path>``;
* ``/data/local-files/?d=<rel path>`` → read from ``LOCAL_FILES_DOCUMENT_ROOT`` when that is set and the file
  exists inside it, else GET it through Label Studio;
* ``http(s)://…`` → GET it (Label Studio credentials are sent only when it is on Label Studio's origin);
* ``s3://``, ``gs://``, ``azure-blob://``, ``azure-spi://`` → GET ``<LS URL>/tasks/<task id>/presign/?fileuri=
  <urlsafe base64 of the URI>``, which redirects to a presigned URL (the redirect drops our credentials);
* ``data:image/...;base64,…`` inline images.

Label Studio URL and token: env ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` (alias
``LABEL_STUDIO_ACCESS_TOKEN``) when set, else the ``hostname`` / ``access_token`` a project sent to /setup.
A legacy token goes out as ``Authorization: Token <t>``; a personal access token (a JWT refresh token) is
exchanged at ``/api/token/refresh/`` and sent as ``Bearer <access>`` (cached until shortly before it expires).

Every failure raises :class:`FetchError` naming the item and the reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx

CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://", "azure-spi://")
LOCAL_FILES_PREFIX = "/data/local-files"
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
DEFAULT_TIMEOUT_S = 30.0


class FetchError(RuntimeError):
    """An image could not be fetched; ``item`` names it, ``reason`` says why, ``status`` is the HTTP status."""

    def __init__(self, item: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{item}: {reason}")
        self.item = item
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class LabelStudioAccess:
    """Where Label Studio is and how to authenticate to it (either may be unknown)."""

    url: str | None = None
    token: str | None = None

    @classmethod
    def from_env(cls, hostname: str | None = None, access_token: str | None = None) -> "LabelStudioAccess":
        """Env LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY first, then the per-project values from /setup."""
        url = os.environ.get("LABEL_STUDIO_URL") or hostname or None
        token = (os.environ.get("LABEL_STUDIO_API_KEY") or os.environ.get("LABEL_STUDIO_ACCESS_TOKEN")
                 or access_token or None)
        return cls(url.rstrip("/") if url else None, token)


@dataclass(frozen=True)
class Resolved:
    """Where a task value will be read from.

    ``key`` is a stable identity of the content's location for the URL→content cache (None: do not cache);
    ``url`` / ``path`` say where to read; ``with_auth`` whether Label Studio credentials go along.
    """

    item: str
    key: str | None
    url: str | None = None
    path: Path | None = None
    inline: bytes | None = None
    with_auth: bool = False


@dataclass(frozen=True)
class Fetched:
    """Image bytes, their sha256 (hex) and the cache key of where they came from."""

    data: bytes
    sha256: str
    key: str | None
    item: str


def decode_jwt_payload(token: str) -> dict | None:
    """The payload of a JWT (not verified), or None when ``token`` is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(header, dict) or "alg" not in header or not isinstance(payload, dict):
        return None
    return payload


def token_kind(token: str) -> str:
    """'refresh' for a personal access token, 'access' for a JWT access token, 'legacy' otherwise."""
    payload = decode_jwt_payload(token)
    if payload is None:
        return "legacy"
    return "access" if payload.get("token_type") == "access" else "refresh"


class TokenAuth(httpx.Auth):
    """Authorization header for one Label Studio (URL, token); renews a PAT's access token when needed."""

    RENEW_AFTER_S = 240.0

    def __init__(self, base_url: str, token: str, client: httpx.Client) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token.strip()
        self.kind = token_kind(self.token)
        self._client = client
        self._access: str | None = None
        self._access_time = 0.0
        self._lock = threading.Lock()

    def header(self, renew: bool = False) -> str:
        if self.kind == "legacy":
            return f"Token {self.token}"
        if self.kind == "access":
            return f"Bearer {self.token}"
        with self._lock:
            if renew or self._access is None or time.monotonic() - self._access_time > self.RENEW_AFTER_S:
                self._access = self._refresh()
                self._access_time = time.monotonic()
            return f"Bearer {self._access}"

    def _refresh(self) -> str:
        url = f"{self.base_url}/api/token/refresh/"
        try:
            resp = self._client.post(url, json={"refresh": self.token})
        except httpx.HTTPError as exc:
            raise FetchError(url, f"cannot refresh the personal access token ({type(exc).__name__}: {exc})") from None
        if resp.status_code != 200:
            raise FetchError(url, f"Label Studio refused the personal access token (HTTP {resp.status_code})",
                             resp.status_code)
        try:
            access = resp.json()["access"]
        except (ValueError, KeyError, TypeError):
            raise FetchError(url, "token refresh answer has no 'access' field") from None
        return str(access)

    def auth_flow(self, request: httpx.Request):  # type: ignore[override]
        request.headers["Authorization"] = self.header()
        response = yield request
        if response.status_code == 401 and self.kind == "refresh":
            request.headers["Authorization"] = self.header(renew=True)
            yield request


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


class ImageFetcher:
    """Fetches task images; thread-safe, one HTTP connection pool for all calls.

    Args:
        document_root: LOCAL_FILES_DOCUMENT_ROOT (default: that env var).
        timeout: seconds per HTTP request.
        max_bytes: refuse images larger than this.
    """

    def __init__(self, document_root: str | os.PathLike | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        root = document_root if document_root is not None else os.environ.get("LOCAL_FILES_DOCUMENT_ROOT")
        self.document_root = Path(root).resolve() if root else None
        self.max_bytes = max_bytes
        self.client = httpx.Client(timeout=timeout, follow_redirects=True)
        self._auths: dict[tuple[str, str], TokenAuth] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def auth_for(self, access: LabelStudioAccess) -> TokenAuth | None:
        if not access.url or not access.token:
            return None
        key = (access.url, access.token)
        with self._lock:
            if key not in self._auths:
                self._auths[key] = TokenAuth(access.url, access.token, self.client)
            return self._auths[key]

    # ------------------------------------------------------------------------------------------ resolution
    def _local_file(self, value: str) -> Path | None:
        if self.document_root is None:
            return None
        rel = parse_qs(urlsplit(value).query).get("d", [None])[0]
        if not rel:
            return None
        path = (self.document_root / unquote(rel).lstrip("/")).resolve()
        if self.document_root not in path.parents or not path.is_file():
            return None
        return path

    def resolve(self, value: str, task_id: int | None = None,
                access: LabelStudioAccess | None = None) -> Resolved:
        """Work out where ``value`` is read from, without reading it. Raises FetchError when it cannot be."""
        access = access or LabelStudioAccess.from_env()
        if not isinstance(value, str) or not value.strip():
            raise FetchError(repr(value), "task has no image URL")
        value = value.strip()
        item = value if len(value) < 200 else value[:197] + "..."
        if value.startswith("data:"):
            header, _, payload = value.partition(",")
            if ";base64" not in header:
                raise FetchError(item[:40], "only base64 data: URIs are supported")
            try:
                return Resolved(item[:40], None, inline=base64.b64decode(payload, validate=False))
            except (binascii.Error, ValueError):
                raise FetchError(item[:40], "data: URI is not valid base64") from None
        if value.startswith(LOCAL_FILES_PREFIX):
            path = self._local_file(value)
            if path is not None:
                stat = path.stat()
                return Resolved(item, f"file://{path}?mtime_ns={stat.st_mtime_ns}&size={stat.st_size}", path=path)
        if value.startswith(CLOUD_SCHEMES):
            if task_id is None:
                raise FetchError(item, "a cloud storage URI needs the task id to be presigned by Label Studio")
            ls = self._require_ls(item, access)
            encoded = base64.urlsafe_b64encode(value.encode()).decode()
            url = f"{ls}/tasks/{int(task_id)}/presign/?fileuri={quote(encoded, safe='')}"
            return Resolved(item, value, url=url, with_auth=True)
        if value.startswith("/"):
            ls = self._require_ls(item, access)
            return Resolved(item, ls + value, url=ls + value, with_auth=True)
        if value.startswith(("http://", "https://")):
            on_ls = bool(access.url) and _same_origin(value, access.url)
            return Resolved(item, value, url=value, with_auth=on_ls)
        scheme = value.split(":", 1)[0] if ":" in value else "no scheme"
        raise FetchError(item, f"unsupported image location ({scheme}); expected a Label Studio path, "
                               "http(s) URL, s3:// / gs:// / azure-blob:// URI or data: URI")

    @staticmethod
    def _require_ls(item: str, access: LabelStudioAccess) -> str:
        if not access.url:
            raise FetchError(item, "Label Studio URL unknown: set LABEL_STUDIO_URL or connect the backend to a "
                                   "project (its /setup call sends the hostname)")
        return access.url.rstrip("/")

    # ---------------------------------------------------------------------------------------------- reading
    def read(self, resolved: Resolved, access: LabelStudioAccess | None = None) -> bytes:
        """The bytes at ``resolved``; raises FetchError (HTTP status, size, missing credentials...)."""
        if resolved.inline is not None:
            data = resolved.inline
        elif resolved.path is not None:
            try:
                data = resolved.path.read_bytes()
            except OSError as exc:
                raise FetchError(resolved.item, f"cannot read local file ({exc.strerror or exc})") from None
        else:
            data = self._download(resolved, access or LabelStudioAccess.from_env())
        if not data:
            raise FetchError(resolved.item, "empty file")
        if len(data) > self.max_bytes:
            raise FetchError(resolved.item, f"file is larger than {self.max_bytes} bytes")
        return data

    def _download(self, resolved: Resolved, access: LabelStudioAccess) -> bytes:
        assert resolved.url is not None
        auth = self.auth_for(access) if resolved.with_auth else None
        missing_token = resolved.with_auth and not access.token
        try:
            with self.client.stream("GET", resolved.url, auth=auth or httpx.USE_CLIENT_DEFAULT) as resp:
                if resp.status_code >= 400:
                    hint = ""
                    if resp.status_code in (401, 403):
                        hint = (": no Label Studio token (set LABEL_STUDIO_API_KEY or reconnect the backend)"
                                if missing_token else ": Label Studio refused the credentials")
                    raise FetchError(resolved.item, f"HTTP {resp.status_code}{hint}", resp.status_code)
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise FetchError(resolved.item, f"file is larger than {self.max_bytes} bytes")
                chunks, total = [], 0
                for chunk in resp.iter_bytes():
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise FetchError(resolved.item, f"file is larger than {self.max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise FetchError(resolved.item, f"download failed ({type(exc).__name__}: {exc})") from None

    def fetch(self, value: str, task_id: int | None = None, access: LabelStudioAccess | None = None) -> Fetched:
        """Resolve and read ``value``: the bytes with their sha256 and cache key."""
        access = access or LabelStudioAccess.from_env()
        resolved = self.resolve(value, task_id, access)
        data = self.read(resolved, access)
        return Fetched(data=data, sha256=hashlib.sha256(data).hexdigest(), key=resolved.key, item=resolved.item)
