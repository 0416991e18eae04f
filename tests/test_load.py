"""Load test of the real backend (``autolabel serve --workers 2`` on a SQLite file).

8 client threads hit ``/predict`` (tasks whose predictions are cached) and ``/webhook`` (annotation events with
unique ids) for ``AUTOLABEL_LOAD_SECONDS`` (default 60) seconds. Afterwards: no 5xx and no transport error,
every event answered 201 and stored exactly once, the database passes SQLite's integrity and foreign-key checks
and its row counts match what was sent.
"""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
import statistics
import threading
import time
from collections import Counter, defaultdict

import httpx
import pytest

from tests.labelstudio.backend_server import BackendProcess
from tests.labelstudio.fixtures import shared_images, shared_root

pytestmark = [pytest.mark.slow]

CONFIG = """<View><Image name="img" value="$image"/>
  <RectangleLabels name="box" toName="img"><Label value="Object"/></RectangleLabels>
  <BrushLabels name="paint" toName="img"><Label value="Object"/></BrushLabels></View>"""
CLIENTS = 8
N_IMAGES = 4
LS_PROJECT = "7.1700000000"


def load_seconds() -> float:
    return float(os.environ.get("AUTOLABEL_LOAD_SECONDS", "60"))


class Tally:
    """Thread-safe record of what the clients sent and got back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.errors: list[str] = []
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.events: dict[int, list[str]] = defaultdict(list)  # annotation id → actions answered 201
        self.predict_results: dict[int, set[str]] = defaultdict(set)  # task id → distinct result JSON

    def add(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.statuses[(endpoint, status)] += 1
            self.latency[endpoint].append(seconds)


def client_loop(backend: BackendProcess, tasks: list[dict], ids: itertools.count, stop_at: float,
                tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    with backend.client(timeout=60.0) as http:
        while time.monotonic() < stop_at:
            try:
                if rng.random() < 0.5:
                    batch = rng.sample(tasks, rng.randint(1, len(tasks)))
                    t0 = time.perf_counter()
                    resp = http.post("/predict", json={"tasks": batch, "project": LS_PROJECT, "label_config": CONFIG})
                    tally.add("predict", resp.status_code, time.perf_counter() - t0)
                    if resp.status_code == 200:
                        results = resp.json()["results"]
                        with tally.lock:
                            for task, res in zip(batch, results, strict=True):
                                regions = [{k: v for k, v in r.items() if k != "id"} for r in res["result"]]
                                tally.predict_results[task["id"]].add(repr(regions))
                else:
                    ann_id = next(ids)
                    task = rng.choice(tasks)
                    actions = ["ANNOTATION_CREATED"] + (["ANNOTATION_UPDATED"] if rng.random() < 0.5 else [])
                    for step, action in enumerate(actions):
                        body = {"action": action, "project": {"id": int(LS_PROJECT.split(".")[0])},
                                "task": {"id": task["id"], "data": task["data"]},
                                "annotation": {"id": ann_id, "task": task["id"],
                                               "result": [{"from_name": "box", "to_name": "img", "type":
                                                           "rectanglelabels", "value": {"x": step, "y": 1,
                                                           "width": 5, "height": 5,
                                                           "rectanglelabels": ["Object"]}}]}}
                        t0 = time.perf_counter()
                        resp = http.post("/webhook", json=body)
                        tally.add("webhook", resp.status_code, time.perf_counter() - t0)
                        if resp.status_code == 201:
                            with tally.lock:
                                tally.events[ann_id].append(action)
            except httpx.HTTPError as exc:
                with tally.lock:
                    tally.errors.append(f"{type(exc).__name__}: {exc}")


def test_concurrent_predict_and_webhooks(tmp_path) -> None:
    images = shared_images(N_IMAGES)
    root = shared_root() / "data"
    rel = [p.resolve().relative_to(root.resolve()).as_posix() for p in images]
    tasks = [{"id": 1000 + i, "data": {"image": f"/data/local-files/?d={r}"}} for i, r in enumerate(rel)]
    backend = BackendProcess(tmp_path / "load.sqlite", workers=2, max_size=224,
                             env={"LOCAL_FILES_DOCUMENT_ROOT": str(root)})
    backend.start(wait_model=False)
    try:
        with backend.client(timeout=120.0) as http:
            setup = http.post("/setup", json={"project": LS_PROJECT, "schema": CONFIG})
            assert setup.status_code == 200, setup.text
            for task in tasks:  # fill the cache (either worker may answer later; the cache is shared)
                resp = http.post("/predict", json={"tasks": [task], "project": LS_PROJECT, "label_config": CONFIG})
                assert resp.status_code == 200, resp.text
                assert resp.json()["results"][0]["result"], f"no objects for {task}"
            for _ in range(6):  # both workers have loaded their model
                assert http.post("/predict", json={"tasks": tasks[:1], "label_config": CONFIG}).status_code == 200

        tally = Tally()
        ids = itertools.count(1)
        stop_at = time.monotonic() + load_seconds()
        threads = [threading.Thread(target=client_loop, args=(backend, tasks, ids, stop_at, tally, seed))
                   for seed in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(load_seconds() + 180)
        assert not any(t.is_alive() for t in threads), "client threads hang"
    finally:
        backend.stop()

    statuses = dict(tally.statuses)
    summary = {ep: {"n": len(v), "p50_ms": round(1000 * statistics.median(v), 1),
                    "p95_ms": round(1000 * sorted(v)[int(0.95 * (len(v) - 1))], 1)} for ep, v in tally.latency.items()}
    print(f"load: {statuses} {summary}")
    assert not tally.errors, tally.errors[:5]
    assert not [k for k in statuses if k[1] >= 500], statuses
    assert set(statuses) <= {("predict", 200), ("webhook", 201)}, statuses
    assert statuses.get(("predict", 200), 0) > 0 and statuses.get(("webhook", 201), 0) > 0
    # cached predictions are stable: one distinct result per task whichever worker answered
    assert all(len(v) == 1 for v in tally.predict_results.values())

    sent_events = sum(len(v) for v in tally.events.values())
    con = sqlite3.connect(backend.db_path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = dict(con.execute("SELECT ls_annotation_id, id FROM annotations").fetchall())
        assert set(rows) == set(tally.events), "annotation rows differ from the annotation ids sent"
        assert con.execute("SELECT COUNT(*) FROM annotation_events").fetchone()[0] == sent_events
        stored = defaultdict(list)
        for ann_pk, action in con.execute("SELECT annotation_id, action FROM annotation_events ORDER BY id"):
            stored[ann_pk].append(action)
        for ann_id, actions in tally.events.items():
            got = stored[rows[ann_id]]
            assert got == actions, f"annotation {ann_id}: sent {actions}, stored {got}"
        states = dict(con.execute("SELECT ls_annotation_id, state FROM annotations").fetchall())
        assert all(states[a] == ("updated" if len(acts) == 2 else "created") for a, acts in tally.events.items())
        assert con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == N_IMAGES
        assert con.execute("SELECT COUNT(*) FROM images").fetchone()[0] == N_IMAGES
        dup_tasks = con.execute("SELECT project_id, ls_task_id, COUNT(*) FROM tasks GROUP BY project_id, ls_task_id "
                                "HAVING COUNT(*) > 1").fetchall()
        assert dup_tasks == []
        assert con.execute("SELECT COUNT(*) FROM projects WHERE ls_project_id = 7").fetchone()[0] == 1
    finally:
        con.close()
