"""Settings of ``geosane generate`` and their validation, importable without torch.

:class:`GenerateConfig` is the schema of ``geosane generate --config FILE`` (YAML, ``base:``
composition and dotted ``key=value`` overrides as every geosane config, :mod:`geosane.config`)
and the one place its defaults are written; every CLI flag sets the field of the same name
(:func:`load_generate_config`: flags win over overrides, which win over the file). The CLI checks
every option here before the heavy imports of :mod:`geosane.generation.pipeline`, so a bad flag is
refused in well under a second. Presets ship in ``geosane/configs/generate/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from geosane.config import compose, find_config, from_dict, merge, parse_overrides
from geosane.errors import ConfigError, GeosaneError, cli_flags
from geosane.io import check_out_dir

__all__ = ["DecodeMode", "GenerateConfig", "KDEMode", "NormalizationKind", "ProxyKind", "generation_inputs",
           "load_generate_config", "validate_config"]  # fmt: skip

KDEMode = Literal["token", "joint"]
ProxyKind = Literal["knn", "linear"]
DecodeMode = Literal["direct", "residual"]
NormalizationKind = Literal["dataset", "imagenet"]


@dataclass
class GenerateConfig:
    """Settings of one ``geosane generate`` run (CLI flags map 1:1 onto these fields; the defaults
    here are the only ones: the CLI, the benchmark and the demo set just what they change)."""

    ae: Path
    prompt: str
    out: Path
    num_candidates: int = 10
    top_k: int = 3
    in_chans: int | None = None
    num_classes: int | None = None
    select_data: Path | None = None
    select_split: str = "select"  # "select": the seeded selection split of select_data; "all": every image
    split_seed: int = 0
    image_size: int = 64
    kde_mode: KDEMode = "token"
    bandwidth: float = 0.2
    seed: int = 0
    random_init: bool = False  # allow a timm prompt without pretrained weights
    store: Path | None = None  # token store of the zoo: nearest same-layout models become anchors
    anchors: int = 0  # how many nearest zoo models join the prompt as KDE anchors
    align_anchors: bool = False  # weight-match each anchor's units to the prompt's before encoding it
    proxy: ProxyKind = "knn"
    # direct: decode(z) as in the paper; residual: prompt + decode(z) - decode(z_prompt), so the
    # autoencoder's reconstruction error of the prompt cancels and only the sampled offset remains
    decode: DecodeMode = "direct"
    normalization: NormalizationKind = "dataset"  # as zoo build / finetune (data.normalization)
    token_size: int | None = None  # must equal the AE's token size when given
    halo: int | None = None
    bn_batches: int = 4  # batches of selection images for BatchNorm recalibration (0: keep carried stats)
    batch_size: int = 64
    overwrite: bool = False
    # fnmatch globs over state-dict names (e.g. ["*bn*", "*norm*"]): only matching tokenized tensors are
    # generated, every other tensor is the prompt's own (p-diff style); empty: generate every tokenized one
    generate_only: list[str] = field(default_factory=list)


def validate_config(cfg: GenerateConfig) -> None:
    """Refuse bad settings and a forbidden output directory; cheap, so it runs before torch is imported."""
    if cfg.num_candidates < 1:
        raise GeosaneError(f"num_candidates must be >= 1, got {cfg.num_candidates}", flags=cli_flags("num_candidates"))
    if not 1 <= cfg.top_k <= cfg.num_candidates:
        raise GeosaneError(
            f"top_k={cfg.top_k} must be between 1 and num_candidates ({cfg.num_candidates})",
            flags=cli_flags("top_k", "num_candidates"),
        )
    if cfg.bandwidth < 0:
        raise GeosaneError(f"bandwidth must be >= 0, got {cfg.bandwidth}", flags=cli_flags("bandwidth"))
    if cfg.bn_batches < 0:
        raise GeosaneError(f"bn_batches must be >= 0 (0: no BatchNorm recalibration), got {cfg.bn_batches}")
    if cfg.anchors < 0:
        raise GeosaneError(f"anchors must be >= 0, got {cfg.anchors}", flags=cli_flags("anchors"))
    if cfg.align_anchors and not cfg.anchors:
        raise GeosaneError(
            "align_anchors=True needs anchors=N (the zoo models to align to the prompt)",
            flags=cli_flags("align_anchors", "anchors"),
        )
    if cfg.anchors and cfg.store is None:
        raise GeosaneError(
            "anchors needs store (the token store of the zoo to draw anchors from)",
            flags=cli_flags("anchors", "store"),
        )
    for value, kind, param in (
        (cfg.kde_mode, KDEMode, "kde_mode"),
        (cfg.proxy, ProxyKind, "proxy"),
        (cfg.normalization, NormalizationKind, "normalization"),
        (cfg.decode, DecodeMode, "decode"),
    ):
        if value not in (allowed := get_args(kind)):
            flags = cli_flags(param) if param != "normalization" else None
            raise GeosaneError(f"{param} must be one of {', '.join(allowed)}, got '{value}'", flags=flags)
    if isinstance(cfg.generate_only, str) or not isinstance(cfg.generate_only, (list, tuple)):
        raise GeosaneError(
            f"generate_only must be a list of glob patterns (e.g. ['*bn*']), got {cfg.generate_only!r}"
        )
    for pattern in cfg.generate_only:
        if not isinstance(pattern, str) or not pattern.strip():
            raise GeosaneError(
                f"generate_only patterns must be non-empty strings (globs over tensor names), got {pattern!r}",
                flags=cli_flags("generate_only"),
            )
    if cfg.select_split not in ("select", "all"):
        raise GeosaneError(
            f"select_split must be 'select' or 'all', got '{cfg.select_split}'", flags=cli_flags("select_split")
        )
    ours = check_out_dir(cfg.out, "generate", generation_inputs(cfg))
    if ours and not cfg.overwrite:
        raise GeosaneError(
            f"output directory {cfg.out} already holds generated weights; overwrite=True "
            "replaces them, or choose another output directory",
            flags=cli_flags("overwrite"),
        )


def generation_inputs(cfg: GenerateConfig) -> dict[str, str | Path | None]:
    """The paths and sources this run reads, which its output directory must never replace."""
    return {"ae": cfg.ae, "prompt": cfg.prompt, "store": cfg.store, "select_data": cfg.select_data}


REQUIRED = ("ae", "prompt", "out")


def load_generate_config(
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    flags: Mapping[str, Any] | None = None,
) -> GenerateConfig:
    """A :class:`GenerateConfig` from a YAML file (a path or a packaged preset name, optional),
    dotted ``overrides`` and ``flags`` (field name -> value; ``None`` = not given), in that order
    of precedence, lowest first. Not validated: :func:`validate_config` does that.

    Flag values are set as given (the CLI has typed them), so a bad flag is reported by
    :func:`validate_config` (``proxy must be one of knn, linear``; the CLI says ``--proxy``); values
    from the file and the overrides are checked against the schema (unknown keys name the closest).
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = compose(find_config(path, "generate"))
    extra = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    data = merge(data, extra)
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    known = {f.name for f in dataclasses.fields(GenerateConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"unknown generate setting(s): {', '.join(unknown)}")
    for key in REQUIRED:  # paths and the prompt source: plain values, set before the schema check
        if key in given:
            data[key] = given.pop(key)
    missing = [k for k in REQUIRED if data.get(k) is None]
    if missing:
        raise ConfigError(
            f"missing required setting(s) {', '.join(missing)} (give them in the config file or directly)",
            flags=cli_flags(*missing),
        )
    cfg = from_dict(GenerateConfig, data)
    return dataclasses.replace(cfg, **given) if given else cfg
