"""``geosane bench foundry``: does generation add knowledge a user could not get otherwise?

A transfer benchmark in the paper's setting (method notes §1.6, §4), built from one image folder:

    image folder ──► split per class: SOURCE images | TARGET images (never seen by any model)
    SOURCE ──► zoo build (class-subset source tasks, 4 families, several sizes)   OUT/zoo
           ──► prompts (another source task, kept out of the zoo)                  OUT/prompts
    zoo ──► tokenize ──► autoencoder ──► generate for each prompt case             OUT/generated/<case>
    TARGET: every zoo model fine-tuned once, the best on select is the KD teacher OUT/teachers/<id>
    TARGET train/select/test ──► compare every control at one budget, N seeds    OUT/compare/<case>
    levers: other generator settings, generated-only compares on the same seeds  OUT/levers/<name>
    ──► OUT/report.md, OUT/report.json, plots

Selection (generate's candidate ranking) sees only the target's ``select`` folder; ``test`` is
only reported. Every stage resumes: a rerun after an interruption skips what is finished and gives
the numbers of an uninterrupted run (everything is seeded). Settings: ``configs/bench/foundry.yaml``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from geosane.config import find_config, load_config, packaged_configs, save_config, to_dict
from geosane.console import console
from geosane.errors import ConfigError, DataError, GeosaneError, cli_flags
from geosane.generation.config import GenerateConfig
from geosane.io import atomic_directory, claim_out_dir, read_json, write_json
from geosane.tasks.config import TrainingBudget

__all__ = [
    "BenchBudget",
    "DetectionRow",
    "FoundryBenchConfig",
    "FoundryResult",
    "GeneratorSetting",
    "PromptCase",
    "check_bench_data",
    "load_bench_config",
    "run_foundry_bench",
    "split_source_target",
]

CONTROLS = [
    "scratch", "prompt", "prompt_noise", "nearest", "reconstruction", "zoo_average", "ties", "dare",
    "weight_selection", "pruned", "distillation", "generated",
]  # fmt: skip


@dataclass
class GeneratorSetting:
    """One ``geosane generate`` configuration (the fields of :class:`GenerateConfig` it sets).

    The benchmark's own choices are a wider kernel, 4 anchors and residual decoding (as the
    packaged ``configs/generate/anchored.yaml``); every other default is :class:`GenerateConfig`'s.
    """

    num_candidates: int = GenerateConfig.num_candidates
    top_k: int = GenerateConfig.top_k
    bandwidth: float = 0.5
    anchors: int = 4
    align_anchors: bool = GenerateConfig.align_anchors
    decode: str = "residual"
    kde_mode: str = GenerateConfig.kde_mode
    proxy: str = GenerateConfig.proxy
    generate_only: list[str] = field(default_factory=list)
    bn_batches: int = GenerateConfig.bn_batches


TARGETS = ["rsscn7", "csmask"]
CSMASK_CONTROLS = ["scratch", "prompt", "prompt_noise", "nearest", "zoo_average", "ties", "dare",
                   "weight_selection", "pruned", "generated"]  # fmt: skip
SEGMENTATION_BUDGET = {"epochs", "batch_size", "lr", "weight_decay", "warmup_epochs"}


@dataclass
class PromptCase:
    """A prompt of the benchmark: a model of the prompts zoo, and what the case tests.

    ``target: rsscn7`` (default): the benchmark's image-folder target. ``target: csmask``: the
    prompt's stem is adapted to ``in_chans`` bands (generate's ``in_chans``), generated from the
    benchmark's zoo, and compared on csmask cloud/shadow segmentation (``data``: the scenes folder,
    the ``compare_preset``'s chips and decoder, ``csmask`` by default) with ``budget`` (train fields)
    of its own. ``compare``: further dotted overrides of that compare (e.g. ``data.normalization:
    auto`` so that a real pretrained U-Net prompt, ``pkg:ukis_csmask/model_6b_l2a.onnx``, sees the
    band statistics it was trained with; every init of the case then sees them).

    ``zoo``: model sources forming the case's *own* zoo instead of the benchmark's RSSCN7 one (the
    four real csmask U-Nets, ``pkg:ukis_csmask/model_*.onnx``; ONNX members are parity-checked on
    the case's scenes), tokenized and encoded by an autoencoder of its own (``autoencoder``: dotted
    overrides of the benchmark's). The prompt may be one of them (its source or its zoo id);
    generation, nearest, zoo average, TIES and DARE then come from that zoo.
    """

    name: str
    prompt: str
    description: str = ""
    target: str = "rsscn7"
    in_chans: int | None = None
    data: Path | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    compare_preset: str = "csmask"
    compare: dict[str, Any] = field(default_factory=dict)
    zoo: list[str] = field(default_factory=list)
    autoencoder: dict[str, Any] = field(default_factory=dict)
    generator: dict[str, Any] = field(default_factory=dict)  # GeneratorSetting fields for this case


@dataclass
class BenchBudget(TrainingBudget):
    """The fine-tuning budget every initialization gets on the target (same for all)."""

    key_prefix: ClassVar[str] = "budget."

    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.003
    warmup_epochs: float = 0.5
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    workers: int = 2


@dataclass
class Lever:
    """A generator setting measured against the main one (``settings`` override its fields).

    ``autoencoder``: dotted overrides of the benchmark's autoencoder (e.g. ``train.max_steps``);
    non-empty, the lever trains its own autoencoder (from scratch, in ``OUT/levers/<name>``).
    """

    name: str
    description: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    autoencoder: dict[str, Any] = field(default_factory=dict)
    # a zoo recipe (configs/zoo name or file): the lever builds that zoo on the SOURCE images, tokenizes
    # it, trains its own autoencoder and draws its anchors from it (OUT/levers/<name>/{zoo,tokens,...})
    zoo_recipe: str = ""

    def __post_init__(self) -> None:
        self.autoencoder = dotted(self.autoencoder)


def dotted(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for autoencoder overrides written either way (``train.max_steps: 9`` or nested
    ``train: {max_steps: 9}``, which a command-line override produces); nested keys win."""
    flat: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            nested.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return {**flat, **nested}


@dataclass
class DetectionRow:
    """The detection row: case ``case``'s prompt, zoo and generated weights as detector backbones.

    Three composite box sets (:func:`geosane.data.build_composite_detection`: real RSSCN7 object
    scenes pasted onto real background scenes) are built from the *target's* train, select and
    test folders, so no zoo model saw an image of them and the three splits share no source photo.
    ``geosane compare`` (``compare_detection``) runs ``inits`` on them at this budget, on the
    benchmark's seeds; the backbone is carried, the FPN and heads start fresh for every init.
    """

    enabled: bool = False
    case: str = "a"
    images: dict[str, int] = field(default_factory=lambda: {"train": 120, "select": 30, "test": 60})
    image_size: int = 64
    max_objects: int = 2
    detector: str = "fcos"
    fpn_channels: int = 64
    epochs: int = 10
    batch_size: int = 16
    lr: float = 0.001
    inits: list[str] = field(
        default_factory=lambda: [
            "scratch",
            "prompt",
            "prompt_noise",
            "nearest",
            "zoo_average",
            "ties",
            "dare",
            "generated",
        ]
    )


@dataclass
class FoundryBenchConfig:
    """Settings of ``geosane bench foundry`` (``configs/bench/foundry.yaml``)."""

    out: Path = Path("geosane-bench-foundry")
    data: Path | None = None
    eval_folder: Path | None = None  # a separate folder of the target's classes used as test split
    image_size: int = 32
    source_fraction: float = 0.5
    target_fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.5, "select": 0.2, "test": 0.3}
    )
    split_seed: int = 0
    seed: int = 0
    zoo_recipe: str = "foundry_source"
    prompts_recipe: str = "foundry_prompts"
    token_size: int = 128
    autoencoder_preset: str = "small"
    autoencoder: dict[str, Any] = field(default_factory=dict)
    generator: GeneratorSetting = field(default_factory=GeneratorSetting)
    cases: list[PromptCase] = field(default_factory=list)
    controls: list[str] = field(default_factory=lambda: list(CONTROLS))
    budget: BenchBudget = field(default_factory=BenchBudget)
    levers: list[Lever] = field(default_factory=list)
    # more levers run after ``levers`` (``foundry_full.yaml``: the two expensive ones, which take
    # the default benchmark past its 60 minutes); a base config's list is kept this way
    extra_levers: list[Lever] = field(default_factory=list)
    lever_case: str = "a"
    detection: DetectionRow = field(default_factory=DetectionRow)

    def __post_init__(self) -> None:
        self.autoencoder = dotted(self.autoencoder)
        self.levers = [*self.levers, *self.extra_levers]
        self.extra_levers = []
        if not 0.0 < self.source_fraction < 1.0:
            raise ValueError(f"source_fraction must be in (0, 1), got {self.source_fraction}")
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise ValueError(f"unknown control(s) {unknown}; choose from {', '.join(CONTROLS)}")
        if "generated" not in self.controls:
            raise ValueError("controls must include 'generated' (what the benchmark measures)")
        names = [c.name for c in self.cases]
        if len(names) != len(set(names)):
            raise ValueError(f"prompt case names must be distinct, got {names}")
        for case in self.cases:
            key = f"case '{case.name}':"
            if case.target not in TARGETS:
                raise ValueError(f"{key} target '{case.target}' is unknown; choose from {', '.join(TARGETS)}")
            bad_budget = sorted(set(case.budget) - SEGMENTATION_BUDGET)
            if bad_budget:
                raise ValueError(
                    f"{key} budget: unknown key(s) {bad_budget} (known: {sorted(SEGMENTATION_BUDGET)})"
                )
            if case.target == "csmask" and case.data is None:
                raise ValueError(
                    f"{key} data: a csmask case needs the scenes folder, e.g. ../shared/data/csmask"
                )
            if (case.zoo or case.autoencoder) and case.target != "csmask":
                raise ValueError(f"{key} zoo / autoencoder: a case zoo is for csmask cases (the others use the benchmark's)")
            if case.autoencoder and not case.zoo:
                raise ValueError(f"{key} autoencoder: needs the case's own zoo (zoo: [SOURCES])")
            if len(set(case.zoo)) != len(case.zoo):
                raise ValueError(f"{key} zoo: sources repeat ({case.zoo})")
            if case.in_chans is not None and case.in_chans < 1:
                raise ValueError(f"{key} in_chans must be >= 1, got {case.in_chans}")
            presets = [Path(name).stem for name in packaged_configs("downstream")]
            if case.target == "csmask" and case.compare_preset not in presets:
                raise ValueError(
                    f"{key} compare_preset '{case.compare_preset}' is not a packaged downstream config "
                    f"({', '.join(presets)})"
                )
            bad_keys = sorted(k for k in case.compare if k.split(".")[0] in ("out", "inits", "seeds", "prompt"))
            if bad_keys:
                raise ValueError(f"{key} compare: {bad_keys} are set by the benchmark itself")
        lever_names = [lever.name for lever in self.levers]
        if len(lever_names) != len(set(lever_names)):
            raise ValueError(f"lever names must be distinct, got {lever_names}")
        known = {f.name for f in dataclasses.fields(GeneratorSetting)}
        for case in self.cases:
            bad = sorted(set(case.generator) - known)
            if bad:
                raise ValueError(
                    f"case '{case.name}': generator: unknown setting(s) {bad} (known: {sorted(known)})"
                )
        for lever in self.levers:
            bad = sorted(set(lever.settings) - known)
            if bad:
                raise ValueError(
                    f"lever '{lever.name}': unknown generator setting(s) {bad} (known: {sorted(known)})"
                )
        if self.levers and self.lever_case not in names:
            raise ValueError(f"lever_case '{self.lever_case}' is not a prompt case ({', '.join(names)})")
        if self.levers and next(c for c in self.cases if c.name == self.lever_case).target != "rsscn7":
            raise ValueError(
                f"lever_case '{self.lever_case}' must be an rsscn7 case (levers compare on the target)"
            )
        if self.detection.enabled and self.detection.case not in names:
            raise ValueError(
                f"detection.case '{self.detection.case}' is not a prompt case ({', '.join(names)})"
            )


