"""The autolabel store on real SQLite files: migrations, pragmas, repository functions, cache codec and
several processes writing at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from autolabel.detections import Detections
from autolabel.store import (
    Store, current_revision, default_db_path, detections_from_json, downgrade_db, detections_to_json, make_engine,
    resolve_db_url, sqlite_url, upgrade_db,
)
from autolabel.store import repository as repo
from autolabel.store.models import AnnotationEvent, Base, Job, Prediction

REPO = Path(__file__).resolve().parents[1]
TABLES = {"projects", "images", "image_sources", "tasks", "predictions", "annotations", "annotation_events",
          "model_versions", "jobs"}


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(sqlite_url(tmp_path / "store.sqlite"))
    yield s
    s.close()


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ schema, set-up
def test_migrations_build_the_models_schema_and_are_idempotent(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    url = sqlite_url(tmp_path / "m.sqlite")
    assert current_revision(url) is None
    upgrade_db(url)
    upgrade_db(url)
    assert current_revision(url) == "0001"
    engine = make_engine(url)
    with engine.connect() as conn:
        assert TABLES <= set(inspect(conn).get_table_names())
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_downgrade_to_base_removes_every_table(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "d.sqlite")
    upgrade_db(url)
    downgrade_db(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_sqlite_pragmas(store: Store) -> None:
    with store.read() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert s.execute(text("PRAGMA busy_timeout")).scalar() >= 10_000


def test_foreign_keys_are_enforced(store: Store) -> None:
    with pytest.raises(IntegrityError):
        with store.write() as s:
            s.add(Prediction(image_id=12345, model_version="v", regions={}, score=0.0))


def test_db_url_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOLABEL_DB_URL", "postgresql+psycopg://u:p@db/autolabel")
    assert resolve_db_url() == "postgresql+psycopg://u:p@db/autolabel"
    assert resolve_db_url("sqlite:///x.sqlite") == "sqlite:///x.sqlite"
    monkeypatch.delenv("AUTOLABEL_DB_URL")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    url = resolve_db_url()
    assert url == f"sqlite:///{default_db_path()}"
    assert default_db_path() == tmp_path / "xdg" / "autolabel" / "autolabel.sqlite"
    assert default_db_path().parent.is_dir()


# ---------------------------------------------------------------------------------------------- projects
def test_projects_upsert_and_lookup_by_numeric_id(store: Store) -> None:
    with store.write() as s:
        p = repo.upsert_project(s, "7.1700000000", label_config="<View/>", hostname="http://ls:8080",
                                access_token="tok", method="tokencut")
        assert p.ls_project_id == 7
    with store.write() as s:
        repo.upsert_project(s, "7.1700000000", label_config="<View><Image/></View>")
    with store.read() as s:
        p = repo.get_project(s, "7.1700000000")
        assert p.label_config == "<View><Image/></View>" and p.hostname == "http://ls:8080"
        assert p.access_token == "tok" and p.method == "tokencut"
        assert repo.get_project(s, 7).id == p.id
        assert repo.get_project(s, "7").id == p.id
        assert repo.get_project(s, "8.1") is None
        assert repo.get_project(s, "not-a-number") is None


# ------------------------------------------------------------------------------------ images, cache, codec
def _detections() -> Detections:
    masks = np.zeros((2, 30, 40), bool)
    masks[0, 5:15, 10:30] = True
    masks[1, 20:28, 2:9] = True
    desc = np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)
    return Detections.from_masks(masks, [0.9, 0.4], descriptors=desc, labels=["a", "b"])


def test_codec_round_trip_keeps_boxes_masks_descriptors_labels() -> None:
    det = _detections()
    det.meta["timings"] = {"backbone": np.float64(0.25)}
    back = detections_from_json(detections_to_json(det))
    assert back.image_size == det.image_size
    np.testing.assert_allclose(back.xyxy, det.xyxy, atol=1e-3)
    np.testing.assert_allclose(back.scores, det.scores, atol=1e-6)
    assert np.array_equal(back.masks, det.masks)
    np.testing.assert_array_equal(back.descriptors, det.descriptors)
    assert back.labels == ["a", "b"] and back.meta["timings"]["backbone"] == 0.25
    empty = detections_from_json(detections_to_json(Detections.empty((10, 12))))
    assert len(empty) == 0 and empty.masks.shape == (0, 10, 12)
    with pytest.raises(ValueError):
        detections_from_json({"codec": 99})


def test_prediction_cache_is_unique_per_image_and_version(store: Store) -> None:
    record = detections_to_json(_detections())
    with store.write() as s:
        img = repo.get_or_create_image(s, "ab" * 32, width=40, height=30, num_bytes=100)
        assert repo.get_or_create_image(s, "ab" * 32).id == img.id
        first = repo.put_prediction(s, img, "v1", record, score=0.65, method="tokencut")
        again = repo.put_prediction(s, img, "v1", {"other": 1}, score=0.1)
        assert again.id == first.id and again.regions == record
        repo.put_prediction(s, img, "v2", record, score=0.65)
        repo.remember_source(s, "http://ls/data/upload/1/a.jpg", img)
    with store.read() as s:
        assert repo.get_cached_prediction(s, "ab" * 32, "v1").score == pytest.approx(0.65)
        assert repo.get_cached_prediction(s, "ab" * 32, "v3") is None
        assert repo.get_cached_prediction(s, "cd" * 32, "v1") is None
        assert repo.count_predictions(s) == 2 and repo.count_predictions(s, "v2") == 1
        assert repo.lookup_source(s, "http://ls/data/upload/1/a.jpg").sha256 == "ab" * 32
        assert repo.lookup_source(s, "http://ls/data/upload/1/b.jpg") is None
    with pytest.raises(IntegrityError):
        with store.write() as s:
            s.add(Prediction(image_id=img.id, model_version="v1", regions={}, score=0.0))


def test_source_moves_to_new_content(store: Store) -> None:
    with store.write() as s:
        a = repo.get_or_create_image(s, "a" * 64)
        b = repo.get_or_create_image(s, "b" * 64)
        repo.remember_source(s, "http://x/img.jpg", a)
        repo.remember_source(s, "http://x/img.jpg", b)
    with store.read() as s:
        assert repo.lookup_source(s, "http://x/img.jpg").sha256 == "b" * 64


def test_tasks_upsert(store: Store) -> None:
    with store.write() as s:
        p = repo.upsert_project(s, "1.5")
        img = repo.get_or_create_image(s, "c" * 64)
        t1 = repo.upsert_task(s, p, 10, source="/data/upload/1/a.jpg")
        t2 = repo.upsert_task(s, p, 10, image=img)
        assert t1.id == t2.id and t2.source == "/data/upload/1/a.jpg" and t2.image_id == img.id
        assert repo.upsert_task(s, None, 10).id != t1.id


# ------------------------------------------------------------------------------------------- annotations
def test_annotation_history_keeps_every_event(store: Store) -> None:
    with store.write() as s:
        repo.upsert_project(s, "3.1700")
    steps = [("ANNOTATION_CREATED", [{"v": 1}]), ("ANNOTATION_UPDATED", [{"v": 2}]), ("ANNOTATION_DELETED", None)]
    for action, result in steps:
        with store.write() as s:
            repo.record_annotation_event(s, action, {"id": 55, "result": result}, task={"id": 9}, ls_project=3,
                                         payload={"action": action})
    with store.read() as s:
        ann = repo.get_annotation(s, 55)
        assert ann.state == "deleted" and ann.deleted_at is not None
        assert ann.result == [{"v": 2}] and ann.ls_task_id == 9
        assert repo.get_project(s, "3.1700").id == ann.project_id  # webhook's numeric id → known project
        assert [e.action for e in ann.events] == [a for a, _ in steps]
        assert [e.result for e in ann.events] == [r for _, r in steps]
        assert repo.list_annotations(s) == []
        assert [a.ls_annotation_id for a in repo.list_annotations(s, "3.1700", include_deleted=True)] == [55]


def test_annotation_update_before_create_and_bad_events(store: Store) -> None:
    with store.write() as s:
        repo.record_annotation_event(s, "ANNOTATION_UPDATED", {"id": 1, "result": [1], "task": 4})
        repo.record_annotation_event(s, "ANNOTATION_CREATED", {"id": 1, "result": [2]})
    with store.read() as s:
        ann = repo.get_annotation(s, 1)
        assert ann.state == "created" and ann.result == [2] and ann.ls_task_id == 4
        assert len(s.scalars(select(AnnotationEvent)).all()) == 2
    with store.write() as s:
        with pytest.raises(ValueError, match="unknown annotation action"):
            repo.record_annotation_event(s, "ANNOTATION_EXPLODED", {"id": 2})
        with pytest.raises(ValueError, match="integer 'id'"):
            repo.record_annotation_event(s, "ANNOTATION_CREATED", {"result": []})


# ---------------------------------------------------------------------------------- model versions, jobs
def test_model_versions(store: Store) -> None:
    with store.write() as s:
        repo.ensure_model_version(s, "v-a", backbone="dino-vits16", method="tokencut")
        repo.ensure_model_version(s, "v-b", backbone="dino-vits8", method="lost", metrics={"ap50": 0.5})
        repo.ensure_model_version(s, "v-a", detector_checkpoint="/ckpt.pt")
    with store.read() as s:
        versions = repo.list_model_versions(s)
        assert [v.name for v in versions] == ["v-a", "v-b"]
        assert versions[0].detector_checkpoint == "/ckpt.pt" and versions[0].backbone == "dino-vits16"
        assert repo.latest_model_version(s).name == "v-b"
        assert repo.latest_model_version(s, method="tokencut").name == "v-a"
        assert repo.latest_model_version(s, backbone="nope") is None


def test_job_lifecycle(store: Store) -> None:
    with store.write() as s:
        a = repo.create_job(s, "prelabel", params={"project": 1}, total=4).id
        b = repo.create_job(s, "prelabel").id
        c = repo.create_job(s, "train").id
    with store.write() as s:
        job = repo.claim_next_job(s, "prelabel", worker="w1")
        assert job.id == a and job.status == "running" and job.worker == "w1"
        repo.update_job_progress(s, a, done=1)
        assert repo.get_job(s, a).progress == pytest.approx(0.25)
        repo.update_job_progress(s, a, done=4, message="all done")
        repo.finish_job(s, a, result={"predicted": 4})
        assert repo.claim_next_job(s, "prelabel", worker="w2").id == b
        assert repo.claim_next_job(s, "prelabel") is None
        repo.fail_job(s, b, "boom")
        repo.cancel_job(s, c)
    with store.read() as s:
        got = {j.id: repo.job_to_dict(j) for j in repo.list_jobs(s)}
        assert got[a]["status"] == "done" and got[a]["result"] == {"predicted": 4} and got[a]["progress"] == 1.0
        assert got[b]["status"] == "failed" and got[b]["error"] == "boom"
        assert got[c]["status"] == "cancelled" and got[c]["finished_at"].endswith("+00:00")
        assert [j.id for j in repo.list_jobs(s, kind="prelabel", status="failed")] == [b]
    with store.write() as s:
        with pytest.raises(KeyError, match="job 999"):
            repo.finish_job(s, 999)


def test_stale_running_jobs_are_requeued(store: Store) -> None:
    from datetime import datetime, timedelta, timezone

    with store.write() as s:
        old = repo.create_job(s, "prelabel").id
        fresh = repo.create_job(s, "prelabel").id
        repo.start_job(s, old, worker="dead:1")
        repo.start_job(s, fresh, worker="alive:2")
        s.get(Job, old).heartbeat_at = datetime.now(timezone.utc) - timedelta(minutes=10)
    with store.write() as s:
        assert repo.requeue_stale_jobs(s, 60) == [old]
    with store.read() as s:
        assert s.get(Job, old).status == "queued" and s.get(Job, fresh).status == "running"


# ------------------------------------------------------------------------------------ several processes
def _run_processes(script: Path, args: list[str]) -> list[str]:
    procs = [subprocess.Popen([sys.executable, str(script), a], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in args]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        outs.append(out.strip())
    return outs


def test_concurrent_migrations_from_several_processes(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "race.sqlite")
    script = tmp_path / "migrate.py"
    script.write_text(f"from autolabel.store import Store, current_revision\nStore({url!r}).close()\n"
                      f"print(current_revision({url!r}))\n")
    assert _run_processes(script, ["a", "b", "c", "d"]) == ["0001"] * 4


def test_several_processes_write_and_claim_jobs_at_once(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "multi.sqlite")
    store = Store(url)
    with store.write() as s:
        for _ in range(60):
            repo.create_job(s, "prelabel")
    writer = f"""
        import sys
        from autolabel.store import Store
        from autolabel.store import repository as repo
        n = int(sys.argv[1])
        store = Store({url!r})
        claimed = 0
        for i in range(40):
            with store.write() as s:
                repo.record_annotation_event(s, "ANNOTATION_CREATED", {{"id": n * 1000 + i, "result": [i]}},
                                             task={{"id": i}}, ls_project="1.1")
                img = repo.get_or_create_image(s, f"{{i:064d}}")
                repo.put_prediction(s, img, "v", {{"by": n}}, score=0.5)
            with store.write() as s:
                job = repo.claim_next_job(s, "prelabel", worker=str(n))
                if job is not None:
                    repo.finish_job(s, job.id, result={{"by": n}})
                    claimed += 1
        print(claimed)
    """
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(writer))
    claimed = [int(x) for x in _run_processes(script, ["0", "1", "2", "3"])]
    assert sum(claimed) == 60
    with store.read() as s:
        assert len(repo.list_annotations(s)) == 160
        assert len(s.scalars(select(AnnotationEvent)).all()) == 160
        assert repo.count_predictions(s) == 40  # one per content hash: the first writer won each race
        jobs = repo.list_jobs(s, limit=1000)
        assert len(jobs) == 60 and {j.status for j in jobs} == {"done"}
        assert sorted(claimed) == sorted(sum(1 for j in jobs if j.worker == str(n)) for n in range(4))
    store.close()


# -------------------------------------------------------------------------------------------- PostgreSQL
PG_URL_ENV = "AUTOLABEL_TEST_PG_URL"


@pytest.fixture()
def pg_url() -> str:
    import os

    url = os.environ.get(PG_URL_ENV)
    if not url:
        pytest.skip(f"set {PG_URL_ENV}=postgresql+psycopg://user@host:port/db to run the PostgreSQL tests")
    pytest.importorskip("psycopg")
    downgrade_db(url)  # start from an empty schema
    yield url
    downgrade_db(url)


def test_postgres_schema_repository_and_concurrent_workers(pg_url: str, tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    script = tmp_path / "migrate.py"
    script.write_text(f"from autolabel.store import Store, current_revision\nStore({pg_url!r}).close()\n"
                      f"print(current_revision({pg_url!r}))\n")
    assert _run_processes(script, ["a", "b", "c"]) == ["0001"] * 3
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    engine.dispose()
    store = Store(pg_url)
    with store.write() as s:
        img = repo.get_or_create_image(s, "e" * 64, width=4, height=3)
        first = repo.put_prediction(s, img, "v", {"a": 1}, score=0.5)
        assert repo.put_prediction(s, img, "v", {"a": 2}).id == first.id
        for _ in range(30):
            repo.create_job(s, "prelabel")
    with store.read() as s:
        assert repo.get_cached_prediction(s, "e" * 64, "v").regions == {"a": 1}
    store.close()
    writer = tmp_path / "writer.py"
    writer.write_text(textwrap.dedent(f"""
        import sys
        from autolabel.store import Store
        from autolabel.store import repository as repo
        n = int(sys.argv[1])
        store = Store({pg_url!r}, migrate=False)
        claimed = 0
        for i in range(20):
            with store.write() as s:
                repo.record_annotation_event(s, "ANNOTATION_UPDATED", {{"id": i, "result": [n]}}, ls_project="2.2")
                img = repo.get_or_create_image(s, f"{{i:064d}}")
                repo.put_prediction(s, img, "v", {{"by": n}})
            with store.write() as s:
                job = repo.claim_next_job(s, "prelabel", worker=str(n))
                if job is not None:
                    repo.finish_job(s, job.id)
                    claimed += 1
        print(claimed)
    """))
    assert sum(int(x) for x in _run_processes(writer, ["0", "1", "2"])) == 30
    store = Store(pg_url, migrate=False)
    with store.read() as s:
        assert len(repo.list_annotations(s)) == 20
        assert len(s.scalars(select(AnnotationEvent)).all()) == 60
        assert repo.count_predictions(s) == 21
    store.close()
