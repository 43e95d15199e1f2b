"""``geosane zoo build``: train a population of small timm classifiers so a real zoo exists offline.

:func:`build_zoo` loads a recipe (:mod:`geosane.zoo.recipe`), validates all of it against the
dataset (class names, band indices, architectures built once and run on one batch) *before*
creating anything, then trains the members one after the other with :func:`geosane.tasks.fit`
and stores each through :meth:`Zoo.add` with its training config and held-out accuracies.

Resuming: a member whose id is already in the zoo with the same training config is skipped, so an
interrupted build picks up where it stopped. A member id present with a *different* config is an
error (raised before anything is trained): rename the member or use another zoo.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geosane.arch.spec import LoadedModel, build_architecture
from geosane.config import save_config, to_dict
from geosane.console import console, make_progress
from geosane.errors import ConfigError, GeosaneError
from geosane.runs import torch_threads
from geosane.zoo.formats import first_nonfinite
from geosane.zoo.manifest import Zoo, ZooEntry, _slug
from geosane.zoo.provenance import ZOO_BUILD_SPLITS, record_trained_on
from geosane.zoo.recipe import PlannedMember, ZooRecipe, load_recipe, plan_members

__all__ = ["BuildPlan", "build_zoo", "prepare_build"]

RGB_BAND_NAMES = ("red", "green", "blue")


@dataclass
class BuildPlan:
    """A validated recipe, its dataset split and the members to train (in training order)."""

    recipe: ZooRecipe
    members: list[PlannedMember]
    classes: tuple[str, ...]
    band_names: tuple[str, ...]
    splits: dict[str, Any]
    data: Any
    # image path -> content digest, filled while members record what they were trained on, so a
    # large zoo hashes each image once per build
    image_digests: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def status(self, zoo_dir: str | Path) -> dict[str, str]:
        """``member -> 'done' | 'todo'`` for a zoo directory (raises on conflicting members)."""
        zoo = _open_existing(zoo_dir)
        done = _finished_members(self, zoo) if zoo is not None else set()
        return {m.name: "done" if m.name in done else "todo" for m in self.members}


def _open_existing(zoo_dir: str | Path) -> Zoo | None:
    path = Path(zoo_dir).expanduser()
    return Zoo(path) if (path / "manifest.json").is_file() else None


def _finished_members(plan: BuildPlan, zoo: Zoo) -> set[str]:
    """Members already in ``zoo`` with an identical training config; conflicts raise."""
    by_id: dict[str, ZooEntry] = {e.id: e for e in zoo}
    done = set()
    for member in plan.members:
        entry = by_id.get(member.name)
        if entry is None:
            continue
        stored = entry.metadata.get("train_config")
        wanted = member.config_dict(plan.recipe)
        if stored != _jsonable(wanted):
            diff = _config_diff(stored, wanted)
            raise GeosaneError(
                f"zoo {zoo.path} already has a model '{member.name}' built with a different config "
                f"({diff}); rename the member or build into another zoo_dir",
                flags={"zoo_dir": "--zoo"},
            )
        done.add(member.name)
    return done


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from the JSON manifest (tuples become lists)."""
    import json

    return json.loads(json.dumps(obj, default=str))


def _config_diff(stored: Any, wanted: dict[str, Any]) -> str:
    if not isinstance(stored, dict):
        return "it was not built by `geosane zoo build`"
    wanted = _jsonable(wanted)
    keys = [k for k in wanted if stored.get(k) != wanted[k]]
    return ", ".join(f"{k}: {stored.get(k)!r} -> {wanted[k]!r}" for k in keys[:3]) or "metadata differs"


def prepare_build(
    recipe: str | Path | ZooRecipe | Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any] = ()
) -> BuildPlan:
    """Load the recipe and dataset and validate every member; trains and writes nothing."""
    from geosane.data import cap_per_class, load_image_folder, stratified_split

    cfg = load_recipe(recipe, overrides)
    data = load_image_folder(cfg.dataset, cfg.image_size)
    if cfg.limit_per_class is not None:
        data = data.subset(cap_per_class(data.labels, cfg.limit_per_class, cfg.split_seed))
    members = plan_members(cfg, data.classes, data.num_bands)
    splits = stratified_split(data.labels.numpy(), cfg.fractions, seed=cfg.split_seed)
    if cfg.band_names is not None:
        band_names = tuple(cfg.band_names)
    elif data.num_bands == 3 and data.images.dtype == torch.uint8:
        band_names = RGB_BAND_NAMES
    else:
        band_names = tuple(f"band{i}" for i in range(data.num_bands))
    for member in members:
        _check_architecture(member, cfg.image_size)
    return BuildPlan(cfg, members, data.classes, band_names, splits, data)


