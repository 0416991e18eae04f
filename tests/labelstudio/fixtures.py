"""pytest fixtures for tests against a real Label Studio; import them into a test module by name.

``label_studio`` is one server per test session (it is started on first use and stopped by its PID at exit,
see :func:`tests.labelstudio.ls_server.shared_server`). Set ``AUTOLABEL_SKIP_LS=1`` to skip these tests
deliberately (e.g. offline); otherwise an install or start failure fails the tests with the log's tail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.labelstudio.ls_server import LabelStudioHarnessError, LabelStudioServer, shared_server

REPO = Path(__file__).resolve().parents[2]


def shared_root() -> Path:
    return Path(os.environ.get("AUTOLABEL_SHARED", REPO.parent / "shared"))


def shared_images(count: int, subset: str = "ecssd") -> list[Path]:
    """The first ``count`` images of a shared data set (skips the test when the data is absent)."""
    folder = shared_root() / "data" / subset / "images"
    if not folder.is_dir():
        pytest.skip(f"shared images not found at {folder} (set AUTOLABEL_SHARED)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    if len(files) < count:
        pytest.skip(f"need {count} images in {folder}, found {len(files)}")
    return files


@pytest.fixture(scope="session")
def label_studio() -> LabelStudioServer:
    if os.environ.get("AUTOLABEL_SKIP_LS") == "1":
        pytest.skip("AUTOLABEL_SKIP_LS=1: real Label Studio tests skipped")
    try:
        return shared_server(documents_root=shared_root() / "data")
    except LabelStudioHarnessError as exc:
        pytest.fail(f"could not start Label Studio 1.23.2: {exc}")


@pytest.fixture()
def ls_client(label_studio: LabelStudioServer):
    client = label_studio.client()
    yield client
    client.close()