@dataclass
class FoundryResult:
    out: Path
    report: Path
    seconds: dict[str, float]
    summary: dict[str, Any]


def load_bench_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> FoundryBenchConfig:
    """The packaged ``foundry`` config (or ``quick``), or a YAML file, plus dotted overrides."""
    name = "foundry" if path is None else "foundry_quick" if str(path) == "quick" else path
    try:
        return load_config(FoundryBenchConfig, find_config(name, "bench"), list(overrides))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# data


def split_source_target(cfg: FoundryBenchConfig) -> dict[str, Path]:
    """Copy the folder into ``OUT/data``: ``source/`` and ``target/{train,select,test}/``, per class.

    The files are split per class (``geosane.data.stratified_split`` with ``split_seed``, as every
    stage splits): ``source_fraction`` to the source pool (zoo and prompts), the rest to the target,
    itself cut by ``target_fractions``.
    ``OUT/data/split.json`` lists every file. Copies (not links): the benchmark must not change
    when the original folder does.
    """
    from geosane.data.folder import class_dirs, image_files
    from geosane.data.splits import split_sizes, stratified_split

    if cfg.data is None:
        raise DataError(
            "pass the image folder with data=FOLDER (root/<class>/<image>), e.g. ../shared/data/rsscn7",
            flags={"data=FOLDER": "--data"},
        )
    root = Path(cfg.data).expanduser()
    if not root.is_dir():
        raise DataError(f"data={root} is not a directory (root/<class>/<image>)", flags=cli_flags("data"))
    classes = class_dirs(root)
    if len(classes) < 2:
        raise DataError(f"data={root} needs at least two class sub-folders", flags=cli_flags("data"))
    out = cfg.out / "data"
    parts = {"source": out / "source", **{n: out / "target" / n for n in ("train", "select", "test")}}
    settings = {"root": str(root.resolve()), "seed": cfg.split_seed, "source_fraction": cfg.source_fraction,
                "target_fractions": dict(cfg.target_fractions)}  # fmt: skip
    if (out / "split.json").is_file():
        recorded = read_json(out / "split.json")
        changed = [k for k, v in settings.items() if recorded.get(k) != v]
        if changed:
            raise ConfigError(
                f"{cfg.out} holds a benchmark split with other settings ({', '.join(changed)}: "
                f"{[recorded.get(k) for k in changed]} there, {[settings[k] for k in changed]} now); "
                "its zoo and runs belong to that split: choose another output directory"
            )
        return parts
    fractions = cfg.target_fractions
    if set(fractions) != {"train", "select", "test"} or min(fractions.values()) <= 0:
        raise ConfigError(f"target_fractions needs positive train, select and test, got {fractions}")
    listing: dict[str, dict[str, list[str]]] = {}
    total = sum(fractions.values())
    cut = {"source": cfg.source_fraction} | {
        n: (1 - cfg.source_fraction) * fractions[n] / total for n in ("train", "select", "test")
    }
    files_of = {cls: image_files(cls) for cls in classes}
    for cls, files in files_of.items():
        empty = [name for name, size in split_sizes(len(files), cut).items() if size == 0]
        if empty:
            raise DataError(
                f"class {cls.name} has {len(files)} images: too few for a non-empty '{empty[0]}' part"
            )
    every = [f for files in files_of.values() for f in files]
    labels = [number for number, files in enumerate(files_of.values()) for _ in files]
    indices = stratified_split(labels, cut, seed=cfg.split_seed)
    with atomic_directory(out) as tmp:
        for number, cls in enumerate(classes):
            chunks = {name: [every[i] for i in indices[name] if labels[i] == number] for name in cut}
            for name, chosen in chunks.items():
                folder = (tmp / "source" if name == "source" else tmp / "target" / name) / cls.name
                folder.mkdir(parents=True)
                for f in chosen:
                    shutil.copy2(f, folder / f.name)
            listing[cls.name] = {name: [f.name for f in chosen] for name, chosen in chunks.items()}
        write_json(tmp / "split.json", {**settings, "files": listing})
    return parts