def _check_architecture(member: PlannedMember, image_size: int) -> None:
    """Instantiate the member's architecture and run one small batch through it."""
    try:
        model = build_architecture(member.arch)
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(2, member.in_chans, image_size, image_size))
    except GeosaneError as exc:
        raise ConfigError(f"member '{member.name}': {exc}", flags=exc.flags) from None
    except (RuntimeError, ValueError, AssertionError, TypeError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"member '{member.name}': {member.arch.name} {member.arch.kwargs} does not run on "
            f"{image_size}px inputs ({first_line})"
        ) from None
    if tuple(out.shape) != (2, member.num_classes):
        raise ConfigError(
            f"member '{member.name}': {member.arch.name} outputs shape {tuple(out.shape)}, "
            f"expected (2, {member.num_classes})"
        )


def _member_datasets(plan: BuildPlan, member: PlannedMember) -> dict[str, Any]:
    from geosane.data import TensorImageDataset, choose_normalization

    parts = {
        name: plan.data.subset(idx).select_classes(list(member.classes)).select_bands(list(member.bands))
        for name, idx in plan.splits.items()
    }
    # the recipe's choice is a preference: members whose bands are not RGB get their data's statistics
    norm = choose_normalization(
        plan.recipe.normalization, parts["train"].images, rgb_bands=member.bands, strict=False, key="normalization"
    )
    datasets = {
        name: TensorImageDataset(
            part.images, part.labels, norm, augment=(name == "train" and member.train.augment)
        )
        for name, part in parts.items()
    }
    return {"datasets": datasets, "normalization": norm, "sizes": {k: len(v) for k, v in parts.items()}}


def _lineage_classes(plan: BuildPlan, member: PlannedMember) -> list[str]:
    """The member's classes, then any more its ``init_from`` ancestors were trained on.

    A fine-tuned child's weights start from its parent's, so the parent's images count as seen.
    """
    by_name = {m.name: m for m in plan.members}
    classes = list(member.classes)
    parent = member.init_from
    while parent is not None:
        ancestor = by_name[parent]
        classes += [c for c in ancestor.classes if c not in classes]
        parent = ancestor.init_from
    return classes


def _trained_on_splits(member: PlannedMember) -> str:
    if member.init_from is None:
        return ZOO_BUILD_SPLITS
    return f"{ZOO_BUILD_SPLITS}, with those of its init_from ancestors (starting at '{member.init_from}')"


def _member_paths(plan: BuildPlan, classes: Sequence[str]) -> list[str]:
    """Every image of ``classes``, all splits (train is fitted, select and test are evaluated)."""
    wanted = {plan.data.classes.index(c) for c in classes}
    labels = plan.data.labels.tolist()
    return [path for path, label in zip(plan.data.paths, labels, strict=True) if label in wanted]


def _progress_callback(progress: Any, task_id: Any, epochs: int) -> Any:
    import lightning as L

    class _MemberProgress(L.Callback):
        """Advances the member's Rich progress bar per optimizer step; shows epoch, loss, accuracy."""

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            progress.start_task(task_id)
            progress.update(task_id, total=int(trainer.estimated_stepping_batches), status="training")

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
            status = f"epoch {trainer.current_epoch + 1}/{epochs} loss {float(loss):.3f}"
            progress.update(task_id, advance=1, status=status)

    return _MemberProgress()


