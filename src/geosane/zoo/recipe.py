"""Zoo recipes: which small models ``geosane zoo build`` trains, as a YAML dataclass schema.

A recipe names an image-folder dataset and its split, training defaults, and the members: an
explicit ``members`` list and/or ``grid`` blocks whose cartesian product (architecture x seed x
class subset x bands x epochs x lr) expands into members. :func:`plan_members` turns a recipe into
fully resolved :class:`PlannedMember` s (architecture with ``in_chans``/``num_classes``, training
settings, parent for ``init_from``), ordered so that every parent is trained before its children.
Everything here is validated before anything is trained or written.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from geosane.arch.spec import ArchSpec, arch_family
from geosane.config import compose, find_config, from_dict, merge, parse_overrides, to_dict
from geosane.errors import ConfigError
from geosane.tasks.config import TrainingBudget

__all__ = [
    "ArchChoice",
    "GridSpec",
    "MemberSpec",
    "PlannedMember",
    "TrainSettings",
    "ZooRecipe",
    "load_recipe",
    "plan_members",
]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass
class ArchChoice:
    """A timm architecture: ``timm.create_model(name, **kwargs)``; ``label`` names members built on it."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    family: str | None = None


@dataclass
class TrainSettings(TrainingBudget):
    """Training budget of one member (recipe ``defaults``; members may override each field)."""

    key_prefix: ClassVar[str] = ""  # recipe keys are flat: defaults.epochs, a member's epochs

    epochs: int = 1
    lr: float = 2e-3
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = True