def check_bench_data(cfg: FoundryBenchConfig) -> None:
    """Refuse a folder with fewer classes than the recipes' class indices need (before any write)."""
    from geosane.data.folder import class_dirs
    from geosane.zoo import load_recipe

    assert cfg.data is not None
    root = Path(cfg.data).expanduser()
    if not root.is_dir():
        raise DataError(f"data={root} is not a directory (root/<class>/<image>)", flags=cli_flags("data"))
    classes = class_dirs(root)
    for lever in cfg.levers:
        if lever.zoo_recipe:
            try:
                find_config(lever.zoo_recipe, "zoo")
            except (ConfigError, FileNotFoundError, ValueError) as exc:
                raise ConfigError(f"lever '{lever.name}': zoo_recipe: {exc}") from None
    for case in cfg.cases:
        if case.target == "csmask":
            assert case.data is not None  # FoundryBenchConfig refuses a csmask case without it
            scenes = (
                sorted(Path(case.data).expanduser().glob("*.npz"))
                if Path(case.data).expanduser().is_dir()
                else []
            )
            if not scenes:
                raise DataError(f"case '{case.name}': data={case.data} holds no csmask scenes (*.npz)")
    recipes = [
        cfg.zoo_recipe,
        cfg.prompts_recipe,
        *[lever.zoo_recipe for lever in cfg.levers if lever.zoo_recipe],
    ]
    for recipe in recipes:
        members = load_recipe(recipe).members
        used = [c for m in members for c in (m.classes or []) if isinstance(c, int)]
        if used and max(used) >= len(classes):
            raise DataError(
                f"the benchmark's recipe '{recipe}' uses class index {max(used)}: data={root} needs at least "
                f"{max(used) + 1} class folders, it has {len(classes)}",
                flags=cli_flags("data"),
            )


