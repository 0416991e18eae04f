"""Test harness: install, start and stop a real Label Studio 1.23.2 on a free loopback port.

Label Studio pins many packages, so it lives in its own venv (``<repo>/.venv-ls``, or ``$AUTOLABEL_LS_VENV``),
created with ``pip install label-studio==1.23.2`` when missing (about two minutes). The first start of a fresh
data directory runs ~50 s of migrations; the migrated directory is kept as a template inside the venv and
copied for every later server, which then starts in a few seconds.

The server runs with the settings the ML-backend protocol needs on one machine (``ML_BLOCK_LOCAL_IP=false``,
``SSRF_PROTECTION_ENABLED=false``, local-file serving on) and a known legacy API token. It is stopped by the
PID (process group) of the process this module started, never by name.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

LS_VERSION = "1.23.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
USERNAME = "autolabel@example.com"
PASSWORD = "autolabel-test-pw"
#: First start of a fresh data dir (migrations) on two shared cores can take a few minutes.
FIRST_START_TIMEOUT_S = 420.0
START_TIMEOUT_S = 180.0


class LabelStudioHarnessError(RuntimeError):
    """Label Studio could not be installed or started; the message names the log to read."""


def venv_dir() -> Path:
    return Path(os.environ.get("AUTOLABEL_LS_VENV", REPO_ROOT / ".venv-ls"))


def _installed_marker(venv: Path) -> bool:
    return any(venv.glob(f"lib/python*/site-packages/label_studio-{LS_VERSION}.dist-info"))


def ensure_installed(venv: Path | None = None) -> Path:
    """Create the Label Studio venv and install label-studio==1.23.2 when missing; return the executable."""
    venv = venv or venv_dir()
    exe = venv / "bin" / "label-studio"
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / f".{venv.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two pytest processes must not install at once
        if exe.exists() and _installed_marker(venv):
            return exe
        log = venv.parent / f".{venv.name}-install.log"
        with open(log, "w") as out:
            steps = [[sys.executable, "-m", "venv", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                      f"label-studio=={LS_VERSION}"]]
            for cmd in steps:
                if cmd[1] == "-m" and cmd[2] == "venv" and (venv / "bin" / "python").exists():
                    continue
                rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
                if rc != 0:
                    raise LabelStudioHarnessError(f"`{' '.join(cmd)}` failed with exit code {rc}; see {log}")
        if not exe.exists():
            raise LabelStudioHarnessError(f"{exe} missing after install; see {log}")
        return exe


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None,
              expect: int = 200) -> None:
    """Poll ``url`` until it answers ``expect``; fail early when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LabelStudioHarnessError(f"process exited with code {proc.returncode} before {url} answered; "
                                          f"see {log}")
        try:
            resp = httpx.get(url, timeout=5.0)
            if resp.status_code == expect:
                return
            last = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise LabelStudioHarnessError(f"{url} did not answer {expect} within {timeout:.0f} s ({last}); see {log}")


def stop_process_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Stop a process started with ``start_new_session=True`` and its children, by its PID."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


class LabelStudioServer:
    """One Label Studio process with its own data directory.

    Args:
        data_dir: data directory (a fresh temp dir by default, removed on :meth:`stop`).
        documents_root: ``LOCAL_FILES_DOCUMENT_ROOT`` (defaults to the data directory).
        port: TCP port (a free one by default).
    """

    def __init__(self, data_dir: Path | None = None, documents_root: Path | None = None,
                 port: int | None = None) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="autolabel-ls-"))
        self.documents_root = Path(documents_root) if documents_root else self.data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.log_path = self.data_dir / "label-studio.log"
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ lifecycle
    def _spawn(self, exe: Path, data_dir: Path, token: str, port: int, log_path: Path) -> subprocess.Popen:
        env = dict(os.environ)
        env.update(
            ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false",
            LOCAL_FILES_SERVING_ENABLED="true",
            LOCAL_FILES_DOCUMENT_ROOT=str(self.documents_root),
            LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(self.documents_root),
            COLLECT_ANALYTICS="false",
            PYTHONUNBUFFERED="1",
        )
        for var in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE"):
            env.pop(var, None)
        cmd = [str(exe), "start", "--no-browser", "--port", str(port), "--internal-host", "127.0.0.1",
               "--data-dir", str(data_dir), "--username", USERNAME, "--password", PASSWORD,
               "--user-token", token, "--enable-legacy-api-token"]
        out = open(log_path, "ab")
        try:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(data_dir),
                                    start_new_session=True)
        finally:
            out.close()

    def _template(self, exe: Path) -> tuple[Path, str]:
        """A migrated data dir with the test user (made once, then reused); returns (dir, token)."""
        template = exe.parent.parent / "autolabel-template-data"
        meta = template / "autolabel-template.json"
        with open(exe.parent.parent / ".autolabel-template.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if meta.exists():
                return template, json.loads(meta.read_text())["token"]
            shutil.rmtree(template, ignore_errors=True)
            template.mkdir(parents=True)
            token = secrets.token_hex(20)
            port = free_port()
            log = template / "first-start.log"
            proc = self._spawn(exe, template, token, port, log)
            try:
                wait_http(f"http://127.0.0.1:{port}/health", FIRST_START_TIMEOUT_S, proc, log)
                resp = httpx.get(f"http://127.0.0.1:{port}/api/current-user/whoami",
                                 headers={"Authorization": f"Token {token}"}, timeout=30)
                if resp.status_code != 200:
                    raise LabelStudioHarnessError(f"token refused by fresh Label Studio ({resp.status_code}); "
                                                  f"see {log}")
            finally:
                stop_process_group(proc)
            meta.write_text(json.dumps({"token": token, "version": LS_VERSION}))
            return template, token

    def start(self) -> "LabelStudioServer":
        exe = ensure_installed()
        template, token = self._template(exe)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for item in template.iterdir():
            if item.name.endswith(".log") or item.name == "autolabel-template.json":
                continue
            dest = self.data_dir / item.name
            if item.is_dir():
                shutil.copytree(item, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(item, dest)
        self.token = token
        self.proc = self._spawn(exe, self.data_dir, token, self.port, self.log_path)
        try:
            wait_http(f"{self.url}/health", START_TIMEOUT_S, self.proc, self.log_path)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None
        if self._own_dir and os.environ.get("AUTOLABEL_KEEP_LS_DATA") != "1":
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "LabelStudioServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def client(self):
        """An :class:`autolabel.lsclient.LabelStudio` for this server."""
        from autolabel.lsclient import LabelStudio

        return LabelStudio(self.url, self.token)


_SHARED: LabelStudioServer | None = None


def shared_server(documents_root: Path | None = None) -> LabelStudioServer:
    """One Label Studio for the whole test session (started on first use, stopped at interpreter exit)."""
    global _SHARED
    if _SHARED is None:
        server = LabelStudioServer(documents_root=documents_root)
        server.start()
        atexit.register(server.stop)
        _SHARED = server
    return _SHARED


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.labelstudio.ls_server install|serve``: pre-install, or run one until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["install", "serve"])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--documents-root", type=Path, default=None, help="LOCAL_FILES_DOCUMENT_ROOT")
    args = parser.parse_args(argv)
    if args.action == "install":
        print(ensure_installed())
        return 0
    server = LabelStudioServer(documents_root=args.documents_root, port=args.port).start()
    print(json.dumps({"url": server.url, "token": server.token, "pid": server.proc.pid if server.proc else None,
                      "data_dir": str(server.data_dir)}), flush=True)
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
