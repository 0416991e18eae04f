"""The ML-backend protocol over real HTTP: uvicorn in a thread, a real SQLite store, a tiny random ViT pipeline
and a Label-Studio-like file server for the task images."""

from __future__ import annotations

import base64
import io
import sqlite3
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from autolabel import masks as mask_utils
from autolabel.pipeline import Pipeline
from autolabel.store import Store, sqlite_url
from autolabel.store import repository as repo
from backend.app import create_app
from backend.fetch import ImageFetcher
from backend.serve import ServerThread
from conftest import make_tiny_backbone, synthetic_object_image
from test_backend_fetch import LEGACY_TOKEN, FileServer

CONFIG = """<View>
  <Image name="img" value="$image"/>
  <RectangleLabels name="box" toName="img"><Label value="Cat"/><Label value="Object"/></RectangleLabels>
  <BrushLabels name="paint" toName="img"><Label value="Stuff"/></BrushLabels>
  <PolygonLabels name="outline" toName="img"><Label value="Shape"/><Label value="thing"/></PolygonLabels>
</View>"""
PROJECT = "4.1700000000"


class CountingPipeline(Pipeline):
    """The real pipeline, counting its calls (to prove cached tasks never reach the backbone)."""

    def __init__(self, *args, fail_on_width: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.fail_on_width = fail_on_width

    def __call__(self, source, name=None):  # noqa: ANN001, ANN204
        self.calls += 1
        det = super().__call__(source, name=name)
        if det.width == self.fail_on_width:
            raise RuntimeError("discovery blew up on this image")
        return det


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)
    return make_tiny_backbone()


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN", "LOCAL_FILES_DOCUMENT_ROOT",
                "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture()
def files(env: None) -> FileServer:
    with FileServer(auth=True) as server:
        server.files["/data/upload/4/a.png"] = png(synthetic_object_image())
        server.files["/data/upload/4/a-copy.png"] = png(synthetic_object_image())
        server.files["/data/upload/4/b.png"] = png(synthetic_object_image(h=90, w=130, box=(20, 20, 70, 60), seed=2))
        server.files["/data/upload/4/corrupt.png"] = b"\x89PNG\r\n\x1a\n but then nothing useful"
        server.files["/data/upload/4/odd.png"] = png(synthetic_object_image(h=40, w=33, box=(5, 5, 20, 20)))
        yield server


