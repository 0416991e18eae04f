"""End to end against a real Label Studio 1.23.2 and the backend as a real subprocess (``autolabel serve``).

A project with RectangleLabels + BrushLabels + PolygonLabels under non-default names is connected with basic
auth; "Retrieve predictions" runs through the Data Manager action; then, through the Label Studio API, every
task must hold exactly one prediction whose names, types and labels match the config, whose boxes and polygons
lie inside the image and whose brush RLE decodes to the mask the store holds. Annotations created, updated and
deleted in Label Studio must reach the store through the webhook, and "train" must record a job.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from autolabel.lsclient import LabelStudio, LabelStudioError
from autolabel.masks import ls_rle_to_mask
from autolabel.store import Store, detections_from_json
from autolabel.store import repository as repo
from tests.labelstudio.backend_server import BackendProcess
from tests.labelstudio.fixtures import label_studio, ls_client, shared_images  # noqa: F401 - fixtures
from tests.labelstudio.ls_server import USERNAME

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FULL_CONFIG = """<View>
  <Image name="img" value="$image" zoom="true"/>
  <RectangleLabels name="box" toName="img"><Label value="Cat"/><Label value="Object"/></RectangleLabels>
  <BrushLabels name="paint" toName="img"><Label value="Foreground"/></BrushLabels>
  <PolygonLabels name="outline" toName="img"><Label value="Region"/><Label value="Other"/></PolygonLabels>
</View>"""
CONTROLS = {"box": ("rectanglelabels", {"Cat", "Object"}), "paint": ("brushlabels", {"Foreground"}),
            "outline": ("polygonlabels", {"Region", "Other"})}
RECT_ONLY_CONFIG = """<View><Image name="photo" value="$picture"/>
  <RectangleLabels name="bbox" toName="photo"><Label value="Thing"/></RectangleLabels></View>"""
NO_IMAGE_CONFIG = """<View><Text name="txt" value="$text"/>
  <Choices name="sentiment" toName="txt"><Choice value="good"/><Choice value="bad"/></Choices></View>"""
N_IMAGES = 6
EPS = 1e-6


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, label_studio):  # noqa: F811 - fixture
    proc = BackendProcess(tmp_path_factory.mktemp("e2e-db") / "autolabel.sqlite", workers=1, max_size=224)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def store(backend: BackendProcess):
    s = Store(backend.db_url, migrate=False)
    yield s
    s.close()


def wait_for(check, timeout: float = 20.0, interval: float = 0.2, what: str = "condition"):
    """Poll ``check()`` until it returns a truthy value; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def check_region(region: dict, controls: dict[str, tuple[str, set[str]]], to_name: str) -> None:
    """A region's names, type, labels and geometry are valid for the config."""
    kind, labels = controls[region["from_name"]]
    assert region["to_name"] == to_name
    assert region["type"] == kind
    value = region["value"]
    assert value[kind] and set(value[kind]) <= labels, (value[kind], labels)
    assert region["original_width"] > 0 and region["original_height"] > 0
    if kind == "rectanglelabels":
        assert -EPS <= value["x"] <= 100 + EPS and -EPS <= value["y"] <= 100 + EPS
        assert value["width"] > 0 and value["height"] > 0
        assert value["x"] + value["width"] <= 100 + EPS and value["y"] + value["height"] <= 100 + EPS
    elif kind == "polygonlabels":
        pts = np.asarray(value["points"], dtype=float)
        assert pts.ndim == 2 and pts.shape[0] >= 3 and pts.shape[1] == 2
        assert pts.min() >= -EPS and pts.max() <= 100 + EPS
    elif kind == "brushlabels":
        assert value["format"] == "rle" and len(value["rle"]) > 0


