"""``geosane zoo``: search the Hub, add models to a zoo, list it, build a zoo of small models."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from geosane.console import console
from geosane.errors import GeosaneError

if TYPE_CHECKING:
    from geosane.arch.spec import LoadedModel

__all__ = ["register"]

zoo_app = typer.Typer(
    help="Model zoo: find models on the Hub, add any source to a zoo, list it, build one locally.",
    no_args_is_help=True,
)

ZOO_OPTION = typer.Option(..., "--zoo", help="Zoo directory (created on first add/build).")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the ``zoo`` command group to the root CLI."""
    app.add_typer(zoo_app, name="zoo")


def _parse_pairs(items: list[str] | None, option: str) -> dict[str, Any]:
    """``["k=v", ...]`` with YAML-parsed values (``acc=0.9`` is a number)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise GeosaneError(f"{option} '{item}' must look like key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def _human(n: float | None, unit: str = "") -> str:
    if n is None:
        return "-"
    for suffix in ("", "K", "M", "B", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{suffix}{unit}"
        n /= 1000
    return f"{n:.3g}P{unit}"


# ---------------------------------------------------------------------------------------------
# search


@zoo_app.command("search")
def search(
    query: str = typer.Argument(..., help="Keywords, e.g. 'sentinel-2 land cover'."),
    tag: list[str] = typer.Option(None, "--tag", help="Hub tag filter, repeatable (e.g. sentinel-2, sar)."),
    limit: int = typer.Option(20, "--limit", min=1, help="Maximum number of models."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per model on stdout."),
) -> None:
    """Discover models on the Hugging Face Hub by keywords and tags (most downloaded first)."""
    from geosane.zoo.hub import search_hub

    rows = search_hub(query, tags=tag or [], limit=limit)
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    if not rows:
        console.print(f"no Hub models match '{query}'" + (f" with tags {tag}" if tag else ""))
        return
    from rich.table import Table

    table = Table(title=f"Hub models for '{query}'")
    for column in ("id", "license", "downloads", "params", "size", "task"):
        table.add_column(column, justify="right" if column in ("downloads", "params", "size") else "left")
    for row in rows:
        table.add_row(
            row["id"],
            row["license"] or "-",
            _human(row["downloads"]),
            _human(row["params"]),
            _human(row["size_bytes"], "B"),
            row["task"] or "-",
        )
    console.print(table)


# ---------------------------------------------------------------------------------------------
# add


@zoo_app.command("add")
def add(
    sources: list[str] = typer.Argument(
        ...,
        help="timm:NAME, hf:ORG/NAME[/FILE][@REV], torchgeo:ENUM, geofm:LAYOUT:PATH, zoo:DIR#ID or a path.",
    ),
    zoo: Path = ZOO_OPTION,
    model_id: str = typer.Option(None, "--id", help="Model id (one source only; default from the source)."),
    random_init: bool = typer.Option(
        False, "--random-init", help="timm: random weights instead of pretrained."
    ),
    in_chans: int = typer.Option(
        None, "--in-chans", min=1, help="Input bands (timm: builds the stem for them)."
    ),
    num_classes: int = typer.Option(
        None, "--num-classes", min=0, help="Classes (timm: builds the head for them)."
    ),
    arch: str = typer.Option(None, "--arch", help="Architecture of plain weight files, e.g. timm:resnet18."),
    arch_kwarg: list[str] = typer.Option(None, "--arch-kwarg", help="key=value for --arch, repeatable."),
    task: str = typer.Option(None, "--task", help="Task (classification, segmentation, backbone, ...)."),
    license_: str = typer.Option(None, "--license", help="License (default: from the source's card)."),
    bands: str = typer.Option(None, "--bands", help="Comma-separated band names, e.g. B2,B3,B4,B8."),
    modality: str = typer.Option(None, "--modality", help="Modality, e.g. rgb, multispectral, sar."),
    family: str = typer.Option(None, "--family", help="Family label (default: the timm module)."),
    meta: list[str] = typer.Option(None, "--meta", help="Free-form metadata key=value, repeatable."),
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Accept NaN/Inf weights."),
    parity_data: Path = typer.Option(
        None, "--parity-data", help="ONNX: real inputs for the onnxruntime parity check (.npz scenes or an image folder)."
    ),
    parity_tolerance: float = typer.Option(
        None, "--parity-tolerance", min=0.0, help="ONNX: largest relative output difference accepted (default 1e-3)."
    ),
) -> None:
    """Copy models into a zoo as safetensors with a manifest row each; re-adding the same weights is a no-op.

    An ONNX file is rebuilt in PyTorch (an smp architecture named by its JSON sidecar, else a
    converted graph) and checked against onnxruntime before it is added; the row records the figure.
    """
    from geosane.arch.spec import parse_arch
    from geosane.zoo.manifest import Zoo, check_zoo_target
    from geosane.zoo.sources import resolve

    if model_id is not None and len(sources) > 1:
        raise GeosaneError("--id names one model; give one source per `zoo add` when using it")
    metadata = _parse_pairs(meta, "--meta")
    spec = parse_arch(arch, _parse_pairs(arch_kwarg, "--arch-kwarg")) if arch else None
    if arch_kwarg and spec is None:
        raise GeosaneError("--arch-kwarg needs --arch")
    check_zoo_target(zoo)
    band_list = [b.strip() for b in bands.split(",") if b.strip()] if bands else None
    loaded = []
    for source in sources:  # resolve and validate everything before writing anything
        model = resolve(
            source,
            random_init=random_init,
            in_chans=in_chans,
            num_classes=num_classes,
            allow_nonfinite=allow_nonfinite,
            arch=spec,
            parity_data=parity_data,
            parity_tolerance=parity_tolerance,
        )
        if model.info.get("onnx_file") and model.arch is not None:
            _report_parity(model)
        loaded.append(model)
        if band_list is not None:
            known = loaded[-1].info.get("in_chans")
            if known is not None and known != len(band_list):
                raise GeosaneError(f"--bands names {len(band_list)} bands but {source} takes {known}")
            loaded[-1].info["in_chans"] = len(band_list)
    target = Zoo.create(zoo)
    added_here = 0
    for model in loaded:
        entry, added = target.add(
            model,
            model_id=model_id,
            family=family,
            metadata=metadata,
            allow_nonfinite=allow_nonfinite,
            task=task,
            license=license_,
            bands=band_list,
            modality=modality,
        )
        added_here += added
        if added:
            console.print(
                f"[green]added[/] {entry.id} ({_human(entry.num_params)} params, {', '.join(entry.dtypes)}) "
                f"from {model.source}"
            )
        else:
            console.print(
                f"[yellow]skipped[/] {model.source}: already in the zoo as '{entry.id}' (same weights)"
            )
    target.reload()  # other processes may have added models meanwhile
    console.print(f"zoo {target.path}: {len(target)} models ({added_here} added by this run)")


def _report_parity(model: LoadedModel) -> None:
    """Print the figure of the onnxruntime parity check that resolving the ONNX model ran."""
    parity = model.info["metadata"]["onnx_parity"]
    if parity["checked"]:
        assert model.arch is not None  # the parity check built the model from it
        console.print(
            f"parity {model.source} as {model.arch.library}:{model.arch.name} vs onnxruntime: max |diff| "
            f"{parity['max_abs']:.2g} (relative {parity['relative']:.1e}, tolerance {parity['tolerance']:.0e}), "
            f"argmax agreement {100 * parity['argmax_agreement']:.2f}% on {parity['inputs']}"
        )


# ---------------------------------------------------------------------------------------------
# describe


def describe_model(model: LoadedModel) -> dict[str, Any]:
    """What geosane knows about a resolved source: architecture, input bands, normalisation ..."""
    from geosane.arch.spec import arch_family
    from geosane.data import recorded_normalization

    info = model.info
    metadata = info.get("metadata") or {}
    inputs = metadata.get("input") or {}
    recorded = recorded_normalization(info)
    if inputs.get("normalization") is not None:
        normalization: Any = inputs["normalization"]
    elif recorded is not None:
        normalization = {"mean": list(recorded.mean), "std": list(recorded.std)}
    else:
        normalization = "unknown"
    bands = info.get("bands") or inputs.get("bands")
    return {
        "source": model.source,
        "arch": model.arch.to_dict() if model.arch else None,
        "no_architecture": None if model.arch else (info.get("no_architecture") or "unknown"),
        "family": info.get("family") or arch_family(model.arch),
        "task": info.get("task"),
        "in_chans": inputs.get("in_chans") or info.get("in_chans"),
        "num_classes": info.get("num_classes"),
        "bands": list(bands) if bands else None,
        "bands_note": None if bands else (inputs.get("bands_note") or "unknown"),
        "normalization": normalization,
        "resize": inputs.get("resize"),
        "num_params": model.num_params,
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in model.state_dict.values()}),
        "license": info.get("license"),
        "pretrained": info.get("pretrained"),
        "remapped": info.get("remapped") or metadata.get("remapped"),
        "filled_from_init": info.get("filled_from_init") or metadata.get("filled_from_init"),
        "layout": info.get("layout"),
        "dropped": info.get("dropped") or metadata.get("dropped"),
        "temporal_frames": info.get("temporal_frames") or inputs.get("temporal_frames"),
    }


@zoo_app.command("describe")
def describe(
    source: str = typer.Argument(
        ...,
        help="timm:NAME, hf:ORG/NAME[/FILE][@REV], torchgeo:ENUM, geofm:LAYOUT:PATH, zoo:DIR#ID or a path.",
    ),
    random_init: bool = typer.Option(
        False, "--random-init", help="timm: describe the architecture without weights."
    ),
    as_json: bool = typer.Option(False, "--json", help="The description as one JSON object on stdout."),
) -> None:
    """Architecture, family, task, input bands, normalisation, parameters and license of any source.

    Cached weights are read from the cache (nothing is downloaded again); nothing is written.
    """
    from geosane.zoo.sources import resolve

    row = describe_model(resolve(source, random_init=random_init))
    if as_json:
        sys.stdout.write(json.dumps(row, indent=2) + "\n")
        return
    from rich.table import Table

    def text(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, dict) and "mean" in value and "std" in value:
            mean = ", ".join(f"{v:.4g}" for v in value["mean"])
            std = ", ".join(f"{v:.4g}" for v in value["std"])
            extra = f" ({value['units']})" if value.get("units") else ""
            return f"mean [{mean}], std [{std}]{extra}"
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        return str(value)

    arch = row["arch"]
    table = Table(title=f"{source}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row(
        "architecture",
        f"{arch['library']}:{arch['name']} {arch['kwargs']}"
        if arch
        else f"unknown ({row['no_architecture']})",
    )
    for key in ("family", "task", "in_chans", "num_classes"):
        table.add_row(key, text(row[key]))
    if row["layout"]:
        table.add_row("layout", str(row["layout"]))
    if row["temporal_frames"]:
        table.add_row("temporal_frames", f"{row['temporal_frames']} (input [B, T, C, H, W])")
    table.add_row("bands", text(row["bands"]) if row["bands"] else text(row["bands_note"]))
    table.add_row("normalization", text(row["normalization"]))
    if row["resize"]:
        table.add_row("resize", text(row["resize"]))
    table.add_row("params", f"{_human(row['num_params'])} ({', '.join(row['dtypes'])})")
    table.add_row("license", text(row["license"]))
    for key in ("remapped", "filled_from_init"):
        if row[key]:
            table.add_row(key, "; ".join(str(v) for v in row[key]))
    if row["dropped"]:
        shown = ", ".join(row["dropped"][:4]) + (" ..." if len(row["dropped"]) > 4 else "")
        table.add_row("dropped", f"{len(row['dropped'])} published tensors: {shown}")
    console.print(table)


# ---------------------------------------------------------------------------------------------
# list


@zoo_app.command("verify")
def verify_models(zoo: Path = ZOO_OPTION) -> None:
    """Check every model file (inside the zoo, loads, SHA-256 of its tensors); exit 1 on a problem.

    Reports only: nothing is repaired or written.
    """
    from geosane.console import report_verification
    from geosane.zoo.manifest import verify_zoo

    report_verification(f"zoo {zoo}", verify_zoo(zoo))


@zoo_app.command("list")
def list_models(
    zoo: Path = ZOO_OPTION,
    as_json: bool = typer.Option(False, "--json", help="The manifest rows as a JSON list on stdout."),
) -> None:
    """Show the zoo's manifest as a table."""
    from dataclasses import asdict

    from rich.table import Table

    from geosane.zoo.manifest import Zoo

    target = Zoo(zoo)
    if as_json:
        rows = []
        for entry in target:
            row = asdict(entry)
            row["file_exists"] = target.weights_path(entry).is_file()
            rows.append(row)
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title=f"zoo {target.path} ({len(target)} models)")
    columns = ("id", "family", "arch", "params", "in", "task", "classes", "accuracy", "license", "source")
    for column in columns:
        table.add_column(
            column, justify="right" if column in ("params", "in", "classes", "accuracy") else "left"
        )
    for entry in target:
        accuracy = entry.metadata.get("accuracy")
        missing = not target.weights_path(entry).is_file()
        table.add_row(
            f"[red]{entry.id} (file missing)[/]" if missing else entry.id,
            entry.family or "-",
            entry.arch["name"] if entry.arch else "-",
            _human(entry.num_params),
            str(entry.in_chans) if entry.in_chans is not None else "-",
            entry.task or "-",
            str(entry.num_classes) if entry.num_classes is not None else "-",
            f"{accuracy:.3f}" if isinstance(accuracy, (int, float)) else "-",
            entry.license or "-",
            entry.source,
        )
    console.print(table)


