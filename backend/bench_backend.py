"""``bench_backend``: latency of a running backend as Label Studio uses it.

Against a real Label Studio and a running backend it measures

* the wall time of the Data Manager's "Retrieve predictions" on ``n`` uncached tasks (one synchronous
  /predict call from Label Studio to the backend, as a user triggers it);
* ``/predict`` latency (p50/p95) for a task whose prediction is already cached;
* ``/predict`` latency for uncached tasks (median over ``uncached`` single-task calls).

"Uncached" is guaranteed by importing re-encoded copies of the images with one pixel changed, so their content
hash is new to the backend's cache however often the benchmark runs. A fresh project is created each run.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np
from PIL import Image

from autolabel.images import iter_image_paths
from autolabel.lsclient import LabelStudio

BENCH_CONFIG = """<View><Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image"><Label value="Object"/></RectangleLabels>
  <BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels></View>"""


def fresh_copies(paths: list[Path], out_dir: Path, seed: int) -> list[Path]:
    """JPEG copies of ``paths`` with one random pixel nudged, so each has content the cache has never seen."""
    rng = random.Random(seed)
    out = []
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            arr = np.array(img.convert("RGB"))
        y, x = rng.randrange(arr.shape[0]), rng.randrange(arr.shape[1])
        arr[y, x, 0] = (int(arr[y, x, 0]) + 1 + rng.randrange(250)) % 256
        dest = out_dir / f"bench-{seed}-{i:04d}-{path.stem}.jpg"
        Image.fromarray(arr).save(dest, quality=95)
        out.append(dest)
    return out


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench_backend(ls_url: str, token: str, backend_url: str, images: list[Path], *, n_retrieve: int = 50,
                  n_uncached: int = 5, repeats: int = 30, basic_auth: tuple[str, str] | None = None,
                  seed: int | None = None, keep_project: bool = False) -> dict[str, Any]:
    """Run the three measurements; returns the numbers (seconds) and what they were measured on."""
    need = n_retrieve + n_uncached
    if len(images) < need:
        raise click.UsageError(f"need {need} images ({n_retrieve} + {n_uncached}), found {len(images)}")
    seed = seed if seed is not None else int(time.time())
    with tempfile.TemporaryDirectory(prefix="autolabel-bench-") as tmp, LabelStudio(ls_url, token) as ls, \
            httpx.Client(base_url=backend_url.rstrip("/"), auth=basic_auth, timeout=300.0) as http:
        health = http.get("/health").json()
        copies = fresh_copies(images[:need], Path(tmp), seed)
        project = ls.create_project(f"autolabel bench {seed}", BENCH_CONFIG)
        pid = project["id"]
        try:
            ls.import_files(pid, copies[:n_retrieve])
            ml = ls.add_ml_backend(pid, backend_url, title="autolabel bench", basic_auth=basic_auth)
            if ml.get("state") != "CO":
                raise click.ClickException(f"Label Studio could not connect the backend: {ml.get('error_message')}")

            t0 = time.perf_counter()
            ls.retrieve_predictions(pid)
            retrieve_s = time.perf_counter() - t0
            tasks = ls.tasks(pid)
            with_pred = sum(1 for t in tasks if t.get("predictions"))
            if with_pred != n_retrieve:
                raise click.ClickException(f"Retrieve predictions left {n_retrieve - with_pred} tasks without one")

            def predict(task: dict) -> float:
                body = {"tasks": [{"id": task["id"], "data": task["data"]}], "project": str(pid),
                        "label_config": BENCH_CONFIG}
                start = time.perf_counter()
                resp = http.post("/predict", json=body)
                took = time.perf_counter() - start
                if resp.status_code != 200 or not resp.json()["results"][0]["result"]:
                    raise click.ClickException(f"/predict answered {resp.status_code}: {resp.text[:300]}")
                return took

            cached = [predict(tasks[i % len(tasks)]) for i in range(repeats)]

            known = {t["id"] for t in tasks}
            ls.import_files(pid, copies[n_retrieve:])
            new_tasks = [t for t in ls.tasks(pid) if t["id"] not in known]
            uncached = [predict(t) for t in new_tasks]
        finally:
            if not keep_project:
                ls.delete_project(pid)
    return {
        "model_version": health.get("model_version"),
        "retrieve_predictions": {"tasks": n_retrieve, "wall_s": round(retrieve_s, 2),
                                 "per_task_s": round(retrieve_s / n_retrieve, 3)},
        "predict_cached": {"calls": repeats, "p50_ms": round(1000 * statistics.median(cached), 1),
                           "p95_ms": round(1000 * _percentile(cached, 0.95), 1)},
        "predict_uncached": {"calls": len(uncached), "median_ms": round(1000 * statistics.median(uncached), 1),
                             "min_ms": round(1000 * min(uncached), 1), "max_ms": round(1000 * max(uncached), 1)},
    }


@click.command("bench-backend")
@click.option("--ls-url", envvar="LABEL_STUDIO_URL", required=True, help="Label Studio URL (env LABEL_STUDIO_URL).")
@click.option("--token", envvar="LABEL_STUDIO_API_KEY", required=True, help="Label Studio token.")
@click.option("--backend-url", required=True, help="URL of the running backend as Label Studio reaches it.")
@click.option("--basic-auth", default=None, help="user:password of the backend's basic auth.")
@click.option("--images", "image_dir", required=True, type=click.Path(exists=True, path_type=Path),
              help="Folder (or file) of images to import (copies are modified; originals are untouched).")
@click.option("--n", "n_retrieve", default=50, show_default=True, help="Tasks for Retrieve predictions.")
@click.option("--uncached", "n_uncached", default=5, show_default=True, help="Single uncached /predict calls.")
@click.option("--repeats", default=30, show_default=True, help="Cached /predict calls.")
@click.option("--seed", type=int, default=None, help="Seed of the pixel changes (default: time).")
@click.option("--keep-project", is_flag=True, help="Leave the benchmark project in Label Studio.")
def bench_backend_command(ls_url: str, token: str, backend_url: str, basic_auth: str | None, image_dir: Path,
                          n_retrieve: int, n_uncached: int, repeats: int, seed: int | None,
                          keep_project: bool) -> None:
    """Measure Retrieve-predictions wall time and cached/uncached /predict latency of a running backend."""
    auth = None
    if basic_auth:
        user, sep, password = basic_auth.partition(":")
        if not sep:
            raise click.BadParameter("expected user:password", param_hint="--basic-auth")
        auth = (user, password)
    images = iter_image_paths([image_dir])
    result = bench_backend(ls_url, token, backend_url, images, n_retrieve=n_retrieve, n_uncached=n_uncached,
                           repeats=repeats, basic_auth=auth, seed=seed, keep_project=keep_project)
    click.echo(json.dumps(result, indent=2))


if __name__ == "__main__":  # pragma: no cover - `python -m backend.bench_backend`
    bench_backend_command()