def test_full_config_predictions_webhooks_and_train(ls_client: LabelStudio, backend: BackendProcess,  # noqa: F811
                                                     store: Store) -> None:
    images = shared_images(N_IMAGES)
    sha_by_name = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in images}
    project = ls_client.create_project("autolabel e2e full", FULL_CONFIG)
    pid = project["id"]
    assert ls_client.import_files(pid, images)["task_count"] == N_IMAGES

    ml = ls_client.add_ml_backend(pid, backend.url, title="autolabel e2e", basic_auth=backend.auth)
    assert ml["state"] == "CO", ml
    version = ml["model_version"]
    assert version.startswith("autolabel-"), version
    assert any(h["url"] == f"{backend.url}/webhook" for h in ls_client.list_webhooks(pid))

    answer = ls_client.retrieve_predictions(pid)
    assert answer["processed_items"] == N_IMAGES

    tasks = ls_client.tasks(pid)
    assert len(tasks) == N_IMAGES
    for task in tasks:
        preds = ls_client.list_predictions(task=task["id"])
        assert len(preds) == 1, f"task {task['id']}: {len(preds)} predictions"
        pred = preds[0]
        assert pred["model_version"] == version
        result = pred["result"]
        assert result, f"task {task['id']} got an empty prediction"
        for region in result:
            check_region(region, CONTROLS, "img")
        by_kind = {k: [r for r in result if r["from_name"] == k] for k in CONTROLS}
        # every object appears once per control: a box, a brush mask and (mostly) a polygon
        assert len(by_kind["box"]) == len(by_kind["paint"]) >= 1
        assert 1 <= len(by_kind["outline"]) <= len(by_kind["box"])
        assert all(r["value"]["rectanglelabels"] == ["Object"] for r in by_kind["box"])

        # the brush RLE decodes to exactly the mask cached in the store for this image content
        file_name = task["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[1]
        with store.read() as s:
            cached = repo.get_cached_prediction(s, sha_by_name[file_name], version)
            assert cached is not None, f"no cached prediction for {file_name}"
            det = detections_from_json(cached.regions)
        assert len(det) == len(by_kind["paint"])
        height, width = det.image_size
        for region, mask in zip(by_kind["paint"], det.masks, strict=True):
            assert (region["original_height"], region["original_width"]) == (height, width)
            decoded = ls_rle_to_mask(region["value"]["rle"], height, width)
            assert np.array_equal(decoded, mask)
        for region, box in zip(by_kind["box"], det.xyxy, strict=True):
            v = region["value"]
            assert v["x"] * width / 100 == pytest.approx(box[0], abs=1e-3)
            assert (v["x"] + v["width"]) * width / 100 == pytest.approx(box[2], abs=1e-3)

    # a second "Retrieve predictions" must not add duplicates for the same model version
    ls_client.retrieve_predictions(pid)
    assert all(len(ls_client.list_predictions(task=t["id"])) == 1 for t in tasks)

    # annotations made in Label Studio reach the store through the webhook
    task_id = tasks[0]["id"]
    first_pred = ls_client.list_predictions(task=task_id)[0]["result"]
    ann = ls_client.create_annotation(task_id, first_pred[:1])

    def stored(state: str):
        with store.read() as s:
            row = repo.get_annotation(s, ann["id"])
            return (row.state, row.ls_task_id, row.result) if row is not None and row.state == state else None

    state, ls_task, result = wait_for(lambda: stored("created"), what="ANNOTATION_CREATED in the store")
    assert ls_task == task_id and result[0]["value"] == first_pred[0]["value"]

    moved = [dict(first_pred[0], value={**first_pred[0]["value"], "x": 1.0, "y": 2.0})]
    ls_client.update_annotation(ann["id"], moved)
    _, _, result = wait_for(lambda: stored("updated"), what="ANNOTATION_UPDATED in the store")
    assert result[0]["value"]["x"] == 1.0 and result[0]["value"]["y"] == 2.0

    ls_client.delete_annotation(ann["id"])
    wait_for(lambda: stored("deleted"), what="ANNOTATION_DELETED in the store")
    with store.read() as s:
        actions = [e.action for e in repo.get_annotation(s, ann["id"]).events]
    # Label Studio 1.23.2 reports deletions as ANNOTATIONS_DELETED {"annotations": [{"id": ...}]}
    assert actions[:2] == ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"] and len(actions) == 3
    assert actions[2] in ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")

    # "train" in Label Studio sends START_TRAINING, which the backend records as a job
    with store.read() as s:
        before = {j.id for j in repo.list_jobs(s, kind="train")}
    ls_client.train_ml_backend(ml["id"])
    with store.read() as s:
        new = [repo.job_to_dict(j) for j in repo.list_jobs(s, kind="train") if j.id not in before]
    assert len(new) == 1 and new[0]["status"] == "queued"
    assert str(new[0]["params"]["ls_project"]).split(".")[0] == str(pid)


def test_webhook_from_ui_connection_passes_basic_auth(ls_client: LabelStudio, backend: BackendProcess,  # noqa: F811
                                                      store: Store) -> None:
    """Connected as the Label Studio UI does it (no webhook patching), annotation events still arrive."""
    project = ls_client.create_project("autolabel e2e ui webhook", RECT_ONLY_CONFIG)
    pid = project["id"]
    ls_client.import_tasks(pid, [{"picture": "/data/upload/none/1.jpg"}])
    ls_client.add_ml_backend(pid, backend.url, basic_auth=backend.auth, webhook_auth=False)
    hook_url = f"{backend.url}/webhook"

    def hook_has_credentials() -> bool:
        hooks = [h for h in ls_client.list_webhooks(pid) if h["url"] == hook_url]
        return bool(hooks) and all("Authorization" in (h.get("headers") or {}) for h in hooks)

    wait_for(hook_has_credentials, timeout=20, what="the backend to add its credentials to LS's webhook")
    ann = ls_client.create_annotation(ls_client.task_ids(pid)[0], [])

    def arrived() -> bool:
        with store.read() as s:
            return repo.get_annotation(s, ann["id"]) is not None

    wait_for(arrived, timeout=10, what="ANNOTATION_CREATED from the UI-registered webhook")


def test_rectangle_only_project_with_local_files(ls_client: LabelStudio, backend: BackendProcess,  # noqa: F811
                                                 label_studio) -> None:  # noqa: F811
    """Another Image name and data key, one control, images served by LS from local files."""
    images = shared_images(2, "coco-train2017-subset")
    root = label_studio.documents_root
    project = ls_client.create_project("autolabel e2e boxes", RECT_ONLY_CONFIG)
    pid = project["id"]
    ls_client.add_local_storage(pid, images[0].parent)
    rel = [p.resolve().relative_to(root.resolve()).as_posix() for p in images]
    ls_client.import_tasks(pid, [{"picture": f"/data/local-files/?d={r}"} for r in rel])

    ml = ls_client.add_ml_backend(pid, backend.url, basic_auth=backend.auth)
    assert ml["state"] == "CO", ml
    ls_client.retrieve_predictions(pid)
    tasks = ls_client.tasks(pid)
    assert len(tasks) == len(images)
    for task in tasks:
        preds = ls_client.list_predictions(task=task["id"])
        assert len(preds) == 1
        result = preds[0]["result"]
        assert result and all(r["type"] == "rectanglelabels" for r in result)
        for region in result:
            check_region(region, {"bbox": ("rectanglelabels", {"Thing"})}, "photo")


def test_config_without_image_is_refused_with_reason(ls_client: LabelStudio,  # noqa: F811
                                                     backend: BackendProcess) -> None:
    import httpx

    project = ls_client.create_project("autolabel e2e text", NO_IMAGE_CONFIG)
    with pytest.raises(LabelStudioError) as info:
        ls_client.add_ml_backend(project["id"], backend.url, basic_auth=backend.auth)
    assert info.value.status == 400 and "422" in info.value.detail
    # the backend's own answer names the reason
    with backend.client() as http:
        resp = http.post("/setup", json={"project": f"{project['id']}.1", "schema": NO_IMAGE_CONFIG})
    assert resp.status_code == 422
    assert "no <Image>" in resp.json()["error"]
    # wrong basic-auth credentials are refused by Label Studio's connection check too
    with pytest.raises(LabelStudioError) as info:
        ls_client.add_ml_backend(project["id"], backend.url, basic_auth=(backend.auth[0], "wrong"))
    assert "authentication" in info.value.detail
    assert httpx.get(f"{backend.url}/health", auth=(backend.auth[0], "wrong")).status_code == 401


def test_personal_access_token_client(label_studio) -> None:  # noqa: F811
    """The client's PAT flow (refresh → Bearer access) works against the real server."""
    with label_studio.client() as legacy:
        try:
            pat = legacy.create_personal_access_token()
        except LabelStudioError as exc:
            if exc.status != 409:
                raise
            pytest.skip("this Label Studio user has a personal access token already")
    with LabelStudio(label_studio.url, pat) as client:
        assert client.auth.personal
        assert client.whoami()["email"] == USERNAME
        assert client.auth_header().startswith("Bearer ")
        assert isinstance(client.list_projects(), list)
    with pytest.raises(LabelStudioError) as info:
        LabelStudio(label_studio.url, pat[:-4] + "AAAA").whoami()
    assert info.value.status == 401


def test_paging_and_export(ls_client: LabelStudio) -> None:  # noqa: F811
    """Task paging returns every task once; predictions are listed per task; export holds them."""
    project = ls_client.create_project("autolabel paging", RECT_ONLY_CONFIG)
    pid = project["id"]
    ls_client.import_tasks(pid, [{"picture": f"/data/upload/none/{i}.jpg"} for i in range(7)])
    ids = [t["id"] for t in ls_client.iter_tasks(pid, page_size=3)]
    assert len(ids) == len(set(ids)) == 7
    ls_client.create_prediction(ids[0], [], score=0.5, model_version="v-test")
    versions = dict((t["id"], v) for t, v in ls_client.iter_task_versions(pid, page_size=2))
    assert versions[ids[0]] == {"v-test"} and all(not versions[i] for i in ids[1:])
    exported = ls_client.export_json(pid)
    assert len(exported) == 7
    assert sum(len(t.get("predictions", [])) for t in exported) == 1
    with pytest.raises(LabelStudioError) as info:
        ls_client.get_project(987654)
    assert info.value.status == 404 and "/api/projects/987654" in str(info.value)
