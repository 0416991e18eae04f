"""Prelabel jobs against a real Label Studio: skipping, bad tasks, and crash-resume (kill -9, restart).

The crash tests kill the process running the job with SIGKILL part-way through — first the ``autolabel
prelabel`` command, then the backend (``autolabel serve``) whose job runner runs queued jobs — restart it,
and require that in Label Studio every task ends with exactly one prediction for the model version.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from autolabel.lsclient import LabelStudio
from autolabel.prelabel import PrelabelParams, enqueue_prelabel, run_prelabel_job
from autolabel.store import Store
from autolabel.store import repository as repo
from tests.labelstudio.backend_server import BackendProcess
from tests.labelstudio.fixtures import label_studio, ls_client, shared_images  # noqa: F401 - fixtures
from tests.labelstudio.ls_server import REPO_ROOT, stop_process_group

CONFIG = """<View><Image name="image" value="$image"/>
  <RectangleLabels name="objects" toName="image"><Label value="Object"/></RectangleLabels>
  <PolygonLabels name="shapes" toName="image"><Label value="Shape"/></PolygonLabels></View>"""
N_TASKS = 10
MAX_SIZE = 224
BACKBONE = "imgfocus-vits14"


def new_project(ls: LabelStudio, title: str, images: list[Path]) -> int:
    pid = ls.create_project(title, CONFIG)["id"]
    assert ls.import_files(pid, images)["task_count"] == len(images)
    return pid


def versions_per_task(ls: LabelStudio, pid: int) -> dict[int, Counter]:
    """Task id → Counter of model versions of its predictions (counted one by one, duplicates visible)."""
    return {tid: Counter(p["model_version"] for p in ls.list_predictions(task=tid)) for tid in ls.task_ids(pid)}


def prediction_count(ls: LabelStudio, pid: int) -> int:
    return len(ls.list_predictions(project=pid))


def assert_exactly_one_each(ls: LabelStudio, pid: int, version: str) -> None:
    per_task = versions_per_task(ls, pid)
    bad = {tid: dict(c) for tid, c in per_task.items() if c.get(version, 0) != 1}
    assert not bad, f"tasks without exactly one prediction of {version}: {bad}"


def cli_env(db_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AUTOLABEL_DB_URL=db_url, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def wait_until(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture()
def store(tmp_path: Path):
    s = Store(f"sqlite:///{tmp_path / 'prelabel.sqlite'}")
    yield s
    s.close()


@pytest.mark.e2e
@pytest.mark.slow
def test_skips_done_tasks_and_reports_bad_ones(ls_client: LabelStudio, label_studio, store: Store) -> None:  # noqa: F811
    images = shared_images(3)
    pid = new_project(ls_client, "prelabel skip", images)
    ls_client.import_tasks(pid, [{"image": "/data/upload/999/missing.jpg"}])
    params = PrelabelParams(label_studio.url, label_studio.token, pid, backbone=BACKBONE, max_size=MAX_SIZE, batch=2)
    first = run_prelabel_job(enqueue_prelabel(store, params), store=store)
    version = first["model_version"]
    assert (first["total"], first["posted"], first["skipped"], first["failed"]) == (4, 3, 0, 1)
    assert "missing.jpg" in first["errors"][0] and "HTTP" in first["errors"][0]  # LS 1.23.2 answers 500

    # a second job posts nothing new: tasks with a prediction of this version are skipped
    job_id = enqueue_prelabel(store, params)
    second = run_prelabel_job(job_id, store=store)
    assert (second["posted"], second["skipped"], second["failed"]) == (0, 3, 1)
    with store.read() as s:
        job = repo.get_job(s, job_id)
        assert job.status == "done" and job.done == 4 and job.total == 4 and job.progress == 1.0
        assert job.params["token"] == label_studio.token
    per_task = versions_per_task(ls_client, pid)
    assert sorted(c.get(version, 0) for c in per_task.values()) == [0, 1, 1, 1]


@pytest.mark.e2e
@pytest.mark.slow
def test_bad_project_fails_the_job_with_reason(label_studio, store: Store) -> None:  # noqa: F811
    from autolabel.prelabel import PrelabelError

    params = PrelabelParams(label_studio.url, label_studio.token, 98765, backbone=BACKBONE, max_size=MAX_SIZE)
    job_id = enqueue_prelabel(store, params)
    with pytest.raises(PrelabelError, match="98765"):
        run_prelabel_job(job_id, store=store)
    with store.read() as s:
        job = repo.get_job(s, job_id)
        assert job.status == "failed" and "98765" in job.error


@pytest.mark.e2e
@pytest.mark.slow
def test_cli_killed_mid_job_resumes(ls_client: LabelStudio, label_studio, tmp_path: Path) -> None:  # noqa: F811
    images = shared_images(N_TASKS)
    pid = new_project(ls_client, "prelabel cli crash", images)
    db_url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    cmd = [sys.executable, "-m", "autolabel.cli", "prelabel", "--ls-url", label_studio.url, "--token",
           label_studio.token, "--project", str(pid), "--backbone", BACKBONE, "--max-size", str(MAX_SIZE),
           "--batch", "2", "--db", db_url]
    log = open(tmp_path / "prelabel-1.log", "wb")
    proc = subprocess.Popen(cmd, env=cli_env(db_url), stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                            start_new_session=True)
    try:
        wait_until(lambda: prediction_count(ls_client, pid) >= 3 or proc.poll() is not None, 240,
                   "the first predictions")
        log_text = (tmp_path / "prelabel-1.log").read_text()[-2000:]
        assert proc.poll() is None, f"prelabel finished before it could be killed: {log_text}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_process_group(proc)
        log.close()
    killed_at = prediction_count(ls_client, pid)
    assert 3 <= killed_at < N_TASKS

    store = Store(db_url, migrate=False)
    with store.read() as s:
        job = repo.list_jobs(s, kind="prelabel")[0]
        assert job.status == "running"  # a killed worker cannot mark its job
        job_id = job.id
    resumed = subprocess.run(cmd + ["--job", str(job_id)], env=cli_env(db_url), cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with store.read() as s:
        job = repo.get_job(s, job_id)
        assert job.status == "done", job.error
        result = dict(job.result)
    store.close()
    assert result["skipped"] >= killed_at and result["posted"] + result["skipped"] == N_TASKS
    assert_exactly_one_each(ls_client, pid, result["model_version"])


@pytest.mark.e2e
@pytest.mark.slow
def test_backend_killed_mid_job_resumes_after_restart(ls_client: LabelStudio, label_studio,  # noqa: F811
                                                       tmp_path: Path) -> None:
    images = shared_images(N_TASKS)
    pid = new_project(ls_client, "prelabel backend crash", images)
    backend = BackendProcess(tmp_path / "backend.sqlite", workers=1, max_size=MAX_SIZE)
    backend.start()
    try:
        queued = subprocess.run(
            [sys.executable, "-m", "autolabel.cli", "prelabel", "--ls-url", label_studio.url, "--token",
             label_studio.token, "--project", str(pid), "--batch", "2", "--db", backend.db_url, "--queue"],
            env=cli_env(backend.db_url), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert queued.returncode == 0, queued.stderr[-2000:]
        job_id = int(queued.stdout.strip().splitlines()[-1])
        store = Store(backend.db_url, migrate=False)

        def job_status() -> str:
            with store.read() as s:
                return repo.get_job(s, job_id).status

        wait_until(lambda: job_status() != "queued", 30, "the backend's job runner to claim the queued job")
        wait_until(lambda: prediction_count(ls_client, pid) >= 3, 240, "the job's first predictions")
        backend.kill()
        killed_at = prediction_count(ls_client, pid)
        assert killed_at < N_TASKS, "the job finished before the backend could be killed"

        backend.start()

        def finished():
            with store.read() as s:
                job = repo.job_to_dict(repo.get_job(s, job_id))
                return job if job["status"] in ("done", "failed") else None

        job = wait_until(finished, 300, f"job {job_id} to finish after the restart", interval=0.5)
        store.close()
        assert job["status"] == "done", job["error"]
        result = dict(job["result"])
    finally:
        backend.stop()
    assert result["posted"] + result["skipped"] == N_TASKS and result["skipped"] >= killed_at
    assert_exactly_one_each(ls_client, pid, result["model_version"])


# ------------------------------------------------------------------------------ job runner (no Label Studio)
def _running_job(store: Store, worker: str, age_s: float = 0.0) -> int:
    from datetime import timedelta

    with store.write() as s:
        job = repo.create_job(s, "prelabel", params={"ls_url": "http://127.0.0.1:9", "token": "t", "project": 1})
        job.status, job.worker = "running", worker
        job.heartbeat_at = repo.utcnow() - timedelta(seconds=age_s)
        return job.id


def _status(store: Store, job_id: int) -> str:
    with store.read() as s:
        return repo.get_job(s, job_id).status


def test_orphaned_jobs_are_requeued(store: Store) -> None:
    import socket

    from autolabel.jobrunner import recover_orphaned_jobs

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    host = socket.gethostname()
    dead = _running_job(store, f"{host}:{finished.pid}")
    alive = _running_job(store, f"{host}:{os.getpid()}")
    elsewhere = _running_job(store, "other-host:1")
    silent = _running_job(store, "other-host:2", age_s=3600)
    assert sorted(recover_orphaned_jobs(store, ["prelabel"], stale_after_s=600)) == sorted([dead, silent])
    assert [_status(store, j) for j in (dead, alive, elsewhere, silent)] == ["queued", "running", "running", "queued"]


def test_runner_runs_queued_jobs_and_marks_a_crashing_handler_failed(store: Store) -> None:
    import threading

    from autolabel.jobrunner import JobRunner

    seen: list[int] = []

    def handler(job_id: int, stop: threading.Event) -> None:
        seen.append(job_id)
        if len(seen) == 2:
            raise RuntimeError("boom")
        with store.write() as s:
            repo.finish_job(s, job_id)

    with store.write() as s:
        first = repo.create_job(s, "prelabel").id
        second = repo.create_job(s, "prelabel").id
        other = repo.create_job(s, "train").id
    runner = JobRunner(store, {"prelabel": handler}, poll_s=0.05).start()
    try:
        wait_until(lambda: len(seen) == 2 and runner.current_job is None, 20, "both jobs to run")
    finally:
        runner.stop()
    assert seen == [first, second]
    with store.read() as s:
        assert repo.get_job(s, first).status == "done"
        failed = repo.get_job(s, second)
        assert failed.status == "failed" and "boom" in failed.error
        assert repo.get_job(s, other).status == "queued"  # no handler for 'train'


def test_job_owned_by_a_live_worker_is_not_run_twice(store: Store) -> None:
    import socket

    from autolabel.prelabel import PrelabelError

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        job_id = _running_job(store, f"{socket.gethostname()}:{sleeper.pid}")
        with pytest.raises(PrelabelError, match="not running it twice"):
            run_prelabel_job(job_id, store=store)
        assert _status(store, job_id) == "running"
    finally:
        sleeper.kill()
        sleeper.wait()
