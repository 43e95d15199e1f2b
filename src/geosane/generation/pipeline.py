"""``geosane generate``: new, ready-to-fine-tune weights for a prompt architecture.

    prompt source ──► classifier for the target bands/classes ──► tokenize (the AE's settings)
      ──► encode with halo windows ──► KDE around the prompt latent (+ nearest same-layout zoo
      models as extra anchors) ──► N candidate latents, independent noise per token ──► decode
      ──► detokenize onto the prompt's layout (with ``generate_only``: tensors matching no pattern
      are the prompt's own) ──► recalibrate BatchNorm on unlabeled selection images ──► rank by a
      frozen-feature proxy on the selection split ──► keep the top k

Everything is validated before anything is written, and the output directory appears in one
rename once every file is complete.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from geosane import __version__
from geosane.arch.libraries import arch_library
from geosane.arch.spec import ArchSpec, LoadedModel
from geosane.arch.stem import adapt_stem
from geosane.console import console, make_progress
from geosane.data import (
    Normalization,
    TensorImageDataset,
    choose_normalization,
    load_csmask,
    load_image_folder,
    recorded_normalization,
    stratified_split,
)
from geosane.data.detection import DetectionData, is_detection_folder
from geosane.errors import DataError, GeosaneError, cli_flags
from geosane.generation.batchnorm import has_batchnorm, recalibrate_batchnorm
from geosane.generation.card import MODEL_CARD, CardCandidate, ModelCard, write_loader_script
from geosane.generation.config import GenerateConfig, generation_inputs, validate_config
from geosane.generation.kde import latent_scale, sample_latents
from geosane.generation.proxy import proxy_score
from geosane.io import (
    atomic_directory,
    check_out_dir,
    mark_out_dir,
    save_safetensors,
    sha256_file,
    write_json,
)
from geosane.tokens.settings import TokenizerSettings
from geosane.zoo.sources import resolve

__all__ = ["GenerateConfig", "GenerationResult", "generate", "prepare_prompt"]


@dataclass
class Candidate:
    index: int
    state_dict: dict[str, torch.Tensor]
    score: float
    bn_images: int = 0


@dataclass
class GenerationResult:
    """Where the output went and what was chosen (``card``: the model card's JSON object,
    ``model_card``: the same as a :class:`~geosane.generation.card.ModelCard`)."""

    out: Path
    card: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    model_card: ModelCard | None = None


# ---------------------------------------------------------------------------------------------
# validation and inputs


@dataclass(frozen=True)
class Selection:
    """Labelled selection data: images with class labels (folders), masks (``.npz`` scene chips) or
    boxes (a COCO/VOC detection folder: ``targets`` is the :class:`DetectionData` itself)."""

    task: str  # "classification" | "segmentation" | "detection"
    images: torch.Tensor
    targets: Any
    classes: tuple[str, ...]
    normalization: Normalization | None  # None: decided once the prompt is known (segmentation)

    @property
    def num_bands(self) -> int:
        return int(self.images.shape[1])


def _scene_selection(cfg: GenerateConfig) -> Selection:
    """Chips of the ``.npz`` scenes in ``--select-data`` (all of them: the folder is the selection split)."""
    assert cfg.select_data is not None
    if cfg.select_split != "all":
        raise DataError(
            f"{cfg.select_data} holds .npz scenes: pass select_split='all' with a folder of the selection "
            "scenes only, so that no chip of a scene your fine-tuning tests on is used for ranking",
            flags={"select_split='all'": "--select-split all"},
        )
    chips = load_csmask(cfg.select_data, chip_size=cfg.image_size)
    return Selection("segmentation", chips.images, chips.masks, chips.classes, None)


def _detection_selection(cfg: GenerateConfig) -> Selection:
    """A box folder (all of it: the folder is the selection split); the detector normalises itself."""
    from geosane.data.detection import load_detection_folder

    if cfg.select_split != "all":
        raise DataError(
            f"{cfg.select_data} is a detection folder: pass select_split='all' with a folder of selection "
            "images only, so that no image your fine-tuning tests on is used for ranking",
            flags={"select_split='all'": "--select-split all"},
        )
    assert cfg.select_data is not None
    data = load_detection_folder(cfg.select_data, cfg.image_size)
    return Selection("detection", data.images, data, data.classes, None)


def _selection_data(cfg: GenerateConfig, num_classes: int | None) -> Selection | None:
    """The labelled images candidates are ranked on (never the test split) and their normalization.

    The normalization is ``geosane.data.choose_normalization``'s, as in ``geosane zoo build`` and
    ``geosane finetune``: per-band statistics of the training split (of every image with
    ``select_split='all'``), or ImageNet's with ``normalization='imagenet'`` where the images are
    RGB (else the statistics), so recalibrated BatchNorm statistics fit the fine-tuning inputs.
    """
    if cfg.select_data is None:
        return None
    if Path(cfg.select_data).is_dir() and any(Path(cfg.select_data).glob("*.npz")):
        return _scene_selection(cfg)
    if is_detection_folder(cfg.select_data):
        return _detection_selection(cfg)
    data = load_image_folder(cfg.select_data, cfg.image_size)
    train = data
    if cfg.select_split == "select":
        parts = stratified_split(data.labels.numpy(), seed=cfg.split_seed)
        train, data = data.subset(parts["train"]), data.subset(parts["select"])
    classes = num_classes if num_classes is not None else len(data.classes)
    per_class = np.bincount(data.labels.numpy(), minlength=classes)
    if len(data) < classes:
        raise DataError(
            f"the selection data ({cfg.select_data}, split '{cfg.select_split}') has {len(data)} images "
            f"for {classes} classes: the proxy needs at least one image per class (better: several)"
        )
    if cfg.proxy == "linear" and per_class.min() < 2:
        raise DataError(
            f"the selection data ({cfg.select_data}, split '{cfg.select_split}') has {int(per_class.min())} "
            "image(s) in some class: proxy='linear' needs at least 2 per class (use proxy='knn' or more data)",
            flags={"proxy='linear'": "--proxy linear", "proxy='knn'": "--proxy knn"},
        )
    norm = choose_normalization(cfg.normalization, train.images, strict=False, key="normalization")
    return Selection("classification", data.images, data.labels, data.classes, norm)


def prepare_prompt(
    source: str, num_classes: int | None, in_chans: int | None, random_init: bool = False
) -> LoadedModel:
    """The prompt as a full classifier for ``in_chans`` bands and ``num_classes`` classes.

    The stem is adapted (timm's repeat-and-rescale rule) when the band count differs; the
    classifier head is re-initialised when the class count differs. Raises when the prompt's
    architecture is unknown or cannot be instantiated.
    """
    from geosane.tasks import backbone_with_weights, build_classifier, build_segmenter

    prompt = resolve(source, random_init=random_init)
    if prompt.arch is None:
        raise GeosaneError(
            f"prompt {source}: its architecture is unknown, so generated weights could not be used "
            "(use a timm:, hf: timm repo, torchgeo: or zoo: source, or a checkpoint with an architecture record)"
            + prompt.unknown_architecture
        )
    if in_chans is not None:
        prompt = adapt_stem(prompt, in_chans)
    assert prompt.arch is not None  # adapt_stem keeps the architecture
    library = arch_library(prompt.arch.library)
    try:
        if num_classes is None:
            model = prompt.build()
        elif library.task == "segmentation":  # smp: its own head is kept when it fits the classes
            model = build_segmenter(prompt, num_classes, reset_head=False)
        elif library.task == "detection":  # a detector: its heads are kept when they fit the classes
            model = backbone_with_weights(prompt, num_classes=num_classes)
        else:
            model = build_classifier(prompt, num_classes)
    except GeosaneError as exc:
        raise GeosaneError(
            f"prompt {source}: the architecture cannot be instantiated with its weights: {exc}",
            flags=exc.flags,
        ) from None
    kwargs = dict(prompt.arch.kwargs)
    if num_classes is not None:
        kwargs[library.classes_key] = num_classes
    arch = ArchSpec(prompt.arch.library, prompt.arch.name, kwargs)
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    info = {
        **prompt.info,
        "num_classes": num_classes if num_classes is not None else prompt.info.get("num_classes"),
    }
    return LoadedModel(prompt.source, state_dict, arch, info)


# ---------------------------------------------------------------------------------------------
# latent sampling


def tokenizer_settings(ae: Any, metadata: dict[str, str]) -> dict[str, Any]:
    """The tokenizer settings of the store the autoencoder was trained on (recorded at export), as
    their JSON record; :func:`geosane.autoencoder.io.tokenizer_settings` gives the typed value."""
    from geosane.autoencoder.io import tokenizer_settings as recorded

    return recorded(ae, metadata).to_dict()


def _layer_blocks(tm: Any) -> dict[tuple[tuple[str, tuple[int, ...]], ...], tuple[int, int]]:
    """Token range of every layer, keyed by the names and shapes of the tensors it holds."""
    layers: dict[int, list[Any]] = {}
    for entry in tm.layout.values():
        if entry.kind == "tokenized" and entry.layer is not None:
            layers.setdefault(entry.layer, []).append(entry)
    blocks = {}
    for entries in layers.values():
        key = tuple(sorted((e.name, tuple(e.shape)) for e in entries))
        blocks[key] = (min(e.start for e in entries), max(e.stop for e in entries))
    return blocks


def _aligned_rows(prompt_tm: Any, tm: Any) -> list[tuple[int, int, int]]:
    """``(prompt_start, anchor_start, length)`` of the layers both models hold with one shape.

    A zoo model trained for other classes has another head (and one with other bands another
    stem); its other layers still line up with the prompt's, so it can anchor those tokens.
    """
    theirs = _layer_blocks(tm)
    rows = []
    for key, (start, stop) in _layer_blocks(prompt_tm).items():
        other = theirs.get(key)
        if other is not None and other[1] - other[0] == stop - start:
            rows.append((start, other[0], stop - start))
    return rows


def _tokenize_like_store(
    state_dict: dict[str, torch.Tensor], tokenizer: TokenizerSettings, module: nn.Module | None
) -> Any:
    """Tokens of ``state_dict`` with the settings of the store the autoencoder was trained on."""
    from geosane.tokens import tokenize

    return tokenize(state_dict, **tokenizer.tokenize_kwargs(), module=module)


def _aligned_tokens(
    tm: Any, record: Any, prompt: LoadedModel, groups: list[Any], tokenizer: TokenizerSettings
) -> tuple[Any, dict[str, float]]:
    """``tm`` (a zoo model's tokens) with its units reordered to the prompt's (:mod:`.align`)."""
    from geosane.arch.meta import empty_architecture
    from geosane.autoencoder.permutation import permute_state_dict
    from geosane.generation.align import weight_matching
    from geosane.tokens import detokenize

    weights = detokenize(tm)
    perms, info = weight_matching(prompt.state_dict, weights, groups)
    aligned = permute_state_dict(weights, groups, perms)
    module = empty_architecture(ArchSpec.from_dict(record.arch)) if record.arch else None
    return _tokenize_like_store(aligned, tokenizer, module), info


def _nearest_anchors(
    cfg: GenerateConfig,
    ae: Any,
    prompt_tm: Any,
    prompt_latent: torch.Tensor,
    prompt: LoadedModel | None = None,
    tokenizer: TokenizerSettings | None = None,
) -> list[dict[str, Any]]:
    """Latents of the ``cfg.anchors`` store models nearest to the prompt, in the prompt's layout.

    A model qualifies when at least half of the prompt's tokens belong to layers it holds with the
    same tensor names and shapes (same architecture; the head or stem may differ); its latent
    fills those tokens and the prompt's own latent the rest. Distances are over the shared tokens.
    """
    from geosane.autoencoder import encode_sequence
    from geosane.tokens import TokenStore

    assert cfg.store is not None  # validate_config: anchors need a store
    store = TokenStore(cfg.store)
    if store.token_size != prompt_tm.token_size or store.mode != prompt_tm.mode:
        raise GeosaneError(
            f"token store {cfg.store} uses token size {store.token_size} ({store.mode}) but the autoencoder "
            f"uses {prompt_tm.token_size} ({prompt_tm.mode})"
        )
    groups: list[Any] = []
    if cfg.align_anchors and prompt is not None:
        from geosane.generation.align import alignment_groups

        groups = alignment_groups(prompt.build(load_weights=False))  # once: every anchor is aligned to them
    found = []
    for record in store.records:
        tm = store.load(record.id)
        rows = _aligned_rows(prompt_tm, tm)
        shared = sum(n for _, _, n in rows)
        if shared * 2 < prompt_tm.num_tokens:
            continue
        mine = torch.cat([torch.arange(p, p + n) for p, _, n in rows])
        theirs = torch.cat([torch.arange(a, a + n) for _, a, n in rows])
        if torch.equal(tm.tokens[theirs], prompt_tm.tokens[mine]):
            continue  # the prompt itself is a zoo member: it is already the first anchor
        alignment: dict[str, float] = {}
        if groups and prompt is not None:
            tm, alignment = _aligned_tokens(tm, record, prompt, groups, tokenizer or store.tokenizer)
        z = encode_sequence(ae, tm.tokens, tm.positions, tm.layer_type, tm.mask, halo=cfg.halo)
        latent = prompt_latent.clone()
        latent[mine] = z[theirs].to(latent.dtype)
        distance = float((latent[mine] - prompt_latent[mine]).pow(2).mean())
        found.append({"id": record.id, "distance": distance, "latent": latent,
                      "shared_tokens": shared / prompt_tm.num_tokens, "alignment": alignment})  # fmt: skip
    found.sort(key=lambda a: a["distance"])
    if len(found) < cfg.anchors:
        console.print(
            f"[yellow]warning:[/] --anchors {cfg.anchors}: the store has {len(found)} model(s) sharing at least "
            "half of the prompt's layers (same architecture); using those"
        )
    return found[: cfg.anchors]


def _example_names(names: list[str], count: int = 5) -> str:
    """A few names spread over ``names`` (first to last), for messages."""
    if len(names) <= count:
        return ", ".join(names)
    step = (len(names) - 1) / (count - 1)
    picks = list(dict.fromkeys(names[round(i * step)] for i in range(count)))
    return ", ".join(picks[:-1]) + f", ..., {picks[-1]}"


def split_generated(tm: Any, patterns: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``(generated, kept from the prompt)``: the tokenized tensors (and their tied aliases) that
    ``generate_only`` selects, and the rest. Empty ``patterns``: everything is generated.

    Patterns are ``fnmatch`` globs over state-dict names (case-sensitive). A tied alias shares its
    tensor with the name it is tied to, so the two are generated or kept together (either name
    matching selects both). Raises :class:`GeosaneError` when the patterns select no tokenized tensor.
    """
    tokenized, tied = tm.names("tokenized"), tm.names("tied")
    if not patterns:
        return tokenized + tied, []

    def hit(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    owners = {n for n in tokenized if hit(n)} | {tm.layout[n].tied_to for n in tied if hit(n)}
    owners &= set(tokenized)
    param = f"generate_only={list(patterns)!r}"
    flags = {param: " ".join(f"--generate-only '{p}'" for p in patterns)}
    verb = "matches" if len(patterns) == 1 else "match"
    if not owners:
        carried = [n for n in tm.names("carried") if hit(n)]
        if carried:
            raise GeosaneError(
                f"{param} {verb} only tensors carried from the prompt unchanged ({_example_names(carried, 3)}), "
                f"none that the autoencoder generates (tensors look like: {_example_names(tokenized)})",
                flags=flags,
            )
        raise GeosaneError(
            f"{param} {verb} no tensor of the prompt (tensors look like: {_example_names(tokenized)})",
            flags=flags,
        )
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in tm.layout):
            console.print(f"[yellow]warning:[/] --generate-only '{pattern}' matches no tensor of the prompt")

    def generated(name: str) -> bool:
        return (tm.layout[name].tied_to or name) in owners

    names = tokenized + tied
    return [n for n in names if generated(n)], [n for n in names if not generated(n)]


def keep_from_prompt(
    state_dict: dict[str, torch.Tensor], tm: Any, prompt: dict[str, torch.Tensor], kept: set[str]
) -> dict[str, torch.Tensor]:
    """``state_dict`` (detokenized from ``tm``'s layout) with the ``kept`` tensors replaced by
    copies of the prompt's own (the state dict that was tokenized); tied aliases follow their tensor."""
    out: dict[str, torch.Tensor] = {}
    for name, entry in tm.layout.items():
        if entry.kind == "tied":
            out[name] = out[entry.tied_to]
        elif name in kept:
            out[name] = prompt[name].detach().clone()
        else:
            out[name] = state_dict[name]
    return out


def _finite_or_none(score: float) -> float | None:
    """Scores for the model card: null (strict JSON) when there was no selection data."""
    return score if np.isfinite(score) else None


def _bn_batches(
    select: TensorImageDataset | DetectionData | None, cfg: GenerateConfig, prompt: LoadedModel
) -> list[torch.Tensor]:
    """Unlabeled selection batches for BatchNorm recalibration, in a seeded order (the selection split
    is stored in class order); built once and shared by every candidate and the prompt. Detection:
    the images normalised as the detector normalises them (its record's mean/std), for its backbone."""
    if select is None or cfg.bn_batches == 0:
        return []
    perm = torch.randperm(len(select), generator=torch.Generator().manual_seed(cfg.seed))
    order = perm[: cfg.bn_batches * cfg.batch_size].tolist()
    if isinstance(select, DetectionData):
        assert prompt.arch is not None
        norm = Normalization(tuple(prompt.arch.kwargs["image_mean"]), tuple(prompt.arch.kwargs["image_std"]))
        return [
            norm(select.images[order[start : start + cfg.batch_size]])
            for start in range(0, len(order), cfg.batch_size)
        ]
    return [
        torch.stack([select[i][0] for i in order[start : start + cfg.batch_size]])
        for start in range(0, len(order), cfg.batch_size)
    ]


def _score_candidate(
    model: nn.Module,
    select: TensorImageDataset | DetectionData | None,
    bn_batches: list[torch.Tensor],
    cfg: GenerateConfig,
    task: str = "classification",
    num_classes: int = 0,
) -> tuple[float, int]:
    """BatchNorm recalibration on unlabeled selection images, then the proxy score (segmentation:
    the mIoU of the candidate's own head; detection: its mAP@50, BatchNorm of the backbone)."""
    if select is None:
        return float("nan"), 0
    if isinstance(select, DetectionData):
        from geosane.tasks import evaluate_detection

        backbone = cast(nn.Module, model.backbone)
        seen = recalibrate_batchnorm(backbone, bn_batches) if bn_batches and has_batchnorm(backbone) else 0
        return evaluate_detection(cast(Any, model), select, cfg.batch_size)["map_50"], seen
    seen = recalibrate_batchnorm(model, bn_batches) if bn_batches and has_batchnorm(model) else 0
    if task == "segmentation":  # the segmenter's own head on the selection chips (mIoU)
        from geosane.tasks import evaluate

        return evaluate(model, "segmentation", num_classes, select)["miou"], seen
    return proxy_score(model, select, kind=cfg.proxy), seen


# ---------------------------------------------------------------------------------------------
# the whole job


def generate(cfg: GenerateConfig) -> GenerationResult:
    """Run generation end to end; see the module docstring."""
    from geosane.autoencoder import decode_sequence, encode_sequence, load_autoencoder
    from geosane.autoencoder.io import tokenizer_settings as recorded_tokenizer
    from geosane.tokens import detokenize

    validate_config(cfg)
    ae, ae_meta = load_autoencoder(cfg.ae)
    tokenizer = recorded_tokenizer(ae, ae_meta)
    token_size, mode = tokenizer.token_size, tokenizer.mode
    if cfg.token_size is not None and cfg.token_size != token_size:
        raise GeosaneError(
            f"autoencoder {cfg.ae} was trained on tokens of size {token_size}, not token_size={cfg.token_size}",
            flags=cli_flags("token_size"),
        )
    select_images = _selection_data(cfg, cfg.num_classes)
    num_classes = (
        cfg.num_classes
        if cfg.num_classes is not None
        else (len(select_images.classes) if select_images is not None else None)
    )
    with torch.random.fork_rng():  # a random-init prompt or a new head: reproducible under --seed
        torch.manual_seed(cfg.seed)
        prompt = prepare_prompt(cfg.prompt, num_classes, cfg.in_chans, cfg.random_init)
    assert prompt.arch is not None  # prepare_prompt raises without one
    in_chans = int(prompt.info.get("in_chans") or 3)
    if select_images is not None and select_images.num_bands != in_chans:
        raise DataError(
            f"selection images have {select_images.num_bands} bands but the prompt takes {in_chans} "
            "(pass in_chans to adapt the prompt's stem)",
            flags=cli_flags("in_chans"),
        )
    select: TensorImageDataset | DetectionData | None = None
    select_task = select_images.task if select_images is not None else "classification"
    # segmenters and detectors are ranked with their own heads
    proxy_name = {"segmentation": "miou", "detection": "map_50"}.get(select_task, cfg.proxy)
    prompt_task = arch_library(prompt.arch.library).task
    if select_images is not None and (select_task == "detection") != (prompt_task == "detection"):
        raise DataError(
            f"{cfg.select_data} holds {select_task} data but the prompt {prompt.source} is a "
            f"{prompt.arch.library}:{prompt.arch.name} {prompt_task} model; rank it with selection data of its task"
        )
    if select_images is not None and select_task == "detection":
        select = select_images.targets
    elif select_images is not None:
        if select_task == "segmentation" and arch_library(prompt.arch.library).task != "segmentation":
            raise DataError(
                f"{cfg.select_data} holds segmentation scenes but the prompt {prompt.source} is a "
                f"{prompt.arch.library}:{prompt.arch.name} classifier; rank with a labelled image folder"
            )
        norm = select_images.normalization or choose_normalization(  # scenes: the prompt's recorded
            "auto", select_images.images, recorded=recorded_normalization(prompt.info), key="normalization"
        )  # statistics, else the chips'
        select = TensorImageDataset(select_images.images, select_images.targets, norm)

    generator = torch.Generator().manual_seed(cfg.seed)
    prompt_tm = _tokenize_like_store(prompt.state_dict, tokenizer, prompt.build(load_weights=False))
    generated, kept = split_generated(prompt_tm, cfg.generate_only)  # before any work: a typo costs nothing
    console.print(
        f"prompt {prompt.source}: {prompt_tm.num_tokens} tokens, {len(generated)} tensors generated, "
        + (f"{len(kept)} kept from the prompt (--generate-only), " if kept else "")
        + f"{len(prompt_tm.names('carried'))} carried"
    )
    z_prompt = encode_sequence(
        ae, prompt_tm.tokens, prompt_tm.positions, prompt_tm.layer_type, prompt_tm.mask, halo=cfg.halo
    )
    anchors = _nearest_anchors(cfg, ae, prompt_tm, z_prompt, prompt, tokenizer) if cfg.anchors else []
    anchor_latents = torch.stack([z_prompt, *[a["latent"] for a in anchors]])
    latents = sample_latents(
        anchor_latents,
        cfg.num_candidates,
        cfg.bandwidth,
        mode=cfg.kde_mode,
        generator=generator,
        scale=latent_scale(anchor_latents),
    )

    base = None  # the prompt's own reconstruction, subtracted in residual decoding
    if cfg.decode == "residual":
        base = decode_sequence(ae, z_prompt, prompt_tm.positions, prompt_tm.layer_type, halo=cfg.halo)
    bn_batches = _bn_batches(select, cfg, prompt)
    candidates: list[Candidate] = []
    with make_progress() as progress:
        task = progress.add_task("decode + rank candidates", total=cfg.num_candidates, status="")
        for index, z in enumerate(latents):
            tokens = decode_sequence(ae, z, prompt_tm.positions, prompt_tm.layer_type, halo=cfg.halo)
            if base is not None:
                tokens = prompt_tm.tokens.to(tokens.dtype) + (tokens - base)
            tokens = tokens * prompt_tm.mask
            state_dict = detokenize(prompt_tm, tokens.to(prompt_tm.tokens.dtype))
            if kept:  # generate_only: the unselected tensors are the prompt's own, bit for bit
                state_dict = keep_from_prompt(state_dict, prompt_tm, prompt.state_dict, set(kept))
            model = prompt.build(load_weights=False)
            model.load_state_dict(state_dict)
            score, seen = _score_candidate(model, select, bn_batches, cfg, select_task, num_classes or 0)
            state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
            candidates.append(Candidate(index, state_dict, score, seen))
            progress.update(task, advance=1, status=f"proxy {score:.3f}")
    prompt_score = float("nan")
    if select is not None:
        prompt_score, _ = _score_candidate(
            prompt.build(), select, bn_batches, cfg, select_task, num_classes or 0
        )

    ranked = sorted(candidates, key=lambda c: (-c.score if c.score == c.score else float("inf"), c.index))
    chosen = ranked[: cfg.top_k]
    card = ModelCard(
        geosane_version=__version__,
        prompt=prompt.source,
        prompt_info={
            k: v for k, v in prompt.info.items() if isinstance(v, (str, int, float, bool, type(None)))
        },
        arch=prompt.arch.to_dict() if prompt.arch else None,
        ae_checkpoint=str(Path(cfg.ae).resolve()),
        ae_sha256=sha256_file(Path(cfg.ae) / "autoencoder.safetensors" if Path(cfg.ae).is_dir() else cfg.ae),
        token_size=token_size,
        mode=mode,
        seed=cfg.seed,
        decode=cfg.decode,
        kde={
            "mode": cfg.kde_mode,
            "bandwidth": cfg.bandwidth,
            "anchors": [{k: a[k] for k in ("id", "distance", "shared_tokens", "alignment")} for a in anchors],
        },
        num_candidates=cfg.num_candidates,
        top_k=cfg.top_k,
        proxy=proxy_name,
        select_data=str(cfg.select_data) if cfg.select_data else None,
        select_split=cfg.select_split,
        normalization=cfg.normalization,
        split_seed=cfg.split_seed,
        image_size=cfg.image_size,
        prompt_proxy_score=_finite_or_none(prompt_score),
        all_proxy_scores=[_finite_or_none(c.score) for c in candidates],
        candidates=[
            CardCandidate(
                rank,
                f"candidate_{rank}.safetensors",
                c.index,
                _finite_or_none(c.score),
                proxy_name,
                c.bn_images,
            )
            for rank, c in enumerate(chosen, start=1)
        ],
        generate_only=list(cfg.generate_only),
        generated_tensors=generated,
        prompt_tensors=kept,
        carried_tensors=prompt_tm.names("carried"),
        carried_note=(
            "carried tensors are copied from the prompt; BatchNorm running statistics among them were "
            "recalibrated on unlabeled selection images"
            if any(c.bn_images for c in chosen)
            else "carried tensors are copied from the prompt"
        )
        + ("; prompt_tensors match no generate_only pattern and are the prompt's own values" if kept else ""),
    )
    files = _write_output(cfg, card, chosen)
    return GenerationResult(Path(cfg.out), card.to_dict(), files, card)


def _write_output(cfg: GenerateConfig, card: ModelCard, chosen: list[Candidate]) -> list[Path]:
    """Write candidates, card and loader into a temporary directory, then rename it into place."""
    out = Path(cfg.out)
    with atomic_directory(out) as tmp:
        for entry, candidate in zip(card.candidates, chosen, strict=True):
            save_safetensors(candidate.state_dict, tmp / entry.file, metadata={"prompt": card.prompt})
        write_json(tmp / MODEL_CARD, card.to_dict())
        write_loader_script(tmp / "load_generated.py")
        mark_out_dir(tmp, "generate")
        check_out_dir(out, "generate", generation_inputs(cfg))  # the same rule again, right before replacing
    return [out / e.file for e in card.candidates] + [out / MODEL_CARD, out / "load_generated.py"]


def config_from_kwargs(**kwargs: Any) -> GenerateConfig:
    """A :class:`GenerateConfig` from keyword arguments (paths coerced)."""
    for key in ("ae", "out", "select_data", "store"):
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key])
    return dataclasses.replace(GenerateConfig(ae=Path(), prompt="", out=Path()), **kwargs)
