"""``autolabel discover`` and ``autolabel backbones``: the batch discovery job and the backbone listing."""

from __future__ import annotations

import sys

import click

from autolabel.discovery import METHODS
from autolabel.refine import REFINE_MODES


def pipeline_options(func):
    """Options shared by every command that builds a :class:`~autolabel.pipeline.Pipeline`."""
    options = [
        click.option("--method", "-m", type=click.Choice(sorted(METHODS)), default="tokencut", show_default=True,
                     help="Discovery method."),
        click.option("--backbone", "-b", default="auto", show_default=True,
                     help="Registry name (see `autolabel backbones`), checkpoint file, or auto."),
        click.option("--max-size", type=int, default=None, help="Long side of the network input [448]."),
        click.option("--refine", type=click.Choice(list(REFINE_MODES)), default=None,
                     help="Mask refinement: guided filter, TokenCut's bilateral solver, or exact patch masks "
                          "[default: env AUTOLABEL_REFINE or guided]."),
        click.option("--layer", type=int, default=None, help="Backbone block (default: the registry's best)."),
        click.option("--feature", type=click.Choice(["q", "k", "v", "tokens"]), default=None,
                     help="Feature kind (default: the registry's best)."),
        click.option("--n-objects", type=int, default=None, help="MaskCut: objects per image."),
        click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
                     help="Method hyper-parameter, repeatable (e.g. -p tau=0.4 -p keep=partition for TokenCut's "
                          "best ECSSD setting) [default: env AUTOLABEL_METHOD_PARAMS, a JSON object]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def parse_param(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` → (name, value) with VALUE read as int, float, true/false or else a string."""
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name:
        raise click.BadParameter(f"{text!r} is not NAME=VALUE", param_hint="--param")
    value: object = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                continue
    return name.replace("-", "_"), value


def build_pipeline(method: str, backbone: str, max_size: int | None, refine: str | None, layer: int | None,
                   feature: str | None, n_objects: int | None, params: tuple[str, ...] = ()):
    import inspect

    from autolabel.backbones import BackboneUnavailable
    from autolabel.discovery import method_class
    from autolabel.pipeline import Pipeline

    accepted = set(inspect.signature(method_class(method)).parameters)
    method_params = dict(parse_param(p) for p in params)
    for name in method_params:
        if name not in accepted:
            raise click.BadParameter(f"method {method!r} has no parameter {name!r}; it takes "
                                     f"{', '.join(sorted(accepted))}", param_hint="--param")
    if n_objects is not None:
        if "n_objects" not in accepted:
            raise click.BadParameter(f"method {method!r} finds one object per image; it takes no object count",
                                     param_hint="--n-objects")
        method_params["n_objects"] = n_objects
    try:
        return Pipeline(method, backbone=backbone, max_size=max_size, refine=refine, layer=layer, feature=feature,
                        method_params=method_params or None)  # none given: env AUTOLABEL_METHOD_PARAMS
    except BackboneUnavailable as exc:  # unknown name, missing or unreadable checkpoint: no traceback needed
        raise click.ClickException(f"cannot load backbone {backbone!r}: {exc}") from None
    except ValueError as exc:  # a bad setting, e.g. AUTOLABEL_REFINE or a method parameter's value
        raise click.ClickException(str(exc)) from None


@click.command("discover")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@pipeline_options
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Results JSON to write.")
@click.option("--coco", type=click.Path(exists=True, dir_okay=False), help="COCO instances: adds image_id.")
@click.option("--overlays", type=click.Path(file_okay=False), help="Folder for overlay PNGs.")
@click.option("--errors", type=click.Path(dir_okay=False), help="Also write the per-file errors as JSON.")
def discover_command(paths, method, backbone, max_size, refine, layer, feature, n_objects, params, out, coco,
                     overlays, errors) -> None:
    """Discover objects in image files or folders; write COCO-style results JSON."""
    from autolabel.discover import discover_paths, write_json_atomic

    pipe = build_pipeline(method, backbone, max_size, refine, layer, feature, n_objects, params)
    click.echo(f"model version: {pipe.model_version}", err=True)
    report = discover_paths(list(paths), pipe, coco=coco, overlays=overlays)
    write_json_atomic(out, report.results)
    if errors:
        write_json_atomic(errors, report.errors)
    click.echo(f"{report.processed} images, {len(report.results)} objects written to {out}; "
               f"{len(report.errors)} skipped", err=True)
    for err in report.errors:
        click.echo(f"  skipped {err['file_name']}: {err['error']}", err=True)
    if report.processed == 0:
        sys.exit(1)


@click.command("backbones")
def backbones_command() -> None:
    """List registered backbones and which one `auto` resolves to."""
    from autolabel.backbones import list_specs, resolve_auto

    for spec in list_specs():
        click.echo(f"{spec.name:20s} {spec.timm_name:40s} patch {spec.patch_size:2d}  best "
                   f"layer {spec.layer_index} {spec.best_feature:6s}  {spec.description}")
    try:
        click.echo(f"auto → {resolve_auto()}")
    except Exception as exc:
        click.echo(f"auto → unavailable: {exc}")
