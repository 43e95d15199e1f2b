"""``geosane demo``: the whole model foundry on one image folder, end to end.

    image folder ──► zoo build ──► tokenize ──► train the autoencoder ──► generate weights for a
    prompt (a zoo architecture, and one absent from the zoo) ──► compare fine-tuning from scratch,
    the prompt, the zoo average, TIES, DARE and the generated weights ──► report.md

Every stage writes into ``OUT/<stage>`` and resumes: a rerun after an interruption skips what is
finished (zoo members, tokenized models, autoencoder steps, generated directories, compare runs).
The settings live in ``configs/demo/default.yaml`` (``--quick``: ``configs/demo/quick.yaml``).
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from geosane.config import PACKAGED_CONFIGS, load_config, save_config
from geosane.console import console
from geosane.errors import ConfigError, DataError, GeosaneError
from geosane.io import claim_out_dir, read_json, write_json, write_text

__all__ = ["DemoConfig", "DemoResult", "load_demo_config", "prepare_data", "register", "run_demo"]

EUROSAT_HINT = (
    "pass an image folder (root/<class>/<image>), e.g. `geosane demo --data ../shared/data/rsscn7`"
)


@dataclass
class DemoData:
    """Where the images come from. ``max_per_class`` copies a seeded subset into ``OUT/data``."""

    root: Path | None = None
    max_per_class: int | None = None
    eurosat_per_class: int = 300  # with no root: EuroSAT (RGB) through TorchGeo, this many per class


@dataclass
class DemoZoo:
    recipe: str = "demo"  # a packaged zoo recipe name or a YAML path
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoTokens:
    token_size: int = 128
    mode: str = "dense"


@dataclass
class DemoAutoencoder:
    preset: str = "small"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoGenerate:
    """Generation for one prompt; ``prompt`` is a zoo member id or any model source."""

    prompt: str = "resnet-base"
    random_init: bool = False
    num_candidates: int = 10
    top_k: int = 3
    bandwidth: float = 0.2
    kde_mode: str = "token"
    anchors: int = 0
    decode: str = "direct"  # or "residual": prompt + decode(z) - decode(z_prompt) (see docs/demo.md)


@dataclass
class DemoCompare:
    config: str = "compare_rsscn7"  # a packaged downstream config or a YAML path
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoConfig:
    """Settings of ``geosane demo`` (``configs/demo/default.yaml``)."""

    out: Path = Path("geosane-demo")
    data: DemoData = field(default_factory=DemoData)
    image_size: int = 32
    split_seed: int = 0
    seed: int = 0
    zoo: DemoZoo = field(default_factory=DemoZoo)
    tokens: DemoTokens = field(default_factory=DemoTokens)
    autoencoder: DemoAutoencoder = field(default_factory=DemoAutoencoder)
    generate: DemoGenerate = field(default_factory=DemoGenerate)
    compare: DemoCompare = field(default_factory=DemoCompare)
    cross_architecture: DemoGenerate | None = None
    cross_compare: DemoCompare | None = None


@dataclass
class DemoResult:
    out: Path
    report: Path
    seconds: dict[str, float]
    verdicts: dict[str, str]


def load_demo_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DemoConfig:
    """The packaged default (or ``quick``) demo config, or a YAML file, plus dotted overrides."""
    if path is None or str(path) in ("default", "quick"):
        path = PACKAGED_CONFIGS / "demo" / f"{path or 'default'}.yaml"
    return load_config(DemoConfig, path, list(overrides))


# ---------------------------------------------------------------------------------------------
# data


def prepare_data(cfg: DemoConfig) -> Path:
    """The image folder every stage uses (a seeded per-class subset when ``max_per_class`` is set)."""
    from geosane.data.folder import IMAGE_EXTENSIONS

    if cfg.data.root is None:
        check_data_source(cfg)  # TorchGeo present (or EuroSAT already exported)
        source = _download_eurosat(cfg.out / "downloads" / "eurosat", cfg.out / "data" / "eurosat-rgb",
                                   cfg.data.eurosat_per_class, cfg.seed)  # fmt: skip
    else:
        source = Path(cfg.data.root).expanduser()
    classes = _class_folders(source)  # refuses a missing folder or fewer than two classes
    if cfg.data.max_per_class is None:
        return source
    subset = cfg.out / "data" / f"{source.name}-{cfg.data.max_per_class}-per-class"
    if (subset / ".complete").exists():
        return subset
    tmp = subset.with_name(subset.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = random.Random(cfg.seed)
    for cls in classes:
        files = sorted(p for p in cls.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        rng.shuffle(files)
        (tmp / cls.name).mkdir(parents=True)
        for f in files[: cfg.data.max_per_class]:
            shutil.copy2(f, tmp / cls.name / f.name)
    (tmp / ".complete").write_text(str(source.resolve()) + "\n")
    shutil.rmtree(subset, ignore_errors=True)
    tmp.rename(subset)
    return subset


def _class_folders(source: Path) -> list[Path]:
    if not source.is_dir():
        raise DataError(f"--data {source} is not a directory; {EUROSAT_HINT}")
    classes = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"--data {source} needs at least two class sub-folders (root/<class>/<image>)")
    return classes


def check_data_source(cfg: DemoConfig) -> None:
    """Refuse an unusable ``--data`` (or, without it, a machine that cannot fetch EuroSAT) up front."""
    if cfg.data.root is not None:
        _class_folders(Path(cfg.data.root).expanduser())
        return
    from geosane.data.torchgeo import torchgeo_available

    if not (cfg.out / "data" / "eurosat-rgb" / ".complete").exists() and not torchgeo_available():
        raise DataError(
            "no --data given, and the default dataset (EuroSAT) needs TorchGeo: "
            f"pip install 'geosane[torchgeo]', or {EUROSAT_HINT}"
        )


def _download_eurosat(root: Path, folder: Path, per_class: int, seed: int) -> Path:
    """EuroSAT through TorchGeo (RGB bands, ``per_class`` images per class) as a PNG image folder."""
    if (folder / ".complete").exists():
        return folder
    from geosane.data.torchgeo import open_torchgeo

    console.print(f"no --data given: downloading EuroSAT through TorchGeo into {root} ...")
    existed = root.exists()
    try:
        dataset = open_torchgeo("eurosat", root, "train", download=True, kwargs={"bands": ("B04", "B03", "B02")})
    except DataError as exc:
        if not existed:  # leave no half-downloaded folder behind
            shutil.rmtree(root, ignore_errors=True)
        cause = str(exc).split("; offline?")[0]  # the download error, without the generic data.* hints
        raise DataError(f"no --data given and EuroSAT could not be downloaded ({cause}); {EUROSAT_HINT}") from None
    _export_folder(dataset, folder, per_class, seed)
    return folder


def _export_folder(dataset: Any, folder: Path, per_class: int, seed: int) -> None:
    """Write a seeded per-class subset of a single-label TorchGeo dataset as 8-bit PNGs."""
    import numpy as np
    from PIL import Image

    from geosane.data.torchgeo import dataset_classes, dataset_labels

    classes = dataset_classes(dataset)
    labels = dataset_labels(dataset)
    if labels is None:
        labels = np.asarray([int(dataset[i]["label"]) for i in range(len(dataset))])
    rng = np.random.default_rng(seed)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for index, name in enumerate(classes):
        (tmp / name).mkdir(parents=True)
        chosen = rng.permutation(np.flatnonzero(labels == index))[:per_class]
        for i in chosen:
            image = dataset[int(i)]["image"].float().numpy()  # [3, H, W] reflectances
            low, high = np.percentile(image, 2), np.percentile(image, 98)
            rgb = np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255
            Image.fromarray(rgb.transpose(1, 2, 0).astype(np.uint8)).save(tmp / name / f"{int(i):05d}.png")
    (tmp / ".complete").write_text("EuroSAT RGB (TorchGeo)\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


# ---------------------------------------------------------------------------------------------
# stages


def _zoo(cfg: DemoConfig, data: Path) -> Path:
    from geosane.zoo import build_zoo

    overrides = {"dataset": str(data), "image_size": cfg.image_size, "split_seed": cfg.split_seed,
                 **cfg.zoo.overrides}  # fmt: skip
    build_zoo(cfg.zoo.recipe, cfg.out / "zoo", overrides)
    return cfg.out / "zoo"


def _tokens(cfg: DemoConfig, zoo: Path) -> Path:
    from geosane.tokens import tokenize_zoo

    tokenize_zoo(zoo, cfg.out / "tokens", token_size=cfg.tokens.token_size, mode=cfg.tokens.mode)
    return cfg.out / "tokens"


def _autoencoder(cfg: DemoConfig, store: Path) -> Path:
    from geosane.autoencoder import load_autoencoder_config
    from geosane.autoencoder.training import checkpoints, train

    out = cfg.out / "autoencoder"
    overrides = {"model.d_t": cfg.tokens.token_size, **cfg.autoencoder.overrides,
                 "data.store": str(store), "train.out": str(out), "train.seed": cfg.seed}  # fmt: skip
    ae_cfg = load_autoencoder_config(cfg.autoencoder.preset, overrides)
    export, summary = out / "autoencoder.safetensors", out / "summary.json"
    if export.exists() and summary.exists() and read_json(summary).get("steps") == ae_cfg.train.max_steps:
        console.print(f"autoencoder: {export} is finished ({ae_cfg.train.max_steps} steps)")
        return export
    result = train(ae_cfg, resume=bool(checkpoints(out / "checkpoints")))
    return result.export


def _prompt_source(spec: DemoGenerate, zoo: Path) -> str:
    from geosane.zoo import Zoo

    ids = set(Zoo(zoo).ids)
    return f"zoo:{zoo.resolve()}#{spec.prompt}" if spec.prompt in ids else spec.prompt


def _generate(cfg: DemoConfig, spec: DemoGenerate, name: str, ae: Path, data: Path, store: Path) -> Path:
    from geosane.generation import generate
    from geosane.generation.pipeline import config_from_kwargs

    out = cfg.out / "generated" / name
    if (out / "model_card.json").exists():
        console.print(f"generate: {out} is finished")
        return out
    generate(
        config_from_kwargs(
            ae=ae, prompt=_prompt_source(spec, cfg.out / "zoo"), out=out, num_candidates=spec.num_candidates,
            top_k=spec.top_k, select_data=data, split_seed=cfg.split_seed, image_size=cfg.image_size,
            kde_mode=spec.kde_mode, bandwidth=spec.bandwidth, seed=cfg.seed, random_init=spec.random_init,
            store=store if spec.anchors else None, anchors=spec.anchors, decode=spec.decode, overwrite=True,
        )
    )
    return out


def _compare(cfg: DemoConfig, spec: DemoCompare, gen: DemoGenerate, name: str, data: Path, generated: Path) -> Any:
    from geosane.downstream import compare, load_compare_config

    overrides = {
        "data.root": str(data), "data.image_size": cfg.image_size, "data.split_seed": cfg.split_seed,
        "prompt": _prompt_source(gen, cfg.out / "zoo"), "zoo.dir": str(cfg.out / "zoo"),
        "generated.dir": str(generated), "out": str(cfg.out / "compare" / name),
        "arch.name": "",  # the architecture comes from the prompt / the generated model card
        **spec.overrides,
    }  # fmt: skip
    if gen.random_init and str(overrides["prompt"]).startswith("timm:"):
        overrides["prompt"] = None  # a random-init prompt is scratch; compare it as "scratch"
    return compare(load_compare_config(spec.config, overrides))


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run (or resume) every stage of the demo and write ``OUT/report.md``."""
    seconds: dict[str, float] = {}

    def timed(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        console.rule(f"[bold]{stage}")
        started = time.perf_counter()
        value = fn(*args)
        seconds[stage] = time.perf_counter() - started
        return value

    if cfg.cross_architecture is not None and cfg.cross_compare is None:
        raise ConfigError("cross_architecture needs a cross_compare section (the comparison to run)")
    created = not cfg.out.exists()
    claim_out_dir(cfg.out, "demo", {"--data": cfg.data.root})
    started = time.perf_counter()
    try:
        data = timed("data", prepare_data, cfg)
    except GeosaneError:
        if created:  # a run that could not even get its data leaves nothing behind
            shutil.rmtree(cfg.out, ignore_errors=True)
        raise
    save_config(cfg, cfg.out / "demo.yaml")
    zoo = timed("zoo build", _zoo, cfg, data)
    store = timed("tokenize", _tokens, cfg, zoo)
    ae = timed("autoencoder", _autoencoder, cfg, store)
    runs = [("prompt", cfg.generate, cfg.compare)]
    if cfg.cross_architecture is not None and cfg.cross_compare is not None:
        runs.append(("cross-architecture", cfg.cross_architecture, cfg.cross_compare))
    compared: dict[str, Any] = {}
    for name, gen, cmp in runs:
        generated = timed(f"generate ({name})", _generate, cfg, gen, name, ae, data, store)
        compared[name] = timed(f"compare ({name})", _compare, cfg, cmp, gen, name, data, generated)
    seconds["total"] = time.perf_counter() - started
    report = _write_report(cfg, data, seconds, compared)
    return DemoResult(cfg.out, report, seconds, {k: v.verdict for k, v in compared.items()})


def _write_report(cfg: DemoConfig, data: Path, seconds: dict[str, float], compared: dict[str, Any]) -> Path:
    lines = [
        "# geosane demo",
        "",
        f"Data: `{data}` at {cfg.image_size} px (split seed {cfg.split_seed}). Zoo: `{cfg.out / 'zoo'}`; "
        f"token store: `{cfg.out / 'tokens'}`; autoencoder: `{cfg.out / 'autoencoder'}`.",
        "",
    ]
    for name, result in compared.items():
        lines += [f"## {name}", "", result.verdict, "", f"Full report: `{result.report}`", ""]
        lines += ["| initialization | test " + result.metric + " (%, mean ± std over seeds) |", "|---|---|"]
        for s in result.summaries:
            lines.append(f"| {s.name} | {100 * s.test_mean:.1f} ± {100 * s.test_std:.1f} |")
        lines.append("")
    lines += ["## Time per stage (this run; resumed stages count only what was left)", "",
              "| stage | seconds |", "|---|---|"]  # fmt: skip
    lines += [f"| {stage} | {value:.0f} |" for stage, value in seconds.items()]
    report = cfg.out / "report.md"
    write_text(report, "\n".join(lines) + "\n")
    write_json(cfg.out / "timings.json", seconds)
    return report


# ---------------------------------------------------------------------------------------------
# CLI


def demo_command(
    data: Path | None = typer.Option(None, "--data", help="Image folder root/<class>/<image> (default: EuroSAT via TorchGeo)."),
    out: Path = typer.Option(Path("geosane-demo"), "--out", help="Where every stage writes (reruns resume)."),
    quick: bool = typer.Option(False, "--quick", help="A ~2-minute smoke run (tiny zoo, autoencoder and budget)."),
    config: Path | None = typer.Option(None, "--config", help="A demo YAML config instead of the packaged one."),
    overrides: list[str] | None = typer.Argument(None, help="Dotted overrides, e.g. compare.overrides.train.epochs=5."),
) -> None:
    """Build a zoo, tokenize it, train the autoencoder, generate weights and compare fine-tuning."""
    cfg = load_demo_config(config or ("quick" if quick else "default"), overrides or [])
    cfg.out = out
    if data is not None:
        cfg.data.root = data
    result = run_demo(cfg)
    for name, verdict in result.verdicts.items():
        console.print(f"[bold]{name}:[/] {verdict}")
    console.print(f"demo finished in {result.seconds['total'] / 60:.1f} min; report: [bold]{result.report}[/]")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    del bench
    app.command("demo")(demo_command)
