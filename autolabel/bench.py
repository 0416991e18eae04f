"""``autolabel bench``: quality and speed of every discovery method on the shared data sets, in one run.

For each image the backbone runs once; every method variant then runs on the same features through the same
:class:`~autolabel.pipeline.Pipeline` code as the CLI and the backend. Reported: ECSSD saliency IoU / accuracy /
maxFβ; COCO-subset and Penn-Fudan CorLoc and class-agnostic AP50 (box, mask); median seconds per image for decode /
backbone / discovery / refine / encode; the fast NCut eigen-solve against the dense generalized ``eigh`` on the same
graphs (speed ratio and partition agreement). ``--sweep`` instead scores TokenCut on every layer × feature kind to
pick a backbone's registry entry. Results go to docs/benchmarks.md with the command and the machine.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

import click
import numpy as np
from tqdm import tqdm

from autolabel.discovery import create_method
from autolabel.discovery.graph import fiedler_dense, fiedler_vector, tokencut_graph
from autolabel.images import decode_image
from autolabel.metrics.saliency import SaliencyAccumulator
from autolabel.pipeline import Pipeline
from autolabel.refine import Refiner

STAGES = ("decode", "backbone", "discovery", "refine", "encode")


@dataclass(frozen=True)
class Variant:
    """One row of the benchmark: a method with its parameters and refinement."""

    label: str
    method: str
    params: tuple = ()
    refine: str = "none"
    box_from: str = "mask"

    def pipeline(self, backbone, max_size: int, layer: int | None = None, feature: str | None = None) -> Pipeline:
        return Pipeline(create_method(self.method, **dict(self.params)), backbone=backbone, max_size=max_size,
                        refine=Refiner(mode=self.refine), box_from=self.box_from, layer=layer, feature=feature)


DEFAULT_VARIANTS = (
    Variant("lost", "lost", box_from="patches"),
    Variant("lost + guided", "lost", refine="guided"),
    Variant("tokencut (dense eigh reference)", "tokencut", (("solver", "dense"),), box_from="patches"),
    Variant("tokencut", "tokencut", box_from="patches"),
    Variant("tokencut + guided", "tokencut", refine="guided"),
    Variant("tokencut τ=0.4 + guided", "tokencut", (("tau", 0.4),), refine="guided"),
    Variant("tokencut whole partition + guided", "tokencut", (("keep", "partition"),), refine="guided"),
    Variant("tokencut whole partition τ=0.4 + guided", "tokencut", (("keep", "partition"), ("tau", 0.4)),
            refine="guided"),
    Variant("tokencut + bilateral", "tokencut", refine="bilateral"),
    Variant("tokencut whole partition + bilateral", "tokencut", (("keep", "partition"),), refine="bilateral"),
    Variant("tokencut whole partition τ=0.4 + bilateral", "tokencut", (("keep", "partition"), ("tau", 0.4)),
            refine="bilateral"),
    Variant("found", "found", box_from="patches"),
    Variant("found + guided", "found", refine="guided"),
    Variant("spectral", "spectral", box_from="patches"),
    Variant("spectral + guided", "spectral", refine="guided"),
    Variant("maskcut N=3", "maskcut", (("n_objects", 3),), box_from="patches"),
    Variant("maskcut N=3 + guided", "maskcut", (("n_objects", 3),), refine="guided"),
    Variant("maskcut N=3 + bilateral", "maskcut", (("n_objects", 3),), refine="bilateral"),
    Variant("rankcut", "rankcut", box_from="patches"),
    Variant("rankcut + guided", "rankcut", refine="guided"),
    Variant("rankcut + bilateral", "rankcut", refine="bilateral"),
)


@dataclass
class Dataset:
    """A benchmark data set: (image path, key) items and its ground truth."""

    name: str
    kind: str  # 'saliency' or 'coco'
    items: list[tuple[Path, object]]
    masks_dir: Path | None = None
    coco: dict | None = None


def load_datasets(data_root: Path, limit: int | None, names: tuple[str, ...]) -> list[Dataset]:
    """ECSSD (saliency), the COCO train subset and Penn-Fudan (COCO instances) found under ``data_root``."""
    out: list[Dataset] = []
    ecssd = data_root / "ecssd"
    if "ecssd" in names and (ecssd / "images").is_dir():
        files = sorted((ecssd / "images").glob("*.jpg"))[:limit]
        out.append(Dataset("ECSSD", "saliency", [(f, f.stem) for f in files], masks_dir=ecssd / "masks"))
    for name, folder in (("COCO train subset", "coco-train2017-subset"), ("Penn-Fudan", "pennfudan")):
        key = "coco" if folder.startswith("coco") else "pennfudan"
        inst = data_root / folder / "instances.json"
        if key in names and inst.is_file():
            coco = json.loads(inst.read_text())
            images = sorted(coco["images"], key=lambda im: im["file_name"])[:limit]
            coco = {**coco, "images": images}
            out.append(Dataset(name, "coco", [(data_root / folder / "images" / im["file_name"], im["id"])
                                              for im in images], coco=coco))
    if not out:
        raise click.ClickException(f"no benchmark data found under {data_root} (expected ecssd/, "
                                   "coco-train2017-subset/, pennfudan/)")
    return out


@dataclass
class VariantScores:
    timings: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    results: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    saliency: dict[str, SaliencyAccumulator] = field(default_factory=dict)


def read_gt_mask(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"))


def union_mask(det, shape: tuple[int, int]) -> np.ndarray:
    if det.masks is None or len(det) == 0:
        return np.zeros(shape, dtype=np.uint8)
    return det.masks.any(axis=0).astype(np.uint8)


def run_bench(data_root: Path, backbone_name: str, max_size: int, limit: int | None,
              variants: tuple[Variant, ...], datasets: tuple[str, ...], layer: int | None = None,
              feature: str | None = None) -> dict:
    """Run every variant on every data set; return a JSON-able summary."""
    from autolabel.backbones import load_backbone
    from autolabel.evaluate import evaluate_coco

    backbone = load_backbone(backbone_name)
    pipes = {v.label: v.pipeline(backbone, max_size, layer, feature) for v in variants}
    first = next(iter(pipes.values()))
    scores = {v.label: VariantScores() for v in variants}
    eig = {"fast": [], "dense": [], "same_mask": [], "same_partition": []}
    sets = load_datasets(data_root, limit, datasets)
    errors: list[str] = []
    for ds in sets:
        for path, key in tqdm(ds.items, desc=ds.name, unit="img"):
            t0 = time.perf_counter()
            try:
                image, orig_size = decode_image(path)
            except Exception as exc:
                errors.append(f"{path.name}: {exc}")
                continue
            decode = time.perf_counter() - t0
            t0 = time.perf_counter()
            feats = first.features(image, orig_size)
            backbone_s = time.perf_counter() - t0
            gt = read_gt_mask(ds.masks_dir / f"{key}.png") if ds.kind == "saliency" else None
            dets = {}
            for label, pipe in pipes.items():
                det = dets[label] = pipe.detect(feats)
                t0 = time.perf_counter()
                entries = det.to_coco(image_id=key)
                encode = time.perf_counter() - t0
                sc = scores[label]
                for stage, value in (("decode", decode), ("backbone", backbone_s), ("encode", encode),
                                     *det.meta["timings"].items()):
                    sc.timings[stage].append(value)
                if ds.kind == "saliency":
                    acc = sc.saliency.setdefault(ds.name, SaliencyAccumulator())
                    acc.add(union_mask(det, gt.shape), gt, item=str(path.name))
                else:
                    sc.results[ds.name].extend(entries)
            eigen_check(feats, pipes, dets, eig)
    summary: dict = {"variants": {}, "datasets": [d.name for d in sets], "n_images": {d.name: len(d.items)
                                                                                      for d in sets},
                     "errors": errors, "backbone": backbone.version, "layer": first.layer,
                     "feature": first.feature, "max_size": max_size}
    for label, sc in scores.items():
        row: dict = {"timings": {s: median(sc.timings[s]) for s in STAGES if sc.timings[s]}}
        for ds in sets:
            if ds.kind == "saliency" and ds.name in sc.saliency:
                row[ds.name] = sc.saliency[ds.name].result()
            elif ds.kind == "coco":
                row[ds.name] = evaluate_coco(sc.results[ds.name], ds.coco).metrics
        summary["variants"][label] = row
    if eig["fast"]:
        summary["eigensolve"] = {
            "n_graphs": len(eig["fast"]), "fast_median_s": median(eig["fast"]),
            "dense_median_s": median(eig["dense"]),
            "speedup_median": median(d / f for d, f in zip(eig["dense"], eig["fast"])),
            "same_object_mask_pct": 100.0 * float(np.mean(eig["same_mask"])),
            "same_partition_pct": 100.0 * float(np.mean(eig["same_partition"])),
        }
    return summary


def eigen_check(feats, pipes: dict[str, Pipeline], dets: dict, eig: dict) -> None:
    """Time the fast and the dense eigen-solve on this image's TokenCut graph; compare the two TokenCut rows."""
    fast_label = next((k for k, p in pipes.items() if p.method.name == "tokencut"
                       and p.method.params().get("solver") == "fast" and p.refiner.mode == "none"), None)
    dense_label = next((k for k, p in pipes.items() if p.method.name == "tokencut"
                        and p.method.params().get("solver") == "dense"), None)
    if fast_label is None or dense_label is None or feats.geometry.num_patches < 24:
        return
    method = pipes[fast_label].method
    affinity = tokencut_graph(method.select_features(feats), method.tau, method.eps)
    t0 = time.perf_counter()
    fast = fiedler_vector(affinity)
    t1 = time.perf_counter()
    dense = fiedler_dense(affinity)
    t2 = time.perf_counter()
    eig["fast"].append(t1 - t0)
    eig["dense"].append(t2 - t1)
    pf, pd = fast > fast.mean(), dense > dense.mean()
    eig["same_partition"].append(bool((pf == pd).all() or (pf != pd).all()))
    a, b = dets[fast_label], dets[dense_label]
    eig["same_mask"].append(bool(len(a) == len(b) and np.array_equal(a.masks, b.masks)))