def _target_images(parts: dict[str, Path], eval_folder: Path | None) -> list[Path]:
    from geosane.data.folder import image_files

    folders = [parts["train"], parts["select"], eval_folder or parts["test"]]
    return sorted(p for folder in folders for p in image_files(folder))


# ---------------------------------------------------------------------------------------------
# stages


def _build(cfg: FoundryBenchConfig, recipe: str, where: str, source: Path) -> Path:
    from geosane.zoo import build_zoo

    build_zoo(recipe, cfg.out / where, {"dataset": str(source), "image_size": cfg.image_size,
                                        "split_seed": cfg.split_seed})  # fmt: skip
    return cfg.out / where


def _check_leakage(cfg: FoundryBenchConfig, parts: dict[str, Path]) -> list[str]:
    """Refuse zoo or prompt models that saw any target image (the error names them)."""
    from geosane.zoo import Zoo, check_disjoint

    images = _target_images(parts, cfg.eval_folder)
    unknown = []
    for where in ("zoo", "prompts"):
        unknown += check_disjoint(Zoo(cfg.out / where), images, what="the target")
    return unknown


def _check_csmask_unseen(cfg: FoundryBenchConfig, case: PromptCase, zoos: list[Path]) -> dict[str, Any]:
    """A csmask case's scenes against every zoo row's ``trained_on`` (the RSSCN7 zoo never saw them)."""
    from geosane.zoo import Zoo, check_disjoint

    assert case.data is not None
    scenes = sorted(Path(case.data).expanduser().glob("*.npz"))
    unknown = [m for zoo in zoos for m in check_disjoint(Zoo(zoo), scenes, what=f"case {case.name}'s csmask")]
    roots = sorted({str(e.metadata.get("trained_on", {}).get("root")) for zoo in zoos for e in Zoo(zoo)})
    return {"scenes": [p.name for p in scenes], "zoo_trained_on": roots, "unknown_provenance": unknown}


def _tokens(cfg: FoundryBenchConfig, zoo: Path, out: Path | None = None) -> Path:
    from geosane.tokens import tokenize_zoo

    out = out or cfg.out / "tokens"
    tokenize_zoo(zoo, out, token_size=cfg.token_size)
    return out


