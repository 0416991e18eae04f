"""``bench_backend``: latency of a running backend as Label Studio uses it.

Against a real Label Studio and a running backend it measures

* the wall time of the Data Manager's "Retrieve predictions" on ``n`` uncached tasks (one synchronous
  /predict call from Label Studio to the backend, as a user triggers it);
* ``/predict`` latency (p50/p95) for a task whose prediction is already cached;
* ``/predict`` latency for uncached tasks (median over ``uncached`` single-task calls);
* for reference, the backbone forward time on the same uncached images in this process (``--backbone``,
  ``--max-size``: set them to what the backend runs), so "uncached ≤ forward + 0.3 s" is checked in one run.

``--out docs/benchmarks.md`` replaces that file's backend section with a table and the command.

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
            health = http.get("/health").json()  # the model is loaded by now: its version is known
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
@click.option("--backbone", default="auto", show_default=True, help="Backbone to time the forward pass of.")
@click.option("--max-size", type=int, default=448, show_default=True, help="Long side for that forward pass.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown file whose backend section is replaced with the results.")
def bench_backend_command(ls_url: str, token: str, backend_url: str, basic_auth: str | None, image_dir: Path,
                          n_retrieve: int, n_uncached: int, repeats: int, seed: int | None,
                          keep_project: bool, backbone: str, max_size: int, out: Path | None) -> None:
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
    result["backbone_forward"] = forward_times(images[n_retrieve:n_retrieve + n_uncached], backbone, max_size)
    click.echo(json.dumps(result, indent=2))
    if out is not None:
        import shlex
        import sys

        from autolabel.bench import machine_line, replace_section

        args = ["$LABEL_STUDIO_API_KEY" if prev == "--token" else shlex.quote(a)
                for prev, a in zip([""] + sys.argv[2:], sys.argv[2:])]
        command = "autolabel bench-backend " + " ".join(args)
        replace_section(out, "## Backend latency", backend_markdown(result, command, machine_line()))


def forward_times(images: list[Path], backbone_name: str, max_size: int) -> dict[str, Any]:
    """Median backbone forward (decode excluded) on ``images``, in this process, after one warm-up call."""
    from autolabel.backbones import load_backbone
    from autolabel.images import load_image

    backbone = load_backbone(backbone_name)
    arrays = [load_image(p) for p in images]
    backbone.extract(arrays[0], max_size=max_size)
    times = []
    for arr in arrays:
        t0 = time.perf_counter()
        backbone.extract(arr, max_size=max_size)
        times.append(time.perf_counter() - t0)
    return {"backbone": backbone.version, "max_size": max_size, "calls": len(times),
            "median_ms": round(1000 * statistics.median(times), 1)}


def backend_markdown(result: dict[str, Any], command: str, machine: str) -> str:
    """The docs/benchmarks.md section for one bench-backend run."""
    fwd = result["backbone_forward"]
    unc = result["predict_uncached"]
    ret = result["retrieve_predictions"]
    cached = result["predict_cached"]
    budget = fwd["median_ms"] + 300.0
    return "\n".join([
        "## Backend latency (real Label Studio 1.23.2)", "",
        f"Command: `{command}`  ", f"Machine: {machine}  ",
        f"Model version: {result['model_version']}; backbone forward measured on the same images in the same run: "
        f"{fwd['backbone']} at {fwd['max_size']} px.", "",
        "| measurement | value | target |", "|---|---|---|",
        f"| /predict, already predicted task, p50 (p95) over {cached['calls']} calls | {cached['p50_ms']} ms "
        f"({cached['p95_ms']} ms) | ≤ 50 ms |",
        f"| /predict, one uncached task, median of {unc['calls']} (min–max) | {unc['median_ms']} ms "
        f"({unc['min_ms']}–{unc['max_ms']} ms) | ≤ forward {fwd['median_ms']} ms + 300 ms = {budget:.0f} ms |",
        f"| Retrieve predictions, {ret['tasks']} uncached tasks, wall time | {ret['wall_s']} s "
        f"({ret['per_task_s']} s/task) | < 100 s (Label Studio's timeout) |",
    ]) + "\n"


if __name__ == "__main__":  # pragma: no cover - `python -m backend.bench_backend`
    bench_backend_command()
