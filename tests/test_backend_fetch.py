"""Image fetching against real HTTP servers: a Label-Studio-like file server (uploads, local files, presign,
token refresh, auth checks), a second "bucket" origin, 404s, corrupt and oversized files."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from backend.fetch import FetchError, ImageFetcher, LabelStudioAccess, decode_jwt_payload, token_kind

LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"


def make_jwt(payload: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"


PAT = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 86400, "user_id": 1})


def png_bytes(h: int = 24, w: int = 32, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


class FileServer:
    """A threaded HTTP server; ``files`` maps a path (with query) to bytes; ``log`` records each request."""

    def __init__(self, auth: bool = False) -> None:
        self.files: dict[str, bytes] = {}
        self.log: list[dict] = []
        self.refresh_calls = 0
        self.auth = auth
        self.access_tokens: set[str] = set()
        self.redirects: dict[str, str] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                header = self.headers.get("Authorization", "")
                return header == f"Token {LEGACY_TOKEN}" or (
                    header.startswith("Bearer ") and header[7:] in outer.access_tokens)

            def do_GET(self) -> None:  # noqa: N802
                outer.log.append({"path": self.path, "auth": self.headers.get("Authorization")})
                if outer.auth and not self._authorized():
                    self._send(401, b'{"detail": "auth"}')
                    return
                parts = urlsplit(self.path)
                if parts.path.startswith("/tasks/") and parts.path.endswith("/presign/"):
                    uri = base64.urlsafe_b64decode(parse_qs(parts.query)["fileuri"][0]).decode()
                    target = outer.redirects.get(uri)
                    self._send(302, headers={"Location": target}) if target else self._send(404)
                    return
                if self.path in outer.files:
                    self._send(200, outer.files[self.path], {"Content-Type": "application/octet-stream"})
                else:
                    self._send(404, b"not found")

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.log.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if self.path == "/api/token/refresh/" and body.get("refresh") == PAT:
                    outer.refresh_calls += 1
                    access = make_jwt({"token_type": "access", "n": outer.refresh_calls})
                    outer.access_tokens.add(access)
                    self._send(200, json.dumps({"access": access}).encode())
                else:
                    self._send(401, b'{"detail": "bad refresh token"}')

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def paths(self) -> list[str]:
        return [e["path"] for e in self.log]


@pytest.fixture()
def ls() -> FileServer:
    with FileServer(auth=True) as server:
        yield server


@pytest.fixture()
def bucket() -> FileServer:
    with FileServer(auth=False) as server:
        yield server


@pytest.fixture()
def fetcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ImageFetcher:
    for var in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN", "LOCAL_FILES_DOCUMENT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    f = ImageFetcher(document_root=tmp_path / "root", timeout=5)
    yield f
    f.close()


def test_token_kinds() -> None:
    assert token_kind(LEGACY_TOKEN) == "legacy"
    assert token_kind(PAT) == "refresh"
    assert token_kind(make_jwt({"token_type": "access"})) == "access"
    assert token_kind("a.b.c") == "legacy"  # three parts but not base64 JSON
    assert decode_jwt_payload(PAT)["user_id"] == 1


def test_upload_with_legacy_token(ls: FileServer, fetcher: ImageFetcher) -> None:
    data = png_bytes()
    ls.files["/data/upload/1/a.png"] = data
    got = fetcher.fetch("/data/upload/1/a.png", 5, LabelStudioAccess(ls.url, LEGACY_TOKEN))
    assert got.data == data and got.sha256 == hashlib.sha256(data).hexdigest()
    assert got.key == f"{ls.url}/data/upload/1/a.png"
    assert ls.log[-1]["auth"] == f"Token {LEGACY_TOKEN}"


def test_personal_access_token_is_refreshed_once_and_sent_as_bearer(ls: FileServer, fetcher: ImageFetcher) -> None:
    ls.files["/data/upload/1/a.png"] = png_bytes()
    access = LabelStudioAccess(ls.url + "/", PAT)
    for _ in range(3):
        fetcher.fetch("/data/upload/1/a.png", 5, access)
    assert ls.refresh_calls == 1
    assert ls.log[0]["path"] == "/api/token/refresh/" and ls.log[0]["body"] == {"refresh": PAT}
    gets = [e for e in ls.log if e["path"].startswith("/data/")]
    assert len(gets) == 3 and all(e["auth"].startswith("Bearer ") for e in gets)
    assert decode_jwt_payload(gets[0]["auth"][7:])["token_type"] == "access"
    # Label Studio forgets the access token (expiry): one 401, one refresh, then success.
    ls.access_tokens.clear()
    fetcher.fetch("/data/upload/1/a.png", 5, access)
    assert ls.refresh_calls == 2


def test_refused_pat_and_missing_token_are_explained(ls: FileServer, fetcher: ImageFetcher) -> None:
    ls.files["/data/upload/1/a.png"] = png_bytes()
    bad_pat = make_jwt({"token_type": "refresh", "user_id": 2})
    with pytest.raises(FetchError, match="refused the personal access token"):
        fetcher.fetch("/data/upload/1/a.png", 5, LabelStudioAccess(ls.url, bad_pat))
    with pytest.raises(FetchError, match="no Label Studio token") as err:
        fetcher.fetch("/data/upload/1/a.png", 5, LabelStudioAccess(ls.url, None))
    assert err.value.status == 401
    with pytest.raises(FetchError, match="refused the credentials"):
        fetcher.fetch("/data/upload/1/a.png", 5, LabelStudioAccess(ls.url, "wrong-token"))
    with pytest.raises(FetchError, match="Label Studio URL unknown"):
        fetcher.fetch("/data/upload/1/a.png", 5, LabelStudioAccess(None, LEGACY_TOKEN))


def test_404_and_env_credentials(ls: FileServer, fetcher: ImageFetcher, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABEL_STUDIO_URL", ls.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", LEGACY_TOKEN)
    access = LabelStudioAccess.from_env(hostname="http://elsewhere:1", access_token="other")
    assert access == LabelStudioAccess(ls.url, LEGACY_TOKEN)
    with pytest.raises(FetchError, match="HTTP 404") as err:
        fetcher.fetch("/data/upload/1/missing.png", 1)
    assert err.value.status == 404 and err.value.item == "/data/upload/1/missing.png"


def test_local_files_from_disk_else_through_label_studio(ls: FileServer, fetcher: ImageFetcher,
                                                         tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    on_disk = png_bytes(seed=1)
    (root / "dir" / "one.png").write_bytes(on_disk)
    (tmp_path / "secret.png").write_bytes(b"outside the root")
    access = LabelStudioAccess(ls.url, LEGACY_TOKEN)
    got = fetcher.fetch("/data/local-files/?d=dir/one.png", 3, access)
    assert got.data == on_disk and got.key.startswith(f"file://{root / 'dir' / 'one.png'}?mtime_ns=")
    assert ls.log == []
    ls.files["/data/local-files/?d=dir/two.png"] = png_bytes(seed=2)
    assert fetcher.fetch("/data/local-files/?d=dir/two.png", 3, access).data == png_bytes(seed=2)
    ls.files["/data/local-files/?d=../secret.png"] = b"from label studio"
    assert fetcher.fetch("/data/local-files/?d=../secret.png", 3, access).data == b"from label studio"


def test_cloud_uri_is_presigned_and_credentials_do_not_follow_the_redirect(
        ls: FileServer, bucket: FileServer, fetcher: ImageFetcher) -> None:
    data = png_bytes(seed=3)
    bucket.files["/bucket/key.png?sig=abc"] = data
    ls.redirects["s3://bucket/key.png"] = bucket.url + "/bucket/key.png?sig=abc"
    got = fetcher.fetch("s3://bucket/key.png", 42, LabelStudioAccess(ls.url, LEGACY_TOKEN))
    assert got.data == data and got.key == "s3://bucket/key.png"
    assert ls.log[0]["path"].startswith("/tasks/42/presign/?fileuri=")
    assert ls.log[0]["auth"] == f"Token {LEGACY_TOKEN}"
    assert bucket.log[0]["auth"] is None
    with pytest.raises(FetchError, match="needs the task id"):
        fetcher.fetch("gs://b/k.png", None, LabelStudioAccess(ls.url, LEGACY_TOKEN))
    with pytest.raises(FetchError, match="HTTP 404"):
        fetcher.fetch("gs://b/unknown.png", 42, LabelStudioAccess(ls.url, LEGACY_TOKEN))


def test_http_urls_get_credentials_only_on_label_studio_origin(ls: FileServer, bucket: FileServer,
                                                               fetcher: ImageFetcher) -> None:
    bucket.files["/pic.png"] = png_bytes()
    ls.files["/data/upload/2/pic.png"] = png_bytes()
    access = LabelStudioAccess(ls.url, LEGACY_TOKEN)
    fetcher.fetch(bucket.url + "/pic.png", 1, access)
    fetcher.fetch(ls.url + "/data/upload/2/pic.png", 1, access)
    assert bucket.log[0]["auth"] is None
    assert ls.log[0]["auth"] == f"Token {LEGACY_TOKEN}"


def test_data_uri_size_limit_and_unsupported(bucket: FileServer, tmp_path: Path) -> None:
    small = ImageFetcher(document_root=None, max_bytes=1000)
    data = png_bytes(4, 4)
    assert small.fetch("data:image/png;base64," + base64.b64encode(data).decode()).data == data
    bucket.files["/big.bin"] = b"x" * 5000
    with pytest.raises(FetchError, match="larger than 1000 bytes"):
        small.fetch(bucket.url + "/big.bin")
    bucket.files["/empty.png"] = b""
    with pytest.raises(FetchError, match="empty file"):
        small.fetch(bucket.url + "/empty.png")
    with pytest.raises(FetchError, match="unsupported image location \\(ftp\\)"):
        small.fetch("ftp://host/a.png")
    with pytest.raises(FetchError, match="no image URL"):
        small.fetch("")
    with pytest.raises(FetchError, match="download failed"):
        small.fetch("http://127.0.0.1:9/nothing-listens-here.png")
    small.close()