def _autoencoder(cfg: FoundryBenchConfig, store: Path, out: Path | None = None,
                 extra: dict[str, Any] | None = None) -> Path:  # fmt: skip
    from geosane.autoencoder import load_autoencoder_config
    from geosane.autoencoder.training import checkpoints, train

    out = out or cfg.out / "autoencoder"
    overrides = {**cfg.autoencoder, **(extra or {}), "data.store": str(store),  # d_t: the store's
                 "train.out": str(out), "train.seed": cfg.seed}  # fmt: skip
    ae_cfg = load_autoencoder_config(cfg.autoencoder_preset, overrides)
    export, summary = out / "autoencoder.safetensors", out / "summary.json"
    if export.exists() and summary.exists() and read_json(summary).get("steps") == ae_cfg.train.max_steps:
        console.print(f"autoencoder: {export} is finished ({ae_cfg.train.max_steps} steps)")
        return export
    return train(ae_cfg, resume=bool(checkpoints(out / "checkpoints"))).export


def _generate(cfg: FoundryBenchConfig, setting: GeneratorSetting, prompt: str, out: Path, ae: Path,
              parts: dict[str, Path], store: Path | None = None, in_chans: int | None = None,
              ranked: bool = True) -> Path:  # fmt: skip
    """``geosane generate`` for one prompt; ``ranked=False``: no selection data (a csmask case's
    classifier prompt cannot be ranked on segmentation scenes), so one seeded sample is kept."""
    from geosane.generation import generate
    from geosane.generation.pipeline import config_from_kwargs

    if (out / "model_card.json").exists():
        return out
    if not ranked:
        setting = dataclasses.replace(setting, num_candidates=1, top_k=1, bn_batches=0)
    chosen = {**dataclasses.asdict(setting), "top_k": min(setting.top_k, setting.num_candidates),
              "align_anchors": setting.align_anchors and setting.anchors > 0}  # fmt: skip
    generate(
        config_from_kwargs(
            ae=ae, prompt=prompt, out=out, select_data=parts["select"] if ranked else None, select_split="all",
            image_size=cfg.image_size, seed=cfg.seed, store=(store or cfg.out / "tokens") if setting.anchors else None,
            in_chans=in_chans, overwrite=True, **chosen,
        )
    )  # fmt: skip
    return out


def _reconstruction(cfg: FoundryBenchConfig, case: PromptCase, prompt: str, ae: Path,
                    parts: dict[str, Path]) -> tuple[Path | None, str]:  # fmt: skip
    """The autoencoder's reconstruction of the zoo member nearest to the prompt (bandwidth 0);
    ``(None, why)`` when there is no such member."""
    from geosane.downstream.controls import NotApplicable, nearest_member
    from geosane.downstream.inits import load_source
    from geosane.zoo import Zoo

    loaded = load_source(prompt)
    assert loaded.arch is not None
    try:
        nearest = nearest_member(Zoo(cfg.out / "zoo"), loaded.arch, loaded.state_dict)
    except NotApplicable as exc:
        return None, f"no nearest zoo member to reconstruct ({exc})"
    setting = GeneratorSetting(num_candidates=1, top_k=1, bandwidth=0.0, anchors=0, decode="direct")
    source = f"zoo:{(cfg.out / 'zoo').resolve()}#{nearest.entry.id}"
    out = _generate(
        cfg, setting, source, cfg.out / "generated" / f"{case.name}-nearest-reconstruction", ae, parts
    )
    return out, nearest.entry.id


def _target_overrides(cfg: FoundryBenchConfig, parts: dict[str, Path]) -> dict[str, Any]:
    """The target task and budget, the same for every fine-tuning run of the benchmark."""
    budget = cfg.budget
    return {
        "data.root": str(parts["train"]), "data.select_data": str(parts["select"]),
        "data.test_data": str(cfg.eval_folder or parts["test"]), "data.image_size": cfg.image_size,
        "data.normalization": "dataset",  # every run (and the KD teacher) sees the same inputs
        "arch.name": "", **{f"train.{key}": value for key, value in budget.budget().items()},
    }  # fmt: skip


def _teacher(cfg: FoundryBenchConfig, parts: dict[str, Path]) -> dict[str, Any]:
    """The distillation teacher: every zoo model fine-tuned on the target (first seed), the best on select."""
    from geosane.downstream import finetune, load_finetune_config
    from geosane.zoo import Zoo

    zoo = Zoo(cfg.out / "zoo")
    scores: dict[str, dict[str, Any]] = {}
    for entry in zoo:
        overrides = {**_target_overrides(cfg, parts), "init": f"zoo:{zoo.path.resolve()}#{entry.id}",
                     "train.seed": cfg.budget.seeds[0], "out": str(cfg.out / "teachers" / entry.id)}  # fmt: skip
        result = finetune(load_finetune_config("rsscn7", overrides), show_progress=False)
        scores[entry.id] = {"select": result.select, "test": result.test, "run": str(result.out_dir)}
    best = max(sorted(scores), key=lambda k: scores[k]["select"])
    return {"teacher": best, "run": scores[best]["run"], "fine_tuned": scores}


