"""``geosane demo``: the model foundry's transfer benchmark on one image folder, end to end.

    image folder ──► ``geosane bench foundry`` at the demo's budget (``configs/bench/demo.yaml``):
    source/target split ──► source zoo and prompts ──► tokenize ──► autoencoder ──► generate
    ──► every control at one budget, 3 seeds ──► generator levers ──► OUT/report.md

The protocol is the benchmark's (``docs/bench_foundry.md``): no zoo model sees a target image,
the prompts are not in the zoo, and the generated weights face scratch, the fine-tuned prompt,
prompt + noise, the nearest zoo member and its reconstruction, the merges, weight selection,
pruning and distillation. Every stage resumes. ``--quick`` (``configs/demo/quick.yaml``) is the
few-minute smoke run CI uses; its numbers say nothing about quality.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from geosane.config import find_config, load_config, packaged_configs, save_config
from geosane.console import console
from geosane.errors import ConfigError, DataError, GeosaneError
from geosane.io import atomic_directory, claim_out_dir, write_json, write_text

__all__ = ["DemoConfig", "DemoResult", "load_demo_config", "prepare_data", "register", "run_demo"]

EUROSAT_HINT = "pass an image folder (root/<class>/<image>), e.g. `geosane demo --data ../shared/data/rsscn7`"


@dataclass
class DemoData:
    """Where the images come from. ``max_per_class`` copies a seeded subset into ``OUT/data``."""

    root: Path | None = None
    max_per_class: int | None = None
    eurosat_per_class: int = 300  # with no root: EuroSAT (RGB) through TorchGeo, this many per class


@dataclass
class DemoConfig:
    """Settings of ``geosane demo`` (``configs/demo/default.yaml``): data, and the benchmark preset."""

    out: Path = Path("geosane-demo")
    data: DemoData = field(default_factory=DemoData)
    seed: int = 0
    bench: str = "demo"  # a packaged benchmark preset (configs/bench/<name>.yaml) or a YAML path
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted overrides of the benchmark config


@dataclass
class DemoResult:
    out: Path
    report: Path
    seconds: dict[str, float]
    verdicts: dict[str, str]


def load_demo_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> DemoConfig:
    """The packaged default (or ``quick``) demo config, or a YAML file, plus dotted overrides."""
    return load_config(DemoConfig, find_config(path or "default", "demo"), list(overrides))


# ---------------------------------------------------------------------------------------------
# data


def prepare_data(cfg: DemoConfig) -> Path:
    """The image folder every stage uses (a seeded per-class subset when ``max_per_class`` is set)."""
    from geosane.data.folder import image_files

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
    rng = random.Random(cfg.seed)
    with atomic_directory(subset) as tmp:
        for cls in classes:
            files = image_files(cls)
            rng.shuffle(files)
            (tmp / cls.name).mkdir(parents=True)
            for f in files[: cfg.data.max_per_class]:
                shutil.copy2(f, tmp / cls.name / f.name)
        (tmp / ".complete").write_text(str(source.resolve()) + "\n")
    return subset


def _class_folders(source: Path) -> list[Path]:
    from geosane.data.folder import class_dirs

    if not source.is_dir():
        raise DataError(f"--data {source} is not a directory; {EUROSAT_HINT}")
    classes = class_dirs(source)
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
        dataset = open_torchgeo(
            "eurosat", root, "train", download=True, kwargs={"bands": ("B04", "B03", "B02")}
        )
    except DataError as exc:
        if not existed:  # leave no half-downloaded folder behind
            shutil.rmtree(root, ignore_errors=True)
        cause = str(exc).split("; offline?")[0]  # the download error, without the generic data.* hints
        raise DataError(
            f"no --data given and EuroSAT could not be downloaded ({cause}); {EUROSAT_HINT}"
        ) from None
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
    with atomic_directory(folder) as tmp:
        for index, name in enumerate(classes):
            (tmp / name).mkdir(parents=True)
            chosen = rng.permutation(np.flatnonzero(labels == index))[:per_class]
            for i in chosen:
                image = dataset[int(i)]["image"].float().numpy()  # [3, H, W] reflectances
                low, high = np.percentile(image, 2), np.percentile(image, 98)
                rgb = np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255
                Image.fromarray(rgb.transpose(1, 2, 0).astype(np.uint8)).save(tmp / name / f"{int(i):05d}.png")
        (tmp / ".complete").write_text("EuroSAT RGB (TorchGeo)\n")


# ---------------------------------------------------------------------------------------------
# stages


def bench_config(cfg: DemoConfig, data: Path) -> Any:
    """The benchmark the demo runs: its preset with ``overrides``, on ``data``, into ``OUT/foundry``."""
    from geosane.benchmark.foundry import check_bench_data, dotted, load_bench_config

    preset = cfg.bench
    try:
        path = find_config(preset, "bench")
    except ConfigError:  # worded for the demo config's `bench:` key
        raise ConfigError(
            f"bench preset '{preset}' not found (packaged: {', '.join(packaged_configs('bench'))}, or a YAML path)"
        ) from None
    overrides = [f"{k}={_yaml(v)}" for k, v in dotted(cfg.overrides).items()]
    bench = load_bench_config(path, overrides)
    bench.out, bench.data, bench.seed = cfg.out / "foundry", data, cfg.seed
    check_bench_data(bench)
    return bench


def _yaml(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run (or resume) the demo and write ``OUT/report.md``."""
    from geosane.benchmark.foundry import run_foundry_bench

    created = not cfg.out.exists()
    claim_out_dir(cfg.out, "demo", {"--data": cfg.data.root})
    started = time.perf_counter()
    try:
        console.rule("[bold]data")
        data = prepare_data(cfg)
        bench = bench_config(cfg, data)
    except GeosaneError:
        if created:  # a run that could not even get its data leaves nothing behind
            shutil.rmtree(cfg.out, ignore_errors=True)
        raise
    save_config(cfg, cfg.out / "demo.yaml")
    seconds = {"data": time.perf_counter() - started}
    result = run_foundry_bench(bench)
    seconds.update({k: v for k, v in result.seconds.items() if k != "total"})
    seconds["total"] = time.perf_counter() - started
    verdicts = {case["name"]: " ".join(_verdict(case)) for case in result.summary["cases"]}
    report = cfg.out / "report.md"
    text = result.report.read_text(encoding="utf-8")
    text = text.replace("# geosane bench foundry", f"# geosane demo\n\nData: `{data}`. The benchmark's outputs: "
                        f"`{bench.out}` (its own report: `{result.report}`).", 1)  # fmt: skip
    write_text(report, text)
    write_json(cfg.out / "timings.json", seconds)
    return DemoResult(cfg.out, report, seconds, verdicts)


