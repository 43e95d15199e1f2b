"""Initializations to fine-tune from: scratch, any model source, zoo merges, generated candidates.

An :class:`Initialization` is a name, the architecture and a state dict of the *full* timm model
(``None`` for scratch). :func:`load_source` understands every source the zoo does
(:func:`geosane.zoo.resolve`), ``zoo:ZOO_DIR#ID`` entries, and ``geosane generate`` output: the
directory (its rank-1 candidate) or one candidate file beside its ``model_card.json``.

The ``geosane generate`` output contract (written by
:func:`geosane.generation.pipeline.generate`, read by :func:`read_generated_dir`)::

    DIR/model_card.json  {"format": "geosane-generated", "prompt": str,
                          "arch": {"library": "timm", "name": str, "kwargs": {}},
                          "ae_checkpoint": str, "seed": int, "proxy": "knn",
                          "candidates": [{"rank": 1, "file": "candidate_1.safetensors",
                                          "proxy_score": float, or null (NaN in older cards) without selection data,
                                          "proxy": "knn", ...}, ...],
                          "generated_tensors": [...], "carried_tensors": [...], "note": str?, ...}
    DIR/candidate_<k>.safetensors   full timm state dicts of ``arch`` (ranked by the proxy)
    DIR/load_generated.py           stand-alone loader (timm + safetensors only)

Zoo baselines (:func:`zoo_initializations`): the members are the zoo models of the compared
architecture (or those named); the base of TIES/DARE is ``zoo.base`` or the model that the
members' metadata ``init_from`` names (a zoo id, ``zoo:DIR#ID`` or any model source).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geosane.arch.spec import ArchSpec, LoadedModel, same_architecture
from geosane.downstream.config import ArchConfig, ZooInitConfig
from geosane.downstream.controls import NotApplicable, fits_architecture
from geosane.downstream.merges import average_merge, dare_merge, ties_merge
from geosane.errors import GeosaneError, SourceError
from geosane.generation.card import CARD_FORMAT, MODEL_CARD, ModelCard
from geosane.io import read_json, sha256_tensors
from geosane.zoo import Zoo, ZooEntry, load_weights_file, load_zoo_source, resolve, split_zoo_source

__all__ = [
    "CARD_FORMAT",
    "MODEL_CARD",
    "GeneratedCandidate",
    "GeneratedDir",
    "Initialization",
    "arch_from_config",
    "load_source",
    "normalization_info",
    "read_generated_dir",
    "same_architecture",
    "zoo_initializations",
]


@dataclass
class Teacher:
    """A fine-tuned task model whose predictions a student also learns from (``distillation``)."""

    arch: ArchSpec
    state_dict: dict[str, torch.Tensor]
    classes: list[str]
    source: str
    alpha: float = 0.5
    temperature: float = 4.0

    def fingerprint(self) -> str:
        return f"{sha256_tensors(self.state_dict)}|alpha={self.alpha}|T={self.temperature}"


@dataclass
class Initialization:
    """Starting weights for fine-tuning (``state_dict`` None means random init, i.e. scratch)."""

    name: str
    kind: str
    arch: ArchSpec
    state_dict: dict[str, torch.Tensor] | None
    source: str
    info: dict[str, Any] = field(default_factory=dict)
    teacher: Teacher | None = None

    def fingerprint(self) -> str:
        """SHA-256 of the weights (``scratch`` for random init), and of the teacher's if any."""
        own = sha256_tensors(self.state_dict) if self.state_dict is not None else "scratch"
        return own if self.teacher is None else f"{own}|teacher={self.teacher.fingerprint()}"