def run_sweep(data_root: Path, backbone_name: str, max_size: int, limit: int | None, layers: list[int],
              kinds: list[str]) -> dict:
    """TokenCut (patch boxes and masks, no refinement) on every layer × feature kind."""
    from autolabel.backbones import load_backbone
    from autolabel.discovery.tokencut import TokenCut
    from autolabel.evaluate import evaluate_coco

    backbone = load_backbone(backbone_name)
    sets = load_datasets(data_root, limit, ("ecssd", "coco", "pennfudan"))
    combos = [(layer, kind) for layer in layers for kind in kinds]
    sal = {c: SaliencyAccumulator() for c in combos}
    results: dict = {c: defaultdict(list) for c in combos}
    pipes = {(layer, kind): Pipeline(TokenCut(feature=kind), backbone=backbone, max_size=max_size, refine="none",
                                     layer=layer, feature=kind, box_from="patches") for layer, kind in combos}
    for ds in sets:
        for path, key in tqdm(ds.items, desc=f"sweep {ds.name}", unit="img"):
            image, orig_size = decode_image(path)
            per_layer = backbone.extract_layers(image, layers, max_size, orig_size)
            gt = read_gt_mask(ds.masks_dir / f"{key}.png") if ds.kind == "saliency" else None
            for layer, kind in combos:
                det = pipes[(layer, kind)].detect(per_layer[layer % backbone.num_layers])
                if gt is not None:
                    sal[(layer, kind)].add(union_mask(det, gt.shape), gt)
                else:
                    results[(layer, kind)][ds.name].extend(det.to_coco(image_id=key))
    rows = []
    for c in combos:
        row = {"layer": c[0] % backbone.num_layers, "feature": c[1]}
        if sal[c].count:
            row["ECSSD IoU"] = sal[c].result()["iou"]
        for ds in sets:
            if ds.kind == "coco":
                row[f"{ds.name} CorLoc"] = evaluate_coco(results[c][ds.name], ds.coco).metrics["corloc"]
        rows.append(row)
    return {"backbone": backbone.version, "max_size": max_size, "limit": limit, "rows": rows}