def _verdict(case: dict[str, Any]) -> list[str]:
    from geosane.benchmark.report import target_lines

    return target_lines(case)


# ---------------------------------------------------------------------------------------------
# CLI


def demo_command(
    data: Path | None = typer.Option(
        None, "--data", help="Image folder root/<class>/<image> (default: EuroSAT via TorchGeo)."
    ),
    out: Path = typer.Option(Path("geosane-demo"), "--out", help="Where every stage writes (reruns resume)."),
    quick: bool = typer.Option(
        False, "--quick", help="A ~2-minute smoke run (tiny zoo, autoencoder and budget)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="A demo YAML config instead of the packaged one."
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="Dotted overrides, e.g. compare.overrides.train.epochs=5."
    ),
) -> None:
    """Build a zoo, tokenize it, train the autoencoder, generate weights and compare fine-tuning."""
    cfg = load_demo_config(config or ("quick" if quick else "default"), overrides or [])
    cfg.out = out
    if data is not None:
        cfg.data.root = data
    result = run_demo(cfg)
    for name, verdict in result.verdicts.items():
        console.print(f"[bold]{name}:[/] {verdict}")
    console.print(
        f"demo finished in {result.seconds['total'] / 60:.1f} min; report: [bold]{result.report}[/]"
    )


def register(app: typer.Typer, bench: typer.Typer) -> None:
    del bench
    app.command("demo")(demo_command)