def read_task_weights(path: str | Path, alpha: float = 0.5, temperature: float = 4.0) -> Teacher:
    """A ``geosane finetune`` run's task model (its directory or ``weights.safetensors``) as a teacher."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "weights.safetensors"
    if not path.is_file():
        raise GeosaneError(
            f"teacher weights not found: {path} (a `geosane finetune` run directory or its weights.safetensors)"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "arch" not in meta or "classes" not in meta:
        raise GeosaneError(f"{path} is not a `geosane finetune` task model (no arch/classes metadata)")
    return Teacher(
        ArchSpec.from_dict(json.loads(meta["arch"])), load_weights_file(path), list(json.loads(meta["classes"])),
        str(path), alpha, temperature,
    )  # fmt: skip


@dataclass(frozen=True)
class GeneratedCandidate:
    rank: int
    file: Path
    proxy_score: float | None
    proxy: str | None


@dataclass
class GeneratedDir:
    """A parsed ``geosane generate`` output directory."""

    path: Path
    prompt: str
    arch: ArchSpec
    candidates: list[GeneratedCandidate]
    card: dict[str, Any]
    generated_tensors: list[str] = field(default_factory=list)
    carried_tensors: list[str] = field(default_factory=list)
    model_card: ModelCard | None = None  # ``card`` parsed (``card`` is the JSON object as read)

    @property
    def prompt_is_random_init(self) -> bool:
        """The prompt was a timm architecture without pretrained weights (``--random-init``)."""
        if self.model_card is not None:
            return self.model_card.prompt_is_random_init
        return (self.card.get("prompt_info") or {}).get("pretrained") is False


def normalization_info(loaded: LoadedModel) -> dict[str, Any]:
    """``{"normalization": {"mean", "std"}}`` when the source records the per-band statistics its
    model expects (e.g. an ONNX model's sidecar), else ``{}``."""
    norm = (loaded.info.get("metadata") or {}).get("normalization") or loaded.info.get("normalization")
    return {"normalization": norm} if isinstance(norm, dict) else {}


def arch_from_config(arch: ArchConfig) -> ArchSpec | None:
    return ArchSpec(arch.library, arch.name, dict(arch.kwargs)) if arch.name else None


def read_generated_dir(path: str | Path) -> GeneratedDir:
    """Parse and validate ``DIR/model_card.json`` (:meth:`ModelCard.from_dict`) and check every
    candidate file exists."""
    path = Path(path).expanduser()
    card_path = path / MODEL_CARD
    if not card_path.is_file():
        raise GeosaneError(f"{path} is not a `geosane generate` output directory (no {MODEL_CARD})")
    try:
        card = read_json(card_path)
    except ValueError as exc:
        raise GeosaneError(f"{card_path} is not valid JSON: {exc}") from None
    model_card = ModelCard.from_dict(card, str(card_path))
    parsed = []
    for row in model_card.ranked():
        file = path / row.file
        if not file.is_file():
            raise GeosaneError(f"{card_path}: candidate file {row.file} is missing")
        parsed.append(GeneratedCandidate(row.rank, file, row.proxy_score, row.proxy))
    assert model_card.arch is not None  # from_dict refuses a card without one
    return GeneratedDir(
        path,
        model_card.prompt,
        ArchSpec.from_dict(model_card.arch),
        parsed,
        card,
        list(model_card.generated_tensors),
        list(model_card.carried_tensors),
        model_card,
    )


def load_source(source: str, arch: ArchSpec | None = None) -> LoadedModel:
    """Resolve ``source`` (zoo scheme, generated output, model file, ``timm:``...) with its architecture.

    ``arch`` supplies the architecture for bare weight files; when the source records its own,
    the two must be the same architecture.
    """
    path = Path(source).expanduser()
    if source.startswith("zoo:"):
        loaded = load_zoo_source(source)
    elif path.is_dir() and (path / MODEL_CARD).is_file():
        generated = read_generated_dir(path)
        best = generated.candidates[0]
        loaded = LoadedModel(
            str(best.file), load_weights_file(best.file), generated.arch, {"rank": best.rank}
        )
    elif path.is_file() and (path.parent / MODEL_CARD).is_file():
        generated = read_generated_dir(path.parent)
        loaded = LoadedModel(str(path), load_weights_file(path), generated.arch, {})
    else:
        loaded = resolve(source)
    if loaded.arch is None:
        if arch is None:
            raise SourceError(
                f"{source}: the architecture of these weights is unknown; set arch.name "
                "(e.g. arch.name=resnet18; for geosane merge: --arch resnet18)" + loaded.unknown_architecture
            )
        loaded = dataclasses.replace(loaded, arch=arch)
    elif arch is not None and not same_architecture(loaded.arch, arch):
        raise SourceError(
            f"{source} is {loaded.arch.library}:{loaded.arch.name} {loaded.arch.kwargs}, "
            f"not the compared architecture {arch.library}:{arch.name} {arch.kwargs} "
            "(pass 'arch.name=\"\"' to take the architecture from these weights)"
        )
    return loaded


# ----------------------------------------------------------------------------------------------
# zoo baselines


def _base_id(value: str, zoo: Zoo) -> str | None:
    """The zoo id an ``init_from`` value names, if it names a model of this zoo."""
    if value in zoo.ids:
        return value
    parsed = split_zoo_source(value)
    if parsed is not None:
        location, model_id = parsed
        same_zoo = Path(location).expanduser().resolve() == zoo.path.resolve()
        if same_zoo and model_id in zoo.ids:
            return model_id
    return None


def _load_member(zoo: Zoo, entry: ZooEntry) -> dict[str, torch.Tensor]:
    return zoo.load_state_dict(entry.id)


def _select_members(
    config: ZooInitConfig, zoo: Zoo, arch: ArchSpec
) -> tuple[list[ZooEntry], str | None, str]:
    """(members, base source or None, a note on how they were chosen)."""
    for model_id in [*config.members, *config.exclude]:
        zoo.get(model_id)  # unknown ids: clear error
    base = config.base
    base_id = _base_id(base, zoo) if base else None
    if config.members:
        members = [zoo.get(m) for m in config.members]
        wrong = [e.id for e in members if e.arch_spec is None or not same_architecture(e.arch_spec, arch)]
        if wrong:
            raise GeosaneError(
                f"zoo members {wrong} are not {arch.library}:{arch.name}; compare needs one architecture"
            )
        how = "named in the config"
    else:
        members = [
            e
            for e in zoo
            if e.arch_spec is not None
            and same_architecture(e.arch_spec, arch)
            and e.id not in config.exclude
            and e.id != base_id
        ]
        how = f"every {arch.name} model of the zoo" + (f" except {config.exclude}" if config.exclude else "")
    if base is None:
        recorded = [e.metadata["init_from"] for e in members if e.metadata.get("init_from")]
        if recorded:
            base, _ = Counter(recorded).most_common(1)[0]
            base_id = _base_id(base, zoo)
            if not config.members:
                members = [e for e in members if e.metadata.get("init_from") == base and e.id != base_id]
                how += f" fine-tuned from '{base}' (metadata init_from)"
    note = f"{len(members)} members: {how}"
    if not members:
        raise NotApplicable(
            f"zoo {zoo.path} has no {arch.library}:{arch.name} members to merge (after exclusions); "
            "name them with zoo.members or add models of that architecture"
        )
    return members, base, note


def zoo_initializations(config: ZooInitConfig, arch: ArchSpec, kinds: list[str]) -> list[Initialization]:
    """The requested zoo baselines among ``zoo_average``, ``ties`` and ``dare``."""
    wanted = [k for k in ("zoo_average", "ties", "dare") if k in kinds]
    if not wanted:
        return []
    if config.dir is None:
        raise GeosaneError(f"initialization(s) {wanted} need a zoo: set zoo.dir (or remove them from inits)")
    zoo = Zoo(config.dir)
    members, base_source, note = _select_members(config, zoo, arch)
    states = [_load_member(zoo, e) for e in members]
    other = [e.id for e, state in zip(members, states, strict=True) if not fits_architecture(arch, state)]
    if other and config.members:
        raise GeosaneError(
            f"zoo.members {other} do not have the prompt's tensor shapes ({arch.library}:{arch.name} "
            f"{arch.kwargs}: other bands or widths); name members of one shape"
        )
    if other:
        kept = [(e, state) for e, state in zip(members, states, strict=True) if e.id not in other]
        if not kept:
            raise NotApplicable(
                f"no {arch.name} zoo member has the prompt's tensor shapes ({other} differ in bands or widths)"
            )
        members, states = [e for e, _ in kept], [state for _, state in kept]
        note = f"{len(members)} members: {note.split(': ', 1)[1]}, without {other} (other tensor shapes)"
    names = [e.id for e in members]
    out = []
    info = {"members": names, "selection": note}
    if "zoo_average" in wanted:
        merged = average_merge(states, names)
        out.append(
            Initialization(
                "zoo_average",
                "zoo_average",
                arch,
                merged.state_dict,
                f"mean of {len(names)} zoo models",
                {**info, **merged.summary()},
            )
        )
    task_merges = [k for k in wanted if k != "zoo_average"]
    if task_merges:
        if base_source is None:
            raise NotApplicable(
                f"TIES/DARE need the shared base the zoo members were fine-tuned from: set zoo.base "
                f"(a zoo id or model source), or record metadata init_from in the zoo {zoo.path}"
            )
        base_id = _base_id(base_source, zoo)
        base_state = zoo.load_state_dict(base_id) if base_id else load_source(base_source, arch).state_dict
        merge_info = {**info, "base": base_source}
        if "ties" in task_merges:
            merged = ties_merge(base_state, states, config.ties.density, config.ties.lam, names)
            source = f"TIES over {base_source} (density {config.ties.density}, lambda {config.ties.lam})"
            out.append(
                Initialization(
                    "ties", "ties", arch, merged.state_dict, source, {**merge_info, **merged.summary()}
                )
            )
        if "dare" in task_merges:
            dare = config.dare
            merged = dare_merge(base_state, states, dare.drop_rate, dare.lam, dare.seed, dare.combine, names)
            source = f"DARE over {base_source} (p {dare.drop_rate}, lambda {dare.lam}, {dare.combine})"
            out.append(
                Initialization(
                    "dare", "dare", arch, merged.state_dict, source, {**merge_info, **merged.summary()}
                )
            )
    return out
