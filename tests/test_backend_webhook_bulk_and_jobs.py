"""Proposed tests (lead: move to tests/): bulk annotation webhooks, the app's job runner, webhook-auth matching."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from autolabel.store import Store, sqlite_url
from autolabel.store import repository as repo
from backend.app import create_app
from backend.webhook_auth import basic_auth_header, hooks_of_backends_using, hooks_posting_to


def no_pipeline():
    raise RuntimeError("these tests never load a model")


def make_app(tmp_path: Path, **kwargs):
    return create_app(no_pipeline, sqlite_url(tmp_path / "b.sqlite"), basic_auth=None, load_on_startup=False,
                      **kwargs)


def test_annotations_deleted_plural_is_stored_with_history(tmp_path: Path) -> None:
    app = make_app(tmp_path, run_jobs=False)
    with TestClient(app) as http:
        for ann in (5, 6):
            r = http.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 3},
                                            "annotation": {"id": ann, "task": 9, "result": [{"a": ann}]}})
            assert r.status_code == 201
        r = http.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "project": {"id": 3, "title": "x"},
                                        "annotations": [{"id": 5}, {"id": "bad"}, 7, {"id": 6}]})
        assert r.status_code == 201, r.text
        body = r.json()
        assert len(body["event_ids"]) == 2
        assert body["errors"] == ["annotations[1]: annotation has no integer 'id'", "annotations[2]: not an object"]
        # nothing usable → 400 naming the items; no list → 400
        r = http.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": None}]})
        assert r.status_code == 400 and "annotations[0]" in r.json()["error"]
        r = http.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotation": {"id": 5}})
        assert r.status_code == 400 and "'annotations'" in r.json()["error"]
        # the singular form still works
        r = http.post("/webhook", json={"action": "ANNOTATION_DELETED", "annotation": {"id": 8}})
        assert r.status_code == 201
    store = app.state.backend.store
    with store.read() as s:
        for ann in (5, 6):
            row = repo.get_annotation(s, ann)
            assert row.state == "deleted" and row.result == [{"a": ann}] and row.deleted_at is not None
            assert [e.action for e in row.events] == ["ANNOTATION_CREATED", "ANNOTATION_DELETED"]
            assert row.events[1].payload == {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": ann}],
                                             "project": {"id": 3}}
        assert repo.get_annotation(s, 7) is None
        assert repo.get_annotation(s, 8).state == "deleted"


def test_annotations_created_plural(tmp_path: Path) -> None:
    app = make_app(tmp_path, run_jobs=False)
    with TestClient(app) as http:
        r = http.post("/webhook", json={"action": "ANNOTATIONS_CREATED", "project": {"id": 3},
                                        "annotation": [{"id": 11, "task": 4, "result": []},
                                                       {"id": 12, "task": 5, "result": [{"b": 1}]}],
                                        "task": [{"id": 4}, {"id": 5}]})
        assert r.status_code == 201 and len(r.json()["event_ids"]) == 2
    with app.state.backend.store.read() as s:
        row = repo.get_annotation(s, 12)
        assert row.state == "created" and row.ls_task_id == 5 and row.result == [{"b": 1}]


def _queue_bad_prelabel_job(store: Store) -> int:
    with store.write() as s:
        return repo.create_job(s, "prelabel", params={"project": 1}).id


def _status(store: Store, job_id: int) -> str:
    with store.read() as s:
        return repo.get_job(s, job_id).status


@pytest.mark.parametrize("env_value", ["0", "off"])
def test_job_runner_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_value: str) -> None:
    monkeypatch.setenv("AUTOLABEL_RUN_JOBS", env_value)
    app = make_app(tmp_path)
    store = app.state.backend.store
    job_id = _queue_bad_prelabel_job(store)
    with TestClient(app):
        assert app.state.job_runner is None
        time.sleep(0.5)
        assert _status(store, job_id) == "queued"


def test_app_runs_queued_prelabel_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOLABEL_RUN_JOBS", raising=False)
    app = make_app(tmp_path)
    store = app.state.backend.store
    job_id = _queue_bad_prelabel_job(store)
    with TestClient(app):
        runner = app.state.job_runner
        assert runner is not None and runner.alive
        deadline = time.monotonic() + 20
        while _status(store, job_id) == "queued" and time.monotonic() < deadline:
            time.sleep(0.1)
        with store.read() as s:
            job = repo.get_job(s, job_id)
            assert job.status == "failed" and "ls_url" in job.error and "token" in job.error
    assert not runner.alive  # stopped with the app


def test_webhook_matching() -> None:
    hooks = [{"id": 1, "url": "http://127.0.0.1:9090/webhook"},
             {"id": 2, "url": "https://Backend.example:443/webhook/"},
             {"id": 3, "url": "http://127.0.0.1:9091/webhook"},
             {"id": 4, "url": "http://127.0.0.1:9090/other"},
             {"id": 5, "url": "http://proxy.example/autolabel/webhook"}]
    assert [h["id"] for h in hooks_posting_to(hooks, ["127.0.0.1:9090"])] == [1]
    assert [h["id"] for h in hooks_posting_to(hooks, ["backend.example"])] == [2]
    assert [h["id"] for h in hooks_posting_to(hooks, ["proxy.example"], "/autolabel/webhook")] == [5]
    assert hooks_posting_to(hooks, ["elsewhere:1"]) == []
    backends = [{"url": "http://proxy.example/autolabel/", "auth_method": "BASIC_AUTH", "basic_auth_user": "me"},
                {"url": "http://127.0.0.1:9091", "auth_method": "NONE", "basic_auth_user": "me"}]
    assert [h["id"] for h in hooks_of_backends_using(hooks, backends, "me")] == [5]
    assert hooks_of_backends_using(hooks, backends, "someone") == []
    two = backends + [{"url": "http://127.0.0.1:9090", "auth_method": "BASIC_AUTH", "basic_auth_user": "me"}]
    assert hooks_of_backends_using(hooks, two, "me") == []  # ambiguous: touch nothing
    assert basic_auth_header("u", "p") == "Basic dTpw"