def _compare(cfg: FoundryBenchConfig, name: str, prompt: str, generated: Path, parts: dict[str, Path],
             inits: list[str], reconstruction: Path | None, teacher: str | None = None,
             test_curve: bool = True) -> Any:  # fmt: skip
    from geosane.downstream import compare, load_compare_config

    budget = cfg.budget
    overrides = {
        **_target_overrides(cfg, parts),
        "prompt": prompt, "zoo.dir": str(cfg.out / "zoo"), "generated.dir": str(generated),
        "generated.top_k": 1, "inits": inits, "seeds": list(budget.seeds), "workers": budget.workers,
        "controls.not_applicable": "report", "controls.noise_seed": cfg.seed,
        "controls.reconstruction_dir": str(reconstruction) if reconstruction else None,
        "controls.teacher": teacher, "test_curve": test_curve, "out": str(cfg.out / name), "plots": True,
    }  # fmt: skip
    return compare(load_compare_config("compare_rsscn7", overrides))


def _compare_csmask(cfg: FoundryBenchConfig, case: PromptCase, prompt: str, generated: Path, zoo: Path) -> Any:
    """Case ``target: csmask``: the ``csmask`` preset (64 px chips of the scenes, the prompt's
    architecture under a U-Net decoder, mIoU), the case's own budget, the benchmark's seeds, the
    merges and nearest member from ``zoo``."""
    from geosane.downstream import compare, load_compare_config

    inits = [c for c in cfg.controls if c in CSMASK_CONTROLS]
    overrides = {
        "data.root": str(Path(case.data or "").expanduser().resolve()), "arch.name": "",
        "data.normalization": "dataset",  # every init: the training chips' statistics (as the target's)
        "prompt": prompt, "zoo.dir": str(zoo),
        "generated.dir": str(generated), "generated.top_k": 1, "inits": inits, "seeds": list(cfg.budget.seeds),
        "workers": cfg.budget.workers, "controls.not_applicable": "report", "controls.noise_seed": cfg.seed,
        "test_curve": True, "out": str(cfg.out / "compare" / case.name), "plots": True,
        **{f"train.{key}": value for key, value in case.budget.items()}, **case.compare,
    }  # fmt: skip
    return compare(load_compare_config(case.compare_preset, overrides))


def _csmask_not_applicable(cfg: FoundryBenchConfig, case: PromptCase) -> dict[str, str]:
    """Why the controls a csmask case does not run cannot apply to it (reported, never skipped)."""
    why = {
        "reconstruction": "not built for a csmask case: the nearest member's reconstruction is a 3-band "
        "RSSCN7 classifier, not the generated weights' band layout",
        "distillation": "the teacher is an RSSCN7 scene classifier; there is no segmentation teacher in the zoo",
    }
    if case.zoo:
        why = {
            "reconstruction": "not built for csmask cases (the benchmark builds it for its rsscn7 prompts only)",
            "distillation": "the benchmark's teacher is an RSSCN7 scene classifier, not a segmenter of these scenes",
        }
    return {name: reason for name, reason in why.items() if name in cfg.controls}


def _detection(
    cfg: FoundryBenchConfig, prompt: str, generated: Path, parts: dict[str, Path]
) -> dict[str, Any]:
    """The detection row (:class:`DetectionRow`): composite sets from the target folders, one compare."""
    from geosane.data.detection import build_composite_detection
    from geosane.downstream import compare, load_compare_config

    det = cfg.detection
    folders = {}
    for offset, split in enumerate(("train", "select", "test")):
        folders[split] = cfg.out / "detection" / "data" / split
        if not (folders[split] / "composite.json").is_file():  # built atomically: present means finished
            build_composite_detection(
                parts[split], folders[split], num_images=det.images[split], image_size=det.image_size,
                max_objects=det.max_objects, seed=cfg.seed + offset,
            )  # fmt: skip
    budget = cfg.budget
    overrides = {
        "data.root": str(folders["train"]), "data.select_data": str(folders["select"]),
        "data.test_data": str(folders["test"]), "data.image_size": det.image_size, "arch.name": "",
        "task.detector": det.detector, "task.fpn_channels": det.fpn_channels,
        "train.epochs": det.epochs, "train.batch_size": det.batch_size, "train.lr": det.lr,
        "prompt": prompt, "zoo.dir": str(cfg.out / "zoo"), "generated.dir": str(generated),
        "generated.top_k": 1, "inits": list(det.inits), "seeds": list(budget.seeds), "workers": budget.workers,
        "controls.not_applicable": "report", "controls.noise_seed": cfg.seed, "out": str(cfg.out / "detection" / "compare"),
    }  # fmt: skip
    result = compare(load_compare_config("compare_detection", overrides))
    summary = read_json(result.out_dir / "summary.json")
    return {
        "case": det.case, "metric": result.metric, "verdict": result.verdict, "report": str(result.report),
        "inits": summary["inits"], "not_applicable": summary["not_applicable"], "meta": summary["meta"],
        "composite": {split: str(path) for split, path in folders.items()},
    }  # fmt: skip


def _ae_summary(export: Path) -> dict[str, Any]:
    """Steps, size and reconstruction R^2 (held-out and training models) of an autoencoder run."""
    summary = read_json(export.parent / "summary.json")
    return {"steps": summary.get("steps"), "parameters": summary.get("parameters"),
            "r2_val": summary.get("val", {}).get("r2"), "r2_train": summary.get("train", {}).get("r2"),
            "val_models": summary.get("val_models")}  # fmt: skip