class Backend:
    """A running backend plus handles on its pipeline and store."""

    def __init__(self, tmp_path: Path, backbone, load_delay: float = 0.0, fail: bool = False,  # noqa: ANN001
                 basic_auth: tuple[str, str] | None | bool = None, fail_on_width: int | None = None) -> None:
        self.pipeline: CountingPipeline | None = None
        self.db_url = sqlite_url(tmp_path / "backend.sqlite")

        def factory() -> CountingPipeline:
            time.sleep(load_delay)
            if fail:
                raise RuntimeError("weights not found")
            self.pipeline = CountingPipeline("tokencut", backbone=backbone, fail_on_width=fail_on_width)
            return self.pipeline

        self.app = create_app(factory, self.db_url, basic_auth=basic_auth, method="tokencut",
                              fetcher=ImageFetcher(timeout=5), model_wait_s=30)
        self.server = ServerThread(self.app)
        self.store = Store(self.db_url, migrate=False)

    def __enter__(self) -> "Backend":
        self.server.start()
        self.http = httpx.Client(base_url=self.server.url, timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self.server.stop()
        self.store.close()


@pytest.fixture()
def backend(tmp_path: Path, backbone, files: FileServer) -> Backend:  # noqa: ANN001
    with Backend(tmp_path, backbone) as b:
        yield b


def setup_project(b: Backend, files: FileServer, project: str = PROJECT) -> dict:
    r = b.http.post("/setup", json={"project": project, "schema": CONFIG, "hostname": files.url,
                                    "access_token": LEGACY_TOKEN, "extra_params": None})
    assert r.status_code == 200, r.text
    return r.json()


def task(task_id: int, name: str) -> dict:
    return {"id": task_id, "data": {"image": f"/data/upload/4/{name}"}}


# ---------------------------------------------------------------------------------------- health / setup
def test_health_is_fast_while_the_model_loads(tmp_path: Path, backbone, files: FileServer) -> None:  # noqa: ANN001
    with Backend(tmp_path, backbone, load_delay=4.0) as b:
        for path in ("/health", "/"):
            t0 = time.perf_counter()
            r = b.http.get(path)
            assert time.perf_counter() - t0 < 1.0
            assert r.status_code == 200
            assert r.json()["status"] == "UP" and r.json()["model_class"] == "AutolabelDiscovery"
            assert r.json()["model_state"] == "loading"
        t0 = time.perf_counter()
        version = setup_project(b, files)["model_version"]
        assert time.perf_counter() - t0 < 3.0
        assert version  # provisional while loading
        r = b.http.post("/predict", json={"tasks": [task(1, "a.png")], "project": PROJECT})
        assert r.status_code == 200 and len(r.json()["results"][0]["result"]) > 0
        assert b.http.get("/health").json()["model_state"] == "ready"
        assert setup_project(b, files)["model_version"] == b.pipeline.model_version


def test_setup_records_the_project_and_returns_the_model_version(backend: Backend, files: FileServer) -> None:
    assert setup_project(backend, files)["model_version"] == backend.pipeline.model_version
    with backend.store.read() as s:
        project = repo.get_project(s, PROJECT)
        assert project.label_config == CONFIG and project.hostname == files.url
        assert project.access_token == LEGACY_TOKEN and project.method == "tokencut"
    assert backend.http.get("/versions").json() == {"versions": [backend.pipeline.model_version]}
    assert backend.http.get("/metrics").json() == {}


# ---------------------------------------------------------------------------------------------- predict
def test_predict_regions_order_cache_and_bad_tasks(backend: Backend, files: FileServer) -> None:
    version = setup_project(backend, files)["model_version"]
    tasks = [task(1, "a.png"), task(2, "missing.png"), task(3, "b.png"), task(4, "corrupt.png"),
             {"id": 5, "data": {"picture": "/data/upload/4/a.png"}}, "not a task", task(7, "a-copy.png"),
             {"id": 8, "data": {"image": "ftp://x/y.png"}}]
    r = backend.http.post("/predict", json={"tasks": tasks, "project": PROJECT, "label_config": CONFIG,
                                            "params": {"login": None, "password": None, "context": None}})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(tasks)
    assert all(res["model_version"] == version for res in results)
    empty = [i for i, res in enumerate(results) if not res["result"]]
    assert empty == [1, 3, 4, 5, 7]
    assert all(results[i]["score"] == 0 for i in empty)
    # a.png, b.png and corrupt.png (which fails to decode); the same bytes under another URL (task 7) were
    # downloaded but not featurised again
    assert backend.pipeline.calls == 3
    assert results[6]["result"][0]["value"] == results[0]["result"][0]["value"]

    regions = results[0]["result"]
    kinds = {reg["type"] for reg in regions}
    assert kinds == {"rectanglelabels", "brushlabels", "polygonlabels"}
    for reg in regions:
        assert reg["to_name"] == "img"
        assert reg["original_width"] == 160 and reg["original_height"] == 120
        label = reg["value"][reg["type"]]
        assert label == {"rectanglelabels": ["Object"], "brushlabels": ["Stuff"], "polygonlabels": ["thing"]}[
            reg["type"]]
        assert reg["from_name"] == {"rectanglelabels": "box", "brushlabels": "paint",
                                    "polygonlabels": "outline"}[reg["type"]]
    brush = next(reg for reg in regions if reg["type"] == "brushlabels")
    mask = mask_utils.ls_rle_to_mask(brush["value"]["rle"], 120, 160)
    assert mask.any() and brush["value"]["format"] == "rle"
    box = next(reg for reg in regions if reg["type"] == "rectanglelabels")["value"]
    assert 0 <= box["x"] < box["x"] + box["width"] <= 100.0001 and 0 <= box["y"] < box["y"] + box["height"] <= 100.0001
    assert 0 < results[0]["score"] <= 1

    # second call: everything served from the store, the pipeline is not touched, same regions
    downloads = len(files.log)
    r2 = backend.http.post("/predict", json={"tasks": [task(3, "b.png"), task(1, "a.png")], "project": PROJECT})
    assert backend.pipeline.calls == 3
    assert len(files.log) == downloads  # URL → content cache: nothing re-downloaded
    res2 = r2.json()["results"]
    assert [reg["value"] for reg in res2[1]["result"]] == [reg["value"] for reg in results[0]["result"]]
    assert [reg["value"] for reg in res2[0]["result"]] == [reg["value"] for reg in results[2]["result"]]
    with backend.store.read() as s:
        assert repo.count_predictions(s, version) == 2


def test_predict_with_another_config_reuses_the_cache(backend: Backend, files: FileServer,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    setup_project(backend, files)
    backend.http.post("/predict", json={"tasks": [task(1, "a.png")], "project": PROJECT})
    other = ('<View><Image name="photo" value="$url"/><RectangleLabels name="r" toName="photo">'
             '<Label value="Dog"/><Label value="Cat"/></RectangleLabels></View>')
    tasks = [{"id": 9, "data": {"url": "/data/upload/4/a.png"}}]
    r = backend.http.post("/predict", json={"tasks": tasks, "project": "5.1", "label_config": other})
    assert "Label Studio URL unknown" in caplog.text and r.json()["results"][0]["result"] == []
    backend.http.post("/setup", json={"project": "5.1", "schema": other, "hostname": files.url,
                                      "access_token": LEGACY_TOKEN})
    r = backend.http.post("/predict", json={"tasks": tasks, "project": "5.1", "label_config": other})
    assert backend.pipeline.calls == 1
    regions = r.json()["results"][0]["result"]
    assert regions and all(reg["from_name"] == "r" and reg["to_name"] == "photo" for reg in regions)
    assert all(reg["value"]["rectanglelabels"] == ["Dog"] for reg in regions)


def test_one_image_breaking_the_pipeline_does_not_sink_the_batch(tmp_path: Path, backbone,  # noqa: ANN001
                                                                  files: FileServer) -> None:
    with Backend(tmp_path, backbone, fail_on_width=33) as b:
        setup_project(b, files)
        r = b.http.post("/predict", json={"tasks": [task(1, "odd.png"), task(2, "a.png")], "project": PROJECT})
        assert r.status_code == 200
        results = r.json()["results"]
        assert results[0]["result"] == [] and results[1]["result"]


def test_cached_predictions_are_fast(backend: Backend, files: FileServer) -> None:
    setup_project(backend, files)
    body = {"tasks": [task(1, "a.png")], "project": PROJECT}
    backend.http.post("/predict", json=body)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        assert backend.http.post("/predict", json=body).status_code == 200
        times.append(time.perf_counter() - t0)
    p50 = statistics.median(times)
    print(f"cached /predict p50 = {p50 * 1000:.1f} ms")
    assert p50 < 0.05  # the target for a cached task (measured ~5 ms)


def test_concurrent_predicts_and_health(backend: Backend, files: FileServer) -> None:
    setup_project(backend, files)
    results: list[int] = []

    def call(i: int) -> None:
        with httpx.Client(base_url=backend.server.url, timeout=60) as c:
            r = c.post("/predict", json={"tasks": [task(i, "a.png"), task(i + 100, "b.png")], "project": PROJECT})
            results.append(len(r.json()["results"]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    assert backend.http.get("/health").status_code == 200
    assert time.perf_counter() - t0 < 1.0
    for t in threads:
        t.join()
    assert results == [2] * 6
    assert backend.pipeline.calls <= 6 * 2  # and usually 2: identical content is featurised once per race winner


# ------------------------------------------------------------------------------------------ bad requests
@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/predict", b"{not json", 400, "not valid JSON"),
    ("POST", "/predict", b"", 400, "body is empty"),
    ("POST", "/predict", b"[1, 2]", 400, "must be a JSON object"),
    ("POST", "/predict", b'{"project": "4.1700000000"}', 400, "'tasks' is missing"),
    ("POST", "/predict", b'{"tasks": {}}', 400, "non-empty list"),
    ("POST", "/predict", b'{"tasks": [{"id": 1}], "project": "99.1"}', 404, "unknown project '99.1'"),
    ("POST", "/predict", b'{"tasks": [{"id": 1}]}', 400, "no 'label_config' and no 'project'"),
    ("POST", "/predict", b'{"tasks": [{"id": 1}], "label_config": "<View><Text name=\\"t\\" value=\\"$t\\"/></View>"}',
     422, "no <Image>"),
    ("POST", "/predict", b'{"tasks": [{"id": 1}], "label_config": "<View"}', 422, "not well-formed"),
    ("POST", "/setup", b'{"schema": "<View/>"}', 400, "'project' is missing"),
    ("POST", "/setup", b'{"project": "1.1", "schema": "<View><Image name=\\"i\\" value=\\"$i\\"/></View>"}', 422,
     "no RectangleLabels"),
    ("POST", "/setup", b'{"project": "77.1"}', 400, "'schema' is missing and project '77.1' is unknown"),
    ("POST", "/setup", b'{"project": ["x"], "schema": "<View/>"}', 400, "'project' must be a string"),
    ("POST", "/webhook", b'{"annotation": {}}', 400, "'action' is missing"),
    ("POST", "/webhook", b'{"action": "ANNOTATION_CREATED"}', 400, "no 'annotation' object"),
    ("POST", "/webhook", b'{"action": "ANNOTATION_UPDATED", "annotation": {"result": []}}', 400, "integer 'id'"),
    ("GET", "/predict", None, 405, "method GET not allowed"),
    ("GET", "/nowhere", None, 404, "no such endpoint"),
    ("GET", "/jobs/abc", None, 400, "job id must be an integer"),
    ("GET", "/jobs/12345", None, 404, "job 12345 does not exist"),
    ("GET", "/jobs?status=sleeping", None, 400, "unknown job status"),
])
def test_bad_requests_get_clear_4xx_json(backend: Backend, files: FileServer, method: str, path: str,
                                         body: bytes | None, status: int, message: str) -> None:
    setup_project(backend, files)
    r = backend.http.request(method, path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_unexpected_errors_are_500_with_a_message(backend: Backend, files: FileServer, tmp_path: Path) -> None:
    setup_project(backend, files)
    with sqlite3.connect(tmp_path / "backend.sqlite") as conn:
        conn.execute("DROP TABLE annotation_events")
    r = backend.http.post("/webhook", json={"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": []}})
    assert r.status_code == 500
    assert r.json()["error"].startswith("internal error: OperationalError")


def test_model_that_fails_to_load_gives_503(tmp_path: Path, backbone, files: FileServer) -> None:  # noqa: ANN001
    with Backend(tmp_path, backbone, fail=True) as b:
        r = b.http.post("/predict", json={"tasks": [task(1, "a.png")], "label_config": CONFIG})
        assert r.status_code == 503
        assert "model failed to load: RuntimeError: weights not found" in r.json()["error"]
        health = b.http.get("/health").json()
        assert health["status"] == "UP" and health["model_state"] in ("failed", "loading")


# ------------------------------------------------------------------------------------------------- auth
def test_basic_auth(tmp_path: Path, backbone, files: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.setenv("BASIC_AUTH_PASS", "s3cret")
    with Backend(tmp_path, backbone, basic_auth=True) as b:
        for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()},
                        {"Authorization": "Bearer abc"}, {"Authorization": "Basic %%%"}):
            r = b.http.get("/health", headers=headers)
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"].startswith("Basic")
            assert r.json()["error"]
        assert b.http.get("/health", auth=("ls", "s3cret")).json()["status"] == "UP"
        r = b.http.post("/setup", auth=("ls", "s3cret"), json={"project": PROJECT, "schema": CONFIG})
        assert r.status_code == 200


# ----------------------------------------------------------------------------------------------- webhook
def test_webhook_events_history_and_training_jobs(backend: Backend, files: FileServer) -> None:
    setup_project(backend, files)
    payloads = [
        {"action": "ANNOTATION_CREATED", "annotation": {"id": 31, "result": [{"a": 1}], "task": 1},
         "task": {"id": 1}, "project": {"id": 4}},
        {"action": "ANNOTATION_UPDATED", "annotation": {"id": 31, "result": [{"a": 2}]}, "task": {"id": 1},
         "project": {"id": 4}},
        {"action": "ANNOTATION_DELETED", "annotation": {"id": 31}, "project": {"id": 4}},
    ]
    for p in payloads:
        r = backend.http.post("/webhook", json=p)
        assert r.status_code == 201 and r.json()["status"] == "ok"
    r = backend.http.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 4}})
    assert r.status_code == 201
    job_id = r.json()["job_id"]
    r = backend.http.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 4}})
    assert r.status_code == 200 and r.json() == {"status": "Unknown event"}
    with backend.store.read() as s:
        ann = repo.get_annotation(s, 31)
        assert ann.state == "deleted" and ann.result == [{"a": 2}]
        assert [e.action for e in ann.events] == [p["action"] for p in payloads]
        assert ann.events[0].payload == payloads[0]
        assert ann.project_id == repo.get_project(s, PROJECT).id
    job = backend.http.get(f"/jobs/{job_id}").json()
    assert job["kind"] == "train" and job["status"] == "queued" and job["params"]["ls_project"] == "4"
    assert [j["id"] for j in backend.http.get("/jobs?kind=train").json()["jobs"]] == [job_id]