# ------------------------------------------------------------------------------------------------ report
def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def bench_markdown(summary: dict, command: str) -> str:
    lines = [
        "## Discovery benchmark",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Backbone: {summary['backbone']} (on imgfocus-vits14 numbers are not pure DINO), layer {summary['layer']}, "
        f"feature `{summary['feature']}`, long side {summary['max_size']} px.  ",
        "Images: " + ", ".join(f"{k} {v}" for k, v in summary["n_images"].items()),
        "",
        "| method | ECSSD IoU | ECSSD acc | ECSSD maxFβ | COCO CorLoc | COCO AP50 box | COCO AP50 mask "
        "| Penn-Fudan CorLoc | PF AP50 box | PF AP50 mask |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in summary["variants"].items():
        e = row.get("ECSSD", {})
        c = row.get("COCO train subset", {})
        p = row.get("Penn-Fudan", {})
        lines.append(
            f"| {label} | {fmt(e.get('iou'))} | {fmt(e.get('accuracy'))} | {fmt(e.get('max_fbeta'))} "
            f"| {fmt(c.get('corloc'), 1)} | {fmt(pct(c.get('box_AP50')), 1)} | {fmt(pct(c.get('mask_AP50')), 1)} "
            f"| {fmt(p.get('corloc'), 1)} | {fmt(pct(p.get('box_AP50')), 1)} | {fmt(pct(p.get('mask_AP50')), 1)} |")
    lines += ["", "Median seconds per image (one run, all data sets together):", "",
              "| method | decode | backbone | discovery | refine | encode | (disc+refine+enc) / backbone |",
              "|---|---|---|---|---|---|---|"]
    for label, row in summary["variants"].items():
        t = row["timings"]
        post = t.get("discovery", 0) + t.get("refine", 0) + t.get("encode", 0)
        lines.append(f"| {label} | " + " | ".join(fmt(t.get(s), 4) for s in STAGES)
                     + f" | {100 * post / t['backbone']:.1f} % |")
    if "eigensolve" in summary:
        e = summary["eigensolve"]
        lines += ["", f"NCut eigen-solve on the same TokenCut graphs ({e['n_graphs']} images): fast (deflated "
                  f"Lanczos) median {e['fast_median_s'] * 1000:.1f} ms, dense generalized `eigh` median "
                  f"{e['dense_median_s'] * 1000:.1f} ms, median speed-up {e['speedup_median']:.1f}×; identical "
                  f"TokenCut object mask on {e['same_object_mask_pct']:.1f} % of images, identical bipartition "
                  f"on {e['same_partition_pct']:.1f} %."]
    if summary["errors"]:
        lines += ["", "Unreadable images: " + "; ".join(summary["errors"])]
    return "\n".join(lines) + "\n"


def pct(value):
    return None if value is None else 100.0 * value


def sweep_markdown(sweep: dict, command: str) -> str:
    rows = sweep["rows"]
    cols = [k for k in rows[0] if k not in ("layer", "feature")]
    lines = ["## Layer / feature sweep (TokenCut, no refinement, patch boxes)", "",
             f"Command: `{command}`  ", f"Machine: {machine_line()}  ",
             f"Backbone: {sweep['backbone']}, long side {sweep['max_size']} px, first {sweep['limit']} images "
             "of each data set.", "",
             "| layer | feature | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['feature']} | " + " | ".join(
            fmt(r[c], 3 if "IoU" in c else 1) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def replace_section(path: Path, heading: str, text: str) -> None:
    """Replace the section starting at ``heading`` (up to the next '## ') in ``path``, or append it."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = old.find(heading)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(heading))
        rest = old[end + 1:] if end >= 0 else ""
        new = old[:start] + (text.rstrip("\n") + "\n\n" + rest if rest else text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


@click.command("bench")
@click.option("--data", "data_root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("../shared/data"), show_default=True)
@click.option("--backbone", "-b", default="imgfocus-vits14", show_default=True)
@click.option("--max-size", type=int, default=448, show_default=True)
@click.option("--limit", type=int, default=None, help="First N images of each data set (default: all).")
@click.option("--datasets", default="ecssd,coco,pennfudan", show_default=True)
@click.option("--methods", default=None, help="Comma-separated variant labels' methods to keep (default: all).")
@click.option("--layer", type=int, default=None, help="Override the backbone's registered best block.")
@click.option("--feature", type=click.Choice(["q", "k", "v", "tokens"]), default=None,
              help="Override the backbone's registered best feature kind.")
@click.option("--sweep", is_flag=True, help="Score TokenCut on every layer × feature kind instead.")
@click.option("--layers", default="6,7,8,9,10,11", show_default=True, help="Sweep: blocks to try.")
@click.option("--features", "kinds", default="q,k,v,tokens", show_default=True, help="Sweep: feature kinds.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/benchmarks.md"),
              show_default=True, help="Markdown file whose benchmark section is replaced.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def bench_command(data_root: Path, backbone: str, max_size: int, limit: int | None, datasets: str,
                  methods: str | None, layer: int | None, feature: str | None, sweep: bool, layers: str,
                  kinds: str, out: Path, json_out: Path | None) -> None:
    """Benchmark quality and speed of the discovery methods on the shared data sets."""
    command = "autolabel bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    if sweep:
        result = run_sweep(data_root, backbone, max_size, limit, [int(x) for x in layers.split(",")],
                           kinds.split(","))
        text = sweep_markdown(result, command)
        replace_section(out, "## Layer / feature sweep", text)
    else:
        keep = set(methods.split(",")) if methods else None
        variants = tuple(v for v in DEFAULT_VARIANTS if keep is None or v.method in keep)
        result = run_bench(data_root, backbone, max_size, limit, variants, tuple(datasets.split(",")), layer,
                           feature)
        text = bench_markdown(result, command)
        replace_section(out, "## Discovery benchmark", text)
    click.echo(text)
    if json_out:
        json_out.write_text(json.dumps(result, indent=1, default=str))