def _prompt_source(cfg: FoundryBenchConfig, case: PromptCase) -> str:
    from geosane.zoo import Zoo

    prompts = cfg.out / "prompts"
    if case.prompt in Zoo(prompts).ids:
        return f"zoo:{prompts.resolve()}#{case.prompt}"
    return case.prompt


def _check_lever_zoo(cfg: FoundryBenchConfig, parts: dict[str, Path], zoo: Path) -> list[str]:
    """A lever's zoo gets the same leakage check as the main one (refused by name)."""
    from geosane.zoo import Zoo, check_disjoint

    return check_disjoint(Zoo(zoo), _target_images(parts, cfg.eval_folder), what="the target")


def _zoo_line(zoo: Path) -> dict[str, Any]:
    """Members and architectures of a lever's zoo (for the report)."""
    from geosane.zoo import Zoo

    entries = list(Zoo(zoo))
    archs = sorted({f"{e.arch.get('name')} {e.arch.get('kwargs') or ''}".strip() for e in entries if e.arch})
    return {"dir": str(zoo), "members": len(entries), "architectures": archs}


def _case_zoo(cfg: FoundryBenchConfig, case: PromptCase) -> Path:
    """The case's own zoo (``case.zoo``), built once: sources already in it are not resolved again."""
    from geosane.zoo import Zoo, resolve

    where = cfg.out / "cases" / case.name / "zoo"
    zoo = Zoo.create(where)
    present = {e.source for e in zoo}
    for source in case.zoo:
        if source not in present:  # resolving an ONNX member runs its parity check on the scenes
            zoo.add(resolve(source, parity_data=case.data))
    return where


def _case_prompt(case: PromptCase, zoo: Path, prompt: str) -> str:
    """The prompt as a member of the case zoo when it is one (by id or by source), else as given."""
    from geosane.zoo import Zoo

    for entry in Zoo(zoo):
        if case.prompt in (entry.id, entry.source):
            return f"zoo:{zoo.resolve()}#{entry.id}"
    return prompt


def _csmask_case(cfg: FoundryBenchConfig, case: PromptCase, prompt: str, ae: Path, parts: dict[str, Path],
                 timed: Callable[..., Any]) -> dict[str, Any]:  # fmt: skip
    """Case ``target: csmask`` (the issue's prompt c): the prompt's stem adapted to ``in_chans``
    bands, generated from the benchmark's zoo (or the case's own, ``case.zoo``) *without ranking*
    (generation refuses to rank a classifier on segmentation scenes and the RGB select folder has
    the wrong band count, so one seeded sample is kept), then compared on csmask segmentation (mIoU)."""
    from geosane.benchmark.report import case_summary

    zoo, store, own = cfg.out / "zoo", None, None
    if case.zoo:
        where = cfg.out / "cases" / case.name
        zoo = timed(f"case zoo ({case.name})", _case_zoo, cfg, case)
        store = timed(f"tokenize ({case.name})", _tokens, cfg, zoo, where / "tokens")
        ae = timed(f"autoencoder ({case.name})", _autoencoder, cfg, store, where / "autoencoder", case.autoencoder)
        prompt = _case_prompt(case, zoo, prompt)
        own = {**_zoo_line(zoo), "autoencoder_fit": _ae_summary(ae)}
    zoos = [cfg.out / "zoo", cfg.out / "prompts"] if not case.zoo else [zoo]
    unseen = timed(f"leakage check ({case.name})", _check_csmask_unseen, cfg, case, zoos)
    setting = dataclasses.replace(cfg.generator, **case.generator)
    generated = timed(f"generate ({case.name})", _generate, cfg, setting, prompt,
                      cfg.out / "generated" / case.name, ae, parts, store, case.in_chans, False)  # fmt: skip
    result = timed(f"compare ({case.name})", _compare_csmask, cfg, case, prompt, generated, zoo)
    summary: dict[str, Any] = timed(f"novelty ({case.name})", case_summary, cfg, case, prompt, generated, result,
                                    parts, _csmask_not_applicable(cfg, case), zoo)  # fmt: skip
    external = not prompt.startswith("zoo:")  # a model from outside the benchmark (a real pretrained U-Net)
    return {**summary, "target": "csmask", "in_chans": case.in_chans, "ranking": "none (one seeded sample)",
            "unseen": unseen, "budget": dict(case.budget), "compare_preset": case.compare_preset,
            "compare_overrides": dict(case.compare), "prompt_external": external, "case_zoo": own}  # fmt: skip