@dataclass
class MemberSpec:
    """One explicitly listed member; unset training fields fall back to the recipe ``defaults``.

    ``arch`` may be omitted when ``init_from`` names a parent: the child then uses the parent's
    architecture. ``classes`` are class names (a subset, in the given order) or indices into the
    dataset's sorted class names; ``bands`` are band
    indices of the dataset's images.
    """

    name: str
    arch: ArchChoice | None = None
    seed: int = 0
    classes: list[Any] | None = None  # names (str) or indices (int): kept as YAML typed them
    bands: list[int] | None = None
    init_from: str | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    family: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class GridSpec:
    """A cartesian product of alternatives; each list holds the values to combine.

    Member names are ``{prefix}{arch label}-s{seed}`` plus, for every other axis with more than
    one value, ``-c{i}`` (i-th class subset), ``-b{bands}``, ``-e{epochs}``, ``-lr{lr}``.
    """

    arch: list[ArchChoice] = field(default_factory=list)
    seed: list[int] = field(default_factory=lambda: [0])
    classes: list[list[Any] | None] = field(default_factory=lambda: [None])
    bands: list[list[int] | None] = field(default_factory=lambda: [None])
    epochs: list[int | None] = field(default_factory=lambda: [None])
    lr: list[float | None] = field(default_factory=lambda: [None])
    init_from: str | None = None
    prefix: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ZooRecipe:
    """How to build a zoo of small classifiers on an image-folder dataset."""

    dataset: Path
    name: str = "zoo"
    image_size: int = 64
    split_seed: int = 0
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "select": 0.1, "test": 0.3})
    limit_per_class: int | None = None
    normalization: Literal["dataset", "imagenet"] = "dataset"
    band_names: list[str] | None = None
    modality: str | None = None
    license: str | None = None
    num_threads: int | None = None
    architectures: dict[str, ArchChoice] = field(default_factory=dict)
    defaults: TrainSettings = field(default_factory=TrainSettings)
    members: list[MemberSpec] = field(default_factory=list)
    grid: list[GridSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.limit_per_class is not None and self.limit_per_class < 3:
            raise ValueError(
                f"limit_per_class must be >= 3 (one sample per split), got {self.limit_per_class}"
            )
        if set(self.fractions) != {"train", "select", "test"}:
            raise ValueError(
                f"fractions must name exactly train, select and test, got {sorted(self.fractions)}"
            )


@dataclass(frozen=True)
class PlannedMember:
    """A fully resolved member: what to train, from what, and how."""

    name: str
    arch: ArchSpec
    family: str
    seed: int
    classes: tuple[str, ...]
    bands: tuple[int, ...]
    train: TrainSettings
    init_from: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return len(self.bands)

    def config_dict(self, recipe: ZooRecipe) -> dict[str, Any]:
        """Everything that determines this member's weights (stored as ``train_config``)."""
        return {
            "arch": self.arch.to_dict(),
            "seed": self.seed,
            "classes": list(self.classes),
            "bands": list(self.bands),
            "init_from": self.init_from,
            "train": to_dict(self.train),
            "dataset": str(Path(recipe.dataset).expanduser().resolve()),
            "image_size": recipe.image_size,
            "split_seed": recipe.split_seed,
            "fractions": dict(recipe.fractions),
            "limit_per_class": recipe.limit_per_class,
            "normalization": recipe.normalization,
        }


# ---------------------------------------------------------------------------------------------
# loading


def _normalize_arch(value: Any, named: Mapping[str, Any]) -> Any:
    """``arch: KEY`` names an entry of ``architectures`` (its label defaults to KEY); any other
    string is a timm model name (``arch: resnet18`` = ``arch: {name: resnet18}``)."""
    if isinstance(value, str):
        if value in named and isinstance(named[value], Mapping):
            return {"label": value, **named[value]}
        return {"name": value}
    return value


def _normalize(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    named = data.get("architectures") or {}
    if not isinstance(named, Mapping):
        raise ConfigError("'architectures' must map names to {name, kwargs} entries")
    members = data.get("members")
    if isinstance(members, list):
        data["members"] = [
            {**m, "arch": _normalize_arch(m["arch"], named)} if isinstance(m, dict) and "arch" in m else m
            for m in members
        ]
    grids = data.get("grid")
    if isinstance(grids, dict):
        grids = [grids]
    if isinstance(grids, list):
        normalized = []
        for grid in grids:
            if isinstance(grid, dict) and "arch" in grid:
                archs = grid["arch"] if isinstance(grid["arch"], list) else [grid["arch"]]
                grid = {**grid, "arch": [_normalize_arch(a, named) for a in archs]}
            normalized.append(grid)
        data["grid"] = normalized
    return data


def load_recipe(
    recipe: str | Path | ZooRecipe | Mapping[str, Any],
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> ZooRecipe:
    """A validated :class:`ZooRecipe` from a file, packaged name, mapping or recipe, plus overrides."""
    if isinstance(recipe, ZooRecipe):
        if not overrides:
            return recipe
        data: dict[str, Any] = to_dict(recipe)
    elif isinstance(recipe, Mapping):
        data = dict(recipe)
    else:
        data = compose(find_config(recipe, "zoo"))
    extra = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    return from_dict(ZooRecipe, _normalize(merge(data, extra)))


# ---------------------------------------------------------------------------------------------
# planning


def timm_family(model_name: str) -> str:
    """The timm module defining ``model_name`` (``resnet``, ``convnext``, ``vision_transformer`` ...)."""
    import timm

    family = arch_family(ArchSpec("timm", model_name))
    if family is None:
        base = model_name.split(".")[0]
        close = timm.list_models(f"*{base.split('_')[0]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ConfigError(f"unknown timm architecture '{model_name}'{hint}")
    return family


def _fmt_lr(lr: float) -> str:
    return f"{lr:g}".replace("+", "")


def _expand_grid(grid: GridSpec, index: int) -> list[MemberSpec]:
    if not grid.arch and grid.init_from is None:
        raise ConfigError(f"grid[{index}] needs at least one 'arch' (or an 'init_from' parent)")
    archs: list[ArchChoice | None] = list(grid.arch) or [None]
    members = []
    axes = itertools.product(archs, grid.seed, enumerate(grid.classes), grid.bands, grid.epochs, grid.lr)
    for arch, seed, (ci, classes), bands, epochs, lr in axes:
        label = (arch.label or arch.name) if arch else grid.init_from
        parts = [f"{grid.prefix}{label}", f"s{seed}"]
        if len(grid.classes) > 1:
            parts.append(f"c{ci}")
        if len(grid.bands) > 1:
            parts.append("b" + ("all" if bands is None else "".join(str(b) for b in bands)))
        if len(grid.epochs) > 1 and epochs is not None:
            parts.append(f"e{epochs}")
        if len(grid.lr) > 1 and lr is not None:
            parts.append(f"lr{_fmt_lr(lr)}")
        members.append(
            MemberSpec(
                name="-".join(parts).lower().replace("_", "-"),
                arch=arch,
                seed=seed,
                classes=classes,
                bands=bands,
                init_from=grid.init_from,
                epochs=epochs,
                lr=lr,
                family=arch.family if arch else None,
                metadata=dict(grid.metadata),
            )
        )
    return members


def _resolve_train(defaults: TrainSettings, spec: MemberSpec) -> TrainSettings:
    changes = {
        key: getattr(spec, key)
        for key in ("epochs", "lr", "batch_size", "weight_decay", "label_smoothing")
        if getattr(spec, key) is not None
    }
    try:
        return replace(defaults, **changes)
    except ValueError as exc:
        raise ConfigError(f"member '{spec.name}': {exc}") from None


def _class_names(member: str, classes: Sequence[str | int] | None, dataset_classes: Sequence[str]) -> tuple[str, ...]:
    """Class names of a member; an integer is an index into the dataset's sorted class names, so a
    recipe can name class subsets of any folder (``[0, 1, 2, 3]``)."""
    if classes is None:
        return tuple(dataset_classes)
    names = []
    for c in classes:
        if isinstance(c, int) and not isinstance(c, bool):
            if not 0 <= c < len(dataset_classes):
                raise ConfigError(
                    f"member '{member}': class index {c} is out of range; the dataset has "
                    f"{len(dataset_classes)} classes ({', '.join(dataset_classes)})"
                )
            names.append(dataset_classes[c])
        else:
            names.append(str(c))
    return tuple(names)


def plan_members(
    recipe: ZooRecipe, dataset_classes: Sequence[str], dataset_bands: int
) -> list[PlannedMember]:
    """Expand and resolve the recipe's members against the dataset; parents come before children."""
    specs = list(recipe.members)
    for i, grid in enumerate(recipe.grid):
        specs.extend(_expand_grid(grid, i))
    if not specs:
        raise ConfigError("the recipe defines no members (add 'members' or a 'grid')")
    seen: set[str] = set()
    for spec in specs:
        if not _NAME_RE.match(spec.name):
            raise ConfigError(
                f"member name '{spec.name}' must be lower-case letters, digits, '.', '_' or '-'"
            )
        if spec.name in seen:
            raise ConfigError(f"two members are named '{spec.name}' (give grids a 'prefix' or rename)")
        seen.add(spec.name)
    by_name = {s.name: s for s in specs}

    band_names = recipe.band_names
    if band_names is not None and len(band_names) != dataset_bands:
        raise ConfigError(f"band_names has {len(band_names)} names but the images have {dataset_bands} bands")

    planned: dict[str, PlannedMember] = {}

    def plan(spec: MemberSpec, stack: tuple[str, ...]) -> PlannedMember:
        if spec.name in planned:
            return planned[spec.name]
        if spec.name in stack:
            raise ConfigError(f"init_from forms a cycle: {' -> '.join((*stack, spec.name))}")
        parent: PlannedMember | None = None
        if spec.init_from is not None:
            if spec.init_from not in by_name:
                close = [n for n in by_name if n.startswith(spec.init_from.split("-")[0])][:3]
                hint = f"; similar: {', '.join(close)}" if close else ""
                raise ConfigError(
                    f"member '{spec.name}': init_from '{spec.init_from}' is not a member of this recipe{hint}"
                )
            parent = plan(by_name[spec.init_from], (*stack, spec.name))
        classes = _class_names(spec.name, spec.classes, dataset_classes)
        unknown = [c for c in classes if c not in dataset_classes]
        if unknown or len(set(classes)) != len(classes) or len(classes) < 2:
            problem = f"unknown classes {unknown}" if unknown else "needs >= 2 distinct classes"
            raise ConfigError(
                f"member '{spec.name}': {problem} (dataset classes: {', '.join(dataset_classes)})"
            )
        bands = tuple(spec.bands) if spec.bands is not None else tuple(range(dataset_bands))
        bad = [b for b in bands if not 0 <= b < dataset_bands]
        if bad or not bands:
            raise ConfigError(
                f"member '{spec.name}': band indices {list(bands)} invalid for {dataset_bands}-band images"
            )
        if spec.arch is not None:
            name, kwargs = spec.arch.name, dict(spec.arch.kwargs)
            family = spec.family or spec.arch.family or timm_family(name)
        elif parent is not None:
            name = parent.arch.name
            kwargs = {k: v for k, v in parent.arch.kwargs.items() if k not in ("in_chans", "num_classes")}
            family = spec.family or parent.family
        else:
            raise ConfigError(f"member '{spec.name}' needs an 'arch' (or an 'init_from' parent)")
        for reserved in ("in_chans", "num_classes", "pretrained"):
            if reserved in kwargs:
                raise ConfigError(
                    f"member '{spec.name}': set '{reserved}' through classes/bands, not arch kwargs"
                )
        arch = ArchSpec("timm", name, {**kwargs, "in_chans": len(bands), "num_classes": len(classes)})
        if parent is not None:
            parent_kwargs = {k: v for k, v in parent.arch.kwargs.items() if k != "num_classes"}
            own_kwargs = {k: v for k, v in arch.kwargs.items() if k != "num_classes"}
            if parent.arch.name != arch.name or parent_kwargs != own_kwargs:
                raise ConfigError(
                    f"member '{spec.name}' must have the architecture of its init_from parent "
                    f"'{parent.name}' ({parent.arch.name} {parent_kwargs}), got {arch.name} {own_kwargs}"
                )
        member = PlannedMember(
            name=spec.name,
            arch=arch,
            family=family,
            seed=spec.seed,
            classes=classes,
            bands=bands,
            train=_resolve_train(recipe.defaults, spec),
            init_from=spec.init_from,
            metadata=dict(spec.metadata),
        )
        planned[spec.name] = member
        return member

    for spec in specs:
        plan(spec, ())
    return list(planned.values())