# ---------------------------------------------------------------------------------------------
# build


@zoo_app.command("build")
def build(
    recipe: str = typer.Argument(..., help="Recipe YAML, or a packaged recipe name: tiny, small."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. dataset=../shared/data/rsscn7."),
    zoo: Path = ZOO_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and show the members; train nothing."),
) -> None:
    """Train a population of small models from a recipe (resumes: finished members are skipped)."""
    from geosane.zoo.build import build_zoo, prepare_build, recipe_summary

    if dry_run:
        from rich.table import Table

        plan = prepare_build(recipe, overrides or [])
        status = plan.status(zoo)
        table = Table(title=f"recipe '{plan.recipe.name}': {len(plan.members)} members")
        for column in (
            "name",
            "family",
            "arch",
            "classes",
            "bands",
            "seed",
            "epochs",
            "lr",
            "init_from",
            "status",
        ):
            table.add_column(column)
        for row in recipe_summary(plan):
            table.add_row(
                row["name"], row["family"], row["arch"], str(row["classes"]), str(row["bands"]),
                str(row["seed"]), str(row["epochs"]), f"{row['lr']:g}", row["init_from"] or "-",
                status[row["name"]],
            )  # fmt: skip
        console.print(table)
        return
    result = build_zoo(recipe, zoo, overrides or [])
    console.print(f"zoo {result.path}: {len(result)} models")
