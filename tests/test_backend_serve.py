"""``autolabel serve`` as a real process: 1 and 2 uvicorn workers, each loading the pipeline once, sharing one
SQLite store; the click command's options."""

from __future__ import annotations

import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from autolabel.store import Store, sqlite_url
from autolabel.store import repository as repo
from backend.serve import serve_command
from conftest import synthetic_object_image

TESTS = Path(__file__).resolve().parent
CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
          '<Label value="Object"/></RectangleLabels></View>')


def tiny_pipeline():  # noqa: ANN201 - imported by the worker processes through AUTOLABEL_PIPELINE_FACTORY
    """The real Pipeline on the tiny random ViT of conftest."""
    import torch

    from autolabel.pipeline import Pipeline
    from conftest import make_tiny_backbone

    torch.set_num_threads(1)
    return Pipeline("tokencut", backbone=make_tiny_backbone())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path: Path, workers: int) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(synthetic_object_image(seed=i)).save(buf, "PNG")
        (images / f"{i}.png").write_bytes(buf.getvalue())
    env = dict(os.environ, AUTOLABEL_PIPELINE_FACTORY="test_backend_serve:tiny_pipeline",
               PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]), LOCAL_FILES_DOCUMENT_ROOT=str(images))
    for var in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        env.pop(var, None)
    db = tmp_path / "serve.sqlite"
    code = (f"from backend.serve import serve; serve('127.0.0.1', {port}, {workers}, db_url={sqlite_url(db)!r}, "
            "method='tokencut', log_level='info')")
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=TESTS.parent, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url, db
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    stop(proc)
    raise AssertionError("server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_workers_load_once_and_share_the_store(tmp_path: Path, workers: int) -> None:
    proc, url, db = start_server(tmp_path, workers)
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            assert http.post("/setup", json={"project": "1.1", "schema": CONFIG}).status_code == 200
            tasks = [{"id": i, "data": {"image": f"/data/local-files/?d={i}.png"}} for i in range(4)]
            # several connections so both workers get requests
            clients = [httpx.Client(base_url=url, timeout=120) for _ in range(4)]
            for _ in range(3):
                for c in clients:
                    r = c.post("/predict", json={"tasks": tasks, "project": "1.1"})
                    assert r.status_code == 200
                    assert all(res["result"] for res in r.json()["results"])
            for c in clients:
                c.close()
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                http.post("/predict", json={"tasks": tasks[:1], "project": "1.1"})
                times.append(time.perf_counter() - t0)
            print(f"workers={workers}: cached /predict p50 {statistics.median(times) * 1000:.1f} ms")
            assert statistics.median(times) < 0.05  # the target for a cached task
            versions = http.get("/versions").json()["versions"]
            assert len(versions) == 1
    finally:
        stop(proc)
    log = (tmp_path / "server.log").read_text()
    assert log.count("loaded in") == workers, log[-3000:]  # once per worker process, never per request
    store = Store(sqlite_url(db), migrate=False)
    with store.read() as s:
        assert repo.count_predictions(s) == 4
        assert repo.get_project(s, "1.1").label_config == CONFIG
    store.close()


def test_serve_command_options() -> None:
    result = CliRunner().invoke(serve_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--workers", "--method", "--backbone", "--db"):
        assert option in result.output
    bad = CliRunner().invoke(serve_command, ["--workers", "0"])
    assert bad.exit_code == 2 and "--workers" in bad.output
