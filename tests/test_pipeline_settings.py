"""Pipeline defaults from the environment: AUTOLABEL_REFINE and AUTOLABEL_METHOD_PARAMS, with clear errors."""

from __future__ import annotations

import re

import pytest

from autolabel.discovery import create_method
from autolabel.pipeline import Pipeline
from backend.app import default_pipeline_factory
from conftest import synthetic_object_image


@pytest.fixture(autouse=True)
def clean_env(monkeypatch) -> None:
    monkeypatch.delenv("AUTOLABEL_REFINE", raising=False)
    monkeypatch.delenv("AUTOLABEL_METHOD_PARAMS", raising=False)


def test_defaults_without_environment(tiny_backbone) -> None:
    pipe = Pipeline("tokencut", backbone=tiny_backbone)
    assert pipe.refiner.mode == "guided"
    assert pipe.method.tau == 0.2 and pipe.method.keep == "component"


def test_environment_sets_refinement_and_method_parameters(tiny_backbone, monkeypatch) -> None:
    plain = Pipeline("tokencut", backbone=tiny_backbone)
    monkeypatch.setenv("AUTOLABEL_REFINE", "bilateral")
    monkeypatch.setenv("AUTOLABEL_METHOD_PARAMS", '{"tau": 0.4, "keep": "partition"}')
    pipe = Pipeline("tokencut", backbone=tiny_backbone)
    assert pipe.refiner.mode == "bilateral"
    assert pipe.method.tau == 0.4 and pipe.method.keep == "partition"
    assert pipe.model_version != plain.model_version
    image = synthetic_object_image()
    det = pipe.run_array(image)
    assert len(det) == 1 and det.masks.shape == (1, *image.shape[:2])


def test_explicit_settings_win_over_the_environment(tiny_backbone, monkeypatch) -> None:
    monkeypatch.setenv("AUTOLABEL_REFINE", "bilateral")
    monkeypatch.setenv("AUTOLABEL_METHOD_PARAMS", '{"tau": 0.4}')
    pipe = Pipeline("tokencut", backbone=tiny_backbone, refine="none", method_params={"tau": 0.3})
    assert pipe.refiner.mode == "none" and pipe.method.tau == 0.3
    assert Pipeline("tokencut", backbone=tiny_backbone, method_params={}).method.tau == 0.2
    instance = create_method("tokencut", tau=0.25)
    assert Pipeline(instance, backbone=tiny_backbone).method is instance


def test_the_backend_pipeline_follows_the_environment(tiny_backbone, monkeypatch) -> None:
    monkeypatch.setenv("AUTOLABEL_METHOD_PARAMS", '{"n_objects": 2, "tau": 0.3}')
    monkeypatch.setenv("AUTOLABEL_REFINE", "bilateral")
    pipe = default_pipeline_factory("maskcut", tiny_backbone)()
    assert pipe.method.name == "maskcut" and pipe.method.n_objects == 2 and pipe.method.tau == 0.3
    assert pipe.refiner.mode == "bilateral"


@pytest.mark.parametrize("name, value, message", [
    ("AUTOLABEL_REFINE", "crf", "AUTOLABEL_REFINE='crf' is not a refinement mode"),
    ("AUTOLABEL_METHOD_PARAMS", "tau=0.4", "AUTOLABEL_METHOD_PARAMS is not valid JSON"),
    ("AUTOLABEL_METHOD_PARAMS", "[0.4]", "must be a JSON object"),
    ("AUTOLABEL_METHOD_PARAMS", '{"alpha": 1}', "cannot take parameters {'alpha': 1}"),
    ("AUTOLABEL_METHOD_PARAMS", '{"keep": "all"}', "keep must be 'component' or 'partition'"),
])
def test_bad_environment_settings_are_clear_errors(tiny_backbone, monkeypatch, name: str, value: str,
                                                   message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        Pipeline("tokencut", backbone=tiny_backbone)