def run_foundry_bench(cfg: FoundryBenchConfig) -> FoundryResult:
    """Run (or resume) the benchmark and write ``OUT/report.md``."""
    from geosane.benchmark.report import case_summary, lever_summary, write_report

    if not cfg.cases:
        raise ConfigError("the benchmark has no prompt cases (cases: [...])")
    seconds: dict[str, float] = {}

    def timed(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        console.rule(f"[bold]{stage}")
        started = time.perf_counter()
        value = fn(*args)
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started
        return value

    if cfg.data is None:
        raise DataError(
            "pass the image folder with data=FOLDER (root/<class>/<image>), e.g. ../shared/data/rsscn7",
            flags={"data=FOLDER": "--data"},
        )
    if cfg.eval_folder is not None and not Path(cfg.eval_folder).is_dir():
        raise DataError(
            f"eval_folder={cfg.eval_folder} is not a directory (root/<class>/<image>)",
            flags=cli_flags("eval_folder"),
        )
    check_bench_data(cfg)
    created = not cfg.out.exists()
    claim_out_dir(
        cfg.out,
        "bench-foundry",
        {"data": cfg.data, "eval_folder": cfg.eval_folder},
        flags=cli_flags("data", "eval_folder"),
    )
    started = time.perf_counter()
    try:
        parts = timed("data split", split_source_target, cfg)
    except (DataError, ConfigError):
        if created:
            shutil.rmtree(cfg.out, ignore_errors=True)
        raise
    save_config(cfg, cfg.out / "bench.yaml")
    timed("zoo build", _build, cfg, cfg.zoo_recipe, "zoo", parts["source"])
    timed("prompts", _build, cfg, cfg.prompts_recipe, "prompts", parts["source"])
    unknown = timed("leakage check", _check_leakage, cfg, parts)
    store = timed("tokenize", _tokens, cfg, cfg.out / "zoo")
    ae = timed("autoencoder", _autoencoder, cfg, store)
    teacher = timed("distillation teacher", _teacher, cfg, parts) if "distillation" in cfg.controls else None
    cases: list[dict[str, Any]] = []
    not_built: list[dict[str, Any]] = []
    for case in cfg.cases:
        prompt = _prompt_source(cfg, case)
        if case.target == "csmask":
            try:  # a case that cannot be built is reported with why, never skipped silently
                cases.append(_csmask_case(cfg, case, prompt, ae, parts, timed))
            except GeosaneError as exc:
                console.print(f"[yellow]case {case.name}: not applicable: {exc}")
                not_built.append(
                    {"name": case.name, "description": case.description, "not_applicable": str(exc)}
                )
            continue
        generated = timed(f"generate ({case.name})", _generate, cfg, cfg.generator, prompt,
                          cfg.out / "generated" / case.name, ae, parts)  # fmt: skip
        recon, reasons = None, {}
        if "reconstruction" in cfg.controls:
            recon, why = timed(f"reconstruction ({case.name})", _reconstruction, cfg, case, prompt, ae, parts)
            reasons = {"reconstruction": why} if recon is None and why else {}
        result = timed(f"compare ({case.name})", _compare, cfg, f"compare/{case.name}", prompt, generated,
                       parts, list(cfg.controls), recon, teacher["run"] if teacher else None)  # fmt: skip
        cases.append(
            timed(
                f"novelty ({case.name})", case_summary, cfg, case, prompt, generated, result, parts, reasons
            )
        )
    detection = None
    if cfg.detection.enabled:
        det_case = next(c for c in cfg.cases if c.name == cfg.detection.case)
        detection = timed("detection", _detection, cfg, _prompt_source(cfg, det_case),
                          cfg.out / "generated" / det_case.name, parts)  # fmt: skip
    levers: list[dict[str, Any]] = []
    lever_case = next((c for c in cfg.cases if c.name == cfg.lever_case), None)
    for lever in cfg.levers if lever_case is not None else []:
        assert lever_case is not None
        setting = dataclasses.replace(cfg.generator, **lever.settings)
        prompt = _prompt_source(cfg, lever_case)
        lever_ae, lever_store, where = ae, store, cfg.out / "levers" / lever.name
        if lever.zoo_recipe:  # its own zoo (SOURCE images only); a member that saw the target is refused
            zoo = timed("levers", _build, cfg, lever.zoo_recipe, f"levers/{lever.name}/zoo", parts["source"])
            unknown += timed("levers", _check_lever_zoo, cfg, parts, zoo)
        try:  # a lever that cannot be built is reported with why, never skipped silently
            if lever.zoo_recipe:
                lever_store = timed("levers", _tokens, cfg, where / "zoo", where / "tokens")
            if lever.autoencoder or lever.zoo_recipe:
                lever_ae = timed(
                    "levers", _autoencoder, cfg, lever_store, where / "autoencoder", lever.autoencoder
                )
            generated = timed("levers", _generate, cfg, setting, prompt, where / "generated", lever_ae, parts,
                              lever_store)  # fmt: skip
            result = timed("levers", _compare, cfg, f"levers/{lever.name}/compare", prompt, generated, parts,
                           ["generated"], None, None, False)  # fmt: skip
        except GeosaneError as exc:
            console.print(f"[yellow]lever {lever.name}: not applicable: {exc}")
            levers.append({"name": lever.name, "description": lever.description, "not_applicable": str(exc)})
            continue
        levers.append({**lever_summary(lever, setting, result), "autoencoder_fit": _ae_summary(lever_ae),
                       "zoo": _zoo_line(where / "zoo") if lever.zoo_recipe else None})  # fmt: skip
    seconds["total"] = time.perf_counter() - started
    summary = {"config": to_dict(cfg), "cases": cases, "cases_not_built": not_built, "levers": levers, "unknown_provenance": unknown,
               "teacher": teacher, "autoencoder": _ae_summary(ae), "detection": detection,
               "seconds": seconds}  # fmt: skip
    report = write_report(cfg, summary)
    return FoundryResult(cfg.out, report, seconds, summary)