def _train_member(plan: BuildPlan, member: PlannedMember, zoo: Zoo, progress: Any, task_id: Any) -> ZooEntry:
    """Train one member and add it to the zoo."""
    from geosane.tasks import FitConfig, build_classifier, evaluate, fit

    start = time.perf_counter()
    parts = _member_datasets(plan, member)
    datasets = parts["datasets"]
    torch.manual_seed(member.seed)
    parent_weights = zoo.load_state_dict(member.init_from) if member.init_from else None
    model = build_classifier(member.arch, member.num_classes, state_dict=parent_weights)
    settings = member.train
    fit_config = FitConfig(**settings.budget(), label_smoothing=settings.label_smoothing, seed=member.seed)
    callback = _progress_callback(progress, task_id, settings.epochs)
    # an interrupted member resumes from its last epoch; the name holds a digest of everything that
    # determines its weights, so a checkpoint of other settings is never resumed
    digest = hashlib.sha256(json.dumps(_jsonable(member.config_dict(plan.recipe)), sort_keys=True).encode())
    checkpoint = zoo.path / "checkpoints" / f"{member.name}-{digest.hexdigest()[:12]}.ckpt"
    result = fit(
        model,
        "classification",
        member.num_classes,
        datasets["train"],
        datasets["select"],
        fit_config,
        checkpoint_path=checkpoint,
        callbacks=[callback],
    )
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bad = first_nonfinite(state_dict)
    if bad is not None:
        raise GeosaneError(
            f"member '{member.name}' diverged during training (non-finite values in '{bad}'); "
            f"lower its lr (now {settings.lr:g})"
        )
    test = evaluate(model, "classification", member.num_classes, datasets["test"])["accuracy"]
    select = evaluate(model, "classification", member.num_classes, datasets["select"])["accuracy"]
    seconds = time.perf_counter() - start
    recipe = plan.recipe
    # provenance lives in metadata only: train_config is compared on resume
    seen_classes = _lineage_classes(plan, member)
    trained_on = record_trained_on(
        zoo.path,
        plan.data.root,
        seen_classes,
        _member_paths(plan, seen_classes),
        splits=_trained_on_splits(member),
        cache=plan.image_digests,
    )
    metadata = {
        **member.metadata,
        "accuracy": test,
        "select_accuracy": select,
        "train_config": _jsonable(member.config_dict(recipe)),
        "history": result.history,
        "split_sizes": parts["sizes"],
        "normalization": {"mean": list(parts["normalization"].mean), "std": list(parts["normalization"].std)},
        "recipe": recipe.name,
        "init_from": member.init_from,
        "train_seconds": round(seconds, 2),
        "trained_on": trained_on.to_dict(),
    }
    loaded = LoadedModel(
        source=f"zoo-build:{recipe.name}#{member.name}",
        state_dict=state_dict,
        arch=member.arch,
        info={"pretrained": True, "task": "classification"},
    )
    modality = recipe.modality or (
        "rgb" if plan.band_names == RGB_BAND_NAMES and len(member.bands) == 3 else None
    )
    entry, added = zoo.add(
        loaded,
        model_id=member.name,
        family=member.family,
        metadata=metadata,
        in_chans=member.in_chans,
        num_classes=member.num_classes,
        task="classification",
        modality=modality or f"{member.in_chans}-band",
        bands=[plan.band_names[b] for b in member.bands],
        classes=list(member.classes),
        license=recipe.license,
    )
    checkpoint.unlink(missing_ok=True)
    if not added:
        raise GeosaneError(
            f"member '{member.name}' produced weights identical to zoo model '{entry.id}'; "
            "give it a different seed or settings"
        )
    progress.update(task_id, status=f"[green]test acc {test:.3f}[/] ({seconds:.0f}s)")
    return entry


def build_zoo(
    recipe: str | Path | ZooRecipe | Mapping[str, Any],
    zoo_dir: str | Path,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> Zoo:
    """Train every member of ``recipe`` not yet in ``zoo_dir``; returns the zoo.

    ``recipe`` is a YAML path, a packaged recipe name (``tiny``, ``small``), a mapping or a
    :class:`ZooRecipe`; ``overrides`` are dotted ``key=value`` strings (``defaults.epochs=2``).
    """
    plan = prepare_build(recipe, overrides)
    existing = _open_existing(zoo_dir)
    done = _finished_members(plan, existing) if existing is not None else set()
    zoo = existing or Zoo.create(zoo_dir)
    save_config(plan.recipe, zoo.path / "recipes" / f"{_slug(plan.recipe.name)}.yaml")
    todo = [m for m in plan.members if m.name not in done]
    console.print(
        f"zoo build '{plan.recipe.name}': {len(plan.members)} members, {len(done)} already in {zoo.path}, "
        f"{len(todo)} to train"
    )
    with torch_threads(plan.recipe.num_threads):  # on a shared CPU, 1 thread avoids OpenMP spin-waiting
        _train_all(plan, zoo, todo, done)
    return zoo


def _train_all(plan: BuildPlan, zoo: Zoo, todo: list[PlannedMember], done: set[str]) -> None:
    with make_progress() as progress:
        tasks = {}
        for member in plan.members:
            finished = member.name in done
            tasks[member.name] = progress.add_task(
                member.name,
                start=False,
                total=1 if finished else None,
                completed=1 if finished else 0,
                status="[dim]done (in zoo)[/]" if finished else "[dim]queued[/]",
            )
        for member in todo:
            _train_member(plan, member, zoo, progress, tasks[member.name])


def recipe_summary(plan: BuildPlan) -> list[dict[str, Any]]:
    """One row per planned member (for ``--dry-run`` tables)."""
    return [
        {
            "name": m.name,
            "family": m.family,
            "arch": m.arch.name,
            "kwargs": {k: v for k, v in m.arch.kwargs.items() if k not in ("in_chans", "num_classes")},
            "classes": m.num_classes,
            "bands": list(m.bands),
            "seed": m.seed,
            "epochs": m.train.epochs,
            "lr": m.train.lr,
            "init_from": m.init_from,
            "train": to_dict(m.train),
        }
        for m in plan.members
    ]
